//! [`Connection`]: one command's view of a pooled multiplexed connection.

use std::sync::Arc;

use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value, aio::ConnectionLike};

use crate::{
    error::is_connection_error,
    handle::{Inner, RawConnection},
};

/// A connection handed out by [`Redis::connection`](crate::Redis::connection).
///
/// Every command on it is bounded by the handle's timeout. A connection error
/// marks the underlying connection broken, so the next command reconnects.
pub struct Connection {
    raw: RawConnection,
    inner: Arc<Inner>,
    slot: usize,
    generation: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("slot", &self.slot).field("generation", &self.generation).finish()
    }
}

impl Connection {
    pub(crate) fn new(inner: Arc<Inner>, slot: usize, generation: u64, raw: RawConnection) -> Self {
        Connection { raw, inner, slot, generation }
    }

    fn observe<T>(&self, result: &Result<T, RedisError>) {
        let slot = &self.inner.slots[self.slot];
        match result {
            Ok(_) => slot.succeeded(),
            Err(e) if e.is_timeout() => slot.timed_out(self.generation),
            Err(e) if is_connection_error(e) => slot.invalidate(self.generation, "connection error"),
            Err(_) => slot.succeeded(),
        }
    }
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "redlayer: redis command timed out"))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let timeout = self.inner.timeout;
            let call = match &mut self.raw {
                RawConnection::Single(c) => c.req_packed_command(cmd),
                #[cfg(feature = "cluster")]
                RawConnection::Cluster(c) => c.req_packed_command(cmd),
            };
            let result = tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| Err(timeout_error()));
            self.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let timeout = self.inner.timeout;
            let call = match &mut self.raw {
                RawConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
                #[cfg(feature = "cluster")]
                RawConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            };
            let result = tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| Err(timeout_error()));
            self.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.raw {
            RawConnection::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            RawConnection::Cluster(c) => c.get_db(),
        }
    }
}
