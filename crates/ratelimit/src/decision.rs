//! [`Decision`]: what the limiter decided, for every policy.

use std::{sync::Arc, time::Duration};

use redlayer_core::FailurePolicy;

use crate::Quota;

/// The state of one policy after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The policy's name.
    pub name: Arc<str>,
    /// The policy's quota.
    pub quota: Quota,
    /// True when this policy alone would allow the request.
    pub allowed: bool,
    /// Cost units that could still be spent now.
    pub remaining: u64,
    /// Time until more quota becomes available (draft-10's `t`): GCRA and
    /// token bucket, the next unit; a fixed window, its end; a sliding log,
    /// its oldest entry's expiry; a sliding window counter, the time until its
    /// count is whole again. Zero when nothing is used; never later than
    /// `retry_after` when denied.
    pub reset: Duration,
    /// When denied: time until the same request could pass (`None` if it never
    /// can, its cost being larger than the limit).
    pub retry_after: Option<Duration>,
}

/// What the limiter decided for one request, with every policy's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) policies: Vec<PolicyStatus>,
    pub(crate) degraded: Option<FailurePolicy>,
    pub(crate) from_deny_cache: bool,
    /// `RateLimit-Policy` rendered once per limiter, when every policy is reported.
    pub(crate) policy_field: Option<http::HeaderValue>,
}

impl Decision {
    /// True when the request may go on (all policies allowed it, or Redis was
    /// down under fail-open, or shadow mode).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Every policy's status, in the order the policies were added.
    pub fn policies(&self) -> &[PolicyStatus] {
        &self.policies
    }

    /// The longest wait among the denying policies (`None` when allowed, or
    /// when no wait helps: a denying policy the request's cost can never fit).
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        let mut longest = None;
        for p in self.policies.iter().filter(|p| !p.allowed) {
            longest = longest.max(Some(p.retry_after?));
        }
        longest
    }

    /// `Some(policy)` when the store was unavailable and the failure policy decided.
    pub fn degraded(&self) -> Option<FailurePolicy> {
        self.degraded
    }

    /// True when the local deny cache answered (no store call).
    pub fn from_deny_cache(&self) -> bool {
        self.from_deny_cache
    }

    /// The most restrictive policy (least remaining), for the legacy headers.
    pub(crate) fn tightest(&self) -> Option<&PolicyStatus> {
        self.policies.iter().min_by_key(|p| (p.allowed, p.remaining))
    }
}

/// `Retry-After` seconds: rounded up, never 0 while there is a wait.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}
