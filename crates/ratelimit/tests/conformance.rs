//! One suite, three backends: memory, standalone Redis, a 3-master cluster.
//! Each test function takes a backend that hands out independent stores
//! (separate Redis handles = separate server instances) on shared state.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, body::Body, routing::get};
use http::{Request, StatusCode};
use redlayer_ratelimit::{
    Algorithm, Key, PeerAddr, Policy, Quota, RateLimitLayer, RateLimiter, Store, retry_after_secs,
};
use redlayer_testkit::RedisServer;
use tower::ServiceExt;

enum Backend {
    Memory(Store),
    Standalone(RedisServer),
    #[cfg(feature = "cluster")]
    Cluster(redlayer_testkit::RedisCluster),
}

impl Backend {
    /// A new, independent handle on the backend's shared state.
    async fn store(&self) -> Store {
        clear_of_the_hour_boundary().await;
        // A generous timeout: these tests count decisions exactly, and one
        // decision timed out on a loaded machine would be a degraded answer
        // (once seen on the cluster at 5 s, with every suite of this file
        // running side by side on 2 cores). Timeouts are tested in tests/layer.rs.
        let handle = || redlayer_core::Redis::builder().timeout(Duration::from_secs(15));
        match self {
            Backend::Memory(s) => s.clone(),
            Backend::Standalone(server) => Store::redis(handle().connect(&server.url()).await.unwrap()),
            #[cfg(feature = "cluster")]
            Backend::Cluster(c) => Store::redis(handle().connect_cluster(c.urls()).await.unwrap()),
        }
    }
}

/// Fixed and sliding windows of an hour are aligned to the clock: a test
/// that counts exactly within one window waits out the last 30 s of an hour
/// (Redis and the memory store read this machine's clock).
async fn clear_of_the_hour_boundary() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let into_hour = now.as_secs_f64() % 3600.0;
    if into_hour > 3570.0 {
        tokio::time::sleep(Duration::from_secs_f64(3601.0 - into_hour)).await;
    }
}

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Gcra,
    Algorithm::TokenBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindowCounter,
    Algorithm::SlidingWindowLog,
];

fn limiter(store: Store, policies: Vec<Policy>) -> RateLimiter {
    policies.into_iter().fold(RateLimiter::builder(store).deny_cache(0), |b, p| b.policy(p)).build()
}

/// 4 instances fire 400 concurrent requests at one key with a limit of 100: exactly 100 pass.
async fn exactly_the_limit_under_concurrency(backend: Backend) {
    for algorithm in ALGORITHMS {
        let mut limiters = Vec::new();
        for _ in 0..4 {
            limiters.push(limiter(backend.store().await, vec![Policy::new("p", algorithm, Quota::per_hour(100))]));
        }
        let key = format!("conc-{}", algorithm.as_str());
        // Each instance's first call loads the script on every node (a
        // fresh cluster): done before the burst, which counts decisions only.
        for l in &limiters {
            assert!(l.try_check(&key, 0).await.unwrap().is_allowed());
        }
        let mut tasks = Vec::new();
        for i in 0..400 {
            let l = limiters[i % 4].clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move { l.try_check(&key, 1).await.unwrap().is_allowed() }));
        }
        let mut allowed = 0;
        for t in tasks {
            allowed += usize::from(t.await.unwrap());
        }
        assert_eq!(allowed, 100, "{algorithm:?}");
    }
}

/// A request denied by one policy is charged to none; all are reported.
async fn denied_by_any_consumes_from_none(backend: Backend) {
    for algorithm in ALGORITHMS {
        let l = limiter(
            backend.store().await,
            vec![
                Policy::new("small", algorithm, Quota::per_hour(3)),
                Policy::new("big", algorithm, Quota::per_hour(10)),
            ],
        );
        let key = format!("multi-{}", algorithm.as_str());
        for _ in 0..3 {
            assert!(l.try_check(&key, 1).await.unwrap().is_allowed());
        }
        for _ in 0..5 {
            let d = l.try_check(&key, 1).await.unwrap();
            assert!(!d.is_allowed(), "{algorithm:?}");
            assert_eq!(d.policies().len(), 2);
            assert!(!d.policies()[0].allowed && d.policies()[1].allowed);
            assert_eq!(d.policies()[0].remaining, 0);
            assert_eq!(d.policies()[1].remaining, 7, "{algorithm:?}: reported as it stands, not charged");
        }
        let peek = l.try_check(&key, 0).await.unwrap();
        assert_eq!(peek.policies()[1].remaining, 7, "{algorithm:?}: the denied requests were not charged");
        // A cost larger than the limit is never allowed and charges nothing.
        for cost in [11, u64::MAX] {
            let d = l.try_check("other", cost).await.unwrap();
            assert!(!d.is_allowed() && d.retry_after().is_none(), "{algorithm:?} cost {cost}");
        }
        assert_eq!(l.try_check("other", 0).await.unwrap().policies()[1].remaining, 10);
    }
}

