//! The shared foundation of the redlayer crates: one [`Redis`] handle over a
//! bb8 pool (standalone or cluster), the key schema ([`keys`]), the error type,
//! the failure policy, the longest expiry sent to Redis ([`expiry`]), and the
//! clock and expiring map behind the in-memory backends ([`memory`]).
//!
//! Which crate does what: `bb8` and `bb8-redis` pool connections; `redis`
//! (redis-rs) speaks the protocol, runs Lua scripts with `EVALSHA` and reloads
//! them on `NOSCRIPT` ([`redis::Script`]), and with the `cluster` feature
//! routes commands on a Redis Cluster; `sha2` hashes client-supplied key parts;
//! `http`, `http-body` and `pin-project-lite` make [`ResponseBody`], the one
//! body type of every layer's responses; `serde_json` writes RFC 9457 problem documents.
//!
//! Redis 6.2 or newer is enough for every command redlayer sends.
//!
//! ```no_run
//! use redlayer_core::{KeyPart, Redis};
//!
//! # async fn demo() -> Result<(), redlayer_core::Error> {
//! let redis = Redis::connect("redis://127.0.0.1/").await?;
//! let key = redis.keys().key("demo", &KeyPart::client("203.0.113.7"));
//! let mut conn = redis.connection().await?;
//! let hits: i64 = redis::Script::new("return redis.call('INCR', KEYS[1])")
//!     .key(&key)
//!     .invoke_async(&mut conn)
//!     .await?;
//! # let _ = hits; Ok(()) }
//! ```
#![deny(missing_docs, unsafe_code)]

pub mod body;
mod connection;
mod detached;
mod error;
pub mod expiry;
mod failure;
mod handle;
pub mod keys;
pub mod memory;
pub mod near;
pub mod problem;

pub use body::ResponseBody;
pub use connection::Connection;
pub use detached::run_detached;
pub use error::{Error, Result};
pub use failure::{FailurePolicy, report_degraded};
pub use handle::{DEFAULT_CONNECTIONS, DEFAULT_TIMEOUT, Redis, RedisBuilder};
pub use keys::{KeyBuilder, KeyPart};
pub use near::NearCache;

pub use bb8;
pub use bb8_redis;
pub use redis;
