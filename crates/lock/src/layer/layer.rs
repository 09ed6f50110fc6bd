//! [`LockLayer`]: configuration.

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use redlayer_core::FailurePolicy;
use tower_layer::Layer;

use crate::{Locks, Retry, layer::KeyLock};

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) locks: Locks,
    pub(crate) ttl: Duration,
    pub(crate) max_hold: Duration,
    pub(crate) wait: Retry,
    pub(crate) busy_status: StatusCode,
    pub(crate) failure: FailurePolicy,
}

/// Applies [`KeyLock`]: requests with the same key run one at a time.
///
/// Defaults: lock ttl 10 s renewed while the handler runs (at most 5
/// minutes: a handler still running when its lock runs out is stopped and
/// answered `503`); wait at most 5 s, then `409 Conflict`; fail closed
/// (`503`) when Redis stays unreachable for 1 s.
#[derive(Debug, Clone)]
#[must_use]
pub struct LockLayer<K> {
    pub(crate) config: Arc<Config>,
    pub(crate) key: K,
}

impl<K> LockLayer<K> {
    /// A layer taking the lock named by `key` (see [`ExtractKey`](crate::layer::ExtractKey)).
    pub fn new(locks: Locks, key: K) -> Self {
        LockLayer {
            config: Arc::new(Config {
                // The layer never hands the fencing token to the handler, so it
                // issues none: no per-key counter (and its retention) for keys a
                // client picks, one command per request, state gone at release.
                locks: locks.fencing(false).fence_retention(Duration::from_secs(1)),
                ttl: Duration::from_secs(10),
                max_hold: Duration::from_secs(300),
                wait: Retry::default(),
                busy_status: StatusCode::CONFLICT,
                failure: FailurePolicy::FailClosed,
            }),
            key,
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The lock's ttl (default 10 s): how long a crashed instance blocks the
    /// key. It is renewed every third of it, and a handler whose renewal is
    /// late by two thirds of it (Redis out of reach, a stalled runtime) is
    /// stopped with `503`: keep it to a second or more.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config().ttl = ttl.max(Duration::from_millis(10));
        self
    }

    /// The longest a handler keeps the lock renewed (default 5 minutes): a
    /// handler still running when the lock then runs out is stopped and
    /// answered `503`.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.config().max_hold = max_hold;
        self
    }

    /// How long and how often to wait for a busy key (default: up to 5 s).
    pub fn wait(mut self, wait: Retry) -> Self {
        self.config().wait = wait;
        self
    }

    /// The status answered when the wait runs out (default 409; 503 or 429 are common too).
    pub fn busy_status(mut self, status: StatusCode) -> Self {
        self.config().busy_status = status;
        self
    }

    /// When Redis is unreachable (for the wait's
    /// [`unavailable_wait`](Retry::unavailable_wait), 1 s by default):
    /// `FailClosed` (default, 503) or `FailOpen` (run without the lock). Any
    /// other store error (a foreign value at the key, a script error) is
    /// answered 503 whatever the policy.
    /// `LocalFallback` is treated as `FailClosed`.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.config().failure = policy;
        self
    }
}

impl<S, K: Clone> Layer<S> for LockLayer<K> {
    type Service = KeyLock<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyLock { inner, key: self.key.clone(), config: self.config.clone() }
    }
}
