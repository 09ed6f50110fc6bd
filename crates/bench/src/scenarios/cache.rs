//! redlayer-cache: a hit of a 1 KB page, the same page uncached, and the miss
//! path (a new URI on every request).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use redlayer::cache::{CacheLayer, Store};

use super::{Scenario, serve};
use crate::http::Request;

const UNCACHED: &str = "cache: 1 KB page, no cache layer";
/// The tower-http-cache scenario (feature `peers`), for the comparison.
pub(super) const THC_HIT: &str = "tower-http-cache 0.6 (Redis): 1 KB page, hit";

/// A 1 KB page.
fn page() -> String {
    let mut body = String::from("<!doctype html><title>bench</title><p>");
    while body.len() < 1020 {
        body.push_str("lorem ipsum ");
    }
    body.truncate(1020);
    body + "</p>"
}

/// `GET /page`: the 1 KB page with `cache_control`.
pub(super) fn app(cache_control: &'static str) -> Router {
    let body = page();
    Router::new().route(
        "/page",
        get(move || {
            let body = body.clone();
            async move { ([("cache-control", cache_control), ("content-type", "text/html")], body) }
        }),
    )
}

pub async fn start(handle: &redlayer::Redis) -> Vec<Scenario> {
    let uncached = serve(app("public, max-age=3600")).await;
    let hit = serve(app("public, max-age=3600").layer(CacheLayer::new(handle.clone()))).await;
    let near = Store::redis(handle.clone()).with_near_cache(64 << 20).expect("near cache");
    let near_hit = serve(app("public, max-age=3600").layer(CacheLayer::with_store(near.clone()))).await;
    // Misses store entries that expire after 2 s, so Redis's memory stays small.
    let miss = serve(app("public, max-age=2").layer(CacheLayer::new(handle.clone()))).await;

    // Fill the entry that the hit scenario reads (it may be stored after the
    // first answer went out: wait for a hit).
    let mut last = None;
    for _ in 0..40 {
        let res = Request::get("/page").send(&hit, "").await;
        assert_eq!(res.status, 200, "cache setup: {res:?}");
        if res.header("cache-status").is_some_and(|s| s.contains("hit")) {
            last = None;
            break;
        }
        last = Some(res);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_none(), "cache setup: no hit after 2 s: {last:?}");
    // The near cache's instance reads the same entry and keeps a copy.
    for _ in 0..40 {
        let res = Request::get("/page").send(&near_hit, "").await;
        assert_eq!(res.status, 200, "near cache setup: {res:?}");
        if near.near_cache_len().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(near.near_cache_len().unwrap_or(0) > 0, "near cache setup: no copy after 2 s");

    vec![
        Scenario::new(
            "cache",
            UNCACHED,
            "the page handler alone (`Cache-Control: public, max-age=3600`, 1 KB HTML)",
            uncached,
            Request::get("/page"),
        ),
        Scenario::new(
            "cache",
            "cache: 1 KB page, hit",
            "`CacheLayer` (Redis, defaults) in front of that handler, the entry stored at setup: every request \
             is a hit served from Redis with `Age` and `Cache-Status`",
            hit,
            Request::get("/page"),
        )
        .versus(UNCACHED)
        .versus(THC_HIT),
        Scenario::new(
            "cache",
            "cache: 1 KB page, hit, near cache",
            "the same, on a store with `with_near_cache(64 MiB)`: the hit comes from this process's copy \
             (kept coherent by Redis client tracking), no Redis command",
            near_hit,
            Request::get("/page"),
        )
        .versus(UNCACHED)
        .versus(THC_HIT),
        Scenario::new(
            "cache",
            "cache: 1 KB page, miss + store",
            "the same layer, a new query string on every request: lookup, forward to the handler, stream the \
             body while storing it (`max-age=2`)",
            miss,
            Request::get("/page").unique_query(),
        )
        .versus(UNCACHED),
    ]
}

/// Instances (separate Redis handles, as separate processes would have) and
/// concurrent requests of the stampede check.
const INSTANCES: usize = 4;
const STAMPEDE: usize = 200;

/// Fires 200 concurrent requests for one cold key at 4 cache instances (one
/// Redis handle and one `CacheLayer` each, one shared origin that takes
/// 100 ms) and counts the requests that reached the origin.
pub async fn stampede(redis_url: &str) -> String {
    let origin_calls = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    for _ in 0..INSTANCES {
        let handle = redlayer::Redis::connect(redis_url).await.expect("redlayer handle");
        let calls = origin_calls.clone();
        let body = page();
        let app = Router::new()
            .route(
                "/cold",
                get(move || {
                    let (calls, body) = (calls.clone(), body.clone());
                    async move {
                        calls.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        ([("cache-control", "public, max-age=3600")], body)
                    }
                }),
            )
            .layer(CacheLayer::new(handle));
        addrs.push(serve(app).await);
    }
    let mut requests = Vec::new();
    for i in 0..STAMPEDE {
        let addr = addrs[i % INSTANCES].clone();
        requests.push(tokio::spawn(async move {
            Request::get("/cold").header("host", "bench.example").send(&addr, "").await.status
        }));
    }
    let mut ok = 0;
    for request in requests {
        ok += usize::from(request.await.expect("stampede request") == 200);
    }
    format!(
        "cache stampede: {STAMPEDE} concurrent requests for one cold key over {INSTANCES} instances (one Redis \
         handle each, one `Host`, origin taking 100 ms): {} reached the origin, {ok} answered 200",
        origin_calls.load(Ordering::Relaxed)
    )
}
