//! The Redis backend: one hash per session, changed in Lua scripts.

use std::{
    collections::HashMap,
    sync::{
        LazyLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use redis::Value;
use redlayer_core::Redis;

use super::{CycleOutcome, Ended, IndexRow, LoadOutcome, Loaded, Moved, Renewal, WriteOp, WriteOutcome};
use crate::SessionError;

static TOUCH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/touch.lua")));
static SAVE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/save.lua")));
static CYCLE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/cycle.lua")));
static DELETE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/delete.lua")));
static INDEX_ADD: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../scripts/index_add.lua")));

fn decode(why: &str) -> SessionError {
    SessionError::Store(redlayer_core::Error::Decode(why.to_owned()))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Redis's clock, as this process estimates it between two readings: the
/// load path compares a session's times with Redis's clock, and reading
/// `TIME` on every load costs a command (and its reply) per request.
///
/// `TIME` is read with `HGETALL` (in one pipeline) at most every
/// [`CLOCK_SYNC_MS`]; in between, Redis's time is the last reading plus the
/// time elapsed here (monotonic clock). The reading is paired with the local
/// time taken before it was sent, so the estimate runs ahead of Redis by at
/// most the round trip: a touch may come that much early; a session found
/// past its absolute deadline by the estimate is checked again by
/// `touch.lua` on Redis's own clock before it is treated as ended. Redis
/// itself ends every session at its deadline (every refresh caps the key's TTL
/// there), so the estimate never keeps a session alive.
pub(crate) struct RedisClock {
    base: Instant,
    /// Local ms (since `base`) of the last reading, plus one; 0: never read.
    synced_at: AtomicU64,
    /// Redis ms minus local ms at the last reading.
    offset: AtomicI64,
}

/// Longest time between two readings of Redis's clock (ms).
const CLOCK_SYNC_MS: u64 = 1000;

impl RedisClock {
    pub(crate) fn new() -> Self {
        RedisClock { base: Instant::now(), synced_at: AtomicU64::new(0), offset: AtomicI64::new(0) }
    }

    fn local_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Redis's time at local time `local`, if the last reading is fresh.
    fn estimate(&self, local: u64) -> Option<i64> {
        let synced_at = self.synced_at.load(Ordering::Acquire);
        if synced_at == 0 || local.saturating_sub(synced_at - 1) >= CLOCK_SYNC_MS {
            return None;
        }
        Some(local as i64 + self.offset.load(Ordering::Relaxed))
    }

    fn record(&self, redis_ms: i64, local: u64) {
        self.offset.store(redis_ms - local as i64, Ordering::Relaxed);
        self.synced_at.store(local + 1, Ordering::Release);
    }

    /// Reads `TIME` again on the next load.
    fn invalidate(&self) {
        self.synced_at.store(0, Ordering::Release);
    }
}

/// `{-3, new key, sealed id}`: the alias of a renewed session (see `cycle.lua`).
fn moved(reply: &[Value]) -> Result<Moved, SessionError> {
    match (reply.get(1).and_then(text), reply.get(2).and_then(text)) {
        (Some(key), Some(sealed)) => Ok(Moved { key, sealed }),
        _ => Err(decode("an alias without its new key")),
    }
}

/// One round trip: `HGETALL` (with `TIME` in the same pipeline when the
/// estimate of Redis's clock is due for a new reading, see [`RedisClock`]).
/// The absolute deadline is checked against Redis's clock; the idle refresh,
/// when due (at most once per touch interval), is a second call to `touch.lua`.
/// The alias a renewal left behind is answered as [`LoadOutcome::Moved`].
pub(super) async fn load(
    redis: &Redis,
    clock: &RedisClock,
    key: &str,
    idle_ms: u64,
    touch_ms: u64,
) -> Result<LoadOutcome, SessionError> {
    let mut conn = redis.connection().await?;
    let local = clock.local_ms();
    let (now, flat): (i64, Vec<String>) = match clock.estimate(local) {
        Some(now) => (now, redis::cmd("HGETALL").arg(key).query_async(&mut conn).await?),
        None => {
            let ((secs, micros), flat): ((u64, u64), Vec<String>) =
                redis::pipe().cmd("TIME").cmd("HGETALL").arg(key).query_async(&mut conn).await?;
            let now = (secs * 1000 + micros / 1000) as i64;
            clock.record(now, local);
            (now, flat)
        }
    };
    if flat.is_empty() {
        return Ok(LoadOutcome::Missing);
    }
    let mut loaded = Loaded { fields: HashMap::with_capacity(flat.len() / 2), ..Loaded::default() };
    let (mut seen, mut deadline, mut created, mut issued) = (None, None, None, None);
    let (mut moved_to, mut sealed) = (None, None);
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        if let Some(field) = name.strip_prefix("f:") {
            loaded.fields.insert(field.to_owned(), value);
        } else {
            match name.as_str() {
                "m:u" => loaded.user = Some(value),
                "m:s" => seen = value.parse::<i64>().ok(),
                "m:a" => deadline = value.parse::<i64>().ok(),
                "m:c" => created = value.parse::<i64>().ok(),
                "m:i" => issued = value.parse::<i64>().ok(),
                "m:r" => moved_to = Some(value),
                "m:x" => sealed = Some(value),
                _ => {}
            }
        }
    }
    if let Some(key) = moved_to {
        return Ok(LoadOutcome::Moved(Moved { key, sealed: sealed.unwrap_or_default() }));
    }
    // Redis's clock is at least the last time it wrote: when the estimate is
    // behind that, use it (and read the clock again next time).
    let now = match seen {
        Some(seen) if seen > now => {
            clock.invalidate();
            seen
        }
        _ => now,
    };
    loaded.created_ms = created.unwrap_or_default();
    // Saturating: the times come from Redis, where anything may have written them.
    loaded.id_age_ms = issued.or(created).map_or(0, |issued| now.saturating_sub(issued));
    match deadline {
        Some(deadline) if now < deadline => {}
        _ => {
            // Past its absolute lifetime (or not a session we wrote): `touch.lua`
            // checks on Redis's clock and ends it; a live one is refreshed.
            let touched: i64 = TOUCH.key(key).arg(idle_ms).invoke_async(&mut conn).await?;
            return Ok(if touched == 1 { LoadOutcome::Found(loaded) } else { LoadOutcome::Missing });
        }
    }
    if seen.is_none_or(|seen| now.saturating_sub(seen) >= touch_ms as i64) {
        let touched: i64 = TOUCH.key(key).arg(idle_ms).invoke_async(&mut conn).await?;
        if touched == 0 {
            return Ok(LoadOutcome::Missing);
        }
    }
    Ok(LoadOutcome::Found(loaded))
}

pub(super) async fn write(redis: &Redis, key: &str, op: &WriteOp) -> Result<WriteOutcome, SessionError> {
    let mut invocation = SAVE.key(key);
    invocation
        .arg(if op.create { "n" } else { "e" })
        .arg(op.idle_ms)
        .arg(op.absolute_ms)
        .arg(if op.clear { "1" } else { "0" })
        .arg(op.user.as_deref().unwrap_or(""))
        .arg(op.deletes.len())
        .arg(op.sets.len())
        .arg(op.increments.len())
        .arg(op.touch_ms);
    for name in &op.deletes {
        invocation.arg(format!("f:{name}"));
    }
    for (name, value) in &op.sets {
        invocation.arg(format!("f:{name}")).arg(value);
    }
    for (name, by) in &op.increments {
        invocation.arg(format!("f:{name}")).arg(*by);
    }
    let mut conn = redis.connection().await?;
    let reply: Vec<Value> = invocation.invoke_async(&mut conn).await?;
    match reply.first().and_then(int) {
        Some(1) => Ok(WriteOutcome::Done {
            created_ms: reply.get(1).and_then(int).ok_or_else(|| decode("save: no creation time"))?,
            id_age_ms: reply.get(2).and_then(int).ok_or_else(|| decode("save: no id age"))?,
            increments: reply[3..]
                .iter()
                .map(|v| int(v).ok_or_else(|| decode("save: increment")))
                .collect::<Result<_, _>>()?,
        }),
        Some(0) => Ok(WriteOutcome::Gone),
        Some(-1) => Ok(WriteOutcome::Collision),
        Some(-2) => Ok(WriteOutcome::NotInteger(
            reply.get(1).and_then(text).and_then(|f| f.strip_prefix("f:").map(str::to_owned)).unwrap_or_default(),
        )),
        Some(-3) => Ok(WriteOutcome::Moved(moved(&reply)?)),
        _ => Err(decode("save: unexpected reply")),
    }
}

pub(super) async fn cycle(
    redis: &Redis,
    old: &str,
    new: &str,
    idle_ms: u64,
    renewal: Option<&Renewal>,
) -> Result<CycleOutcome, SessionError> {
    let mut conn = redis.connection().await?;
    let mut invocation = CYCLE.key(old);
    invocation.key(new);
    match renewal {
        Some(r) => invocation.arg(r.grace_ms).arg(&r.sealed).arg(r.min_age_ms),
        None => invocation.arg(0).arg("").arg(0),
    };
    invocation.arg(idle_ms);
    let reply: Vec<Value> = invocation.invoke_async(&mut conn).await?;
    match reply.first().and_then(int) {
        Some(1) => Ok(CycleOutcome::Done {
            user: reply.get(1).and_then(text).filter(|u| !u.is_empty()),
            created_ms: reply.get(2).and_then(int).unwrap_or_default(),
        }),
        Some(0) => Ok(CycleOutcome::Gone),
        Some(-1) => Ok(CycleOutcome::Collision),
        Some(-3) => Ok(CycleOutcome::Moved(moved(&reply)?)),
        Some(2) => Ok(CycleOutcome::NotDue),
        _ => Err(decode("cycle: unexpected reply")),
    }
}

pub(super) async fn delete(redis: &Redis, key: &str) -> Result<Ended, SessionError> {
    let mut conn = redis.connection().await?;
    let reply: Vec<Value> = DELETE.key(key).invoke_async(&mut conn).await?;
    Ok(Ended {
        existed: reply.first().and_then(int) == Some(1),
        user: reply.get(1).and_then(text).filter(|u| !u.is_empty()),
        key: reply.get(2).and_then(text).ok_or_else(|| decode("delete: no key"))?,
    })
}

pub(super) async fn index_add(
    redis: &Redis,
    index: &str,
    key: &str,
    created_ms: i64,
    absolute_ms: u64,
) -> Result<usize, SessionError> {
    let mut conn = redis.connection().await?;
    let entries: i64 = INDEX_ADD.key(index).arg(key).arg(created_ms).arg(absolute_ms).invoke_async(&mut conn).await?;
    Ok(entries.max(0) as usize)
}

pub(super) async fn index_remove(redis: &Redis, index: &str, key: &str) -> Result<(), SessionError> {
    let mut conn = redis.connection().await?;
    let _: i64 = redis::cmd("HDEL").arg(index).arg(key).query_async(&mut conn).await?;
    Ok(())
}

pub(super) async fn index_contains(redis: &Redis, index: &str, key: &str) -> Result<bool, SessionError> {
    let mut conn = redis.connection().await?;
    Ok(redis::cmd("HEXISTS").arg(index).arg(key).query_async(&mut conn).await?)
}

pub(super) async fn index_keys(redis: &Redis, index: &str) -> Result<Vec<String>, SessionError> {
    let mut conn = redis.connection().await?;
    Ok(redis::cmd("HKEYS").arg(index).query_async(&mut conn).await?)
}

/// How many session reads a listing (or prune) of a user's index sends at once.
const INDEX_READS_AT_ONCE: usize = 256;

pub(super) async fn index_rows(redis: &Redis, index: &str) -> Result<Vec<IndexRow>, SessionError> {
    let keys = index_keys(redis, index).await?;
    let mut rows = Vec::with_capacity(keys.len());
    let mut ended = Vec::new();
    for chunk in keys.chunks(INDEX_READS_AT_ONCE) {
        // Each session hash has its own slot: one command each (cluster-safe),
        // sent together: they share the multiplexed connection's round trips
        // (on a cluster, each goes to its node), not one round trip each.
        let reads = chunk.iter().map(|key| async move {
            let mut conn = redis.connection().await?;
            let meta: (Option<i64>, Option<i64>) =
                redis::cmd("HMGET").arg(key).arg("m:c").arg("m:s").query_async(&mut conn).await?;
            Ok::<_, SessionError>(meta)
        });
        for (key, meta) in chunk.iter().zip(futures_util::future::try_join_all(reads).await?) {
            match meta {
                (Some(created_ms), Some(seen_ms)) => rows.push(IndexRow { key: key.clone(), created_ms, seen_ms }),
                _ => ended.push(key.as_str()),
            }
        }
    }
    if !ended.is_empty() {
        // One command: every field is in the index's own key.
        let mut conn = redis.connection().await?;
        let _: i64 = redis::cmd("HDEL").arg(index).arg(&ended).query_async(&mut conn).await?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_estimate_is_fresh_for_a_second_and_can_be_dropped() {
        let clock = RedisClock::new();
        assert_eq!(clock.estimate(0), None, "never read");
        clock.record(1_000_000, 5);
        assert_eq!(clock.estimate(5), Some(1_000_000));
        assert_eq!(clock.estimate(500), Some(1_000_495), "last reading + local time elapsed");
        assert_eq!(clock.estimate(5 + CLOCK_SYNC_MS), None, "read again every second");
        clock.record(2_000_000, 2000);
        assert_eq!(clock.estimate(2001), Some(2_000_001));
        clock.invalidate();
        assert_eq!(clock.estimate(2001), None);
    }
}
