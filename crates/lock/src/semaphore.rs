//! [`Semaphore`]: at most N holders at a time, each with a lease.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use redlayer_core::{
    Error, KeyPart, Redis, Result,
    memory::{ExpiringMap, Update},
};

use crate::{AcquireError, Retry, locks::random_token, locks::store_ttl};

static SEM_ACQUIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/sem_acquire.lua")));
static SEM_RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/sem_release.lua")));
static SEM_EXTEND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/sem_extend.lua")));

/// The key kind of semaphores: `{prefix}:sem:{{name}}`.
pub const SEMAPHORE_KIND: &str = "sem";

/// Holders' tokens and lease ends (since the epoch).
type Holders = Vec<(Arc<str>, Duration)>;

#[derive(Clone)]
enum Backend {
    Redis(Redis),
    Memory(Arc<ExpiringMap<String, Holders>>),
}

/// A counting semaphore: at most `permits` holders of `name` at a time,
/// across every instance on the same Redis. Each permit is a lease: a holder
/// that dies without releasing gives its permit back when the lease ends.
/// Permits are released on drop (in a spawned task) and can be extended.
#[derive(Clone)]
pub struct Semaphore {
    backend: Backend,
    key: String,
    permits: u32,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore").field("key", &self.key).field("permits", &self.permits).finish()
    }
}

impl Semaphore {
    /// `permits` holders of `name` (a client-safe name: it goes through [`KeyPart::client`]) in Redis.
    pub fn redis(redis: Redis, name: &str, permits: u32) -> Self {
        let key = redis.keys().key(SEMAPHORE_KIND, &KeyPart::client(name));
        Semaphore { backend: Backend::Redis(redis), key, permits }
    }

    /// The same in this process only. Clones share the permits; another
    /// `Semaphore::memory` (even of the same name) has permits of its own,
    /// unlike two Redis semaphores of one name: share one value (clone it).
    pub fn memory(name: &str, permits: u32) -> Self {
        Semaphore { backend: Backend::Memory(Arc::default()), key: KeyPart::client(name).to_string(), permits }
    }

    /// Takes a permit for `lease` if one is free; `Ok(None)` otherwise.
    pub async fn try_acquire(&self, lease: Duration) -> Result<Option<Permit>> {
        Ok(self.attempt(lease).await?.ok())
    }

    /// Takes a permit, waiting according to `retry`.
    pub async fn acquire(&self, lease: Duration, retry: Retry) -> Result<Permit, AcquireError> {
        retry.run(|| self.attempt(lease)).await
    }

    async fn attempt(&self, lease: Duration) -> Result<std::result::Result<Permit, Duration>> {
        let (lease, ms) = store_ttl(lease)?;
        if self.permits == 0 {
            return Err(Error::InvalidInput("a semaphore needs at least one permit".into()));
        }
        let token: Arc<str> = Arc::from(random_token());
        let granted = match &self.backend {
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                // The permit exists while the script runs: dropped then (a
                // cancelled request, a lost answer), it releases in the background.
                let mut permit = Permit { semaphore: self.clone(), token: token.clone(), done: false };
                let answer: Result<(i64, i64)> = SEM_ACQUIRE
                    .key(&self.key)
                    .arg(&*token)
                    .arg(self.permits)
                    .arg(ms)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::from);
                match answer {
                    Ok((1, _)) => return Ok(Ok(permit)),
                    Ok((_, wait)) => {
                        permit.done = true;
                        Err(Duration::from_millis(wait.max(0) as u64))
                    }
                    Err(e) => {
                        // Not run (a script error): nothing to release.
                        permit.done = !e.is_unavailable();
                        return Err(e);
                    }
                }
            }
            Backend::Memory(map) => map.update(self.key.clone(), |holders, now| {
                let mut list: Vec<_> =
                    holders.map(|h| h.iter().filter(|(_, until)| *until > now).cloned().collect()).unwrap_or_default();
                if list.len() < self.permits as usize {
                    list.push((token.clone(), now + lease));
                    let longest = list.iter().map(|(_, u)| *u).max().unwrap_or(now) - now;
                    (Update::Set(list, Some(longest)), Ok(()))
                } else {
                    let first = list.iter().map(|(_, u)| *u).min().unwrap_or(now) - now;
                    let longest = list.iter().map(|(_, u)| *u).max().unwrap_or(now) - now;
                    (Update::Set(list, Some(longest.max(Duration::from_millis(1)))), Err(first))
                }
            }),
        };
        Ok(granted.map(|()| Permit { semaphore: self.clone(), token, done: false }))
    }

    async fn release_raw(&self, token: &str) -> Result<bool> {
        match &self.backend {
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let n: i64 = SEM_RELEASE.key(&self.key).arg(token).invoke_async(&mut conn).await?;
                Ok(n == 1)
            }
            Backend::Memory(map) => Ok(map.update(self.key.clone(), |holders, now| match holders {
                Some(list) => {
                    // As sem_release.lua: true only for a lease not ended yet.
                    let held = list.iter().any(|(t, until)| &**t == token && *until > now);
                    list.retain(|(t, until)| &**t != token && *until > now);
                    (Update::Keep, held)
                }
                None => (Update::Keep, false),
            })),
        }
    }
}

/// One permit of a [`Semaphore`]: released on drop (in a spawned task).
pub struct Permit {
    semaphore: Semaphore,
    token: Arc<str>,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("semaphore", &self.semaphore).finish_non_exhaustive()
    }
}

impl Permit {
    /// Gives the permit back; `Ok(false)` when its lease had already ended.
    pub async fn release(mut self) -> Result<bool> {
        let result = self.semaphore.release_raw(&self.token).await;
        self.done = true;
        result
    }

    /// Sets the lease to `lease` from now, if the permit is still held.
    pub async fn extend(&self, lease: Duration) -> Result<bool> {
        let (lease, ms) = store_ttl(lease)?;
        match &self.semaphore.backend {
            Backend::Redis(redis) => {
                let mut conn = redis.connection().await?;
                let n: i64 =
                    SEM_EXTEND.key(&self.semaphore.key).arg(&*self.token).arg(ms).invoke_async(&mut conn).await?;
                Ok(n == 1)
            }
            Backend::Memory(map) => Ok(map.update(self.semaphore.key.clone(), |holders, now| match holders {
                Some(list) => match list.iter_mut().find(|(t, until)| *t == self.token && *until > now) {
                    Some(entry) => {
                        entry.1 = now + lease;
                        let longest = list.iter().map(|(_, u)| *u).max().unwrap_or(now) - now;
                        (Update::KeepWithTtl(Some(longest)), true)
                    }
                    None => (Update::Keep, false),
                },
                None => (Update::Keep, false),
            })),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (semaphore, token) = (self.semaphore.clone(), self.token.clone());
        match &semaphore.backend {
            Backend::Memory(_) => {
                // No I/O: run the release future to completion right here.
                let fut = async move { semaphore.release_raw(&token).await };
                let _ = futures_util::FutureExt::now_or_never(fut);
            }
            Backend::Redis(_) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = semaphore.release_raw(&token).await;
                    });
                }
            }
        }
    }
}
