//! The baselines: axum alone, and one `INCR` per request three ways.

use axum::{Router, extract::State, http::StatusCode, routing::get};
use redis::aio::MultiplexedConnection;

use super::{Scenario, serve};
use crate::http::Request;

/// The scenario every layer is compared with.
pub const FLOOR: &str = "axum + INCR via redlayer handle (floor)";
/// The ceiling of the machine.
pub const HELLO: &str = "axum hello";

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

pub async fn start(redis_url: &str, handle: &redlayer::Redis) -> Vec<Scenario> {
    let manager = bb8_redis::RedisConnectionManager::new(redis_url).expect("manager");
    let bb8_pool = bb8::Pool::builder().build(manager).await.expect("bb8 pool");
    let shared =
        redis::Client::open(redis_url).expect("client").get_multiplexed_async_connection().await.expect("conn");
    let root = || Request::get("/");

    vec![
        Scenario::new(
            "core",
            HELLO,
            "axum answering a constant string: the ceiling of the machine",
            serve(Router::new().route("/", get(|| async { "hello" }))).await,
            root(),
        ),
        Scenario::new(
            "core",
            FLOOR,
            "one `INCR` per request through `redlayer::Redis::connection()` (2 multiplexed connections)",
            serve(Router::new().route("/", get(incr_handle)).with_state(handle.clone())).await,
            root(),
        ),
        Scenario::new(
            "core",
            "axum + INCR via bb8-redis defaults",
            "one `INCR` per request on a connection checked out of a bb8-redis pool with bb8's defaults (PING on checkout)",
            serve(Router::new().route("/", get(incr_bb8)).with_state(bb8_pool)).await,
            root(),
        ),
        Scenario::new(
            "core",
            "axum + INCR via one shared connection",
            "one `INCR` per request on one shared redis-rs `MultiplexedConnection`, no pool",
            serve(Router::new().route("/", get(incr_shared)).with_state(shared)).await,
            root(),
        ),
    ]
}
