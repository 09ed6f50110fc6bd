//! The servers under load, one per scenario, each on its own loopback port.

use std::net::SocketAddr;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use redis::aio::MultiplexedConnection;

/// The scenario every layer is compared with.
pub const FLOOR: &str = "axum + INCR via redlayer handle (floor)";

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub url: String,
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    url
}

async fn incr_handle(State(redis): State<redlayer::Redis>) -> Result<String, StatusCode> {
    let mut conn = redis.connection().await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let n: i64 =
        redis::cmd("INCR").arg("bench:floor").query_async(&mut conn).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(n.to_string())
}

async fn incr_bb8(State(pool): State<bb8::Pool<bb8_redis::RedisConnectionManager>>) -> Result<String, StatusCode> {
    let mut conn = pool.get().await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let n: i64 =
        redis::cmd("INCR").arg("bench:bb8").query_async(&mut *conn).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(n.to_string())
}

async fn incr_shared(State(mut conn): State<MultiplexedConnection>) -> Result<String, StatusCode> {
    let n: i64 =
        redis::cmd("INCR").arg("bench:shared").query_async(&mut conn).await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(n.to_string())
}

pub async fn start_all(redis_url: &str) -> Vec<Scenario> {
    let handle = redlayer::Redis::connect(redis_url).await.expect("redlayer handle");
    let manager = bb8_redis::RedisConnectionManager::new(redis_url).expect("manager");
    let bb8_pool = bb8::Pool::builder().build(manager).await.expect("bb8 pool");
    let shared =
        redis::Client::open(redis_url).expect("client").get_multiplexed_async_connection().await.expect("conn");

    vec![
        Scenario {
            name: "axum hello",
            about: "axum answering a constant string: the ceiling of the machine",
            url: serve(Router::new().route("/", get(|| async { "hello" }))).await,
        },
        Scenario {
            name: FLOOR,
            about: "one `INCR` per request through `redlayer::Redis::connection()` (2 multiplexed connections)",
            url: serve(Router::new().route("/", get(incr_handle)).with_state(handle)).await,
        },
        Scenario {
            name: "axum + INCR via bb8-redis defaults",
            about: "one `INCR` per request on a connection checked out of a bb8-redis pool with bb8's defaults (PING on checkout)",
            url: serve(Router::new().route("/", get(incr_bb8)).with_state(bb8_pool)).await,
        },
        Scenario {
            name: "axum + INCR via one shared connection",
            about: "one `INCR` per request on one shared redis-rs `MultiplexedConnection`, no pool",
            url: serve(Router::new().route("/", get(incr_shared)).with_state(shared)).await,
        },
    ]
}
