//! The whole stack: rate limit, cache, session, idempotency on one handle,
//! as in examples/full_stack.rs, on a cacheable page (a hit) and on a
//! handler doing the floor's `INCR` that is not cacheable (every layer on
//! its pass-through path).

use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use redlayer::{
    cache::CacheLayer,
    idempotency::IdempotencyLayer,
    ratelimit::{Key, NoKey, Policy, Quota, RateLimitLayer, RateLimiter, Store},
    session::SessionLayer,
};

use super::{Scenario, serve_with_peer};
use crate::http::Request;

async fn incr(State(redis): State<redlayer::Redis>) -> Result<String, StatusCode> {
    let mut conn = redis.connection().await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let n: i64 =
        redis::cmd("INCR").arg("bench:stack").query_async(&mut conn).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(n.to_string())
}

fn stack(handle: &redlayer::Redis) -> Router {
    let limiter = RateLimiter::builder(Store::redis(handle.clone()))
        .name("bench-stack")
        .policy(Policy::gcra("per-ip", Quota::per_second(1_000_000)))
        .policy(Policy::fixed_window("per-key", Quota::per_day(1_000_000_000)).key(Key::header("x-api-key")))
        .build();
    Router::new()
        .route("/incr", get(incr))
        .route("/page", get(|| async { ([("cache-control", "public, max-age=3600")], "a cacheable page") }))
        .with_state(handle.clone())
        .layer(IdempotencyLayer::redis(handle.clone()))
        .layer(SessionLayer::new(handle.clone()))
        .layer(CacheLayer::new(handle.clone()))
        .layer(RateLimitLayer::new(limiter).no_key(NoKey::Skip))
}

pub async fn start(handle: &redlayer::Redis) -> Vec<Scenario> {
    let addr = serve_with_peer(stack(handle)).await;
    for _ in 0..40 {
        let res = Request::get("/page").send(&addr, "").await;
        assert_eq!(res.status, 200, "stack setup: {res:?}");
        if res.header("cache-status").is_some_and(|s| s.contains("hit")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vec![
        Scenario::new(
            "stack",
            "full stack: uncacheable GET doing INCR",
            "rate limit (GCRA per IP; per-API-key policy skipped without a key) + cache (one lookup: the \
             route is marked hit-for-pass after its first unstorable answer) + session (untouched: no command) + idempotency (GET passes) \
             around the floor's INCR handler",
            addr.clone(),
            Request::get("/incr"),
        ),
        Scenario::new(
            "stack",
            "full stack: cached page (hit)",
            "the same stack; `/page` is `public, max-age=3600` and stored at setup: rate limit + cache hit",
            addr,
            Request::get("/page"),
        ),
    ]
}
