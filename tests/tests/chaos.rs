//! Chaos under load: while a bounded load runs against the stacked app,
//! Redis is killed and restarted, then frozen (SIGSTOP) and resumed; on the
//! cluster one master is killed and restarted. Asserted: no panic, no request
//! past its layers' timeouts (+ margin), each layer answers per its failure
//! policy, no buffered session write is lost without a 503, and every layer
//! works on Redis again soon after it returns. Figures are printed.
//!
//! Failure policies in the stack: rate limit fail open (always 200 here),
//! cache steps aside (always 200), session 503 (401 if the session vanished
//! mid-request), idempotency and lock fail closed (503; 409 when busy).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use http::StatusCode;
use redlayer::Redis;
use redlayer_testkit::{RedisCluster, RedisServer};
use redlayer_tests::{Backend, Config, Counters, app, request, send, unique};

/// The Redis handle's per-command timeout in these tests.
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a lock request waits for its lock.
const LOCK_WAIT: Duration = Duration::from_millis(800);
/// Generous bound on one request: the layers on the longest path (rate limit,
/// session load + write, idempotency, lock wait) each bounded, plus margin.
const MAX_LATENCY: Duration = Duration::from_millis(3500);
/// A request still running after this is "hung" (a failure).
const HANG: Duration = Duration::from_secs(8);
/// Longest accepted time until every layer works again after a standalone
/// Redis returns: the cache steps aside for 500 ms after a failure, and the
/// load keeps running on a slow machine.
const MAX_RECOVERY: Duration = Duration::from_secs(6);
/// How long [`recovery`] keeps trying (past [`MAX_RECOVERY`], so that a slow
/// recovery is reported with its time).
const RECOVERY_WITHIN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    hung: AtomicUsize,
    lost_writes: AtomicUsize,
    /// (route, status) -> count
    statuses: Mutex<BTreeMap<(&'static str, u16), usize>>,
    /// route -> max latency
    max_latency: Mutex<BTreeMap<&'static str, Duration>>,
    /// (route, status) outside the failure policy, with the body
    violations: Mutex<Vec<String>>,
}

impl Stats {
    fn record(&self, route: &'static str, status: u16, took: Duration, allowed: &[u16], body: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.statuses.lock().unwrap().entry((route, status)).or_default() += 1;
        let mut max = self.max_latency.lock().unwrap();
        let m = max.entry(route).or_default();
        *m = (*m).max(took);
        if !allowed.contains(&status) {
            self.violations.lock().unwrap().push(format!("{route} -> {status}: {body}"));
        }
    }

    fn print(&self, name: &str) {
        println!(
            "== {name}: {} requests, {} hung, {} lost session writes",
            self.requests.load(Ordering::Relaxed),
            self.hung.load(Ordering::Relaxed),
            self.lost_writes.load(Ordering::Relaxed)
        );
        for ((route, status), n) in self.statuses.lock().unwrap().iter() {
            println!("   {route:<8} {status}: {n}");
        }
        for (route, max) in self.max_latency.lock().unwrap().iter() {
            println!("   max latency {route:<8} {max:?}");
        }
    }

    fn check(&self) {
        let violations = self.violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "answers outside the failure policies: {:?}",
            &violations[..violations.len().min(10)]
        );
        assert_eq!(self.hung.load(Ordering::Relaxed), 0, "requests hung");
        assert_eq!(self.lost_writes.load(Ordering::Relaxed), 0, "a 200 for a session write that was not stored");
        for (route, max) in self.max_latency.lock().unwrap().iter() {
            assert!(*max < MAX_LATENCY, "{route} waited {max:?}, past its layers' timeouts");
        }
    }
}

/// Bumped on every kill/restart: a note read back across one is not compared.
static EPOCH: AtomicUsize = AtomicUsize::new(0);

