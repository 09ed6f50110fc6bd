//! redlayer-cache: an RFC 9111 shared HTTP response cache as a tower layer,
//! with its entries in Redis (shared by every instance) or in memory, and a
//! typed cache-aside API for data that is not HTTP.
//!
//! Which crate does what: [`http_cache_semantics`] decides storability,
//! freshness (`s-maxage`, `max-age`, `Expires`, heuristics), `Vary` matching,
//! request `Cache-Control` (`max-age`, `min-fresh`, `max-stale`, `no-cache`)
//! and builds revalidation requests; this crate adds the storage (Redis via
//! redlayer-core's handle, or memory), `Age` (RFC 9111 4.2.3), `Cache-Status`
//! (RFC 9211), 304s to conditional clients, `stale-while-revalidate` and
//! `stale-if-error` (RFC 5861), invalidation after unsafe methods,
//! coalescing of concurrent misses, tags and purges, and XFetch. `sfv` parses
//! `Cache-Control` / `CDN-Cache-Control`, `httpdate` HTTP dates, `rand` jitters XFetch,
//! `serde_json` encodes cache-aside values, and redlayer-lock's locks
//! coalesce fills across instances.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use redlayer_cache::CacheLayer;
//!
//! # async fn demo() -> Result<(), redlayer_core::Error> {
//! let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
//! let app: Router = Router::new()
//!     .route("/time", get(|| async { ([("cache-control", "max-age=5")], "now") }))
//!     .layer(CacheLayer::new(redis.clone()).tag_header(Some("surrogate-key".parse().unwrap())));
//! # let _ = app; Ok(()) }
//! ```
//!
//! # What the layer does
//!
//! - GET and HEAD are looked up under `GET <normalized URI>` (a custom
//!   [`CacheLayer::key_fn`] and a [`CacheLayer::namespace`] hook exist), and
//!   the variant chosen by the request headers named in the stored `Vary`.
//!   `Vary: *` is never stored. At most [`MAX_VARIANTS`] variants are kept
//!   per URI (a new one replaces another), so clients inventing header
//!   values cannot grow an entry without bound.
//! - The site is the URI's authority (HTTP/2, absolute-form) or else the
//!   `Host` header, compared normalized (`EXAMPLE.test:80` is `example.test`).
//!   A request whose URI and `Host` name different sites bypasses the cache
//!   (`Cache-Status: ...; fwd=bypass; detail=host-mismatch`): a proxy that
//!   rewrites the URI to its origin should do so inside the cache layer (as
//!   `examples/cache_proxy.rs` does), or rewrite `Host` too. The scheme is
//!   part of the key: an HTTP/1.1 request carries none and counts as `http`,
//!   while an HTTP/2 request over TLS says `https`, so on a TLS server the two
//!   protocols keep separate entries (a [`CacheLayer::key_fn`] can key them together).
//!   A key longer than 32 KiB (a huge `Host` or query) is not cached
//!   (`fwd=bypass; detail=key-too-long`), and a `Cache-Control` longer than
//!   8 KiB, which no real one is, reads as `no-store`.
//! - Hits are served with `Age`; a client whose `If-None-Match` /
//!   `If-Modified-Since` matches gets a 304.
//! - Stale entries with a validator are revalidated with a conditional
//!   request; a 304 refreshes the stored headers (RFC 9111 4.3.4: when the
//!   client sent no validators of its own, the 304 can only be about the
//!   stored entry, even without validators; otherwise its `ETag` or
//!   `Last-Modified` must match the stored one, else the client gets it).
//!   A `200` to a forwarded `HEAD` does the same for the stored GET response
//!   when its validators and `Content-Length` agree with it, and drops it
//!   when they do not (RFC 9111 4.3.5).
//! - A single `bytes` range of a stored complete `200` (`Range`, with a
//!   matching `If-Range` if any) is answered with a `206` from the cache;
//!   other ranges get the whole stored response.
//! - Any final status is stored when the response has explicit freshness or
//!   `public` (RFC 9111 3; e.g. a `500` with `max-age`); heuristic freshness
//!   only for the heuristically cacheable statuses; `must-understand`
//!   overrides `no-store` for the statuses `http-cache-semantics` understands.
//! - Misses are forwarded; the body streams to the client while a copy is
//!   collected up to [`CacheLayer::max_body_size`]: larger bodies pass
//!   through unstored (the copy is complete once the body's exact length or
//!   `Content-Length` is collected: servers stop polling a body there).
//!   Concurrent misses of one key in one process wait for
//!   the first (waiters get the shared entry, never its `Set-Cookie`
//!   unless [`CacheLayer::replay_set_cookie`]).
//! - Responses with `Set-Cookie` are not stored by default
//!   ([`CacheLayer::store_set_cookie`] stores them without the cookie, which
//!   then only reaches the client whose request produced it;
//!   [`CacheLayer::replay_set_cookie`] stores and replays it, as RFC 9111
//!   has a shared cache do, for origins that mark per-user answers
//!   `private`); responses to
//!   requests with `Authorization` only when `public`, `s-maxage` or
//!   `must-revalidate` allow it; `private` and `no-store` never.
//! - A successful POST/PUT/PATCH/DELETE (any non-safe method) deletes the
//!   entries of its URI and of same-origin `Location` / `Content-Location`.
//!   A POST answered `200` (or `203`) with explicit freshness, no
//!   `Set-Cookie`, and a `Content-Location` naming its own URI is then stored
//!   as that URI's GET answer (RFC 9110 9.3.3), under the usual rules
//!   (`Authorization`, `private`, `Vary`), unless the key function gives
//!   the POST's request another key or an invalidation came meanwhile.
//! - A `304` or a `200` to a `HEAD` only updates a stored entry when the
//!   updated response is still storable for the request; otherwise the
//!   entry is dropped. A response is never stored when a purge or an
//!   invalidation of its key came, in this process, while it was on its way.
//!   Across instances, on Redis: every invalidation (a purge, an unsafe
//!   request's targets) bumps the entry's generation (field `gen`, kept 10
//!   minutes after the entry is gone), and a fill stores its response only if
//!   the generation is still the one its lookup saw. So a fill on another
//!   instance that started before an invalidation does not store a response
//!   from before it (unless it ran more than 10 minutes). Every purge also
//!   runs once more 2 s later.
//! - `Cache-Control` is parsed strictly before `http-cache-semantics` sees it
//!   (`max-age =1` and directives inside quoted strings are ignored; qualified
//!   `no-cache="f"` / `private="f"` store the response without field `f`;
//!   `proxy-revalidate` and `s-maxage` forbid serving stale); HTTP dates are
//!   parsed strictly, tolerating only a wrong letter case (an invalid
//!   `Expires` means already expired); request `Pragma` is ignored when the
//!   request has `Cache-Control` (RFC 9111 5.4).
//! - `stale-while-revalidate` serves the stale entry and refreshes it in the
//!   background; `stale-if-error` (response or request) serves it when the
//!   origin answers 500, 502, 503 or 504; [`CacheLayer::xfetch`] refreshes hot
//!   entries early.
//! - When Redis is slow or down the layer steps aside (the origin serves,
//!   `Cache-Status: redlayer; fwd=bypass; detail=store-unavailable`), and
//!   skips the store for 500 ms after a failure.
//! - Optionally, [`Store::with_near_cache`] keeps hits in process memory as
//!   well (a `NearCache` from redlayer-core): a hot page is then served
//!   without a Redis round trip (in BENCHMARKS.md: faster than the floor's
//!   one `INCR`, 0.92x the page served by its handler without the layer).
//!   Copies stay coherent through Redis client tracking (RESP3 `CLIENT
//!   TRACKING ... BCAST` on a connection of its own): any instance's store,
//!   purge or invalidation makes Redis tell every instance, which drops its
//!   copy when it reads that message (sent as the write is answered;
//!   the writing instance drops its own at once; within a second plus the
//!   timeout if the connection breaks silently). Off by default, because
//!   in that short window another instance may still serve the old copy.
//!   On a cluster it tracks every master.
//!
//! `Cache-Status` values: `hit; ttl=N`, `hit; ttl=-N; detail=stale-while-revalidate`,
//! `fwd=uri-miss; fwd-status=200; stored`, `fwd=vary-miss` (stored for the
//! URI, not for this request's `Vary` field values), `fwd=uri-miss; collapsed`,
//! `fwd=uri-miss; fwd-status=200; detail=hit-for-pass`,
//! `fwd=stale; fwd-status=304`, `fwd=stale; fwd-status=503; detail=stale-if-error`,
//! `fwd=method` (unsafe and uncacheable methods; `fwd=method; stored` for a
//! stored POST answer), `fwd=request; detail=no-store`,
//! `fwd=bypass` (no key, or `detail=store-unavailable`).
//!
//! # Cache-aside
//!
//! [`CacheAside`] stores typed values (serde JSON with a version byte) with
//! `get_or_insert_with`, `get_or_insert_tagged`, `get_or_insert_swr`
//! (stale-while-revalidate), `get`, `set`, `set_with_tags`, `invalidate`,
//! `invalidate_tag`; one fetch per key in a process and, on Redis, across
//! instances (a short lock; the others poll for the value).
//!
//! # Coalescing
//!
//! Concurrent misses of one key in one process wait for the first request
//! (single flight). A fill ends with its body, so one whose client reads
//! slowly or not at all is joined only within the coalesce timeout: a later
//! request leads a fill of its own. Across instances (Redis backend) the first instance takes
//! a short fill lock (redlayer-lock, `cache-fill:<entry key>`, ttl = the
//! coalesce timeout, default 5 s); the others poll the store (10 ms doubling
//! to 100 ms) until the entry appears, and go to the origin themselves when
//! the lock is free again without an entry (the leader's response was not
//! storable, or the leader died), when the key turns hit-for-pass (below), or
//! when the coalesce timeout ends. Background
//! refreshes (stale-while-revalidate, XFetch) take `cache-refresh:<entry key>`
//! so one instance refreshes a key at a time.
//!
//! A fill releases its lock only once its entry is stored (or the store
//! failed), and an instance that takes the lock looks up the store once more
//! before going to the origin: a request reaching another instance right
//! after the first response was sent finds the entry.
//!
//! # Hit-for-pass
//!
//! When the origin's response to a miss is not storable, the key gets a
//! short marker (field `pass` of its hash: a deadline from Redis `TIME`,
//! default 30 s, [`CacheLayer::hit_for_pass`]; zero disables). Until then its
//! misses skip coalescing (no single flight, no fill lock) and go straight
//! to the origin: a repeated uncacheable GET costs one `HMGET` on Redis. The
//! marker only skips the lock, it never serves anything: a response that is
//! storable again is stored, which clears it. On the memory store the marker
//! lives in the same in-process map as the entries.
//!
//! # Keys and cluster safety
//!
//! | kind | key | type | expiry |
//! |---|---|---|---|
//! | `cache` | `{prefix}:cache:{<GET uri>}` | HASH: `uri`, `vary`, `v:<variant>` = entry, `pass` = hit-for-pass deadline (ms) | longest variant: freshness + stale windows + retention; a hash holding only `pass`: the hit-for-pass time |
//! | `cachetag` | `{prefix}:cachetag:{<tag>}` | ZSET: entry key → when it expires (ms); expired members dropped on each add | longest member |
//! | `cacheval` | `{prefix}:cacheval:{<key>}` | STRING: magic, version, fresh-until ms, JSON | the ttl given (+ stale window) |
//!
//! Every script touches one key. A tag index cannot share a slot with all
//! the entries it names, so it lives in its tag's slot and a purge reads it
//! with `ZSCAN`, takes each batch of members out of it (`ZREM`) and deletes
//! their entries (one single-key script per entry, `invalidate.lua`, up to 32
//! at a time: on a cluster each goes to its entry's master): nothing can fail
//! with `CROSSSLOT`. Purges bump an in-process epoch and each entry's
//! generation, so fills in flight here or elsewhere are not stored, and
//! every purge re-runs once after 2 s.
//! `purge_prefix` uses `SCAN` (never `KEYS`) and reads each entry's `uri`
//! field; on a cluster it scans every master (found with `CLUSTER SLOTS`,
//! reached with the handle's credentials and TLS, `Redis::node_info`) and
//! deletes through the cluster handle.
#![deny(missing_docs, unsafe_code)]

mod aside;
mod body;
mod entry;
mod flight;
pub mod key;
mod layer;
mod policy;
mod reference;
mod service;
mod status;
mod store;

pub use aside::CacheAside;
pub use body::CacheBody;
pub use future::ResponseFuture;
pub use layer::{CacheLayer, DEFAULT_HIT_FOR_PASS, DEFAULT_MAX_BODY};
pub use service::Cache;
pub use store::{DEFAULT_MEMORY_BUDGET, MAX_VARIANTS, Store};

/// A marker the inner service puts in its response's extensions when it
/// could not reach the origin (a proxy's connect error or timeout, answered
/// `502`/`504`). The cache is then "disconnected" (RFC 9111 4.2.4) and serves
/// the stale entry it holds, unless the entry forbids it (`must-revalidate`,
/// `proxy-revalidate`, `no-cache`, `s-maxage`) or the request asks for a
/// fresh answer; `Cache-Status` says `fwd=stale; detail=origin-unreachable`.
/// `examples/cache_proxy.rs` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginUnreachable;

mod future;

/// The encoding version of stored entries; entries of other versions are misses.
pub const ENTRY_VERSION: u8 = entry::VERSION;
