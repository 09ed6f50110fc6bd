//! [`NearCache`]: an in-process copy of hot values read from Redis, kept
//! coherent by Redis's server-assisted client-side caching.
//!
//! The near cache opens a connection of its own (RESP3) to the server, or to
//! every master of a cluster, and turns on
//! `CLIENT TRACKING ON BCAST PREFIX <prefix> ...`. From then on Redis pushes
//! the name of every key under the prefixes that anyone changes or deletes,
//! or that Redis expires or evicts (and a flush notice on `FLUSHDB`), and the
//! near cache drops its copy of that key as soon as the push is read, inside
//! the connection's own reader.
//!
//! What it guarantees:
//! - Copies are served only while those connections are up. When one breaks
//!   (Redis killed or restarted, or its `ROLE`, sent every second, fails or
//!   times out), or a cluster's set of masters changes (checked every
//!   second), every copy is dropped, and lookups go to Redis until tracking
//!   is back on every master.
//! - A value read from Redis is kept only if no invalidation of its key (and
//!   no reconnection) came between the read's start and its end: take a
//!   [`NearCache::ticket`] before the read, hand it to [`NearCache::insert`]
//!   after. A read racing a write can not leave the old value behind.
//! - Copies also expire after the time to live given on insert, which must
//!   not exceed the key's own remaining time to live (Redis deletes an
//!   expired key, and so pushes its invalidation, only when it finds it,
//!   which may be late), and the whole cache holds at most its byte budget.
//! - Keys outside the tracked prefixes are never kept.
//!
//! What it does not guarantee: a write made by another instance is seen here
//! once its push has been read: Redis sends it as it answers the write, so
//! it arrives one network hop later, and is applied when this process's
//! runtime next polls the connection. A request handled in that window
//! still gets the old copy. When the connection breaks silently (a network
//! partition), the window is up to the heartbeat (1 s) plus the handle's
//! timeout. Use it for data where that is acceptable (cached pages,
//! cache-aside values), never for sessions, limits or locks.
//!
//! The handle must have been built from a URL or from cluster nodes
//! ([`Redis::connect`], [`RedisBuilder::connect_lazy`](crate::RedisBuilder::connect_lazy),
//! `Redis::connect_cluster`), not from a pool: the near cache needs an
//! address to open its own connections. A cluster's masters are reached
//! with the credentials (and TLS settings) of the first node given. Each
//! heartbeat also checks with `ROLE` that every tracked node is still a
//! master, and on a cluster that the masters are the same: between a
//! failover or a new master and that check (a second), writes on the new
//! master are not seen.
//!
//! The Tokio runtime it was started in must outlive it: should the tracking
//! task end any other way (runtime shut down), it drops every copy and
//! serves none from then on.

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value, aio::MultiplexedConnection};
use tokio::sync::{Notify, watch};

use crate::{
    Error, Redis, Result,
    memory::{ExpiringMap, Update},
};

/// Invalidation counters: a key's ticket is its bucket's count.
const BUCKETS: usize = 1024;
/// How often the tracking connections are checked with `ROLE`.
const HEARTBEAT: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The retry delay after an error that retrying soon will not fix (no RESP3,
/// no permission for `CLIENT TRACKING`).
const LASTING_BACKOFF: Duration = Duration::from_secs(60);

/// An in-process copy of values read from Redis under one key prefix,
/// invalidated by Redis itself (see the [module docs](self)). Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), redlayer_core::Error> {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use redlayer_core::{NearCache, Redis};
///
/// let redis = Redis::connect("redis://127.0.0.1/").await?;
/// let near: NearCache<Bytes> = NearCache::start(&redis, &["app:page:"], 64 << 20, |v: &Bytes| v.len())?;
/// let key = "app:page:/home";
/// let page = match near.get(key) {
///     Some(page) => page,
///     None => {
///         let ticket = near.ticket(key);
///         let mut conn = redis.connection().await?;
///         let (page, pttl): (Vec<u8>, i64) =
///             redis::pipe().cmd("GET").arg(key).cmd("PTTL").arg(key).query_async(&mut conn).await?;
///         let page = Bytes::from(page);
///         let ttl = if pttl > 0 { Duration::from_millis(pttl as u64) } else { Duration::from_secs(60) };
///         near.insert(ticket, key, page.clone(), ttl.min(Duration::from_secs(60)));
///         page
///     }
/// };
/// # let _ = page; Ok(()) }
/// ```
pub struct NearCache<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for NearCache<V> {
    fn clone(&self) -> Self {
        NearCache { shared: self.shared.clone() }
    }
}

impl<V> fmt::Debug for NearCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("live", &self.shared.live.load(Ordering::Relaxed))
            .field("entries", &self.shared.map.len())
            .field("bytes", &self.shared.map.weight())
            .finish()
    }
}

