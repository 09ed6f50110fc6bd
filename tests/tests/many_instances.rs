//! Four app instances (four handles, four pools) on one standalone Redis and
//! on a 3-master cluster, under concurrent traffic: limits exact, sessions
//! shared, idempotent handlers run once, one origin call per cold cache key,
//! per-key lock exclusive across instances.
//!
//! These tests check exact counts, not latency: the handles get a long
//! command timeout and the rate limit fails closed, so that on a loaded
//! machine a slow Redis answer is a clear 503 (or a longer wait) instead of a
//! decision quietly failed open that changes a count.

use std::{sync::Arc, time::Duration};

use axum::Router;
use http::StatusCode;
use redlayer::{FailurePolicy, Redis};
use redlayer_testkit::{RedisCluster, RedisServer};
use redlayer_tests::{Backend, Config, Counters, app, request, send, unique};

/// The handles' per-command timeout: far above any latency on a loaded machine.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

struct Instances {
    apps: Vec<Router>,
    counters: Arc<Counters>,
}

fn instances(handles: Vec<Redis>, config: &Config) -> Instances {
    let counters = Arc::new(Counters::default());
    let apps = handles.into_iter().map(|r| app(&Backend::Redis(r), config, counters.clone())).collect();
    Instances { apps, counters }
}

impl Instances {
    fn app(&self, i: usize) -> Router {
        self.apps[i % self.apps.len()].clone()
    }
}

async fn limits_are_exact(inst: &Instances) {
    let client = unique("client");
    let mut tasks = Vec::new();
    for i in 0..400 {
        let app = inst.app(i);
        let client = client.clone();
        tasks.push(tokio::spawn(
            async move { send(&app, request("GET", "/hello", &[("x-client", &client)], "")).await },
        ));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let reply = t.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
                limited += 1
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    println!("rate limit: {ok} allowed, {limited} limited of 400 across 4 instances (limit 100)");
    assert_eq!((ok, limited), (100, 300), "exactly the limit across 4 instances");
}

async fn sessions_are_shared(inst: &Instances) {
    let first = send(&inst.app(0), request("GET", "/visits", &[], "")).await;
    assert_eq!(first.body, "1");
    let cookie = first.session_cookie().expect("a new session sets a cookie");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = inst.app(i);
        let cookie = cookie.clone();
        tasks
            .push(tokio::spawn(async move { send(&app, request("GET", "/visits", &[("cookie", &cookie)], "")).await }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.session_cookie().is_none(), "an existing session keeps its id");
        seen.push(reply.body.parse::<i64>().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (2..=41).collect::<Vec<_>>(), "40 concurrent increments over 4 instances, none lost");
    // a buffered write on one instance is read on another
    let wrote = send(&inst.app(1), request("POST", "/note", &[("cookie", &cookie)], "from-1")).await;
    assert_eq!(wrote.status, StatusCode::OK);
    let read = send(&inst.app(2), request("GET", "/note", &[("cookie", &cookie)], "")).await;
    assert_eq!(read.body, "from-1");
}

async fn idempotent_handlers_run_once(inst: &Instances) {
    let before = Counters::get(&inst.counters.paid);
    let key = format!("\"{}\"", unique("pay"));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = inst.app(i);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            send(&app, request("POST", "/pay", &[("idempotency-key", &key)], "amount=42")).await
        }));
    }
    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for t in tasks {
        let reply = t.await.unwrap();
        if reply.status == StatusCode::CREATED {
            bodies.push(reply.body.clone());
        }
        statuses.push(reply.status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&201));
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "every 201 is the same answer: {bodies:?}");
    // retries on every instance replay it
    for i in 0..4 {
        let reply = send(&inst.app(i), request("POST", "/pay", &[("idempotency-key", &key)], "amount=42")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.header("idempotent-replayed"), "true");
        assert_eq!(reply.body, bodies[0]);
    }
    assert_eq!(Counters::get(&inst.counters.paid) - before, 1, "16 requests, one handler run");
}

async fn one_origin_call_per_cold_key(inst: &Instances) {
    for round in 0..3 {
        let before = Counters::get(&inst.counters.origin);
        let path = format!("/cached/{}", unique(&format!("k{round}")));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let app = inst.app(i);
            let path = path.clone();
            tasks.push(tokio::spawn(async move { send(&app, request("GET", &path, &[], "")).await }));
        }
        let mut bodies = Vec::new();
        let mut statuses = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            let reply = t.await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            *statuses.entry(reply.header("cache-status").to_owned()).or_default() += 1;
            bodies.push(reply.body);
        }
        bodies.dedup();
        assert_eq!(bodies.len(), 1, "one answer for everyone: {bodies:?} (cache-status: {statuses:?})");
        assert_eq!(
            Counters::get(&inst.counters.origin) - before,
            1,
            "200 requests over 4 instances, one origin call (cache-status: {statuses:?})"
        );
    }
}

async fn per_key_lock_is_exclusive(inst: &Instances) {
    let path = format!("/locked/{}", unique("acct"));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app = inst.app(i);
        let path = path.clone();
        tasks.push(tokio::spawn(async move { send(&app, request("POST", &path, &[], "")).await }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(Counters::get(&inst.counters.overlaps), 0, "never two holders of one key");
}

async fn suite(handles: Vec<Redis>) {
    let config = Config {
        work: Duration::from_millis(20),
        ratelimit_failure: FailurePolicy::FailClosed,
        lock_wait: Duration::from_secs(15),
        ..Config::default()
    };
    let inst = instances(handles, &config);
    limits_are_exact(&inst).await;
    sessions_are_shared(&inst).await;
    idempotent_handlers_run_once(&inst).await;
    one_origin_call_per_cold_key(&inst).await;
    per_key_lock_is_exclusive(&inst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_one_standalone_redis() {
    let server = RedisServer::start();
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(Redis::builder().timeout(REDIS_TIMEOUT).connect(&server.url()).await.unwrap());
    }
    suite(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_a_three_master_cluster() {
    let cluster = RedisCluster::start();
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(Redis::builder().timeout(REDIS_TIMEOUT).connect_cluster(cluster.urls()).await.unwrap());
    }
    suite(handles).await;
}
