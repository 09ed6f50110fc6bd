//! Cross-crate integration tests of redlayer live in `tests/` beside this file:
//! several instances on one Redis, Redis killed mid-traffic, hostile input, soak.
//!
//! This library holds the one stacked app every test drives: rate limit,
//! response cache, sessions, idempotency and a per-key lock on ONE shared
//! [`Redis`] handle (or every layer's memory backend), in the order the
//! umbrella crate recommends (outermost first):
//!
//! 1. `RateLimitLayer`: first to see the client key, so a flood is refused
//!    before any other layer spends a Redis round trip on it.
//! 2. `CacheLayer`: hits are served before sessions are loaded.
//! 3. `SessionLayer`: handlers and the inner layers can read the session.
//! 4. `IdempotencyLayer`: inside the session, so a replay never runs session writes again.
//! 5. `LockLayer`: per route (`route_layer`), after routing, keyed by the path.
#![deny(missing_docs, unsafe_code)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderName, StatusCode},
    routing::{get, post},
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use redlayer::{
    FailurePolicy, Redis,
    cache::CacheLayer,
    idempotency::IdempotencyLayer,
    lock::{
        Locks, Retry,
        layer::{LockLayer, PathKey},
    },
    ratelimit::{Key, NoKey, Policy, Quota, RateLimitLayer, RateLimiter},
    session::{Session, SessionError, SessionLayer},
};
use tower::ServiceExt;

/// Counters of what the handlers really did (shared by every instance of a test).
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls that reached `/cached/{k}` (the cache's origin).
    pub origin: AtomicUsize,
    /// Runs of the idempotent `POST /pay` handler.
    pub paid: AtomicUsize,
    /// Handlers of `/locked/{k}` running right now.
    pub locked_now: AtomicUsize,
    /// Times two `/locked/{k}` handlers ran at once (must stay 0).
    pub overlaps: AtomicUsize,
}

impl Counters {
    /// Reads one counter.
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// Where the layers keep their state.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Each layer's in-memory backend (one process).
    Memory,
    /// One shared Redis handle (standalone or cluster).
    Redis(Redis),
}

/// Settings of the stacked app.
#[derive(Clone, Debug)]
pub struct Config {
    /// Requests allowed per `x-client` value per [`Config::period`] (GCRA, burst = limit).
    pub limit: u64,
    /// The rate limit's period (default 1 hour).
    pub period: Duration,
    /// Session idle timeout, idempotency retention, lock fence retention and
    /// cache stale retention (defaults: the layers' own). Short values let a
    /// soak show that memory is bounded by live entries.
    pub retention: Option<Duration>,
    /// The rate limiter's failure policy.
    pub ratelimit_failure: FailurePolicy,
    /// How long a `/locked/{k}` request waits for its lock.
    pub lock_wait: Duration,
    /// How long `/pay` and `/locked/{k}` handlers work.
    pub work: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: 100,
            period: Duration::from_secs(3600),
            retention: None,
            ratelimit_failure: FailurePolicy::FailOpen,
            lock_wait: Duration::from_secs(3),
            work: Duration::from_millis(20),
        }
    }
}

#[derive(Clone)]
struct AppState {
    counters: Arc<Counters>,
    work: Duration,
}

async fn visits(session: Session) -> Result<String, SessionError> {
    Ok(session.increment("visits", 1).await?.to_string())
}

async fn note(session: Session, body: String) -> &'static str {
    // Buffered: written after the handler; a failed write turns this 200 into a 503.
    let _ = session.insert("note", body).await;
    "noted"
}

async fn read_note(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<String>("note").await?.unwrap_or_default())
}

