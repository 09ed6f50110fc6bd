//! The one error type shared by every redlayer crate.

use std::{fmt, time::Duration};

/// What went wrong while talking to the store.
///
/// Layers never hand this to HTTP clients: they turn it into their configured
/// [`FailurePolicy`](crate::FailurePolicy) and a `tracing` event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The operation did not finish within its timeout.
    Timeout(Duration),
    /// No connection could be had (Redis down, refused, or unreachable).
    Unavailable(String),
    /// Redis answered with an error, or the answer had an unexpected shape.
    Redis(redis::RedisError),
    /// A stored value could not be decoded (another version, or corrupt).
    Decode(String),
    /// Input was refused before it reached Redis (too long, malformed).
    InvalidInput(String),
}

impl Error {
    /// True when Redis could not be reached in time: the cases a failure policy covers.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::Unavailable(_) => true,
            Error::Redis(e) => is_connection_error(e) || e.is_timeout() || is_transient_server_error(e),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout(d) => write!(f, "redis operation timed out after {d:?}"),
            Error::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            Error::Redis(e) => write!(f, "redis error: {e}"),
            Error::Decode(why) => write!(f, "stored value could not be decoded: {why}"),
            Error::InvalidInput(why) => write!(f, "invalid input: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            // Our own timeout and redis-rs's response timeout look the same to callers.
            Error::Timeout(Duration::ZERO)
        } else if e.kind() == redis::ErrorKind::Parse {
            // A reply of another type than asked for (a key someone else
            // wrote): the data's fault, not Redis being away.
            Error::Decode(e.to_string())
        } else if is_connection_error(&e) || is_transient_server_error(&e) {
            Error::Unavailable(e.to_string())
        } else {
            Error::Redis(e)
        }
    }
}

/// Errors after which a connection should not be used again. Not a refused
/// password or a bad client configuration (redis-rs asks to reconnect for
/// those too): that is a mistake to report, not Redis being away, and failure
/// policies such as fail-open must not hide it. Nor a reply of an unexpected
/// type (redis-rs's `Parse`, which the connection survives).
pub(crate) fn is_connection_error(e: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    !e.is_timeout()
        && !matches!(e.kind(), ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig | ErrorKind::Parse)
        && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error())
}

/// Server answers that mean "not now" rather than "no": the server is still
/// loading its data after a restart (`LOADING`), is a replica now (`READONLY`:
/// a failover moved the primary), has lost its primary (`MASTERDOWN`), or the
/// cluster is reconfiguring (`CLUSTERDOWN`, `TRYAGAIN`). Failure policies
/// apply to them as to an unreachable Redis.
pub(crate) fn is_transient_server_error(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as K};
    matches!(e.kind(), ErrorKind::Server(K::BusyLoading | K::ReadOnly | K::MasterDown | K::ClusterDown | K::TryAgain))
}

/// A `Result` with redlayer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
