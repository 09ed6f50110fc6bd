//! A test app and an HTTP client with a one-cookie jar.

#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::Path,
    http::{HeaderMap, Request, StatusCode, header},
    routing::{get, post},
};
use http_body_util::BodyExt;
use redlayer_session::{Session, SessionError, SessionLayer};
use tokio::sync::{Barrier, Notify};
use tower::ServiceExt;

/// Hooks that let a test hold a handler in the middle of a request.
#[derive(Clone)]
pub struct Probe {
    pub barrier: Arc<Barrier>,
    pub loaded: Arc<Notify>,
    pub go: Arc<Notify>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe { barrier: Arc::new(Barrier::new(2)), loaded: Arc::new(Notify::new()), go: Arc::new(Notify::new()) }
    }
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

pub fn app(layer: SessionLayer, probe: Probe) -> Router {
    let (p1, p2, p3) = (probe.clone(), probe.clone(), probe);
    Router::new()
        .route("/untouched", get(|| async { "hello" }))
        .route(
            "/visits",
            get(|s: Session| async move { Ok::<_, SessionError>(s.increment("visits", 1).await?.to_string()) }),
        )
        .route(
            "/get/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                Ok::<_, SessionError>(s.get::<String>(&key).await?.unwrap_or_else(|| "none".into()))
            }),
        )
        .route(
            "/set/{key}/{value}",
            post(|s: Session, Path((key, value)): Path<(String, String)>| async move {
                s.insert(&key, value).await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            // Sets an integer and adds 1 to it in the same request (one script).
            "/set-and-increment/{key}/{n}",
            post(|s: Session, Path((key, n)): Path<(String, i64)>| async move {
                s.insert(&key, n).await?;
                Ok::<_, SessionError>(s.increment(&key, 1).await?.to_string())
            }),
        )
        .route(
            // Sets a value, then gives up on saving it at once (a handler's
            // own timeout around `save`): the change must still be written.
            "/set-then-abandon-save/{key}/{value}",
            post(|s: Session, Path((key, value)): Path<(String, String)>| async move {
                s.insert(&key, value).await?;
                let _ = tokio::time::timeout(std::time::Duration::ZERO, s.save()).await;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/remove/{key}",
            post(|s: Session, Path(key): Path<String>| async move {
                s.remove(&key).await;
                "ok"
            }),
        )
        .route(
            "/clear",
            post(|s: Session| async move {
                s.clear().await;
                "ok"
            }),
        )
        .route(
            // Loads, waits until a second request has loaded too, then writes its own key.
            "/set-together/{key}/{value}",
            post(move |s: Session, Path((key, value)): Path<(String, String)>| async move {
                let _ = s.get::<String>("anything").await?;
                p1.barrier.wait().await;
                s.insert(&key, value).await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            // Loads, says so, waits for the test's go, then writes.
            "/slow-set/{key}/{value}",
            post(move |s: Session, Path((key, value)): Path<(String, String)>| async move {
                let _ = s.get::<String>(&key).await?;
                p2.loaded.notify_one();
                p2.go.notified().await;
                s.insert(&key, value).await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/login",
            post(|s: Session, Json(login): Json<Login>| async move {
                s.cycle_id().await?;
                s.set_user(&login.user).await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/me",
            get(|s: Session| async move {
                match s.user().await? {
                    Some(user) => Ok::<_, SessionError>((StatusCode::OK, user)),
                    None => Ok((StatusCode::UNAUTHORIZED, "not logged in".into())),
                }
            }),
        )
        .route(
            "/logout",
            post(|s: Session| async move {
                s.destroy().await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/logout-everywhere",
            post(|s: Session| async move { Ok::<_, SessionError>(s.log_out_everywhere().await?.to_string()) }),
        )
        .route(
            "/revoke-others",
            post(|s: Session| async move { Ok::<_, SessionError>(s.revoke_others().await?.to_string()) }),
        )
        .route(
            // Loads, says so, waits for the test's go, then revokes the other sessions.
            "/slow-revoke-others",
            post(move |s: Session| async move {
                let _ = s.user().await?;
                p3.loaded.notify_one();
                p3.go.notified().await;
                Ok::<_, SessionError>(s.revoke_others().await?.to_string())
            }),
        )
        .route(
            "/sessions",
            get(|s: Session| async move {
                let list = s.sessions().await?;
                let current = list.iter().filter(|i| i.current).count();
                Ok::<_, SessionError>(format!("{} {current}", list.len()))
            }),
        )
        .layer(layer)
}

/// A client with one cookie (or header) slot.
#[derive(Clone)]
pub struct Client {
    pub app: Router,
    pub cookie: Option<String>,
    /// Header transport: the header name, else cookies.
    pub header: Option<&'static str>,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: String,
    pub headers: HeaderMap,
}

impl Client {
    pub fn new(app: Router) -> Self {
        Client { app, cookie: None, header: None }
    }

    pub fn request(&self, method: &str, path: &str) -> Request<axum::body::Body> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(cookie) = &self.cookie {
            builder = match self.header {
                Some(name) => builder.header(name, cookie.as_str()),
                None => builder.header(header::COOKIE, cookie.as_str()),
            };
        }
        if method == "POST" && path == "/login" {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    pub async fn send(&mut self, request: Request<axum::body::Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        self.absorb(&headers);
        Answer { status, body, headers }
    }

    pub fn absorb(&mut self, headers: &HeaderMap) {
        match self.header {
            Some(name) => {
                if let Some(v) = headers.get(name) {
                    let v = v.to_str().unwrap();
                    self.cookie = (!v.is_empty()).then(|| v.to_owned());
                }
            }
            None => {
                if let Some(v) = headers.get(header::SET_COOKIE) {
                    let pair = v.to_str().unwrap().split(';').next().unwrap().to_owned();
                    self.cookie = if pair.ends_with('=') { None } else { Some(pair) };
                }
            }
        }
    }

    pub async fn call(&mut self, method: &str, path: &str) -> Answer {
        let request = self.request(method, path);
        self.send(request).await
    }

    pub async fn login(&mut self, user: &str) -> Answer {
        let mut request = self.request("POST", "/login");
        *request.body_mut() = axum::body::Body::from(format!("{{\"user\":\"{user}\"}}"));
        self.send(request).await
    }
}
