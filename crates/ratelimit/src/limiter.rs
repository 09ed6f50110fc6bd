//! [`RateLimiter`]: policies + store + failure policy + deny cache; the
//! plain async API (`check`) and the engine behind the layer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt as _;
use redlayer_core::{
    Error, FailurePolicy, KeyPart,
    memory::{Clock, ExpiringMap},
    report_degraded,
};

use crate::{
    Algorithm, Decision, Policy, PolicyStatus,
    memory::MemoryStore,
    store::{PolicySpec, RawOutcome, Store},
};

/// Default bound of the local deny cache (entries).
pub const DEFAULT_DENY_CACHE_ENTRIES: usize = 10_000;
/// Default bound of the local fallback limiter (keys); see
/// [`RateLimiterBuilder::fallback_max_keys`].
pub const DEFAULT_FALLBACK_KEYS: usize = 100_000;

/// A rate limiter: a set of [`Policy`]s decided together over one [`Store`].
///
/// Cheap to clone (an `Arc`); every clone, and every layer built from it,
/// shares the same state. Use it directly for anything that is not an HTTP
/// request (jobs, websocket messages) with [`RateLimiter::check`], or wrap
/// it in a [`RateLimitLayer`](crate::RateLimitLayer).
///
/// ```
/// use redlayer_ratelimit::{Policy, Quota, RateLimiter, Store};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let limiter = RateLimiter::builder(Store::memory())
///     .policy(Policy::gcra("per-second", Quota::per_second(10)))
///     .policy(Policy::fixed_window("per-day", Quota::per_day(1000)))
///     .build();
/// let decision = limiter.check("user-42", 1).await;
/// assert!(decision.is_allowed());
/// assert_eq!(decision.policies()[1].remaining, 999);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RateLimiter {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) policies: Vec<Policy>,
    specs: Vec<PolicySpec>,
    /// `{prefix}:rl:{` : the start of every shared key (see [`RateLimiter::shared_key`]).
    shared_head: String,
    /// `}:{policy}:{alg}` of each policy: the end of its shared key.
    shared_tails: Vec<String>,
    /// `{prefix}:rl:{tag}:{policy}:{alg}:` of each policy: the start of its tagged key.
    tagged_heads: Vec<String>,
    /// `RateLimit-Policy` listing every policy.
    policy_field: Option<http::HeaderValue>,
    failure: FailurePolicy,
    fallback: MemoryStore,
    /// Set once the fallback decided: from then on, keys the store decides
    /// are dropped from the fallback (see `decide_in_store`).
    fallback_used: std::sync::atomic::AtomicBool,
    deny_cache: Option<DenyCache>,
    shadow: bool,
    timeout: Duration,
}

#[derive(Debug)]
struct DenyCache {
    /// Key → when its block ends, on `clock`. An entry lives at most [`DENY_RECHECK`].
    map: ExpiringMap<String, Duration>,
    /// The memory store's clock when it was given one (a test's manual
    /// clock moves the cache and the store together), else a monotonic one.
    clock: Arc<dyn Clock>,
    max: usize,
    /// When the full cache was last swept (ms on `clock`): expired denials
    /// count in `map.len()` until swept, so a full cache is swept (at most
    /// every [`DENY_SWEEP_EVERY_MS`]) before it refuses a new denial.
    last_sweep_ms: AtomicU64,
}

const DENY_SWEEP_EVERY_MS: u64 = 100;

/// The longest a denial is answered from the deny cache before the store is
/// asked again: a reset in Redis (an operator deleting a key, a flush, a
/// restart) reaches every instance within this, for one store call per
/// blocked key and instance.
pub const DENY_RECHECK: Duration = Duration::from_secs(1);

/// Time since this clock was made, never going back (a wall clock's step
/// must not lengthen a cached denial).
#[derive(Debug)]
struct Monotonic(Instant);

impl Clock for Monotonic {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

impl DenyCache {
    fn new(max: usize, clock: Option<Arc<dyn Clock>>) -> Self {
        let clock = clock.unwrap_or_else(|| Arc::new(Monotonic(Instant::now())));
        DenyCache { map: ExpiringMap::with_clock(clock.clone()), clock, max, last_sweep_ms: AtomicU64::new(0) }
    }

