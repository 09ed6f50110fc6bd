//! Foundations of the in-memory backends: a clock and a map whose entries
//! expire like Redis keys.
//!
//! Each capability crate builds its memory backend on these, so that it has
//! the same semantics as its Redis backend, expiry included, in one process.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A source of wall-clock time, in the same unit Redis `TIME` gives
/// (time since the Unix epoch).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now, since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}

/// A clock that moves only when told to: for tests of expiry without sleeping.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at `start` since the epoch.
    pub fn new(start: Duration) -> Self {
        ManualClock { micros: Arc::new(AtomicU64::new(start.as_micros() as u64)) }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.micros.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    /// Moves the clock back, as a wall clock stepped by NTP can go.
    pub fn rewind(&self, by: Duration) {
        let by = by.as_micros() as u64;
        let _ = self.micros.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| Some(m.saturating_sub(by)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }
}

/// What [`ExpiringMap::ttl`] answers, as Redis `PTTL` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No such key (Redis: -2).
    Missing,
    /// The key never expires (Redis: -1).
    Persistent,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

struct Entry<V> {
    value: V,
    expires_at: Option<Duration>,
    /// The entry's weight when the map is [`weighed`](ExpiringMap::weighed), else 0.
    weight: usize,
}

/// How much memory an in-memory store (cache entries, sessions, idempotency
/// records) holds by default: 256 MiB, each crate's `memory()` constructor.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

const SHARDS: usize = 16;
const MIN_SWEEP_AT: usize = 1024;

struct Shard<K, V> {
    map: HashMap<K, Entry<V>>,
    sweep_at: usize,
    /// The sum of the entries' weights.
    weight: usize,
}

impl<K: Hash + Eq, V> Shard<K, V> {
    fn remove(&mut self, key: &K) -> Option<Entry<V>> {
        let entry = self.map.remove(key)?;
        self.weight -= entry.weight;
        Some(entry)
    }

    fn retain(&mut self, mut keep: impl FnMut(&K, &Entry<V>) -> bool) {
        let mut dropped = 0;
        self.map.retain(|k, e| {
            let kept = keep(k, e);
            if !kept {
                dropped += e.weight;
            }
            kept
        });
        self.weight -= dropped;
    }
}

/// How a weighed map measures its entries, and the most it holds per shard.
struct Budget<V> {
    weigh: Box<dyn Fn(&V) -> usize + Send + Sync>,
    per_shard: usize,
}

/// The entries a reporting map dropped for its budget, until taken.
type Evicted<K, V> = Mutex<Vec<(K, V)>>;

/// A concurrent map whose entries expire, with Redis semantics: an expired
/// entry is never returned, and memory stays bounded by the live entries
/// (expired ones are swept whenever a shard doubles in size). A
/// [`weighed`](ExpiringMap::weighed) map also holds at most a total weight:
/// past it, expired entries go first, then those closest to expiry (as
/// Redis's `volatile-ttl` under `maxmemory`), entries without expiry last.
pub struct ExpiringMap<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    budget: Option<Budget<V>>,
    /// The entries dropped to keep the budget, until taken (see [`ExpiringMap::reporting_evictions`]).
    evicted: Option<Box<Evicted<K, V>>>,
}

