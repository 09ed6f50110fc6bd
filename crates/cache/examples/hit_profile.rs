//! Throwaway profiling driver of the hit path (not part of the API): sends N
//! GETs for one stored entry through `CacheLayer` with `oneshot`, against the
//! memory store or a real redis-server (testkit). Run it under
//! `valgrind --tool=callgrind` with two values of N: the difference of the
//! instruction counts divided by the difference of N is the cost of one hit.
//!
//! `cargo run --release -p redlayer-cache --example hit_profile -- memory 1000`

use axum::{Router, routing::get};
use redlayer_cache::{CacheLayer, Store};
use tower::{Layer, ServiceExt};

fn page() -> String {
    let mut body = String::from("<!doctype html><title>bench</title><p>");
    while body.len() < 1020 {
        body.push_str("lorem ipsum ");
    }
    body.truncate(1020);
    body + "</p>"
}

fn request() -> http::Request<axum::body::Body> {
    http::Request::get("/page").header("host", "bench.example").body(axum::body::Body::empty()).unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "memory".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let server = (backend == "redis").then(redlayer_testkit::RedisServer::start);
    let store = match &server {
        Some(server) => Store::redis(redlayer_core::Redis::connect(&server.url()).await.unwrap()),
        None => Store::memory(),
    };
    let body = page();
    let app = Router::new().route(
        "/page",
        get(move || {
            let body = body.clone();
            async move { ([("cache-control", "public, max-age=3600"), ("content-type", "text/html")], body) }
        }),
    );
    let svc = CacheLayer::with_store(store).layer(app);
    // Fill, then wait for a hit.
    for _ in 0..100 {
        let res = svc.clone().oneshot(request()).await.unwrap();
        let hit = res.headers().get("cache-status").is_some_and(|s| s.to_str().unwrap().contains("hit"));
        let _ = http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
        if hit {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Let the fill's background work (fill lock release) finish first.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = server.as_ref().map(|s| s.total_commands());
    let mut hits = 0;
    for _ in 0..n {
        let res = svc.clone().oneshot(request()).await.unwrap();
        hits += usize::from(res.headers().get("cache-status").is_some_and(|s| s.to_str().unwrap().contains("hit")));
        let _ = http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    }
    assert_eq!(hits, n, "every request must be a hit");
    if let (Some(server), Some(before)) = (&server, before) {
        let after = server.total_commands();
        // `- 1`: the INFO of the first count.
        println!("{backend}: {n} hits, {} redis commands", after - before - 1);
    } else {
        println!("{backend}: {n} hits");
    }
}