/// Costs: weighted requests spend several units at once.
async fn costs_are_weighted(backend: Backend) {
    for algorithm in ALGORITHMS {
        let l = limiter(backend.store().await, vec![Policy::new("p", algorithm, Quota::per_hour(10))]);
        let key = format!("cost-{}", algorithm.as_str());
        let d = l.try_check(&key, 4).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.policies()[0].remaining, 6, "{algorithm:?}");
        assert!(l.try_check(&key, 6).await.unwrap().is_allowed());
        assert!(!l.try_check(&key, 1).await.unwrap().is_allowed(), "{algorithm:?}");
    }
}

/// Long periods: TTLs such as 1e8 ms must reach Redis as integers.
async fn long_periods_work(backend: Backend) {
    for algorithm in ALGORITHMS {
        let l = limiter(
            backend.store().await,
            vec![Policy::new("long", algorithm, Quota::new(1, Duration::from_secs(100_000)))],
        );
        let key = format!("long-{}", algorithm.as_str());
        assert!(l.try_check(&key, 1).await.unwrap().is_allowed(), "{algorithm:?}");
        let d = l.try_check(&key, 1).await.unwrap();
        assert!(!d.is_allowed(), "{algorithm:?}");
        let wait = d.retry_after().unwrap();
        if algorithm == Algorithm::FixedWindow {
            // Its windows are aligned to the epoch: the wait ends with the current
            // window, anywhere in the period (this used to fail in the hour before
            // each 100,000 s boundary).
            assert!(wait > Duration::ZERO && wait <= Duration::from_secs(100_000), "{wait:?}");
        } else {
            assert!(wait > Duration::from_secs(3600), "{algorithm:?}");
        }
    }
}

/// GCRA 5/min burst 5: the 6th waits 12 s; sub-second waits round up to 1 s.
async fn retry_after_is_rounded_up(backend: Backend) {
    let l = limiter(backend.store().await, vec![Policy::gcra("m", Quota::per_minute(5).burst(5))]);
    for i in 0..5 {
        let d = l.try_check("ra", 1).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.policies()[0].remaining, 4 - i);
    }
    let d = l.try_check("ra", 1).await.unwrap();
    let wait = d.retry_after().unwrap();
    assert!(wait > Duration::from_secs(11) && wait <= Duration::from_secs(12), "{wait:?}");
    assert_eq!(retry_after_secs(wait), 12);
    let l = limiter(backend.store().await, vec![Policy::gcra("s", Quota::per_second(4).burst(1))]);
    assert!(l.try_check("sub", 1).await.unwrap().is_allowed());
    let d = l.try_check("sub", 1).await.unwrap();
    let wait = d.retry_after().unwrap();
    assert!(wait < Duration::from_millis(260), "{wait:?}");
    assert_eq!(retry_after_secs(wait), 1, "never 0 while waiting");
    tokio::time::sleep(wait + Duration::from_millis(30)).await;
    assert!(l.try_check("sub", 1).await.unwrap().is_allowed(), "allowed again after the announced wait");
}

/// Windows: the sliding log never lets more than the limit through in any
/// period, the fixed window may (documented), across a boundary.
async fn window_boundaries(backend: Backend) {
    for (algorithm, max) in [
        (Algorithm::SlidingWindowLog, 10),
        (Algorithm::SlidingWindowCounter, 19), // an approximation; evenly paced traffic stays well under 2x
        (Algorithm::Gcra, 20),                 // burst (10) + count (10) per period, documented
        (Algorithm::FixedWindow, 20),
    ] {
        let l = limiter(backend.store().await, vec![Policy::new("w", algorithm, Quota::per_second(10))]);
        let key = format!("edge-{}", algorithm.as_str());
        // (sent, answered) of each allowed request; requests go one at a time, so
        // a run of them answered within 950 ms of the first one's sending was
        // surely decided within 950 ms by Redis too (no false alarms from latency).
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        while start.elapsed() < Duration::from_millis(1500) {
            let sent = start.elapsed();
            if l.try_check(&key, 1).await.unwrap().is_allowed() {
                times.push((sent, start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let worst = (0..times.len())
            .map(|i| {
                times[i..].iter().filter(|(_, answered)| *answered < times[i].0 + Duration::from_millis(950)).count()
            })
            .max()
            .unwrap();
        assert!(worst <= max, "{algorithm:?}: {worst} in under a second");
        // And it does let the quota through (one letting 1-9 through passed the above).
        assert!(times.len() >= 10, "{algorithm:?}: only {} allowed in 1.5 s at 10/s", times.len());
    }
}

fn app(limiter: RateLimiter) -> Router {
    Router::new().route("/", get(|| async { "ok" })).layer(RateLimitLayer::new(limiter).key(Key::header("x-client")))
}

fn request(client: &str, api_key: Option<&str>) -> Request<Body> {
    let mut r = Request::builder().uri("/").header("x-client", client);
    if let Some(k) = api_key {
        r = r.header("x-api-key", k);
    }
    let mut r = r.body(Body::empty()).unwrap();
    r.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 1))));
    r
}

