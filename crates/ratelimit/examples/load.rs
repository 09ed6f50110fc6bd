//! A load target for comparing the layer with its floor (not a test):
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release -p redlayer-ratelimit --example load
//! wrk -c32 -d10s http://127.0.0.1:3900/hello     # axum alone
//! wrk -c32 -d10s http://127.0.0.1:3900/incr      # one INCR through the shared handle (the floor)
//! wrk -c32 -d10s http://127.0.0.1:3900/script    # a minimal Lua script (TIME, GET, SET PX) from a handler
//! wrk -c32 -d10s http://127.0.0.1:3900/check     # RateLimiter::check from a handler (no layer)
//! wrk -c32 -d10s http://127.0.0.1:3900/allowed   # the layer, every request allowed (one EVALSHA)
//! wrk -c32 -d10s http://127.0.0.1:3900/blocked   # the layer, every request denied (deny cache)
//! ```

use std::net::SocketAddr;

use axum::{Router, routing::get};
use redlayer_core::{KeyPart, Redis};
use redlayer_ratelimit::{Policy, Quota, RateLimitLayer, RateLimiter, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let redis = Redis::connect(&url).await?;
    let allowed = RateLimiter::builder(Store::redis(redis.clone()))
        .policy(Policy::gcra("open", Quota::per_second(1_000_000_000)))
        .build();
    let blocked =
        RateLimiter::builder(Store::redis(redis.clone())).policy(Policy::gcra("shut", Quota::per_hour(1))).build();
    let counter = redis.clone();
    let plain = allowed.clone();
    let raw = redis.clone();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/incr",
            get(move || {
                let redis = counter.clone();
                async move {
                    let key = redis.keys().key("load", &KeyPart::fixed("incr"));
                    let mut conn = redis.connection().await.map_err(|_| http::StatusCode::SERVICE_UNAVAILABLE)?;
                    let n: i64 = redis::cmd("INCR")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .map_err(|_| http::StatusCode::SERVICE_UNAVAILABLE)?;
                    Ok::<_, http::StatusCode>(n.to_string())
                }
            }),
        )
        .route(
            "/check",
            get(move || {
                let plain = plain.clone();
                async move { if plain.check("x", 1).await.is_allowed() { "ok" } else { "no" } }
            }),
        )
        .route(
            "/script",
            get(move || {
                let redis = raw.clone();
                async move {
                    static S: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
                        redis::Script::new("local t = redis.call('TIME') local v = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], t[1], 'PX', 1000) return {1,2,3,4,5}")
                    });
                    let mut conn = redis.connection().await.map_err(|_| http::StatusCode::SERVICE_UNAVAILABLE)?;
                    let v: Vec<i64> = S.key("load:{s}").invoke_async(&mut conn).await.map_err(|_| http::StatusCode::SERVICE_UNAVAILABLE)?;
                    Ok::<_, http::StatusCode>(v.len().to_string())
                }
            }),
        )
        .merge(Router::new().route("/allowed", get(|| async { "hello" })).route_layer(RateLimitLayer::new(allowed)))
        .merge(Router::new().route("/blocked", get(|| async { "hello" })).route_layer(RateLimitLayer::new(blocked)));
    let addr = SocketAddr::from(([127, 0, 0, 1], 3900));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("load: http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
