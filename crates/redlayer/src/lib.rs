//! redlayer: tower middleware that keeps its state in Redis, through one shared
//! connection pool, so that every instance of a service shares one rate limit,
//! one cache, one session store and one set of locks.
//!
//! This umbrella crate re-exports the capability crates behind one cargo
//! feature each; [`core`] (the shared handle) is always there.
//!
//! | feature   | crate                 |
//! |-----------|-----------------------|
//! | `cluster` | Redis Cluster support in [`Redis`] |
//!
//! ```no_run
//! # async fn demo() -> Result<(), redlayer::Error> {
//! let redis = redlayer::Redis::connect("redis://127.0.0.1/").await?;
//! # let _ = redis; Ok(()) }
//! ```
#![deny(missing_docs, unsafe_code)]

pub use redlayer_core as core;
pub use redlayer_core::{Error, FailurePolicy, KeyBuilder, KeyPart, Redis, RedisBuilder};
