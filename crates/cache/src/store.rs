//! [`Store`]: where entries live, Redis or memory, with the same semantics.
//!
//! Redis layout (see `docs/KEYS.md`):
//!
//! - `{prefix}:cache:{<primary key>}`: a HASH per primary key (method + URI):
//!   field `uri` (the normalized URI, for prefix purges), field `vary` (the
//!   Vary spec of the stored variants) and one field `v:<variant id>` per
//!   variant (an encoded [`Entry`](crate::entry::Entry)). Expires with its
//!   longest-lived variant. Written by one Lua script (`scripts/store.lua`),
//!   single key, so it is cluster-safe.
//!   A `pass` field (written by `scripts/pass.lua`) holds a hit-for-pass
//!   deadline (ms since the Unix epoch, from Redis `TIME`): the last
//!   response of this key was not storable, so misses skip coalescing until
//!   then. It is read by the lookup's `HMGET` (no extra round trip) and
//!   removed by `store.lua` when a storable response is stored.
//! - `{prefix}:cachetag:{<tag>}`: a SET of entry keys carrying that tag.
//!   A tag index can not share a slot with every entry it names, so it lives
//!   in the tag's own slot and a purge deletes each member with its own
//!   single-key `DEL` (no multi-key command ever crosses slots).
//! - `{prefix}:cacheval:{<key>}`: a STRING per cache-aside value.
//!
//! With [`Store::with_near_cache`], hits are also kept in process memory (a
//! [`NearCache`] from redlayer-core, invalidated by Redis client tracking).

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use redlayer_core::{
    Error, KeyBuilder, KeyPart, NearCache, Redis, Result,
    memory::{Clock, ExpiringMap, SystemClock, Update},
};

use crate::key::variant_id;

static STORE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/store.lua")));
static PASS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/pass.lua")));
static TAG: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/tag.lua")));
static REINDEX: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("scripts/reindex.lua")));
static INVALIDATE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/invalidate.lua")));

/// How long an invalidated entry keeps its generation (see `invalidate.lua`):
/// a fill that looked the key up longer ago than this before an invalidation
/// (on another instance) may still store what it fetched.
pub(crate) const INVALIDATED_GENERATION_KEPT: Duration = Duration::from_secs(600);

/// Invalidations sent at once by a purge of many keys.
const INVALIDATIONS_IN_FLIGHT: usize = 32;

/// How long the store is skipped after Redis failed (it steps aside instead
/// of making every request wait for a timeout).
const BACKOFF: Duration = Duration::from_millis(500);
const BACKOFF_MSG: &str = "redis failed recently; the cache steps aside for a moment";
const MAX_SPEC_GUESSES: usize = 10_000;
/// The most variants (responses for different values of the `Vary`
/// headers) kept per entry: a new one beyond that replaces another, so
/// clients sending ever new header values cannot grow one entry without bound.
pub const MAX_VARIANTS: usize = 32;

pub use redlayer_core::memory::DEFAULT_MEMORY_BUDGET;

/// What an entry, a variant or a tag member costs besides its bytes (map
/// slots, allocations), for the memory budget.
const ENTRY_OVERHEAD: usize = 64;

/// How many parts the memory store splits each tag's index into.
const MEMORY_TAG_BUCKETS: usize = 16;

/// What a tag's index weighs in the memory store's budget.
fn tag_weight(members: &HashMap<String, Duration>) -> usize {
    members.keys().map(|k| k.len() + ENTRY_OVERHEAD).sum::<usize>() + ENTRY_OVERHEAD
}

/// Brings a memory tag index heavier than `limit` down to 7/8 of it (so
/// that a stream of new members sorts it once per eighth, not every time):
/// the members closest to expiry go, never `newest`. Returns them: their
/// entries must go too.
fn make_room(members: &mut HashMap<String, Duration>, newest: &str, limit: usize) -> Vec<String> {
    let weight = tag_weight(members);
    if weight <= limit {
        return Vec::new();
    }
    let mut excess = weight - (limit - limit / 8);
    let mut by_expiry: Vec<(Duration, String)> =
        members.iter().filter(|(k, _)| k.as_str() != newest).map(|(k, at)| (*at, k.clone())).collect();
    by_expiry.sort_unstable();
    let mut gone = Vec::new();
    for (_, member) in by_expiry {
        if excess == 0 {
            break;
        }
        excess = excess.saturating_sub(member.len() + ENTRY_OVERHEAD);
        members.remove(&member);
        gone.push(member);
    }
    gone
}
/// The longest a near-cache copy is kept (Redis's pushes drop it sooner
/// when its key changes; freshness is decided on every hit anyway).
const NEAR_TTL: Duration = Duration::from_secs(30);

/// A variant held by the near cache: what the lookup's `HMGET` found.
struct NearHit {
    spec: String,
    field: String,
    value: Bytes,
    pass_until_ms: Option<u64>,
    generation: u64,
}

