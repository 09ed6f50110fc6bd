//! A load target for a quick look at the session layer's cost (not a benchmark suite:
//! that lives in redlayer-bench). Serves on 127.0.0.1:3090:
//! `/floor` (one INCR through the shared handle, no session), `/read` (read a
//! session value), `/write` (increment a session counter); prints a cookie of a
//! live session to send with wrk.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release -p redlayer-session --example session_load
//! wrk -c32 -d5s -H "cookie: $COOKIE" http://127.0.0.1:3090/read
//! ```

use axum::{Router, extract::State, http::StatusCode, routing::get};
use redlayer_core::Redis;
use redlayer_session::{Session, SessionError, SessionLayer, Store};

async fn floor(State(redis): State<Redis>) -> Result<String, StatusCode> {
    let mut conn = redis.connection().await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let n: i64 = redis::cmd("INCR")
        .arg("load:floor")
        .query_async(&mut conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(n.to_string())
}

async fn hgetall(State(redis): State<Redis>) -> Result<String, StatusCode> {
    let mut conn = redis.connection().await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let v: Vec<String> = redis::cmd("HGETALL")
        .arg("load:hash")
        .query_async(&mut conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(v.len().to_string())
}

async fn untouched(_session: Session) -> &'static str {
    "ok"
}

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<i64>("n").await?.unwrap_or_default().to_string())
}

async fn write(session: Session) -> Result<String, SessionError> {
    Ok(session.increment("n", 1).await?.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let redis = Redis::connect(&url).await?;
    let app = Router::new()
        .route("/read", get(read))
        .route("/write", get(write))
        .route("/untouched", get(untouched))
        .layer(SessionLayer::new(Store::redis(redis.clone())).secure(false))
        .route("/floor", get(floor))
        .route("/hgetall", get(hgetall))
        .with_state(redis);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3090").await?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // Create one session and print its cookie.
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:3090").await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /write HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let cookie = answer.lines().find_map(|l| l.strip_prefix("set-cookie: ")).and_then(|c| c.split(';').next());
    println!("COOKIE={}", cookie.unwrap_or_default());
    server.await??;
    Ok(())
}
