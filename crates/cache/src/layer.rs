//! [`CacheLayer`]: configuration and the purge API.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use http::{HeaderName, request::Parts};
use http_cache_semantics::CacheOptions;
use redlayer_core::{Redis, Result, memory::ExpiringMap};
use tower_layer::Layer;

use crate::{
    flight::Flights,
    key::{self, KeyFn, NamespaceFn},
    service::Cache,
    store::Store,
};

/// Default largest body stored (1 MiB); larger bodies pass through unstored.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Default time a key whose origin response was not storable skips
/// coalescing (see [`CacheLayer::hit_for_pass`]).
pub const DEFAULT_HIT_FOR_PASS: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct Config {
    pub max_body: usize,
    pub tag_header: Option<HeaderName>,
    pub key_fn: KeyFn,
    pub namespace: Option<NamespaceFn>,
    pub status_name: String,
    pub status_arc: Arc<str>,
    pub stale_retention: Duration,
    pub xfetch_beta: f64,
    pub coalesce_timeout: Duration,
    pub store_set_cookie: bool,
    pub replay_set_cookie: bool,
    pub opts: CacheOptions,
    pub purge_recheck: Duration,
    pub hit_for_pass: Duration,
}

pub(crate) struct State {
    pub store: Store,
    pub flights: Arc<Flights>,
    /// Bumped by every purge (tag, key, prefix): fills that started before it
    /// are not stored (no stale copy survives a purge).
    pub epoch: AtomicU64,
    /// Entry keys invalidated by unsafe requests: only fills of those keys
    /// that started before are dropped (a global bump would drop every fill
    /// in flight whenever any POST succeeds).
    pub invalidated: Invalidated,
    pub refreshing: crate::flight::Refreshing,
    /// Cross-instance coalescing (Redis backend only).
    pub locks: Option<redlayer_lock::Locks>,
}

/// Per-key invalidations, numbered: a fill records the number current when it
/// started and is dropped if its key was invalidated after that.
pub(crate) struct Invalidated {
    seq: AtomicU64,
    keys: ExpiringMap<String, u64>,
}

/// How long an invalidation is remembered; a fill running longer is dropped.
pub(crate) const INVALIDATION_MEMORY: Duration = Duration::from_secs(600);

impl Default for Invalidated {
    fn default() -> Self {
        Invalidated { seq: AtomicU64::new(0), keys: ExpiringMap::new().weighed(8 << 20, |_| 64) }
    }
}

impl Invalidated {
    /// The current number, for a fill that starts now.
    pub(crate) fn current(&self) -> u64 {
        self.seq.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records that `key` was invalidated now; returns the number of this
    /// invalidation (a fill starting from it sees only later ones).
    pub(crate) fn record(&self, key: &str) -> u64 {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.keys.insert(key.to_owned(), n, Some(INVALIDATION_MEMORY));
        n
    }

    /// True when `key` was invalidated after a fill that started at `since`.
    pub(crate) fn since(&self, key: &str, since: u64) -> bool {
        self.keys.get(key).is_some_and(|n| n > since)
    }
}

/// A tower layer that acts as an RFC 9111 shared cache in front of the inner
/// service, keeping entries in a [`Store`] (Redis or memory).
///
/// Clones share their store, coalescing state and configuration.
#[derive(Clone)]
#[must_use]
pub struct CacheLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("store", &self.state.store)
            .field("max_body", &self.config.max_body)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A cache in Redis, shared by every instance using that Redis.
    pub fn new(redis: Redis) -> Self {
        Self::with_store(Store::redis(redis))
    }

    /// A cache in this process's memory.
    pub fn memory() -> Self {
        Self::with_store(Store::memory())
    }

