//! [`RateLimitLayer`].

use std::sync::Arc;

use http::request::Parts;
use tower_layer::Layer;

use crate::{Key, NoKey, RateLimit, RateLimiter};

/// A tower layer that limits requests with a [`RateLimiter`].
///
/// Works in axum `Router::layer` / `route_layer` and tonic
/// `Server::builder().layer()`. Every clone of the service shares the
/// limiter's state (in Redis, or in the memory store).
#[derive(Clone, Debug)]
#[must_use]
pub struct RateLimitLayer {
    pub(crate) limiter: RateLimiter,
    pub(crate) config: Arc<LayerConfig>,
}

/// Cost function of a request.
pub(crate) type CostFn = Arc<dyn Fn(&Parts) -> u64 + Send + Sync>;

#[derive(Clone)]
pub(crate) struct LayerConfig {
    pub(crate) key: Key,
    pub(crate) no_key: NoKey,
    pub(crate) cost: Option<CostFn>,
    pub(crate) on_allowed: bool,
    pub(crate) legacy: bool,
}

impl std::fmt::Debug for LayerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerConfig")
            .field("no_key", &self.no_key)
            .field("on_allowed", &self.on_allowed)
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer over `limiter`, keyed by the peer IP ([`Key::peer_ip`]) unless
    /// a policy has its own key or [`RateLimitLayer::key`] says otherwise.
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer {
            limiter,
            config: Arc::new(LayerConfig {
                key: Key::peer_ip(),
                no_key: NoKey::Shared,
                cost: None,
                on_allowed: true,
                legacy: false,
            }),
        }
    }

    /// The key of every policy that has none of its own (default: peer IP).
    pub fn key(mut self, key: impl Into<Key>) -> Self {
        Arc::make_mut(&mut self.config).key = key.into();
        self
    }

    /// What to do when a policy's key cannot be extracted (default [`NoKey::Shared`]).
    pub fn no_key(mut self, no_key: NoKey) -> Self {
        Arc::make_mut(&mut self.config).no_key = no_key;
        self
    }

    /// The cost of a request (default 1), from its head: e.g. a bulk endpoint
    /// costing its item count. 0 only reads the state.
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(&Parts) -> u64 + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).cost = Some(Arc::new(cost));
        self
    }

    /// Send `RateLimit-Policy` / `RateLimit` on allowed responses too (default true).
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.config).on_allowed = on;
        self
    }

    /// Also send the legacy `X-RateLimit-Limit`, `-Remaining` and `-Reset`
    /// (seconds until reset) of the tightest policy (default false).
    pub fn legacy_headers(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.config).legacy = on;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone(), config: self.config.clone() }
    }
}
