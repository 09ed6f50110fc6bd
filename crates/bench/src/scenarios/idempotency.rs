//! redlayer-idempotency: the replay of a stored response, and the full flow
//! for a new key on every request.

use axum::{Router, http::StatusCode, routing::post};
use redlayer::idempotency::IdempotencyLayer;

use super::{Scenario, serve};
use crate::http::Request;

const BODY: &str = r#"{"amount":100,"currency":"EUR"}"#;

pub async fn start(handle: &redlayer::Redis) -> Vec<Scenario> {
    let app = Router::new()
        .route("/payments", post(|| async { (StatusCode::CREATED, r#"{"id":"pay_1"}"#) }))
        .layer(IdempotencyLayer::redis(handle.clone()));
    let addr = serve(app).await;

    // Store the response that the replay scenario gets back.
    let replay = Request::post("/payments", BODY).header("idempotency-key", "\"bench-replay\"");
    let first = replay.send(&addr, "").await;
    assert_eq!(first.status, 201, "idempotency setup: {first:?}");
    let again = replay.send(&addr, "").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"), "idempotency replay: {again:?}");

    vec![
        Scenario::new(
            "idempotency",
            "idempotency: replay a stored response",
            "`IdempotencyLayer` (Redis, defaults) on `POST /payments`; every request repeats one \
             `Idempotency-Key` and body, so each is answered from the stored 201",
            addr.clone(),
            replay,
        )
        .expect(201),
        Scenario::new(
            "idempotency",
            "idempotency: new key each request",
            "the same layer, a fresh `Idempotency-Key` on every request: claim the lease, open the record, \
             run the handler, store the response, release",
            addr,
            Request::post("/payments", BODY).unique_header("idempotency-key"),
        )
        .expect(201),
    ]
}
