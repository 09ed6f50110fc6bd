//! [`GcraBatcher`]: concurrent decisions of a one-GCRA-policy limiter share
//! one script call: on a single server, any decisions; on a cluster, those of
//! one key ([`Batchers`] keeps a batcher per key while it has decisions).
//!
//! Each call of `gcra.lua` costs Redis a fixed price (the `EVALSHA` itself, the
//! script's `TIME`) on top of its per-decision work, and on a busy machine
//! Redis's CPU is what limits throughput. So while [`MAX_RUNNING`] calls are
//! in flight for a store, decisions that arrive wait, and go together in the
//! next call (at most [`MAX_BATCH`] per call; a whole batch goes at once, so a
//! slow Redis never caps throughput). An idle limiter sends a decision at
//! once. Every decision still takes one round trip and is atomic: the script
//! decides them one after another, in arrival order.
//!
//! A call is made by one of the requests it decides (the leader, as in
//! leader/follower designs: no task is spawned per call). When its answer
//! comes, the leader hands the next waiting decisions to the first of them,
//! which leads the next call. A leader that stops waiting (its timeout, a
//! dropped connection) leaves its call to a spawned task, so the decisions it
//! carries are never stranded; a decision whose request stopped waiting before
//! its call was sent is left out of it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use futures_util::future::BoxFuture;
use redlayer_core::{Error, Redis, Result};
use tokio::sync::oneshot;

use crate::store::{GcraAsk, RawOutcome, decide_gcra};

/// Script calls in flight at once, per store, unless a whole batch waits.
pub(crate) const MAX_RUNNING: usize = 2;
/// Decisions per script call, at most.
pub(crate) const MAX_BATCH: usize = 64;

/// A decision waiting for a call.
struct Waiting {
    id: u64,
    ask: GcraAsk,
    message: oneshot::Sender<Message>,
}

/// What a waiting decision is told.
enum Message {
    /// Its outcome.
    Answer(Result<RawOutcome>),
    /// Lead the next call.
    Lead(Handed),
}

/// A call's place, handed to the first of the decisions it will carry.
/// Dropped unused (its request stopped waiting before it read it), it hands
/// the place on again.
struct Handed {
    batcher: Arc<GcraBatcher>,
    own: GcraAsk,
    others: Vec<Waiting>,
    used: bool,
}

impl Drop for Handed {
    fn drop(&mut self) {
        if !self.used {
            let mut queue = self.batcher.queue();
            let others = std::mem::take(&mut self.others);
            queue.waiting.splice(0..0, others);
            hand_off(&self.batcher, &mut queue);
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Calls in flight, or handed on and about to be made: [`MAX_RUNNING`] at
    /// most, unless whole batches were waiting.
    running: usize,
    waiting: Vec<Waiting>,
    next_id: u64,
}

/// The batchers of one store: one on a single server; on a cluster one per
/// key with decisions in progress (dropped when its last one ends, so the
/// map holds no more keys than requests in flight). A call's keys must share
/// a slot, and while that slot migrates between masters Redis refuses a call
/// naming several keys (TRYAGAIN) when some are missing: one key per call
/// never meets that, and a busy key is where sharing calls pays.
pub(crate) enum Batchers {
    One(Arc<GcraBatcher>),
    PerKey { redis: Redis, keys: Mutex<HashMap<String, (Arc<GcraBatcher>, usize)>> },
}

impl Batchers {
    pub(crate) fn new(redis: Redis) -> Self {
        match redis.is_cluster() {
            false => Batchers::One(Arc::new(GcraBatcher::new(redis))),
            true => Batchers::PerKey { redis, keys: Mutex::default() },
        }
    }

    /// Decides `ask`, in a call it makes or shares with decisions of its key.
    pub(crate) async fn decide(&self, ask: GcraAsk) -> Result<RawOutcome> {
        match self {
            Batchers::One(batcher) => batcher.decide(ask).await,
            Batchers::PerKey { redis, keys } => {
                let batcher = {
                    let mut keys = keys.lock().unwrap_or_else(PoisonError::into_inner);
                    let (batcher, users) =
                        keys.entry(ask.key.clone()).or_insert_with(|| (Arc::new(GcraBatcher::new(redis.clone())), 0));
                    *users += 1;
                    batcher.clone()
                };
                // Leaves the map when its last decision ends (or is dropped).
                let _user = KeyUser { keys, key: ask.key.clone() };
                batcher.decide(ask).await
            }
        }
    }
}

/// One decision of a key in [`Batchers::PerKey`]: the key's batcher is
/// dropped from the map with its last one.
struct KeyUser<'a> {
    keys: &'a Mutex<HashMap<String, (Arc<GcraBatcher>, usize)>>,
    key: String,
}

impl Drop for KeyUser<'_> {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, users)) = keys.get_mut(&self.key) {
            *users -= 1;
            if *users == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

/// The one-GCRA-policy decisions of one store, or of one key on a cluster (see the module docs).
pub(crate) struct GcraBatcher {
    redis: Redis,
    queue: Mutex<Queue>,
}

impl GcraBatcher {
    pub(crate) fn new(redis: Redis) -> Self {
        GcraBatcher { redis, queue: Mutex::default() }
    }