/// Reads the session and (wrongly) declares itself cacheable: the composition hazard.
async fn profile(session: Session) -> Result<([(HeaderName, &'static str); 1], String), SessionError> {
    let visits: Option<i64> = session.get("visits").await?;
    Ok(([(http::header::CACHE_CONTROL, "max-age=60")], format!("visits={visits:?}")))
}

/// Reads the session and says so (`private`): the safe way.
async fn profile_private(session: Session) -> Result<([(HeaderName, &'static str); 1], String), SessionError> {
    let visits: Option<i64> = session.get("visits").await?;
    Ok(([(http::header::CACHE_CONTROL, "private, max-age=60")], format!("visits={visits:?}")))
}

async fn cached(State(s): State<AppState>, Path(k): Path<String>) -> ([(HeaderName, &'static str); 1], String) {
    let n = s.counters.origin.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ([(http::header::CACHE_CONTROL, "max-age=60")], format!("{k}:{n}"))
}

async fn pay(State(s): State<AppState>, body: Bytes) -> (StatusCode, String) {
    let n = s.counters.paid.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(s.work).await;
    (StatusCode::CREATED, format!("payment {n} for {} bytes", body.len()))
}

async fn locked(State(s): State<AppState>) -> &'static str {
    if s.counters.locked_now.fetch_add(1, Ordering::SeqCst) > 0 {
        s.counters.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(s.work).await;
    s.counters.locked_now.fetch_sub(1, Ordering::SeqCst);
    "locked"
}

/// The whole stack as one axum app: one instance of a service.
///
/// Routes: `GET /hello`, `GET /visits` (session counter), `POST /note` +
/// `GET /note` (a buffered session write), `GET /cached/{k}` (cacheable,
/// `max-age=60`, body `k:n` with `n` the origin call count), `POST /pay`
/// (idempotent with `Idempotency-Key`), `POST /locked/{k}` (one at a time per k),
/// `GET /profile` (reads the session, `max-age=60`: the hazard) and
/// `GET /profile-private` (the same with `private`), `GET /short/{k}` (cacheable 1 s).
/// The rate limit counts per `x-client` header; requests without one are not limited.
pub fn app(backend: &Backend, config: &Config, counters: Arc<Counters>) -> Router {
    let (rl_store, mut cache, mut session, mut idem, mut locks) = match backend {
        Backend::Memory => (
            redlayer::ratelimit::Store::memory(),
            CacheLayer::memory(),
            SessionLayer::new(redlayer::session::Store::memory()),
            IdempotencyLayer::memory(),
            Locks::memory(),
        ),
        Backend::Redis(redis) => (
            redlayer::ratelimit::Store::redis(redis.clone()),
            CacheLayer::new(redis.clone()),
            SessionLayer::new(redis.clone()),
            IdempotencyLayer::redis(redis.clone()),
            Locks::redis(redis.clone()),
        ),
    };
    if let Some(r) = config.retention {
        cache = cache.stale_retention(r);
        session = session.idle_timeout(r).absolute_timeout(r * 2);
        idem = idem.retention(r);
        locks = locks.fence_retention(r);
    }
    let limiter = RateLimiter::builder(rl_store)
        .name("stack")
        .policy(
            Policy::gcra("per-client", Quota::new(config.limit, config.period).burst(config.limit))
                .key(Key::header("x-client")),
        )
        .failure_policy(config.ratelimit_failure)
        .build();
    let state = AppState { counters, work: config.work };
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/visits", get(visits))
        .route("/note", post(note).get(read_note))
        .route("/cached/{k}", get(cached))
        .route(
            "/short/{k}",
            get(|Path(k): Path<String>| async move { ([(http::header::CACHE_CONTROL, "max-age=1")], k) }),
        )
        .route("/profile", get(profile))
        .route("/profile-private", get(profile_private))
        .route("/pay", post(pay))
        .route(
            "/locked/{k}",
            post(locked).route_layer(LockLayer::new(locks, PathKey).wait(Retry::new(config.lock_wait))),
        )
        .with_state(state)
        .layer(idem)
        .layer(session.secure(false))
        .layer(cache)
        .layer(RateLimitLayer::new(limiter).no_key(NoKey::Skip))
}

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body as text (lossy).
    pub body: String,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The `name=value` of the session cookie this response sets, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("id="))
            .map(|v| v.split(';').next().unwrap_or_default().to_owned())
    }
}

/// Sends one request through a clone of `app` (in process, `oneshot`).
pub async fn send(app: &Router, request: Request<axum::body::Body>) -> Reply {
    let response: Response<axum::body::Body> = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// Builds a request: method, path, headers, body.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<axum::body::Body> {
    let mut builder = Request::builder().method(method).uri(path).header("host", "stack.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(axum::body::Body::from(body.to_owned())).unwrap()
}

/// A fresh unique token (for keys, clients, idempotency keys).
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{nanos:x}-{n}")
}
