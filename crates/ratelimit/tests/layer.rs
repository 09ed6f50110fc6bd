//! Layer behaviour beyond the conformance suite: failure policies with Redis
//! killed, restarted and paused; the deny cache; shadow mode; gRPC answers;
//! keys and legacy headers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, routing::get};
use http::{Request, StatusCode};
use redlayer_core::{FailurePolicy, Redis};
use redlayer_ratelimit::{Key, NoKey, PeerAddr, Policy, Quota, RateLimitLayer, RateLimiter, Store};
use redlayer_testkit::RedisServer;
use tower::ServiceExt;

fn request(peer: [u8; 4]) -> Request<Body> {
    let mut r = Request::builder().uri("/").body(Body::empty()).unwrap();
    r.extensions_mut().insert(PeerAddr(SocketAddr::from((peer, 1000))));
    r
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new().route("/", get(|| async { "ok" })).layer(layer)
}

async fn redis(server: &RedisServer) -> Redis {
    Redis::builder().timeout(Duration::from_millis(200)).connect_lazy(&server.url()).unwrap()
}

/// Connects and loads the limiter's script (a read, cost 0, charges nothing)
/// before the test's first decision, which the short timeout would otherwise
/// bound on a slow machine.
async fn warm(limiter: RateLimiter) -> RateLimiter {
    let started = Instant::now();
    while limiter.check("warm-up", 0).await.degraded().is_some() {
        assert!(started.elapsed() < Duration::from_secs(10), "Redis did not answer for 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    limiter
}

/// Redis is killed mid-traffic and restarted: under each failure policy no
/// request waits past the timeout, the policy holds, and decisions come from
/// Redis again within about a second of its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_honours_the_failure_policy() {
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed, FailurePolicy::LocalFallback] {
        let mut server = RedisServer::start();
        let limiter = warm(
            RateLimiter::builder(Store::redis(redis(&server).await))
                .policy(Policy::gcra("p", Quota::per_hour(3)))
                .failure_policy(policy)
                .build(),
        )
        .await;
        let app = app(RateLimitLayer::new(limiter.clone()));
        // Traffic from other clients runs throughout.
        let stop = Arc::new(AtomicUsize::new(0));
        let slowest = Arc::new(AtomicUsize::new(0));
        let background = {
            let (app, stop, slowest) = (app.clone(), stop.clone(), slowest.clone());
            tokio::spawn(async move {
                let mut i = 0u8;
                while stop.load(Ordering::Relaxed) == 0 {
                    i = i.wrapping_add(1);
                    let started = Instant::now();
                    let res = app.clone().oneshot(request([10, 0, 0, i])).await.unwrap();
                    assert!([200, 429, 503].contains(&res.status().as_u16()));
                    slowest.fetch_max(started.elapsed().as_millis() as usize, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        assert_eq!(app.clone().oneshot(request([1, 1, 1, 1])).await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.kill();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let started = Instant::now();
            let res = app.clone().oneshot(request([1, 1, 1, 1])).await.unwrap();
            assert!(started.elapsed() < Duration::from_millis(900), "{policy:?}: waited {:?}", started.elapsed());
            statuses.push(res.status().as_u16());
        }
        match policy {
            FailurePolicy::FailOpen => assert_eq!(statuses, [200, 200, 200, 200]),
            FailurePolicy::FailClosed => assert_eq!(statuses, [503, 503, 503, 503]),
            // Local limiter: 3 per hour from scratch in this process.
            _ => assert_eq!(statuses, [200, 200, 200, 429]),
        }
        server.restart();
        let back = Instant::now();
        loop {
            let d = limiter.check("probe", 1).await;
            if d.degraded().is_none() {
                break;
            }
            assert!(back.elapsed() < Duration::from_millis(2500), "{policy:?}: not back after {:?}", back.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(1, Ordering::Relaxed);
        background.await.unwrap();
        assert!(
            slowest.load(Ordering::Relaxed) < 900,
            "{policy:?}: a request took {} ms",
            slowest.load(Ordering::Relaxed)
        );
    }
}

/// A paused (SIGSTOP) Redis: every decision ends at the timeout (fail open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_never_holds_a_request_past_the_timeout() {
    let server = RedisServer::start();
    let limiter = warm(
        RateLimiter::builder(Store::redis(redis(&server).await))
            .policy(Policy::gcra("p", Quota::per_hour(3)))
            .timeout(Duration::from_millis(150))
            .build(),
    )
    .await;
    assert!(limiter.check("k", 1).await.degraded().is_none());
    server.pause();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let l = limiter.clone();
        tasks.push(tokio::spawn(async move { l.check(&format!("k{i}"), 1).await }));
    }
    for t in tasks {
        let d = t.await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.degraded(), Some(FailurePolicy::FailOpen));
    }
    assert!(started.elapsed() < Duration::from_millis(800), "{:?}", started.elapsed());
    server.resume();
}

/// A slow Redis (stalls of 300 ms, under a 1 s timeout): decisions that wait
/// in the shared-call queue past a quarter of the timeout make calls of their
/// own, none is degraded, and four instances still allow exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_still_decides_every_request_exactly() {
    let server = RedisServer::start();
    let mut limiters = Vec::new();
    for _ in 0..4 {
        let handle = Redis::builder().timeout(Duration::from_secs(1)).connect(&server.url()).await.unwrap();
        limiters.push(
            warm(RateLimiter::builder(Store::redis(handle)).policy(Policy::gcra("p", Quota::per_hour(100))).build())
                .await,
        );
    }
    let url_port = server.url();
    let stalls = std::thread::spawn(move || {
        let port = url_port.trim_end_matches('/').rsplit(':').next().unwrap().to_owned();
        for _ in 0..3 {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", "0.3"])
                .output()
                .expect("redis-cli");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "the server stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let limiter = limiters[i % 4].clone();
        tasks.push(tokio::spawn(async move {
            // Spread over the stalls.
            tokio::time::sleep(Duration::from_millis((i as u64 % 40) * 25)).await;
            limiter.check("slow-key", 1).await
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        let decision = task.await.unwrap();
        assert_eq!(decision.degraded(), None, "decided by Redis, within the timeout");
        allowed += usize::from(decision.is_allowed());
    }
    stalls.join().unwrap();
    assert_eq!(allowed, 100);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// Blocked keys are answered from the local deny cache with zero Redis commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_cache_answers_blocked_keys_without_redis() {
    let server = RedisServer::start();
    let limiter = warm(
        RateLimiter::builder(Store::redis(redis(&server).await))
            .policy(Policy::gcra("p", Quota::per_minute(2)))
            .build(),
    )
    .await;
    let app = app(RateLimitLayer::new(limiter));
    // Scripts run by the server, from one `INFO commandstats`.
    let scripts = || {
        let info = server.cli(&["INFO", "commandstats"]);
        ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
            .iter()
            .filter_map(|needle| info.lines().find_map(|l| l.strip_prefix(needle)))
            .filter_map(|rest| rest.split(',').next().and_then(|n| n.trim().parse::<u64>().ok()))
            .sum::<u64>()
    };
    let blocked_at = Instant::now();
    for expected in [200, 200, 429] {
        assert_eq!(app.clone().oneshot(request([7, 7, 7, 7])).await.unwrap().status(), expected);
    }
    let before = scripts();
    for _ in 0..200 {
        let res = app.clone().oneshot(request([7, 7, 7, 7])).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&wait), "{wait}");
    }
    // The deny cache asks the store again once a second: on a slow machine
    // these 200 requests may span a recheck (one per second begun), never more.
    let rechecks = blocked_at.elapsed().as_secs() + 1;
    let ran = scripts() - before;
    assert!(ran <= rechecks, "{ran} scripts ran for 200 blocked requests in {rechecks} s");
    // Other clients still go to Redis.
    let before = scripts();
    assert_eq!(app.clone().oneshot(request([8, 8, 8, 8])).await.unwrap().status(), 200);
    assert_eq!(scripts(), before + 1);
}

/// A reset in Redis (an operator clearing a client's limit, a flush) reaches
/// the deny cache within `DENY_RECHECK`, not when the cached block would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_cache_sees_a_reset_in_redis_within_a_second() {
    let server = RedisServer::start();
    let limiter = warm(
        RateLimiter::builder(Store::redis(redis(&server).await))
            .policy(Policy::fixed_window("p", Quota::per_hour(1)))
            .build(),
    )
    .await;
    let app = app(RateLimitLayer::new(limiter));
    for expected in [200, 429, 429] {
        assert_eq!(app.clone().oneshot(request([6, 6, 6, 6])).await.unwrap().status(), expected);
    }
    server.cli(&["FLUSHALL"]);
    let reset = Instant::now();
    while app.clone().oneshot(request([6, 6, 6, 6])).await.unwrap().status() != StatusCode::OK {
        assert!(reset.elapsed() < redlayer_ratelimit::DENY_RECHECK * 3, "still blocked from the deny cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GCRA state far in the future (a failover to a server whose clock is
/// behind) blocks for at most one burst, not for the clocks' difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_from_a_clock_ahead_blocks_for_at_most_a_burst() {
    let server = RedisServer::start();
    let limiter = warm(
        RateLimiter::builder(Store::redis(redis(&server).await))
            .policy(Policy::gcra("p", Quota::per_second(10)))
            .build(),
    )
    .await;
    let app = app(RateLimitLayer::new(limiter));
    assert_eq!(app.clone().oneshot(request([5, 5, 5, 5])).await.unwrap().status(), 200);
    let key = server.cli(&["--scan", "--pattern", "*"]).lines().next().expect("the state key").to_owned();
    let now_us: u64 = server.cli(&["TIME"]).lines().next().unwrap().trim().parse::<u64>().unwrap() * 1_000_000;
    server.cli(&["SET", &key, &(now_us + 3_600_000_000).to_string(), "PX", "3600000"]);
    let planted = Instant::now();
    while app.clone().oneshot(request([5, 5, 5, 5])).await.unwrap().status() != StatusCode::OK {
        assert!(planted.elapsed() < Duration::from_secs(3), "blocked past one burst (1 s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shadow mode reports and never blocks.
#[tokio::test]
async fn shadow_mode_never_blocks() {
    let limiter =
        RateLimiter::builder(Store::memory()).policy(Policy::gcra("p", Quota::per_hour(1))).shadow(true).build();
    let app = app(RateLimitLayer::new(limiter));
    assert_eq!(app.clone().oneshot(request([1, 2, 3, 4])).await.unwrap().status(), 200);
    for _ in 0..3 {
        let res = app.clone().oneshot(request([1, 2, 3, 4])).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["ratelimit"].to_str().unwrap().starts_with(r#""p";r=0"#));
    }
}

/// Shadow mode does not block while the store is down either, even when the
/// failure policy is to fail closed.
#[tokio::test]
async fn shadow_mode_does_not_fail_closed() {
    let dead = Redis::builder().timeout(Duration::from_millis(100)).connect_lazy("redis://127.0.0.1:1/").unwrap();
    for (shadow, expected) in [(false, 503), (true, 200)] {
        let limiter = RateLimiter::builder(Store::redis(dead.clone()))
            .policy(Policy::gcra("p", Quota::per_hour(1)))
            .failure_policy(FailurePolicy::FailClosed)
            .shadow(shadow)
            .build();
        let decision = limiter.check("someone", 1).await;
        assert_eq!(decision.is_allowed(), shadow, "shadow {shadow}");
        assert_eq!(decision.degraded(), Some(FailurePolicy::FailClosed));
        let res = app(RateLimitLayer::new(limiter)).oneshot(request([1, 2, 3, 5])).await.unwrap();
        assert_eq!(res.status(), expected, "shadow {shadow}");
    }
}

/// Legacy headers, costs from the request, the no-key answers, scoping per route.
#[tokio::test]
async fn legacy_headers_costs_and_keys() {
    let limiter = RateLimiter::builder(Store::memory()).policy(Policy::fixed_window("p", Quota::per_hour(10))).build();
    let layer = RateLimitLayer::new(limiter.clone())
        .legacy_headers(true)
        .cost(|parts| if parts.uri.path() == "/bulk" { 4 } else { 1 });
    let app = Router::new().route("/", get(|| async { "ok" })).route("/bulk", get(|| async { "ok" })).layer(layer);
    let mut bulk = request([9, 9, 9, 9]);
    *bulk.uri_mut() = "/bulk".parse().unwrap();
    let res = app.clone().oneshot(bulk).await.unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "10");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "6");
    assert!(res.headers()["x-ratelimit-reset"].to_str().unwrap().parse::<u64>().unwrap() <= 3600);

    // No peer address at all: shared (default), skipped, or rejected with 400.
    let bare = || Request::builder().uri("/").body(Body::empty()).unwrap();
    let one = |no_key| {
        let l = RateLimiter::builder(Store::memory()).policy(Policy::gcra("p", Quota::per_hour(1))).build();
        Router::new().route("/", get(|| async { "ok" })).layer(RateLimitLayer::new(l).no_key(no_key))
    };
    let shared = one(NoKey::Shared);
    assert_eq!(shared.clone().oneshot(bare()).await.unwrap().status(), 200);
    assert_eq!(shared.clone().oneshot(bare()).await.unwrap().status(), 429);
    let skip = one(NoKey::Skip);
    for _ in 0..3 {
        assert_eq!(skip.clone().oneshot(bare()).await.unwrap().status(), 200);
    }
    assert_eq!(one(NoKey::Reject).oneshot(bare()).await.unwrap().status(), 400);

    // Per-route scoping and an async custom key.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let key = Key::custom_async(move |parts| {
        seen.fetch_add(1, Ordering::Relaxed);
        let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Box::pin(async move { user })
    })
    .per_route();
    let l = RateLimiter::builder(Store::memory()).policy(Policy::gcra("p", Quota::per_hour(1))).build();
    let app = Router::new()
        .route("/a", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
        .layer(RateLimitLayer::new(l).key(key));
    let req = |path: &str| Request::builder().uri(path).header("x-user", "u1").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(req("/a")).await.unwrap().status(), 200);
    assert_eq!(app.clone().oneshot(req("/b")).await.unwrap().status(), 200);
    assert_eq!(app.clone().oneshot(req("/a")).await.unwrap().status(), 429);
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

/// A global key counts every client together; scoped per method, each
/// method of it has its own counter, whatever the path.
#[tokio::test]
async fn global_key_and_per_method_scoping() {
    let limiter = || RateLimiter::builder(Store::memory()).policy(Policy::gcra("p", Quota::per_hour(2))).build();
    let app = |key: Key| {
        Router::new()
            .route("/a", get(|| async { "a" }).post(|| async { "a" }))
            .route("/b", get(|| async { "b" }))
            .layer(RateLimitLayer::new(limiter()).key(key))
    };
    let req = |method: &str, path: &str, peer: u8| {
        let mut r = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        r.extensions_mut().insert(PeerAddr(SocketAddr::from(([10, 0, 0, peer], 1000))));
        r
    };

    let global = app(Key::global());
    assert_eq!(global.clone().oneshot(req("GET", "/a", 1)).await.unwrap().status(), 200);
    assert_eq!(global.clone().oneshot(req("POST", "/a", 2)).await.unwrap().status(), 200);
    let third = global.clone().oneshot(req("GET", "/b", 3)).await.unwrap();
    assert_eq!(third.status(), 429, "three clients, methods and paths share one global quota of 2");

    let per_method = app(Key::global().per_method());
    for (method, path, peer) in [("GET", "/a", 1), ("GET", "/b", 2), ("POST", "/a", 3), ("POST", "/a", 4)] {
        assert_eq!(per_method.clone().oneshot(req(method, path, peer)).await.unwrap().status(), 200, "{method}");
    }
    assert_eq!(per_method.clone().oneshot(req("GET", "/a", 5)).await.unwrap().status(), 429, "GET: 2 used");
    assert_eq!(per_method.clone().oneshot(req("POST", "/a", 7)).await.unwrap().status(), 429, "POST: 2 used");
}

/// A tonic server: a denied call is RESOURCE_EXHAUSTED with the fields in metadata.
#[tokio::test]
async fn grpc_calls_get_resource_exhausted() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let limiter = RateLimiter::builder(Store::memory()).policy(Policy::gcra("calls", Quota::per_minute(2))).build();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = RateLimitLayer::new(limiter).key(Key::header("x-api-key"));
    let server = tokio::spawn(
        tonic::transport::Server::builder().layer(layer).serve_with_incoming(health, tokio_stream_of(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    let call = || {
        let mut r = tonic::Request::new(HealthCheckRequest { service: String::new() });
        r.metadata_mut().insert("x-api-key", "k1".parse().unwrap());
        r
    };
    for remaining in ["1", "0"] {
        let reply = client.check(call()).await.unwrap();
        let state = reply.metadata().get("ratelimit").unwrap().to_str().unwrap().to_owned();
        assert!(state.starts_with(&format!(r#""calls";r={remaining}"#)), "{state}");
    }
    let status = client.check(call()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.metadata().get("retry-after").unwrap(), "30");
    assert_eq!(status.metadata().get("ratelimit-policy").unwrap(), r#""calls";q=2;w=60"#);
    server.abort();
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(s, _)| s);
        Some((next, listener))
    })
}

/// A client rotating `X-Forwarded-For` cannot pick its own key unless the
/// proxy in front is trusted.
#[tokio::test]
async fn forwarded_header_spoofing_is_refused() {
    use redlayer_ratelimit::ClientIp;
    let with = |ip: ClientIp| {
        let l = RateLimiter::builder(Store::memory()).policy(Policy::gcra("p", Quota::per_hour(1))).build();
        app(RateLimitLayer::new(l).key(ip))
    };
    let spoof = |xff: &str| {
        let mut r = request([203, 0, 113, 9]);
        r.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    let untrusted = with(ClientIp::x_forwarded_for());
    assert_eq!(untrusted.clone().oneshot(spoof("1.1.1.1")).await.unwrap().status(), 200);
    assert_eq!(untrusted.clone().oneshot(spoof("2.2.2.2")).await.unwrap().status(), 429);
    let trusted = with(ClientIp::x_forwarded_for().trusted_proxies(["203.0.113.0/24"]));
    assert_eq!(trusted.clone().oneshot(spoof("1.1.1.1")).await.unwrap().status(), 200);
    assert_eq!(trusted.clone().oneshot(spoof("2.2.2.2")).await.unwrap().status(), 200);
    assert_eq!(trusted.clone().oneshot(spoof("9.9.9.9, 1.1.1.1")).await.unwrap().status(), 429);
}

/// A limiter of one GCRA policy runs `gcra.lua`; with more policies the
/// generic `limit.lua` decides. Both must answer the same for that policy:
/// reads (cost 0), allowed and denied requests, and costs above the burst.
#[tokio::test]
async fn the_single_gcra_script_answers_as_the_generic_one() {
    let server = RedisServer::start();
    let handle = redis(&server).await;
    let quota = Quota::per_minute(6).burst(3);
    let single =
        warm(RateLimiter::builder(Store::redis(handle.clone())).policy(Policy::gcra("p", quota)).deny_cache(0).build())
            .await;
    let generic = warm(
        RateLimiter::builder(Store::redis(handle.clone()))
            .policy(Policy::gcra("p", quota))
            .policy(Policy::gcra("wide", Quota::per_second(1_000_000)))
            .deny_cache(0)
            .build(),
    )
    .await;
    let evals = server.command_calls("evalsha");
    for cost in [0, 1, 0, 2, 1, 0, 1, 4, 0, 2] {
        let a = single.check("client-a", cost).await;
        let b = generic.check("client-b", cost).await;
        let (pa, pb) = (&a.policies()[0], &b.policies()[0]);
        assert_eq!(a.is_allowed(), b.is_allowed(), "cost {cost}: {a:?} / {b:?}");
        assert_eq!((pa.allowed, pa.remaining), (pb.allowed, pb.remaining), "cost {cost}: {pa:?} / {pb:?}");
        assert_eq!(pa.retry_after.is_some(), pb.retry_after.is_some(), "cost {cost}: {pa:?} / {pb:?}");
        let close = |x: Duration, y: Duration| x.abs_diff(y) < Duration::from_millis(500);
        assert!(close(pa.reset, pb.reset), "cost {cost}: {pa:?} / {pb:?}");
        if let (Some(x), Some(y)) = (pa.retry_after, pb.retry_after) {
            assert!(close(x, y), "cost {cost}: {pa:?} / {pb:?}");
        }
    }
    // One EVALSHA per decision (the first of each script also loads it).
    let evals = server.command_calls("evalsha") - evals;
    assert!((20..=22).contains(&evals), "{evals} EVALSHA for 20 decisions");
}