    /// Calls in flight (or about to be made) and decisions waiting for one.
    #[cfg(test)]
    pub(crate) fn load(&self) -> (usize, usize) {
        let queue = self.queue();
        (queue.running, queue.waiting.len())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides `ask`, in a call it makes or shares.
    pub(crate) async fn decide(self: &Arc<Self>, mut ask: GcraAsk) -> Result<RawOutcome> {
        let told = {
            let mut queue = self.queue();
            if queue.running >= MAX_RUNNING && queue.waiting.len() + 1 >= MAX_BATCH {
                // Requests that stopped waiting do not count towards a whole batch.
                queue.waiting.retain(|w| !w.message.is_closed());
            }
            if queue.running < MAX_RUNNING || queue.waiting.len() + 1 >= MAX_BATCH {
                // A place is free (and then nothing waits: see `hand_off`), or a
                // whole batch is ready: lead a call now, whatever is in flight, so
                // throughput never stops at MAX_RUNNING calls per round trip.
                queue.running += 1;
                Err(take_oldest(&mut queue.waiting, MAX_BATCH - 1))
            } else {
                let (message, told) = oneshot::channel();
                queue.next_id += 1;
                let id = queue.next_id;
                queue.waiting.push(Waiting { id, ask: std::mem::take(&mut ask), message });
                Ok((id, told))
            }
        };
        let (id, mut told) = match told {
            Ok(waiting) => waiting,
            Err(others) => return self.lead(ask, others).await,
        };
        // Waiting: the call carries it, or this request leads the next one. A
        // slow Redis (a quarter of the timeout gone in the queue) is not waited
        // for twice: the decision then leads a call of its own at once.
        let message = match tokio::time::timeout(self.redis.timeout() / 4, &mut told).await {
            Ok(message) => message,
            Err(_) => {
                let mine = {
                    let mut queue = self.queue();
                    queue.waiting.iter().position(|w| w.id == id).map(|at| {
                        let mine = queue.waiting.remove(at);
                        queue.running += 1;
                        (mine.ask, take_oldest(&mut queue.waiting, MAX_BATCH - 1))
                    })
                };
                match mine {
                    Some((own, others)) => return self.lead(own, others).await,
                    // Already on its way in a call (or handed a place): wait for it.
                    None => told.await,
                }
            }
        };
        match message {
            Ok(Message::Answer(outcome)) => outcome,
            Ok(Message::Lead(mut handed)) => {
                handed.used = true;
                let (own, others) = (std::mem::take(&mut handed.own), std::mem::take(&mut handed.others));
                drop(handed);
                self.lead(own, others).await
            }
            Err(_) => Err(Error::Unavailable("the rate-limit call ended without an answer".into())),
        }
    }

    /// Makes the call for `own` and `others`, answers them, hands the next
    /// waiting decisions on, and returns `own`'s outcome.
    async fn lead(self: &Arc<Self>, own: GcraAsk, mut others: Vec<Waiting>) -> Result<RawOutcome> {
        others.retain(|w| !w.message.is_closed());
        let mut asks = Vec::with_capacity(1 + others.len());
        asks.push(own);
        asks.extend(others.iter_mut().map(|w| std::mem::take(&mut w.ask)));
        let call = Box::pin(call(self.redis.clone(), asks));
        Lead { batcher: self.clone(), call: Some(call), others, spawn_on_drop: true }.run().await
    }
}

/// A call in flight, and the decisions it carries besides the leader's own.
/// Dropped before its answer (the leader stopped waiting), it finishes the
/// call in a task of its own; where that cannot be (no runtime, or that task
/// dropped too), it answers the others with an error and hands the place on.
struct Lead {
    batcher: Arc<GcraBatcher>,
    call: Option<BoxFuture<'static, Result<Vec<Result<RawOutcome>>>>>,
    others: Vec<Waiting>,
    spawn_on_drop: bool,
}

impl Lead {
    /// Waits for the call, answers the others, hands the place on, and
    /// returns the leader's own outcome.
    async fn run(mut self) -> Result<RawOutcome> {
        let outcomes = self.call.as_mut().expect("the call").await;
        self.call = None;
        finish(&self.batcher, outcomes, std::mem::take(&mut self.others))
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else { return };
        let (batcher, others) = (self.batcher.clone(), std::mem::take(&mut self.others));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.spawn_on_drop => {
                let orphan = Lead { batcher, call: Some(call), others, spawn_on_drop: false };
                runtime.spawn(async move {
                    let _ = orphan.run().await;
                });
            }
            _ => {
                let _ = finish(&batcher, Err(Error::Unavailable("the rate-limit call was dropped".into())), others);
            }
        }
    }
}

/// Answers `others` (outcomes `1..`), hands on, and returns outcome 0.
fn finish(
    batcher: &Arc<GcraBatcher>,
    outcomes: Result<Vec<Result<RawOutcome>>>,
    others: Vec<Waiting>,
) -> Result<RawOutcome> {
    let own = match outcomes {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            let own = outcomes.next();
            for (waiting, outcome) in others.into_iter().zip(outcomes) {
                let _ = waiting.message.send(Message::Answer(outcome));
            }
            own.unwrap_or_else(|| Err(Error::Decode("the rate-limit script answered no decision".into())))
        }
        Err(error) => {
            for waiting in others {
                let _ = waiting.message.send(Message::Answer(Err(error.clone())));
            }
            Err(error)
        }
    };
    hand_off(batcher, &mut batcher.queue());
    own
}