async fn timed(
    stats: &Stats,
    app: &Router,
    req: http::Request<axum::body::Body>,
) -> Option<(redlayer_tests::Reply, Duration)> {
    let started = Instant::now();
    match tokio::time::timeout(HANG, send(app, req)).await {
        Ok(reply) => Some((reply, started.elapsed())),
        Err(_) => {
            stats.hung.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One worker: cycles through every route until `stop`.
async fn worker(id: usize, apps: Vec<Router>, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut cookie: Option<String> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && i < 100_000 {
        let app = &apps[(id + i) % apps.len()];
        i += 1;
        let cookie_header: Vec<(&str, &str)> = cookie.as_deref().map(|c| vec![("cookie", c)]).unwrap_or_default();
        match i % 6 {
            0 => {
                let client = unique("c");
                if let Some((r, t)) = timed(&stats, app, request("GET", "/hello", &[("x-client", &client)], "")).await {
                    stats.record("hello", r.status.as_u16(), t, &[200], &r.body);
                }
            }
            1 => {
                if let Some((r, t)) = timed(&stats, app, request("GET", "/visits", &cookie_header, "")).await {
                    stats.record("visits", r.status.as_u16(), t, &[200, 401, 503], &r.body);
                    if let Some(c) = r.session_cookie() {
                        cookie = Some(c);
                    }
                }
            }
            2 => {
                let value = unique("note");
                let epoch = EPOCH.load(Ordering::SeqCst);
                let Some((r, t)) = timed(&stats, app, request("POST", "/note", &cookie_header, &value)).await else {
                    continue;
                };
                stats.record("note", r.status.as_u16(), t, &[200, 401, 503], &r.body);
                if let Some(c) = r.session_cookie() {
                    cookie = Some(c);
                }
                if r.status == StatusCode::OK {
                    // A 200 means the write is stored: read it back (any instance).
                    let c = cookie.clone().unwrap_or_default();
                    let other = &apps[(id + i + 1) % apps.len()];
                    if let Some((back, _)) = timed(&stats, other, request("GET", "/note", &[("cookie", &c)], "")).await
                        && back.status == StatusCode::OK
                        && back.body != value
                        && EPOCH.load(Ordering::SeqCst) == epoch
                    {
                        stats.lost_writes.fetch_add(1, Ordering::Relaxed);
                        stats.violations.lock().unwrap().push(format!("note {value} read back as {:?}", back.body));
                    }
                }
            }
            3 => {
                let path = format!("/cached/k{}", i % 7);
                if let Some((r, t)) = timed(&stats, app, request("GET", &path, &[], "")).await {
                    stats.record("cached", r.status.as_u16(), t, &[200], &r.body);
                }
            }
            4 => {
                let key = format!("\"{}\"", unique("pay"));
                if let Some((r, t)) =
                    timed(&stats, app, request("POST", "/pay", &[("idempotency-key", &key)], "x")).await
                {
                    stats.record("pay", r.status.as_u16(), t, &[201, 409, 503], &r.body);
                }
            }
            _ => {
                let path = format!("/locked/w{}", id % 3);
                if let Some((r, t)) = timed(&stats, app, request("POST", &path, &[], "")).await {
                    stats.record("locked", r.status.as_u16(), t, &[200, 409, 503], &r.body);
                }
            }
        }
    }
}

struct Load {
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_load(apps: &[Router], workers: usize) -> Load {
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..workers).map(|id| tokio::spawn(worker(id, apps.to_vec(), stats.clone(), stop.clone()))).collect();
    Load { stats, stop, tasks }
}

impl Load {
    async fn finish(self, name: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(HANG * 2, t).await.expect("worker stopped").expect("worker did not panic");
        }
        self.stats.print(name);
        self.stats.check();
    }
}

/// Every layer works on Redis: the limit is enforced (not failed open), a new
/// session persists, idempotency and lock run, the cache stores and hits.
async fn all_layers_work(app: &Router, limit: u64) -> Result<(), String> {
    let client = unique("probe");
    for n in 0..=limit {
        let r = send(app, request("GET", "/hello", &[("x-client", &client)], "")).await;
        let want = if n < limit { 200 } else { 429 };
        if r.status.as_u16() != want {
            return Err(format!("ratelimit: request {n} got {}", r.status));
        }
    }
    let first = send(app, request("GET", "/visits", &[], "")).await;
    let cookie = first.session_cookie().ok_or_else(|| format!("session: {} {}", first.status, first.body))?;
    let second = send(app, request("GET", "/visits", &[("cookie", &cookie)], "")).await;
    if second.body != "2" {
        return Err(format!("session: second visit {} {}", second.status, second.body));
    }
    let key = format!("\"{}\"", unique("probe"));
    let pay = send(app, request("POST", "/pay", &[("idempotency-key", &key)], "p")).await;
    if pay.status != StatusCode::CREATED {
        return Err(format!("idempotency: {} {}", pay.status, pay.body));
    }
    let replay = send(app, request("POST", "/pay", &[("idempotency-key", &key)], "p")).await;
    if replay.header("idempotent-replayed") != "true" {
        return Err(format!("idempotency replay: {} {}", replay.status, replay.body));
    }
    let locked = send(app, request("POST", &format!("/locked/{}", unique("probe")), &[], "")).await;
    if locked.status != StatusCode::OK {
        return Err(format!("lock: {} {}", locked.status, locked.body));
    }
    let path = format!("/cached/{}", unique("probe"));
    let miss = send(app, request("GET", &path, &[], "")).await;
    if !miss.header("cache-status").contains("stored") {
        return Err(format!("cache miss: {}", miss.header("cache-status")));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let hit = send(app, request("GET", &path, &[], "")).await;
    if !hit.header("cache-status").contains("; hit") {
        return Err(format!("cache hit: {}", hit.header("cache-status")));
    }
    Ok(())
}

/// Time until [`all_layers_work`] passes on every instance.
async fn recovery(apps: &[Router], limit: u64, within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        let mut ok = true;
        for app in apps {
            if let Err(e) = all_layers_work(app, limit).await {
                last = e;
                ok = false;
                break;
            }
        }
        if ok {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("layers not back on Redis within {within:?}: {last}");
}

const LIMIT: u64 = 5;

fn config() -> Config {
    Config { limit: LIMIT, lock_wait: LOCK_WAIT, work: Duration::from_millis(10), ..Config::default() }
}

fn apps(handles: Vec<Redis>) -> Vec<Router> {
    let counters = Arc::new(Counters::default());
    handles.into_iter().map(|r| app(&Backend::Redis(r), &config(), counters.clone())).collect()
}

async fn blocking(f: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_kill_restart_then_pause_resume_under_load() {
    let server = Arc::new(Mutex::new(RedisServer::start()));
    let url = server.lock().unwrap().url();
    let mut handles = Vec::new();
    for _ in 0..2 {
        handles.push(Redis::builder().timeout(REDIS_TIMEOUT).connect(&url).await.unwrap());
    }
    let apps = apps(handles);
    let warm = recovery(&apps, LIMIT, Duration::from_secs(5)).await;
    println!("warm-up: all layers work after {warm:?}");

    // --- kill, stay down, restart ------------------------------------------
    let load = start_load(&apps, 8);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = server.clone();
    EPOCH.fetch_add(1, Ordering::SeqCst);
    blocking(move || s.lock().unwrap().kill()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = server.clone();
    blocking(move || s.lock().unwrap().restart()).await;
    EPOCH.fetch_add(1, Ordering::SeqCst);
    let back = recovery(&apps, LIMIT, RECOVERY_WITHIN).await;
    println!("kill/restart: every layer back on Redis {back:?} after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.finish("standalone kill/restart").await;
    assert!(back < MAX_RECOVERY, "recovery took {back:?}");

    // --- freeze (SIGSTOP), resume --------------------------------------------
    let load = start_load(&apps, 8);
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.lock().unwrap().pause();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.lock().unwrap().resume();
    let back = recovery(&apps, LIMIT, RECOVERY_WITHIN).await;
    println!("pause/resume: every layer back on Redis {back:?} after the resume");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.finish("standalone pause/resume").await;
    assert!(back < MAX_RECOVERY, "recovery took {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_one_master_killed_under_load() {
    let cluster = Arc::new(Mutex::new(RedisCluster::start()));
    let urls = cluster.lock().unwrap().urls();
    let mut handles = Vec::new();
    for _ in 0..2 {
        handles.push(Redis::builder().timeout(REDIS_TIMEOUT).connect_cluster(urls.clone()).await.unwrap());
    }
    let apps = apps(handles);
    let warm = recovery(&apps, LIMIT, Duration::from_secs(10)).await;
    println!("cluster warm-up: all layers work after {warm:?}");

    let load = start_load(&apps, 8);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = cluster.clone();
    EPOCH.fetch_add(1, Ordering::SeqCst);
    blocking(move || c.lock().unwrap().node_mut(0).kill()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = cluster.clone();
    blocking(move || {
        let mut c = c.lock().unwrap();
        c.node_mut(0).restart();
        c.wait_ok(Duration::from_secs(20));
    })
    .await;
    EPOCH.fetch_add(1, Ordering::SeqCst);
    let back = recovery(&apps, LIMIT, Duration::from_secs(10)).await;
    println!("cluster master kill/restart: every layer back on Redis {back:?} after cluster_state:ok");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.finish("cluster master kill/restart").await;
    assert!(back < Duration::from_secs(5), "recovery took {back:?}");
}

/// With Redis down, the rate limit of the stack follows each documented
/// policy: fail open (200), fail closed (503) or a local in-process limiter
/// (the same quota, per instance); the other layers meanwhile step aside
/// (cache) or answer 503 (session, idempotency, lock). Then all recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_failure_policies_with_redis_down() {
    let mut server = RedisServer::start();
    let redis = Redis::builder().timeout(REDIS_TIMEOUT).connect(&server.url()).await.unwrap();
    let counters = Arc::new(Counters::default());
    let stack = |policy| {
        let config = Config { ratelimit_failure: policy, ..config() };
        app(&Backend::Redis(redis.clone()), &config, counters.clone())
    };
    let open = stack(redlayer::FailurePolicy::FailOpen);
    let closed = stack(redlayer::FailurePolicy::FailClosed);
    let local = stack(redlayer::FailurePolicy::LocalFallback);
    // Bounded retries: the first requests on a fresh server load the scripts.
    let warm = recovery(&[open.clone(), closed.clone(), local.clone()], LIMIT, Duration::from_secs(10)).await;
    println!("policies warm-up: all layers work after {warm:?}");
    tokio::task::block_in_place(|| server.kill());
    let stats = Stats::default();
    let client = unique("down");
    let hdr = [("x-client", client.as_str())];
    for n in 0..LIMIT + 2 {
        let (r, t) = timed(&stats, &open, request("GET", "/hello", &hdr, "")).await.unwrap();
        stats.record("open", r.status.as_u16(), t, &[200], &r.body);
        let (r, t) = timed(&stats, &closed, request("GET", "/hello", &hdr, "")).await.unwrap();
        stats.record("closed", r.status.as_u16(), t, &[503], &r.body);
        let want = if n < LIMIT { 200 } else { 429 };
        let (r, t) = timed(&stats, &local, request("GET", "/hello", &hdr, "")).await.unwrap();
        stats.record("local", r.status.as_u16(), t, &[want], &r.body);
    }
    let (r, t) = timed(&stats, &open, request("GET", "/visits", &[], "")).await.unwrap();
    stats.record("session", r.status.as_u16(), t, &[503], &r.body);
    let (r, t) = timed(&stats, &open, request("GET", "/cached/down", &[], "")).await.unwrap();
    stats.record("cache", r.status.as_u16(), t, &[200], &r.body);
    assert!(r.header("cache-status").contains("bypass"), "{}", r.header("cache-status"));
    let (r, t) = timed(&stats, &open, request("POST", "/pay", &[("idempotency-key", "\"down\"")], "")).await.unwrap();
    stats.record("idem", r.status.as_u16(), t, &[503], &r.body);
    let (r, t) = timed(&stats, &open, request("POST", "/locked/down", &[], "")).await.unwrap();
    stats.record("lock", r.status.as_u16(), t, &[503], &r.body);
    stats.print("rate-limit policies, Redis down");
    stats.check();
    tokio::task::block_in_place(|| server.restart());
    let back = recovery(&[open, closed, local], LIMIT, RECOVERY_WITHIN).await;
    println!("policies: every layer back on Redis {back:?} after the restart");
    assert!(back < MAX_RECOVERY, "recovery took {back:?}");
}
