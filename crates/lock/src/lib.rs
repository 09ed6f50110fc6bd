//! Distributed locks on Redis for the redlayer family.
//!
//! - [`Locks`]: `try_acquire`, `acquire` (bounded retry with jitter),
//!   `with_lock` (acquire, renew, run, release); backends on the shared
//!   [`Redis`](redlayer_core::Redis) handle (standalone or cluster) and in memory.
//! - [`LockGuard`]: a fencing token strictly increasing per name (issued
//!   atomically with the lock by the acquire script, never below the Redis
//!   clock in µs, so it survives a lost counter), owner-checked `release` and
//!   `extend`, a watchdog with a cap on the total hold time, and
//!   [`LockGuard::lost`], a future that resolves the moment the lock can no
//!   longer be guaranteed. Dropping a guard releases it in a spawned task.
//! - [`Locks::redlock`]: the same API over N independent Redis servers
//!   (parallel attempts, majority quorum, validity = ttl − elapsed − drift,
//!   undo on every node after a failed attempt, minority failures tolerated).
//! - [`Semaphore`]: at most N holders, each with a lease that expires if its
//!   holder dies.
//! - [`layer::LockLayer`]: a tower layer; requests sharing a key run one at a
//!   time across instances, with a bounded wait answered 409 or 503.
//!
//! # Guarantees, honestly
//!
//! A lock on one Redis (or a cluster's master) is exclusive as long as that
//! server keeps its data: after a failover to a replica that had not received
//! the `SET`, two holders can exist. Redlock narrows that window, at the cost
//! of N servers, but (as Kleppmann showed) relies on bounded clock drift and
//! process pauses. In every case the [fencing token](LockGuard::fencing_token)
//! is what makes a storage write safe: have the storage refuse a token older
//! than one it has seen. [`LockGuard::lost`] tells the holder as soon as the
//! lock can no longer be guaranteed, and [`Locks::with_lock`] cancels the
//! work at that moment.
//!
//! Which crate does what: `redis` runs the
//! Lua scripts (`EVALSHA`, reloaded on `NOSCRIPT`); `redlayer-core` provides the handle, the key
//! schema and the in-memory expiring map; `tokio` runs the watchdog, the
//! timers and the release-on-drop task; `rand` makes 128-bit owner tokens (ChaCha, OS-seeded) and
//! `rand` jitters retry delays.
//!
//! Keys (see `docs/KEYS.md`): `{prefix}:lock:{{name}}` (string: the owner
//! token, `PX` ttl) and `{prefix}:lock:{{name}}:fence` (string: the last
//! fencing token, kept one minute by default; fences never go below the
//! Redis clock in microseconds). Both share a hash tag, so the
//! acquire script works on Redis Cluster. Semaphores: `{prefix}:sem:{{name}}`
//! (sorted set: token → lease end in ms).
//!
//! Redis 6.2+ commands only; time in scripts comes from Redis `TIME`.
//!
//! ```no_run
//! use std::time::Duration;
//! use redlayer_lock::{Locks, Retry};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
//! let locks = Locks::redis(redis);
//!
//! // Wait up to 2 s for the lock, hold it at most 10 s unless renewed.
//! let guard = locks.acquire("invoice-42", Duration::from_secs(10), Retry::new(Duration::from_secs(2))).await?;
//! let fence = guard.fencing_token(); // hand this to the storage you write to
//! # let _ = fence;
//! guard.release().await?;
//!
//! // Or: acquire, renew while the work runs, cancel the work if the lock is lost, release.
//! let total = locks.with_lock("daily-report", Duration::from_secs(5), async { 40 + 2 }).await?;
//! # let _ = total; Ok(()) }
//! ```
#![deny(missing_docs, unsafe_code)]

mod guard;
pub mod layer;
mod locks;
mod memory;
mod redlock;
mod retry;
mod semaphore;

pub use guard::LockGuard;
pub use locks::{AcquireError, DEFAULT_FENCE_RETENTION, KIND, Locks};
pub use retry::Retry;
pub use semaphore::{Permit, SEMAPHORE_KIND, Semaphore};