/// Gives this call's place to the oldest waiting decisions (at most
/// [`MAX_BATCH`]), led by the first of them still waiting; or gives the place
/// back when none wait. Under the queue's lock, so a decision never waits
/// while a place is free.
fn hand_off(batcher: &Arc<GcraBatcher>, queue: &mut Queue) {
    loop {
        queue.waiting.retain(|w| !w.message.is_closed());
        if queue.waiting.is_empty() {
            queue.running -= 1;
            return;
        }
        let mut others = take_oldest(&mut queue.waiting, MAX_BATCH);
        let first = others.remove(0);
        let handed = Handed { batcher: batcher.clone(), own: first.ask, others, used: false };
        match first.message.send(Message::Lead(handed)) {
            Ok(()) => return,
            Err(Message::Lead(mut back)) => {
                // It stopped waiting just now: the others wait again, first in line.
                back.used = true;
                queue.waiting.splice(0..0, std::mem::take(&mut back.others));
            }
            Err(Message::Answer(_)) => unreachable!("a Lead was sent"),
        }
    }
}

/// The `n` oldest waiting decisions (all of them when fewer wait).
fn take_oldest(waiting: &mut Vec<Waiting>, n: usize) -> Vec<Waiting> {
    if waiting.len() <= n { std::mem::take(waiting) } else { waiting.drain(..n).collect() }
}

