//! What a layer does when Redis is slow or down.

/// The behaviour of a layer when its store does not answer within the timeout
/// or cannot be reached.
///
/// Each layer documents which variants it supports and its default; every
/// degraded decision is logged as a `tracing` warning with target `redlayer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through as if the layer were not there (rate limit: allow;
    /// cache: go to the origin).
    #[default]
    FailOpen,
    /// Refuse the request with `503 Service Unavailable`.
    FailClosed,
    /// Fall back to an in-process implementation with the same configuration
    /// until Redis answers again (per-instance only, so limits are per instance
    /// for that time; the rate limiter drops the fallback's counts once Redis
    /// decides again).
    LocalFallback,
}

/// Emits the `tracing` event for one degraded decision.
pub fn report_degraded(layer: &'static str, policy: FailurePolicy, error: &crate::Error) {
    let why = if error.is_unavailable() { "redis unavailable" } else { "redis call failed" };
    tracing::warn!(target: "redlayer", layer, ?policy, %error, "{why}; applying failure policy");
}
