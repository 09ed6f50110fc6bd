//! The in-memory backend: the same semantics as the Lua scripts, in one process.

use std::{sync::Arc, time::Duration};

use redlayer_core::memory::{ExpiringMap, Update};

/// One lock name: its holder (token, expiry since the epoch) and its last fence.
#[derive(Debug)]
struct Entry {
    holder: Option<(Arc<str>, Duration)>,
    fence: u64,
}

/// Locks held in this process.
#[derive(Debug, Default)]
pub(crate) struct MemoryLocks {
    map: ExpiringMap<String, Entry>,
}

impl MemoryLocks {
    /// As `acquire.lua`: `Ok(fence)` when taken, `Err(holder's ttl)` otherwise.
    pub(crate) fn acquire(&self, key: &str, token: &str, ttl: Duration, retention: Duration) -> Result<u64, Duration> {
        self.map.update(key.to_owned(), |entry, now| {
            let last = match entry {
                Some(Entry { holder: Some((_, until)), .. }) if *until > now => {
                    return (Update::Keep, Err(*until - now));
                }
                Some(entry) => entry.fence,
                None => 0,
            };
            let fence = (last + 1).max(now.as_micros() as u64);
            let entry = Entry { holder: Some((Arc::from(token), now + ttl)), fence };
            (Update::Set(entry, Some(retention.max(ttl))), Ok(fence))
        })
    }

    /// As `release.lua`.
    pub(crate) fn release(&self, key: &str, token: &str) -> bool {
        self.map.update(key.to_owned(), |entry, now| match entry {
            Some(Entry { holder: holder @ Some(_), .. })
                if holder.as_ref().is_some_and(|(t, until)| &**t == token && *until > now) =>
            {
                *holder = None;
                (Update::Keep, true)
            }
            _ => (Update::Keep, false),
        })
    }

    /// As `extend.lua`.
    pub(crate) fn extend(&self, key: &str, token: &str, ttl: Duration, retention: Duration) -> bool {
        self.map.update(key.to_owned(), |entry, now| match entry {
            Some(Entry { holder: Some((t, until)), .. }) if &**t == token && *until > now => {
                *until = now + ttl;
                (Update::KeepWithTtl(Some(retention.max(ttl))), true)
            }
            _ => (Update::Keep, false),
        })
    }
}
