//! redlayer-session: read a value of an existing session, and increment a
//! counter of one session from every connection at once (lost updates counted).

use std::sync::{
    Arc,
    atomic::{AtomicI64, AtomicU64, Ordering},
};

use axum::{Router, extract::State, routing::get};
use redlayer::session::{Session, SessionError, SessionLayer, Store};

use super::{Check, CheckFuture, Scenario, serve};
use crate::http::Request;

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<i64>("n").await?.unwrap_or_default().to_string())
}

/// Increments the session's counter; `done` counts the increments the store
/// acknowledged.
async fn write(State(done): State<Arc<AtomicU64>>, session: Session) -> Result<String, SessionError> {
    let n = session.increment("n", 1).await?;
    done.fetch_add(1, Ordering::Relaxed);
    Ok(n.to_string())
}

/// The tower-sessions scenarios (feature `peers`), for the comparisons.
pub(super) const TS_READ: [&str; 3] = [
    "tower-sessions (fred pool 1): read a value",
    "tower-sessions (fred pool 2): read a value",
    "tower-sessions (fred pool 6): read a value",
];
pub(super) const TS_WRITE: [&str; 2] =
    ["tower-sessions (fred pool 1): increment a counter", "tower-sessions (fred pool 6): increment a counter"];

/// Reads the session's counter (`GET /read` with the cookie) before and
/// after the rounds: increments kept against increments the handler made.
pub(super) struct LostUpdates {
    label: &'static str,
    addr: String,
    cookie: String,
    /// Increments acknowledged by the store (counted by the handler).
    done: Arc<AtomicU64>,
    base: AtomicI64,
    base_done: AtomicU64,
}

impl LostUpdates {
    pub(super) fn new(label: &'static str, addr: String, cookie: String, done: Arc<AtomicU64>) -> Self {
        LostUpdates { label, addr, cookie, done, base: AtomicI64::new(0), base_done: AtomicU64::new(0) }
    }

    async fn counter(&self) -> i64 {
        let res = Request::get("/read").header("cookie", &self.cookie).send(&self.addr, "").await;
        assert_eq!(res.status, 200, "session read for the check: {res:?}");
        res.body.trim().parse().unwrap_or_else(|_| panic!("session counter: {res:?}"))
    }
}

impl Check for LostUpdates {
    fn before(&self) -> CheckFuture<'_, ()> {
        Box::pin(async move {
            self.base.store(self.counter().await, Ordering::Relaxed);
            self.base_done.store(self.done.load(Ordering::Relaxed), Ordering::Relaxed);
        })
    }

    fn after(&self, sent: u64) -> CheckFuture<'_, String> {
        Box::pin(async move {
            let kept = self.counter().await - self.base.load(Ordering::Relaxed);
            let done = self.done.load(Ordering::Relaxed) - self.base_done.load(Ordering::Relaxed);
            let lost = (done as i64 - kept).max(0);
            format!(
                "{}: {sent} requests answered to wrk, all on one session: {done} increments made by the handler, \
                 {kept} kept in the session, {lost} lost ({:.1}%)",
                self.label,
                lost as f64 * 100.0 / done.max(1) as f64
            )
        })
    }
}

pub async fn start(handle: &redlayer::Redis) -> Vec<Scenario> {
    let done = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/read", get(read))
        .route("/write", get(write))
        .layer(SessionLayer::new(Store::redis(handle.clone())))
        .with_state(done.clone());
    let addr = serve(app).await;

    // One session, created by a first write; every wrk request sends its cookie.
    let first = Request::get("/write").send(&addr, "").await;
    assert_eq!(first.status, 200, "session setup: {first:?}");
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("session setup set no cookie: {first:?}"))
        .to_string();

    vec![
        Scenario::new(
            "session",
            "session: read a value",
            "`SessionLayer` (Redis store, defaults) + a handler reading one value of an existing session \
             (every request sends the same session cookie): one load per request",
            addr.clone(),
            Request::get("/read").header("cookie", &cookie),
        )
        .versus(TS_READ[0])
        .versus(TS_READ[1])
        .versus(TS_READ[2]),
        Scenario::new(
            "session",
            "session: increment a counter",
            "the same layer, handler calling `session.increment(\"n\", 1)` (HINCRBY in the store); all \
             connections share one session, so every request is a concurrent read-modify-write of one counter",
            addr.clone(),
            Request::get("/write").header("cookie", &cookie),
        )
        .versus(TS_WRITE[0])
        .versus(TS_WRITE[1])
        .check(LostUpdates::new(
            "redlayer-session read-modify-write (tower-sessions lost about 93% on our machines)",
            addr,
            cookie,
            done,
        )),
    ]
}
