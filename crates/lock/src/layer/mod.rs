//! A per-key lock layer: requests that share a key run one at a time, across
//! every instance on the same Redis.
//!
//! The key comes from an [`ExtractKey`] (a closure over the request, the
//! path, a header). Requests without a key pass through. The lock's name is
//! `req:` + the key, so a client-chosen key never names another lock (an
//! idempotency lease, a cache fill, one of the application's own). A request waits for
//! the key's lock within a bounded time ([`Retry`](crate::Retry)); when the
//! wait runs out it gets `409 Conflict` (configurable, e.g. `503`) as an RFC
//! 9457 problem, or `grpc-status: 10` (ABORTED) for gRPC. The lock is renewed
//! by the watchdog while the handler runs (at most `max_hold`) and released
//! (in the background) as soon as the handler has produced its response
//! head; streaming the body happens outside the lock. Should the lock be lost
//! while the handler runs (the watchdog could not renew it, Redis restarted
//! empty, `max_hold` ran out), the handler is stopped, as
//! [`Locks::with_lock`](crate::Locks::with_lock) stops its work, and the
//! request gets `503` (`grpc-status: 14`): another request may hold the key
//! by then.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, http::{Request, StatusCode}, routing::post};
//! use redlayer_lock::{Locks, Retry, layer::{HeaderKey, LockLayer}};
//!
//! # async fn demo() -> Result<(), redlayer_core::Error> {
//! let locks = Locks::redis(redlayer_core::Redis::connect("redis://127.0.0.1/").await?);
//! let app: Router = Router::new()
//!     .route("/accounts/{id}/withdraw", post(|| async { "ok" }))
//!     // One request per account at a time; wait at most 2 s, then 503.
//!     .layer(
//!         LockLayer::new(locks, |req: &Request<axum::body::Body>| Some(req.uri().path().to_owned()))
//!             .wait(Retry::new(Duration::from_secs(2)))
//!             .busy_status(StatusCode::SERVICE_UNAVAILABLE),
//!     );
//! # let _ = HeaderKey::new(axum::http::HeaderName::from_static("x-account")); let _ = app; Ok(()) }
//! ```

mod extract;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use extract::{ExtractKey, HeaderKey, PathKey};
pub use future::ResponseFuture;
pub use layer::LockLayer;
pub use service::KeyLock;