impl NearHit {
    fn weight(hit: &Arc<NearHit>) -> usize {
        // The key (not seen here) is counted as a typical one.
        hit.spec.len() + hit.field.len() + hit.value.len() + 2 * ENTRY_OVERHEAD + 64
    }
}

#[derive(Debug, Clone, Default)]
struct MemHash {
    uri: String,
    spec: String,
    variants: HashMap<String, Bytes>,
    /// Hit-for-pass deadline (ms on the store's clock), 0: none.
    pass_until_ms: u64,
    /// When the entry expires (the store's clock): it lives as long as its
    /// longest-lived variant, as `store.lua` keeps it in Redis.
    expires_at: Duration,
}

enum Backend {
    Memory {
        entries: ExpiringMap<String, Arc<MemHash>>,
        /// Tag index → entry key → when that entry expires (the memory clock).
        tags: ExpiringMap<String, HashMap<String, Duration>>,
        clock: Arc<dyn Clock>,
    },
    Redis(Redis),
}

struct Inner {
    backend: Backend,
    keys: KeyBuilder,
    /// Last Vary spec seen per entry key: lets a lookup be one round trip.
    specs: Mutex<HashMap<String, String>>,
    /// How many specs `specs` holds (read without the lock: most entries
    /// have no Vary, and then a lookup need not take it).
    spec_count: AtomicUsize,
    down_until_ms: AtomicU64,
    near: OnceLock<NearCache<Arc<NearHit>>>,
}

/// The storage of cached responses and cache-aside values: Redis (shared by
/// every instance) or memory (one process). Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner.backend {
            Backend::Memory { .. } => "memory",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("Store").field("backend", &kind).finish()
    }
}

/// One looked-up variant.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub value: Bytes,
}

/// What a lookup found: the matching variant, and the hit-for-pass deadline
/// of the key if it has one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lookup {
    pub found: Option<Found>,
    /// The `pass` deadline (ms since the Unix epoch), if set.
    pub pass_until_ms: Option<u64>,
    /// Now, on the clock the deadline is compared with (ms since the Unix epoch).
    pub now_ms: u64,
    /// The entry's generation (bumped by each invalidation; 0 in memory,
    /// where this process's own records of invalidations are enough): a
    /// response fetched after this lookup is stored only if it is unchanged.
    pub generation: u64,
    /// Responses are stored for the URI, but none for this request's values
    /// of the fields they vary on (`Cache-Status: fwd=vary-miss`).
    pub vary_miss: bool,
}

impl Lookup {
    /// True while a hit-for-pass marker is in force. A deadline further away
    /// than `max` (plus a second of clock skew between Redis and this
    /// process) is ignored, so a skewed clock can only shorten a marker.
    pub fn pass(&self, max: Duration) -> bool {
        if max.is_zero() {
            return false;
        }
        let limit = self.now_ms.saturating_add(max.as_millis() as u64).saturating_add(1000);
        self.pass_until_ms.is_some_and(|until| until > self.now_ms && until <= limit)
    }
}

/// Longest time anything is kept (a hostile `max-age` cannot overflow a clock).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn bound(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_millis(1), MAX_TTL)
}

/// The hash field of a variant: `v:<variant id>` (`v:` when nothing varies).
fn variant_field(spec: &str, req: &HeaderMap) -> std::borrow::Cow<'static, str> {
    if spec.is_empty() {
        return std::borrow::Cow::Borrowed("v:");
    }
    std::borrow::Cow::Owned(format!("v:{}", variant_id(spec, req)))
}

/// What a lookup's `HMGET` reads: the Vary spec, the variant, the `pass` deadline.
type Fields = (Option<String>, Option<Vec<u8>>, Option<String>, Option<String>);

/// How long a near copy may live: [`NEAR_TTL`], and never past the key's
/// own expiry (`PTTL`: -1 none, -2 gone).
fn near_ttl(pttl: i64) -> Duration {
    match pttl {
        -1 => NEAR_TTL,
        ms if ms > 0 => NEAR_TTL.min(Duration::from_millis(ms as u64)),
        _ => Duration::ZERO,
    }
}

fn now_ms() -> u64 {
    SystemClock.now().as_millis() as u64
}

impl MemHash {
    /// About the memory it holds, for the memory store's budget.
    fn weight(hash: &Arc<MemHash>) -> usize {
        let variants: usize = hash.variants.iter().map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD).sum();
        hash.uri.len() + hash.spec.len() + variants + ENTRY_OVERHEAD
    }
}

impl Store {
    /// A store in Redis: shared by every instance on that Redis.
    pub fn redis(redis: Redis) -> Self {
        let keys = redis.keys().clone();
        Self::build(Backend::Redis(redis), keys)
    }

    /// A store in this process's memory, holding at most
    /// [`DEFAULT_MEMORY_BUDGET`] bytes of entries.
    pub fn memory() -> Self {
        Self::memory_with_budget(DEFAULT_MEMORY_BUDGET)
    }

