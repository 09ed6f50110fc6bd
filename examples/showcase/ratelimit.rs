//! Rate limiting: `GET /api/limited`, 5 requests per minute per client IP.

use axum::{Router, routing::get};
use redlayer::ratelimit::{Policy, Quota, RateLimitLayer, RateLimiter, Store};

use crate::Backend;

/// Lines of the index page for these routes.
pub const INDEX: &str = "GET  /api/limited         rate limited: 5 requests per minute per client IP (burst 5); \
the 6th gets 429 + Retry-After + RateLimit-Policy/RateLimit (shared by every instance on one Redis)\n";

/// The routes, with their layers.
pub fn routes(backend: &Backend) -> Router {
    let store = match &backend.redis {
        Some(redis) => Store::redis(redis.clone()),
        None => Store::memory(),
    };
    let limiter = RateLimiter::builder(store).policy(Policy::gcra("per-ip", Quota::per_minute(5).burst(5))).build();
    // Peer IP from `into_make_service_with_connect_info::<SocketAddr>()` (the default key).
    Router::new()
        .route("/api/limited", get(|| async { "you are within your rate limit\n" }))
        .route_layer(RateLimitLayer::new(limiter))
}