/// Taken before a read from Redis, checked when its value is kept: see
/// [`NearCache::ticket`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    bucket: usize,
    count: u64,
}

struct Shared<V> {
    map: ExpiringMap<String, V>,
    /// True while the tracking connection is up: only then are copies served or kept.
    live: AtomicBool,
    /// Counts flushes (connection lost or back, `FLUSHDB`).
    generation: AtomicU64,
    /// Counts invalidations, per bucket of keys.
    buckets: Box<[AtomicU64]>,
    hasher: RandomState,
    /// The tracked key prefixes: a key outside them is never kept.
    prefixes: Vec<String>,
    /// Dropped with the last clone: tells the tracking task to stop.
    _stop: watch::Sender<()>,
}

impl<V> Shared<V> {
    fn bucket(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % BUCKETS
    }

    fn invalidate(&self, key: &str) {
        self.buckets[self.bucket(key)].fetch_add(1, Ordering::SeqCst);
        self.map.update(key.to_owned(), |_, _| (Update::Remove, ()));
    }

    fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.map.remove_where(|_| true);
    }

    fn lost(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.flush();
    }
}

impl<V: Clone + Send + Sync + 'static> NearCache<V> {
    /// Starts tracking the keys under `prefixes` (none a prefix of another)
    /// on the server of `redis` (every master of a cluster), on connections
    /// of its own, holding at most `max_bytes` of copies as measured by
    /// `weigh`. Copies are served once tracking is on (normally
    /// within a round trip); until then, and whenever it is off, every lookup
    /// misses. Must be called within a Tokio runtime.
    ///
    /// Errors: the handle was built from a pool (no address to open
    /// connections of its own with), or no Tokio runtime is running.
    pub fn start(
        redis: &Redis,
        prefixes: &[&str],
        max_bytes: usize,
        weigh: impl Fn(&V) -> usize + Send + Sync + 'static,
    ) -> Result<Self> {
        let info = redis.inner.info.clone().ok_or_else(|| {
            Error::InvalidInput(
                "a near cache needs a handle built from a URL or cluster nodes (Redis::connect, connect_cluster)"
                    .into(),
            )
        })?;
        if prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty()) {
            return Err(Error::InvalidInput("a near cache needs non-empty key prefixes".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::InvalidInput("a near cache must be started within a Tokio runtime".into()))?;
        let nodes = match redis.is_cluster() {
            true => Nodes::Cluster(redis.clone()),
            false => Nodes::One(Box::new(info)),
        };
        let prefixes: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            map: ExpiringMap::new().weighed(max_bytes, weigh),
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            prefixes: prefixes.clone(),
            _stop: stop,
        });
        let tracker = Tracker { shared: Arc::downgrade(&shared), nodes, prefixes, timeout: redis.timeout() };
        runtime.spawn(tracker.run(stopped));
        Ok(NearCache { shared })
    }
}

impl<V: Clone> NearCache<V> {
    /// The copy of `key`, if one is held and tracking is on.
    pub fn get(&self, key: &str) -> Option<V> {
        if !self.is_live() {
            return None;
        }
        self.shared.map.get(key)
    }

    /// Take this before reading `key` from Redis, and pass it to
    /// [`insert`](NearCache::insert) with the value read.
    pub fn ticket(&self, key: &str) -> Ticket {
        let shared = &self.shared;
        let bucket = shared.bucket(key);
        Ticket {
            generation: shared.generation.load(Ordering::SeqCst),
            bucket,
            count: shared.buckets[bucket].load(Ordering::SeqCst),
        }
    }

    /// Keeps `value` as the copy of `key` for at most `ttl`, unless `key` was
    /// invalidated (or tracking broke) since `ticket` was taken: then the
    /// value may already be old, and nothing is kept. `ttl` must not exceed
    /// the key's remaining time to live in Redis (`PTTL`, read with the
    /// value); a key outside the tracked prefixes is not kept.
    pub fn insert(&self, ticket: Ticket, key: &str, value: V, ttl: Duration) {
        let shared = &self.shared;
        // (A ticket taken while tracking was off never matches: turning it on
        // counts a flush first.)
        if !shared.live.load(Ordering::SeqCst)
            || ttl.is_zero()
            || !shared.prefixes.iter().any(|p| key.starts_with(p.as_str()))
        {
            return;
        }
        // Checked under the map's lock for this key, which an invalidation
        // takes after counting: either it sees this copy and removes it, or
        // this sees its count and keeps nothing.
        shared.map.update(key.to_owned(), |_, _| {
            let unchanged = shared.live.load(Ordering::SeqCst)
                && shared.generation.load(Ordering::SeqCst) == ticket.generation
                && shared.buckets[ticket.bucket].load(Ordering::SeqCst) == ticket.count;
            (if unchanged { Update::Set(value, Some(ttl)) } else { Update::Keep }, ())
        });
    }

