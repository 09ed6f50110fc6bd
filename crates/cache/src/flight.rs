//! In-process single flight: concurrent misses for one key wait for one fill.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::entry::Entry;

/// The outcome of a fill, as waiters see it.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    Pending,
    /// The shared entry, or `None`: not shareable (waiters go to the origin).
    Done(Option<Arc<Entry>>),
    /// The leader went away unfinished (its request was dropped, its body
    /// cut): the waiters join again, and one of them leads.
    Abandoned,
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    /// Each key's fill in progress, and when it started.
    map: Mutex<HashMap<String, (watch::Receiver<FlightState>, Instant)>>,
}

pub(crate) enum Join {
    Leader(FlightGuard),
    Waiter(watch::Receiver<FlightState>),
}

impl Flights {
    /// Waits for the fill of `key` in progress, or leads a new one. A fill
    /// older than `max_wait` (the coalesce timeout) is joined no more: its
    /// leader's client may be reading the body slowly or not at all (the
    /// fill ends with the body), and its waiters are going to the origin
    /// themselves by now; a new request leads a fill of its own.
    pub fn join(self: &Arc<Self>, key: &str, max_wait: Duration) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rx, started)) = map.get(key)
            && matches!(*rx.borrow(), FlightState::Pending)
            && started.elapsed() < max_wait
        {
            return Join::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(FlightState::Pending);
        map.insert(key.to_owned(), (rx, Instant::now()));
        Join::Leader(FlightGuard { flights: self.clone(), key: key.to_owned(), tx: Some(tx) })
    }
}

/// Held by the request that fills a key; dropping it unfinished releases the
/// waiters, who join again (one of them leads the next fill).
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    tx: Option<watch::Sender<FlightState>>,
}

impl FlightGuard {
    /// Ends the fill: its entry for the waiters, or `None` when the
    /// response cannot be shared (they go to the origin themselves).
    pub fn finish(mut self, entry: Option<Arc<Entry>>) {
        self.done(FlightState::Done(entry));
    }

    fn done(&mut self, state: FlightState) {
        if let Some(tx) = self.tx.take() {
            {
                let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&self.key).is_some_and(|(rx, _)| rx.same_channel(&tx.subscribe())) {
                    map.remove(&self.key);
                }
            }
            tx.send_replace(state);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.done(FlightState::Abandoned);
    }
}

/// What a waiter learns from its leader.
pub(crate) enum Waited {
    /// The leader's entry.
    Entry(Arc<Entry>),
    /// Not shareable: go to the origin.
    NotShareable,
    /// The leader went away unfinished: join again.
    Abandoned,
}

/// Waits for the leader's outcome.
pub(crate) async fn wait(mut rx: watch::Receiver<FlightState>) -> Waited {
    loop {
        match &*rx.borrow_and_update() {
            FlightState::Done(Some(entry)) => return Waited::Entry(entry.clone()),
            FlightState::Done(None) => return Waited::NotShareable,
            FlightState::Abandoned => return Waited::Abandoned,
            FlightState::Pending => {}
        }
        if rx.changed().await.is_err() {
            // The sender went without a word (it always says one before it goes).
            return Waited::Abandoned;
        }
    }
}

/// The keys this process is refreshing in the background.
pub(crate) type Refreshing = Arc<Mutex<std::collections::HashSet<String>>>;

/// A key marked as being refreshed, unmarked when dropped: the refresh
/// ended, failed, panicked or was cancelled, and the next one may start.
pub(crate) struct RefreshMark {
    set: Refreshing,
    key: String,
}

impl RefreshMark {
    /// The mark of `key`, or `None` when a refresh of it is under way, or
    /// [`MAX_REFRESHES`] others are (the entry is then served as it is, and
    /// refreshed by a later request or when it expires).
    pub fn claim(set: &Refreshing, key: &str) -> Option<Self> {
        let mut marked = set.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = marked.len() < MAX_REFRESHES && marked.insert(key.to_owned());
        fresh.then(|| RefreshMark { set: set.clone(), key: key.to_owned() })
    }

    /// Runs `refresh` in a task of its own, for at most [`REFRESH_LIMIT`],
    /// holding this mark until it ends.
    pub fn spawn(self, runtime: &tokio::runtime::Handle, refresh: impl Future<Output = ()> + Send + 'static) {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(REFRESH_LIMIT, refresh).await;
            drop(self);
        });
    }
}

impl Drop for RefreshMark {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// The most background refreshes one layer (or cache-aside handle) runs at
/// once: a client touching many stale entries cannot start unbounded work.
pub(crate) const MAX_REFRESHES: usize = 64;

/// The longest a background refresh may take (an origin or fetch that
/// hangs would otherwise keep its key from ever being refreshed again).
const REFRESH_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_marks_are_one_per_key_bounded_and_released_on_drop() {
        let set = Refreshing::default();
        let first = RefreshMark::claim(&set, "a").expect("free");
        assert!(RefreshMark::claim(&set, "a").is_none(), "one refresh per key");
        drop(first);
        let again = RefreshMark::claim(&set, "a").expect("released on drop");
        let others: Vec<_> = (1..MAX_REFRESHES).map(|i| RefreshMark::claim(&set, &format!("k{i}")).unwrap()).collect();
        assert!(RefreshMark::claim(&set, "one-too-many").is_none(), "at most {MAX_REFRESHES} at once");
        drop((again, others));
        assert!(set.lock().unwrap().is_empty());
    }
}