    /// Remembers that `key` is blocked for `ttl`, unless the cache is full of live denials.
    fn insert(&self, key: &str, ttl: Duration) {
        let now = self.clock.now();
        if self.map.len() >= self.max {
            let now_ms = now.as_millis() as u64;
            let last = self.last_sweep_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) < DENY_SWEEP_EVERY_MS
                || self.last_sweep_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                return;
            }
            self.map.sweep();
            if self.map.len() >= self.max {
                return;
            }
        }
        let Some(until) = now.checked_add(ttl) else { return };
        self.map.insert(key.to_owned(), until, Some(ttl.min(DENY_RECHECK)));
    }

    /// How long `key` stays blocked, when its denial is cached.
    fn blocked_for(&self, key: &str) -> Option<Duration> {
        let left = self.map.get(key)?.saturating_sub(self.clock.now());
        (!left.is_zero()).then_some(left)
    }
}

/// Builds a [`RateLimiter`].
#[derive(Debug)]
#[must_use]
pub struct RateLimiterBuilder {
    store: Store,
    policies: Vec<Policy>,
    tag: KeyPart,
    failure: FailurePolicy,
    deny_cache: usize,
    fallback_keys: usize,
    shadow: bool,
    timeout: Option<Duration>,
}

impl RateLimiter {
    /// A builder over `store`. Add at least one policy.
    pub fn builder(store: Store) -> RateLimiterBuilder {
        RateLimiterBuilder {
            store,
            policies: Vec::new(),
            tag: KeyPart::fixed("default"),
            failure: FailurePolicy::FailOpen,
            deny_cache: DEFAULT_DENY_CACHE_ENTRIES,
            fallback_keys: DEFAULT_FALLBACK_KEYS,
            shadow: false,
            timeout: None,
        }
    }

    /// The policies.
    pub fn policies(&self) -> &[Policy] {
        &self.inner.policies
    }

    /// Spends `cost` units of every policy for `key` (a user id, a job name;
    /// bounded/hashed like any client value), atomically: if any policy denies,
    /// none is charged. `cost` 0 only reads. The failure policy applies when
    /// the store is unavailable (see [`Decision::degraded`]).
    ///
    /// `key` is used for every policy (their own [`Policy::key`] extractors are
    /// for the layer), under the one-client key layout (see the crate docs):
    /// a layer over this limiter whose policies have no key of their own shares
    /// these counters.
    pub async fn check(&self, key: &str, cost: u64) -> Decision {
        let id = KeyPart::client(key);
        let keys = (0..self.inner.policies.len()).map(|i| self.shared_key(&id, i)).collect();
        let active = (0..self.inner.policies.len()).collect();
        self.decide(keys, active, cost).await
    }

    /// Like [`RateLimiter::check`], but returns the store's error instead of
    /// applying the failure policy (no deny cache, no shadow mode).
    pub async fn try_check(&self, key: &str, cost: u64) -> Result<Decision, Error> {
        let id = KeyPart::client(key);
        let keys: Vec<String> = (0..self.inner.policies.len()).map(|i| self.shared_key(&id, i)).collect();
        let (allowed, raw) = self.timed(self.inner.store.decide(&keys, &self.inner.specs, cost)).await?;
        let active: Vec<usize> = (0..self.inner.policies.len()).collect();
        Ok(self.build_decision(allowed, &raw, &active))
    }

    /// Key of policy `p` when every policy counts the same client: the client
    /// is the hash tag (one slot per client: spreads over a cluster).
    /// (`key_with("rl", id, "{policy}:{alg}")`, from parts rendered once.)
    pub(crate) fn shared_key(&self, id: &KeyPart, policy: usize) -> String {
        let (head, id, tail) = (&self.inner.shared_head, id.as_str(), &self.inner.shared_tails[policy]);
        let mut key = String::with_capacity(head.len() + id.len() + tail.len());
        key.push_str(head);
        key.push_str(id);
        key.push_str(tail);
        key
    }