    /// Drops the copy of `key` now (for this process's own writes, before
    /// Redis's push about them arrives).
    pub fn remove(&self, key: &str) {
        self.shared.invalidate(key);
    }

    /// True while the tracking connection is up (copies are served).
    pub fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// How many copies are held.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// True when no copy is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the tracking connections go.
enum Nodes {
    /// The handle's one server.
    One(Box<redis::ConnectionInfo>),
    /// Every master of the handle's cluster (found with `CLUSTER SLOTS`,
    /// reached with the credentials of the first node given).
    Cluster(Redis),
}

/// What a heartbeat learned of a cluster's masters.
enum Masters {
    Same,
    Changed,
    /// `CLUSTER SLOTS` failed or timed out.
    Unknown,
}

/// The task that keeps the tracking connections up.
struct Tracker<V> {
    shared: Weak<Shared<V>>,
    nodes: Nodes,
    prefixes: Vec<String>,
    timeout: Duration,
}

/// Drops every copy when the tracking task ends for any reason (its runtime
/// shut down, a panic): no copy is served without invalidations.
struct OnEnd<V>(Weak<Shared<V>>);

impl<V> Drop for OnEnd<V> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.lost();
        }
    }
}

/// A tracking connection error that retrying soon will not fix: no RESP3
/// (Redis before 6), no `CLIENT TRACKING` (ACL), no such command (a proxy).
fn lasting(e: &Error) -> bool {
    let text = e.to_string();
    ["NOPERM", "unknown command", "HELLO", "unknown subcommand", "RESP3"].iter().any(|t| text.contains(t))
}

/// One round of tracking connections, from connect to break.
#[derive(Default)]
struct Round {
    /// Told by a connection's disconnection notice.
    broken: Notify,
    /// Set when the round ends, before its connections are dropped.
    over: AtomicBool,
}

