//! Sessions with redlayer-session: an axum app with cookies, then the same
//! layer on a tonic gRPC server with the id in metadata (`x-session-id`).
//!
//! ```text
//! cargo run --example session_axum                                     # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example session_axum    # sessions in Redis
//! KEEP_SERVING=1 cargo run --example session_axum                      # keep serving afterwards
//! ```
//!
//! The axum app serves on 127.0.0.1:3002 and the gRPC health service on
//! 127.0.0.1:50052; the program first calls both itself and prints what happens:
//! a visit counter, a login that rotates the id (the old one dies at once),
//! the user's session list, "log out everywhere", and a gRPC client that
//! carries its session id in metadata.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    http::StatusCode,
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use redlayer::session::{Session, SessionError, SessionLayer, Store};
use tonic::transport::Server;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

async fn visits(session: Session) -> Result<String, SessionError> {
    // HINCRBY in Redis: concurrent requests of one session never lose a count.
    Ok(session.increment("visits", 1).await?.to_string())
}

async fn login(session: Session, Json(login): Json<Login>) -> Result<String, SessionError> {
    session.cycle_id().await?; // new id, data kept, old id dead (session fixation)
    session.set_user(&login.user).await?; // recorded in the user's index
    session.insert("theme", "dark").await?; // written after the handler, with only the changed fields
    Ok(format!("welcome {}", login.user))
}

async fn me(session: Session) -> Result<(StatusCode, String), SessionError> {
    Ok(match session.user().await? {
        Some(user) => {
            let theme: Option<String> = session.get("theme").await?;
            (StatusCode::OK, format!("{user} (theme {theme:?})"))
        }
        None => (StatusCode::UNAUTHORIZED, "not logged in".into()),
    })
}

async fn sessions(session: Session) -> Result<String, SessionError> {
    let list = session.sessions().await?;
    Ok(list.iter().map(|s| format!("{}{}\n", s.session.as_str(), if s.current { " (this one)" } else { "" })).collect())
}

async fn logout_everywhere(session: Session) -> Result<String, SessionError> {
    Ok(format!("ended {} sessions", session.log_out_everywhere().await?))
}

/// A tiny gRPC middleware that counts calls in the caller's session and
/// returns the count as `x-calls` metadata: it finds the [`Session`] in the
/// request extensions, as an axum handler does.
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let store = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Store::redis(redlayer::Redis::builder().connect_or_lazy(&url).await?),
        _ => Store::memory(),
    };

    // --- axum, cookie transport -------------------------------------------------
    let app = Router::new()
        .route("/visits", get(visits))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/sessions", get(sessions))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(
            SessionLayer::new(store.clone())
                .idle_timeout(Duration::from_secs(30 * 60))
                .absolute_timeout(Duration::from_secs(8 * 60 * 60))
                // Plain HTTP on localhost for the demo; keep `Secure` (the default) in production.
                .secure(false),
        );
    let http_addr: SocketAddr = "127.0.0.1:3002".parse()?;
    let listener = tokio::net::TcpListener::bind(http_addr).await?;
    let http_server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("session_axum: http://{http_addr}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let call = |method: &'static str, path: &'static str, cookie: Option<String>, body: &'static str| {
        let client = client.clone();
        async move {
            let mut request = http::Request::builder().method(method).uri(format!("http://{http_addr}{path}"));
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            if !body.is_empty() {
                request = request.header("content-type", "application/json");
            }
            let response = client.request(request.body(Full::new(Bytes::from_static(body.as_bytes())))?).await?;
            let set_cookie = response
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(str::to_owned);
            let status = response.status();
            let text = String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned();
            println!(
                "{method} {path} -> {status} {:?}{}",
                text.trim_end(),
                match &set_cookie {
                    Some(pair) if pair.ends_with('=') => " (cookie removed)",
                    Some(_) => " (new cookie)",
                    None => "",
                }
            );
            // A removal cookie clears the jar.
            Ok::<_, Box<dyn std::error::Error>>(set_cookie.filter(|pair| !pair.ends_with('=')))
        }
    };
    let mut cookie = call("GET", "/visits", None, "").await?;
    call("GET", "/visits", cookie.clone(), "").await?;
    let before_login = cookie.clone();
    cookie = call("POST", "/login", cookie.clone(), r#"{"user":"alice"}"#).await?;
    call("GET", "/me", cookie.clone(), "").await?;
    println!("the id from before the login no longer works:");
    call("GET", "/me", before_login, "").await?;
    let phone = call("POST", "/login", None, r#"{"user":"alice"}"#).await?;
    call("GET", "/sessions", cookie.clone(), "").await?;
    call("POST", "/logout-everywhere", phone, "").await?;
    call("GET", "/me", cookie, "").await?;

    // --- tonic, id in metadata --------------------------------------------------
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let grpc_addr: SocketAddr = "127.0.0.1:50052".parse()?;
    let sessions = SessionLayer::new(store).header(http::HeaderName::from_static("x-session-id"));
    let grpc_server = tokio::spawn(
        Server::builder()
            .layer(tower::ServiceBuilder::new().layer(sessions).layer_fn(|inner| CountCalls { inner }))
            .serve(grpc_addr, health),
    );
    println!("session_axum: grpc://{grpc_addr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut grpc =
        HealthClient::new(tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))?.connect().await?);
    let mut session_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = None;
    for i in 1..=3 {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        if let Some(id) = &session_id {
            request.metadata_mut().insert("x-session-id", id.clone());
        }
        let reply = grpc.check(request).await?;
        if let Some(id) = reply.metadata().get("x-session-id") {
            session_id = Some(id.clone());
        }
        println!(
            "grpc call {i}: {:?}, calls in this session: {:?}",
            reply.get_ref().status(),
            reply.metadata().get("x-calls")
        );
    }

    if std::env::var("KEEP_SERVING").is_ok() {
        tokio::select! {
            r = http_server => { r??; }
            r = grpc_server => { r??; }
        }
    }
    Ok(())
}
