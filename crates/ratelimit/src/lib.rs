//! Rate limiting for tower (axum, tonic, hyper) with its state in Redis, so
//! that every instance of a service shares one exact limit.
//!
//! - **Algorithms** ([`Algorithm`]): GCRA (default), token bucket, fixed
//!   window, sliding window counter, sliding window log. Every decision is one
//!   Lua script (`src/scripts/limit.lua`; `src/scripts/gcra.lua`, the same
//!   decision at a smaller cost to Redis, for a limiter of one GCRA or token
//!   bucket policy), one round trip, with `now` from Redis `TIME` (app-server
//!   clocks do not matter). Decisions of a one-GCRA-policy limiter that
//!   arrive while two calls are in flight (per server; on a cluster, per key)
//!   wait for the next call and share it (up to 64 per call, decided one after
//!   another, each atomic; a key read and written once per call; none waits
//!   more than a quarter of the handle's timeout for a call): under load Redis
//!   spends less CPU per decision; an idle limiter sends each decision at once.
//! - **Several policies** (10/s *and* 1000/day; per IP *and* per API key)
//!   decided atomically in that one script: a request denied by any policy is
//!   charged to none, and all are reported together.
//! - **Keys** ([`Key`], [`ClientIp`]): peer IP (axum `ConnectInfo`), forwarded
//!   headers from trusted proxies only (never by default), IPv6 /64 grouping,
//!   a header (hashed), route/method scoping, global, custom (sync or async).
//! - **Answers**: 429 + `Retry-After` (whole seconds, rounded up, never 0
//!   while waiting; left out when a denying policy can never fit the
//!   request) + draft-10 `RateLimit-Policy` / `RateLimit` + RFC 9457
//!   problem body of draft-10's `quota-exceeded` type (`violated-policies`,
//!   `retry_after`); the fields on allowed responses too; optional legacy
//!   `X-RateLimit-*`; gRPC requests get HTTP 200 + `grpc-status: 8` with the same
//!   fields as metadata.
//! - **Local deny cache**, **shadow mode**, **failure policy** (fail open by
//!   default, fail closed = 503, or a local in-process limiter), an
//!   **in-memory store**, and a plain async API ([`RateLimiter::check`]).
//!
//! Which crate does what: `redlayer-core` holds the shared Redis handle (bb8 +
//! redis-rs), the key schema, the problem/gRPC answers and the expiring map of
//! the memory store; `redis` runs the script (`EVALSHA`, reload on `NOSCRIPT`);
//! `sfv` writes the structured `RateLimit*` fields; `tower-layer` /
//! `tower-service` / `pin-project-lite` make the middleware; `axum` (feature
//! `axum`, on by default) is only read for `ConnectInfo` and `MatchedPath`.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use redlayer_ratelimit::{Key, Policy, Quota, RateLimitLayer, RateLimiter, Store};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
//! let limiter = RateLimiter::builder(Store::redis(redis))
//!     .name("api")
//!     .policy(Policy::gcra("per-ip", Quota::per_minute(100).burst(20)))
//!     .policy(Policy::fixed_window("per-key", Quota::per_day(10_000)).key(Key::header("x-api-key")))
//!     .build();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(limiter)); // peer IP by default
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! The same layer on a tonic server (a denied call gets `RESOURCE_EXHAUSTED`
//! with `retry-after` and the `ratelimit*` fields as metadata):
//!
//! ```no_run
//! use redlayer_ratelimit::{Key, Policy, Quota, RateLimitLayer, RateLimiter, Store};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::builder(Store::memory())
//!     .policy(Policy::gcra("per-caller", Quota::per_second(50)).key(Key::header("x-api-key")))
//!     .build();
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(RateLimitLayer::new(limiter))
//!     .serve("127.0.0.1:50051".parse()?, health)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Outside HTTP, call the limiter directly:
//!
//! ```
//! use redlayer_ratelimit::{Policy, Quota, RateLimiter, Store};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let jobs = RateLimiter::builder(Store::memory()).policy(Policy::token_bucket("jobs", 10, Quota::per_second(2))).build();
//! let decision = jobs.check("tenant-7", 3).await; // a job worth 3 units
//! if let Some(wait) = decision.retry_after() {
//!     tokio::time::sleep(wait).await;
//! }
//! # }
//! ```
//!
//! # Keys in Redis and Redis Cluster
//!
//! | kind | key | type | expiry |
//! |---|---|---|---|
//! | GCRA / token bucket | `{prefix}:rl:{tag}:...:gcra...` | string: theoretical arrival time, µs | until the bucket is full again |
//! | fixed window | `...:fw...` | hash `w` (window index), `n` (count) | end of the window |
//! | sliding window counter | `...:swc...` | hash `w`, `c` (current), `p` (previous) | end of the next window |
//! | sliding window log | `...:swl...` | sorted set of request times (µs) | one period after the last write |
//!
//! The algorithm's state name and the quota (`{count}-{period µs}-{burst}`)
//! are part of the key (`{quota}` above), so changing a policy's algorithm
//! starts a fresh key instead of misreading another layout, and two limiters
//! that give one policy name to different quotas count apart (sharing, the
//! looser would pull the stricter's state back into its own range).
//!
//! All keys of one decision must live in one cluster slot, so they share one
//! hash tag (`{tag}`), chosen per limiter, not per request (a counter must
//! always live under the same key):
//!
//! - when **every policy counts the same client** (no policy has its own
//!   [`Policy::key`]; and always for [`RateLimiter::check`]), the tag is that
//!   client: `{prefix}:rl:{client}:{policy}:{alg}:{quota}`. Clients spread over the cluster.
//! - when policies count **different clients** (per IP *and* per API key), the
//!   tag is the limiter's [name](RateLimiterBuilder::name):
//!   `{prefix}:rl:{name}:{policy}:{alg}:{quota}:{client}`. Atomic and correct, but all of that
//!   limiter's keys live on one cluster node; give each such limiter its own
//!   name, or split independent policies into separate layers (then each is
//!   atomic on its own, not together).
//!
//! Client values are kept verbatim only when short and plain, otherwise hashed
//! (SHA-256); API keys are always hashed. Every command is in Redis 6.2.
//!
//! # Headers
//!
//! `RateLimit-Policy: "per-ip";q=100;w=60` gives each policy's count `q` per
//! window `w` seconds; `RateLimit: "per-ip";r=20;t=12` the units left now `r`
//! and the seconds `t` until more quota becomes available (GCRA: the next
//! unit; a fixed window: its end). With GCRA / token bucket
//! `r` counts the burst, so it can exceed `q` when the burst is larger than the
//! count. A denied request also gets `Retry-After` (seconds, rounded up, at least
//! 1), unless a denying policy can never fit its cost. When rate-limit layers are nested, the outer one appends its policies to
//! the lists of the inner one.
//!
//! # Failure
//!
//! Each decision is bounded by a timeout (default: the Redis handle's, 500 ms).
//! When the store times out or fails, [`FailurePolicy`]
//! decides (default `FailOpen`): allow, answer 503 (`FailClosed`), or decide
//! with an in-process memory limiter of the same policies (`LocalFallback`,
//! per instance until Redis answers). Every degraded decision emits a `tracing`
//! warning (target `redlayer`).
#![deny(missing_docs, unsafe_code)]

mod batch;
mod decision;
mod future;
mod headers;
mod key;
mod layer;
mod limiter;
mod memory;
mod policy;
mod quota;
mod service;
mod store;

pub use decision::{Decision, PolicyStatus, retry_after_secs};
pub use future::ResponseFuture;
pub use headers::{RATELIMIT, RATELIMIT_POLICY};
pub use key::{ClientIp, IpNet, Key, KeyFuture, NoKey, PeerAddr, peer_addr};
pub use layer::RateLimitLayer;
pub use limiter::{DEFAULT_DENY_CACHE_ENTRIES, DEFAULT_FALLBACK_KEYS, DENY_RECHECK, RateLimiter, RateLimiterBuilder};
pub use policy::{MAX_SLIDING_LOG_COUNT, Policy};
pub use quota::{Algorithm, Quota};
pub use redlayer_core::FailurePolicy;
pub use service::RateLimit;
pub use store::{DEFAULT_MEMORY_MAX_KEYS, Store};
