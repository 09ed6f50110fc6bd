//! Sessions for tower services (axum, tonic, hyper) kept in Redis, safe under
//! concurrent requests of one session.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use redlayer_session::{Session, SessionError, SessionLayer, Store};
//!
//! async fn visits(session: Session) -> Result<String, SessionError> {
//!     // Applied in Redis (HINCRBY): 32 concurrent requests of one session lose nothing.
//!     Ok(session.increment("visits", 1).await?.to_string())
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
//! let app: Router = Router::new()
//!     .route("/visits", get(visits))
//!     .layer(SessionLayer::new(Store::redis(redis)));
//! # let _ = app; Ok(()) }
//! ```
//!
//! # What it does
//!
//! - **One Redis hash per session**, one field per key (values are JSON).
//!   A request writes only the fields it changed, plus deletions and the
//!   expiry, in one Lua script: two concurrent requests that change different
//!   keys both keep their writes. [`Session::increment`] runs `HINCRBY` in the
//!   store. Whole-session operations ([`Session::clear`],
//!   [`Session::destroy`], [`Session::cycle_id`]) are atomic.
//! - **Lazy**: a handler that never touches its [`Session`] costs no Redis
//!   command. A read loads the hash once (one round trip); a write happens
//!   only when something changed.
//! - **Strict ids**: 384 bits from the OS CSPRNG (`getrandom`), base64url.
//!   An id the store does not hold (unknown, expired, revoked) is never
//!   adopted: the first write issues a new one. Redis keys hold SHA-256
//!   hashes of the id, never the id; nothing stored contains one.
//!   [`Session::cycle_id`] renames the hash atomically (the new id shares a
//!   128-bit *family* part with the old one, so both keys are in one cluster
//!   slot; its 256-bit secret part is fresh), keeping the data; the old id is
//!   dead at once.
//! - **Periodic id renewal** (opt-in, [`SessionLayer::renew_id`], as OWASP
//!   advises): the first use of an id older than the interval renames the
//!   session to a new id, and the old key becomes, for a grace period, an
//!   alias holding the new key and the new id sealed with the old one.
//!   Requests already on their way with the old id follow it (their writes
//!   land, and they answer with the new id); two concurrent renewals end with
//!   one id; logging out with the old id ends the session.
//! - **Expiry**, enforced in the store and usable together: an idle timeout
//!   (the key's TTL, refreshed by a load or a write at most once per
//!   [`touch interval`](SessionLayer::touch_interval)) and an absolute
//!   lifetime (a deadline in the hash, checked on every write against Redis
//!   `TIME`; every refresh caps the key's TTL at it, so Redis ends the session
//!   there; loads check it against Redis's clock as last read, at most a
//!   second ago, and confirm an ending on Redis's own clock).
//! - **Per-user index**: [`Session::set_user`] attaches a user; then
//!   [`Session::sessions`] / [`Store::sessions_of`] list that user's sessions
//!   (created, last seen), and [`Store::revoke`], [`Session::revoke_others`],
//!   [`Session::log_out_everywhere`] end one, all but this one, or all. The
//!   index holds session *keys* (hashes), not ids. A session another user
//!   logs in on leaves the previous user's index.
//! - **Transport**: a cookie (name `id`, `HttpOnly`, `Secure`,
//!   `SameSite=Lax`, `Path=/`, browser-session; `__Host-` prefix, persistent
//!   cookies and signing with a `cookie` crate [`Key`] as
//!   options), or a header / gRPC metadata key ([`SessionLayer::header`]).
//!   Garbage, oversized, non-UTF-8 or (when signed) forged ids are dropped
//!   before any store call. A response that hands out an id gets
//!   `Cache-Control: no-store` (replacing the handler's, and dropping
//!   `CDN-Cache-Control` / `Surrogate-Control`): no cache may give it to
//!   another client.
//! - **Backends**: [`Store::redis`] (standalone or cluster, through the
//!   shared [`redlayer_core::Redis`] handle) and [`Store::memory`], with the
//!   same semantics (one conformance suite runs on all three).
//!
//! # Failure behaviour
//!
//! - A read or an immediate operation (`get`, `increment`, `cycle_id`, ...)
//!   whose store call fails returns [`SessionError::Store`]; with the `axum`
//!   feature, returning it from a handler answers `503` (problem+json).
//!   Every store call is bounded by the handle's timeout (default 500 ms).
//! - Buffered changes are written after the handler. If that write fails,
//!   the handler's response is **replaced** by `503` (gRPC: `UNAVAILABLE`),
//!   and a `tracing` warning is logged: a lost write is never silent.
//! - If the session ended (expired, destroyed, revoked) while the request
//!   ran, its changes are **not** written and the session is **not**
//!   recreated: the write reports [`SessionError::Expired`]. After the
//!   handler, that replaces the response with `401` (gRPC:
//!   `UNAUTHENTICATED`). Call [`Session::save`] in the handler to deal with
//!   it yourself. The client's id is left alone (only [`Session::destroy`]
//!   removes it): a request racing a login must not erase the new id.
//! - A write from a request whose id was never loaded and is unknown to the
//!   store starts a new session with a new id (the unknown id is not adopted).
//!
//! # Keys
//!
//! | key | type | expiry |
//! |---|---|---|
//! | `{prefix}:sess:{#sha256(family)}:sha256(id)` | hash: `f:<name>` values (JSON), `m:c` created, `m:s` last seen, `m:a` absolute deadline, `m:i` id issued (ms), `m:u` user; after a renewal the old key holds only `m:r` (new key) and `m:x` (sealed new id) | idle timeout, capped at the absolute deadline |
//! | `{prefix}:sessu:{user}` | hash: session key → created (ms) | the absolute lifetime, from the latest login |
//!
//! `{user}` goes through [`KeyPart::client`](redlayer_core::KeyPart::client)
//! (verbatim when short and plain, SHA-256 otherwise). Every script touches
//! one hash tag only, so all of it works unchanged on Redis Cluster; the
//! per-user index is updated with separate commands after the session's script.
//! Commands used exist since Redis 6.2.
//!
//! # Crates used
//!
//! `redis` (scripts, through `redlayer-core`'s pooled handle), `cookie`
//! (cookie formatting and HMAC signing), `getrandom` (OS CSPRNG), `base64`,
//! `serde_json` (values), `tower-layer` / `tower-service` /
//! `pin-project-lite` (the middleware), `tokio` (the per-request lock),
//! `axum` (optional: the extractor).
#![deny(missing_docs, unsafe_code)]

mod error;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod id;
mod layer;
mod service;
mod session;
mod store;
mod transport;

pub use cookie::{Key, SameSite};
pub use error::SessionError;
pub use future::ResponseFuture;
pub use layer::{DEFAULT_ABSOLUTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, SessionLayer};
pub use service::SessionService;
pub use session::{MAX_KEY_LEN, MAX_USER_LEN, Session};
pub use store::{DEFAULT_MEMORY_BUDGET, SessionInfo, SessionRef, Store};