impl<V: Send + Sync + 'static> Tracker<V> {
    async fn run(self, mut stopped: watch::Receiver<()>) {
        let _on_end = OnEnd(self.shared.clone());
        let mut backoff = FIRST_BACKOFF;
        let mut warned_lost: Option<tokio::time::Instant> = None;
        loop {
            let round = Arc::new(Round::default());
            match self.connect_all(round.clone()).await {
                Ok((mut conns, masters)) => {
                    backoff = FIRST_BACKOFF;
                    let Some(shared) = self.shared.upgrade() else { return };
                    // Reads begun before tracking was on may hold old values.
                    shared.flush();
                    shared.live.store(true, Ordering::SeqCst);
                    drop(shared);
                    tracing::debug!(target: "redlayer", prefixes = ?self.prefixes, nodes = conns.len(), "near cache: tracking on");
                    let mut unlisted = 0;
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return,
                            _ = round.broken.notified() => break,
                            _ = tokio::time::sleep(HEARTBEAT) => {
                                if !self.still_masters(&mut conns).await {
                                    break;
                                }
                                match self.masters_now(&masters).await {
                                    Masters::Same => unlisted = 0,
                                    Masters::Changed => break,
                                    // A slow CLUSTER SLOTS alone is no reason to drop every copy:
                                    // the connections themselves answered.
                                    Masters::Unknown if unlisted < 2 => unlisted += 1,
                                    Masters::Unknown => break,
                                }
                            }
                        }
                    }
                    // Before its connections go: their disconnection notices
                    // must not reach the next round.
                    round.over.store(true, Ordering::SeqCst);
                    drop(conns);
                    let Some(shared) = self.shared.upgrade() else { return };
                    shared.lost();
                    // Said at most once a minute (a flapping connection would say it every cycle).
                    let now = tokio::time::Instant::now();
                    if warned_lost.is_none_or(|at| now - at > Duration::from_secs(60)) {
                        warned_lost = Some(now);
                        tracing::warn!(target: "redlayer", prefixes = ?self.prefixes,
                            "near cache: tracking lost; copies dropped, lookups go to redis until it is back");
                    }
                }
                // Said once per outage (then quietly retried): e.g. Redis
                // down, older than 6 (no RESP3), or an ACL user without CLIENT.
                Err(e) => {
                    if backoff == FIRST_BACKOFF {
                        tracing::warn!(target: "redlayer", error = %e,
                            "near cache: no tracking connection; lookups go to redis while it is retried");
                    } else {
                        tracing::debug!(target: "redlayer", error = %e, "near cache: tracking connection failed");
                    }
                    if lasting(&e) {
                        backoff = LASTING_BACKOFF;
                    }
                }
            }
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = if backoff >= LASTING_BACKOFF { LASTING_BACKOFF } else { (backoff * 2).min(MAX_BACKOFF) };
        }
    }

    /// A tracking connection to every node, and the cluster's masters (to
    /// notice a change of topology: a new master's keys would go untracked).
    async fn connect_all(&self, round: Arc<Round>) -> Result<(Vec<MultiplexedConnection>, Option<Vec<(String, u16)>>)> {
        let (infos, masters) = match &self.nodes {
            Nodes::One(info) => (vec![(**info).clone()], None),
            Nodes::Cluster(redis) => {
                let masters = redis.cluster_masters().await?;
                if masters.is_empty() {
                    return Err(Error::Unavailable("the cluster lists no master".into()));
                }
                let infos = masters.iter().map(|(host, port)| redis.node_info(host, *port)).collect();
                (infos, Some(masters))
            }
        };
        let mut conns = Vec::with_capacity(infos.len());
        for info in infos {
            conns.push(self.connect(info, round.clone()).await?);
        }
        Ok((conns, masters))
    }

    /// True when every tracking connection answers `ROLE` within the
    /// timeout, as a master (a demoted master still answers, but the writes
    /// now go elsewhere). A user not allowed `ROLE` gets an error reply,
    /// which still shows the connection alive.
    async fn still_masters(&self, conns: &mut [MultiplexedConnection]) -> bool {
        for conn in conns {
            let cmd = redis::cmd("ROLE");
            let role = cmd.query_async::<Value>(conn);
            let is_master = match tokio::time::timeout(self.timeout, role).await {
                Ok(Ok(Value::Array(items))) => match items.first() {
                    Some(Value::BulkString(role)) => role == b"master",
                    Some(Value::SimpleString(role)) => role == "master",
                    _ => false,
                },
                Ok(Ok(_)) => false,
                Ok(Err(e)) => e.code() == Some("NOPERM"),
                Err(_) => false,
            };
            if !is_master {
                return false;
            }
        }
        true
    }

    /// Whether the cluster's masters are still those tracked.
    async fn masters_now(&self, masters: &Option<Vec<(String, u16)>>) -> Masters {
        let (Nodes::Cluster(redis), Some(masters)) = (&self.nodes, masters) else { return Masters::Same };
        match tokio::time::timeout(self.timeout, redis.cluster_masters()).await {
            Ok(Ok(now)) if &now == masters => Masters::Same,
            Ok(Ok(_)) => Masters::Changed,
            _ => Masters::Unknown,
        }
    }

    async fn connect(&self, info: redis::ConnectionInfo, round: Arc<Round>) -> Result<MultiplexedConnection> {
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let shared = self.shared.clone();
        // Runs in the connection's reader, as each push is read.
        let on_push = move |push: PushInfo| -> std::result::Result<(), std::convert::Infallible> {
            match push.kind {
                PushKind::Invalidate => {
                    if let Some(shared) = shared.upgrade() {
                        apply(&shared, &push.data);
                    }
                }
                // Only while its round lasts: a connection dropped at the end
                // of a round says so later, maybe while the next one is live.
                PushKind::Disconnection if !round.over.load(Ordering::SeqCst) => {
                    if let Some(shared) = shared.upgrade() {
                        shared.lost();
                    }
                    round.broken.notify_one();
                }
                _ => {}
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(on_push);
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON").arg("BCAST");
        for prefix in &self.prefixes {
            tracking.arg("PREFIX").arg(prefix);
        }
        tracking.query_async::<()>(&mut conn).await?;
        Ok(conn)
    }
}

/// Applies one `invalidate` push: a list of keys, or nil for a flush.
fn apply<V>(shared: &Shared<V>, data: &[Value]) {
    match data.first() {
        Some(Value::Array(keys)) => {
            for key in keys {
                match key {
                    Value::BulkString(bytes) => shared.invalidate(&String::from_utf8_lossy(bytes)),
                    Value::SimpleString(text) => shared.invalidate(text),
                    _ => shared.flush(),
                }
            }
        }
        _ => shared.flush(),
    }
}
