//! The in-memory backend: the same operations as the Lua scripts, each one
//! atomic under the map's shard lock. A rename touches two keys: the
//! `renames` lock makes it look atomic to every operation that finds the
//! alias it leaves (see [`MemoryBackend::cycle`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use redlayer_core::memory::{Clock, ExpiringMap, Update};

use super::{CycleOutcome, Ended, IndexRow, LoadOutcome, Loaded, Moved, Renewal, WriteOp, WriteOutcome};

#[derive(Debug, Clone)]
struct Record {
    fields: HashMap<String, String>,
    created: i64,
    seen: i64,
    deadline: i64,
    /// When the current id was issued (created, cycled or renewed).
    issued: i64,
    user: Option<String>,
    /// Set on the alias a renewal leaves under the old key (nothing else is used then).
    moved: Option<Moved>,
}

pub(super) struct MemoryBackend {
    sessions: ExpiringMap<String, Record>,
    users: ExpiringMap<String, HashMap<String, i64>>,
    /// Held by a rename from before the old key becomes an alias until the
    /// new key exists, and taken by whoever finds an alias before following
    /// it: the new key is then always there (the Redis backend renames in one script).
    renames: Mutex<()>,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn ttl(idle_ms: u64, deadline: i64, now: i64) -> Option<Duration> {
    Some(Duration::from_millis((idle_ms.min(i64::MAX as u64) as i64).min(deadline - now).max(0) as u64))
}

/// What Redis's `HINCRBY` takes: an integer written without leading zeros or
/// `-0` (the 64-bit range is checked by the parse).
fn is_integer(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    v == "0" || (!digits.is_empty() && !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// What a session, a field or an index row costs besides its bytes (its key,
/// map slots, allocations), for the memory budget.
const OVERHEAD: usize = 64;

impl Record {
    fn weight(&self) -> usize {
        let fields: usize = self.fields.iter().map(|(k, v)| k.len() + v.len() + OVERHEAD).sum();
        let moved = self.moved.as_ref().map_or(0, |m| m.key.len() + m.sealed.len());
        fields + self.user.as_ref().map_or(0, String::len) + moved + 2 * OVERHEAD
    }
}

fn index_weight(rows: &HashMap<String, i64>) -> usize {
    rows.keys().map(|k| k.len() + OVERHEAD).sum::<usize>() + OVERHEAD
}

const TOO_LARGE: &str =
    "larger than the memory session store keeps of one session or user (see Store::memory_with_budget)";

impl MemoryBackend {
    /// Sessions holding about `max_bytes` (and user indexes a quarter of that).
    pub(super) fn new(clock: Arc<dyn Clock>, max_bytes: usize) -> Self {
        MemoryBackend {
            sessions: ExpiringMap::with_clock(clock.clone()).weighed(max_bytes, Record::weight),
            // An index dropped for the budget takes its sessions with it (see `index_add`).
            users: ExpiringMap::with_clock(clock).weighed(max_bytes / 4, index_weight).reporting_evictions(),
            renames: Mutex::new(()),
        }
    }

    /// About the memory held, in bytes.
    pub(super) fn used(&self) -> usize {
        self.sessions.weight() + self.users.weight()
    }

    fn wait_for_renames(&self) {
        drop(self.renames.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub(super) fn load(&self, key: &str, idle_ms: u64, touch_ms: u64) -> LoadOutcome {
        let outcome = self.sessions.update(key.to_owned(), |record, now| {
            let now = ms(now);
            let Some(record) = record else { return (Update::Keep, LoadOutcome::Missing) };
            if let Some(moved) = &record.moved {
                return (Update::Keep, LoadOutcome::Moved(moved.clone()));
            }
            if now >= record.deadline {
                return (Update::Remove, LoadOutcome::Missing);
            }
            let loaded = Loaded {
                fields: record.fields.clone(),
                user: record.user.clone(),
                created_ms: record.created,
                id_age_ms: now - record.issued,
            };
            if now - record.seen >= touch_ms as i64 {
                record.seen = now;
                (Update::KeepWithTtl(ttl(idle_ms, record.deadline, now)), LoadOutcome::Found(loaded))
            } else {
                (Update::Keep, LoadOutcome::Found(loaded))
            }
        });
        if let LoadOutcome::Moved(_) = outcome {
            self.wait_for_renames();
        }
        outcome
    }

    pub(super) fn write(&self, key: &str, op: &WriteOp) -> Result<WriteOutcome, redlayer_core::Error> {
        let limit = self.sessions.max_entry_weight().unwrap_or(usize::MAX);
        let outcome = self.sessions.update(key.to_owned(), |record, now| {
            let now = ms(now);
            // The stored record (changed in place once the write is known to
            // succeed), or none when creating.
            let mut stored = None;
            let mut next = match (record, op.create) {
                (Some(_), true) => return (Update::Keep, Ok(WriteOutcome::Collision)),
                (None, false) => return (Update::Keep, Ok(WriteOutcome::Gone)),
                (Some(Record { moved: Some(moved), .. }), false) => {
                    return (Update::Keep, Ok(WriteOutcome::Moved(moved.clone())));
                }
                (Some(r), false) if now >= r.deadline => return (Update::Remove, Ok(WriteOutcome::Gone)),
                (Some(r), false) => {
                    let next = r.clone();
                    stored = Some(r);
                    next
                }
                (None, true) => Record {
                    fields: HashMap::new(),
                    created: now,
                    seen: now,
                    deadline: now.saturating_add(i64::try_from(op.absolute_ms).unwrap_or(i64::MAX)),
                    issued: now,
                    user: None,
                    moved: None,
                },
            };
            if op.clear {
                next.fields.clear();
            }
            for name in &op.deletes {
                next.fields.remove(name);
            }
            for (name, value) in &op.sets {
                next.fields.insert(name.clone(), value.clone());
            }
            let mut results = Vec::with_capacity(op.increments.len());
            for (name, by) in &op.increments {
                let current = match next.fields.get(name) {
                    None => 0,
                    Some(v) if is_integer(v) => match v.parse::<i64>() {
                        Ok(n) => n,
                        Err(_) => return (Update::Keep, Ok(WriteOutcome::NotInteger(name.clone()))),
                    },
                    Some(_) => return (Update::Keep, Ok(WriteOutcome::NotInteger(name.clone()))),
                };
                let Some(value) = current.checked_add(*by) else {
                    return (Update::Keep, Ok(WriteOutcome::NotInteger(name.clone())));
                };
                next.fields.insert(name.clone(), value.to_string());
                results.push(value);
            }
            if let Some(user) = &op.user {
                next.user = Some(user.clone());
            }
            if Record::weight(&next) > limit {
                // Past what the memory store keeps of one session: refused,
                // the stored session unchanged (it would be dropped whole).
                return (Update::Keep, Err(redlayer_core::Error::InvalidInput(TOO_LARGE.into())));
            }
            let (created_ms, id_age_ms) = (next.created, now - next.issued);
            let done = Ok(WriteOutcome::Done { created_ms, id_age_ms, increments: results });
            let Some(stored) = stored else {
                let ttl = ttl(op.idle_ms, next.deadline, now);
                return (Update::Set(next, ttl), done);
            };
            // As on Redis: within the touch interval of the last refresh, the
            // idle expiry and last-seen stay as they are.
            let refresh = now - next.seen >= op.touch_ms as i64;
            if refresh {
                next.seen = now;
            }
            let deadline = next.deadline;
            *stored = next;
            match refresh {
                true => (Update::KeepWithTtl(ttl(op.idle_ms, deadline, now)), done),
                false => (Update::Keep, done),
            }
        });
        if let Ok(WriteOutcome::Moved(_)) = outcome {
            self.wait_for_renames();
        }
        outcome
    }

    pub(super) fn cycle(&self, old: &str, new: &str, idle_ms: u64, renewal: Option<&Renewal>) -> CycleOutcome {
        if self.sessions.get(new).is_some() {
            return CycleOutcome::Collision;
        }
        // The old key is removed (or made an alias) under its lock, then the
        // new one written, all under `renames`: whoever finds the alias waits
        // for it (`wait_for_renames`), so the new key is there when followed.
        // A load finding the old key gone is the same as with `RENAME`.
        let _renaming = self.renames.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = self.sessions.update(old.to_owned(), |record, now| {
            let now = ms(now);
            match record {
                None => (Update::Keep, Err(CycleOutcome::Gone)),
                Some(Record { moved: Some(moved), .. }) => (Update::Keep, Err(CycleOutcome::Moved(moved.clone()))),
                Some(r) if now >= r.deadline => (Update::Remove, Err(CycleOutcome::Gone)),
                Some(r) if renewal.is_some_and(|x| now - r.issued < x.min_age_ms as i64) => {
                    (Update::Keep, Err(CycleOutcome::NotDue))
                }
                Some(r) => {
                    let mut taken = r.clone();
                    taken.seen = now;
                    taken.issued = now;
                    // A rename is a use: the idle timeout starts again.
                    let left = ttl(idle_ms, r.deadline, now);
                    let update = match renewal {
                        None => Update::Remove,
                        Some(x) => {
                            let alias = Record {
                                fields: HashMap::new(),
                                created: r.created,
                                seen: now,
                                deadline: r.deadline,
                                issued: now,
                                user: None,
                                moved: Some(Moved { key: new.to_owned(), sealed: x.sealed.clone() }),
                            };
                            // The alias never outlives the session.
                            Update::Set(alias, left.map(|left| Duration::from_millis(x.grace_ms).min(left)))
                        }
                    };
                    (update, Ok((taken, left)))
                }
            }
        });
        let (record, left) = match taken {
            Ok(taken) => taken,
            Err(outcome) => return outcome,
        };
        let (user, created_ms) = (record.user.clone(), record.created);
        self.sessions.insert(new.to_owned(), record, left);
        CycleOutcome::Done { user, created_ms }
    }

    /// Ends a session: an alias left by a renewal is followed (as `delete.lua`).
    pub(super) fn delete(&self, key: &str) -> Ended {
        let mut key = key.to_owned();
        for _ in 0..16 {
            let removed = self.sessions.update(key.clone(), |record, _| (Update::Remove, record.cloned()));
            match removed.and_then(|r| r.moved.clone().map(Err).or(Some(Ok(r)))) {
                Some(Err(moved)) => {
                    self.wait_for_renames();
                    key = moved.key;
                }
                Some(Ok(record)) => return Ended { existed: true, user: record.user, key },
                None => break,
            }
        }
        Ended { existed: false, user: None, key }
    }

    /// Adds the session to the index; returns how many entries it has.
    pub(super) fn index_add(
        &self,
        index: &str,
        key: &str,
        created_ms: i64,
        absolute_ms: u64,
    ) -> Result<usize, redlayer_core::Error> {
        let ttl = Some(Duration::from_millis(absolute_ms));
        let limit = self.users.max_entry_weight().unwrap_or(usize::MAX);
        let added = self.users.update(index.to_owned(), |entry, _| match entry {
            // In place: a user with many sessions is not copied on every login.
            Some(map) => {
                let added = map.insert(key.to_owned(), created_ms).is_none();
                if added && index_weight(map) > limit {
                    // The index would be dropped whole, and "log out
                    // everywhere" would miss its sessions: the login fails instead.
                    map.remove(key);
                    return (Update::Keep, Err(redlayer_core::Error::InvalidInput(TOO_LARGE.into())));
                }
                (Update::KeepExtendingTtl(ttl), Ok(map.len()))
            }
            None => (Update::Set(HashMap::from([(key.to_owned(), created_ms)]), ttl), Ok(1)),
        });
        // Other users' indexes dropped to make room: their sessions end with
        // them, since nothing could revoke them any more ("log out
        // everywhere" would miss them). Redis never drops an index this way.
        for (_, rows) in self.users.take_evicted() {
            for session in rows.into_keys() {
                self.sessions.remove(&session);
            }
        }
        added
    }

    pub(super) fn index_remove(&self, index: &str, key: &str) {
        self.users.update(index.to_owned(), |entry, _| match entry {
            Some(map) => {
                map.remove(key);
                (if map.is_empty() { Update::Remove } else { Update::Keep }, ())
            }
            None => (Update::Keep, ()),
        });
    }

    pub(super) fn index_contains(&self, index: &str, key: &str) -> bool {
        self.users.get(index).is_some_and(|m| m.contains_key(key))
    }

    pub(super) fn index_keys(&self, index: &str) -> Vec<String> {
        self.users.get(index).map(|m| m.into_keys().collect()).unwrap_or_default()
    }

    pub(super) fn index_rows(&self, index: &str) -> Vec<IndexRow> {
        let mut rows = Vec::new();
        for key in self.index_keys(index) {
            match self.sessions.get(&key) {
                Some(r) if r.moved.is_none() => rows.push(IndexRow { key, created_ms: r.created, seen_ms: r.seen }),
                _ => self.index_remove(index, &key),
            }
        }
        rows
    }
}
