//! Redlock: one lock over N independent Redis servers (majority quorum).

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use redlayer_core::{Error, Redis, Result};

use crate::{
    guard::drift,
    locks::{ACQUIRE, EXTEND, RELEASE},
};

/// Raises a node's fencing counter to a token issued by a majority (see the script).
static FENCE_RAISE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/fence_raise.lua")));

/// The time one node gets to answer: a tenth of the ttl, between 5 ms and
/// the handle's own timeout, so a dead node cannot eat the validity.
fn node_timeout(redis: &Redis, ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(5)).min(redis.timeout())
}

async fn on_node<T: redis::FromRedisValue>(
    redis: &Redis,
    ttl: Duration,
    invocation: &redis::ScriptInvocation<'_>,
) -> Result<T> {
    let call = async {
        let mut conn = redis.connection().await?;
        Ok::<T, Error>(invocation.invoke_async(&mut conn).await?)
    };
    let limit = node_timeout(redis, ttl);
    tokio::time::timeout(limit, call).await.unwrap_or(Err(Error::Timeout(limit)))
}

pub(crate) fn quorum(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// One Redlock attempt. `Ok(Ok((fence, validity)))` when a majority granted the
/// lock within its validity; `Ok(Err(holder ttl))` when the lock is busy;
/// `Err` when too few nodes answered to decide.
pub(crate) async fn acquire(
    nodes: &[Redis],
    key: &str,
    fence_key: &str,
    token: &str,
    ttl: Duration,
    ms: u64,
    retention_ms: u64,
) -> Result<std::result::Result<(u64, Instant), Duration>> {
    let started = Instant::now();
    let mut invocation = ACQUIRE.key(key);
    invocation.key(fence_key).arg(token).arg(ms).arg(retention_ms);
    let answers: Vec<Result<(i64, i64)>> = join_all(nodes.iter().map(|n| on_node(n, ttl, &invocation))).await;
    let mut granted: Vec<u64> = Vec::new();
    let mut busy_ttl: Option<Duration> = None;
    let mut reachable = 0;
    let mut last_error = None;
    for answer in answers {
        match answer {
            Ok((1, fence)) => {
                reachable += 1;
                granted.push(fence.max(0) as u64);
            }
            Ok((_, pttl)) => {
                reachable += 1;
                let pttl = Duration::from_millis(pttl.max(0) as u64);
                busy_ttl = Some(busy_ttl.map_or(pttl, |b| b.min(pttl)));
            }
            Err(e) => last_error = Some(e),
        }
    }
    let elapsed = started.elapsed();
    let validity = ttl.checked_sub(elapsed + drift(ttl));
    if granted.len() >= quorum(nodes.len())
        && let Some(validity) = validity
        && !validity.is_zero()
    {
        // Each node counts on its own (their counters start at their own
        // clocks and skip the acquisitions they missed), so the largest token
        // of this majority may be above what another majority would issue
        // next. Unless a majority already stands at it, raise every node's
        // counter to it first: every later majority then overlaps one of them.
        let fence = granted.iter().copied().max().unwrap_or(0);
        let at_fence = granted.iter().filter(|f| **f == fence).count();
        let raised = at_fence >= quorum(nodes.len()) || raise_fence(nodes, fence_key, fence, ttl, retention_ms).await;
        let validity = ttl.checked_sub(started.elapsed() + drift(ttl)).filter(|v| !v.is_zero());
        if raised && validity.is_some() {
            // The paper's validity (ttl − elapsed − drift) counted from the
            // end of the attempt: `started` + ttl − drift (every node set the
            // key at or after `started`).
            return Ok(Ok((fence, started + ttl.saturating_sub(drift(ttl)))));
        }
        if !raised {
            last_error = Some(Error::Unavailable("redlock: too few nodes took the fencing token".into()));
            reachable = 0;
        }
    }
    // Failed: undo on every node (also those that did not answer: the command may have run).
    release(nodes, key, token, ttl).await;
    if reachable < quorum(nodes.len()) {
        return Err(last_error.unwrap_or_else(|| Error::Unavailable("redlock: too few nodes answered".into())));
    }
    Ok(Err(busy_ttl.unwrap_or(Duration::ZERO)))
}

/// Raises the fencing counter on every node; true when a majority confirmed.
async fn raise_fence(nodes: &[Redis], fence_key: &str, fence: u64, ttl: Duration, retention_ms: u64) -> bool {
    let mut invocation = FENCE_RAISE.key(fence_key);
    invocation.arg(fence).arg(retention_ms);
    let answers: Vec<Result<i64>> = join_all(nodes.iter().map(|n| on_node(n, ttl, &invocation))).await;
    answers.iter().filter(|a| a.is_ok()).count() >= quorum(nodes.len())
}

/// Releases on every node; true when a majority still held our token.
pub(crate) async fn release(nodes: &[Redis], key: &str, token: &str, ttl: Duration) -> bool {
    let mut invocation = RELEASE.key(key);
    invocation.arg(token);
    let answers: Vec<Result<i64>> = join_all(nodes.iter().map(|n| on_node(n, ttl, &invocation))).await;
    answers.iter().filter(|a| matches!(a, Ok(1))).count() >= quorum(nodes.len())
}

/// Extends on every node; true when a majority extended it.
pub(crate) async fn extend(nodes: &[Redis], key: &str, token: &str, ttl: Duration, ms: u64) -> Result<bool> {
    let mut invocation = EXTEND.key(key);
    invocation.arg(token).arg(ms);
    let answers: Vec<Result<i64>> = join_all(nodes.iter().map(|n| on_node(n, ttl, &invocation))).await;
    let extended = answers.iter().filter(|a| matches!(a, Ok(1))).count();
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    if extended >= quorum(nodes.len()) {
        Ok(true)
    } else if answered >= quorum(nodes.len()) {
        Ok(false)
    } else {
        Err(Error::Unavailable("redlock: too few nodes answered the extension".into()))
    }
}
