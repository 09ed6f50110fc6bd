//! An `Idempotency-Key` layer on an axum app: a retried POST runs once.
//!
//! ```text
//! cargo run --example idempotency_axum                                   # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example idempotency_axum  # shared in Redis
//! curl -i -X POST -H 'content-type: application/json' -H 'idempotency-key: "order-1"' -H 'x-api-key: alice' -d '{"sku":"book"}' localhost:3000/orders
//! # again: the same 201, with Idempotent-Replayed: true, and the handler did not run
//! # another body with the same key: 422; while the first runs: 409; a malformed key: 400
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use redlayer::idempotency::{IdempotencyLayer, Scope};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let layer = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => IdempotencyLayer::redis(redlayer::Redis::builder().connect_or_lazy(&url).await?),
        _ => IdempotencyLayer::memory(),
    }
    // Keys belong to the caller: two API keys never share (or block) a key.
    .scope(Scope::header(axum::http::HeaderName::from_static("x-api-key")))
    .require_key(true)
    // A crashed handler frees its key after 5 s; results are kept for a day.
    .lease(Duration::from_secs(5))
    .retention(Duration::from_secs(24 * 3600));

    let orders = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/orders",
            post(|State(orders): State<Arc<AtomicU64>>, Json(body): Json<serde_json::Value>| async move {
                tokio::time::sleep(Duration::from_millis(500)).await; // the slow, non-idempotent part
                let id = orders.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, Json(serde_json::json!({ "order": id, "item": body })))
            }),
        )
        .with_state(orders)
        .layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("idempotency_axum: listening on http://127.0.0.1:3000");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
