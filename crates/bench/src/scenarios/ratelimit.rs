//! redlayer-ratelimit: a GCRA layer that never limits, and a flood of one
//! blocked key (with and without the local deny cache).

use axum::{
    Router,
    http::{HeaderName, HeaderValue, StatusCode},
    response::IntoResponse,
    routing::get,
};
use redlayer::ratelimit::{Key, Policy, Quota, RateLimitLayer, RateLimiter, Store};

use super::{Scenario, serve_with_peer};
use crate::http::Request;

/// The tower_governor scenarios (feature `peers`), for the comparisons.
pub(super) const GOVERNOR_OPEN: &str = "tower_governor 0.8: never limiting";
pub(super) const GOVERNOR_BLOCKED: &str = "tower_governor 0.8: blocked (429)";
/// The deny cache's answer from a plain handler.
const STATIC_429: &str = "ratelimit: the same 429 from a handler, no layer";

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

/// A server answering every request with a copy of `answer` (status, the
/// headers the layer set, body) from a plain handler: what the deny cache's
/// 429 costs without any layer, since it is larger than axum hello's answer.
async fn same_answer_without_layer(answer: &crate::http::Response) -> String {
    let status = StatusCode::from_u16(answer.status).expect("status");
    let headers: Vec<(HeaderName, HeaderValue)> = answer
        .headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "content-length" | "date" | "connection"))
        .map(|(name, value)| (name.parse().expect("header name"), value.parse().expect("header value")))
        .collect();
    let body = answer.body.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let (headers, body) = (headers.clone(), body.clone());
            async move {
                let mut response = (status, body).into_response();
                for (name, value) in headers {
                    response.headers_mut().insert(name, value);
                }
                response
            }
        }),
    );
    serve_with_peer(app).await
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

    let deny_cache = blocked(handle, "bench-deny-cache", None).await;
    let answer = blocked_request().send(&deny_cache, "").await;
    assert_eq!(answer.status, 429, "ratelimit setup: {answer:?}");
    let static_429 = same_answer_without_layer(&answer).await;

    vec![
        Scenario::new(
            "ratelimit",
            "ratelimit: GCRA, never limiting",
            "`RateLimitLayer` (Redis, GCRA 1,000,000/s per peer IP, `RateLimit` fields on every answer) \
             over the hello handler: one decision per request in `gcra.lua` (concurrent decisions share calls), \
             always allowed",
            open_addr,
            Request::get("/"),
        )
        .versus(GOVERNOR_OPEN),
        Scenario::new(
            "ratelimit",
            "ratelimit: blocked key, deny cache (429)",
            "the same layer keyed by `x-api-key`, 1/hour, every request with a key already over its quota: \
             answered 429 from the local deny cache (default on), no Redis call",
            deny_cache,
            blocked_request(),
        )
        .expect(429)
        .versus(GOVERNOR_BLOCKED)
        .versus(STATIC_429),
        Scenario::new(
            "ratelimit",
            STATIC_429,
            "axum without any layer answering a copy of the deny cache's 429 (status, `RateLimit-Policy`, \
             `RateLimit`, `Retry-After`, problem+json body: about 490 bytes against hello's 130): the cost of \
             the answer itself",
            static_429,
            blocked_request(),
        )
        .expect(429),
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
