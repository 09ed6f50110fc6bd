//! In-process single flight: concurrent misses for one key wait for one fill.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::entry::Entry;

/// The outcome of a fill, as waiters see it.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    Pending,
    /// The shared entry, or `None`: not shareable (waiters go to the origin).
    Done(Option<Arc<Entry>>),
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<FlightState>>>,
}

pub(crate) enum Join {
    Leader(FlightGuard),
    Waiter(watch::Receiver<FlightState>),
}

impl Flights {
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key)
            && matches!(*rx.borrow(), FlightState::Pending)
        {
            return Join::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(FlightState::Pending);
        map.insert(key.to_owned(), rx);
        Join::Leader(FlightGuard { flights: self.clone(), key: key.to_owned(), tx: Some(tx) })
    }
}

/// Held by the request that fills a key; dropping it unfinished releases the
/// waiters (they go to the origin themselves).
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    tx: Option<watch::Sender<FlightState>>,
}

impl FlightGuard {
    pub fn finish(mut self, entry: Option<Arc<Entry>>) {
        self.done(entry);
    }

    fn done(&mut self, entry: Option<Arc<Entry>>) {
        if let Some(tx) = self.tx.take() {
            {
                let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&self.key).is_some_and(|rx| rx.same_channel(&tx.subscribe())) {
                    map.remove(&self.key);
                }
            }
            tx.send_replace(FlightState::Done(entry));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.done(None);
    }
}

/// Waits for the leader's outcome.
pub(crate) async fn wait(mut rx: watch::Receiver<FlightState>) -> Option<Arc<Entry>> {
    loop {
        if let FlightState::Done(entry) = &*rx.borrow_and_update() {
            return entry.clone();
        }
        if rx.changed().await.is_err() {
            return match &*rx.borrow() {
                FlightState::Done(entry) => entry.clone(),
                FlightState::Pending => None,
            };
        }
    }
}
