//! Peer crates on the same routes (feature `peers`): tower-sessions 0.14 with
//! tower-sessions-redis-store 0.16 (fred pools of 1, 2 and 6 connections)
//! and tower_governor 0.8. rslock 0.10 is in `lock.rs`.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tower_governor::{
    GovernorLayer,
    governor::GovernorConfigBuilder,
    key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor},
};
use tower_sessions::{Session, SessionManagerLayer};
use tower_sessions_redis_store::{
    RedisStore,
    fred::prelude::{ClientLike, Config, Pool},
};

use super::{
    Scenario,
    ratelimit::{GOVERNOR_BLOCKED, GOVERNOR_OPEN},
    serve, serve_with_peer,
    session::{LostUpdates, TS_READ, TS_WRITE},
};
use crate::http::Request;

async fn ts_read(session: Session) -> Result<String, StatusCode> {
    let n: Option<i64> = session.get("n").await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(n.unwrap_or_default().to_string())
}

async fn ts_write(State(done): State<Arc<AtomicU64>>, session: Session) -> Result<String, StatusCode> {
    let n = session.get::<i64>("n").await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?.unwrap_or_default() + 1;
    session.insert("n", n).await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    done.fetch_add(1, Ordering::Relaxed);
    Ok(n.to_string())
}

/// A tower-sessions server on a fred pool of `size`; returns its address and
/// the cookie of a session holding `n`.
async fn tower_sessions(redis_url: &str, size: usize, done: Arc<AtomicU64>) -> (String, String) {
    let pool = Pool::new(Config::from_url(redis_url).expect("fred config"), None, None, None, size).expect("fred pool");
    pool.connect();
    pool.wait_for_connect().await.expect("fred connect");
    let app = Router::new()
        .route("/read", get(ts_read))
        .route("/write", get(ts_write))
        .layer(SessionManagerLayer::new(RedisStore::new(pool)).with_secure(false))
        .with_state(done);
    let addr = serve(app).await;
    let first = Request::get("/write").send(&addr, "").await;
    assert_eq!(first.status, 200, "tower-sessions setup: {first:?}");
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("tower-sessions set no cookie: {first:?}"))
        .to_string();
    (addr, cookie)
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

pub async fn start(redis_url: &str) -> Vec<Scenario> {
    let mut all = Vec::new();
    for (size, read, write) in
        [(1, TS_READ[0], Some(TS_WRITE[0])), (2, TS_READ[1], None), (6, TS_READ[2], Some(TS_WRITE[1]))]
    {
        let done = Arc::new(AtomicU64::new(0));
        let (addr, cookie) = tower_sessions(redis_url, size, done.clone()).await;
        all.push(Scenario::new(
            "session",
            read,
            "tower-sessions 0.14 + tower-sessions-redis-store 0.16 (fred pool) on the same read handler and cookie",
            addr.clone(),
            Request::get("/read").header("cookie", &cookie),
        ));
        if let Some(name) = write {
            all.push(
                Scenario::new(
                    "session",
                    name,
                    "the same store, handler doing `get(\"n\")` then `insert(\"n\", n + 1)` (its only way to count), \
                     all connections on one session",
                    addr.clone(),
                    Request::get("/write").header("cookie", &cookie),
                )
                .check(LostUpdates::new(name, addr, cookie, done)),
            );
        }
    }

    let open = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(PeerIpKeyExtractor)
        .finish()
        .expect("governor config");
    all.push(Scenario::new(
        "ratelimit",
        GOVERNOR_OPEN,
        "tower_governor (in-process, per peer IP, one cell per ns, burst `u32::MAX`) over the hello handler",
        serve_with_peer(hello().layer(GovernorLayer::new(open))).await,
        Request::get("/"),
    ));

    let blocked = GovernorConfigBuilder::default()
        .per_second(3600)
        .burst_size(1)
        .key_extractor(GlobalKeyExtractor)
        .finish()
        .expect("governor config");
    let addr = serve_with_peer(hello().layer(GovernorLayer::new(blocked))).await;
    let first = Request::get("/").send(&addr, "").await;
    assert_eq!(first.status, 200, "tower_governor setup: {first:?}");
    all.push(
        Scenario::new(
            "ratelimit",
            GOVERNOR_BLOCKED,
            "tower_governor with one global cell per hour, used up at setup: every request answered 429",
            addr,
            Request::get("/"),
        )
        .expect(429),
    );
    all
}
