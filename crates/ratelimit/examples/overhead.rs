//! In-process cost of the layer per request (no network, no Redis): a plain
//! axum route vs the same route behind a layer that denies every request
//! from the deny cache, and one that allows every request from the memory store.
//!
//! ```text
//! cargo run --release -p redlayer-ratelimit --example overhead
//! ```

use std::{net::SocketAddr, time::Instant};

use axum::{Router, body::Body, routing::get};
use http::Request;
use redlayer_ratelimit::{PeerAddr, Policy, Quota, RateLimitLayer, RateLimiter, Store};
use tower::{Service, ServiceExt};

async fn run(name: &str, app: Router, n: u32) {
    let mut svc = app.into_service::<Body>();
    let start = Instant::now();
    for _ in 0..n {
        let mut req = Request::builder().uri("/").body(Body::empty()).unwrap();
        req.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 1))));
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        std::hint::black_box(res);
    }
    println!("{name:>8}: {:>6.0} ns/request", start.elapsed().as_nanos() as f64 / f64::from(n));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let hello = || Router::new().route("/", get(|| async { "hello" }));
    let shut = RateLimiter::builder(Store::memory()).policy(Policy::gcra("shut", Quota::per_hour(1))).build();
    let open =
        RateLimiter::builder(Store::memory()).policy(Policy::gcra("open", Quota::per_second(1_000_000_000))).build();
    for _ in 0..2 {
        run("hello", hello(), 200_000).await;
        run("blocked", hello().layer(RateLimitLayer::new(shut.clone())), 200_000).await;
        run("memory", hello().layer(RateLimitLayer::new(open.clone())), 200_000).await;
    }
}
