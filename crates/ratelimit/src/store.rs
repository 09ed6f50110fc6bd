//! [`Store`]: where the limiter keeps its state (Redis or memory).

use std::{
    fmt,
    sync::{Arc, LazyLock},
};

use futures_util::future::BoxFuture;
use redlayer_core::{KeyBuilder, Redis, Result, memory::Clock};

use crate::{batch::Batchers, memory::MemoryStore};

/// The one Lua script of every decision (see `src/scripts/limit.lua`).
static LIMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/limit.lua")));
/// The same decisions for a limiter of one GCRA policy, at a smaller cost to
/// Redis, several in one call (see `src/scripts/gcra.lua` and `src/batch.rs`).
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/gcra.lua")));

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
    /// The handle, and the batchers of one-GCRA-policy decisions.
    Redis(Redis, Arc<Batchers>),
    Memory(Arc<MemoryStore>, KeyBuilder),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreKind::Redis(r, _) => f.debug_tuple("Store::Redis").field(r).finish(),
            StoreKind::Memory(..) => f.write_str("Store::Memory"),
        }
    }
}

/// Default bound of [`Store::memory`] (live keys; about 100 bytes each,
/// more for sliding-log policies).
pub const DEFAULT_MEMORY_MAX_KEYS: usize = 1_000_000;

impl Store {
    /// State in Redis, through the shared handle: exact across instances.
    pub fn redis(redis: Redis) -> Self {
        let batchers = Arc::new(Batchers::new(redis.clone()));
        Store { kind: StoreKind::Redis(redis, batchers) }
    }

    /// State in this process's memory, on the system clock, for at most
    /// [`DEFAULT_MEMORY_MAX_KEYS`] keys (see [`Store::memory_with_max_keys`]).
    pub fn memory() -> Self {
        Self::memory_with_clock(None)
    }

    /// State in memory for at most `max_keys` live keys: once full, each
    /// policy counts every new key together in one overflow bucket (so a flood
    /// of client-chosen keys is limited as one client, never unbounded), until
    /// expired keys make room.
    pub fn memory_with_max_keys(max_keys: usize) -> Self {
        Self::memory_with(None, max_keys.max(1))
    }

    /// State in memory on a given clock (e.g. [`redlayer_core::memory::ManualClock`] in tests).
    pub fn memory_with_clock(clock: Option<Arc<dyn Clock>>) -> Self {
        Self::memory_with(clock, DEFAULT_MEMORY_MAX_KEYS)
    }

    fn memory_with(clock: Option<Arc<dyn Clock>>, max_keys: usize) -> Self {
        Store { kind: StoreKind::Memory(Arc::new(MemoryStore::bounded(clock, max_keys)), KeyBuilder::default()) }
    }

    /// The clock a memory store was given, if any.
    pub(crate) fn clock(&self) -> Option<Arc<dyn Clock>> {
        match &self.kind {
            StoreKind::Memory(memory, _) => memory.given_clock(),
            StoreKind::Redis(..) => None,
        }
    }

    /// The key builder (prefix) of this store.
    pub(crate) fn keys(&self) -> &KeyBuilder {
        match &self.kind {
            StoreKind::Redis(r, _) => r.keys(),
            StoreKind::Memory(_, k) => k,
        }
    }

    /// The Redis handle, if any.
    pub(crate) fn redis_handle(&self) -> Option<&Redis> {
        match &self.kind {
            StoreKind::Redis(r, _) => Some(r),
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
            StoreKind::Redis(redis, batchers) => {
                if let [only] = specs
                    && only.algorithm == crate::quota::Algorithm::Gcra.code()
                {
                    let ask = GcraAsk { key: keys[0].clone(), cost, interval: only.gcra_interval(), burst: only.burst };
                    let outcome = batchers.decide(ask).await?;
                    return Ok((outcome.allowed, vec![outcome]));
                }
                // EVALSHA built straight into one command (what `Script::invoke_async`
                // does, without its intermediate copies of every key and argument).
                let key_bytes: usize = keys.iter().map(|k| k.len()).sum();
                let mut cmd = redis::Cmd::with_capacity(5 + keys.len() + 4 * specs.len(), 96 + key_bytes);
                cmd.arg("EVALSHA").arg(LIMIT.get_hash()).arg(keys.len());
                for key in keys {
                    cmd.arg(key.as_str());
                }
                cmd.arg(cost).arg(specs.len());
                for s in specs {
                    cmd.arg(s.algorithm).arg(s.count).arg(s.period_us).arg(s.burst);
                }
                let outcomes: Vec<RawOutcome> =
                    four_each(&run_script(redis, &LIMIT, &cmd).await?, specs.len())?.map(outcome).collect();
                Ok((outcomes.iter().all(|o| o.allowed), outcomes))
            }
        }
    }
}