/// One `gcra.lua` call for `asks`, within the handle's timeout: the call is
/// shared, so no one request's timeout bounds it.
async fn call(redis: Redis, asks: Vec<GcraAsk>) -> Result<Vec<Result<RawOutcome>>> {
    match tokio::time::timeout(redis.timeout(), decide_gcra(&redis, &asks)).await {
        Ok(outcomes) => outcomes,
        Err(_) => Err(Error::Timeout(redis.timeout())),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use redlayer_core::{Error, FailurePolicy, KeyPart, Redis};
    use redlayer_testkit::RedisServer;

    use crate::{Policy, Quota, RateLimiter, Store, store::StoreKind};

    fn batcher(limiter: &RateLimiter) -> &super::GcraBatcher {
        match &limiter.inner.store.kind {
            StoreKind::Redis(_, batchers) => match &**batchers {
                super::Batchers::One(batcher) => batcher,
                super::Batchers::PerKey { .. } => panic!("a standalone Redis store has one batcher"),
            },
            _ => panic!("a Redis store"),
        }
    }

    async fn limiter(server: &RedisServer, quota: Quota, timeout: Duration) -> RateLimiter {
        let handle = Redis::builder().timeout(Duration::from_secs(5)).connect(&server.url()).await.unwrap();
        let limiter = RateLimiter::builder(Store::redis(handle))
            .policy(Policy::gcra("p", quota))
            .deny_cache(0)
            .timeout(timeout)
            .build();
        assert!(limiter.check("warm-up", 0).await.degraded().is_none(), "Redis answers");
        limiter
    }

    /// 300 decisions at once, 100 on each of 3 keys: how many each key allowed.
    async fn allowed_of_300_at_once(limiter: &RateLimiter) -> [usize; 3] {
        let start = Arc::new(tokio::sync::Barrier::new(300));
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let (limiter, start) = (limiter.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    (i % 3, limiter.check(&format!("key-{}", i % 3), 1).await)
                })
            })
            .collect();
        let mut allowed = [0; 3];
        for task in tasks {
            let (key, decision) = task.await.unwrap();
            assert!(decision.degraded().is_none(), "{decision:?}");
            allowed[key] += usize::from(decision.is_allowed());
        }
        allowed
    }

    /// Concurrent decisions share script calls, and stay exact: each key
    /// allows exactly its burst, however the decisions were grouped; a call
    /// writes each of its keys once, however many of its decisions it holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_decisions_share_calls_and_stay_exact() {
        let server = RedisServer::start();
        let limiter = limiter(&server, Quota::per_hour(50), Duration::from_secs(5)).await;
        let (calls_before, sets_before) = (server.command_calls("evalsha"), server.command_calls("set"));
        assert_eq!(allowed_of_300_at_once(&limiter).await, [50, 50, 50]);
        let calls = server.command_calls("evalsha") - calls_before;
        assert!(calls < 150, "{calls} script calls for 300 concurrent decisions");
        let sets = server.command_calls("set") - sets_before;
        assert!(sets <= 3 * calls, "{sets} writes in {calls} calls of 3 keys");
        assert_eq!(batcher(&limiter).load(), (0, 0), "every call ended and gave its place back");
    }

    /// On a cluster, decisions of one key share calls (a busy key: one
    /// client, a global limit), every key stays exact, and no batcher is
    /// kept once its key's decisions are done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_cluster_decisions_of_one_key_share_calls() {
        let cluster = redlayer_testkit::RedisCluster::start();
        let handle = Redis::builder().timeout(Duration::from_secs(5)).connect_cluster(cluster.urls()).await.unwrap();
        let limiter = RateLimiter::builder(Store::redis(handle))
            .policy(Policy::gcra("p", Quota::per_hour(50)))
            .deny_cache(0)
            .build();
        for i in 0..3 {
            assert!(limiter.check(&format!("key-{i}"), 0).await.degraded().is_none(), "Redis answers");
        }
        let calls_before = cluster.command_calls("evalsha");
        assert_eq!(allowed_of_300_at_once(&limiter).await, [50, 50, 50]);
        let calls = cluster.command_calls("evalsha") - calls_before;
        assert!(calls < 150, "{calls} script calls for 300 concurrent decisions on 3 keys");
        match &limiter.inner.store.kind {
            StoreKind::Redis(_, batchers) => match &**batchers {
                super::Batchers::PerKey { keys, .. } => assert!(keys.lock().unwrap().is_empty(), "batchers kept"),
                super::Batchers::One(_) => panic!("a cluster store batches per key"),
            },
            _ => panic!("a Redis store"),
        }
    }

    /// Requests that stop waiting (leaders in the middle of their call,
    /// decisions still queued) strand nothing: once Redis answers again, the
    /// batcher is idle and decides at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_stop_waiting_strand_nothing() {
        let server = RedisServer::start();
        let limiter = limiter(&server, Quota::per_hour(1000), Duration::from_millis(100)).await;
        server.pause();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let limiter = limiter.clone();
                // Half are dropped by their caller before the limiter's own timeout.
                let wait = Duration::from_millis(if i % 2 == 0 { 30 } else { 1000 });
                tokio::spawn(async move { tokio::time::timeout(wait, limiter.check(&format!("k{i}"), 1)).await })
            })
            .collect();
        for task in tasks {
            if let Ok(decision) = task.await.unwrap() {
                assert_eq!(decision.degraded(), Some(FailurePolicy::FailOpen), "{decision:?}");
            }
        }
        server.resume();
        let started = Instant::now();
        while batcher(&limiter).load() != (0, 0) {
            assert!(started.elapsed() < Duration::from_secs(10), "still busy: {:?}", batcher(&limiter).load());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let decision = limiter.check("after", 1).await;
        assert!(decision.is_allowed() && decision.degraded().is_none(), "{decision:?}");
    }

    /// limit.lua (several policies) refuses a GCRA state that is not a
    /// number too, "nan" included (which would allow every request), and
    /// leaves it as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_policies_refuse_a_foreign_gcra_state() {
        let server = RedisServer::start();
        let handle = Redis::builder().timeout(Duration::from_secs(5)).connect(&server.url()).await.unwrap();
        let limiter = RateLimiter::builder(Store::redis(handle))
            .policy(Policy::gcra("p", Quota::per_minute(1)))
            .policy(Policy::fixed_window("w", Quota::per_minute(10)))
            .deny_cache(0)
            .build();
        let key = limiter.shared_key(&KeyPart::client("nan"), 0);
        server.cli(&["SET", &key, "nan"]);
        for _ in 0..3 {
            assert!(limiter.try_check("nan", 1).await.is_err(), "a NaN state decided");
        }
        assert_eq!(server.cli(&["GET", &key]).trim(), "nan", "left as it was");
        assert!(limiter.try_check("other", 1).await.unwrap().is_allowed());
        assert!(!limiter.try_check("other", 1).await.unwrap().is_allowed());
    }

    /// A key that holds something else than a GCRA state (a string that is
    /// not a number, a hash) fails its own decision only: the decisions that
    /// share its call are made and answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_value_fails_only_its_own_decision() {
        let server = RedisServer::start();
        let limiter = limiter(&server, Quota::per_hour(50), Duration::from_secs(5)).await;
        let text = limiter.shared_key(&KeyPart::client("text"), 0);
        let hash = limiter.shared_key(&KeyPart::client("hash"), 0);
        // Lua's tonumber takes "nan": as a state, it would allow every request.
        let nan = limiter.shared_key(&KeyPart::client("nan"), 0);
        server.cli(&["SET", &text, "not a number"]);
        server.cli(&["HSET", &hash, "f", "1"]);
        server.cli(&["SET", &nan, "nan"]);
        let start = Arc::new(tokio::sync::Barrier::new(40));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (limiter, start) = (limiter.clone(), start.clone());
                let client = match i % 5 {
                    0 => "text".to_owned(),
                    1 => "hash".to_owned(),
                    2 => "nan".to_owned(),
                    _ => format!("good-{i}"),
                };
                tokio::spawn(async move {
                    start.wait().await;
                    (i % 5, limiter.try_check(&client, 1).await)
                })
            })
            .collect();
        for task in tasks {
            match task.await.unwrap() {
                (0..=2, Err(Error::Decode(_))) => {}
                (0..=2, other) => panic!("a foreign value must fail its decision: {other:?}"),
                (_, Ok(decision)) => assert!(decision.is_allowed(), "{decision:?}"),
                (_, Err(e)) => panic!("a good key failed with the foreign ones: {e}"),
            }
        }
        assert_eq!(server.cli(&["GET", &text]).trim(), "not a number", "left as it was");
    }
}