    /// A store in this process's memory holding about `max_bytes` of entries
    /// (bodies, headers, keys) and a quarter of that of tag sets. Past it,
    /// expired entries are dropped first, then those closest to expiry, as
    /// Redis does under `maxmemory` with `volatile-ttl`; an entry larger than a
    /// sixteenth of the budget is not stored. A tag's index is kept in 16
    /// parts, each at most half of what the map keeps per shard (about
    /// 280,000 members in all at the default budget): past that, the members
    /// closest to expiry make room and their entries are dropped with them; a tag index dropped for the budget takes
    /// its entries too. So every entry kept is in its tags' indexes, and a
    /// purge by tag never misses one.
    pub fn memory_with_budget(max_bytes: usize) -> Self {
        Self::memory_with(Arc::new(SystemClock), max_bytes)
    }

    /// A memory store whose keys expire on the given clock (for tests of
    /// expiry; freshness decisions always use the system clock).
    pub fn memory_with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::memory_with(clock, DEFAULT_MEMORY_BUDGET)
    }

    /// About the memory the memory store's entries and tags hold, in bytes
    /// (`None` for Redis, whose `INFO memory` tells).
    pub fn memory_used(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Memory { entries, tags, .. } => Some(entries.weight() + tags.weight()),
            Backend::Redis(_) => None,
        }
    }

    fn memory_with(clock: Arc<dyn Clock>, max_bytes: usize) -> Self {
        Self::build(
            Backend::Memory {
                entries: ExpiringMap::with_clock(clock.clone()).weighed(max_bytes, MemHash::weight),
                // A tag index dropped for the budget takes its entries with it (see `add_tag`).
                tags: ExpiringMap::with_clock(clock.clone()).weighed(max_bytes / 4, tag_weight).reporting_evictions(),
                clock,
            },
            KeyBuilder::default(),
        )
    }

    fn build(backend: Backend, keys: KeyBuilder) -> Self {
        Store {
            inner: Arc::new(Inner {
                backend,
                keys,
                specs: Mutex::new(HashMap::new()),
                spec_count: AtomicUsize::new(0),
                down_until_ms: AtomicU64::new(0),
                near: OnceLock::new(),
            }),
        }
    }

    /// Also keeps hits in this process's memory (at most `max_bytes`), so
    /// that a hot entry is served without a Redis round trip. Copies stay
    /// coherent through Redis's client tracking (a [`NearCache`]): when any
    /// instance stores, purges or invalidates an entry, Redis tells every
    /// instance, which drops its copy as soon as that message is read
    /// (Redis sends it as it answers the write; this instance's own writes drop
    /// it at once). A request served in that window may still get the old
    /// copy: leave this off where a purge must be seen everywhere at once.
    /// While the tracking connection is down no copy is served; when it
    /// breaks silently (a network partition), copies are dropped within the
    /// heartbeat (a second) plus the handle's timeout. A copy never outlives
    /// its Redis key (each read also asks `PTTL`), nor 30 s.
    ///
    /// For a Redis store whose handle was built from a URL or cluster nodes
    /// (not from a pool); a memory store is returned as it is. Must be
    /// called within a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), redlayer_core::Error> {
    /// use redlayer_cache::{CacheLayer, Store};
    ///
    /// let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
    /// let store = Store::redis(redis).with_near_cache(64 << 20)?;
    /// let layer = CacheLayer::with_store(store);
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn with_near_cache(self, max_bytes: usize) -> Result<Self> {
        let Backend::Redis(redis) = &self.inner.backend else { return Ok(self) };
        // Entries and cache-aside values; not the tag sets (their changes
        // would only send pushes that invalidate nothing).
        let prefix = self.inner.keys.prefix();
        let (entries, values) = (format!("{prefix}:cache:"), format!("{prefix}:cacheval:"));
        let near = NearCache::start(redis, &[&entries, &values], max_bytes, NearHit::weight)?;
        if self.inner.near.set(near).is_err() {
            return Err(Error::InvalidInput("this store already has a near cache".into()));
        }
        Ok(self)
    }

    /// The near cache's copies (see [`Store::with_near_cache`]), if any.
    pub fn near_cache_len(&self) -> Option<usize> {
        self.inner.near.get().map(NearCache::len)
    }

    /// Drops this process's copy of `key` (after its own write of it).
    fn forget(&self, key: &str) {
        if let Some(near) = self.inner.near.get() {
            near.remove(key);
        }
    }

    /// The Redis handle of the Redis backend.
    pub fn redis_handle(&self) -> Option<&Redis> {
        match &self.inner.backend {
            Backend::Redis(redis) => Some(redis),
            Backend::Memory { .. } => None,
        }
    }

    /// True for the Redis backend.
    pub fn is_redis(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    /// The Redis key of the entry hash of a primary key.
    pub fn entry_key(&self, primary: &str) -> String {
        self.inner.keys.key("cache", &KeyPart::client(primary))
    }

    /// Whether `key` is an entry hash's key (not a cache-aside value's).
    fn is_entry_key(&self, key: &str) -> bool {
        key.strip_prefix(self.inner.keys.prefix()).is_some_and(|rest| rest.starts_with(":cache:"))
    }

    fn tag_key(&self, tag: &str) -> String {
        self.inner.keys.key("cachetag", &KeyPart::client(tag))
    }

    /// The memory store's index of `tag` holding `member`: one of
    /// [`MEMORY_TAG_BUCKETS`], by the member's hash, so that a tag on many
    /// entries spreads over the map's shards instead of filling one.
    fn memory_tag_bucket(&self, tag: &str, member: &str) -> String {
        use std::hash::BuildHasher as _;
        let hash =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(member);
        let bucket = hash as usize % MEMORY_TAG_BUCKETS;
        format!("{}#{bucket}", self.tag_key(tag))
    }

    fn value_key(&self, key: &str) -> String {
        self.inner.keys.key("cacheval", &KeyPart::client(key))
    }

    fn live(&self) -> Result<&Redis> {
        match &self.inner.backend {
            Backend::Redis(redis) => {
                if now_ms() < self.inner.down_until_ms.load(Ordering::Relaxed) {
                    return Err(Error::Unavailable(BACKOFF_MSG.into()));
                }
                Ok(redis)
            }
            Backend::Memory { .. } => Err(Error::InvalidInput("not a redis store".into())),
        }
    }

    fn observe<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && e.is_unavailable()
            && !matches!(e, Error::Unavailable(m) if m == BACKOFF_MSG)
        {
            self.inner.down_until_ms.store(now_ms() + BACKOFF.as_millis() as u64, Ordering::Relaxed);
        }
        result
    }

    fn guess(&self, key: &str) -> String {
        if self.inner.spec_count.load(Ordering::Relaxed) == 0 {
            return String::new();
        }
        self.inner.specs.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned().unwrap_or_default()
    }

    fn remember(&self, key: &str, spec: &str) {
        let mut specs = self.inner.specs.lock().unwrap_or_else(|p| p.into_inner());
        if spec.is_empty() {
            specs.remove(key);
        } else {
            if specs.len() >= MAX_SPEC_GUESSES {
                specs.clear();
            }
            specs.insert(key.to_owned(), spec.to_owned());
        }
        self.inner.spec_count.store(specs.len(), Ordering::Relaxed);
    }

    /// The stored variant of `key` that matches the request headers.
    pub(crate) async fn lookup(&self, key: &str, req: &HeaderMap) -> Result<Lookup> {
        match &self.inner.backend {
            Backend::Memory { entries, clock, .. } => {
                let now_ms = clock.now().as_millis() as u64;
                Ok(entries.get(key).map_or(Lookup { now_ms, ..Lookup::default() }, |h| {
                    let field = variant_id(&h.spec, req);
                    let found = h.variants.get(&field).map(|v| Found { value: v.clone() });
                    Lookup {
                        vary_miss: found.is_none() && !h.spec.is_empty() && !h.variants.is_empty(),
                        found,
                        pass_until_ms: (h.pass_until_ms > 0).then_some(h.pass_until_ms),
                        now_ms,
                        generation: 0,
                    }
                }))
            }
            Backend::Redis(_) => {
                let result = self.lookup_redis(key, req).await;
                self.observe(result)
            }
        }
    }

    async fn lookup_redis(&self, key: &str, req: &HeaderMap) -> Result<Lookup> {
        let guess = self.guess(key);
        let field = variant_field(&guess, req);
        let near = self.inner.near.get();
        if let Some(hit) = near.and_then(|near| near.get(key))
            && hit.spec == guess
            && hit.field == field
        {
            let found = Some(Found { value: hit.value.clone() });
            return Ok(Lookup {
                found,
                pass_until_ms: hit.pass_until_ms,
                now_ms: now_ms(),
                generation: hit.generation,
                vary_miss: false,
            });
        }
        let ticket = near.map(|near| near.ticket(key));
        let redis = self.live()?;
        let mut conn = redis.connection().await?;
        // One round trip: the Vary spec, the guessed variant, the
        // hit-for-pass deadline and the generation (and, for a near copy, how
        // long the key lives).
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(key).arg("vary").arg(&field).arg("pass").arg("gen");
        let ((spec, value, pass, generation), pttl): (Fields, i64) = match near {
            None => (hmget.query_async(&mut conn).await?, -1),
            Some(_) => redis::pipe().add_command(hmget).cmd("PTTL").arg(key).query_async(&mut conn).await?,
        };
        let mut looked = Lookup {
            found: None,
            pass_until_ms: pass.and_then(|p| p.trim().parse::<u64>().ok()),
            now_ms: now_ms(),
            generation: generation.and_then(|g| g.parse().ok()).unwrap_or(0),
            vary_miss: false,
        };
        let Some(spec) = spec else { return Ok(looked) };
        if spec == guess {
            looked.vary_miss = value.is_none() && !spec.is_empty();
            looked.found = value.map(|v| Found { value: Bytes::from(v) });
            if let (Some(near), Some(ticket), Some(found)) = (near, ticket, &looked.found) {
                let hit = NearHit {
                    spec,
                    field: field.into_owned(),
                    value: found.value.clone(),
                    pass_until_ms: looked.pass_until_ms,
                    generation: looked.generation,
                };
                near.insert(ticket, key, Arc::new(hit), near_ttl(pttl));
            }
            return Ok(looked);
        }
        self.remember(key, &spec);
        let field = variant_field(&spec, req);
        let value: Option<Vec<u8>> = redis::cmd("HGET").arg(key).arg(&field).query_async(&mut conn).await?;
        looked.vary_miss = value.is_none() && !spec.is_empty();
        looked.found = value.map(|v| Found { value: Bytes::from(v) });
        Ok(looked)
    }

    /// Records that `key`'s last origin response was not storable: until
    /// `ttl` from now, misses of it skip coalescing (hit-for-pass). Stored
    /// responses clear it ([`Store::put`]).
    pub(crate) async fn mark_pass(&self, key: &str, uri: &str, ttl: Duration) -> Result<()> {
        let ttl = bound(ttl);
        let ttl_ms = ttl.as_millis() as u64;
        match &self.inner.backend {
            Backend::Memory { entries, .. } => {
                entries.update(key.to_owned(), |old, now| {
                    let until = (now.as_millis() as u64).saturating_add(ttl_ms);
                    match old {
                        // As pass.lua: the hash lives at least as long as the marker.
                        Some(hash) => {
                            let hash = Arc::make_mut(hash);
                            hash.pass_until_ms = until;
                            hash.expires_at = hash.expires_at.max(now + ttl);
                            (Update::KeepExtendingTtl(Some(ttl)), ())
                        }
                        None => {
                            let hash = MemHash {
                                uri: uri.to_owned(),
                                pass_until_ms: until,
                                expires_at: now + ttl,
                                ..MemHash::default()
                            };
                            (Update::Set(Arc::new(hash), Some(ttl)), ())
                        }
                    }
                });
                Ok(())
            }
            Backend::Redis(_) => {
                let result = async {
                    let redis = self.live()?;
                    let mut conn = redis.connection().await?;
                    let _: i64 = PASS.key(key).arg(uri).arg(ttl_ms).invoke_async(&mut conn).await?;
                    Ok(())
                }
                .await;
                self.forget(key);
                self.observe(result)
            }
        }
    }

    /// Stores one variant (replacing all variants when the Vary spec changed),
    /// unless the entry was invalidated since the lookup that saw
    /// `generation` (`None`: no check): `Ok(false)` then.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put(
        &self,
        key: &str,
        uri: &str,
        spec: &str,
        variant: &str,
        value: Bytes,
        ttl: Duration,
        generation: Option<u64>,
    ) -> Result<bool> {
        let ttl = bound(ttl);
        match &self.inner.backend {
            Backend::Memory { entries, .. } => {
                entries.update(key.to_owned(), |old, now| {
                    // As store.lua: another Vary spec replaces the stored
                    // variants; a hash holding only a hit-for-pass marker is kept
                    // (with its expiry, if later).
                    let mut hash = match old {
                        Some(h) if h.spec == spec || h.variants.is_empty() => Arc::unwrap_or_clone(std::mem::take(h)),
                        _ => MemHash::default(),
                    };
                    hash.uri = uri.to_owned();
                    hash.spec = spec.to_owned();
                    hash.pass_until_ms = 0;
                    if hash.variants.len() >= MAX_VARIANTS
                        && !hash.variants.contains_key(variant)
                        && let Some(other) = hash.variants.keys().next().cloned()
                    {
                        hash.variants.remove(&other);
                    }
                    hash.variants.insert(variant.to_owned(), value);
                    hash.expires_at = hash.expires_at.max(now + ttl);
                    let ttl = hash.expires_at - now;
                    (Update::Set(Arc::new(hash), Some(ttl)), ())
                });
                Ok(true)
            }
            Backend::Redis(_) => {
                let result = async {
                    let redis = self.live()?;
                    let mut conn = redis.connection().await?;
                    let stored: i64 = STORE
                        .key(key)
                        .arg(uri)
                        .arg(spec)
                        .arg(format!("v:{variant}"))
                        .arg(value.as_ref())
                        .arg(ttl.as_millis() as u64)
                        .arg(MAX_VARIANTS)
                        .arg(generation.map(|g| g.to_string()).unwrap_or_default())
                        .invoke_async(&mut conn)
                        .await?;
                    if stored == 1 {
                        self.remember(key, spec);
                    }
                    Ok(stored == 1)
                }
                .await;
                // Also after a failure: the write may have happened.
                self.forget(key);
                self.observe(result)
            }
        }
    }

    /// Deletes the entry hash (every variant) of an entry key; on Redis its
    /// generation stays for a while, so that fills that looked it up before,
    /// on any instance, do not store (see `scripts/invalidate.lua`).
    pub async fn delete_entry_key(&self, key: &str) -> Result<bool> {
        match &self.inner.backend {
            Backend::Memory { entries, .. } => Ok(entries.remove(&key.to_owned())),
            Backend::Redis(_) => {
                // Within the back-off after a failure, fail at once instead of
                // waiting for the timeout (an invalidation holds its response).
                let redis = match self.live() {
                    Ok(redis) => redis,
                    Err(e) => {
                        self.forget(key);
                        return Err(e);
                    }
                };
                let result = async {
                    let mut conn = redis.connection().await?;
                    let n: i64 = INVALIDATE
                        .key(key)
                        .arg(INVALIDATED_GENERATION_KEPT.as_millis() as u64)
                        .arg(if self.is_entry_key(key) { "1" } else { "0" })
                        .invoke_async(&mut conn)
                        .await?;
                    Ok(n > 0)
                }
                .await;
                self.forget(key);
                self.observe(result)
            }
        }
    }

    /// Whether every index of `tags` still names `key` (memory only; true on
    /// Redis): a memory index crowded out or evicted between the tagging and
    /// the write took along an entry that was not there yet, so the caller
    /// drops the entry it just wrote.
    pub(crate) fn tags_hold(&self, key: &str, tags: &[String]) -> bool {
        match &self.inner.backend {
            Backend::Memory { tags: indexes, .. } => tags.iter().all(|tag| {
                let bucket = self.memory_tag_bucket(tag, key);
                indexes.update(bucket, |set, _| (Update::Keep, set.is_some_and(|s| s.contains_key(key))))
            }),
            Backend::Redis(_) => true,
        }
    }

    /// Records that the entry key carries `tag`.
    pub(crate) async fn add_tag(&self, tag: &str, key: &str, ttl: Duration) -> Result<()> {
        let tag_key = self.tag_key(tag);
        let ttl = bound(ttl);
        match &self.inner.backend {
            Backend::Memory { entries, tags, .. } => {
                // Half a shard at most: one site-wide tag must not push every
                // other index of its shard out (with their entries).
                let limit = tags.max_entry_weight().map_or(usize::MAX, |shard| shard / 2);
                let crowded_out = tags.update(self.memory_tag_bucket(tag, key), |old, now| {
                    let mut set = old.map(std::mem::take).unwrap_or_default();
                    // As tag.lua: members whose entries expired go as new ones come
                    // (in passes, each time the index has doubled).
                    if set.len() >= 64 && set.len().is_power_of_two() {
                        set.retain(|_, expires| *expires > now);
                    }
                    let expires = now.saturating_add(ttl);
                    let slot = set.entry(key.to_owned()).or_insert(expires);
                    *slot = (*slot).max(expires);
                    // An index may not outgrow what the map keeps of one
                    // entry (it would be dropped, and a purge of the tag
                    // would miss its entries): its members closest to expiry
                    // make room, and their entries go (below).
                    let crowded_out = make_room(&mut set, key, limit);
                    // The index lives as long as its longest-lived member.
                    let longest = set.values().max().map_or(ttl, |last| last.saturating_sub(now));
                    (Update::Set(set, Some(longest.max(Duration::from_secs(1)))), crowded_out)
                });
                // So do the entries of other tags' indexes dropped for the budget.
                let evicted = tags.take_evicted().into_iter().flat_map(|(_, members)| members.into_keys());
                for member in crowded_out.into_iter().chain(evicted) {
                    entries.remove(&member);
                }
                Ok(())
            }
            Backend::Redis(redis) => {
                let result = async {
                    let mut conn = redis.connection().await?;
                    let _: i64 = TAG.key(&tag_key).arg(key).arg(ttl.as_millis() as u64).invoke_async(&mut conn).await?;
                    Ok(())
                }
                .await;
                self.observe(result)
            }
        }
    }

    /// Deletes every entry (and value) tagged `tag`, taking each batch of
    /// members out of the tag index first.
    /// Returns how many entries were deleted.
    pub async fn purge_tag(&self, tag: &str) -> Result<usize> {
        let tag_key = self.tag_key(tag);
        match &self.inner.backend {
            Backend::Memory { entries, tags, .. } => {
                // The members read leave the index; one added meanwhile (a
                // fill finishing now) stays for the next purge.
                let mut members: Vec<String> = Vec::new();
                for bucket in 0..MEMORY_TAG_BUCKETS {
                    tags.update(format!("{tag_key}#{bucket}"), |set, _| match set {
                        Some(set) => {
                            members.extend(std::mem::take(set).into_keys());
                            (Update::Remove, ())
                        }
                        None => (Update::Keep, ()),
                    });
                }
                let mut n = 0;
                for key in members {
                    if entries.remove(&key) {
                        n += 1;
                    }
                }
                Ok(n)
            }
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let mut cursor: u64 = 0;
                let mut n = 0;
                loop {
                    // Members and their scores, alternately.
                    let (next, scanned): (u64, Vec<String>) = redis::cmd("ZSCAN")
                        .arg(&tag_key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn)
                        .await?;
                    let members: Vec<String> = scanned.iter().step_by(2).cloned().collect();
                    // Only the members read leave the index, before their
                    // entries go: one a fill adds (or tags again) meanwhile
                    // stays, for the next purge to find (deleting the whole
                    // index, or unindexing after the delete, would hide it).
                    if !members.is_empty() {
                        let _: i64 = redis::cmd("ZREM").arg(&tag_key).arg(&members).query_async(&mut conn).await?;
                    }
                    match self.del_each(redis, &members).await {
                        Ok(deleted) => n += deleted,
                        Err(error) => {
                            // Put them back (with their scores), so that the
                            // purge tried again finds them.
                            let mut reindex = REINDEX.key(&tag_key);
                            for pair in scanned.chunks_exact(2) {
                                reindex.arg(&pair[1]).arg(&pair[0]);
                            }
                            let readded: Result<i64> = async {
                                let mut conn = redis.connection().await?;
                                Ok(reindex.invoke_async(&mut conn).await?)
                            }
                            .await;
                            if let Err(e) = readded {
                                tracing::warn!(target: "redlayer", error = %e, "cache: a failed tag purge could not re-index its entries");
                            }
                            return Err(error);
                        }
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                Ok(n)
            }
        }
    }

    /// Invalidates keys as [`Store::delete_entry_key`] does (a cache-aside
    /// value is deleted), up to 32 at a time: on one connection they go out
    /// together; on a cluster each goes to its key's master.
    async fn del_each(&self, redis: &Redis, keys: &[String]) -> Result<usize> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        if keys.is_empty() {
            return Ok(0);
        }
        let _forget = Forget { store: self, keys };
        let kept = INVALIDATED_GENERATION_KEPT.as_millis() as u64;
        let counts: Vec<i64> = futures_util::stream::iter(keys.to_vec())
            .map(|key| {
                let redis = redis.clone();
                let entry = if self.is_entry_key(&key) { "1" } else { "0" };
                async move {
                    let mut conn = redis.connection().await?;
                    let n: i64 = INVALIDATE.key(&key).arg(kept).arg(entry).invoke_async(&mut conn).await?;
                    Ok::<_, redlayer_core::Error>(n)
                }
            })
            .buffer_unordered(INVALIDATIONS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(counts.iter().filter(|n| **n > 0).count())
    }

    /// Deletes every entry whose normalized URI starts with `uri_prefix`
    /// (e.g. `http://example.com/products/`), with `SCAN` (never `KEYS`).
    /// On a cluster, every master is scanned, on connections made with the
    /// credentials and TLS settings of the handle's first node URL (a handle
    /// made with `from_cluster_pool` has none: plain TCP, no password).
    pub async fn purge_prefix(&self, uri_prefix: &str) -> Result<usize> {
        match &self.inner.backend {
            Backend::Memory { entries, .. } => {
                // ExpiringMap has no iteration: list the keys with a no-op remove_where.
                let mut keys = Vec::new();
                entries.remove_where(|k| {
                    keys.push(k.clone());
                    false
                });
                let doomed: Vec<String> = keys
                    .into_iter()
                    // Cache-aside values have no URI (on Redis, keys of another kind).
                    .filter(|k| entries.get(k).is_some_and(|h| !h.uri.is_empty() && h.uri.starts_with(uri_prefix)))
                    .collect();
                Ok(doomed.iter().filter(|k| entries.remove(k)).count())
            }
            Backend::Redis(redis) => {
                if redis.is_cluster() {
                    // SCAN each master through a connection of its own
                    // (the cluster connection would send SCAN to one node);
                    // deletes go through the cluster handle.
                    let mut n = 0;
                    // Each node with the handle's credentials and TLS settings.
                    for (host, port) in redis.cluster_masters().await? {
                        let node = Redis::builder()
                            .timeout(redis.timeout())
                            .connections(1)
                            .key_prefix(self.inner.keys.clone())
                            .connect_info(redis.node_info(&host, port))
                            .await?;
                        n += self.scan_purge(&node, redis, uri_prefix).await?;
                    }
                    return Ok(n);
                }
                self.scan_purge(redis, redis, uri_prefix).await
            }
        }
    }

    /// One SCAN pass over `scan_on`, deleting through `delete_on` the entries
    /// whose normalized URI starts with `uri_prefix`.
    async fn scan_purge(&self, scan_on: &Redis, delete_on: &Redis, uri_prefix: &str) -> Result<usize> {
        let redis = scan_on;
        let pattern = self.inner.keys.pattern("cache");
        let mut conn = redis.connection().await?;
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("HGET").arg(key).arg("uri");
                }
                let uris: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                let doomed: Vec<String> = keys
                    .into_iter()
                    .zip(uris)
                    .filter(|(_, u)| u.as_deref().is_some_and(|u| u.starts_with(uri_prefix)))
                    .map(|(k, _)| k)
                    .collect();
                n += self.del_each(delete_on, &doomed).await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(n)
    }

    // ---- cache-aside values ----

    pub(crate) async fn get_value(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.value_key(key);
        match &self.inner.backend {
            Backend::Memory { entries, .. } => Ok(entries.get(&key).and_then(|h| h.variants.get("").cloned())),
            Backend::Redis(_) => {
                let near = self.inner.near.get();
                if let Some(hit) = near.and_then(|near| near.get(&key)) {
                    return Ok(Some(hit.value.clone()));
                }
                let ticket = near.map(|near| near.ticket(&key));
                let result = async {
                    let redis = self.live()?;
                    let mut conn = redis.connection().await?;
                    let (v, pttl): (Option<Vec<u8>>, i64) = match near {
                        None => (redis::cmd("GET").arg(&key).query_async(&mut conn).await?, -1),
                        Some(_) => {
                            redis::pipe().cmd("GET").arg(&key).cmd("PTTL").arg(&key).query_async(&mut conn).await?
                        }
                    };
                    let v = v.map(Bytes::from);
                    if let (Some(near), Some(ticket), Some(value)) = (near, ticket, &v) {
                        let hit = NearHit {
                            spec: String::new(),
                            field: String::new(),
                            value: value.clone(),
                            pass_until_ms: None,
                            generation: 0,
                        };
                        near.insert(ticket, &key, Arc::new(hit), near_ttl(pttl));
                    }
                    Ok(v)
                }
                .await;
                self.observe(result)
            }
        }
    }

    /// Stores a cache-aside value with its tags: the tags first, so that a
    /// value is never found without them (a purge of a tag would miss it),
    /// in a task of its own that a dropped caller does not stop midway.
    pub(crate) async fn set_value(&self, key: &str, value: Bytes, ttl: Duration, tags: &[String]) -> Result<()> {
        let (store, key, tags) = (self.clone(), key.to_owned(), tags.to_vec());
        let set = async move { store.set_value_now(&key, value, ttl, &tags).await };
        redlayer_core::run_detached(set)
            .await
            .unwrap_or_else(|| Err(Error::Unavailable("cache-aside write did not finish".into())))
    }

    async fn set_value_now(&self, key: &str, value: Bytes, ttl: Duration, tags: &[String]) -> Result<()> {
        let vkey = self.value_key(key);
        let ttl = bound(ttl);
        for tag in tags {
            // A tag left by a failed write names a key that is not there: a
            // purge deletes nothing for it.
            self.add_tag(tag, &vkey, ttl).await?;
        }
        match &self.inner.backend {
            Backend::Memory { entries, .. } => {
                let mut hash = MemHash::default();
                hash.variants.insert(String::new(), value);
                entries.insert(vkey.clone(), Arc::new(hash), Some(ttl));
                if !self.tags_hold(&vkey, tags) {
                    entries.remove(&vkey);
                }
                Ok(())
            }
            Backend::Redis(_) => {
                let result = async {
                    let redis = self.live()?;
                    let mut conn = redis.connection().await?;
                    let _: () = redis::cmd("SET")
                        .arg(&vkey)
                        .arg(value.as_ref())
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut conn)
                        .await?;
                    Ok(())
                }
                .await;
                self.forget(&vkey);
                self.observe(result)
            }
        }
    }

    pub(crate) async fn delete_value(&self, key: &str) -> Result<bool> {
        let vkey = self.value_key(key);
        self.delete_entry_key(&vkey).await
    }
}