impl<K, V> fmt::Debug for ExpiringMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringMap").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl<K: Hash + Eq, V> ExpiringMap<K, V> {
    /// An empty map on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        ExpiringMap {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { map: HashMap::new(), sweep_at: MIN_SWEEP_AT, weight: 0 }))
                .collect(),
            hasher: RandomState::new(),
            clock,
            budget: None,
            evicted: None,
        }
    }

    /// Bounds the map to about `max_weight` in all, each entry weighing what
    /// `weigh` says (e.g. its size in bytes). The budget is kept per shard
    /// (a sixteenth each): an entry heavier than that is not stored at all
    /// (its `Set` removes the key).
    #[must_use]
    pub fn weighed(mut self, max_weight: usize, weigh: impl Fn(&V) -> usize + Send + Sync + 'static) -> Self {
        self.budget = Some(Budget { weigh: Box::new(weigh), per_shard: (max_weight / SHARDS).max(1) });
        self
    }

    /// Keeps the entries that a [`weighed`](ExpiringMap::weighed) map drops
    /// to stay within its budget (not the expired ones, nor those replaced or
    /// removed) until [`ExpiringMap::take_evicted`] takes them: for a map of
    /// indexes whose targets must go with them (a user's sessions, a tag's
    /// cache entries), since nothing could find those targets any more.
    /// Whoever writes to such a map takes them after each write.
    #[must_use]
    pub fn reporting_evictions(mut self) -> Self {
        self.evicted = Some(Box::default());
        self
    }

    /// The entries dropped for the budget since the last call (empty unless
    /// [`reporting_evictions`](ExpiringMap::reporting_evictions)).
    pub fn take_evicted(&self) -> Vec<(K, V)> {
        self.evicted
            .as_ref()
            .map(|e| std::mem::take(&mut *e.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    /// The heaviest entry a [`weighed`](ExpiringMap::weighed) map keeps (one
    /// shard's budget): a heavier one is dropped as soon as it is written, so
    /// a caller that must not lose data checks against this first.
    pub fn max_entry_weight(&self) -> Option<usize> {
        self.budget.as_ref().map(|budget| budget.per_shard)
    }

    /// The total weight held (0 unless [`weighed`](ExpiringMap::weighed)).
    pub fn weight(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).weight).sum()
    }

    fn weigh(&self, value: &V) -> usize {
        self.budget.as_ref().map_or(0, |b| (b.weigh)(value))
    }

    /// The map's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> std::sync::MutexGuard<'_, Shard<K, V>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the live entry of `key` (or `None`) under the shard's lock,
    /// and stores what it returns: `Some((value, ttl))` writes (a `None` ttl
    /// means no expiry), `None` deletes. This is the one atomic
    /// read-modify-write that the backends build their operations on, as the
    /// Redis backends use one Lua script. `f` sees the time of the operation.
    pub fn update<R>(&self, key: K, f: impl FnOnce(Option<&mut V>, Duration) -> (Update<V>, R)) -> R {
        let mut dropped = Vec::new();
        let result = self.update_in_shard(key, f, &mut dropped);
        // Outside the shard's lock: kept for `take_evicted`, or freed here.
        if !dropped.is_empty()
            && let Some(evicted) = &self.evicted
        {
            evicted.lock().unwrap_or_else(|p| p.into_inner()).extend(dropped);
        }
        result
    }

    fn update_in_shard<R>(
        &self,
        key: K,
        f: impl FnOnce(Option<&mut V>, Duration) -> (Update<V>, R),
        dropped: &mut Vec<(K, V)>,
    ) -> R {
        let now = self.clock.now();
        let mut shard = self.shard(&key);
        let live = match shard.map.get(&key) {
            Some(entry) => !is_expired(entry, now),
            None => false,
        };
        if !live {
            shard.remove(&key);
        }
        let (update, result) = f(shard.map.get_mut(&key).map(|e| &mut e.value), now);
        let grew = match update {
            Update::Keep | Update::KeepWithTtl(_) | Update::KeepExtendingTtl(_) => {
                let Some(entry) = shard.map.get_mut(&key) else { return result };
                match update {
                    Update::KeepWithTtl(ttl) => entry.expires_at = ttl.and_then(|t| now.checked_add(t)),
                    Update::KeepExtendingTtl(ttl) => {
                        entry.expires_at = match (entry.expires_at, ttl.and_then(|t| now.checked_add(t))) {
                            (Some(current), Some(wanted)) => Some(current.max(wanted)),
                            _ => None,
                        }
                    }
                    _ => {}
                }
                // The closure may have changed the value in place: weigh it again.
                let (old, weight) = (entry.weight, self.weigh(&entry.value));
                entry.weight = weight;
                shard.weight = shard.weight - old + weight;
                if self.budget.as_ref().is_some_and(|budget| weight > budget.per_shard) {
                    // Grown past what a shard may hold: dropped, as `Set` would not store it.
                    if let Some(entry) = shard.remove(&key) {
                        dropped.push((key, entry.value));
                    }
                    return result;
                }
                weight > old
            }
            Update::Set(value, ttl) => {
                let weight = self.weigh(&value);
                shard.remove(&key);
                if let Some(budget) = &self.budget {
                    if weight > budget.per_shard {
                        dropped.push((key, value));
                        return result;
                    }
                    // Make room before the entry goes in, so that it is not the one evicted.
                    enforce(&mut shard, budget.per_shard - weight, None, now, dropped);
                }
                shard.weight += weight;
                shard.map.insert(key, Entry { value, expires_at: ttl.and_then(|t| now.checked_add(t)), weight });
                maybe_sweep(&mut shard, now);
                return result;
            }
            Update::Remove => {
                shard.remove(&key);
                false
            }
        };
        if grew && let Some(budget) = &self.budget {
            enforce(&mut shard, budget.per_shard, Some(&key), now, dropped);
        }
        result
    }

    /// Stores `value` under `key`, expiring after `ttl` (`None`, or a ttl past
    /// the clock's range such as `Duration::MAX`: never).
    pub fn insert(&self, key: K, value: V, ttl: Option<Duration>) {
        self.update(key, |_, _| (Update::Set(value, ttl), ()));
    }

    /// Removes `key`; true if a live entry was there.
    pub fn remove(&self, key: &K) -> bool
    where
        K: Clone,
    {
        self.update(key.clone(), |old, _| (Update::Remove, old.is_some()))
    }

    /// The remaining time to live of `key`, as Redis `PTTL`.
    pub fn ttl<Q>(&self, key: &Q) -> Ttl
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        let shard = self.shard(key);
        match shard.map.get(key) {
            Some(entry) if !is_expired(entry, now) => match entry.expires_at {
                Some(at) => Ttl::ExpiresIn(at - now),
                None => Ttl::Persistent,
            },
            _ => Ttl::Missing,
        }
    }

    /// The number of entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len()).sum()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry now.
    pub fn sweep(&self) {
        let now = self.clock.now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, e| !is_expired(e, now));
        }
    }

    /// Removes every entry whose key matches `f` (like a SCAN + DEL).
    pub fn remove_where(&self, mut f: impl FnMut(&K) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.map.len();
            shard.retain(|k, _| !f(k));
            removed += before - shard.map.len();
        }
        removed
    }
}