    /// Key of policy `p` when policies count different clients: the limiter's
    /// name is the hash tag, so one decision's keys share a slot.
    /// (`key_with("rl", tag, "{policy}:{alg}:{id}")`, from parts rendered once.)
    pub(crate) fn tagged_key(&self, id: &KeyPart, policy: usize) -> String {
        let (head, id) = (&self.inner.tagged_heads[policy], id.as_str());
        let mut key = String::with_capacity(head.len() + id.len());
        key.push_str(head);
        key.push_str(id);
        key
    }

    /// `fut` bounded by the decision timeout. Not an async fn: one taking
    /// the store's future by value would hold it twice in its own.
    fn timed<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> impl Future<Output = Result<T, Error>> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, fut).map(move |r| r.unwrap_or(Err(Error::Timeout(timeout))))
    }

    /// One decision: `keys[i]` is the state key of policy `active[i]`.
    pub(crate) async fn decide(&self, keys: Vec<String>, active: Vec<usize>, cost: u64) -> Decision {
        match self.decide_locally(&keys, &active, cost) {
            Some(decision) => decision,
            None => self.decide_in_store(keys, active, cost).await,
        }
    }

    /// The decisions that need no store: no policy applies, or the deny cache knows.
    pub(crate) fn decide_locally(&self, keys: &[String], active: &[usize], cost: u64) -> Option<Decision> {
        if active.is_empty() {
            return Some(Decision {
                allowed: true,
                policies: Vec::new(),
                degraded: None,
                from_deny_cache: false,
                policy_field: None,
            });
        }
        let cache = self.inner.deny_cache.as_ref().filter(|_| cost > 0)?;
        self.cached_denial(cache, keys, active).map(|d| self.shadowed(d))
    }

    /// A decision by the store (or the failure policy).
    pub(crate) async fn decide_in_store(&self, keys: Vec<String>, active: Vec<usize>, cost: u64) -> Decision {
        let inner = &self.inner;
        // Every policy applies (the usual case): no copy of the specs.
        let specs: std::borrow::Cow<'_, [PolicySpec]> = if active.len() == inner.specs.len() {
            std::borrow::Cow::Borrowed(&inner.specs)
        } else {
            active.iter().map(|&i| inner.specs[i]).collect()
        };
        // A denial's retry time counts from when the store ran the script,
        // before its answer came back: the deny cache counts from the send.
        let sent = inner.deny_cache.as_ref().filter(|_| cost == 1).map(|cache| cache.clock.now());
        let result = self.timed(inner.store.decide(&keys, &specs, cost)).await;
        let decision = match result {
            Ok((allowed, raw)) => {
                // The store decides these keys again: what the fallback
                // counted for them during an outage must not deny them in a
                // later one. (Only these: on a cluster with one master down,
                // the other masters' keys succeed meanwhile.)
                if inner.fallback_used.load(Ordering::Relaxed) {
                    inner.fallback.forget(&keys);
                }
                if let (Some(cache), Some(sent)) = (&inner.deny_cache, sent) {
                    let answered_after = cache.clock.now().saturating_sub(sent);
                    for (key, outcome) in keys.iter().zip(&raw) {
                        let left = Duration::from_micros(outcome.retry_us.max(0) as u64).saturating_sub(answered_after);
                        if !outcome.allowed && outcome.remaining == 0 && !left.is_zero() {
                            cache.insert(key, left);
                        }
                    }
                }
                self.build_decision(allowed, &raw, &active)
            }
            Err(error) => {
                report_degraded("ratelimit", inner.failure, &error);
                match inner.failure {
                    FailurePolicy::FailClosed => Decision {
                        allowed: false,
                        policies: Vec::new(),
                        degraded: Some(FailurePolicy::FailClosed),
                        from_deny_cache: false,
                        policy_field: None,
                    },
                    FailurePolicy::LocalFallback => {
                        inner.fallback_used.store(true, Ordering::Relaxed);
                        let (allowed, raw) = inner.fallback.decide(&keys, &specs, cost);
                        let mut d = self.build_decision(allowed, &raw, &active);
                        d.degraded = Some(FailurePolicy::LocalFallback);
                        d
                    }
                    _ => Decision {
                        allowed: true,
                        policies: Vec::new(),
                        degraded: Some(FailurePolicy::FailOpen),
                        from_deny_cache: false,
                        policy_field: None,
                    },
                }
            }
        };
        self.shadowed(decision)
    }

    fn shadowed(&self, mut decision: Decision) -> Decision {
        if self.inner.shadow && !decision.allowed {
            if decision.degraded == Some(FailurePolicy::FailClosed) {
                // Already reported as degraded; shadow mode never blocks.
                tracing::info!(target: "redlayer", "rate limit store unavailable (shadow mode: allowed)");
            } else {
                let denied: Vec<&str> = decision.policies.iter().filter(|p| !p.allowed).map(|p| &*p.name).collect();
                tracing::info!(target: "redlayer", ?denied, "rate limit exceeded (shadow mode: allowed)");
            }
            decision.allowed = true;
        }
        decision
    }

    fn cached_denial(&self, cache: &DenyCache, keys: &[String], active: &[usize]) -> Option<Decision> {
        let mut policies = Vec::new();
        for (key, &i) in keys.iter().zip(active) {
            if let Some(left) = cache.blocked_for(key) {
                let p = &self.inner.policies[i];
                policies.push(PolicyStatus {
                    name: p.name.clone(),
                    quota: p.quota,
                    allowed: false,
                    remaining: 0,
                    reset: left,
                    retry_after: Some(left),
                });
            }
        }
        let policy_field = self.all_policies_field(policies.len());
        (!policies.is_empty()).then_some(Decision {
            allowed: false,
            policies,
            degraded: None,
            from_deny_cache: true,
            policy_field,
        })
    }

    fn build_decision(&self, allowed: bool, raw: &[RawOutcome], active: &[usize]) -> Decision {
        let policies: Vec<PolicyStatus> = raw
            .iter()
            .zip(active)
            .map(|(o, &i)| {
                let p = &self.inner.policies[i];
                let retry_after = (!o.allowed && o.retry_us >= 0).then(|| Duration::from_micros(o.retry_us as u64));
                PolicyStatus {
                    name: p.name.clone(),
                    quota: p.quota,
                    allowed: o.allowed,
                    remaining: o.remaining.max(0) as u64,
                    reset: more_quota_in(p, o, retry_after),
                    retry_after,
                }
            })
            .collect();
        let policy_field = self.all_policies_field(policies.len());
        Decision { allowed, policies, degraded: None, from_deny_cache: false, policy_field }
    }

    fn all_policies_field(&self, reported: usize) -> Option<http::HeaderValue> {
        self.inner.policy_field.clone().filter(|_| reported == self.inner.policies.len())
    }
}

