//! The Redis backend: one hash per session, changed in Lua scripts.

use std::{collections::HashMap, sync::LazyLock};

use redis::Value;
use redlayer_core::Redis;

use super::{CycleOutcome, IndexRow, Loaded, WriteOp, WriteOutcome};
use crate::SessionError;

static TOUCH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/touch.lua")));
static SAVE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/save.lua")));
static CYCLE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/cycle.lua")));
static DESTROY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("../scripts/destroy.lua")));
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

/// One round trip: `TIME` and `HGETALL` pipelined (plain commands are much
/// cheaper for Redis than a script, and this is the hot path). The absolute
/// deadline is checked against Redis's clock; the idle refresh, when due
/// (at most once per touch interval), is a second call to `touch.lua`.
pub(super) async fn load(
    redis: &Redis,
    key: &str,
    idle_ms: u64,
    touch_ms: u64,
) -> Result<Option<Loaded>, SessionError> {
    let mut conn = redis.connection().await?;
    let ((secs, micros), flat): ((u64, u64), Vec<String>) =
        redis::pipe().cmd("TIME").cmd("HGETALL").arg(key).query_async(&mut conn).await?;
    if flat.is_empty() {
        return Ok(None);
    }
    let now = (secs * 1000 + micros / 1000) as i64;
    let mut loaded = Loaded { fields: HashMap::with_capacity(flat.len() / 2), user: None };
    let (mut seen, mut deadline) = (None, None);
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        if let Some(field) = name.strip_prefix("f:") {
            loaded.fields.insert(field.to_owned(), value);
        } else {
            match name.as_str() {
                "m:u" => loaded.user = Some(value),
                "m:s" => seen = value.parse::<i64>().ok(),
                "m:a" => deadline = value.parse::<i64>().ok(),
                _ => {}
            }
        }
    }
    match deadline {
        Some(deadline) if now < deadline => {}
        _ => {
            // Past its absolute lifetime (or not a session we wrote): end it.
            let _: i64 = TOUCH.key(key).arg(idle_ms).invoke_async(&mut conn).await?;
            return Ok(None);
        }
    }
    if seen.is_none_or(|seen| now - seen >= touch_ms as i64) {
        let touched: i64 = TOUCH.key(key).arg(idle_ms).invoke_async(&mut conn).await?;
        if touched == 0 {
            return Ok(None);
        }
    }
    Ok(Some(loaded))
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
        .arg(op.increments.len());
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
            increments: reply[2..]
                .iter()
                .map(|v| int(v).ok_or_else(|| decode("save: increment")))
                .collect::<Result<_, _>>()?,
        }),
        Some(0) => Ok(WriteOutcome::Gone),
        Some(-1) => Ok(WriteOutcome::Collision),
        Some(-2) => Ok(WriteOutcome::NotInteger(
            reply.get(1).and_then(text).and_then(|f| f.strip_prefix("f:").map(str::to_owned)).unwrap_or_default(),
        )),
        _ => Err(decode("save: unexpected reply")),
    }
}

pub(super) async fn cycle(redis: &Redis, old: &str, new: &str) -> Result<CycleOutcome, SessionError> {
    let mut conn = redis.connection().await?;
    let reply: Vec<Value> = CYCLE.key(old).key(new).invoke_async(&mut conn).await?;
    match reply.first().and_then(int) {
        Some(1) => Ok(CycleOutcome::Done {
            user: reply.get(1).and_then(text).filter(|u| !u.is_empty()),
            created_ms: reply.get(2).and_then(int).unwrap_or_default(),
        }),
        Some(0) => Ok(CycleOutcome::Gone),
        Some(-1) => Ok(CycleOutcome::Collision),
        _ => Err(decode("cycle: unexpected reply")),
    }
}

pub(super) async fn destroy(redis: &Redis, key: &str) -> Result<Option<String>, SessionError> {
    let mut conn = redis.connection().await?;
    let reply: Vec<Value> = DESTROY.key(key).invoke_async(&mut conn).await?;
    Ok(reply.get(1).and_then(text).filter(|u| !u.is_empty()))
}

pub(super) async fn delete(redis: &Redis, key: &str) -> Result<bool, SessionError> {
    let mut conn = redis.connection().await?;
    let n: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
    Ok(n > 0)
}

pub(super) async fn index_add(
    redis: &Redis,
    index: &str,
    key: &str,
    created_ms: i64,
    absolute_ms: u64,
) -> Result<(), SessionError> {
    let mut conn = redis.connection().await?;
    let _: i64 = INDEX_ADD.key(index).arg(key).arg(created_ms).arg(absolute_ms).invoke_async(&mut conn).await?;
    Ok(())
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

pub(super) async fn index_rows(redis: &Redis, index: &str) -> Result<Vec<IndexRow>, SessionError> {
    let keys = index_keys(redis, index).await?;
    let mut rows = Vec::with_capacity(keys.len());
    let mut conn = redis.connection().await?;
    for key in keys {
        // Each session hash has its own slot: one command each (cluster-safe).
        let meta: (Option<i64>, Option<i64>) =
            redis::cmd("HMGET").arg(&key).arg("m:c").arg("m:s").query_async(&mut conn).await?;
        match meta {
            (Some(created_ms), Some(seen_ms)) => rows.push(IndexRow { key, created_ms, seen_ms }),
            _ => {
                let _: i64 = redis::cmd("HDEL").arg(index).arg(&key).query_async(&mut conn).await?;
            }
        }
    }
    Ok(rows)
}
