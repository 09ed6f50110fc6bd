//! [`Quota`] (how many, per how long, how bursty) and [`Algorithm`].

use std::time::Duration;

/// How many requests (cost units) are allowed per period, and how many may
/// come at once.
///
/// Rate and burst are named apart on purpose: `Quota::per_minute(100)` is a
/// long-run rate of 100 per minute; `.burst(20)` says at most 20 may arrive
/// back to back (GCRA and token bucket). Without `.burst`, the burst equals the
/// count (the whole quota may be spent at once, as with a window). The window
/// algorithms ignore the burst.
///
/// ```
/// use redlayer_ratelimit::Quota;
/// let q = Quota::per_minute(100).burst(20);
/// assert_eq!(q.count(), 100);
/// assert_eq!(q.period().as_secs(), 60);
/// assert_eq!(q.burst_size(), 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Quota {
    count: u64,
    period: Duration,
    burst: Option<u64>,
}

/// The longest period accepted (one year).
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);
/// The largest count accepted.
const MAX_COUNT: u64 = 1_000_000_000;
/// The longest a full burst may take to refill, in µs (about 285 years).
const MAX_BURST_WINDOW_US: u64 = 1 << 53;
/// Costs are clamped to this (more than any count or burst: never fits either way).
pub(crate) const MAX_COST: u64 = MAX_COUNT + 1;

impl Quota {
    /// `count` per `period`. `count` is clamped to 1..=1e9, `period` to 1 ms..=1 year.
    pub fn new(count: u64, period: Duration) -> Self {
        Quota {
            count: count.clamp(1, MAX_COUNT),
            period: period.clamp(Duration::from_millis(1), MAX_PERIOD),
            burst: None,
        }
    }
    /// `count` per second.
    pub fn per_second(count: u64) -> Self {
        Self::new(count, Duration::from_secs(1))
    }
    /// `count` per minute.
    pub fn per_minute(count: u64) -> Self {
        Self::new(count, Duration::from_secs(60))
    }
    /// `count` per hour.
    pub fn per_hour(count: u64) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }
    /// `count` per day.
    pub fn per_day(count: u64) -> Self {
        Self::new(count, Duration::from_secs(86_400))
    }
    /// The most requests (cost units) allowed back to back (GCRA, token
    /// bucket). Clamped to 1..=1e9, and to what refills within about 285
    /// years (2^53 µs: the stores' arithmetic stays exact, Lua numbers being
    /// doubles), e.g. at most 104,249 for one a day.
    pub fn burst(mut self, burst: u64) -> Self {
        let interval_us = (self.period_us() as u64 / self.count).max(1);
        self.burst = Some(burst.clamp(1, MAX_COUNT).min(MAX_BURST_WINDOW_US / interval_us).max(1));
        self
    }
    /// The count per period.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
    /// The burst size (the count when not set).
    pub fn burst_size(&self) -> u64 {
        self.burst.unwrap_or(self.count)
    }
    /// Period in microseconds.
    pub(crate) fn period_us(&self) -> i64 {
        self.period.as_micros() as i64
    }
}

/// The algorithm of a policy. Each one is one Lua script step (all policies
/// of a decision run in one script) and has the same semantics in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm (the default): one key holding the
    /// theoretical arrival time. Smooth and exact: `burst` requests at once,
    /// then one every `period / count`. No windows, so no boundary effect; but
    /// note that any interval of one period can see up to `burst + count`
    /// requests (a full burst, then the steady rate): with the default burst
    /// (= count) that is up to 2x the count right after an idle period. Set a
    /// smaller burst for a tighter bound.
    #[default]
    Gcra,
    /// Token bucket: `burst` tokens of capacity, refilled continuously at
    /// `count` per `period`. Computed as GCRA, to which a continuously
    /// refilled token bucket is equivalent.
    TokenBucket,
    /// Fixed window: a counter per aligned window of `period`. Cheapest, but
    /// **up to 2x the count can pass around a window boundary** (the end of one
    /// window and the start of the next).
    FixedWindow,
    /// Sliding window counter: the current and previous windows' counters,
    /// the previous one weighted by how much of it still overlaps the sliding
    /// window. Constant memory. An approximation: it assumes the previous
    /// window's requests were spread evenly. With ordinary traffic it stays
    /// close to the count, but traffic bunched at the very end of a window can
    /// get close to 2x in the worst case; use GCRA or the log for a strict bound.
    SlidingWindowCounter,
    /// Sliding window log: an exact log (a sorted set) of the times of the
    /// requests of the last period. Exact, but **memory grows with the limit**:
    /// one sorted-set member (about 40 bytes in Redis) per allowed cost unit
    /// still in the window, so keep it for small counts.
    SlidingWindowLog,
}

impl Algorithm {
    /// The code the script uses.
    pub(crate) fn code(self) -> i64 {
        match self {
            Algorithm::Gcra | Algorithm::TokenBucket => 1,
            Algorithm::FixedWindow => 2,
            Algorithm::SlidingWindowCounter => 3,
            Algorithm::SlidingWindowLog => 4,
        }
    }

    /// The name of the state layout in keys: a policy whose algorithm changes
    /// starts on a fresh key instead of reading another layout.
    pub(crate) fn state_name(self) -> &'static str {
        match self {
            Algorithm::Gcra | Algorithm::TokenBucket => "gcra",
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingWindowCounter => "swc",
            Algorithm::SlidingWindowLog => "swl",
        }
    }

    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token-bucket",
            Algorithm::FixedWindow => "fixed-window",
            Algorithm::SlidingWindowCounter => "sliding-window-counter",
            Algorithm::SlidingWindowLog => "sliding-window-log",
        }
    }
}
