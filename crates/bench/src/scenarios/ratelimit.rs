//! redlayer-ratelimit: a GCRA layer that never limits, and a flood of one
//! blocked key (with and without the local deny cache).

use axum::{Router, routing::get};
use redlayer::ratelimit::{Key, Policy, Quota, RateLimitLayer, RateLimiter, Store};

use super::{Scenario, serve_with_peer};
use crate::http::Request;

/// The tower_governor scenarios (feature `peers`), for the comparisons.
pub(super) const GOVERNOR_OPEN: &str = "tower_governor 0.8: never limiting";
pub(super) const GOVERNOR_BLOCKED: &str = "tower_governor 0.8: blocked (429)";

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// A server whose only client key (`x-api-key: blocked`) has used up its
/// quota of one request per hour.
async fn blocked(handle: &redlayer::Redis, name: &str, deny_cache: Option<usize>) -> String {
    let mut limiter = RateLimiter::builder(Store::redis(handle.clone()))
        .name(name)
        .policy(Policy::gcra("per-key", Quota::per_hour(1)).key(Key::header("x-api-key")));
    if let Some(entries) = deny_cache {
        limiter = limiter.deny_cache(entries);
    }
    let addr = serve_with_peer(hello().layer(RateLimitLayer::new(limiter.build()))).await;
    let first = blocked_request().send(&addr, "").await;
    assert_eq!(first.status, 200, "ratelimit setup ({name}): {first:?}");
    addr
}

fn blocked_request() -> Request {
    Request::get("/").header("x-api-key", "blocked")
}

pub async fn start(handle: &redlayer::Redis) -> Vec<Scenario> {
    let open = RateLimiter::builder(Store::redis(handle.clone()))
        .name("bench-open")
        .policy(Policy::gcra("per-ip", Quota::per_second(1_000_000)))
        .build();
    let open_addr = serve_with_peer(hello().layer(RateLimitLayer::new(open))).await;

    vec![
        Scenario::new(
            "ratelimit",
            "ratelimit: GCRA, never limiting",
            "`RateLimitLayer` (Redis, GCRA 1,000,000/s per peer IP, `RateLimit` fields on every answer) \
             over the hello handler: one script call per request, always allowed",
            open_addr,
            Request::get("/"),
        )
        .versus(GOVERNOR_OPEN),
        Scenario::new(
            "ratelimit",
            "ratelimit: blocked key, deny cache (429)",
            "the same layer keyed by `x-api-key`, 1/hour, every request with a key already over its quota: \
             answered 429 from the local deny cache (default on), no Redis call",
            blocked(handle, "bench-deny-cache", None).await,
            blocked_request(),
        )
        .expect(429)
        .versus(GOVERNOR_BLOCKED),
        Scenario::new(
            "ratelimit",
            "ratelimit: blocked key, no deny cache (429)",
            "as above with `deny_cache(0)`: every 429 is decided by the script in Redis",
            blocked(handle, "bench-no-deny-cache", Some(0)).await,
            blocked_request(),
        )
        .expect(429),
    ]
}