/// The time until `p` has more quota to give (draft-10's `t`), from a store's
/// outcome, whose `reset_us` is the time until the quota is whole again.
/// GCRA gains a unit every emission interval: the next one comes when the
/// state's distance from now has shrunk below the next multiple of it. A
/// fixed window's units come back at its end, a sliding log's as its oldest
/// entry leaves (both `reset_us` already). A sliding window counter's
/// estimate decays continuously: `reset_us`, or the retry time when denied,
/// so that `Retry-After` never points earlier than `t`.
fn more_quota_in(p: &Policy, o: &RawOutcome, retry_after: Option<Duration>) -> Duration {
    let whole_in = o.reset_us.max(0);
    let next = match p.algorithm {
        Algorithm::Gcra | Algorithm::TokenBucket if whole_in > 0 => {
            let spec = p.spec();
            let interval = spec.gcra_interval();
            let dvt = interval.saturating_mul(spec.burst);
            let remaining = o.remaining.max(0);
            whole_in.saturating_sub(dvt).saturating_add(remaining.saturating_add(1).saturating_mul(interval))
        }
        _ => whole_in,
    };
    let next = Duration::from_micros(next.clamp(0, whole_in) as u64);
    match retry_after {
        Some(retry) => next.min(retry),
        None => next,
    }
}

impl RateLimiterBuilder {
    /// Adds a policy. All policies of a limiter are decided together, atomically.
    pub fn policy(mut self, policy: Policy) -> Self {
        assert!(self.policies.iter().all(|p| p.name != policy.name), "duplicate policy name {:?}", policy.name);
        self.policies.push(policy);
        self
    }

