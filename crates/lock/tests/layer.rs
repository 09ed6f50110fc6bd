//! The per-key lock layer on axum: one request per key at a time across two
//! instances, bounded waits answered 409/503, memory, standalone and cluster.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::State, http::Request, http::StatusCode, routing::post};
use redlayer_lock::{
    Locks, Retry,
    layer::{HeaderKey, LockLayer},
};
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Probe {
    inside: Arc<AtomicUsize>,
    overlaps: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
}

fn app(locks: Locks, probe: Probe, wait: Retry, busy: StatusCode) -> Router {
    Router::new()
        .route(
            "/work",
            post(|State(p): State<Probe>, req: Request<Body>| async move {
                let ms = req.headers().get("x-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                if p.inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    p.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(ms.unwrap_or(30))).await;
                p.inside.fetch_sub(1, Ordering::SeqCst);
                p.runs.fetch_add(1, Ordering::SeqCst);
                "done"
            }),
        )
        .with_state(probe)
        .layer(
            LockLayer::new(locks, HeaderKey::new(http::HeaderName::from_static("x-account")))
                .ttl(Duration::from_secs(2))
                .wait(wait)
                .busy_status(busy),
        )
}

async fn call(app: &Router, account: &str, ms: u64) -> (StatusCode, http::HeaderMap) {
    let req = Request::post("/work").header("x-account", account).header("x-ms", ms.to_string());
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    (res.status(), res.headers().clone())
}

async fn suite(a: Locks, b: Locks) {
    // Same key on two instances: never together.
    let probe = Probe::default();
    let long_wait = Retry::new(Duration::from_secs(20)).delays(Duration::from_millis(2), Duration::from_millis(20));
    let (x, y) = (
        app(a.clone(), probe.clone(), long_wait, StatusCode::CONFLICT),
        app(b.clone(), probe.clone(), long_wait, StatusCode::CONFLICT),
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app = if i % 2 == 0 { x.clone() } else { y.clone() };
        tasks.push(tokio::spawn(async move { call(&app, "acct-1", 20).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(probe.runs.load(Ordering::SeqCst), 16);
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0, "requests of one key overlapped");

    // Different keys run side by side.
    let probe = Probe::default();
    let x = app(a.clone(), probe.clone(), long_wait, StatusCode::CONFLICT);
    let started = Instant::now();
    let (r1, r2) = tokio::join!(call(&x, "acct-2", 1000), call(&x, "acct-3", 1000));
    assert_eq!((r1.0, r2.0), (StatusCode::OK, StatusCode::OK));
    // One after the other would take at least 2 s.
    assert!(started.elapsed() < Duration::from_millis(1800), "{:?}", started.elapsed());

    // Bounded wait: answered with the configured status.
    for busy in [StatusCode::CONFLICT, StatusCode::SERVICE_UNAVAILABLE] {
        let probe = Probe::default();
        let short = Retry::new(Duration::from_millis(150));
        let (x, y) = (app(a.clone(), probe.clone(), short, busy), app(b.clone(), probe.clone(), short, busy));
        let slow = tokio::spawn(async move { call(&x, "acct-4", 800).await.0 });
        // Wait until the slow request holds the lock and runs.
        let deadline = Instant::now() + Duration::from_secs(2);
        while probe.inside.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the slow request never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let (status, headers) = call(&y, "acct-4", 10).await;
        assert_eq!(status, busy);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(started.elapsed() < Duration::from_millis(700), "{:?}", started.elapsed());
        assert_eq!(slow.await.unwrap(), StatusCode::OK);
        assert_eq!(probe.runs.load(Ordering::SeqCst), 1, "the refused request never ran");
    }

    // Request-chosen keys live apart from other locks' names (idempotency
    // leases, cache fills, the application's own): a client naming one in
    // its header neither waits for it nor holds it.
    let probe = Probe::default();
    let x = app(a.clone(), probe.clone(), Retry::new(Duration::from_millis(100)), StatusCode::CONFLICT);
    let other = a.try_acquire("cache-fill:some-entry", Duration::from_secs(5)).await.unwrap().unwrap();
    let (status, _) = call(&x, "cache-fill:some-entry", 10).await;
    assert_eq!(status, StatusCode::OK, "a request's key met another lock's name");
    other.release().await.unwrap();

    // No key: passes through without a lock (two such requests run together).
    let probe = Probe::default();
    let x = app(a, probe.clone(), long_wait, StatusCode::CONFLICT);
    let keyless = || Request::post("/work").header("x-ms", "300").body(Body::empty()).unwrap();
    let (r1, r2) = tokio::join!(x.clone().oneshot(keyless()), x.oneshot(keyless()));
    assert_eq!((r1.unwrap().status(), r2.unwrap().status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 1, "keyless requests are not serialized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layer_memory() {
    let locks = Locks::memory();
    suite(locks.clone(), locks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layer_standalone() {
    let server = redlayer_testkit::RedisServer::start();
    let a = Locks::redis(redlayer_core::Redis::connect(&server.url()).await.unwrap());
    let b = Locks::redis(redlayer_core::Redis::connect(&server.url()).await.unwrap());
    suite(a, b).await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layer_cluster() {
    let cluster = redlayer_testkit::RedisCluster::start();
    let a = Locks::redis(redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap());
    let b = Locks::redis(redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap());
    suite(a, b).await;
}

/// Keys come from clients: the layer must leave nothing behind in Redis once
/// a request is done (it used to leave a fencing counter per key for a day).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_leaves_no_state_per_client_key_in_redis() {
    let server = redlayer_testkit::RedisServer::start();
    let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    let app = app(Locks::redis(redis), Probe::default(), Retry::new(Duration::from_secs(1)), StatusCode::CONFLICT);
    for i in 0..20 {
        assert_eq!(call(&app, &format!("attacker-chosen-{i}"), 1).await.0, StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let size = server.cli(&["DBSIZE"]);
        if size.trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "keys left behind: {size} {}", server.cli(&["KEYS", "*"]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis loses the lock while a handler runs (here `FLUSHALL`; a restart
/// without persistence does the same): the handler is stopped and answered
/// 503 rather than left running beside the next holder of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_lock_is_lost_is_stopped() {
    struct Inside(Arc<AtomicUsize>);
    impl Drop for Inside {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let server = redlayer_testkit::RedisServer::start();
    let locks = Locks::redis(redlayer_core::Redis::connect(&server.url()).await.unwrap());
    let probe = Probe::default();
    let app = Router::new()
        .route(
            "/work",
            post(|State(p): State<Probe>, req: Request<Body>| async move {
                let ms: u64 = req.headers()["x-ms"].to_str().unwrap().parse().unwrap();
                if p.inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    p.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let _inside = Inside(p.inside.clone());
                tokio::time::sleep(Duration::from_millis(ms)).await;
                p.runs.fetch_add(1, Ordering::SeqCst);
                "done"
            }),
        )
        .with_state(probe.clone())
        .layer(
            LockLayer::new(locks, HeaderKey::new(http::HeaderName::from_static("x-account")))
                .ttl(Duration::from_millis(500)),
        );
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (call(&app, "acct", 3000).await.0, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(probe.inside.load(Ordering::SeqCst), 1, "the first handler runs");
    assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");
    // The holder learns of the loss at its next renewal (a third of the ttl):
    // a request that came in between could run beside it (fencing tokens are
    // what guards storage from that), but not for the rest of the handler.
    let (first, took) = first.await.unwrap();
    assert_eq!(first, StatusCode::SERVICE_UNAVAILABLE, "stopped once its lock was gone");
    assert!(took < Duration::from_millis(1500), "stopped at the next renewal, not at its end: {took:?}");
    assert_eq!(probe.inside.load(Ordering::SeqCst), 0, "the handler is no longer running");
    assert_eq!(call(&app, "acct", 100).await.0, StatusCode::OK);
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(probe.runs.load(Ordering::SeqCst), 1, "only the second ran to its end");
}
