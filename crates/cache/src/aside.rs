//! [`CacheAside`]: a typed cache-aside API for data that is not HTTP.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use redlayer_core::{FailurePolicy, Redis, Result, report_degraded};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    flight::{RefreshMark, Refreshing},
    store::Store,
};

const MAGIC: u8 = 0xA5;
const VERSION: u8 = 1;

/// Longest cache-aside key accepted (longer keys are hashed by the key schema
/// anyway; this bounds memory).
const MAX_KEY: usize = 4096;

/// How long a caller waits for another instance's fetch of the same key.
const FILL_WAIT: Duration = Duration::from_secs(5);

/// One key's fetch in this process: callers take turns on the mutex, and the
/// one that fetched leaves the encoded value (with the invalidation epoch it
/// started in) for the others, also when storing it failed.
type Flight = Arc<tokio::sync::Mutex<Option<(Bytes, u64)>>>;

/// Typed values cached in a [`Store`] (Redis or memory), serialized as JSON
/// with a version byte: a value written by another version is a miss.
///
/// ```no_run
/// # async fn demo(redis: redlayer_core::Redis) {
/// use std::time::Duration;
/// use redlayer_cache::CacheAside;
///
/// let cache = CacheAside::redis(redis);
/// let user: String = cache
///     .get_or_insert_with("user:42", Duration::from_secs(60), || async {
///         Ok::<_, std::io::Error>("Ada".to_string()) // the slow lookup
///     })
///     .await
///     .unwrap();
/// # let _ = user; }
/// ```
#[derive(Clone)]
pub struct CacheAside {
    store: Store,
    locks: Option<redlayer_lock::Locks>,
    flights: Arc<Mutex<HashMap<String, Flight>>>,
    refreshing: Refreshing,
    /// Bumped by every invalidation of this process: a fetch that started
    /// before one does not store its (maybe older) value.
    invalidations: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for CacheAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheAside").field("store", &self.store).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `MAGIC | VERSION | fresh_until_ms u64 | JSON`.
fn encode<T: Serialize>(value: &T, fresh_for: Duration) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(MAGIC);
    buf.put_u8(VERSION);
    buf.put_u64(now_ms().saturating_add(fresh_for.as_millis().min(u64::MAX as u128) as u64));
    serde_json::to_writer((&mut buf).writer(), value).map_err(|e| redlayer_core::Error::InvalidInput(e.to_string()))?;
    Ok(buf.freeze())
}

/// The value and until when it is fresh (ms since the epoch).
fn decode<T: DeserializeOwned>(raw: &[u8]) -> Option<(T, u64)> {
    if raw.len() < 10 || raw[0] != MAGIC || raw[1] != VERSION {
        return None;
    }
    let fresh_until = u64::from_be_bytes(raw[2..10].try_into().ok()?);
    serde_json::from_slice(&raw[10..]).ok().map(|v| (v, fresh_until))
}

impl CacheAside {
    /// Values in Redis, shared by every instance.
    pub fn redis(redis: Redis) -> Self {
        Self::new(Store::redis(redis))
    }

    /// Values in this process's memory.
    pub fn memory() -> Self {
        Self::new(Store::memory())
    }

    /// Values in the given store (it may be the one a `CacheLayer` uses).
    pub fn new(store: Store) -> Self {
        let locks = store.redis_handle().cloned().map(|redis| redlayer_lock::Locks::redis(redis).fencing(false));
        CacheAside {
            store,
            locks,
            flights: Arc::new(Mutex::new(HashMap::new())),
            refreshing: Refreshing::default(),
            invalidations: Arc::default(),
        }
    }

    fn check(key: &str) -> Result<()> {
        if key.len() > MAX_KEY {
            return Err(redlayer_core::Error::InvalidInput(format!("cache key longer than {MAX_KEY} bytes")));
        }
        Ok(())
    }

