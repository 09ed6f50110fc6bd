//! A handler that crashes mid-request, and Redis killed and restarted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::State, http::Request, http::StatusCode, routing::post};
use redlayer_core::{FailurePolicy, Redis};
use redlayer_idempotency::IdempotencyLayer;
use redlayer_testkit::RedisServer;
use tower::ServiceExt;

fn app(layer: IdempotencyLayer, runs: Arc<AtomicUsize>, delay: Duration) -> Router {
    Router::new()
        .route(
            "/pay",
            post(|State((runs, delay)): State<(Arc<AtomicUsize>, Duration)>| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                (StatusCode::CREATED, "paid")
            }),
        )
        .with_state((runs, delay))
        .layer(layer)
}

async fn pay(app: &Router, key: &str) -> StatusCode {
    let req = Request::post("/pay").header("idempotency-key", key).body(Body::from("{}")).unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

#[test]
fn a_crashed_handlers_lease_expires_quickly_and_the_retry_runs() {
    let server = RedisServer::start();
    let url = server.url();
    let runs = Arc::new(AtomicUsize::new(0));
    // Long enough that B's first retry surely comes while it lives.
    let lease = Duration::from_secs(2);

    // Instance A: takes the request, then its process "dies": the runtime is
    // shut down with the handler mid-flight, so no release, no renewal.
    let crashed = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    {
        let runs = runs.clone();
        let url = url.clone();
        crashed.spawn(async move {
            let redis = Redis::connect(&url).await.unwrap();
            let a = app(IdempotencyLayer::redis(redis).lease(lease), runs, Duration::from_secs(3600));
            pay(&a, "\"crash-1\"").await
        });
    }
    let started = Instant::now();
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "first request never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(800)); // the watchdog renewed at least once (every lease / 3)
    crashed.shutdown_background();
    let crashed_at = Instant::now();

    // Instance B: a retry gets 409 while the lease lives, then runs the handler.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let redis = Redis::connect(&url).await.unwrap();
        let b = app(IdempotencyLayer::redis(redis).lease(lease), runs.clone(), Duration::from_millis(10));
        assert_eq!(pay(&b, "\"crash-1\"").await, StatusCode::CONFLICT, "lease still held right after the crash");
        loop {
            match pay(&b, "\"crash-1\"").await {
                StatusCode::CREATED => break,
                StatusCode::CONFLICT => {}
                other => panic!("unexpected {other}"),
            }
            assert!(crashed_at.elapsed() < Duration::from_secs(5), "the crashed lease never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = crashed_at.elapsed();
        assert!(waited < lease + Duration::from_millis(1200), "{waited:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the retry ran the handler");
        assert_eq!(pay(&b, "\"crash-1\"").await, StatusCode::CREATED, "and is replayed from now on");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_traffic() {
    let mut server = RedisServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let redis = Redis::connect(&server.url()).await.unwrap();
    let closed = app(IdempotencyLayer::redis(redis.clone()), runs.clone(), Duration::ZERO);
    let open = app(IdempotencyLayer::redis(redis).on_failure(FailurePolicy::FailOpen), runs.clone(), Duration::ZERO);
    let traffic = {
        let (closed, open) = (closed.clone(), open.clone());
        tokio::spawn(async move {
            let (mut unavailable, mut slowest, mut i) = (0, Duration::ZERO, 0);
            let stop = Instant::now() + Duration::from_secs(3);
            while Instant::now() < stop {
                i += 1;
                let t = Instant::now();
                match pay(&closed, &format!("\"k{i}\"")).await {
                    StatusCode::CREATED => {}
                    StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
                    other => panic!("unexpected {other}"),
                }
                assert_eq!(pay(&open, &format!("\"o{i}\"")).await, StatusCode::CREATED, "fail-open always runs");
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (unavailable, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.restart();
    let back = Instant::now();
    let mut i = 0;
    while pay(&closed, &format!("\"back{i}\"")).await != StatusCode::CREATED {
        i += 1;
        assert!(back.elapsed() < Duration::from_secs(3), "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (unavailable, slowest) = traffic.await.expect("no panic");
    assert!(unavailable > 0, "fail-closed answered 503 while Redis was down");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
}

/// The first attempt to store the response fails (Redis answers an error for
/// the record, as it might while restarting or out of memory): the response
/// is stored by a retry while the lease is kept, and a retry of the request
/// gets the replay: the handler never runs twice. (Meanwhile a retry of the
/// request gets 409, or here 503 while the record is unreadable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_could_not_be_stored_at_once_is_stored_later_and_replayed() {
    let server = Arc::new(RedisServer::start());
    let runs = Arc::new(AtomicUsize::new(0));
    let redis = Redis::connect(&server.url()).await.unwrap();
    let breaker = server.clone();
    let app = Router::new()
        .route(
            "/pay",
            post(move |State(runs): State<Arc<AtomicUsize>>| {
                let server = breaker.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Put a string where the record's hash is, so that storing the response fails, and
                    // put the record back 500 ms later (RENAME replaces the string at once).
                    let record = server
                        .cli(&["KEYS", "*"])
                        .lines()
                        .map(str::to_owned)
                        .find(|key| server.cli(&["TYPE", key]).trim() == "hash")
                        .expect("the record of this attempt");
                    assert_eq!(server.cli(&["RENAME", &record, "aside"]).trim(), "OK");
                    assert_eq!(server.cli(&["SET", &record, "not a record"]).trim(), "OK");
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        assert_eq!(server.cli(&["RENAME", "aside", &record]).trim(), "OK");
                    });
                    (StatusCode::CREATED, "paid")
                }
            }),
        )
        .with_state(runs.clone())
        .layer(IdempotencyLayer::redis(redis));
    assert_eq!(pay(&app, "\"late\"").await, StatusCode::CREATED, "the handler's own answer");
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match pay(&app, "\"late\"").await {
            StatusCode::CREATED => break,
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => {
                assert!(started.elapsed() < Duration::from_secs(5), "never stored")
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the retry was a replay");
}

/// An inner service that fails (no response at all, as a proxy's connection
/// error): the attempt is forgotten, so a retry runs, also one with another
/// body, instead of getting 422 for the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_service_error_forgets_the_attempt() {
    use tower::Layer as _;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |_: Request<Body>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 => Err(std::io::Error::other("connection reset")),
                _ => Ok(http::Response::builder().status(201).body(Body::from("paid")).unwrap()),
            }
        }
    });
    let service = IdempotencyLayer::memory().layer(service);
    let request =
        |body: &'static str| Request::post("/pay").header("idempotency-key", "\"failed-inner\"").body(Body::from(body));
    assert!(service.clone().oneshot(request("{}").unwrap()).await.is_err());
    // A corrected request under the same key (another body) runs: it is not
    // refused with 422 for the retention.
    // Forgotten before the error was returned: the very next request runs.
    let status = service.clone().oneshot(request(r#"{"fixed":1}"#).unwrap()).await.unwrap().status();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
