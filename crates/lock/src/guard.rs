//! [`LockGuard`]: a held lock, its fencing token, renewal and the lost signal.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_core::Result;
use tokio::sync::Notify;

use crate::locks::{Backend, Locks};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Held = 0,
    Lost = 1,
    Released = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Held,
            1 => State::Lost,
            _ => State::Released,
        }
    }
}

/// The margin kept for clock drift between this process and Redis: 1 % of the
/// ttl plus 2 ms (the Redlock paper's figure).
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

struct Shared {
    locks: Locks,
    key: String,
    token: String,
    fence: u64,
    ttl: Duration,
    acquired_at: Instant,
    /// Until when the lock is guaranteed: start of the last successful
    /// acquire/extend call + ttl − drift; and that call's start.
    valid_until: Mutex<(Instant, Instant)>,
    /// A [`State`]; it only moves away from `Held`, and `changed` tells the
    /// waiters (`lost()`, the watchdog). One atomic and one `Notify`: a guard
    /// nobody watches costs no more than that.
    state: AtomicU8,
    changed: Notify,
    watchdog: AtomicBool,
    /// Held while an extension is out: one at a time, so Redis applies them
    /// in the order they started (on two connections, a later extension could
    /// otherwise arrive first, and an earlier, shorter one then cut the
    /// expiry that the later one set and the validity was computed from).
    extending: tokio::sync::Mutex<()>,
}

impl Shared {
    fn valid_until(&self) -> Instant {
        self.valid_until.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::SeqCst))
    }

    fn mark_lost(&self) {
        let (held, lost) = (State::Held as u8, State::Lost as u8);
        if self.state.compare_exchange(held, lost, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            self.changed.notify_waiters();
        }
    }

    fn mark_released(&self) {
        if self.state.swap(State::Released as u8, Ordering::SeqCst) != State::Released as u8 {
            self.changed.notify_waiters();
        }
    }

    /// Resolves once the state is no longer `Held`.
    async fn until_not_held(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check: a change after it wakes us.
            notified.as_mut().enable();
            if self.state() != State::Held {
                return;
            }
            notified.await;
        }
    }

    async fn extend(&self, ttl: Duration) -> Result<bool> {
        let (ttl, _) = crate::locks::store_ttl(ttl)?;
        let _one_at_a_time = self.extending.lock().await;
        if self.state() == State::Released {
            return Ok(false);
        }
        let started = Instant::now();
        let extended = self.locks.extend_raw(&self.key, &self.token, ttl).await?;
        if extended {
            // The key's expiry is now + ttl, shorter or longer than before:
            // the latest extension sets it (one that started earlier but
            // finished later, e.g. the watchdog's, does not undo it).
            let until = started + ttl.saturating_sub(drift(ttl));
            let mut valid = self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
            if started >= valid.1 {
                *valid = (until, started);
            }
        } else {
            self.mark_lost();
        }
        Ok(extended)
    }
}

/// A held lock. Dropping it releases the lock in a spawned task (it never
/// blocks the runtime); [`LockGuard::release`] does the same and tells whether
/// the lock was still ours.
///
/// # Fencing tokens
///
/// [`LockGuard::fencing_token`] is issued atomically with the lock by the
/// acquire script: the name's counter plus one or the Redis server time in
/// µs, whichever is larger, and the counter keeps it. Per lock name on one
/// Redis server a token is therefore strictly larger than every token issued
/// before, even when the clock goes back (the counter) or the counter is lost
/// (expired after its retention, evicted, lost in a restart without
/// persistence: the clock, since a token is at most its time of issue as long
/// as the name sees fewer acquisitions than one per microsecond). After a
/// failover to a replica (asynchronous replication) the counter may be
/// behind, and the guarantee then rests on the new primary's clock being no
/// further behind the old one's than the time the failover took. With Redlock, each node counts on
/// its own; the token is the largest of the granting majority, and before the
/// guard is returned every node's counter is raised to it (a majority must
/// confirm), so the next majority, which overlaps, issues a larger one. Pass the token to the storage you
/// protect and have it refuse writes with a smaller token than it has seen:
/// that, not the lock alone, is what makes a paused or partitioned holder safe.
pub struct LockGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.shared.key)
            .field("fencing_token", &self.shared.fence)
            .field("state", &self.shared.state())
            .finish()
    }
}

impl LockGuard {
    pub(crate) fn new(locks: Locks, key: String, token: String, fence: u64, ttl: Duration, started: Instant) -> Self {
        LockGuard {
            shared: Arc::new(Shared {
                locks,
                key,
                token,
                fence,
                ttl,
                acquired_at: started,
                valid_until: Mutex::new((started + ttl.saturating_sub(drift(ttl)), started)),
                state: AtomicU8::new(State::Held as u8),
                changed: Notify::new(),
                watchdog: AtomicBool::new(false),
                extending: tokio::sync::Mutex::new(()),
            }),
            done: false,
        }
    }

