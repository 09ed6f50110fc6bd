//! axum integration (feature `axum`): [`Session`] as an extractor, and
//! [`SessionError`] as a response.

use axum::{
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::request::Parts;

use crate::{Session, SessionError};

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or(SessionError::MissingLayer)
    }
}

/// `503` when the store is unreachable, `401` when the session expired
/// during the request, `500` otherwise, as RFC 9457 problem documents; to a
/// gRPC call through the layer, `UNAVAILABLE` or `UNAUTHENTICATED`.
impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let grpc = false;
        let mut response = crate::future::error_response::<axum::body::Body>(&self, grpc);
        // The layer answers a gRPC call with the gRPC status instead.
        let marker = crate::future::HandlerError { code: self.grpc_code(), title: self.title() };
        response.extensions_mut().insert(marker);
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, axum::body::Body::new(body))
    }
}
