//! [`Store`]: where sessions live (Redis or memory), and the per-user index.

mod memory;
mod redis_backend;

use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redlayer_core::{
    KeyBuilder, Redis,
    memory::{Clock, SystemClock},
};

use crate::{SessionError, id};

pub use redlayer_core::memory::DEFAULT_MEMORY_BUDGET;

/// A user's index is pruned of ended sessions from this many entries on ...
const PRUNE_FROM: usize = 256;
/// ... each time it has grown by this many.
const PRUNE_EVERY: usize = 128;

/// The session store: Redis for production, memory for one process and tests.
/// Both have the same semantics (one conformance suite runs on memory,
/// standalone Redis and Redis Cluster). Cheap to clone.
///
/// Besides backing [`SessionLayer`](crate::SessionLayer), it answers per-user
/// questions outside of requests: [`Store::sessions_of`], [`Store::revoke`],
/// [`Store::revoke_all`].
///
/// ```
/// use redlayer_session::Store;
/// let store = Store::memory();
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    backend: Backend,
    keys: KeyBuilder,
    /// The estimate of Redis's clock used by loads (Redis backend only).
    clock: redis_backend::RedisClock,
}

enum Backend {
    Redis(Redis),
    Memory(memory::MemoryBackend),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.backend {
            Backend::Redis(redis) => f.debug_tuple("Store::Redis").field(redis).finish(),
            Backend::Memory(_) => f.write_str("Store::Memory"),
        }
    }
}

impl From<Redis> for Store {
    fn from(redis: Redis) -> Self {
        Store::redis(redis)
    }
}

/// An opaque reference to one session of a user, as listed by
/// [`Store::sessions_of`]. It is derived from hashes of the session id: it
/// cannot be turned back into a usable id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionRef(pub(crate) String);

impl SessionRef {
    /// A reference from its text (e.g. sent back by a "sign out this device"
    /// button). [`Store::revoke`] only acts on references in the user's own index.
    pub fn new(text: impl Into<String>) -> Self {
        SessionRef(text.into())
    }

    /// The reference as text (safe to show to the user or log).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionRef").field(&self.0).finish()
    }
}

/// One live session of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Which session (to pass to [`Store::revoke`]).
    pub session: SessionRef,
    /// When the session was created.
    pub created: SystemTime,
    /// When it was last seen (updated at most once per touch interval).
    pub last_seen: SystemTime,
    /// True for the session of the request that asked ([`Session::sessions`](crate::Session::sessions)).
    pub current: bool,
}

/// A loaded session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Loaded {
    /// Data fields (name → JSON).
    pub(crate) fields: HashMap<String, String>,
    pub(crate) user: Option<String>,
    /// When it was created (ms since the epoch; 0 when unknown).
    pub(crate) created_ms: i64,
    /// How long ago its current id was issued (created, cycled or renewed), ms.
    pub(crate) id_age_ms: i64,
}

/// Where a renewed session went: its old key is an alias for the grace
/// period, holding the new key and the new id sealed with the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) key: String,
    pub(crate) sealed: String,
}

#[derive(Debug)]
pub(crate) enum LoadOutcome {
    Found(Loaded),
    Missing,
    Moved(Moved),
}

/// A periodic renewal: the old key stays an alias for `grace_ms`, and only
/// an id at least `min_age_ms` old is renewed.
#[derive(Debug, Clone)]
pub(crate) struct Renewal {
    pub(crate) grace_ms: u64,
    pub(crate) sealed: String,
    pub(crate) min_age_ms: u64,
}

/// One request's changes.
#[derive(Debug, Default)]
pub(crate) struct WriteOp {
    pub(crate) create: bool,
    pub(crate) idle_ms: u64,
    pub(crate) absolute_ms: u64,
    /// An update this soon after the last refresh keeps the idle expiry.
    pub(crate) touch_ms: u64,
    pub(crate) clear: bool,
    pub(crate) user: Option<String>,
    pub(crate) deletes: Vec<String>,
    pub(crate) sets: Vec<(String, String)>,
    pub(crate) increments: Vec<(String, i64)>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    Done { created_ms: i64, id_age_ms: i64, increments: Vec<i64> },
    Gone,
    Collision,
    NotInteger(String),
    Moved(Moved),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CycleOutcome {
    Done {
        user: Option<String>,
        created_ms: i64,
    },
    Gone,
    Collision,
    Moved(Moved),
    /// (Renewal) the id is younger than asked: nothing done.
    NotDue,
}

/// What ending a session found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    /// A live session was deleted.
    pub(crate) existed: bool,
    /// Its user, if it had one.
    pub(crate) user: Option<String>,
    /// Its key: the one given, or where the renewal aliases from it led.
    pub(crate) key: String,
}

/// A row of a user's index: session key and its metadata (None when the session is gone).
pub(crate) struct IndexRow {
    pub(crate) key: String,
    pub(crate) created_ms: i64,
    pub(crate) seen_ms: i64,
}

