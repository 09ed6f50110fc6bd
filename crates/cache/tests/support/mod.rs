//! Shared test helpers: backends, a programmable axum origin, a client.
#![allow(dead_code)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::Request, response::Response, routing::any};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use redlayer_cache::{CacheLayer, Store};
use redlayer_testkit::RedisServer;
use tower::{Layer, ServiceExt};

/// A backend under test; keeps its Redis processes alive.
pub struct Backend {
    pub store: Store,
    pub server: Option<RedisServer>,
    #[cfg(feature = "cluster")]
    pub cluster: Option<redlayer_testkit::RedisCluster>,
    pub redis: Option<redlayer_core::Redis>,
}

impl Backend {
    pub async fn memory() -> Self {
        Backend {
            store: Store::memory(),
            server: None,
            #[cfg(feature = "cluster")]
            cluster: None,
            redis: None,
        }
    }

    pub async fn standalone() -> Self {
        let server = RedisServer::start();
        let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
        Backend {
            store: Store::redis(redis.clone()),
            server: Some(server),
            #[cfg(feature = "cluster")]
            cluster: None,
            redis: Some(redis),
        }
    }

    #[cfg(feature = "cluster")]
    pub async fn cluster() -> Self {
        let cluster = redlayer_testkit::RedisCluster::start();
        let redis = redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap();
        Backend { store: Store::redis(redis.clone()), server: None, cluster: Some(cluster), redis: Some(redis) }
    }

    pub fn layer(&self) -> CacheLayer {
        CacheLayer::with_store(self.store.clone())
    }
}

type Handler = Arc<dyn Fn(&http::request::Parts, usize) -> Response + Send + Sync>;

/// An origin whose answers a test decides; counts the requests it sees and
/// keeps their headers.
#[derive(Clone)]
pub struct Origin {
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    handler: Handler,
    delay: Duration,
}

impl Origin {
    pub fn new(f: impl Fn(&http::request::Parts, usize) -> Response + Send + Sync + 'static) -> Self {
        Origin {
            hits: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            handler: Arc::new(f),
            delay: Duration::ZERO,
        }
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap_or_default()
    }

    pub fn router(&self) -> Router {
        let this = self.clone();
        Router::new().fallback(any(move |req: Request| {
            let this = this.clone();
            async move {
                let (parts, _) = req.into_parts();
                let n = this.hits.fetch_add(1, Ordering::SeqCst) + 1;
                this.seen.lock().unwrap().push(parts.headers.clone());
                if !this.delay.is_zero() {
                    tokio::time::sleep(this.delay).await;
                }
                (this.handler)(&parts, n)
            }
        }))
    }
}

pub fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

/// The layered app.
#[derive(Clone)]
pub struct App {
    svc: redlayer_cache::Cache<Router>,
}

pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

impl App {
    pub fn new(layer: CacheLayer, origin: &Origin) -> Self {
        App { svc: layer.layer(origin.router()) }
    }

    pub async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Got {
        let mut b = http::Request::builder().method(method).uri(uri).header("host", "example.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.request(b.body(Body::empty()).unwrap()).await
    }

    /// Sends a request as built by the test (no `Host` added).
    pub async fn request(&self, req: http::Request<Body>) -> Got {
        let res = tokio::time::timeout(Duration::from_secs(10), self.svc.clone().oneshot(req))
            .await
            .expect("request timed out")
            .unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        // Let the background store finish.
        tokio::time::sleep(Duration::from_millis(30)).await;
        Got { status: parts.status, headers: parts.headers, body }
    }

    pub fn service(&self) -> redlayer_cache::Cache<Router> {
        self.svc.clone()
    }

    pub async fn get(&self, uri: &str) -> Got {
        self.send("GET", uri, &[]).await
    }
}

/// Waits (bounded, 5 s) until the background work of the last fill of
/// `GET http://example.test{path}` is done: its fill lock released (a fill
/// releases it only after storing its entry or its hit-for-pass marker) and,
/// with `marker`, the hit-for-pass marker written.
pub async fn settle(redis: &redlayer_core::Redis, path: &str, marker: bool) {
    let key = Store::redis(redis.clone()).entry_key(&format!("GET http://example.test{path}"));
    let lock = redis.keys().key("lock", &redlayer_core::KeyPart::client(format!("cache-fill:{key}")));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut conn = redis.connection().await.unwrap();
        let locked: i64 = redis::cmd("EXISTS").arg(&lock).query_async(&mut conn).await.unwrap();
        let marked: i64 =
            if marker { redis::cmd("HEXISTS").arg(&key).arg("pass").query_async(&mut conn).await.unwrap() } else { 1 };
        if locked == 0 && marked == 1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path}: fill lock held ({locked}) or no marker ({marked}) after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
