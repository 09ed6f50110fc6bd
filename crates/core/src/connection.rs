//! [`Connection`]: one command's view of a pooled multiplexed connection.

use std::sync::{Arc, atomic::Ordering};

use redis::{Cmd, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value, aio::ConnectionLike};

use crate::{
    error::is_connection_error,
    handle::{Inner, RawConnection},
};

/// A connection handed out by [`Redis::connection`](crate::Redis::connection).
///
/// Every command on it is bounded by the handle's timeout (redis-rs's
/// response timeout on a standalone connection, a timer of ours on a cluster). A connection error
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
        // On a cluster, the other masters' answers say nothing of a lost one:
        // they do not reset its timeouts (see `Slot::cluster_timed_out`).
        let single = matches!(self.raw, RawConnection::Single(_));
        match result {
            Ok(_) if single => slot.succeeded(),
            Ok(_) => {}
            // A cluster connection times out on one node's keys (a frozen
            // master) while the others answer: it keeps serving them, and a
            // new one is made in the background (see `Slot::cluster_timed_out`).
            #[cfg(feature = "cluster")]
            Err(e) if e.is_timeout() && !single => {
                crate::handle::Slot::cluster_timed_out(&self.inner, self.slot, self.generation)
            }
            Err(e) if e.is_timeout() => slot.timed_out(self.generation),
            Err(e) if is_connection_error(e) => slot.invalidate(self.generation, "connection error"),
            // The server at this address is a replica now: a new connection
            // finds the primary again if the address moved to it.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) => {
                slot.invalidate(self.generation, "server is read-only (a replica)")
            }
            Err(e)
                if single
                    && matches!(e.kind(), redis::ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)) =>
            {
                slot.succeeded();
                if !self.inner.told_moved.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        target: "redlayer",
                        error = %e,
                        "this single-server handle is on a node of a Redis Cluster: keys of the other nodes' slots \
                         fail; build it with `Redis::connect` (cluster feature) or `Redis::connect_cluster`"
                    );
                }
            }
            Err(_) if single => slot.succeeded(),
            Err(_) => {}
        }
    }
}

/// `call` within `timeout`, its expiry reported as a timed-out I/O error (as
/// redis-rs reports its own). A twentieth inside it: a caller's own timer of
/// the same length (a layer's) must not drop the call before the handle
/// learns that it timed out.
#[cfg(feature = "cluster")]
async fn bounded<T>(timeout: std::time::Duration, call: RedisFuture<'_, T>) -> Result<T, RedisError> {
    let timeout = (timeout - timeout / 20).max(std::time::Duration::from_millis(1));
    tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
        Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "redlayer: redis command timed out")))
    })
}

impl Connection {
    /// `PING`, answered by one node: the server, or one master (any) of a
    /// cluster (redis-rs sends a plain `PING` to every master).
    pub(crate) async fn ping(&mut self) -> crate::Result<()> {
        let ping = redis::cmd("PING");
        let result = match &mut self.raw {
            RawConnection::Single(c) => ping.query_async::<Value>(c).await,
            #[cfg(feature = "cluster")]
            RawConnection::Cluster(c) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                bounded(self.inner.timeout, Box::pin(c.route_command(ping, routing))).await
            }
        };
        self.observe(&result);
        result.map(drop).map_err(crate::Error::from)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = match &mut self.raw {
                // Bounded by redis-rs's response timeout, set to the handle's
                // on every pooled connection: one timer per command, not two.
                RawConnection::Single(c) => c.req_packed_command(cmd).await,
                // A cluster call may retry and wait for a slot refresh: bound it all.
                #[cfg(feature = "cluster")]
                RawConnection::Cluster(c) => bounded(self.inner.timeout, c.req_packed_command(cmd)).await,
            };
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
            let result = match &mut self.raw {
                RawConnection::Single(c) => c.req_packed_commands(pipeline, offset, count).await,
                #[cfg(feature = "cluster")]
                RawConnection::Cluster(c) => {
                    bounded(self.inner.timeout, c.req_packed_commands(pipeline, offset, count)).await
                }
            };
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
