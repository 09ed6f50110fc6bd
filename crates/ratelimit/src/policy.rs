//! [`Policy`]: a named quota, its algorithm and (optionally) its own key.

use std::sync::Arc;

use crate::{Algorithm, Key, Quota};

/// One limit: a name (shown in the `RateLimit` headers and used in Redis
/// keys), an [`Algorithm`], a [`Quota`], and optionally its own [`Key`]
/// (otherwise the layer's key).
///
/// Names are 1 to 32 characters of `A-Z a-z 0-9 _ - .`; anything else is a
/// programming error and panics when the policy is built.
///
/// ```
/// use redlayer_ratelimit::{Key, Policy, Quota};
/// let per_ip = Policy::gcra("per-ip", Quota::per_second(10).burst(20));
/// let per_key = Policy::fixed_window("per-key", Quota::per_day(10_000)).key(Key::header("x-api-key"));
/// let bucket = Policy::token_bucket("bucket", 50, Quota::per_second(5));
/// # let _ = (per_ip, per_key, bucket);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) algorithm: Algorithm,
    pub(crate) quota: Quota,
    pub(crate) key: Option<Key>,
}

/// A policy name as [`Policy::new`] takes it: `[A-Za-z0-9_.-]`, not empty.
/// Such a name needs no escaping in a structured-field string or in JSON,
/// which is what lets the answer fields be written without a serializer.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The largest count of a [`Policy::sliding_log`] (each unit is a sorted-set member).
pub const MAX_SLIDING_LOG_COUNT: u64 = 10_000;

impl Policy {
    /// A policy with any algorithm.
    pub fn new(name: &str, algorithm: Algorithm, quota: Quota) -> Self {
        assert!(
            name.len() <= 32 && is_plain_name(name),
            "policy name must be 1..=32 characters of [A-Za-z0-9_.-], got {name:?}"
        );
        Policy { name: Arc::from(name), algorithm, quota, key: None }
    }

    /// GCRA (the default algorithm).
    pub fn gcra(name: &str, quota: Quota) -> Self {
        Self::new(name, Algorithm::Gcra, quota)
    }

    /// A token bucket of `capacity` tokens, refilled continuously at `refill`
    /// (e.g. `Quota::per_second(5)`); computed as GCRA with burst = capacity
    /// (capped as [`Quota::burst`] says).
    pub fn token_bucket(name: &str, capacity: u64, refill: Quota) -> Self {
        Self::new(name, Algorithm::TokenBucket, refill.burst(capacity))
    }

    /// A fixed window (up to 2x the count around a window boundary; see [`Algorithm::FixedWindow`]).
    pub fn fixed_window(name: &str, quota: Quota) -> Self {
        Self::new(name, Algorithm::FixedWindow, quota)
    }

    /// A sliding window counter (two weighted counters).
    pub fn sliding_window(name: &str, quota: Quota) -> Self {
        Self::new(name, Algorithm::SlidingWindowCounter, quota)
    }

    /// An exact sliding window log: one sorted-set member per request unit, so
    /// its memory (and the work of a costed request) grows with the count. The
    /// count is therefore capped at [`MAX_SLIDING_LOG_COUNT`]; use GCRA or the
    /// sliding window counter for larger quotas. The in-memory store and the
    /// local fallback bound their keys by number, not size: a log key holds
    /// up to `count` timestamps of 8 bytes (80 KB at the cap), so size
    /// [`RateLimiterBuilder::fallback_max_keys`](crate::RateLimiterBuilder::fallback_max_keys)
    /// with that in mind.
    pub fn sliding_log(name: &str, quota: Quota) -> Self {
        let quota = if quota.count() > MAX_SLIDING_LOG_COUNT {
            Quota::new(MAX_SLIDING_LOG_COUNT, quota.period())
        } else {
            quota
        };
        Self::new(name, Algorithm::SlidingWindowLog, quota)
    }

    /// This policy's own key (e.g. per API key while the layer counts per IP).
    pub fn key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The end of this policy's state keys: its name, its algorithm's state
    /// and its quota (count, period in µs, burst). Two limiters (or layers)
    /// on one store that give one name to different quotas (`per-ip` at 5
    /// per minute on a login route, at 50 per second elsewhere) then keep
    /// apart states: sharing, each would pull the other's back into its own
    /// range, and the strict one would let through what the loose one does.
    /// The same name and quota share one state (and a changed quota starts
    /// from empty).
    pub(crate) fn state_suffix(&self) -> String {
        let spec = self.spec();
        format!("{}:{}:{}-{}-{}", self.name, self.algorithm.state_name(), spec.count, spec.period_us, spec.burst)
    }

    pub(crate) fn spec(&self) -> crate::store::PolicySpec {
        crate::store::PolicySpec {
            algorithm: self.algorithm.code(),
            count: self.quota.count() as i64,
            period_us: self.quota.period_us(),
            burst: self.quota.burst_size() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_log_counts_are_capped() {
        let policy = Policy::sliding_log("log", Quota::per_day(1_000_000_000));
        assert_eq!(policy.quota().count(), MAX_SLIDING_LOG_COUNT);
        assert_eq!(policy.quota().period(), std::time::Duration::from_secs(86_400));
        assert_eq!(Policy::sliding_log("log", Quota::per_minute(50)).quota().count(), 50);
    }
}
