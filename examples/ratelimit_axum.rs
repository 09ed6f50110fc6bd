//! Per-IP and per-API-key rate limits on an axum app, decided together.
//!
//! ```text
//! cargo run --example ratelimit_axum                                   # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example ratelimit_axum  # shared in Redis
//! curl -i localhost:3000/                      # 10/s per IP (burst 20)
//! curl -i -H 'x-api-key: demo' localhost:3000/ # and 1000/day per API key
//! curl -i -X POST -H 'x-items: 5' localhost:3000/bulk   # costs 5
//! TRUSTED_PROXY=1 cargo run --example ratelimit_axum   # behind one proxy: the IP from X-Forwarded-For
//! ```

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use redlayer::{
    FailurePolicy,
    ratelimit::{ClientIp, Key, NoKey, Policy, Quota, RateLimitLayer, RateLimiter, Store},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // One Redis handle for every limiter (a cluster node's URL gives a
    // cluster handle; while Redis is down the app starts anyway, and each
    // limiter counts in this process, with the same policy, until it is up).
    let redis = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            Some(redlayer::Redis::builder().timeout(Duration::from_millis(200)).connect_or_lazy(&url).await?)
        }
        _ => None,
    };
    let store = || redis.clone().map_or_else(Store::memory, Store::redis);

    // Per IP (behind one trusted reverse proxy that appends X-Forwarded-For
    // when TRUSTED_PROXY=1; the peer address otherwise), and per API key.
    let client_ip = if std::env::var("TRUSTED_PROXY").is_ok() {
        ClientIp::x_forwarded_for().trusted_hops(1)
    } else {
        ClientIp::peer()
    };
    let limiter = RateLimiter::builder(store())
        .name("example-api")
        .policy(Policy::gcra("per-ip", Quota::per_second(10).burst(20)))
        .policy(Policy::fixed_window("per-key", Quota::per_day(1000)).key(Key::header("x-api-key")))
        .failure_policy(FailurePolicy::LocalFallback)
        .build();

    // A separate limiter for a costly route: cost = number of items.
    let bulk = RateLimiter::builder(store()).policy(Policy::token_bucket("bulk", 50, Quota::per_second(5))).build();

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .merge(Router::new().route("/bulk", post(|| async { "accepted\n" })).route_layer(
            RateLimitLayer::new(bulk).key(Key::from(client_ip.clone()).per_route()).cost(|parts| {
                parts.headers.get("x-items").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1u64).min(50)
            }),
        ))
        .layer(RateLimitLayer::new(limiter).key(client_ip).no_key(NoKey::Skip).legacy_headers(true));

    let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    println!("ratelimit_axum: http://{addr}");
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