    pub(crate) fn set_valid_until(&self, until: Instant) {
        self.shared.valid_until.lock().unwrap_or_else(|p| p.into_inner()).0 = until;
    }

    /// The fencing token: strictly increasing per lock name (see the type's docs).
    pub fn fencing_token(&self) -> u64 {
        self.shared.fence
    }

    /// The Redis key of the lock.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Until when the lock is guaranteed, as far as this process knows (the
    /// start of the last successful acquire or extend, plus the ttl, minus a
    /// drift margin).
    pub fn valid_until(&self) -> Instant {
        self.shared.valid_until()
    }

    /// True while the lock is held and within its validity.
    pub fn is_held(&self) -> bool {
        self.shared.state() == State::Held && Instant::now() < self.shared.valid_until()
    }

    /// Releases the lock if it is still ours (owner-checked in Lua). `Ok(false)`
    /// when it had already expired or been taken by someone else. Renewal
    /// stops before the release is sent.
    pub async fn release(mut self) -> Result<bool> {
        self.shared.mark_released();
        let result = self.shared.locks.release_raw(&self.shared.key, &self.shared.token).await;
        self.done = true;
        result
    }

    /// Sets the lock's time-to-live to `ttl` from now if it is still ours.
    /// `Ok(false)` (and [`LockGuard::lost`] resolves) when it was not.
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        self.shared.extend(ttl).await
    }

    /// A future that resolves the moment the lock can no longer be
    /// guaranteed: its validity ran out without a successful extension, an
    /// extension found the lock gone (Redis lost the key or another holder took
    /// it), or the guard was released or dropped. It holds no borrow of the
    /// guard, so it can be raced against the work (`tokio::select!`).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let shared = self.shared.clone();
        async move {
            loop {
                if shared.state() != State::Held {
                    return;
                }
                let until = shared.valid_until();
                if Instant::now() >= until {
                    shared.mark_lost();
                    return;
                }
                // Wakes at the validity's end, then looks again (an
                // extension may have moved it).
                tokio::select! {
                    () = shared.until_not_held() => return,
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
        }
    }

    /// Starts the watchdog: the lock is extended by its ttl every third of
    /// its ttl, until `max_hold` after it was acquired (the lock then runs out
    /// at the end of its last extension, and [`LockGuard::lost`] resolves).
    /// Renewal stops the instant the guard is released or dropped, or when
    /// an extension finds the lock gone. A failed extension (Redis
    /// unreachable) is retried sooner; if none succeeds before the validity
    /// ends, `lost()` resolves. Calling it again does nothing new
    /// (a second watchdog would only renew twice as often).
    pub fn start_watchdog(&self, max_hold: Duration) {
        if self.shared.state() != State::Held || self.shared.watchdog.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.shared.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "redlayer", "lock watchdog needs a tokio runtime; not renewing");
            return;
        };
        runtime.spawn(async move {
            let interval = (shared.ttl / 3).max(Duration::from_millis(1));
            // `Duration::MAX` ("no cap") is 100 years: a deadline that exists.
            let cap = shared.acquired_at + max_hold.min(redlayer_core::expiry::MAX_EXPIRY);
            let mut delay = interval;
            loop {
                tokio::select! {
                    () = shared.until_not_held() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                if shared.state() != State::Held {
                    return;
                }
                let now = Instant::now();
                if now >= cap {
                    tracing::debug!(target: "redlayer", key = %shared.key, "lock hold cap reached; renewal stops");
                    return;
                }
                // Never extend past the cap.
                let ttl = shared.ttl.min(cap - now).max(Duration::from_millis(1));
                let extended = tokio::select! {
                    r = shared.extend(ttl) => r,
                    () = shared.until_not_held() => return,
                };
                match extended {
                    Ok(true) => delay = interval,
                    Ok(false) => {
                        tracing::warn!(target: "redlayer", key = %shared.key, "lock lost: renewal found it gone");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(target: "redlayer", key = %shared.key, %error, "lock renewal failed; retrying");
                        delay = (interval / 3).max(Duration::from_millis(1));
                    }
                }
            }
        });
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.shared.mark_released();
        match &self.shared.locks.backend {
            Backend::Memory(mem) => {
                mem.release(&self.shared.key, &self.shared.token);
            }
            Backend::Redis(_) | Backend::Redlock(_) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let shared = self.shared.clone();
                    runtime.spawn(async move {
                        let _ = shared.locks.release_raw(&shared.key, &shared.token).await;
                    });
                }
            }
        }
    }
}
