//! The idempotency flows, run unchanged on the in-memory store, a standalone
//! Redis and a 3-master cluster, each time through two layer instances
//! (separate Redis handles) as two app instances would be.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, Request, StatusCode},
    routing::post,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use redlayer_idempotency::{IdempotencyLayer, Scope};
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Counters {
    runs: Arc<AtomicUsize>,
}

async fn pay(State(c): State<Counters>, headers: HeaderMap, body: Bytes) -> (StatusCode, Json<serde_json::Value>) {
    let n = c.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = headers.get("x-delay-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if headers.contains_key("x-fail") {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": "boom" })));
    }
    let size = headers.get("x-size").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let body = String::from_utf8_lossy(&body).into_owned();
    (StatusCode::CREATED, Json(serde_json::json!({ "payment": n, "echo": body, "pad": "p".repeat(size) })))
}

/// A handler that hands out a credential in a cookie.
async fn login(State(c): State<Counters>) -> (StatusCode, [(http::HeaderName, String); 3], &'static str) {
    let n = c.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let cookie = format!("token=secret-{n}; HttpOnly");
    (
        StatusCode::OK,
        [
            (http::header::SET_COOKIE, cookie),
            (http::HeaderName::from_static("x-run"), n.to_string()),
            (http::header::DATE, "Mon, 01 Jan 2001 00:00:00 GMT".to_owned()),
        ],
        "in",
    )
}

/// A gRPC error as tonic sends it (trailers-only: the status in the head).
async fn grpc_unavailable(State(c): State<Counters>) -> (StatusCode, [(&'static str, &'static str); 2]) {
    c.runs.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, [("content-type", "application/grpc"), ("grpc-status", "14")])
}

/// A refusal of the moment (as a lock or rate-limit layer inside gives).
async fn busy(State(c): State<Counters>) -> StatusCode {
    c.runs.fetch_add(1, Ordering::SeqCst);
    StatusCode::CONFLICT
}

fn app(layer: IdempotencyLayer, counters: Counters) -> Router {
    Router::new()
        .route("/payments", post(pay).get(|| async { "list" }))
        .route("/login", post(login))
        .route("/grpc", post(grpc_unavailable))
        .route("/busy", post(busy))
        .route("/other", post(pay))
        .with_state(counters)
        .layer(layer)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn replayed(&self) -> bool {
        self.headers.get("idempotent-replayed").is_some_and(|v| v == "true")
    }
}

async fn send(app: &Router, path: &str, key: Option<&str>, body: &str, extra: &[(&str, &str)]) -> Reply {
    let mut req = Request::post(path);
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        req = req.header("content-type", "application/json");
    }
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let response = app.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("\"{name}-{}\"", N.fetch_add(1, Ordering::Relaxed))
}

/// `a` and `b`: two instances of the layer on the same store.
async fn suite(a: IdempotencyLayer, b: IdempotencyLayer) {
    let counters = Counters::default();
    let (app_a, app_b) = (app(a.clone(), counters.clone()), app(b.clone(), counters.clone()));
    replays_a_completed_request(&app_a, &app_b, &counters).await;
    other_request_same_key_is_422(&app_a, &app_b).await;
    keys_are_checked(&app_a, a.clone().require_key(true), &counters).await;
    in_flight_duplicate_is_409(&app_a, &app_b, &counters).await;
    concurrent_duplicates_run_once(&app_a, &app_b, &counters).await;
    keys_are_scoped_per_client(a.clone(), b.clone()).await;
    server_errors_and_large_responses_are_not_stored(&app_a, &app_b, &counters).await;
    set_cookie_is_never_replayed(&app_a, &app_b, &counters).await;
    grpc_answers_and_refusals_of_the_moment_are_not_replayed(&app_a, &app_b, &counters).await;
    // "Keep it forever" (`Duration::MAX`): no overflow, and an expiry Redis accepts.
    let endless = |l: IdempotencyLayer| app(l.retention(Duration::MAX).max_hold(Duration::MAX), counters.clone());
    replays_a_completed_request(&endless(a.clone()), &endless(b.clone()), &counters).await;
}

async fn replays_a_completed_request(a: &Router, b: &Router, c: &Counters) {
    let key = unique("replay");
    let before = c.runs.load(Ordering::SeqCst);
    let first = send(a, "/payments", Some(&key), r#"{"amount":10}"#, &[]).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    for app in [a, b, a] {
        let again = send(app, "/payments", Some(&key), r#"{"amount":10}"#, &[]).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert!(again.replayed(), "Idempotent-Replayed: true");
        assert_eq!(again.body, first.body, "same body");
        assert_eq!(again.headers["content-type"], "application/json");
    }
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 1, "handler ran once");
}