/// The layer: 429 + fields + problem body; fields on allowed responses; two
/// layer instances on separate handles share one limit.
async fn layer_answers_and_shared_limit(backend: Backend) {
    let make = |store| limiter(store, vec![Policy::gcra("per-client", Quota::per_minute(5).burst(5))]);
    let a = app(make(backend.store().await));
    let b = app(make(backend.store().await));
    // `t` (draft-10): seconds until more quota comes, here the next unit,
    // one every 12 s (11 if a second passed during the test).
    let t_of = |res: &http::Response<_>| -> u64 {
        res.headers()["ratelimit"].to_str().unwrap().split(";t=").nth(1).unwrap().parse().unwrap()
    };
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app.clone().oneshot(request("c1", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], r#""per-client";q=5;w=60"#);
        assert_eq!(
            res.headers()["ratelimit"].to_str().unwrap().split(";t=").next().unwrap(),
            format!(r#""per-client";r={}"#, 4 - i)
        );
        assert!((11..=12).contains(&t_of(&res)), "{:?}", res.headers()["ratelimit"]);
    }
    let res = b.clone().oneshot(request("c1", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "12");
    assert!(res.headers()["ratelimit"].to_str().unwrap().starts_with(r#""per-client";r=0;t="#));
    // Retry-After never points earlier than `t` (draft-10 section 6).
    assert!((11..=12).contains(&t_of(&res)), "{:?}", res.headers()["ratelimit"]);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], 429);
    assert_eq!(doc["retry_after"], 12);
    // Another client is not affected.
    assert_eq!(a.clone().oneshot(request("c2", None)).await.unwrap().status(), StatusCode::OK);
}

/// Per-client and per-API-key policies (different keys: one limiter hash tag,
/// one slot on a cluster), decided together.
async fn policies_with_different_keys(backend: Backend) {
    let make = |store| {
        RateLimiter::builder(store)
            .name("mixed")
            .policy(Policy::gcra("per-client", Quota::per_hour(3)))
            .policy(Policy::fixed_window("per-key", Quota::per_hour(4)).key(Key::header("x-api-key")))
            .build()
    };
    let a = app(make(backend.store().await));
    let b = app(make(backend.store().await));
    for _ in 0..3 {
        assert_eq!(a.clone().oneshot(request("ip1", Some("k"))).await.unwrap().status(), 200);
    }
    // ip1 is exhausted: denied, and the API key is not charged.
    assert_eq!(b.clone().oneshot(request("ip1", Some("k"))).await.unwrap().status(), 429);
    let res = b.clone().oneshot(request("ip2", Some("k"))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["ratelimit"].to_str().unwrap().contains(r#""per-key";r=0"#), "{:?}", res.headers());
    // The key is now exhausted from any client.
    let res = a.clone().oneshot(request("ip3", Some("k"))).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers()["ratelimit-policy"].to_str().unwrap().contains(r#""per-key";q=4;w=3600"#));
}

/// Two limiters on one store give one policy name to different quotas (a
/// strict one on a login route, a loose one elsewhere): they count apart.
/// Sharing one state, the loose one's decisions pulled the strict one's back
/// into its own range, and the strict limit let through what the loose does.
async fn one_policy_name_with_two_quotas_counts_apart(backend: Backend) {
    for algorithm in ALGORITHMS {
        let strict = limiter(backend.store().await, vec![Policy::new("per-ip", algorithm, Quota::per_hour(5))]);
        let loose = limiter(backend.store().await, vec![Policy::new("per-ip", algorithm, Quota::per_second(50))]);
        let key = format!("shared-name-{}", algorithm.as_str());
        for _ in 0..5 {
            assert!(strict.try_check(&key, 1).await.unwrap().is_allowed());
        }
        assert!(loose.try_check(&key, 1).await.unwrap().is_allowed());
        assert!(
            !strict.try_check(&key, 1).await.unwrap().is_allowed(),
            "{algorithm:?}: the strict limit let a 6th through"
        );
    }
}

macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exactly_the_limit_under_concurrency() {
                super::exactly_the_limit_under_concurrency($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn denied_by_any_consumes_from_none() {
                super::denied_by_any_consumes_from_none($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn costs_are_weighted() {
                super::costs_are_weighted($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn long_periods_work() {
                super::long_periods_work($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retry_after_is_rounded_up() {
                super::retry_after_is_rounded_up($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn window_boundaries() {
                super::window_boundaries($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn layer_answers_and_shared_limit() {
                super::layer_answers_and_shared_limit($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn policies_with_different_keys() {
                super::policies_with_different_keys($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_policy_name_with_two_quotas_counts_apart() {
                super::one_policy_name_with_two_quotas_counts_apart($backend).await
            }
        }
    };
}

suite!(memory, Backend::Memory(Store::memory()));
suite!(standalone, Backend::Standalone(RedisServer::start()));
#[cfg(feature = "cluster")]
suite!(cluster, Backend::Cluster(redlayer_testkit::RedisCluster::start()));
