//! Every redlayer layer on ONE shared Redis handle: an axum app with rate
//! limit, response cache, sessions, idempotency and a per-key lock, and a
//! tonic server (the standard health service, no protoc) with rate limit and
//! sessions carried in gRPC metadata.
//!
//! ```text
//! cargo run --example full_stack                                   # memory backends
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example full_stack  # one shared Redis
//! KEEP_SERVING=1 cargo run --example full_stack                    # keep serving afterwards
//! ```
//! HTTP on 127.0.0.1:3000, gRPC on 127.0.0.1:50053; the program calls both
//! servers a few times and prints what it got.
//!
//! # The order of the layers, and why
//!
//! `Router::layer` wraps what is already there, so the LAST `.layer(..)` is
//! the OUTERMOST layer, the first to see a request. From the outside in:
//!
//! 1. **Rate limit** (outermost). It must see the client key first (peer IP
//!    from `ConnectInfo`, trusted forwarded headers, an API key), and refuse a
//!    flood before any other layer spends a Redis round trip on it. Placed
//!    inside the cache, cache hits would be free for abusers; placed inside
//!    the session layer, every refused request would still load a session.
//! 2. **Cache**. A hit is answered before the session is loaded and before
//!    any handler runs. The cache must never store a response that depends on
//!    the session (see "Sessions and the cache" below).
//! 3. **Session**: after the cache and before the handlers and the layers
//!    that need to know the user (e.g. an idempotency scope per user).
//! 4. **Idempotency**: inside the session layer, so a replayed answer does
//!    not run the handler's session writes again; it buffers the request body
//!    (bounded) to fingerprint it, so keep it after the rate limit.
//! 5. **Per-key lock**: per route (`route_layer`), so only that route takes
//!    it; its key is the request path (`/accounts/42/withdraw`): one request
//!    per account at a time across every instance.
//!
//! # Sessions and the cache
//!
//! What protects you: the cache does not store a response carrying
//! `Set-Cookie` (default), and the session layer adds `Cache-Control:
//! no-store` when it SETS an id (a new or cycled session).
//!
//! And for a handler that only READS an existing session (no new cookie, so
//! no `Set-Cookie`) and sends a cacheable `Cache-Control`: the cache keys on
//! method + URI + the `Vary` headers, not on `Cookie` by itself, so it is the
//! session layer's `Vary: Cookie` (or `Vary: <your session header>`), added to
//! every response of a request that accessed its session, that keeps user A's
//! page from user B (`tests/tests/composition.rs`; a session crate without
//! that `Vary` leaks, which is how the test was first found failing). That
//! still stores one copy per session in the shared cache: personal pages
//! should say `Cache-Control: private` (or `no-store`), as `/me` below does.
//! A handler that reads per-user data WITHOUT the session (e.g. from an
//! `Authorization`-free custom header) gets no such `Vary`: add it yourself.
//! All this holds in either order of the two layers; the order only decides
//! whether a hit loads the session.
//!
//! # Routing, the shared handle, failure
//!
//! `Router::layer` runs after routing too (axum sets `MatchedPath` first), so
//! a rate limit scoped per route (`Key::per_route`) sees the route template.
//!
//! All layers take clones of the one `redlayer::Redis` handle: one pool, not
//! five. Failure policies (Redis down): rate limit fails open (configurable),
//! the cache steps aside, sessions answer 503 when a handler needs the store
//! (and replace the answer by 503 when a buffered write fails), idempotency
//! and the lock fail closed (503) by default.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderName, StatusCode, header},
    routing::{get, post},
};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use redlayer::{
    Redis,
    cache::CacheLayer,
    idempotency::IdempotencyLayer,
    lock::{
        Locks, Retry,
        layer::{LockLayer, PathKey},
    },
    ratelimit::{ClientIp, Key, NoKey, Policy, Quota, RateLimitLayer, RateLimiter},
    session::{Session, SessionError, SessionLayer},
};
use tonic::transport::{Server, server::TcpConnectInfo};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Clone, Default)]
struct AppState {
    payments: Arc<AtomicU64>,
    renders: Arc<AtomicU64>,
}

/// A session counter (the session sets the cookie on the first visit).
async fn visits(session: Session) -> Result<String, SessionError> {
    Ok(session.increment("visits", 1).await?.to_string())
}

