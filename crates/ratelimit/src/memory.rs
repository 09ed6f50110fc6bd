//! The in-memory backend: the Lua script's arithmetic, in Rust, on an
//! [`ExpiringMap`], with the same semantics (one process only).

use std::{
    borrow::Cow,
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_core::memory::{Clock, ExpiringMap, SystemClock, Ttl, Update};

use crate::store::{PolicySpec, RawOutcome};

#[derive(Debug, Clone)]
enum State {
    Tat(i64),
    Window { w: i64, n: i64 },
    Sliding { w: i64, c: i64, p: i64 },
    Log(VecDeque<i64>),
}

/// The in-memory limiter state.
pub(crate) struct MemoryStore {
    map: ExpiringMap<String, State>,
    /// The clock given to the store (a test's manual clock), if any.
    given_clock: Option<Arc<dyn Clock>>,
    /// Held across the read and the write of one decision: several keys move together.
    gate: Mutex<()>,
    /// At most this many keys (the local fallback's bound): once full, new
    /// keys are counted together in one overflow bucket per policy.
    max_keys: usize,
    /// When the full map was last swept (ms since `born`), at most every 100 ms.
    last_sweep_ms: AtomicU64,
    born: Instant,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    #[cfg(test)]
    pub(crate) fn new(clock: Option<Arc<dyn Clock>>) -> Self {
        Self::bounded(clock, usize::MAX)
    }

    /// A store of at most `max_keys` keys (plus one overflow bucket per policy).
    pub(crate) fn bounded(clock: Option<Arc<dyn Clock>>, max_keys: usize) -> Self {
        MemoryStore {
            map: ExpiringMap::with_clock(clock.clone().unwrap_or_else(|| Arc::new(SystemClock))),
            given_clock: clock,
            gate: Mutex::new(()),
            max_keys,
            last_sweep_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The clock this store was given (a test's), if any.
    pub(crate) fn given_clock(&self) -> Option<Arc<dyn Clock>> {
        self.given_clock.clone()
    }

    /// Forgets the state of these keys.
    pub(crate) fn forget(&self, keys: &[String]) {
        for key in keys {
            self.map.remove(key);
        }
    }

    /// Entries held (expired ones not yet swept included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The key to count `key` under: itself, or when the store is full and
    /// `key` is new, the overflow bucket of its policy.
    fn admit<'a>(&self, key: &'a str, index: usize, spec: &PolicySpec) -> Cow<'a, str> {
        if self.max_keys == usize::MAX || self.map.ttl(key) != Ttl::Missing {
            return Cow::Borrowed(key);
        }
        if self.map.len() >= self.max_keys {
            let now = self.born.elapsed().as_millis() as u64;
            let last = self.last_sweep_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 100 {
                self.last_sweep_ms.store(now, Ordering::Relaxed);
                self.map.sweep();
            }
            if self.map.len() >= self.max_keys {
                let PolicySpec { algorithm, count, period_us, burst } = spec;
                return Cow::Owned(format!("\0overflow:{index}:{algorithm}:{count}:{period_us}:{burst}"));
            }
        }
        Cow::Borrowed(key)
    }

    pub(crate) fn decide(&self, keys: &[String], specs: &[PolicySpec], cost: u64) -> (bool, Vec<RawOutcome>) {
        let cost = cost.min(crate::quota::MAX_COST) as i64;
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<Cow<'_, str>> =
            keys.iter().zip(specs).enumerate().map(|(i, (key, spec))| self.admit(key, i, spec)).collect();
        let mut outcomes = Vec::with_capacity(specs.len());
        let mut writes = Vec::with_capacity(specs.len());
        for (key, spec) in keys.iter().zip(specs) {
            let (outcome, write) = self.map.update(key.clone().into_owned(), |mut state, now| {
                clamp_ahead(state.as_deref_mut(), now, spec);
                (Update::Keep, evaluate(state.as_deref(), now, cost, spec))
            });
            outcomes.push(outcome);
            writes.push(write);
        }
        let all = outcomes.iter().all(|o| o.allowed);
        if !all || cost == 0 {
            // Nothing is charged: report every policy as it stands.
            for (outcome, (_, before)) in outcomes.iter_mut().zip(&writes) {
                outcome.remaining = before.0.max(0);
                outcome.reset_us = before.1.max(0);
            }
        }
        if all && cost > 0 {
            for (key, write) in keys.iter().zip(writes) {
                if let (Some((state, ttl_us)), _) = write {
                    self.map.insert(
                        key.clone().into_owned(),
                        state,
                        Some(Duration::from_micros(ttl_us.max(1000) as u64)),
                    );
                }
            }
        }
        (all, outcomes)
    }
}

/// A GCRA state more than a full burst ahead (only a clock that went back
/// can leave it there) is set to a burst ahead in place, kept whatever the
/// decision, as the scripts do: the lockout ends after the burst, not after
/// the clock's step.
fn clamp_ahead(state: Option<&mut State>, now: Duration, spec: &PolicySpec) {
    if spec.algorithm != 1 {
        return;
    }
    if let Some(State::Tat(tat)) = state {
        let limit = now_us(now).saturating_add(spec.gcra_interval().saturating_mul(spec.burst));
        if *tat > limit {
            *tat = limit;
        }
    }
}

fn now_us(now: Duration) -> i64 {
    now.as_micros() as i64
}

/// One policy, as the script computes it: the outcome and the state to write if all allow.
/// The write is `(state to store if all allow, (remaining, reset) if nothing is charged)`.
type Write = (Option<(State, i64)>, (i64, i64));

fn evaluate(state: Option<&State>, now: Duration, cost: i64, spec: &PolicySpec) -> (RawOutcome, Write) {
    let now = now_us(now);
    let (count, period, burst) = (spec.count, spec.period_us, spec.burst);
    let mut out = RawOutcome { allowed: true, remaining: 0, reset_us: 0, retry_us: 0 };
    let mut write = None;
    let mut before: (i64, i64);
    match spec.algorithm {
        1 => {
            let interval = spec.gcra_interval();
            let dvt = interval.saturating_mul(burst);
            // Never more than a burst ahead: `clamp_ahead` saw to it.
            let tat = match state {
                Some(State::Tat(t)) => (*t).max(now),
                _ => now,
            };
            let new_tat = tat.saturating_add(interval.saturating_mul(cost));
            let allow_at = new_tat - dvt;
            let mut after = new_tat;
            if now < allow_at {
                out.allowed = false;
                after = tat;
                out.retry_us = if interval.saturating_mul(cost) > dvt { -1 } else { allow_at - now };
            } else {
                write = Some((State::Tat(new_tat), new_tat - now));
            }
            out.remaining = (dvt - (after - now)).div_euclid(interval);
            out.reset_us = after - now;
            before = ((dvt - (tat - now)).div_euclid(interval), tat - now);
        }
        2 => {
            let w = now.div_euclid(period);
            let mut used = match state {
                Some(State::Window { w: sw, n }) if *sw == w => *n,
                _ => 0,
            };
            let ends = (w + 1) * period - now;
            before = (count - used, if used > 0 { ends } else { 0 });
            if used + cost > count {
                out.allowed = false;
                out.retry_us = if cost > count { -1 } else { ends };
            } else {
                used += cost;
                write = Some((State::Window { w, n: used }, ends));
            }
            out.remaining = count - used;
            out.reset_us = ends;
        }
        3 => {
            let w = now.div_euclid(period);
            let elapsed = now - w * period;
            let (mut cur, prev) = match state {
                Some(State::Sliding { w: sw, c, p }) if *sw == w => (*c, *p),
                Some(State::Sliding { w: sw, c, .. }) if *sw == w - 1 => (0, *c),
                _ => (0, 0),
            };
            let (countf, periodf, elapsedf) = (count as f64, period as f64, elapsed as f64);
            let mut est = prev as f64 * (periodf - elapsedf) / periodf + cur as f64;
            before = (
                (countf - est).floor() as i64,
                if cur > 0 {
                    2 * period - elapsed
                } else if prev > 0 {
                    period - elapsed
                } else {
                    0
                },
            );
            if est + cost as f64 > countf {
                out.allowed = false;
                let need = count - cost - cur;
                let mut retry = if count - cost < 0 {
                    -1
                } else if need >= 0 && prev > 0 {
                    (periodf - need as f64 * periodf / prev as f64 - elapsedf).ceil() as i64
                } else if cur + cost <= count || cur == 0 {
                    period - elapsed
                } else {
                    let t2 = (periodf - (count - cost) as f64 * periodf / cur as f64).max(0.0);
                    (periodf - elapsedf + t2).ceil() as i64
                };
                if retry != -1 && retry < 1 {
                    retry = 1;
                }
                out.retry_us = retry;
            } else {
                cur += cost;
                est += cost as f64;
                write = Some((State::Sliding { w, c: cur, p: prev }, 2 * period - elapsed));
            }
            out.remaining = (countf - est).floor() as i64;
            out.reset_us = if cur > 0 {
                2 * period - elapsed
            } else if prev > 0 {
                period - elapsed
            } else {
                0
            };
        }
        _ => {
            let mut log: VecDeque<i64> = match state {
                Some(State::Log(log)) => log.iter().copied().filter(|t| *t > now - period).collect(),
                _ => VecDeque::new(),
            };
            let mut used = log.len() as i64;
            before = (count - used, log.front().map_or(0, |oldest| oldest + period - now));
            if used + cost > count {
                out.allowed = false;
                out.retry_us = if cost > count {
                    -1
                } else {
                    let k = (used + cost - count) as usize;
                    (log[k - 1] + period - now).max(1)
                };
            } else {
                used += cost;
                let behind = log.back().is_some_and(|last| *last > now);
                log.extend(std::iter::repeat_n(now, cost as usize));
                if behind {
                    // The clock went back: kept in time order, as Redis's sorted set.
                    log.make_contiguous().sort_unstable();
                }
            }
            out.remaining = count - used;
            out.reset_us = match log.front() {
                Some(oldest) => oldest + period - now,
                None if used > 0 => period,
                None => 0,
            };
            if out.allowed {
                write = Some((State::Log(log), period));
            }
        }
    }
    if !out.allowed {
        before = (out.remaining, out.reset_us);
    }
    out.remaining = out.remaining.max(0);
    out.reset_us = out.reset_us.max(0);
    (out, (write, before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redlayer_core::memory::ManualClock;

    fn store() -> (ManualClock, MemoryStore) {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        (clock.clone(), MemoryStore::new(Some(Arc::new(clock))))
    }

    fn spec(algorithm: i64, count: i64, period_s: i64, burst: i64) -> PolicySpec {
        PolicySpec { algorithm, count, period_us: period_s * 1_000_000, burst }
    }

    fn allowed(m: &MemoryStore, s: PolicySpec) -> bool {
        m.decide(&["k".to_owned()], &[s], 1).0
    }

    /// The wall clock stepped back an hour: clients are not locked out for
    /// that hour, only until their burst would have refilled (as on Redis).
    #[test]
    fn gcra_survives_a_clock_that_went_back() {
        let (clock, m) = store();
        let s = spec(1, 10, 1, 10); // 10 per second, burst 10
        assert!((0..10).all(|_| allowed(&m, s)));
        assert!(!allowed(&m, s));
        clock.rewind(Duration::from_secs(3600));
        let (ok, out) = m.decide(&["k".to_owned()], &[s], 1);
        assert!(!ok);
        assert!(out[0].retry_us <= 100_000, "locked out for the clock's step: {} µs", out[0].retry_us);
        clock.advance(Duration::from_millis(100));
        assert!(allowed(&m, s));
    }

    /// The log stays in time order when the clock went back (Redis keeps it
    /// in a sorted set): the earliest request is the one that frees a place.
    #[test]
    fn sliding_log_keeps_time_order_when_the_clock_went_back() {
        let (clock, m) = store();
        let s = spec(4, 3, 10, 3);
        assert!(allowed(&m, s));
        clock.rewind(Duration::from_secs(5));
        assert!(allowed(&m, s) && allowed(&m, s));
        let (ok, out) = m.decide(&["k".to_owned()], &[s], 1);
        assert!(!ok);
        assert_eq!((out[0].retry_us, out[0].reset_us), (10_000_000, 10_000_000));
    }

    /// A huge burst of a slow rate is capped where the arithmetic stays
    /// exact (it used to saturate, and a large cost then left every later
    /// request allowed).
    #[test]
    fn a_huge_burst_of_a_slow_rate_stays_exact() {
        let (_, m) = store();
        let policy = crate::Policy::token_bucket("c", 1_000_000_000, crate::Quota::per_day(1));
        let burst = policy.quota().burst_size() as i64;
        assert_eq!(burst, 104_249);
        let s = policy.spec();
        let (ok, out) = m.decide(&["k".to_owned()], &[s], 1);
        assert!(ok);
        assert_eq!(out[0].remaining, burst - 1);
        let (ok, out) = m.decide(&["k".to_owned()], &[s], 200_000_000);
        assert!(!ok && out[0].retry_us == -1, "more than the burst never fits");
        let (ok, _) = m.decide(&["k".to_owned()], &[s], (burst - 1) as u64);
        assert!(ok);
        assert!(!allowed(&m, s), "the burst is spent");
    }

    #[test]
    fn gcra_refills_one_per_interval() {
        let (clock, m) = store();
        let s = spec(1, 6, 60, 3); // one per 10 s, 3 at once
        assert!((0..3).all(|_| allowed(&m, s)));
        let (ok, out) = m.decide(&["k".to_owned()], &[s], 1);
        assert!(!ok);
        assert_eq!(out[0].retry_us, 10_000_000);
        clock.advance(Duration::from_millis(9_999));
        assert!(!allowed(&m, s));
        clock.advance(Duration::from_millis(1));
        assert!(allowed(&m, s));
        assert!(!allowed(&m, s));
        clock.advance(Duration::from_secs(30));
        let (_, out) = m.decide(&["k".to_owned()], &[s], 0);
        assert_eq!((out[0].remaining, out[0].reset_us), (3, 0), "full again after burst x interval");
    }

    #[test]
    fn fixed_window_resets_at_the_boundary_and_sliding_counter_weighs_the_past() {
        let (clock, m) = store();
        // Align to a window start.
        let now = clock.now().as_micros() as i64;
        clock.advance(Duration::from_micros((60_000_000 - now % 60_000_000) as u64));
        let fixed = spec(2, 10, 60, 10);
        assert!((0..10).all(|_| m.decide(&["f".into()], &[fixed], 1).0));
        assert!(!m.decide(&["f".into()], &[fixed], 1).0);
        let swc = spec(3, 10, 60, 10);
        assert!((0..10).all(|_| m.decide(&["s".into()], &[swc], 1).0));
        clock.advance(Duration::from_secs(60)); // next window: previous weighs 100%
        assert!(m.decide(&["f".into()], &[fixed], 1).0, "fixed window: a fresh count");
        assert!(!m.decide(&["s".into()], &[swc], 1).0, "sliding: still 10 in the last minute");
        clock.advance(Duration::from_secs(30)); // half of the previous window left: est = 5
        let (ok, out) = m.decide(&["s".into()], &[swc], 5);
        assert!(ok);
        assert_eq!(out[0].remaining, 0);
    }

    #[test]
    fn sliding_log_is_exact() {
        let (clock, m) = store();
        let log = spec(4, 3, 10, 3);
        for _ in 0..3 {
            assert!(m.decide(&["l".into()], &[log], 1).0);
            clock.advance(Duration::from_secs(2));
        }
        // Requests at 0, 2, 4 s; now 6 s: the next slot frees at 10 s.
        let (ok, out) = m.decide(&["l".into()], &[log], 1);
        assert!(!ok);
        assert_eq!(out[0].retry_us, 4_000_000);
        clock.advance(Duration::from_secs(4));
        assert!(m.decide(&["l".into()], &[log], 1).0);
        assert!(!m.decide(&["l".into()], &[log], 1).0);
    }
}