/// `d` as the milliseconds of a Redis expiry (at most 100 years).
pub(crate) fn millis(d: Duration) -> u64 {
    redlayer_core::expiry::expiry_ms(d)
}

/// Passes over a user's index that "log out everywhere" makes at most (see
/// [`Store::revoke_all`]).
const REVOKE_PASSES: usize = 4;

/// A stored time (ms since the epoch, written by anyone) as a `SystemTime`:
/// one past the platform's range (Windows' is narrower) is the epoch.
fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms.max(0) as u64)).unwrap_or(UNIX_EPOCH)
}

impl Store {
    /// Sessions in Redis (standalone or cluster), under the handle's key prefix.
    pub fn redis(redis: Redis) -> Self {
        let keys = redis.keys().clone();
        Store {
            inner: Arc::new(StoreInner {
                backend: Backend::Redis(redis),
                keys,
                clock: redis_backend::RedisClock::new(),
            }),
        }
    }

    /// Sessions in this process's memory, on the system clock, holding at
    /// most [`DEFAULT_MEMORY_BUDGET`] bytes.
    pub fn memory() -> Self {
        Self::memory_with_budget(DEFAULT_MEMORY_BUDGET)
    }

    /// Sessions in this process's memory holding about `max_bytes` (fields,
    /// keys; user indexes get a quarter more). Past it, expired sessions are
    /// dropped first, then those closest to their expiry (the least recently
    /// used: their users are logged out), as Redis does under `maxmemory`
    /// with `volatile-ttl`. A user index dropped from its quarter (the one
    /// closest to expiry) ends that user's sessions with it, so that no
    /// session is left that "log out everywhere" cannot find.
    pub fn memory_with_budget(max_bytes: usize) -> Self {
        Self::memory_with(Arc::new(SystemClock), max_bytes)
    }

