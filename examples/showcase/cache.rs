//! Response cache: a slow page cached for 5 s (tagged `clock`), a cache-aside
//! value, and a purge route.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    Router,
    extract::State,
    routing::{get, post},
};
use redlayer::cache::{CacheAside, CacheLayer};

use crate::Backend;

/// Lines of the index page for these routes.
pub const INDEX: &str = "GET  /cached/time          slow page (300 ms) cached for 5 s: Cache-Control: max-age=5, \
Cache-Tag: clock; see Age and Cache-Status (hit / fwd=uri-miss; stored); concurrent misses reach the handler once\n\
POST /cached/purge         purges tag `clock` from the cache (the next GET /cached/time is a miss)\n\
GET  /cached/aside         cache-aside value (typed, 10 s, computed once across instances)\n";

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// The routes, with their layers.
pub fn routes(backend: &Backend) -> Router {
    let (layer, aside) = match &backend.redis {
        Some(redis) => (CacheLayer::new(redis.clone()), CacheAside::redis(redis.clone())),
        None => (CacheLayer::memory(), CacheAside::memory()),
    };
    let cached = Router::new()
        .route(
            "/cached/time",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                (
                    [("cache-control", "max-age=5"), ("cache-tag", "clock")],
                    format!("rendered at {} ms since the epoch\n", now_ms()),
                )
            }),
        )
        .layer(layer.clone());
    let purge = Router::new()
        .route(
            "/cached/purge",
            post(|State(layer): State<CacheLayer>| async move {
                match layer.purge_tag("clock").await {
                    Ok(n) => format!("purged {n} entries tagged clock\n"),
                    Err(e) => format!("purge failed: {e}\n"),
                }
            }),
        )
        .with_state(layer);
    let aside = Router::new()
        .route(
            "/cached/aside",
            get(|State(aside): State<CacheAside>| async move {
                let value: Result<String, std::convert::Infallible> = aside
                    .get_or_insert_with("showcase:aside", Duration::from_secs(10), || async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok(format!("computed at {} ms since the epoch", now_ms()))
                    })
                    .await;
                format!("{}\n", value.unwrap_or_default())
            }),
        )
        .with_state(aside);
    cached.merge(purge).merge(aside)
}