/// Reads the session: it must never be stored in a shared cache, hence `private`.
async fn me(session: Session) -> Result<([(HeaderName, &'static str); 1], String), SessionError> {
    let visits: Option<i64> = session.get("visits").await?;
    Ok(([(header::CACHE_CONTROL, "private, no-store")], format!("visits so far: {visits:?}")))
}

/// A slow page shared by everyone: cached for 30 s, one origin call per key across instances.
async fn report(State(s): State<AppState>, Path(day): Path<String>) -> ([(HeaderName, &'static str); 1], String) {
    let n = s.renders.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ([(header::CACHE_CONTROL, "public, max-age=30")], format!("report of {day} (render #{n})"))
}

/// Idempotent with an `Idempotency-Key`: a retry replays the first answer.
async fn pay(State(s): State<AppState>, Json(body): Json<serde_json::Value>) -> (StatusCode, Json<serde_json::Value>) {
    let id = s.payments.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    (StatusCode::CREATED, Json(serde_json::json!({ "payment": id, "amount": body["amount"] })))
}

/// One withdrawal per account at a time (per-key lock on the path).
async fn withdraw(Path(account): Path<String>) -> String {
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("withdrew from {account}")
}

fn http_app(redis: Option<&Redis>) -> Router {
    let (rl_store, cache, sessions, idempotency, locks) = match redis {
        Some(r) => (
            redlayer::ratelimit::Store::redis(r.clone()),
            CacheLayer::new(r.clone()),
            SessionLayer::new(r.clone()),
            IdempotencyLayer::redis(r.clone()),
            Locks::redis(r.clone()),
        ),
        None => (
            redlayer::ratelimit::Store::memory(),
            CacheLayer::memory(),
            SessionLayer::new(redlayer::session::Store::memory()),
            IdempotencyLayer::memory(),
            Locks::memory(),
        ),
    };
    let limiter = RateLimiter::builder(rl_store)
        .name("full-stack")
        // Peer IP (axum ConnectInfo). Behind a proxy: ClientIp::x_forwarded_for().trusted_hops(1).
        .policy(Policy::gcra("per-ip", Quota::per_minute(100).burst(20)).key(Key::from(ClientIp::peer())))
        .policy(Policy::fixed_window("per-key", Quota::per_day(10_000)).key(Key::header("x-api-key")))
        .build();
    Router::new()
        .route("/visits", get(visits))
        .route("/me", get(me))
        .route("/reports/{day}", get(report))
        .route("/payments", post(pay))
        .route(
            "/accounts/{id}/withdraw",
            post(withdraw).route_layer(
                LockLayer::new(locks, PathKey)
                    .wait(Retry::new(Duration::from_secs(2)))
                    .busy_status(StatusCode::SERVICE_UNAVAILABLE),
            ),
        )
        .with_state(AppState::default())
        // innermost first: idempotency, session, cache, rate limit (outermost)
        .layer(idempotency)
        // Secure cookies need https; this demo serves plain http on loopback.
        .layer(sessions.secure(false))
        .layer(cache)
        // A request without an API key is limited per IP only (the default, NoKey::Shared,
        // would count every keyless request under one shared key).
        .layer(RateLimitLayer::new(limiter).no_key(NoKey::Skip))
}

/// Counts the gRPC calls of a session (shows that the metadata session works).
#[derive(Clone)]
struct CountCalls<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let session = request.extensions().get::<Session>().cloned();
        Box::pin(async move {
            let calls = match session {
                Some(session) => session.increment("calls", 1).await.ok(),
                None => None,
            };
            let mut response = inner.call(request).await?;
            if let Some(calls) = calls {
                response.headers_mut().insert("x-calls", calls.into());
            }
            Ok(response)
        })
    }
}

async fn call_http(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(StatusCode, http::HeaderMap, String), Box<dyn std::error::Error>> {
    let mut request = http::Request::builder().method(method).uri(format!("http://127.0.0.1:3000{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Body::from(body.to_owned()))?).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    println!(
        "{method} {path} -> {} {text:?} (cache-status: {:?}, ratelimit: {:?}, replayed: {:?})",
        parts.status,
        parts.headers.get("cache-status"),
        parts.headers.get("ratelimit"),
        parts.headers.get("idempotent-replayed"),
    );
    Ok((parts.status, parts.headers, text))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // ONE handle for every layer of both servers.
    let redis = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(Redis::builder().connect_or_lazy(&url).await?),
        _ => None,
    };
    println!("full_stack: backends = {}", if redis.is_some() { "one shared Redis" } else { "memory" });

    // --- axum ------------------------------------------------------------------
    let app = http_app(redis.as_ref());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let http_server =
        tokio::spawn(axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).into_future());
    println!("full_stack: http://127.0.0.1:3000");

    // --- tonic: rate limit (per caller metadata, per peer IP) + sessions in metadata --
    let (grpc_rl_store, grpc_sessions) = match &redis {
        Some(r) => (redlayer::ratelimit::Store::redis(r.clone()), SessionLayer::new(r.clone())),
        None => (redlayer::ratelimit::Store::memory(), SessionLayer::new(redlayer::session::Store::memory())),
    };
    let peer = Key::custom(|parts| {
        parts.extensions.get::<TcpConnectInfo>().and_then(|info| info.remote_addr()).map(|a| a.ip().to_string())
    });
    let grpc_limiter = RateLimiter::builder(grpc_rl_store)
        .name("full-stack-grpc")
        .policy(Policy::gcra("per-caller", Quota::per_minute(5).burst(5)).key(Key::header("x-api-key")))
        .policy(Policy::sliding_window("per-ip", Quota::per_minute(100)).key(peer))
        .build();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let grpc_addr: SocketAddr = "127.0.0.1:50053".parse()?;
    let grpc_server = tokio::spawn(
        Server::builder()
            .layer(
                tower::ServiceBuilder::new()
                    .layer(RateLimitLayer::new(grpc_limiter)) // outermost: refuse before the session loads
                    .layer(grpc_sessions.header(HeaderName::from_static("x-session-id")))
                    .layer_fn(|inner| CountCalls { inner }),
            )
            .serve(grpc_addr, health),
    );
    println!("full_stack: grpc://{grpc_addr}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // --- a short tour over HTTP ------------------------------------------------
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let (_, headers, _) = call_http(&client, "GET", "/visits", &[], "").await?;
    let cookie = headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    call_http(&client, "GET", "/visits", &[("cookie", &cookie)], "").await?;
    call_http(&client, "GET", "/me", &[("cookie", &cookie)], "").await?;
    call_http(&client, "GET", "/reports/monday", &[], "").await?; // miss: origin renders
    call_http(&client, "GET", "/reports/monday", &[], "").await?; // hit
    let pay = [("content-type", "application/json"), ("idempotency-key", "\"order-1\"")];
    call_http(&client, "POST", "/payments", &pay, r#"{"amount":42}"#).await?;
    call_http(&client, "POST", "/payments", &pay, r#"{"amount":42}"#).await?; // replayed
    call_http(&client, "POST", "/payments", &pay, r#"{"amount":7}"#).await?; // 422
    let (a, b) = tokio::join!(
        call_http(&client, "POST", "/accounts/7/withdraw", &[], ""),
        call_http(&client, "POST", "/accounts/7/withdraw", &[], "")
    );
    a?;
    b?;

    // --- and over gRPC ---------------------------------------------------------
    let mut grpc =
        HealthClient::new(tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))?.connect().await?);
    let mut session_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = None;
    for i in 1..=7 {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.metadata_mut().insert("x-api-key", "demo-key".parse()?);
        if let Some(id) = &session_id {
            request.metadata_mut().insert("x-session-id", id.clone());
        }
        match grpc.check(request).await {
            Ok(reply) => {
                if let Some(id) = reply.metadata().get("x-session-id") {
                    session_id = Some(id.clone());
                }
                println!(
                    "grpc call {i}: {:?}, calls in this session: {:?}",
                    reply.get_ref().status(),
                    reply.metadata().get("x-calls")
                );
            }
            Err(status) => {
                println!("grpc call {i}: {:?}, retry-after: {:?}", status.code(), status.metadata().get("retry-after"))
            }
        }
    }

    if std::env::var("KEEP_SERVING").is_ok() {
        tokio::select! {
            r = http_server => { r??; }
            r = grpc_server => { r??; }
        }
    }
    Ok(())
}
