//! [`Store`]: where the limiter keeps its state (Redis or memory).

use std::{
    fmt,
    sync::{Arc, LazyLock},
};

use redlayer_core::{KeyBuilder, Redis, Result, memory::Clock};

use crate::memory::MemoryStore;

/// The one Lua script of every decision (see `src/scripts/limit.lua`).
static LIMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/limit.lua")));

/// Where limiter state lives: Redis (shared by every instance) or this
/// process's memory (same semantics, one instance).
///
/// ```no_run
/// # async fn demo() -> Result<(), redlayer_core::Error> {
/// use redlayer_ratelimit::Store;
/// let shared = Store::redis(redlayer_core::Redis::connect("redis://127.0.0.1/").await?);
/// let local = Store::memory();
/// # let _ = (shared, local); Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) kind: StoreKind,
}

#[derive(Clone)]
pub(crate) enum StoreKind {
    Redis(Redis),
    Memory(Arc<MemoryStore>, KeyBuilder),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreKind::Redis(r) => f.debug_tuple("Store::Redis").field(r).finish(),
            StoreKind::Memory(..) => f.write_str("Store::Memory"),
        }
    }
}

impl Store {
    /// State in Redis, through the shared handle: exact across instances.
    pub fn redis(redis: Redis) -> Self {
        Store { kind: StoreKind::Redis(redis) }
    }

    /// State in this process's memory, on the system clock.
    pub fn memory() -> Self {
        Self::memory_with_clock(None)
    }

    /// State in memory on a given clock (e.g. [`redlayer_core::memory::ManualClock`] in tests).
    pub fn memory_with_clock(clock: Option<Arc<dyn Clock>>) -> Self {
        Store { kind: StoreKind::Memory(Arc::new(MemoryStore::new(clock)), KeyBuilder::default()) }
    }

    /// The key builder (prefix) of this store.
    pub(crate) fn keys(&self) -> &KeyBuilder {
        match &self.kind {
            StoreKind::Redis(r) => r.keys(),
            StoreKind::Memory(_, k) => k,
        }
    }

    /// The Redis handle, if any.
    pub(crate) fn redis_handle(&self) -> Option<&Redis> {
        match &self.kind {
            StoreKind::Redis(r) => Some(r),
            StoreKind::Memory(..) => None,
        }
    }

    /// One atomic decision over every policy.
    pub(crate) async fn decide(
        &self,
        keys: &[String],
        specs: &[PolicySpec],
        cost: u64,
    ) -> Result<(bool, Vec<RawOutcome>)> {
        let cost = cost.min(crate::quota::MAX_COST);
        match &self.kind {
            StoreKind::Memory(m, _) => Ok(m.decide(keys, specs, cost)),
            StoreKind::Redis(redis) => {
                let mut invocation = LIMIT.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                invocation.arg(cost).arg(specs.len());
                for s in specs {
                    invocation.arg(s.algorithm).arg(s.count).arg(s.period_us).arg(s.burst);
                }
                let mut conn = redis.connection().await?;
                let raw: Vec<i64> = invocation.invoke_async(&mut conn).await?;
                parse(&raw, specs.len())
            }
        }
    }
}

fn parse(raw: &[i64], n: usize) -> Result<(bool, Vec<RawOutcome>)> {
    if raw.len() != 1 + 4 * n {
        return Err(redlayer_core::Error::Decode(format!("rate-limit script answered {} values", raw.len())));
    }
    let outcomes = raw[1..]
        .chunks_exact(4)
        .map(|c| RawOutcome { allowed: c[0] == 1, remaining: c[1], reset_us: c[2], retry_us: c[3] })
        .collect();
    Ok((raw[0] == 1, outcomes))
}

/// One policy's parameters, as the script takes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicySpec {
    pub(crate) algorithm: i64,
    pub(crate) count: i64,
    pub(crate) period_us: i64,
    pub(crate) burst: i64,
}

/// One policy's outcome, as the script returns it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawOutcome {
    pub(crate) allowed: bool,
    pub(crate) remaining: i64,
    pub(crate) reset_us: i64,
    /// 0 when allowed, -1 when the cost can never fit.
    pub(crate) retry_us: i64,
}
