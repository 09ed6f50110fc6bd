//! Peer crates on the same routes (feature `peers`): tower-sessions 0.14 with
//! tower-sessions-redis-store 0.16 (fred pools of 1, 2 and 6 connections),
//! tower_governor 0.8 and tower-http-cache 0.6 (Redis backend). rslock 0.10
//! is in `lock.rs`.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    BoxError, Router,
    body::{Body, Bytes},
    error_handling::HandleErrorLayer,
    extract::State,
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use http_body::{Frame, SizeHint};
use redis::{AsyncCommands, aio::ConnectionManager};
use tower::ServiceBuilder;
use tower_governor::{
    GovernorLayer,
    governor::GovernorConfigBuilder,
    key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor},
};
use tower_http_cache::{CacheLayer, backend::redis::RedisBackend};
use tower_sessions::{Session, SessionManagerLayer};
use tower_sessions_redis_store::{
    RedisStore,
    fred::prelude::{ClientLike, Config, Pool},
};

use super::{
    Check, CheckFuture, Scenario,
    cache::{self, THC_HIT},
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

/// axum's body behind a `Mutex`, which tower-http-cache wants `Sync` from the
/// service it wraps. Frames are read through `&mut` (no locking); only
/// `size_hint` and `is_end_stream` lock, and only on misses.
struct SyncBody(Mutex<Body>);

impl http_body::Body for SyncBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let body = self.get_mut().0.get_mut().expect("body mutex");
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().expect("body mutex").is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().expect("body mutex").size_hint()
    }
}

/// Requests sent at setup to check that tower-http-cache answers from Redis.
const THC_WARM: u64 = 100;

/// Redis's count of `GET` commands served so far (`INFO commandstats`).
async fn redis_gets(conn: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A tower-http-cache server: the cache scenarios' page handler (calls
/// counted) behind its layer on a Redis backend. The first request stores the
/// entry; the next [`THC_WARM`] must each be a Redis `GET` that leaves the
/// handler alone. Returns its address and the handler's call counter.
async fn tower_http_cache(redis_url: &str) -> (String, Arc<AtomicU64>) {
    let client = redis::Client::open(redis_url).expect("redis client");
    let mut conn = client.get_connection_manager().await.expect("redis connection manager");
    let layer = CacheLayer::builder(RedisBackend::new(conn.clone())).ttl(Duration::from_secs(3600)).build();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let app = cache::app("public, max-age=3600")
        .layer(middleware::from_fn(move |req, next: Next| {
            counted.fetch_add(1, Ordering::Relaxed);
            next.run(req)
        }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::<_, ()>::new(|err: BoxError| async move {
                    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
                }))
                .layer(layer)
                .map_response(|res: Response| res.map(|body| SyncBody(Mutex::new(body)))),
        );
    let addr = serve(app).await;

    let first = Request::get("/page").send(&addr, "").await;
    assert_eq!(first.status, 200, "tower-http-cache setup: {first:?}");
    let stored: bool = conn.exists("tower_http_cache:/page").await.expect("EXISTS");
    assert!(stored, "tower-http-cache setup: no entry in Redis after {first:?}");
    let before = redis_gets(&mut conn).await;
    for _ in 0..THC_WARM {
        let res = Request::get("/page").send(&addr, "").await;
        assert!(res.status == 200 && res.body == first.body, "tower-http-cache setup: {res:?}");
    }
    let gets = redis_gets(&mut conn).await - before;
    assert_eq!(calls.load(Ordering::Relaxed), 1, "tower-http-cache setup: the handler answered hits");
    assert!(gets >= THC_WARM, "tower-http-cache setup: {gets} Redis GETs for {THC_WARM} hits");
    (addr, calls)
}

/// Counts the requests that reached the page handler behind tower-http-cache
/// during the rounds (a failed Redis read falls through to the handler).
struct OriginCalls {
    calls: Arc<AtomicU64>,
    base: AtomicU64,
}

impl Check for OriginCalls {
    fn before(&self) -> CheckFuture<'_, ()> {
        Box::pin(async move { self.base.store(self.calls.load(Ordering::Relaxed), Ordering::Relaxed) })
    }

    fn after(&self, sent: u64) -> CheckFuture<'_, String> {
        Box::pin(async move {
            let origin = self.calls.load(Ordering::Relaxed) - self.base.load(Ordering::Relaxed);
            format!("{THC_HIT}: {origin} of {sent} responses came from the page handler, the others from Redis")
        })
    }
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

    let (addr, calls) = tower_http_cache(redis_url).await;
    all.push(
        Scenario::new(
            "cache",
            THC_HIT,
            "tower-http-cache 0.6.1 `CacheLayer` with default features off and `redis-backend` on (`RedisBackend` \
             over one redis `ConnectionManager`: no in-process moka tier, chunk cache off), TTL 3600 s, no \
             stale-while-revalidate, in front of the same handler, the entry stored at setup: every request is a \
             Redis `GET` of the entry (checked at setup with `INFO commandstats`); it adds no `Age` or \
             `Cache-Status`. axum's body is made `Sync` under the layer for it (used on misses only)",
            addr,
            Request::get("/page"),
        )
        .check(OriginCalls { calls, base: AtomicU64::new(0) }),
    );
    all
}