    /// The limiter's name (default `default`): the hash tag of its keys when its
    /// policies count different clients (see the crate docs, "Redis Cluster").
    /// Give each such limiter its own name to spread them over a cluster.
    pub fn name(mut self, name: &str) -> Self {
        self.tag = KeyPart::fixed(name);
        self
    }

    /// What to do when the store is slow or down (default
    /// [`FailurePolicy::FailOpen`]; `FailClosed` answers 503;
    /// `LocalFallback` decides in this process's memory with the same policies
    /// until the store answers again).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Bound of the local deny cache (default [`DEFAULT_DENY_CACHE_ENTRIES`]);
    /// 0 turns it off. The cache holds only denials ("this key is blocked until
    /// T"), so it is exact across instances: a blocked client is refused
    /// in-process, with no store call, until its block ends, asking the store
    /// again at most every [`DENY_RECHECK`] (1 s) so that a reset in Redis is
    /// seen.
    pub fn deny_cache(mut self, max_entries: usize) -> Self {
        self.deny_cache = max_entries;
        self
    }

    /// Bound of the [`FailurePolicy::LocalFallback`] limiter (default
    /// [`DEFAULT_FALLBACK_KEYS`]): keys come from clients (an API key header
    /// may hold anything), so while the store is down and the fallback holds
    /// this many live keys, new keys are counted together in one overflow
    /// bucket per policy (limited together, never unlimited) instead of
    /// growing memory.
    pub fn fallback_max_keys(mut self, max_keys: usize) -> Self {
        self.fallback_keys = max_keys.max(1);
        self
    }

