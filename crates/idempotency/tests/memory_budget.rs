//! The memory store holds at most its byte budget, however many keys clients
//! send.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Body, http::Request, routing::post};
use http_body_util::BodyExt;
use redlayer_idempotency::{IdempotencyLayer, Store};
use tower::ServiceExt;

async fn post_with_key(app: &Router, key: &str) -> (u16, bool, String) {
    let request = Request::post("/payments").header("idempotency-key", format!("\"{key}\"")).body(Body::from("{}"));
    let response = app.clone().oneshot(request.unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, replayed, String::from_utf8_lossy(&body).into_owned())
}

/// `POST /payments` behind the layer on `store`, answering 201 with
/// `body(n)` for its n-th run; and the count of runs.
fn payments(store: &Store, body: fn(usize) -> String) -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let app = Router::new()
        .route(
            "/payments",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move { (axum::http::StatusCode::CREATED, body(n)) }
            }),
        )
        .layer(IdempotencyLayer::new(store.clone()));
    (app, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_keys_stays_within_the_memory_budget() {
    const BUDGET: usize = 256 * 1024;
    let store = Store::memory_with_budget(BUDGET);
    let (app, runs) = payments(&store, |n| format!("{n}:{}", "p".repeat(1_000)));
    for i in 0..1_000 {
        let key = format!("key-{i}");
        let (status, replayed, first) = post_with_key(&app, &key).await;
        assert_eq!((status, replayed), (201, false));
        if i % 200 == 199 {
            // The newest record is kept: a retry replays it.
            let again = post_with_key(&app, &key).await;
            assert_eq!(again, (201, true, first), "{key} was not kept");
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1_000, "every new key ran the handler once");
    let used = store.memory_used().unwrap();
    assert!(used <= BUDGET + BUDGET / 4, "{used} bytes held for a budget of {BUDGET}");
    assert!(used > BUDGET / 4, "{used} bytes: the budget was not used");
}

/// A response too large for the memory store to keep is not replayed (the
/// retry runs the handler again, as documented), but its record stays: the
/// key still belongs to that request, so another body under it gets 422, as
/// on Redis (the record used to vanish whole, and the other body ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_to_keep_leaves_its_record() {
    // 64 KiB: one record may hold 4 KiB.
    let store = Store::memory_with_budget(64 * 1024);
    let (app, runs) = payments(&store, |_| "p".repeat(6_000));
    assert_eq!(post_with_key(&app, "big").await.0, 201);
    let other = Request::post("/payments").header("idempotency-key", "\"big\"").body(Body::from("{\"other\":1}"));
    let other = app.clone().oneshot(other.unwrap()).await.unwrap();
    assert_eq!(other.status().as_u16(), 422, "another request reused the key");
    let (status, replayed, _) = post_with_key(&app, "big").await;
    assert_eq!((status, replayed), (201, false), "not replayed: run again");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
