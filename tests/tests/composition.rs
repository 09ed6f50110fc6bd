//! How the session and cache layers interact in one stack (memory and Redis).
//!
//! The cache refuses responses with `Set-Cookie`, and the session layer adds
//! `Cache-Control: no-store` when it sets an id. A handler that only READS an
//! existing session and sends a cacheable `Cache-Control` relies on the session
//! layer adding `Vary: Cookie` (added to redlayer-session after this test first
//! showed the cache serving user A's page to user B).

use std::sync::Arc;

use axum::Router;
use http::StatusCode;
use redlayer_testkit::RedisServer;
use redlayer_tests::{Backend, Config, Counters, app, request, send};

async fn two_users(app: &Router) -> (String, String) {
    let a = send(app, request("GET", "/visits", &[], "")).await.session_cookie().unwrap();
    let b = send(app, request("GET", "/visits", &[], "")).await.session_cookie().unwrap();
    let again = send(app, request("GET", "/visits", &[("cookie", &b)], "")).await;
    assert_eq!(again.body, "2");
    (a, b)
}

async fn new_sessions_are_never_cached(app: &Router) {
    // The first visit sets a cookie: not stored, so the second visit is counted.
    let first = send(app, request("GET", "/visits", &[], "")).await;
    assert!(first.session_cookie().is_some());
    assert!(!first.header("cache-status").contains("stored"), "{}", first.header("cache-status"));
    assert_eq!(first.header("cache-control"), "no-store");
}

async fn private_session_pages_are_not_shared(app: &Router) {
    let (a, b) = two_users(app).await;
    let pa = send(app, request("GET", "/profile-private", &[("cookie", &a)], "")).await;
    let pb = send(app, request("GET", "/profile-private", &[("cookie", &b)], "")).await;
    assert_eq!(pa.body, "visits=Some(1)");
    assert_eq!(pb.body, "visits=Some(2)", "private answers never reach another user");
}

/// A session-reading handler that declares itself cacheable: the session
/// layer adds `Vary: Cookie`, so the shared cache keeps one variant per
/// session and never serves one user's page to another.
async fn cacheable_session_page_varies_on_cookie(app: &Router) {
    let (a, b) = two_users(app).await;
    let pa = send(app, request("GET", "/profile", &[("cookie", &a)], "")).await;
    assert_eq!(pa.status, StatusCode::OK);
    assert_eq!(pa.body, "visits=Some(1)");
    assert!(pa.header("vary").to_ascii_lowercase().contains("cookie"), "vary: {:?}", pa.header("vary"));
    // The entry is written by a task spawned when the body ends: A asks
    // again until its page comes from the cache (bounded).
    let started = std::time::Instant::now();
    loop {
        let again = send(app, request("GET", "/profile", &[("cookie", &a)], "")).await;
        assert_eq!(again.body, "visits=Some(1)");
        if again.header("cache-status").contains("; hit") {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "A's page was never stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pb = send(app, request("GET", "/profile", &[("cookie", &b)], "")).await;
    assert_eq!(pb.body, "visits=Some(2)", "B must never get A's page from the shared cache");
    assert!(!pb.header("cache-status").contains("; hit"), "{}", pb.header("cache-status"));
    let pa2 = send(app, request("GET", "/profile", &[("cookie", &a)], "")).await;
    assert_eq!(pa2.body, "visits=Some(1)");
    assert!(pa2.header("cache-status").contains("; hit"), "{}", pa2.header("cache-status"));
    // no cookie at all: not A's or B's page either
    let anon = send(app, request("GET", "/profile", &[], "")).await;
    assert_eq!(anon.body, "visits=None");
}

async fn suite(backend: Backend) {
    let app = app(&backend, &Config::default(), Arc::new(Counters::default()));
    new_sessions_are_never_cached(&app).await;
    private_session_pages_are_not_shared(&app).await;
    cacheable_session_page_varies_on_cookie(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_cache_memory() {
    suite(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_cache_redis() {
    let server = RedisServer::start();
    suite(Backend::Redis(redlayer::Redis::connect(&server.url()).await.unwrap())).await;
}
