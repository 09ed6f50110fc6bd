//! [`Retry`]: how long and how often [`Locks::acquire`](crate::Locks::acquire) tries again.

use redlayer_core::expiry::MAX_EXPIRY;
use std::{future::Future, time::Duration};

use tokio::time::Instant;

use crate::AcquireError;

/// A bounded retry policy for taking a busy lock: exponential backoff with
/// jitter between `min_delay` and `max_delay`, never waiting past `max_wait`
/// in total. When an attempt learns the current holder's remaining
/// time-to-live (the acquire script's answer, and memory locks), a delay is
/// cut short to it, plus jitter, so a waiter does not sleep long past a lock
/// that expired; the plain `SET NX PX` of [`Locks::fencing`](crate::Locks::fencing)
/// off does not ask for it (that would cost every acquisition a command).
///
/// An unreachable store is retried too, but only for
/// [`unavailable_wait`](Retry::unavailable_wait) in a row (default 1 s, enough
/// to ride out a reconnect), so that a Redis that is down is reported quickly
/// instead of holding every waiter for the whole `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Retry {
    pub(crate) max_wait: Duration,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) unavailable_wait: Duration,
}

/// How long an unreachable store is retried by default.
const UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);

impl Default for Retry {
    /// Wait up to 5 s, backing off from 10 ms to 200 ms.
    fn default() -> Self {
        Retry::new(Duration::from_secs(5))
    }
}

impl Retry {
    /// Retry for at most `max_wait` in total (delays 10 ms to 200 ms).
    /// `Duration::MAX` waits as long as it takes (100 years).
    pub fn new(max_wait: Duration) -> Self {
        Retry {
            max_wait: max_wait.min(MAX_EXPIRY),
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            unavailable_wait: UNAVAILABLE_WAIT,
        }
    }

    /// How long to keep trying while the store is unreachable, counted from
    /// the first failure in a row (default 1 s; never more than the total
    /// wait). `Duration::ZERO` gives up at the first failure.
    pub fn unavailable_wait(mut self, wait: Duration) -> Self {
        self.unavailable_wait = wait.min(MAX_EXPIRY);
        self
    }

    /// One attempt, no waiting.
    pub fn none() -> Self {
        Retry::new(Duration::ZERO)
    }

    /// The first delay and the largest one (each delay is jittered to 50–100 % of its value).
    pub fn delays(mut self, min_delay: Duration, max_delay: Duration) -> Self {
        self.min_delay = min_delay.max(Duration::from_millis(1));
        self.max_delay = max_delay.max(self.min_delay);
        self
    }

    /// The total wait.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The delay before attempt `attempt + 1` (`attempt` counts from 0),
    /// given the holder's remaining time-to-live when Redis reported one.
    pub(crate) fn delay(&self, attempt: u32, holder_ttl: Option<Duration>) -> Duration {
        let exp = self.min_delay.saturating_mul(1u32 << attempt.min(16)).min(self.max_delay);
        let mut delay = jitter(exp);
        if let Some(ttl) = holder_ttl.filter(|t| *t != Duration::MAX) {
            let soon = ttl + jitter(self.min_delay);
            delay = delay.min(soon);
        }
        delay.max(Duration::from_millis(1))
    }
}

impl Retry {
    /// Calls `attempt` until it succeeds or `max_wait` has passed. An attempt
    /// answers `Ok(Err(hint))` when the resource is busy (`hint`: the holder's
    /// remaining time-to-live), and an error when the store failed: an
    /// unavailable store is tried again for `unavailable_wait` in a row (and
    /// never past the deadline), any other error ends at once.
    pub(crate) async fn run<T, F, Fut>(self, mut attempt: F) -> Result<T, AcquireError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = redlayer_core::Result<Result<T, Duration>>>,
    {
        let start = Instant::now();
        let deadline = start + self.max_wait;
        let mut last_error = None;
        let mut unavailable_since = None;
        for round in 0u32.. {
            let hint = match attempt().await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(hint)) => {
                    (last_error, unavailable_since) = (None, None);
                    Some(hint)
                }
                Err(e) if e.is_unavailable() => {
                    last_error = Some(e);
                    unavailable_since.get_or_insert_with(Instant::now);
                    None
                }
                Err(e) => return Err(AcquireError::Store(e)),
            };
            let now = Instant::now();
            let gave_up_on_store = unavailable_since.is_some_and(|since| now >= since + self.unavailable_wait);
            if now >= deadline || gave_up_on_store {
                break;
            }
            tokio::time::sleep(self.delay(round, hint).min(deadline - now)).await;
        }
        Err(AcquireError::TimedOut { waited: start.elapsed(), last_error })
    }
}

/// A random duration between half of `d` and `d`.
fn jitter(d: Duration) -> Duration {
    let micros = d.as_micros().min(u64::MAX as u128) as u64;
    if micros < 2 {
        return d;
    }
    Duration::from_micros(rand::random_range(micros / 2..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_and_follow_the_holder() {
        let retry = Retry::new(Duration::from_secs(1)).delays(Duration::from_millis(10), Duration::from_millis(80));
        for _ in 0..100 {
            let first = retry.delay(0, None);
            assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10), "{first:?}");
            let late = retry.delay(20, None);
            assert!(late >= Duration::from_millis(40) && late <= Duration::from_millis(80), "{late:?}");
            let short = retry.delay(20, Some(Duration::from_millis(2)));
            assert!(short <= Duration::from_millis(12), "{short:?}");
        }
    }
}