impl<K: Hash + Eq, V: Clone> ExpiringMap<K, V> {
    /// A copy of the live value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        let shard = self.shard(key);
        shard.map.get(key).filter(|e| !is_expired(e, now)).map(|e| e.value.clone())
    }
}

/// What [`ExpiringMap::update`] does with the entry after the closure ran.
#[derive(Debug)]
pub enum Update<V> {
    /// Leave it as it is (including changes made through the `&mut`).
    Keep,
    /// Leave the value, set a new time to live (`None`: never expires).
    KeepWithTtl(Option<Duration>),
    /// Leave the value; make it live at least this long from now (`None`:
    /// forever), never shorter than it already would (as a conditional
    /// `PEXPIRE` in a script).
    KeepExtendingTtl(Option<Duration>),
    /// Store this value with this time to live.
    Set(V, Option<Duration>),
    /// Delete the entry.
    Remove,
}

fn is_expired<V>(entry: &Entry<V>, now: Duration) -> bool {
    matches!(entry.expires_at, Some(at) if at <= now)
}

fn maybe_sweep<K: Hash + Eq, V>(shard: &mut Shard<K, V>, now: Duration) {
    if shard.map.len() >= shard.sweep_at {
        shard.retain(|_, e| !is_expired(e, now));
        shard.sweep_at = (shard.map.len() * 2).max(MIN_SWEEP_AT);
    }
}