async fn other_request_same_key_is_422(a: &Router, b: &Router) {
    let key = unique("mismatch");
    assert_eq!(send(a, "/payments", Some(&key), r#"{"amount":10}"#, &[]).await.status, StatusCode::CREATED);
    let other_body = send(b, "/payments", Some(&key), r#"{"amount":11}"#, &[]).await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.headers["content-type"], "application/problem+json");
    // The draft asks 400s and 422s to link to the documentation of the error.
    assert!(other_body.headers["link"].to_str().unwrap().ends_with("rel=\"describedby\""));
    assert_eq!(other_body.json()["status"], 422);
    let other_path = send(b, "/other", Some(&key), r#"{"amount":10}"#, &[]).await;
    assert_eq!(other_path.status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn keys_are_checked(a: &Router, required: IdempotencyLayer, c: &Counters) {
    // Optional by default: no key passes through and runs each time.
    let before = c.runs.load(Ordering::SeqCst);
    assert_eq!(send(a, "/payments", None, "{}", &[]).await.status, StatusCode::CREATED);
    assert_eq!(send(a, "/payments", None, "{}", &[]).await.status, StatusCode::CREATED);
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 2);
    let strict = app(required, c.clone());
    let missing = send(&strict, "/payments", None, "{}", &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.headers["content-type"], "application/problem+json");
    assert!(missing.headers["link"].to_str().unwrap().contains("idempotency-key-header"));
    let huge = format!("\"{}\"", "k".repeat(10_000));
    for bad in ["not-a-string", "\"\"", "\"a\" \"b\"", "1", huge.as_str()] {
        let r = send(&strict, "/payments", Some(bad), "{}", &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:.20}");
    }
    // Hostile input: a non-UTF-8 key, a body over the fingerprint limit.
    let req = Request::post("/payments")
        .header("idempotency-key", http::HeaderValue::from_bytes(b"\"\xff\xfe\"").unwrap())
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(strict.clone().oneshot(req).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let too_big = "x".repeat(2 << 20);
    let r = send(&strict, "/payments", Some(&unique("big-body")), &too_big, &[]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Other methods pass through.
    let get = strict.clone().oneshot(Request::get("/payments").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 2, "refused requests never ran");
}

async fn in_flight_duplicate_is_409(a: &Router, b: &Router, c: &Counters) {
    let key = unique("inflight");
    let before = c.runs.load(Ordering::SeqCst);
    let slow = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { send(&a, "/payments", Some(&key), "{}", &[("x-delay-ms", "1500")]).await })
    };
    // The first request's handler has started (it holds the lease).
    let started = std::time::Instant::now();
    while c.runs.load(Ordering::SeqCst) == before {
        assert!(started.elapsed() < Duration::from_secs(5), "the first request never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dup = send(b, "/payments", Some(&key), "{}", &[("x-delay-ms", "800")]).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.headers["retry-after"], "1");
    assert_eq!(dup.headers["content-type"], "application/problem+json");
    let dup_other = send(b, "/payments", Some(&key), "{\"x\":1}", &[]).await;
    assert_eq!(dup_other.status, StatusCode::UNPROCESSABLE_ENTITY, "other body while in flight");
    let first = slow.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let after = send(b, "/payments", Some(&key), "{}", &[("x-delay-ms", "800")]).await;
    assert!(after.replayed());
    assert_eq!(after.body, first.body);
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 1);
}

async fn concurrent_duplicates_run_once(a: &Router, b: &Router, c: &Counters) {
    let key = unique("twelve");
    let before = c.runs.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            send(&app, "/payments", Some(&key), r#"{"amount":5}"#, &[("x-delay-ms", "300")]).await
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => created.push(r.body),
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 1, "12 duplicates on two instances ran the handler once");
    assert!(created.windows(2).all(|w| w[0] == w[1]), "every 201 is the same payment");
    let after = send(b, "/payments", Some(&key), r#"{"amount":5}"#, &[]).await;
    assert!(after.replayed());
}

async fn keys_are_scoped_per_client(a: IdempotencyLayer, b: IdempotencyLayer) {
    let c = Counters::default();
    let scope = || Scope::header(http::HeaderName::from_static("x-api-key"));
    let (a, b) = (app(a.scope(scope()), c.clone()), app(b.scope(scope()), c.clone()));
    let key = unique("scoped");
    let alice = send(&a, "/payments", Some(&key), "{}", &[("x-api-key", "alice")]).await;
    let bob = send(&b, "/payments", Some(&key), "{}", &[("x-api-key", "bob")]).await;
    assert!(!alice.replayed() && !bob.replayed(), "another client's key never replays");
    assert_ne!(alice.body, bob.body);
    assert!(send(&b, "/payments", Some(&key), "{}", &[("x-api-key", "alice")]).await.replayed());
    assert_eq!(c.runs.load(Ordering::SeqCst), 2);
}

async fn server_errors_and_large_responses_are_not_stored(a: &Router, b: &Router, c: &Counters) {
    let key = unique("fail");
    let before = c.runs.load(Ordering::SeqCst);
    let failed = send(a, "/payments", Some(&key), "{}", &[("x-fail", "1")]).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retried = send(b, "/payments", Some(&key), "{}", &[]).await;
    assert_eq!(retried.status, StatusCode::CREATED, "a 5xx is not replayed: the retry runs");
    assert!(!retried.replayed());
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 2);

    // Larger than the stored limit (set to 64 KiB by the suite): passed through whole, not stored.
    let key = unique("large");
    let big = send(a, "/payments", Some(&key), "{}", &[("x-size", "200000")]).await;
    assert_eq!(big.status, StatusCode::CREATED);
    assert_eq!(big.json()["pad"].as_str().map(str::len), Some(200_000), "streamed whole");
    let again = send(b, "/payments", Some(&key), "{}", &[("x-size", "200000")]).await;
    assert!(!again.replayed());
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 4);
}

/// A stored response is replayed to whoever presents its key (in its scope):
/// a cookie the handler set for the first caller is not part of it.
async fn set_cookie_is_never_replayed(a: &Router, b: &Router, c: &Counters) {
    let key = unique("login");
    let before = c.runs.load(Ordering::SeqCst);
    let first = send(a, "/login", Some(&key), "{}", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.headers["set-cookie"].to_str().unwrap().starts_with("token=secret-"));
    for app in [a, b] {
        let again = send(app, "/login", Some(&key), "{}", &[]).await;
        assert!(again.replayed());
        assert_eq!(again.headers["x-run"], first.headers["x-run"], "the other headers are replayed");
        assert!(again.headers.get("set-cookie").is_none(), "{:?}", again.headers.get("set-cookie"));
        assert!(again.headers.get("date").is_none(), "a replay's Date is its own (the server's), not the first one's");
    }
    assert_eq!(c.runs.load(Ordering::SeqCst), before + 1);
}

/// A gRPC answer (here a trailers-only UNAVAILABLE) and a 409 from inside
/// are not stored: the retry runs the handler instead of replaying them.
async fn grpc_answers_and_refusals_of_the_moment_are_not_replayed(a: &Router, b: &Router, c: &Counters) {
    for (path, extra) in [("/grpc", &[("content-type", "application/grpc")][..]), ("/busy", &[][..])] {
        let key = unique(path);
        let before = c.runs.load(Ordering::SeqCst);
        for app in [a, b] {
            let got = send(app, path, Some(&key), "{}", extra).await;
            assert!(!got.replayed(), "{path}: replayed");
        }
        assert_eq!(c.runs.load(Ordering::SeqCst), before + 2, "{path}: the retry ran the handler");
    }
}

fn configure(layer: IdempotencyLayer) -> IdempotencyLayer {
    layer.max_response_body(64 * 1024).lease(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flows_memory() {
    let layer = configure(IdempotencyLayer::memory());
    suite(layer.clone(), layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flows_standalone() {
    let server = redlayer_testkit::RedisServer::start();
    let a = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    let b = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    suite(configure(IdempotencyLayer::redis(a)), configure(IdempotencyLayer::redis(b))).await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flows_cluster() {
    let cluster = redlayer_testkit::RedisCluster::start();
    let a = redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap();
    let b = redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap();
    suite(configure(IdempotencyLayer::redis(a)), configure(IdempotencyLayer::redis(b))).await;
}

/// gRPC clients read a bare 4xx as a transport failure: gRPC requests get
/// HTTP 200 with the `grpc-status` of the refusal instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_get_grpc_statuses() {
    let layer = configure(IdempotencyLayer::memory()).require_key(true);
    let app = app(layer, Counters::default());
    let grpc = [("content-type", "application/grpc")];
    let grpc_status = |r: &Reply| (r.status, r.headers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()));
    let missing = send(&app, "/payments", None, "{}", &grpc).await;
    assert_eq!(grpc_status(&missing), (StatusCode::OK, Some("3".into())), "INVALID_ARGUMENT");
    let bad = send(&app, "/payments", Some("not-a-string"), "{}", &grpc).await;
    assert_eq!(grpc_status(&bad), (StatusCode::OK, Some("3".into())));
    let key = unique("grpc");
    let slow = [("content-type", "application/grpc"), ("x-delay-ms", "400")];
    let (first, busy) = tokio::join!(send(&app, "/payments", Some(&key), "a", &slow), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(&app, "/payments", Some(&key), "a", &grpc).await
    });
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(grpc_status(&busy), (StatusCode::OK, Some("10".into())), "ABORTED while in flight");
    let other = send(&app, "/payments", Some(&key), "b", &grpc).await;
    assert_eq!(grpc_status(&other), (StatusCode::OK, Some("9".into())), "FAILED_PRECONDITION: other request");
    // Plain HTTP keeps its problem+json answers.
    assert_eq!(send(&app, "/payments", Some(&key), "b", &[]).await.status, StatusCode::UNPROCESSABLE_ENTITY);
}
