//! [`Locks`]: the lock helper over one backend.

use redlayer_core::expiry::MAX_EXPIRY;
use std::{
    fmt,
    future::Future,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use base64::Engine as _;
use redlayer_core::{Error, KeyPart, Redis, Result};

use crate::{Retry, guard::LockGuard, memory::MemoryLocks};

pub(crate) static ACQUIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/acquire.lua")));
pub(crate) static RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/release.lua")));
pub(crate) static EXTEND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/extend.lua")));

/// The key kind of locks: `{prefix}:lock:{{name}}` and `{prefix}:lock:{{name}}:fence`.
pub const KIND: &str = "lock";

/// How long a name's fence counter is kept by default (from the last
/// acquisition that raised it to the clock). Fences are never below the Redis
/// server time in microseconds, so they still only increase after the
/// counter expired; a short retention means a lock taken under a
/// client-chosen name leaves nothing behind for long.
pub const DEFAULT_FENCE_RETENTION: Duration = Duration::from_secs(60);

/// Why [`Locks::acquire`] or [`Locks::with_lock`] gave up.
#[derive(Debug)]
#[non_exhaustive]
pub enum AcquireError {
    /// The lock stayed busy (or Redis stayed unreachable) for the whole retry budget.
    TimedOut {
        /// How long we waited.
        waited: Duration,
        /// The last store error seen while retrying, if the store was failing.
        last_error: Option<Error>,
    },
    /// The store refused the operation with an error that retrying cannot fix.
    Store(Error),
    /// ([`Locks::with_lock`] only) the lock was lost while the work ran; the work was cancelled.
    Lost,
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::TimedOut { waited, last_error: None } => write!(f, "lock still busy after {waited:?}"),
            AcquireError::TimedOut { waited, last_error: Some(e) } => {
                write!(f, "lock not acquired after {waited:?} (last error: {e})")
            }
            AcquireError::Store(e) => write!(f, "lock store error: {e}"),
            AcquireError::Lost => f.write_str("the lock was lost while the work ran"),
        }
    }
}

impl std::error::Error for AcquireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcquireError::Store(e) | AcquireError::TimedOut { last_error: Some(e), .. } => Some(e),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub(crate) enum Backend {
    Redis(Redis),
    Memory(Arc<MemoryLocks>),
    Redlock(Arc<[Redis]>),
}

/// A distributed lock helper over Redis (or memory, in one process).
///
/// Cheap to clone; all clones (and all processes on the same Redis) share the
/// same locks. Lock names are client-safe: each goes through
/// [`KeyPart::client`], so long or hostile names are hashed.
#[derive(Clone)]
pub struct Locks {
    pub(crate) backend: Backend,
    retry: Retry,
    max_hold: Duration,
    fence_retention: Duration,
    fencing: bool,
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            Backend::Redis(r) => format!("{r:?}"),
            Backend::Memory(_) => "memory".to_owned(),
            Backend::Redlock(nodes) => format!("redlock over {} nodes", nodes.len()),
        };
        f.debug_struct("Locks")
            .field("backend", &backend)
            .field("retry", &self.retry)
            .field("max_hold", &self.max_hold)
            .finish()
    }
}

/// A lock ttl or lease as the store takes it: at least 1 ms, at most
/// [`MAX_EXPIRY`] (a longer one, up to `Duration::MAX`, is "forever"), and
/// the same in whole milliseconds (Redis `PX`). Callers use the capped ttl
/// for their own `Instant` arithmetic too, so it cannot overflow.
pub(crate) fn store_ttl(ttl: Duration) -> Result<(Duration, u64)> {
    if ttl.as_millis() == 0 {
        return Err(Error::InvalidInput(format!("lock ttl must be at least 1 ms, got {ttl:?}")));
    }
    let ttl = ttl.min(MAX_EXPIRY);
    Ok((ttl, ttl.as_millis() as u64))
}

/// 128 random bits, URL-safe base64: from the thread-local CSPRNG of `rand`
/// (ChaCha, seeded by the OS through `getrandom`), so no system call per lock.
pub(crate) fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut token = String::with_capacity(22);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
    token
}

impl Locks {
    /// Locks on Redis (standalone or cluster) through the shared handle.
    pub fn redis(redis: Redis) -> Self {
        Self::with_backend(Backend::Redis(redis))
    }

    /// Locks in this process only, with the same semantics (for tests and
    /// single-instance apps). Clones share their locks; another
    /// `Locks::memory()` is a separate set (two Redis handles on one server
    /// share theirs): build one and clone it.
    pub fn memory() -> Self {
        Self::with_backend(Backend::Memory(Arc::default()))
    }

