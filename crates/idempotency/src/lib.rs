//! An `Idempotency-Key` tower layer on Redis, following the IETF httpapi
//! draft "The Idempotency-Key HTTP Header Field": a retried `POST` runs its
//! handler once, on any instance sharing the Redis, and every retry gets the
//! first answer back.
//!
//! # The flow
//!
//! For a covered method (default `POST`, `PATCH`) with an `Idempotency-Key`
//! header (an RFC 8941 sf-string, 1..=255 characters, parsed by `sfv`):
//!
//! 1. The request body is read (bounded, 1 MiB by default, else 413) and the
//!    request *fingerprint* is taken: method, path and query, SHA-256 of the body.
//! 2. The key, scoped per client ([`Scope`]: global, a header, any function of
//!    the request head) and hashed, names an **in-flight lease**: a
//!    [`redlayer_lock`] lock with a short ttl (default 10 s), renewed by the
//!    lock's watchdog while the handler runs (capped at 5 minutes), released
//!    only by its owner (owner-checked Lua). A handler that crashes stops
//!    renewing, so its key frees itself after one lease, not after the result's
//!    retention.
//! 3. The lease holder opens the **record** (a Redis hash kept for the
//!    retention, default 24 h) with the lease's fencing token: a completed
//!    record is replayed; a record with another fingerprint answers 422;
//!    otherwise the handler runs.
//! 4. The response (status, headers but `Set-Cookie`, `Date` and hop-by-hop ones,
//!    body up to 1 MiB) is stored if its
//!    fencing token still owns the record, then the lease is released. A
//!    store that fails (Redis slow or restarting) is retried in the
//!    background while the lease is kept, so a retry of the request meanwhile
//!    gets 409, then the replay. 5xx
//!    answers, refusals of the moment (408, 409, 425, 429), gRPC answers,
//!    bodies over the limit, trailers, body errors and errors of the inner
//!    service are not stored: the
//!    attempt is forgotten and a retry runs again.
//! 5. A request that finds the lease held by someone else gets the stored
//!    answer if there is one by now, 422 if its fingerprint differs, else
//!    **409** with `Retry-After: 1`.
//!
//! Replays carry `Idempotent-Replayed: true`. Problems are
//! `application/problem+json` (RFC 9457): 400 when a required key is missing
//! or a key is malformed (two fields, not an sf-string, empty, too long),
//! 409, 413, 422, and 503 when the store is unreachable and the policy is
//! [`FailurePolicy::FailClosed`](redlayer_core::FailurePolicy) (the default;
//! `FailOpen` runs the handler without the guarantee).
//!
//! Which crate does what: `redlayer-lock` holds the in-flight lease (fencing
//! token, renewal, owner-checked release); `redis` runs the four record
//! scripts; `sfv` parses the header; `sha2` digests bodies; `http-body-util`
//! reads bodies with a limit; `redlayer-core` gives the handle, keys, problem
//! documents and the in-memory map.
//!
//! Keys: `{prefix}:idem:{{digest}}` (hash: `st`, `fp`, `fence`, `status`,
//! `hdrs`, `body`; expires after the retention, and not before lease + `max_hold` while running) and its lease
//! `{prefix}:lock:{{digest}}` (+ `:fence`), where `digest` is the URL-safe
//! base64 SHA-256 of scope and key: neither reaches Redis in clear.
//!
//! The inner service gets the request body back as `ReqBody::from(Bytes)`
//! (axum's `Body` and `Full<Bytes>` do this).
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use redlayer_idempotency::{IdempotencyLayer, Scope};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { (axum::http::StatusCode::CREATED, "paid") }))
//!     .layer(
//!         IdempotencyLayer::redis(redis)
//!             .require_key(true)
//!             .scope(Scope::header(axum::http::HeaderName::from_static("x-api-key")))
//!             .lease(Duration::from_secs(5)),
//!     );
//! # let _ = app; Ok(()) }
//! ```
#![deny(missing_docs, unsafe_code)]

mod body;
mod flow;
mod future;
mod key;
mod layer;
mod service;
mod store;

pub use body::PassBody;
pub use future::ResponseFuture;
pub use key::Scope;
pub use layer::IdempotencyLayer;
pub use service::Idempotency;
pub use store::{DEFAULT_MEMORY_BUDGET, KIND, Store, StoredResponse};
