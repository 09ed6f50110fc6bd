//! [`IdempotencyLayer`]: configuration.

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Method};
use redlayer_core::{FailurePolicy, Redis};
use tower_layer::Layer;

use crate::{Idempotency, Scope, Store};

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) store: Store,
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) scope: Scope,
    pub(crate) lease: Duration,
    pub(crate) max_hold: Duration,
    pub(crate) retention: Duration,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) max_key_len: usize,
    pub(crate) failure: FailurePolicy,
}

/// Applies [`Idempotency`] to a service. See the crate docs for the flow.
///
/// Defaults: methods `POST` and `PATCH`; key optional (requests without one
/// pass through); one global scope; in-flight lease 10 s, renewed every
/// 3.3 s while the handler runs, for at most 5 minutes; responses kept 24 h;
/// request bodies up to 1 MiB (413 beyond), responses stored up to 1 MiB
/// (larger ones are passed through and not stored); keys up to 255
/// characters; fail closed (503) when the store is unreachable.
///
/// gRPC requests (`content-type: application/grpc*`) get gRPC answers instead
/// of HTTP 4xx/5xx: HTTP 200 with `grpc-status` `INVALID_ARGUMENT` (missing or
/// malformed key), `ABORTED` (in flight), `FAILED_PRECONDITION` (key reused
/// with another request), `RESOURCE_EXHAUSTED` (body too large) or
/// `UNAVAILABLE`. gRPC answers are never stored (their status is in trailers,
/// or in the head of a trailers-only error) and stream through at once: a
/// retry after completion runs the handler again (only concurrent duplicates
/// are held off).
#[derive(Clone, Debug)]
#[must_use]
pub struct IdempotencyLayer {
    pub(crate) config: Arc<Config>,
}

impl IdempotencyLayer {
    /// A layer over this store.
    pub fn new(store: Store) -> Self {
        IdempotencyLayer {
            config: Arc::new(Config {
                store,
                header: HeaderName::from_static("idempotency-key"),
                methods: vec![Method::POST, Method::PATCH],
                required: false,
                scope: Scope::global(),
                lease: Duration::from_secs(10),
                max_hold: Duration::from_secs(300),
                retention: Duration::from_secs(24 * 3600),
                max_request_body: 1 << 20,
                max_response_body: 1 << 20,
                max_key_len: 255,
                failure: FailurePolicy::FailClosed,
            }),
        }
    }

    /// A layer over Redis (shared by every instance on it).
    pub fn redis(redis: Redis) -> Self {
        Self::new(Store::redis(redis))
    }

    /// A layer over the in-memory store (one process).
    pub fn memory() -> Self {
        Self::new(Store::memory())
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The methods the layer applies to (default `POST`, `PATCH`); others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config().methods = methods.into_iter().collect();
        self
    }

    /// When true, a covered request without a key gets `400` (default false: it passes through).
    pub fn require_key(mut self, required: bool) -> Self {
        self.config().required = required;
        self
    }

    /// Whose keys these are (default [`Scope::global`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.config().scope = scope;
        self
    }

    /// The in-flight lease (default 10 s): how long after a crash a retry can
    /// run again. Renewed every third of it while the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config().lease = lease.max(Duration::from_millis(10));
        self
    }

    /// The longest a handler may keep the lease renewed (default 5 minutes).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.config().max_hold = max_hold;
        self
    }

    /// How long a completed response is kept for replay (default 24 h).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config().retention = retention.max(Duration::from_secs(1));
        self
    }

    /// The largest request body read for the fingerprint (default 1 MiB; larger: 413).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config().max_request_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB; larger ones are not
    /// stored, and a retry runs the handler again).
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.config().max_response_body = bytes;
        self
    }

    /// The longest key accepted, in characters (default 255).
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.config().max_key_len = len.max(1);
        self
    }

    /// The header carrying the key (default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config().header = name;
        self
    }

    /// When the store is unreachable: [`FailurePolicy::FailClosed`] (default)
    /// answers 503; [`FailurePolicy::FailOpen`] runs the handler without
    /// idempotency. `LocalFallback` is treated as `FailClosed`. A store that
    /// answers with an error (out of memory, a corrupt record) always gets 503.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.config().failure = policy;
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency { inner, config: self.config.clone() }
    }
}