    /// Redlock over N independent Redis servers (each its own handle and
    /// pool; use an odd number, at least 3, sharing one key prefix). A lock is
    /// held when a majority granted it: the attempt runs on every node in
    /// parallel, each node bounded by a tenth of the ttl, and is valid for
    /// `ttl − elapsed − drift` (drift: 1 % of the ttl + 2 ms). A failed
    /// attempt is undone on every node. A node that errors or times out counts
    /// as a "no": a minority of dead nodes never fails an acquisition, while
    /// too few answering nodes is a store error (so failure policies apply).
    ///
    /// Fencing tokens are the largest of the granting nodes' tokens: strictly
    /// increasing as long as the servers' clocks agree to within the time
    /// between two acquisitions (each node's token is at least its time in µs);
    /// without that there is no guarantee across nodes.
    ///
    /// # Panics
    ///
    /// When `nodes` is empty.
    pub fn redlock(nodes: impl IntoIterator<Item = Redis>) -> Self {
        let nodes: Arc<[Redis]> = nodes.into_iter().collect();
        assert!(!nodes.is_empty(), "redlock needs at least one node");
        Self::with_backend(Backend::Redlock(nodes))
    }

    fn with_backend(backend: Backend) -> Self {
        Locks {
            backend,
            retry: Retry::default(),
            max_hold: Duration::from_secs(60),
            fence_retention: DEFAULT_FENCE_RETENTION,
            fencing: true,
        }
    }

    /// The retry policy of [`Locks::with_lock`] (default: wait up to 5 s).
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The cap on the total hold time the watchdog of [`Locks::with_lock`]
    /// renews to (default 60 s).
    #[must_use]
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = max_hold;
        self
    }

    /// How long the fence counter of a name lives (default
    /// [`DEFAULT_FENCE_RETENTION`], one minute, from the last acquisition
    /// that raised it to the Redis clock). Fences are never below that clock
    /// in microseconds, so the counter's expiry does not break monotonicity,
    /// and no per-name key lives forever.
    #[must_use]
    pub fn fence_retention(mut self, retention: Duration) -> Self {
        self.fence_retention = retention.max(Duration::from_secs(1));
        self
    }

    /// Whether to issue fencing tokens (default true). Without them an
    /// acquisition on standalone Redis or a cluster is a plain `SET NX PX`
    /// instead of the acquire script (see BENCHMARKS.md for both), and
    /// [`LockGuard::fencing_token`] is always 0 (in memory too; Redlock
    /// issues them regardless). Keep them
    /// whenever the lock protects a write to storage that can check them.
    #[must_use]
    pub fn fencing(mut self, fencing: bool) -> Self {
        self.fencing = fencing;
        self
    }

    /// The Redis handle, when this is the Redis backend.
    pub fn redis_handle(&self) -> Option<&Redis> {
        match &self.backend {
            Backend::Redis(r) => Some(r),
            Backend::Memory(_) | Backend::Redlock(_) => None,
        }
    }

    pub(crate) fn lock_key(&self, name: &str) -> String {
        let part = KeyPart::client(name);
        match &self.backend {
            Backend::Redis(redis) => redis.keys().key(KIND, &part),
            Backend::Redlock(nodes) => nodes[0].keys().key(KIND, &part),
            Backend::Memory(_) => part.as_str().to_owned(),
        }
    }

    /// One attempt: `Ok(Ok(guard))`, or `Ok(Err(holder's ttl))` when busy
    /// (`Duration::MAX` when the attempt did not learn it).
    async fn attempt(&self, name: &str, ttl: Duration) -> Result<Result<LockGuard, Duration>> {
        let (ttl, ms) = store_ttl(ttl)?;
        let key = self.lock_key(name);
        // `{prefix}:lock:{name}:fence`, in the lock's slot (only made when fences are issued).
        let fence_key = match &self.backend {
            Backend::Redis(_) if !self.fencing => String::new(),
            Backend::Memory(_) => String::new(),
            Backend::Redis(_) | Backend::Redlock(_) => {
                let mut fence_key = String::with_capacity(key.len() + 6);
                fence_key.push_str(&key);
                fence_key.push_str(":fence");
                fence_key
            }
        };
        let token = random_token();
        let started = Instant::now();
        let fence = match &self.backend {
            Backend::Memory(mem) => {
                let fence = mem.acquire(&key, &token, ttl, self.fence_retention);
                fence.map(|fence| if self.fencing { fence } else { 0 })
            }
            Backend::Redlock(nodes) => {
                let retention = redlayer_core::expiry::expiry_ms(self.fence_retention);
                let undo = UndoOnDrop::arm(self, &key, &token);
                // A failed attempt has released on every node itself.
                let attempt = crate::redlock::acquire(nodes, &key, &fence_key, &token, ttl, ms, retention).await;
                undo.disarm();
                return Ok(attempt?.map(|(fence, valid_until)| {
                    let guard = LockGuard::new(self.clone(), key, token, fence, ttl, started);
                    guard.set_valid_until(valid_until);
                    guard
                }));
            }
            Backend::Redis(redis) if !self.fencing => {
                let mut conn = redis.connection().await?;
                let undo = UndoOnDrop::arm(self, &key, &token);
                let taken: Result<Option<String>> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::from);
                match taken {
                    Ok(Some(_)) => undo.disarm_with(Ok(0)),
                    // No holder ttl without a second round trip: the retry policy's own delays apply.
                    Ok(None) => undo.disarm_with(Err(Duration::MAX)),
                    Err(e) => return Err(undo.settle_error(e)),
                }
            }
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let undo = UndoOnDrop::arm(self, &key, &token);
                let answer: Result<(i64, i64)> = ACQUIRE
                    .key(&key)
                    .key(&fence_key)
                    .arg(&token)
                    .arg(ms)
                    .arg(redlayer_core::expiry::expiry_ms(self.fence_retention))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::from);
                match answer {
                    Ok((1, fence)) => undo.disarm_with(Ok(fence.max(0) as u64)),
                    Ok((_, pttl)) => undo.disarm_with(Err(Duration::from_millis(pttl.max(0) as u64))),
                    Err(e) => return Err(undo.settle_error(e)),
                }
            }
        };
        Ok(fence.map(|fence| LockGuard::new(self.clone(), key, token, fence, ttl, started)))
    }

    /// Takes the lock `name` for `ttl` if it is free; `Ok(None)` when it is held.
    ///
    /// One round trip: the acquire script (`SET NX PX`, then the fence: the
    /// counter plus one or the Redis clock in µs, whichever is larger), or a
    /// plain `SET NX PX` with [`Locks::fencing`] off. The guard carries a
    /// fencing token that is larger than every token issued before for this name.
    pub async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        Ok(self.attempt(name, ttl).await?.ok())
    }

    /// Takes the lock `name` for `ttl`, waiting for it according to `retry`
    /// (bounded, with jittered backoff). Store errors that mean "unreachable"
    /// are retried for [`Retry::unavailable_wait`] in a row (default 1 s)
    /// within the same budget; others are returned at once.
    pub async fn acquire(&self, name: &str, ttl: Duration, retry: Retry) -> Result<LockGuard, AcquireError> {
        retry.run(|| self.attempt(name, ttl)).await
    }

    /// Runs `work` while holding the lock `name`: acquires it with this
    /// helper's retry policy, renews it with the watchdog (up to
    /// [`Locks::max_hold`]), releases it afterwards. If the lock is lost while
    /// `work` runs (Redis lost the key, renewal failed past the lock's
    /// validity, or the hold cap ran out), `work` is dropped at once and
    /// [`AcquireError::Lost`] is returned.
    pub async fn with_lock<F: Future>(&self, name: &str, ttl: Duration, work: F) -> Result<F::Output, AcquireError> {
        let guard = self.acquire(name, ttl, self.retry).await?;
        guard.start_watchdog(self.max_hold);
        let lost = guard.lost();
        tokio::pin!(lost);
        tokio::pin!(work);
        let output = tokio::select! {
            biased;
            out = &mut work => out,
            () = &mut lost => {
                drop(guard);
                return Err(AcquireError::Lost);
            }
        };
        let _ = guard.release().await;
        Ok(output)
    }

    pub(crate) async fn release_raw(&self, key: &str, token: &str) -> Result<bool> {
        match &self.backend {
            Backend::Memory(mem) => Ok(mem.release(key, token)),
            // No validity to protect on release: each node gets its handle's whole timeout.
            Backend::Redlock(nodes) => Ok(crate::redlock::release(nodes, key, token, Duration::MAX).await),
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let n: i64 = RELEASE.key(key).arg(token).invoke_async(&mut conn).await?;
                Ok(n == 1)
            }
        }
    }

    pub(crate) async fn extend_raw(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let (ttl, ms) = store_ttl(ttl)?;
        match &self.backend {
            Backend::Memory(mem) => Ok(mem.extend(key, token, ttl, self.fence_retention)),
            Backend::Redlock(nodes) => crate::redlock::extend(nodes, key, token, ttl, ms).await,
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let n: i64 = EXTEND.key(key).arg(token).arg(ms).invoke_async(&mut conn).await?;
                Ok(n == 1)
            }
        }
    }
}