    /// Sessions in memory on the given clock (a
    /// [`ManualClock`](redlayer_core::memory::ManualClock) tests expiry without sleeping).
    pub fn memory_with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::memory_with(clock, DEFAULT_MEMORY_BUDGET)
    }

    fn memory_with(clock: Arc<dyn Clock>, max_bytes: usize) -> Self {
        Store {
            inner: Arc::new(StoreInner {
                backend: Backend::Memory(memory::MemoryBackend::new(clock, max_bytes)),
                keys: KeyBuilder::default(),
                clock: redis_backend::RedisClock::new(),
            }),
        }
    }

    /// About the memory the memory store holds, in bytes (`None` for Redis,
    /// whose `INFO memory` tells).
    pub fn memory_used(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Memory(m) => Some(m.used()),
            Backend::Redis(_) => None,
        }
    }

    /// True for the Redis backend.
    pub fn is_redis(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    pub(crate) fn session_key(&self, id: &id::SessionId) -> String {
        id.store_key(&self.inner.keys)
    }

    fn is_session_key(&self, key: &str) -> bool {
        let prefix = self.inner.keys.prefix();
        key.len() < 256
            && key
                .strip_prefix(prefix)
                .and_then(|k| k.strip_prefix(':'))
                .and_then(|k| k.strip_prefix(id::KIND))
                .is_some_and(|k| k.starts_with(":{#"))
    }

    pub(crate) async fn load(&self, key: &str, idle_ms: u64, touch_ms: u64) -> Result<LoadOutcome, SessionError> {
        match &self.inner.backend {
            // Boxed, as `write`: redis-rs's futures are large, and every future
            // awaiting this one inline (the handler's, boxed and moved by axum)
            // would carry their size.
            Backend::Redis(redis) => {
                Box::pin(redis_backend::load(redis, &self.inner.clock, key, idle_ms, touch_ms)).await
            }
            Backend::Memory(m) => Ok(m.load(key, idle_ms, touch_ms)),
        }
    }

    pub(crate) async fn write(&self, key: &str, op: &WriteOp) -> Result<WriteOutcome, SessionError> {
        match &self.inner.backend {
            Backend::Redis(redis) => Box::pin(redis_backend::write(redis, key, op)).await,
            Backend::Memory(m) => m.write(key, op).map_err(SessionError::Store),
        }
    }

    /// Renames the session at `old` to `new`: at once (`renewal: None`), or
    /// leaving an alias behind for a grace period. A rename is a use of the
    /// session: its idle timeout (`idle_ms`) starts again.
    pub(crate) async fn cycle(
        &self,
        old: &str,
        new: &str,
        idle_ms: u64,
        renewal: Option<&Renewal>,
    ) -> Result<CycleOutcome, SessionError> {
        match &self.inner.backend {
            Backend::Redis(redis) => redis_backend::cycle(redis, old, new, idle_ms, renewal).await,
            Backend::Memory(m) => Ok(m.cycle(old, new, idle_ms, renewal)),
        }
    }

    /// Deletes a session, following the aliases renewals left (see `delete.lua`).
    pub(crate) async fn destroy(&self, key: &str) -> Result<Ended, SessionError> {
        match &self.inner.backend {
            Backend::Redis(redis) => redis_backend::delete(redis, key).await,
            Backend::Memory(m) => Ok(m.delete(key)),
        }
    }

    pub(crate) async fn index_add(
        &self,
        user: &str,
        key: &str,
        created_ms: i64,
        absolute_ms: u64,
    ) -> Result<(), SessionError> {
        let index = id::user_key(&self.inner.keys, user);
        let entries = match &self.inner.backend {
            Backend::Redis(redis) => redis_backend::index_add(redis, &index, key, created_ms, absolute_ms).await?,
            Backend::Memory(m) => m.index_add(&index, key, created_ms, absolute_ms).map_err(SessionError::Store)?,
        };
        // Entries of ended sessions are otherwise dropped only when the index
        // is listed: a user who logs in again and again without listing would
        // grow it for as long as it lives. Every `PRUNE_EVERY` entries past
        // `PRUNE_FROM`, drop them (one read per entry).
        if entries >= PRUNE_FROM && entries % PRUNE_EVERY == 0 {
            self.index_rows(user).await?;
        }
        Ok(())
    }

    pub(crate) async fn index_remove(&self, user: &str, key: &str) -> Result<(), SessionError> {
        let index = id::user_key(&self.inner.keys, user);
        match &self.inner.backend {
            Backend::Redis(redis) => redis_backend::index_remove(redis, &index, key).await,
            Backend::Memory(m) => {
                m.index_remove(&index, key);
                Ok(())
            }
        }
    }

    async fn index_rows(&self, user: &str) -> Result<Vec<IndexRow>, SessionError> {
        let index = id::user_key(&self.inner.keys, user);
        let mut rows = match &self.inner.backend {
            Backend::Redis(redis) => redis_backend::index_rows(redis, &index).await?,
            Backend::Memory(m) => m.index_rows(&index),
        };
        rows.retain(|row| self.is_session_key(&row.key));
        Ok(rows)
    }

    /// The live sessions of `user`, oldest first. Entries of sessions that
    /// ended are dropped from the index on the way.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<SessionInfo>, SessionError> {
        let mut out: Vec<SessionInfo> = self
            .index_rows(user)
            .await?
            .into_iter()
            .map(|row| SessionInfo {
                session: SessionRef(row.key),
                created: time_of(row.created_ms),
                last_seen: time_of(row.seen_ms),
                current: false,
            })
            .collect();
        out.sort_by_key(|s| s.created);
        Ok(out)
    }

    /// Ends one session of `user` (only if it is in that user's index).
    /// Returns true when it was live.
    pub async fn revoke(&self, user: &str, session: &SessionRef) -> Result<bool, SessionError> {
        // A reference the client made up, of any length, never reaches Redis.
        if !self.is_session_key(&session.0) {
            return Ok(false);
        }
        let index = id::user_key(&self.inner.keys, user);
        let member = match &self.inner.backend {
            Backend::Redis(redis) => redis_backend::index_contains(redis, &index, &session.0).await?,
            Backend::Memory(m) => m.index_contains(&index, &session.0),
        };
        if !member {
            return Ok(false);
        }
        let ended = self.destroy(&session.0).await?;
        self.index_remove(user, &session.0).await?;
        if ended.key != session.0 {
            self.index_remove(user, &ended.key).await?;
        }
        Ok(ended.existed)
    }

    /// Ends every session of `user` ("log out everywhere"). Returns how many were live.
    pub async fn revoke_all(&self, user: &str) -> Result<usize, SessionError> {
        self.revoke_all_except(user, None).await
    }

    pub(crate) async fn revoke_all_except(&self, user: &str, keep: Option<&str>) -> Result<usize, SessionError> {
        let index = id::user_key(&self.inner.keys, user);
        let mut ended = 0;
        // The session kept is kept under any of its ids: its id may have been
        // cycled (a login or a renewal on another instance) since the caller
        // read it, and the new id is then in the index under another key.
        let keep = keep.and_then(id::family_of);
        // A session whose id is cycled meanwhile (a login on another
        // instance) is renamed under a key indexed before the rename: when a
        // listed session was not found, the index is read again for it.
        for _ in 0..REVOKE_PASSES {
            let keys: Vec<String> = match &self.inner.backend {
                Backend::Redis(redis) => redis_backend::index_keys(redis, &index).await?,
                Backend::Memory(m) => m.index_keys(&index),
            };
            let mut missed = false;
            for key in keys {
                if keep.is_some() && id::family_of(&key) == keep {
                    continue;
                }
                if self.is_session_key(&key) {
                    let gone = self.destroy(&key).await?;
                    ended += usize::from(gone.existed);
                    missed |= !gone.existed;
                    if gone.key != key {
                        self.index_remove(user, &gone.key).await?;
                    }
                }
                self.index_remove(user, &key).await?;
            }
            if !missed {
                break;
            }
        }
        Ok(ended)
    }
}