    /// The value of `key`, if present and decodable as `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Self::check(key)?;
        Ok(self.get_with_freshness(key).await?.map(|(v, _)| v))
    }

    async fn get_with_freshness<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>> {
        Self::check(key)?;
        Ok(self.store.get_value(key).await?.and_then(|raw| decode(&raw)))
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) -> Result<()> {
        self.set_with_tags(key, value, ttl, &[]).await
    }

    /// Stores `value` under `key` for `ttl`, tagged (see [`CacheAside::invalidate_tag`]).
    pub async fn set_with_tags<T: Serialize>(&self, key: &str, value: &T, ttl: Duration, tags: &[&str]) -> Result<()> {
        Self::check(key)?;
        self.store_encoded(key, encode(value, ttl)?, ttl, tags).await
    }

    /// Stores an encoded value for `keep` (its freshness plus any stale window).
    async fn store_encoded(&self, key: &str, raw: Bytes, keep: Duration, tags: &[&str]) -> Result<()> {
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        self.store.set_value(key, raw, keep, &tags).await
    }

    /// Deletes `key`; true when it was there. A fetch that this `CacheAside`
    /// (or a clone) is running meanwhile returns its value without storing
    /// it (it may be from before the change); another instance's is not
    /// stopped.
    pub async fn invalidate(&self, key: &str) -> Result<bool> {
        Self::check(key)?;
        self.bump();
        self.store.delete_value(key).await
    }

    /// Before a deletion: fetches in flight in this process then do not store.
    fn bump(&self) {
        self.invalidations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn epoch(&self) -> u64 {
        self.invalidations.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Deletes every value (and cached response) tagged `tag`; fetches in
    /// flight are not stored, as with [`CacheAside::invalidate`].
    pub async fn invalidate_tag(&self, tag: &str) -> Result<usize> {
        self.bump();
        self.store.purge_tag(tag).await
    }

    /// The cached value of `key`, or the result of `fetch` (stored for `ttl`).
    ///
    /// Concurrent callers for one key in this process run `fetch` once (the
    /// others wait, up to 5 s, and get its value while it is fresh, stored or
    /// not). When the store fails, `fetch`
    /// runs and its value is returned: the cache never fails the call. Only
    /// `fetch`'s own error is returned.
    pub async fn get_or_insert_with<T, F, Fut, E>(&self, key: &str, ttl: Duration, fetch: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.get_or_insert_tagged(key, ttl, &[], fetch).await
    }

    /// [`CacheAside::get_or_insert_with`] with tags on the stored value.
    pub async fn get_or_insert_tagged<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        tags: &[&str],
        fetch: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.load(key, ttl, Duration::ZERO, tags, fetch).await
    }

    /// [`CacheAside::get_or_insert_with`] with stale-while-revalidate: for
    /// `stale_for` after `ttl`, the stale value is returned at once and one
    /// background refresh runs (one per key across instances, under a short
    /// lock). A failed refresh keeps the stale value until it expires.
    pub async fn get_or_insert_swr<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        stale_for: Duration,
        fetch: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        if let Ok(Some((value, fresh_until))) = self.get_with_freshness::<T>(key).await {
            if now_ms() >= fresh_until {
                self.refresh_in_background(key, ttl, stale_for, fetch);
            }
            return Ok(value);
        }
        self.load(key, ttl, stale_for, &[], fetch).await
    }

    fn refresh_in_background<T, F, Fut, E>(&self, key: &str, ttl: Duration, stale_for: Duration, fetch: F)
    where
        T: Serialize + Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let Some(mark) = RefreshMark::claim(&self.refreshing, key) else { return };
        let this = self.clone();
        let key = key.to_owned();
        let refresh = async move {
            let lock = match &this.locks {
                Some(locks) => match locks.try_acquire(&format!("cache-aside-refresh:{key}"), FILL_WAIT).await {
                    Ok(Some(lock)) => Some(lock),
                    _ => return,
                },
                None => None,
            };
            let epoch = this.epoch();
            let encoded = match fetch().await {
                Ok(value) => encode(&value, ttl).ok(),
                Err(_) => None,
            };
            if let Some(bytes) = encoded.filter(|_| this.epoch() == epoch)
                && let Err(e) = this.store.set_value(&key, bytes, ttl.saturating_add(stale_for), &[]).await
            {
                report_degraded("cache-aside", FailurePolicy::FailOpen, &e);
            }
            drop(lock);
        };
        mark.spawn(&rt, refresh);
    }

    async fn load<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        stale_for: Duration,
        tags: &[&str],
        fetch: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if Self::check(key).is_err() {
            return fetch().await;
        }
        match self.get::<T>(key).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => {
                report_degraded("cache-aside", FailurePolicy::FailOpen, &e);
                return fetch().await;
            }
        }
        let lock = {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        // Dropped before `lock`, also when this call is cancelled.
        let _forget = ForgetFlight { flights: &self.flights, key };
        async {
            // Bounded: a caller stuck behind slow fetches goes on without its
            // turn (to the store, and the lock across instances).
            let mut shared = tokio::time::timeout(FILL_WAIT, lock.lock()).await.ok();
            if let Some(Some((raw, epoch))) = shared.as_deref()
                && *epoch == self.epoch()
                && let Some((v, fresh_until)) = decode::<T>(raw)
                && now_ms() < fresh_until
            {
                return Ok(v);
            }
            if let Ok(Some(v)) = self.get::<T>(key).await {
                return Ok(v);
            }
            // Across instances: one fetch per key while a short lock is held;
            // the others poll for the value, and fetch themselves once the lock
            // is free without a value (the holder failed or died) or after 5 s.
            let _lock = match &self.locks {
                Some(locks) => {
                    let name = format!("cache-aside:{key}");
                    let deadline = tokio::time::Instant::now() + FILL_WAIT;
                    let mut poll = Duration::from_millis(10);
                    loop {
                        match locks.try_acquire(&name, FILL_WAIT).await {
                            Ok(Some(lock)) => {
                                if let Ok(Some(v)) = self.get::<T>(key).await {
                                    return Ok(v);
                                }
                                break Some(lock);
                            }
                            Ok(None) if tokio::time::Instant::now() < deadline => {
                                tokio::time::sleep(poll).await;
                                poll = (poll * 2).min(Duration::from_millis(100));
                                if let Ok(Some(v)) = self.get::<T>(key).await {
                                    return Ok(v);
                                }
                            }
                            _ => break None,
                        }
                    }
                }
                None => None,
            };
            let epoch = self.epoch();
            let value = fetch().await?;
            // Invalidated meanwhile: the value may be from before; returned,
            // neither stored nor handed to the callers waiting here.
            if self.epoch() == epoch {
                let stored = match encode(&value, ttl) {
                    Ok(raw) => {
                        if let Some(shared) = shared.as_mut() {
                            **shared = Some((raw.clone(), epoch));
                        }
                        self.store_encoded(key, raw, ttl.saturating_add(stale_for), tags).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = stored {
                    report_degraded("cache-aside", FailurePolicy::FailOpen, &e);
                }
            }
            Ok(value)
        }
        .await
    }
}

/// Forgets the in-process flight of `key` when dropped, once no other call
/// holds it (the map's reference and the dropping call's are all that are left).
struct ForgetFlight<'a> {
    flights: &'a Mutex<HashMap<String, Flight>>,
    key: &'a str,
}

impl Drop for ForgetFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(self.key).is_some_and(|l| Arc::strong_count(l) <= 2) {
            map.remove(self.key);
        }
    }
}