/// One decision of a limiter of one GCRA policy, as `gcra.lua` takes it.
#[derive(Debug, Default)]
pub(crate) struct GcraAsk {
    pub(crate) key: String,
    pub(crate) cost: u64,
    /// The emission interval, µs ([`PolicySpec::gcra_interval`]).
    pub(crate) interval: i64,
    pub(crate) burst: i64,
}

/// Decides `asks` in one `gcra.lua` call, one after another: each one's
/// outcome, or an error for a decision whose key held something else than a
/// GCRA state.
pub(crate) async fn decide_gcra(redis: &Redis, asks: &[GcraAsk]) -> Result<Vec<Result<RawOutcome>>> {
    let key_bytes: usize = asks.iter().map(|a| a.key.len()).sum();
    let mut cmd = redis::Cmd::with_capacity(3 + 4 * asks.len(), 64 + key_bytes + 32 * asks.len());
    cmd.arg("EVALSHA").arg(GCRA.get_hash()).arg(asks.len());
    for ask in asks {
        cmd.arg(ask.key.as_str());
    }
    for ask in asks {
        cmd.arg(ask.cost).arg(ask.interval).arg(ask.burst);
    }
    let raw = run_script(redis, &GCRA, &cmd).await?;
    let decided = |c: &[i64]| match c[0] {
        -1 => Err(redlayer_core::Error::Decode("the rate-limit key holds something else than a GCRA state".into())),
        _ => Ok(outcome(c)),
    };
    Ok(four_each(&raw, asks.len())?.map(decided).collect())
}

/// Runs `cmd`, an `EVALSHA` of `script`, loading the script first if Redis
/// does not have it yet (or lost it in a restart), as redis-rs does.
/// Boxed: redis-rs's futures are large, and every future that awaits this
/// one inline (up to the layer's, boxed per request) would carry and move
/// their size.
fn run_script<'a>(redis: &'a Redis, script: &'a redis::Script, cmd: &'a redis::Cmd) -> BoxFuture<'a, Result<Vec<i64>>> {
    Box::pin(async move {
        let mut conn = redis.connection().await?;
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.load_async(&mut conn).await?;
                Ok(cmd.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    })
}

/// The scripts answer 4 values per policy (limit.lua) or per decision
/// (gcra.lua): `n` groups of them.
fn four_each(raw: &[i64], n: usize) -> Result<std::slice::ChunksExact<'_, i64>> {
    if raw.len() != 4 * n {
        return Err(redlayer_core::Error::Decode(format!("rate-limit script answered {} values", raw.len())));
    }
    Ok(raw.chunks_exact(4))
}

/// One group of 4: allowed, remaining, reset_us, retry_us.
fn outcome(c: &[i64]) -> RawOutcome {
    RawOutcome { allowed: c[0] == 1, remaining: c[1], reset_us: c[2], retry_us: c[3] }
}

/// One policy's parameters, as the script takes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicySpec {
    pub(crate) algorithm: i64,
    pub(crate) count: i64,
    pub(crate) period_us: i64,
    pub(crate) burst: i64,
}

impl PolicySpec {
    /// GCRA's emission interval (microseconds), as `limit.lua` computes it:
    /// `max(1, floor(period / count))` (exact: both are below 2^53).
    pub(crate) fn gcra_interval(&self) -> i64 {
        (self.period_us / self.count.max(1)).max(1)
    }
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
