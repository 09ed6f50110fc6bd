//! Sessions: a visit counter, login with id rotation, log out (everywhere).

use std::time::Duration;

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use redlayer::session::{Session, SessionError, SessionLayer, Store};
use serde::Deserialize;
use serde_json::json;

use crate::Backend;

/// Lines of the index page for these routes.
pub const INDEX: &str = "\
GET  /visits               per-session counter, applied atomically in the store (a new visitor gets 1 and a cookie)
POST /login                {\"user\":\"alice\"}: new session id (data kept, old id dead at once), user recorded
GET  /me                   200 {\"user\":..} when logged in, 401 otherwise (also for garbage or forged cookies)
GET  /sessions             the user's live sessions (created, last seen)
POST /logout               ends this session
POST /logout-everywhere    ends every session of the user, on every instance
";

#[derive(Deserialize)]
struct Login {
    user: String,
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": "not logged in" }))).into_response()
}

async fn visits(session: Session) -> Result<String, SessionError> {
    Ok(session.increment("visits", 1).await?.to_string())
}

async fn login(session: Session, Json(login): Json<Login>) -> Result<Response, SessionError> {
    if login.user.is_empty() || login.user.len() > 128 {
        return Ok((StatusCode::BAD_REQUEST, Json(json!({ "error": "user must be 1..=128 bytes" }))).into_response());
    }
    session.cycle_id().await?;
    session.set_user(&login.user).await?;
    Ok(Json(json!({ "user": login.user })).into_response())
}

async fn me(session: Session) -> Result<Response, SessionError> {
    Ok(match session.user().await? {
        Some(user) => Json(json!({ "user": user, "visits": session.get::<i64>("visits").await? })).into_response(),
        None => unauthorized(),
    })
}

async fn sessions(session: Session) -> Result<Response, SessionError> {
    if session.user().await?.is_none() {
        return Ok(unauthorized());
    }
    let since_epoch = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let list: Vec<_> = session
        .sessions()
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "session": s.session.as_str(),
                "created": since_epoch(s.created),
                "last_seen": since_epoch(s.last_seen),
                "current": s.current,
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": list })).into_response())
}

async fn logout(session: Session) -> Result<Json<serde_json::Value>, SessionError> {
    session.destroy().await?;
    Ok(Json(json!({ "ended": 1 })))
}

async fn logout_everywhere(session: Session) -> Result<Response, SessionError> {
    if session.user().await?.is_none() {
        return Ok(unauthorized());
    }
    let ended = session.log_out_everywhere().await?;
    Ok(Json(json!({ "ended": ended })).into_response())
}

/// The routes, with their layers.
pub fn routes(backend: &Backend) -> Router {
    let store = match &backend.redis {
        Some(redis) => Store::redis(redis.clone()),
        None => Store::memory(),
    };
    // The showcase serves plain HTTP on 127.0.0.1, so the cookie is not
    // `Secure` here; everything else keeps the defaults (HttpOnly, SameSite=Lax, Path=/).
    // Ids are also renewed every 15 minutes of use; an old id keeps working for
    // 30 s, for requests already on their way with it.
    let layer = SessionLayer::new(store).secure(false).renew_id(Duration::from_secs(15 * 60), Duration::from_secs(30));
    Router::new()
        .route("/visits", get(visits))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/sessions", get(sessions))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route_layer(layer)
}
