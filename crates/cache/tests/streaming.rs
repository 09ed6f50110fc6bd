//! Bodies stream to the client while they are collected.

use std::{convert::Infallible, time::Duration};

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::BodyExt;
use redlayer_cache::CacheLayer;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_bytes_arrive_before_the_origin_finishes() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let app = Router::new()
        .route(
            "/s",
            get(move || {
                let rx = rx.lock().unwrap().take();
                async move {
                    let rx = rx.expect("called once");
                    let stream =
                        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
                    ([("cache-control", "max-age=60")], Body::from_stream(stream.boxed()))
                }
            }),
        )
        .layer(CacheLayer::memory());
    let req = || http::Request::get("/s").header("host", "h").body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req()).await.unwrap();
    let mut body = res.into_body();
    tx.send(Ok(Bytes::from_static(b"first "))).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(2), body.frame()).await.expect("first chunk streamed");
    assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "first ");
    tx.send(Ok(Bytes::from_static(b"second"))).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hit = app.oneshot(req()).await.unwrap();
    assert!(hit.headers()["cache-status"].to_str().unwrap().contains("; hit"));
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), "first second");
}

/// A server stops polling a body once its `Content-Length` is written (hyper
/// drops it without waiting for its end): the copy is complete then, and the
/// entry is stored for the next request (on this or another instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dropped_after_its_content_length_is_stored() {
    let app = Router::new()
        .route(
            "/len",
            get(|| async {
                // The data, then a stream that never ends.
                let stream = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from_static(b"twelve bytes"))])
                    .chain(futures_util::stream::pending());
                ([("cache-control", "max-age=60"), ("content-length", "12")], Body::from_stream(stream.boxed()))
            }),
        )
        .layer(CacheLayer::memory());
    let req = || http::Request::get("/len").header("host", "h").body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req()).await.unwrap();
    let mut body = res.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(2), body.frame()).await.expect("data streamed");
    assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "twelve bytes");
    // Like hyper once Content-Length bytes are written: the body is dropped.
    drop(body);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hit = app.oneshot(req()).await.unwrap();
    assert!(hit.headers()["cache-status"].to_str().unwrap().contains("; hit"), "{:?}", hit.headers());
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), "twelve bytes");
}

/// A successful POST invalidates its own URI: a fill of that URI still
/// streaming is not stored, while fills of other URIs are (cache-tests
/// `headers-store-Transfer-Encoding` ran beside invalidation tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_request_drops_only_the_fills_of_the_uris_it_invalidates() {
    type Gate = std::sync::Arc<tokio::sync::Notify>;
    let gate: Gate = Gate::default();
    let slow = {
        let gate = gate.clone();
        move || {
            let gate = gate.clone();
            async move {
                // The head now, the body once the gate opens.
                let stream = futures_util::stream::once(async move {
                    gate.notified().await;
                    Ok::<_, Infallible>(Bytes::from_static(b"slow body"))
                });
                ([("cache-control", "max-age=60")], Body::from_stream(stream.boxed()))
            }
        }
    };
    let app = Router::new()
        .route("/a", get(slow.clone()).post(|| async { "posted" }))
        .route("/b", get(slow).post(|| async { "posted" }))
        .layer(CacheLayer::memory());
    let req = |method: &str, uri: &str| {
        http::Request::builder().method(method).uri(uri).header("host", "h").body(Body::empty()).unwrap()
    };
    for (filled, posted, kept) in [("/a", "/b", true), ("/b", "/b", false)] {
        let res = app.clone().oneshot(req("GET", filled)).await.unwrap();
        let body = tokio::spawn(res.into_body().collect());
        let post = app.clone().oneshot(req("POST", posted)).await.unwrap();
        assert_eq!(post.status(), 200);
        gate.notify_one();
        assert_eq!(body.await.unwrap().unwrap().to_bytes(), "slow body");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = app.clone().oneshot(req("GET", filled)).await.unwrap();
        let status = again.headers()["cache-status"].to_str().unwrap().to_owned();
        assert_eq!(status.contains("; hit"), kept, "GET {filled} after POST {posted} during its fill: {status}");
        if !kept {
            gate.notify_one();
        }
        let _ = again.into_body().collect().await;
    }
}
