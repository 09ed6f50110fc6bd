//! [`SessionError`]: what a session operation can fail with.

use std::fmt;

/// Why a session operation failed.
///
/// With the `axum` feature, a handler can return it directly: the store being
/// unreachable answers `503 Service Unavailable`, an expired session
/// `401 Unauthorized`, anything else `500` (RFC 9457 problem documents).
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed or did not answer in time (see [`SessionError::is_unavailable`]).
    Store(redlayer_core::Error),
    /// The session expired, was destroyed or revoked while this request ran:
    /// the changes of this request were **not** written, and the session was
    /// not recreated.
    Expired,
    /// A stored value could not be decoded as the requested type.
    Decode {
        /// The session key.
        key: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// A value could not be encoded.
    Encode(serde_json::Error),
    /// `increment` on a field that holds something other than an integer.
    NotAnInteger(String),
    /// The OS random number generator failed.
    Rng(String),
    /// No [`SessionLayer`](crate::SessionLayer) in front of this handler.
    MissingLayer,
}

impl SessionError {
    /// True when the store could not be reached in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SessionError::Store(e) if e.is_unavailable())
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> http::StatusCode {
        match self {
            SessionError::Store(e) if e.is_unavailable() => http::StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Expired => http::StatusCode::UNAUTHORIZED,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status this error maps to.
    pub(crate) fn grpc_code(&self) -> redlayer_core::problem::GrpcCode {
        use redlayer_core::problem::GrpcCode;
        match self {
            SessionError::Expired => GrpcCode::Unauthenticated,
            // Only an unreachable store is worth a retry (clients and meshes retry UNAVAILABLE).
            SessionError::Store(e) if e.is_unavailable() => GrpcCode::Unavailable,
            _ => GrpcCode::Internal,
        }
    }

    pub(crate) fn title(&self) -> &'static str {
        match self {
            SessionError::Store(e) if e.is_unavailable() => "Session store unavailable",
            SessionError::Expired => "Session expired",
            _ => "Session error",
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Store(e) => write!(f, "session store: {e}"),
            SessionError::Expired => f.write_str("the session expired or was revoked during this request"),
            SessionError::Decode { key, source } => write!(f, "session value {key:?} could not be decoded: {source}"),
            SessionError::Encode(e) => write!(f, "session value could not be encoded: {e}"),
            SessionError::NotAnInteger(key) => write!(f, "session value {key:?} is not an integer"),
            SessionError::Rng(e) => write!(f, "OS random number generator failed: {e}"),
            SessionError::MissingLayer => f.write_str("no SessionLayer in front of this handler"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Store(e) => Some(e),
            SessionError::Decode { source, .. } => Some(source),
            SessionError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redlayer_core::Error> for SessionError {
    fn from(e: redlayer_core::Error) -> Self {
        SessionError::Store(e)
    }
}

impl From<redis::RedisError> for SessionError {
    fn from(e: redis::RedisError) -> Self {
        SessionError::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    use redlayer_core::problem::GrpcCode;

    use super::*;

    /// gRPC clients and meshes retry UNAVAILABLE: only an unreachable store says it.
    #[test]
    fn only_an_unreachable_store_is_unavailable_to_grpc() {
        let down = SessionError::Store(redlayer_core::Error::Unavailable("down".into()));
        assert_eq!(down.grpc_code(), GrpcCode::Unavailable);
        assert_eq!(SessionError::Expired.grpc_code(), GrpcCode::Unauthenticated);
        assert_eq!(SessionError::MissingLayer.grpc_code(), GrpcCode::Internal);
        let refused = SessionError::Store(redlayer_core::Error::InvalidInput("WRONGTYPE".into()));
        assert_eq!(refused.grpc_code(), GrpcCode::Internal);
    }
}
