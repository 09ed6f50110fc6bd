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
//! | `idempotency` | `redlayer-idempotency` | `idempotency`   |
//! | `cluster`     | Redis Cluster support in [`Redis`] and every enabled crate | |
//! | `full`        | all of the above       |                 |
//!
//! ```no_run
//! # async fn demo() -> Result<(), redlayer::Error> {
//! let redis = redlayer::Redis::connect("redis://127.0.0.1/").await?;
//! # let _ = redis; Ok(()) }
//! ```
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