/// Armed while an acquisition's command is out: dropped armed (the request
/// was cancelled mid-command, or the answer was lost to a timeout or a
/// broken connection), it releases the token in the background, since the
/// command may have taken the lock for a holder that no longer exists, which
/// would keep it taken by nobody until its ttl.
struct UndoOnDrop<'a> {
    locks: &'a Locks,
    key: &'a str,
    token: &'a str,
    armed: bool,
}

impl<'a> UndoOnDrop<'a> {
    fn arm(locks: &'a Locks, key: &'a str, token: &'a str) -> Self {
        UndoOnDrop { locks, key, token, armed: true }
    }

    /// The answer is known (taken, or busy): nothing to undo.
    fn disarm(mut self) {
        self.armed = false;
    }

    fn disarm_with<T>(self, answer: T) -> T {
        self.disarm();
        answer
    }

    /// An error that says the command did not run (a script error, a key of
    /// another type) needs no undo; a lost answer does (on drop).
    fn settle_error(self, error: Error) -> Error {
        if !error.is_unavailable() {
            self.disarm();
        }
        error
    }
}

impl Drop for UndoOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (locks, key, token) = (self.locks.clone(), self.key.to_owned(), self.token.to_owned());
        runtime.spawn(async move {
            let _ = locks.release_raw(&key, &token).await;
        });
    }
}
