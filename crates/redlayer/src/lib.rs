//! redlayer: tower middleware that keeps its state in Redis, through one shared
//! connection pool, so that every instance of a service shares one rate limit,
//! one cache, one session store and one set of locks.
//!
//! This umbrella crate re-exports the capability crates behind one cargo
//! feature each; [`core`] (the shared handle) is always there.
//!
//! | feature       | crate                  | module          |
//! |---------------|------------------------|-----------------|
//! | `ratelimit`   | `redlayer-ratelimit`   | `ratelimit`     |
//! | `cache`       | `redlayer-cache`       | `cache`         |
//! | `session`     | `redlayer-session`     | `session`       |
//! | `lock`        | `redlayer-lock`        | `lock`          |
//! | `idempotency` | `redlayer-idempotency` (turns on `lock`) | `idempotency` |
//! | `cluster`     | Redis Cluster support in [`Redis`] and every enabled crate | |
//! | `axum` (default) | axum integration: `ConnectInfo` / `MatchedPath` keys, the `Session` extractor | |
//! | `full`        | all of the above       |                 |
//!
//! ```no_run
//! # async fn demo() -> Result<(), redlayer::Error> {
//! let redis = redlayer::Redis::connect("redis://127.0.0.1/").await?;
//! # let _ = redis; Ok(()) }
//! ```
//!
//! # The order of the layers
//!
//! `Router::layer` wraps what is already there, so the last `.layer(..)` is the
//! outermost. From the outside in:
//!
//! 1. **Rate limit**: it must see the client key first (peer IP, trusted
//!    forwarded headers, an API key) and refuse a flood before any other layer
//!    spends a Redis round trip on it.
//! 2. **Cache**: a hit is answered before a session is loaded or a handler runs.
//! 3. **Session**: before the handlers and the layers that need the user.
//! 4. **Idempotency**: inside the session layer, so a replayed answer does not
//!    run the handler's session writes again.
//! 5. **Per-key lock**: a `route_layer`, so only that route takes it; its key
//!    is the request path (`/accounts/42/withdraw`).
//!
//! By default the cache does not store a response with `Set-Cookie`, and the
//! session layer adds `Vary: Cookie` (or its header) to every response of a
//! request that used the session, so one user's page never reaches another.
//! Personal pages should still say `Cache-Control: private`.
//! `examples/full_stack.rs` is the whole program, with a tonic server too.
#![deny(missing_docs, unsafe_code)]

pub use redlayer_core as core;
pub use redlayer_core::{Error, FailurePolicy, KeyBuilder, KeyPart, Redis, RedisBuilder};

#[cfg(feature = "cache")]
pub use redlayer_cache as cache;
#[cfg(feature = "idempotency")]
pub use redlayer_idempotency as idempotency;
#[cfg(feature = "lock")]
pub use redlayer_lock as lock;
#[cfg(feature = "ratelimit")]
pub use redlayer_ratelimit as ratelimit;
#[cfg(feature = "session")]
pub use redlayer_session as session;

/// The README's examples, compiled as doc tests.
#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
