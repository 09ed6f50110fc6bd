//! [`NearCache`]: an in-process copy of hot values read from Redis, kept
//! coherent by Redis's server-assisted client-side caching.
//!
//! The near cache opens a connection of its own (RESP3) to the server, or to
//! every master of a cluster, and turns on
//! `CLIENT TRACKING ON BCAST PREFIX <prefix>`. From then on Redis pushes the
//! name of every key under the prefix that anyone changes, deletes or lets
//! expire (and a flush notice on `FLUSHDB`), and the near cache drops its copy
//! of that key as soon as the push is read, inside the connection's own reader.
//!
//! What it guarantees:
//! - Copies are served only while those connections are up. When one breaks
//!   (Redis killed or restarted, or its `PING`, sent every second, fails or
//!   times out), or a cluster's set of masters changes (checked every
//!   second), every copy is dropped, and lookups go to Redis until tracking
//!   is back on every master.
//! - A value read from Redis is kept only if no invalidation of its key (and
//!   no reconnection) came between the read's start and its end: take a
//!   [`NearCache::ticket`] before the read, hand it to [`NearCache::insert`]
//!   after. A read racing a write can not leave the old value behind.
//! - Copies also expire after the time to live given on insert, and the
//!   whole cache holds at most its byte budget.
//!
//! What it does not guarantee: a write made by another instance is seen here
//! once its push has been read, which on a LAN is normally well under a
//! millisecond after the write. A request handled in that window still gets
//! the old copy. Use it for data where that is acceptable (cached pages,
//! cache-aside values), never for sessions, limits or locks.
//!
//! The handle must have been built from a URL or from cluster nodes
//! ([`Redis::connect`], [`RedisBuilder::connect_lazy`](crate::RedisBuilder::connect_lazy),
//! `Redis::connect_cluster`), not from a pool: the near cache needs an
//! address to open its own connections. A cluster's masters are reached
//! with the credentials of the first node given. In the window between a
//! manual failover or a new master and the next check (a second), writes on
//! the new master are not seen.

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
/// How often the tracking connection is checked with `PING`.
const HEARTBEAT: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
/// let near: NearCache<Bytes> = NearCache::start(&redis, "app:page:", 64 << 20, |v: &Bytes| v.len())?;
/// let key = "app:page:/home";
/// let page = match near.get(key) {
///     Some(page) => page,
///     None => {
///         let ticket = near.ticket(key);
///         let mut conn = redis.connection().await?;
///         let page: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
///         let page = Bytes::from(page);
///         near.insert(ticket, key, page.clone(), Duration::from_secs(60));
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
    live: bool,
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
    /// Starts tracking the keys under `prefix` on the server of `redis`, on a
    /// connection of its own, holding at most `max_bytes` of copies as
    /// measured by `weigh`. Copies are served once tracking is on (normally
    /// within a round trip); until then, and whenever it is off, every lookup
    /// misses. Must be called within a Tokio runtime.
    ///
    /// Errors: the handle was built from a pool (no address to open
    /// connections of its own with), or no Tokio runtime is running.
    pub fn start(
        redis: &Redis,
        prefix: impl Into<String>,
        max_bytes: usize,
        weigh: impl Fn(&V) -> usize + Send + Sync + 'static,
    ) -> Result<Self> {
        let info = redis.inner.info.clone().ok_or_else(|| {
            Error::InvalidInput(
                "a near cache needs a handle built from a URL or cluster nodes (Redis::connect, connect_cluster)"
                    .into(),
            )
        })?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::InvalidInput("a near cache must be started within a Tokio runtime".into()))?;
        let nodes = match redis.is_cluster() {
            true => Nodes::Cluster { template: info, redis: redis.clone() },
            false => Nodes::One(info),
        };
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            map: ExpiringMap::new().weighed(max_bytes, weigh),
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            _stop: stop,
        });
        let tracker =
            Tracker { shared: Arc::downgrade(&shared), nodes, prefix: prefix.into(), timeout: redis.timeout() };
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
            live: shared.live.load(Ordering::SeqCst),
            generation: shared.generation.load(Ordering::SeqCst),
            bucket,
            count: shared.buckets[bucket].load(Ordering::SeqCst),
        }
    }

    /// Keeps `value` as the copy of `key` for at most `ttl`, unless `key` was
    /// invalidated (or tracking broke) since `ticket` was taken: then the
    /// value may already be old, and nothing is kept.
    pub fn insert(&self, ticket: Ticket, key: &str, value: V, ttl: Duration) {
        let shared = &self.shared;
        if !ticket.live || ttl.is_zero() {
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
    One(redis::ConnectionInfo),
    /// Every master of the handle's cluster (found with `CLUSTER SLOTS`,
    /// reached with the credentials of the first node given).
    Cluster { template: redis::ConnectionInfo, redis: Redis },
}

/// The task that keeps the tracking connections up.
struct Tracker<V> {
    shared: Weak<Shared<V>>,
    nodes: Nodes,
    prefix: String,
    timeout: Duration,
}

impl<V: Send + Sync + 'static> Tracker<V> {
    async fn run(self, mut stopped: watch::Receiver<()>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let broken = Arc::new(Notify::new());
            match self.connect_all(broken.clone()).await {
                Ok((mut conns, masters)) => {
                    backoff = FIRST_BACKOFF;
                    let Some(shared) = self.shared.upgrade() else { return };
                    // Reads begun before tracking was on may hold old values.
                    shared.flush();
                    shared.live.store(true, Ordering::SeqCst);
                    drop(shared);
                    tracing::debug!(target: "redlayer", prefix = %self.prefix, nodes = conns.len(), "near cache: tracking on");
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return,
                            _ = broken.notified() => break,
                            _ = tokio::time::sleep(HEARTBEAT) => {
                                if !self.answering(&mut conns).await || !self.same_masters(&masters).await {
                                    break;
                                }
                            }
                        }
                    }
                    let Some(shared) = self.shared.upgrade() else { return };
                    shared.lost();
                    tracing::warn!(target: "redlayer", prefix = %self.prefix,
                        "near cache: tracking lost; copies dropped, lookups go to redis until it is back");
                }
                // Said once per outage (then quietly retried): e.g. Redis
                // down, older than 6 (no RESP3), or an ACL user without CLIENT.
                Err(e) if backoff == FIRST_BACKOFF => tracing::warn!(target: "redlayer", error = %e,
                    "near cache: no tracking connection; lookups go to redis while it is retried"),
                Err(e) => tracing::debug!(target: "redlayer", error = %e, "near cache: tracking connection failed"),
            }
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A tracking connection to every node, and the cluster's masters (to
    /// notice a change of topology: a new master's keys would go untracked).
    async fn connect_all(
        &self,
        broken: Arc<Notify>,
    ) -> Result<(Vec<MultiplexedConnection>, Option<Vec<(String, u16)>>)> {
        let (infos, masters) = match &self.nodes {
            Nodes::One(info) => (vec![info.clone()], None),
            Nodes::Cluster { template, redis } => {
                let masters = redis.cluster_masters().await?;
                if masters.is_empty() {
                    return Err(Error::Unavailable("the cluster lists no master".into()));
                }
                let infos = masters
                    .iter()
                    .map(|(host, port)| template.clone().set_addr(redis::ConnectionAddr::Tcp(host.clone(), *port)))
                    .collect();
                (infos, Some(masters))
            }
        };
        let mut conns = Vec::with_capacity(infos.len());
        for info in infos {
            conns.push(self.connect(info, broken.clone()).await?);
        }
        Ok((conns, masters))
    }

    /// True when every tracking connection answers `PING` within the timeout.
    async fn answering(&self, conns: &mut [MultiplexedConnection]) -> bool {
        for conn in conns {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(conn);
            if !matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// True unless the cluster's masters changed (or can not be listed).
    async fn same_masters(&self, masters: &Option<Vec<(String, u16)>>) -> bool {
        match (&self.nodes, masters) {
            (Nodes::Cluster { redis, .. }, Some(masters)) => {
                matches!(tokio::time::timeout(self.timeout, redis.cluster_masters()).await, Ok(Ok(now)) if &now == masters)
            }
            _ => true,
        }
    }

    async fn connect(&self, info: redis::ConnectionInfo, broken: Arc<Notify>) -> Result<MultiplexedConnection> {
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
                PushKind::Disconnection => {
                    if let Some(shared) = shared.upgrade() {
                        shared.lost();
                    }
                    broken.notify_one();
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
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&self.prefix)
            .query_async::<()>(&mut conn)
            .await?;
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
