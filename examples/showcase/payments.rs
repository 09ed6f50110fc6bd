//! Idempotency: `POST /payments` with an `Idempotency-Key` runs once; retries
//! (on any instance sharing Redis) get the stored answer back.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, extract::ConnectInfo, http::StatusCode, routing::post};
use redlayer::idempotency::{IdempotencyLayer, Scope};

use crate::Backend;

/// Lines of the index page for these routes.
pub const INDEX: &str = "POST /payments            JSON body + Idempotency-Key: \"some-key\" header: 201 with a new payment \
id (takes ~300 ms); a retry replays it with Idempotent-Replayed: true (on any instance sharing Redis), \
409 while the first is in flight, 422 for another body with the same key, 400 without a key\n";

/// The routes, with their layers.
pub fn routes(backend: &Backend) -> Router {
    let layer = match &backend.redis {
        Some(redis) => IdempotencyLayer::redis(redis.clone()),
        None => IdempotencyLayer::memory(),
    }
    .require_key(true)
    // Keys are per client: here the peer IP (an API key or user id in a real app).
    .scope(Scope::from_fn(|parts| {
        parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string().into_bytes())
    }));
    Router::new().route("/payments", post(create_payment)).route_layer(layer)
}

async fn create_payment(Json(order): Json<serde_json::Value>) -> (StatusCode, Json<serde_json::Value>) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // A real payment provider call takes a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let id = format!("pay_{nanos:x}{:02x}", NEXT.fetch_add(1, Ordering::Relaxed) % 256);
    (StatusCode::CREATED, Json(serde_json::json!({ "id": id, "status": "succeeded", "order": order })))
}