/// Brings a shard's weight down to `limit`: expired entries first, then
/// those closest to expiry (persistent ones last; for entries whose time to
/// live is renewed on use, as sessions', the least recently used), never
/// `keep`. Past expired entries it frees down to 7/8 of `limit`, so that a
/// flood of inserts sorts a shard once per eighth of it, not on every insert.
fn enforce<K: Hash + Eq, V>(
    shard: &mut Shard<K, V>,
    limit: usize,
    keep: Option<&K>,
    now: Duration,
    dropped: &mut Vec<(K, V)>,
) {
    if shard.weight <= limit {
        return;
    }
    shard.retain(|_, e| !is_expired(e, now));
    if shard.weight <= limit {
        return;
    }
    let target = limit - limit / 8;
    let mut excess = shard.weight.saturating_sub(target);
    // The expiry up to which entries go: the earliest ones whose weights
    // cover the excess.
    let mut order: Vec<(Duration, usize)> = shard
        .map
        .iter()
        .filter(|(k, _)| Some(*k) != keep)
        .map(|(_, e)| (e.expires_at.unwrap_or(Duration::MAX), e.weight))
        .collect();
    order.sort_unstable_by_key(|&(at, _)| at);
    let mut freed = 0;
    let mut cutoff = Duration::MAX;
    for &(at, weight) in &order {
        if freed >= excess {
            break;
        }
        freed += weight;
        cutoff = at;
    }
    let evicted = shard.map.extract_if(|k, e| {
        if excess == 0 || Some(k) == keep {
            return false;
        }
        let at = e.expires_at.unwrap_or(Duration::MAX);
        if at > cutoff {
            return false;
        }
        excess = excess.saturating_sub(e.weight);
        true
    });
    let mut freed = 0;
    for (key, entry) in evicted {
        freed += entry.weight;
        dropped.push((key, entry.value));
    }
    shard.weight -= freed;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> (ManualClock, ExpiringMap<String, i64>) {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let map = ExpiringMap::with_clock(Arc::new(clock.clone()));
        (clock, map)
    }

    #[test]
    fn entries_expire_like_redis_keys() {
        let (clock, map) = map();
        map.insert("a".into(), 1, Some(Duration::from_millis(1500)));
        map.insert("b".into(), 2, None);
        assert_eq!(map.ttl("a"), Ttl::ExpiresIn(Duration::from_millis(1500)));
        assert_eq!(map.ttl("b"), Ttl::Persistent);
        assert_eq!(map.ttl("c"), Ttl::Missing);
        clock.advance(Duration::from_millis(1499));
        assert_eq!(map.get("a"), Some(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            map.get("a"),
            None,
            "expired at exactly its TTL (Redis keeps a key through its last millisecond: 1 ms earlier here, so that a zero TTL deletes at once, as PEXPIRE 0 does)"
        );
        assert_eq!(map.ttl("a"), Ttl::Missing);
        assert_eq!(map.get("b"), Some(2));
        // A ttl past the clock's range (`Duration::MAX`) is no expiry, not an overflow.
        map.insert("c".into(), 3, Some(Duration::MAX));
        assert_eq!(map.ttl("c"), Ttl::Persistent);
        map.update("c".into(), |_, _| (Update::KeepWithTtl(Some(Duration::MAX)), ()));
        assert_eq!(map.get("c"), Some(3));
    }

    #[test]
    fn extending_a_ttl_never_shortens_it() {
        let (clock, map) = map();
        map.insert("a".into(), 1, Some(Duration::from_secs(60)));
        map.update("a".into(), |_, _| (Update::KeepExtendingTtl(Some(Duration::from_secs(2))), ()));
        assert_eq!(map.ttl("a"), Ttl::ExpiresIn(Duration::from_secs(60)), "not shortened");
        clock.advance(Duration::from_secs(59));
        map.update("a".into(), |_, _| (Update::KeepExtendingTtl(Some(Duration::from_secs(10))), ()));
        assert_eq!(map.ttl("a"), Ttl::ExpiresIn(Duration::from_secs(10)), "extended");
        map.update("a".into(), |_, _| (Update::KeepExtendingTtl(None), ()));
        assert_eq!(map.ttl("a"), Ttl::Persistent);
        map.update("a".into(), |_, _| (Update::KeepExtendingTtl(Some(Duration::from_secs(1))), ()));
        assert_eq!(map.ttl("a"), Ttl::Persistent, "forever stays forever");
    }

    #[test]
    fn update_sees_no_expired_value() {
        let (clock, map) = map();
        map.insert("n".into(), 5, Some(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(2));
        let seen = map.update("n".into(), |old, _| {
            let next = old.map(|v| *v).unwrap_or(0) + 1;
            (Update::Set(next, Some(Duration::from_secs(1))), next)
        });
        assert_eq!(seen, 1, "INCR on an expired key starts from zero");
    }

    #[test]
    fn a_reporting_map_hands_over_every_entry_it_drops_for_its_budget() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let map: ExpiringMap<String, Vec<u8>> = ExpiringMap::with_clock(Arc::new(clock.clone()))
            .weighed(16 * 1_000, |v: &Vec<u8>| v.len())
            .reporting_evictions();
        for i in 0..500u64 {
            map.insert(format!("k{i}"), vec![0; 100], Some(Duration::from_secs(3600 + i)));
        }
        // Too heavy for a shard: reported at once, not stored.
        map.insert("huge".into(), vec![0; 2_000], None);
        // Expired, replaced or removed entries are not evictions.
        map.insert("short".into(), vec![0; 10], Some(Duration::from_secs(1)));
        map.insert("k499".into(), vec![1; 100], Some(Duration::from_secs(9_999)));
        map.remove(&"k498".to_owned());
        clock.advance(Duration::from_secs(2));
        let evicted = map.take_evicted();
        assert!(map.take_evicted().is_empty(), "taken once");
        let names: std::collections::HashSet<String> = evicted.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names.len(), evicted.len());
        assert!(names.contains("huge") && map.get("huge").is_none());
        assert!(!names.contains("short") && !names.contains("k498") && !names.contains("k499"));
        for i in 0..498u64 {
            let key = format!("k{i}");
            assert!(map.get(&key).is_some() != names.contains(&key), "{key} neither kept nor reported");
        }
        assert!(names.len() > 300, "{} reported", names.len());
    }

    #[test]
    fn past_its_budget_a_map_drops_the_entries_closest_to_expiry() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let map: ExpiringMap<String, Vec<u8>> =
            ExpiringMap::with_clock(Arc::new(clock.clone())).weighed(16 * 1_000, |v: &Vec<u8>| v.len());
        // Entries whose time to live is renewed on use (as sessions'): each
        // new one lives a second longer than the one before.
        for i in 0..2_000u64 {
            map.insert(format!("k{i}"), vec![0; 100], Some(Duration::from_secs(3600 + i)));
        }
        assert!(map.weight() <= 16 * 1_000);
        let kept: Vec<u64> = (0..2_000).filter(|i| map.get(&format!("k{i}")).is_some()).collect();
        assert!(kept.len() > 50, "{} kept", kept.len());
        // Per shard, only the latest entries stay: the newest of all are all kept.
        assert!((1_990..2_000).all(|i| kept.contains(&i)), "the newest were evicted: {kept:?}");
        assert!(!kept.contains(&0) && !kept.contains(&500), "old entries stayed: {kept:?}");
        // Persistent entries go last.
        map.insert("forever".into(), vec![0; 100], None);
        for i in 2_000..4_000u64 {
            map.insert(format!("k{i}"), vec![0; 100], Some(Duration::from_secs(3600 + i)));
        }
        assert!(map.get("forever").is_some(), "a persistent entry went before expiring ones");
    }

    #[test]
    fn a_weighed_map_stays_within_its_budget_and_keeps_the_newest() {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let map: ExpiringMap<String, Vec<u8>> =
            ExpiringMap::with_clock(Arc::new(clock.clone())).weighed(16 * 10_000, |v: &Vec<u8>| v.len());
        for i in 0..5_000 {
            let key = format!("k{i}");
            map.insert(key.clone(), vec![0; 100 + i % 900], Some(Duration::from_secs(3600)));
            assert!(map.get(&key).is_some(), "the entry just stored was evicted");
            assert!(map.weight() <= 16 * 10_000, "{} after {i}", map.weight());
        }
        assert!(map.len() < 5_000 && map.len() > 100, "{} entries", map.len());
        // Growing an entry in place is weighed too.
        map.update("grown".into(), |_, _| (Update::Set(vec![0; 10], None), ()));
        map.update("grown".into(), |v, _| {
            v.unwrap().resize(9_000, 0);
            (Update::Keep, ())
        });
        assert!(map.weight() <= 16 * 10_000);
        assert_eq!(map.get("grown").map(|v| v.len()), Some(9_000));
        // Heavier than a shard's share: not stored, nor kept when grown in place.
        map.insert("huge".into(), vec![0; 20_000], None);
        assert_eq!(map.get("huge"), None);
        map.insert("swelling".into(), vec![0; 10], None);
        map.update("swelling".into(), |v, _| {
            v.unwrap().resize(20_000, 0);
            (Update::Keep, ())
        });
        assert_eq!(map.get("swelling"), None);
        assert_eq!(map.get("grown").map(|v| v.len()), Some(9_000), "the others stay");
        // Removals and expiry give the weight back.
        clock.advance(Duration::from_secs(7200));
        map.sweep();
        assert_eq!(map.weight(), 9_000, "only the persistent entry is left");
        assert!(map.remove(&"grown".into()));
        assert_eq!(map.weight(), 0);
    }

    #[test]
    fn memory_stays_bounded_by_live_entries() {
        let (clock, map) = map();
        for i in 0..200_000 {
            map.insert(format!("k{i}"), i, Some(Duration::from_millis(10)));
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(20));
            }
        }
        assert!(map.len() < 40_000, "held {} entries", map.len());
    }
}