    /// A cache on the given store.
    pub fn with_store(store: Store) -> Self {
        CacheLayer {
            config: Arc::new(Config {
                max_body: DEFAULT_MAX_BODY,
                tag_header: Some(HeaderName::from_static("cache-tag")),
                key_fn: Arc::new(key::default_key),
                namespace: None,
                status_name: "redlayer".into(),
                status_arc: Arc::from("redlayer"),
                stale_retention: Duration::from_secs(300),
                xfetch_beta: 0.0,
                coalesce_timeout: Duration::from_secs(5),
                store_set_cookie: false,
                replay_set_cookie: false,
                opts: CacheOptions::default(),
                purge_recheck: Duration::from_secs(2),
                hit_for_pass: DEFAULT_HIT_FOR_PASS,
            }),
            state: Arc::new(State {
                locks: store.redis_handle().cloned().map(|redis| redlayer_lock::Locks::redis(redis).fencing(false)),
                store,
                flights: Arc::new(Flights::default()),
                epoch: AtomicU64::new(0),
                invalidated: Invalidated::default(),
                refreshing: Default::default(),
            }),
        }
    }

    fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Largest body stored (default 1 MiB). Larger bodies stream through unstored.
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.config(|c| c.max_body = bytes)
    }

    /// The response header whose comma- or space-separated values tag an
    /// entry (default `Cache-Tag`; `Surrogate-Key` is common). `None`: no tags.
    pub fn tag_header(self, name: Option<HeaderName>) -> Self {
        self.config(|c| c.tag_header = name)
    }

    /// A custom primary key: `None` bypasses the cache for that request. The
    /// default is `GET <normalized URI>` ([`key::default_key`]). It is also
    /// called, with a synthetic GET request, to find the entries an unsafe
    /// request invalidates.
    pub fn key_fn(self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.config(|c| c.key_fn = Arc::new(f))
    }

    /// A namespace (tenant) for each request, put in front of its key.
    pub fn namespace(self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.config(|c| c.namespace = Some(Arc::new(f)))
    }

    /// The cache's name in `Cache-Status` (default `redlayer`). A name that
    /// is not a structured-field token (`Example CDN`) is written as a
    /// quoted string (RFC 9211 2); characters outside printable ASCII are dropped.
    pub fn status_name(self, name: impl Into<String>) -> Self {
        let name = crate::status::member_name(&name.into());
        self.config(|c| {
            c.status_arc = Arc::from(name.as_str());
            c.status_name = name;
        })
    }

    /// How long a stale entry with a validator is kept for revalidation
    /// after its freshness (plus any stale-while-revalidate / stale-if-error
    /// window) ends (default 300 s). Entries without a validator are kept at
    /// most 10 s more (a grace to answer stale while the origin is
    /// unreachable, see [`OriginUnreachable`](crate::OriginUnreachable)).
    pub fn stale_retention(self, d: Duration) -> Self {
        self.config(|c| c.stale_retention = d)
    }

    /// Probabilistic early refresh (XFetch): a fresh hit triggers one
    /// background refresh when `fetch_time * beta * -ln(rand) >= ttl left`.
    /// `beta` 1.0 is the usual choice; 0 (default) turns it off.
    pub fn xfetch(self, beta: f64) -> Self {
        self.config(|c| c.xfetch_beta = beta.max(0.0))
    }

    /// How long a request waits for a concurrent fill of its key before it
    /// goes to the origin itself (default 5 s; at most a year, so that
    /// `Duration::MAX`, "as long as it takes", is a deadline that exists).
    pub fn coalesce_timeout(self, d: Duration) -> Self {
        self.config(|c| c.coalesce_timeout = d.min(crate::store::MAX_TTL))
    }

    /// Hit-for-pass (Varnish's hit-for-miss): when the origin's response to
    /// a miss is not storable (no freshness, `private`, `no-store`,
    /// `Set-Cookie`, too large by `Content-Length`...), the key is marked for
    /// `d` (default 30 s; zero disables) and its following misses go straight
    /// to the origin, without waiting for a concurrent fill or taking the
    /// cross-instance fill lock. The marker is a field of the entry's hash,
    /// read by the lookup's own round trip, so every instance sees it; it
    /// never serves a response: a storable response is still stored (which
    /// clears the marker), and an unsafe request or a purge of the key
    /// removes it. Cost of a repeated uncacheable GET on Redis: one `HMGET`
    /// instead of two `HMGET`s plus the lock's acquire and release.
    /// `Cache-Status` of such a request: `fwd=uri-miss; ...; detail=hit-for-pass`.
    pub fn hit_for_pass(self, d: Duration) -> Self {
        self.config(|c| c.hit_for_pass = d.min(crate::store::MAX_TTL))
    }

    /// Store responses that carry `Set-Cookie` (when otherwise storable);
    /// the cookie itself is never stored or served from the cache. Default: false.
    pub fn store_set_cookie(self, yes: bool) -> Self {
        self.config(|c| c.store_set_cookie = yes)
    }

    /// Store responses that carry `Set-Cookie` *with* the cookie, and send it
    /// with every hit, as RFC 9111 3.1 has a shared cache store every header
    /// field. Only for origins that mark per-user answers `private` or
    /// `no-store`: otherwise one client's cookie reaches others. For a
    /// standards-following reverse proxy (see `examples/cache_proxy.rs`).
    /// Default: false.
    pub fn replay_set_cookie(self, yes: bool) -> Self {
        self.config(|c| c.replay_set_cookie = yes)
    }

    /// The fraction of (Date - Last-Modified) used as heuristic freshness (default 0.1).
    pub fn heuristic_fraction(self, f: f32) -> Self {
        self.config(|c| c.opts.cache_heuristic = f)
    }

    /// The store this layer uses.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    fn bump(&self) {
        self.state.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs `purge` once more after 2 s (in the background), also after a
    /// first pass that failed (then it is the retry). Fills in flight on
    /// other instances are stopped by the entries' generations (see the
    /// crate docs); the second pass catches what gets past them (an entry
    /// tagged after the purge read the tag's index).
    fn recheck<F>(&self, purge: impl FnOnce(Store) -> F + Send + 'static)
    where
        F: std::future::Future + Send + 'static,
    {
        let (store, delay) = (self.state.store.clone(), self.config.purge_recheck);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(delay).await;
                purge(store).await;
            });
        }
    }

    /// Deletes every entry tagged `tag`. Fills in flight in this process are
    /// not stored, and the tag is purged once more after 2 s to catch fills
    /// finishing on other instances.
    pub async fn purge_tag(&self, tag: &str) -> Result<usize> {
        self.bump();
        let n = self.state.store.purge_tag(tag).await;
        let tag = tag.to_owned();
        self.recheck(move |store| async move { store.purge_tag(&tag).await });
        n
    }

    /// Deletes the entry (every variant) of a primary key as built by the key
    /// function (default: `GET http://host/path?query`, see [`key::default_key`]).
    /// Fills in flight in this process are not stored, and the key is deleted
    /// once more after 2 s to catch fills finishing on other instances.
    pub async fn purge_key(&self, primary: &str) -> Result<bool> {
        self.bump();
        let key = self.state.store.entry_key(primary);
        let deleted = self.state.store.delete_entry_key(&key).await;
        self.recheck(move |store| async move { store.delete_entry_key(&key).await });
        deleted
    }

    /// Deletes the entry of an absolute URI under the default key function.
    pub async fn purge_uri(&self, uri: &str) -> Result<bool> {
        let uri: http::Uri = uri.parse().map_err(|e| redlayer_core::Error::InvalidInput(format!("uri: {e}")))?;
        let parts = http::Request::get(uri).body(()).map_err(|e| redlayer_core::Error::InvalidInput(e.to_string()))?;
        let primary = key::default_key(&parts.into_parts().0).unwrap_or_default();
        self.purge_key(&primary).await
    }

    /// Deletes every entry whose normalized URI starts with `uri_prefix`
    /// (`SCAN`, never `KEYS`; on a cluster every master is scanned), and
    /// once more after 2 s, as [`CacheLayer::purge_key`].
    pub async fn purge_prefix(&self, uri_prefix: &str) -> Result<usize> {
        self.bump();
        let n = self.state.store.purge_prefix(uri_prefix).await;
        let prefix = uri_prefix.to_owned();
        self.recheck(move |store| async move { store.purge_prefix(&prefix).await });
        n
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache { inner, config: self.config.clone(), state: self.state.clone() }
    }
}