/// Drops this process's copies of keys being deleted, however the deletion
/// ends (a failed `DEL` may still have deleted some).
struct Forget<'a> {
    store: &'a Store,
    keys: &'a [String],
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        for key in self.keys {
            self.store.forget(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redlayer_core::memory::{ManualClock, Ttl};

    const S: Duration = Duration::from_secs(1);

    /// As pass.lua and store.lua: a hit-for-pass marker keeps the entry hash
    /// (and its other variants) alive at least as long as itself, and a
    /// marker-only hash keeps its expiry when a variant is stored into it.
    #[tokio::test]
    async fn a_pass_marker_never_shortens_the_life_of_its_hash() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let store = Store::memory_with_clock(Arc::new(clock.clone()));
        let Backend::Memory { entries, .. } = &store.inner.backend else { unreachable!() };
        let (en, de) = (HeaderMap::new(), HeaderMap::new());
        store.put("k", "u", "", &variant_id("", &en), Bytes::from_static(b"en"), 2 * S, None).await.unwrap();
        store.mark_pass("k", "u", 30 * S).await.unwrap();
        clock.advance(10 * S);
        let looked = store.lookup("k", &de).await.unwrap();
        assert!(looked.pass_until_ms.is_some(), "the marker outlived its hash");
        assert!(matches!(entries.ttl("k"), Ttl::ExpiresIn(left) if left == 20 * S));

        store.mark_pass("m", "u", 30 * S).await.unwrap();
        store
            .put(
                "m",
                "u",
                "accept-language",
                &variant_id("accept-language", &en),
                Bytes::from_static(b"en"),
                2 * S,
                None,
            )
            .await
            .unwrap();
        assert!(matches!(entries.ttl("m"), Ttl::ExpiresIn(left) if left == 30 * S));
    }
}