    /// Shadow mode: decide, report (headers, a `tracing` event) but never
    /// block (not even a fail-closed decision while the store is down).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The per-decision timeout (default: the Redis handle's timeout, 500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Builds the limiter. Panics without any policy (a programming error).
    pub fn build(self) -> RateLimiter {
        assert!(!self.policies.is_empty(), "a RateLimiter needs at least one policy");
        let timeout = self
            .timeout
            .or_else(|| self.store.redis_handle().map(|r| r.timeout()))
            .unwrap_or(redlayer_core::DEFAULT_TIMEOUT);
        let keys = self.store.keys();
        let suffixes: Vec<String> = self.policies.iter().map(Policy::state_suffix).collect();
        // The keys are `KeyBuilder::key_with` keys; their constant parts are rendered here once.
        let shared_head = format!("{}:rl:{{", keys.prefix());
        let shared_tails = suffixes.iter().map(|s| format!("}}:{s}")).collect();
        let tagged_heads = suffixes.iter().map(|s| keys.key_with("rl", &self.tag, &format!("{s}:"))).collect();
        let deny_cache = (self.deny_cache > 0).then(|| DenyCache::new(self.deny_cache, self.store.clock()));
        RateLimiter {
            inner: Arc::new(Inner {
                shared_head,
                shared_tails,
                tagged_heads,
                policy_field: crate::headers::policy_field(&self.policies),
                specs: self.policies.iter().map(Policy::spec).collect(),
                store: self.store,
                policies: self.policies,
                failure: self.failure,
                fallback: MemoryStore::bounded(None, self.fallback_keys),
                fallback_used: std::sync::atomic::AtomicBool::new(false),
                deny_cache,
                shadow: self.shadow,
                timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;

    /// The keys built from parts rendered once are the `KeyBuilder` keys.
    #[test]
    fn keys_are_key_builder_keys() {
        let limiter = RateLimiter::builder(Store::memory())
            .name("api")
            .policy(Policy::gcra("burst", Quota::per_second(5)))
            .policy(Policy::sliding_log("daily", Quota::per_day(100)))
            .build();
        let keys = redlayer_core::KeyBuilder::default();
        let id = KeyPart::client("198.51.100.7");
        for i in 0..2 {
            let policy = &limiter.policies()[i];
            let spec = policy.spec();
            let suffix = format!(
                "{}:{}:{}-{}-{}",
                policy.name,
                policy.algorithm.state_name(),
                spec.count,
                spec.period_us,
                spec.burst
            );
            assert_eq!(limiter.shared_key(&id, i), keys.key_with("rl", &id, &suffix));
            let tagged = format!("{suffix}:{}", id.as_str());
            assert_eq!(limiter.tagged_key(&id, i), keys.key_with("rl", &KeyPart::fixed("api"), &tagged));
        }
    }

    /// Draft-10: `t` is the time until more quota comes, and `Retry-After`
    /// never points earlier than it, whatever the algorithm.
    #[tokio::test]
    async fn t_is_the_time_until_more_quota_and_never_after_retry_after() {
        let quota = Quota::per_minute(6).burst(3); // GCRA: a unit every 10 s
        for policy in [
            Policy::gcra("p", quota),
            Policy::token_bucket("p", 3, Quota::per_minute(6)),
            Policy::fixed_window("p", Quota::per_minute(3)),
            Policy::sliding_window("p", Quota::per_minute(3)),
            Policy::sliding_log("p", Quota::per_minute(3)),
        ] {
            let algorithm = policy.algorithm();
            // A clock that stands still mid-window: no window ends during the test.
            let clock = redlayer_core::memory::ManualClock::new(Duration::from_secs(1_700_000_030));
            let store = Store::memory_with_clock(Some(Arc::new(clock)));
            let limiter = RateLimiter::builder(store).policy(policy).build();
            let first = limiter.check("k", 1).await;
            let status = &first.policies()[0];
            // A sliding window counter weighs the previous window: up to two windows.
            assert!(
                status.reset > Duration::ZERO && status.reset <= Duration::from_secs(120),
                "{algorithm:?}: {status:?}"
            );
            if matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
                // Two units left of three; the used one is back in 10 s, not 10 s per unit used.
                assert_eq!(status.remaining, 2);
                assert!(status.reset <= Duration::from_secs(10) && status.reset > Duration::from_secs(9), "{status:?}");
            }
            for _ in 0..2 {
                limiter.check("k", 1).await;
            }
            let denied = limiter.check("k", 1).await;
            assert!(!denied.is_allowed(), "{algorithm:?}");
            let status = &denied.policies()[0];
            let retry = denied.retry_after().unwrap();
            assert!(status.reset <= retry, "{algorithm:?}: t {:?} after Retry-After {retry:?}", status.reset);
            if matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
                assert!(retry <= Duration::from_secs(10) && status.reset == retry, "{status:?}");
            }
        }
    }

    /// The deny cache keeps the time of a memory store given a clock: a test
    /// moving a manual clock past a block sees the key allowed again at once.
    #[tokio::test]
    async fn the_deny_cache_follows_the_memory_stores_clock() {
        let clock = redlayer_core::memory::ManualClock::new(Duration::from_secs(1_700_000_000));
        let store = Store::memory_with_clock(Some(Arc::new(clock.clone())));
        let limiter = RateLimiter::builder(store).policy(Policy::gcra("p", Quota::per_minute(1))).build();
        assert!(limiter.check("k", 1).await.is_allowed());
        assert!(!limiter.check("k", 1).await.is_allowed());
        let cached = limiter.check("k", 1).await;
        assert!(!cached.is_allowed() && cached.from_deny_cache());
        clock.advance(Duration::from_secs(60));
        assert!(limiter.check("k", 1).await.is_allowed(), "still denied from the cache after the block ended");
    }

    /// The local fallback stands in for one outage: once the store decides
    /// again, its counts are dropped, so a later outage starts afresh
    /// instead of denying clients for what they did in the earlier one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_local_fallback_forgets_an_outage_once_redis_is_back() {
        let server = redlayer_testkit::RedisServer::start();
        let handle =
            redlayer_core::Redis::builder().timeout(Duration::from_millis(100)).connect(&server.url()).await.unwrap();
        let limiter = RateLimiter::builder(Store::redis(handle))
            .policy(Policy::gcra("p", Quota::per_hour(2)))
            .failure_policy(FailurePolicy::LocalFallback)
            .deny_cache(0)
            .build();
        let outage = |expect: [bool; 3]| {
            let limiter = limiter.clone();
            async move {
                for allowed in expect {
                    let d = limiter.check("k", 1).await;
                    assert_eq!(d.degraded(), Some(FailurePolicy::LocalFallback));
                    assert_eq!(d.is_allowed(), allowed, "{d:?}");
                }
            }
        };
        server.pause();
        outage([true, true, false]).await;
        server.resume();
        // Redis was frozen: it may take a moment to answer within the timeout again.
        let started = std::time::Instant::now();
        loop {
            let back = limiter.check("k", 1).await;
            if back.degraded().is_none() {
                assert!(back.is_allowed(), "{back:?}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "Redis did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.pause();
        outage([true, true, false]).await;
        server.resume();
    }

    /// While Redis is down, client-chosen keys (random API keys) must not grow
    /// the local fallback without bound: past its bound, new keys share one
    /// overflow bucket (it used to keep every key for its whole period).
    #[tokio::test]
    async fn the_local_fallback_is_bounded_and_overflow_is_limited_together() {
        let down = redlayer_core::Redis::builder()
            .timeout(Duration::from_millis(100))
            .connect_lazy("redis://127.0.0.1:1/")
            .unwrap();
        let limiter = RateLimiter::builder(Store::redis(down))
            .policy(Policy::gcra("p", Quota::per_minute(2)))
            .failure_policy(FailurePolicy::LocalFallback)
            .fallback_max_keys(10)
            .build();
        for i in 0..10 {
            let d = limiter.check(&format!("client-{i}"), 1).await;
            assert_eq!(d.degraded(), Some(FailurePolicy::LocalFallback));
            assert!(d.is_allowed());
        }
        // Full: two new clients share one bucket of 2.
        assert!(limiter.check("new-1", 1).await.is_allowed());
        assert!(limiter.check("new-1", 1).await.is_allowed());
        assert!(!limiter.check("new-2", 1).await.is_allowed(), "overflow clients are limited together");
        for i in 0..15 {
            let _ = limiter.check(&format!("more-{i}"), 1).await;
        }
        assert!(limiter.inner.fallback.len() <= 11, "{} keys", limiter.inner.fallback.len());
        // Known clients keep their own state.
        assert!(limiter.check("client-3", 1).await.is_allowed());
        assert!(!limiter.check("client-3", 1).await.is_allowed());
    }

    /// The memory store as primary store is bounded the same way: a flood of
    /// client-chosen keys never grows it past its bound.
    #[tokio::test]
    async fn the_memory_store_is_bounded_and_overflow_is_limited_together() {
        let limiter = RateLimiter::builder(Store::memory_with_max_keys(10))
            .policy(Policy::gcra("p", Quota::per_minute(2)))
            .deny_cache(0)
            .build();
        for i in 0..10 {
            assert!(limiter.check(&format!("client-{i}"), 1).await.is_allowed());
        }
        assert!(limiter.check("new-1", 1).await.is_allowed());
        assert!(limiter.check("new-2", 1).await.is_allowed());
        assert!(!limiter.check("new-3", 1).await.is_allowed(), "overflow clients are limited together");
        assert!(limiter.check("client-3", 1).await.is_allowed(), "known clients keep their own state");
        assert!(!limiter.check("client-3", 1).await.is_allowed());
    }

    /// Expired denials count in the map until swept: a cache once filled must
    /// still take new denials after the old ones ended (it used to stop
    /// caching for good after `max` denials over the process's life).
    #[tokio::test]
    async fn a_full_deny_cache_takes_new_denials_once_old_ones_expired() {
        let limiter = RateLimiter::builder(Store::memory())
            .policy(Policy::gcra("p", Quota::new(1, Duration::from_millis(300))))
            .deny_cache(2)
            .build();
        for key in ["a", "b"] {
            assert!(limiter.check(key, 1).await.is_allowed());
            assert!(!limiter.check(key, 1).await.is_allowed());
            assert!(limiter.check(key, 1).await.from_deny_cache(), "{key} cached");
        }
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(limiter.check("c", 1).await.is_allowed());
        assert!(!limiter.check("c", 1).await.is_allowed());
        let d = limiter.check("c", 1).await;
        assert!(!d.is_allowed());
        assert!(d.from_deny_cache(), "the new denial is cached once the old ones expired");
        // Bounded: never more than `max` entries.
        for key in ["d", "e", "f"] {
            let _ = limiter.check(key, 1).await;
            let _ = limiter.check(key, 1).await;
        }
        assert!(limiter.inner.deny_cache.as_ref().unwrap().map.len() <= 2);
    }
}
