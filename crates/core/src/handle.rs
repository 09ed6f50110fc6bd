//! [`Redis`]: the one cheap-to-clone handle that every layer takes.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;

use crate::{Error, KeyBuilder, Result, connection::Connection};

/// Default per-command timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of multiplexed connections kept checked out of the pool.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Consecutive timeouts after which a connection is replaced (a silent peer).
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;
/// The longest one attempt to make a connection may take (see `take_bounded`).
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// The longest a cluster connection made in the background may take (a
/// frozen node holds every new cluster connection up to its connect timeout,
/// twice: the seeds, then the masters).
#[cfg(feature = "cluster")]
const BUILD_ATTEMPT: Duration = Duration::from_secs(5);
/// Cluster timeouts further apart than this are not counted together.
#[cfg(feature = "cluster")]
const CLUSTER_TIMEOUT_WINDOW: Duration = Duration::from_secs(5);
/// The longest `connect_cluster` waits for its first connection.
#[cfg(feature = "cluster")]
const FIRST_CLUSTER_CONNECTION: Duration = Duration::from_secs(5);

/// A handle on Redis (a single server or a cluster), shared by every layer.
///
/// Cloning is cheap (one `Arc`). Build it once and hand a clone to each layer.
///
/// # How it uses the pool
///
/// Redis connections from redis-rs are *multiplexed*: many concurrent commands
/// pipeline on one socket. So the handle checks a few connections (default
/// [`DEFAULT_CONNECTIONS`]) out of the bb8 pool once, keeps clones of them, and
/// hands a clone to each command: no pool round trip, no checkout `PING`, and
/// concurrent requests share sockets. Only when a connection breaks (I/O error,
/// dropped, or three timeouts in a row) is it dropped and a fresh one checked
/// out of the pool, which then runs bb8's `PING` test, so a Redis restart is
/// recovered from on the next command after Redis is back. When the pool has
/// no connection left (Redis went away), the handle connects directly: while
/// Redis refuses connections, commands fail at once rather than at the
/// timeout, so failure policies answer without delay. Measured on the
/// project's 2-core machine (see BENCHMARKS.md): this is level with one shared
/// multiplexed connection and well ahead of checking a connection out per command.
///
/// A cluster connection (one redis-rs `ClusterConnection`, which reaches
/// every node) is made in a task of its own, with the pool's manager
/// (`dedicated_connection`, no checkout): a frozen node holds a new one up to
/// its connect timeout, so an attempt is never cancelled by a caller's
/// timeout. It is dropped on a connection error (the next command makes a
/// new one: when every node refuses, commands fail at once); after three
/// timeouts within a few seconds (a frozen or cut-off master) a new one is
/// made in the background while it keeps serving the other masters' keys,
/// so that the lost master's keys find the replica that took over.
///
/// Every command through [`Redis::connection`] is bounded by the handle's
/// timeout (default 500 ms), so nothing waits on a hung Redis for longer.
///
/// ```no_run
/// # async fn demo() -> Result<(), redlayer_core::Error> {
/// let redis = redlayer_core::Redis::connect("redis://127.0.0.1/").await?;
/// let mut conn = redis.connection().await?;
/// let n: i64 = redis::cmd("INCR").arg("hits").query_async(&mut conn).await?;
/// # let _ = n; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redis {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    source: Source,
    pub(crate) slots: Box<[Slot]>,
    next: AtomicUsize,
    pub(crate) timeout: Duration,
    keys: KeyBuilder,
    /// Where the handle connects, when it was built from a URL (for a
    /// cluster: its first node's, whose credentials the other nodes share):
    /// what a [`NearCache`](crate::NearCache) opens its own connections with.
    pub(crate) info: Option<redis::ConnectionInfo>,
    /// A single-server handle got a cluster redirection, and said so (once).
    pub(crate) told_moved: AtomicBool,
    /// When the handle was made: the clock of its slots' timeout counts.
    #[cfg(feature = "cluster")]
    clock: std::time::Instant,
}

enum Source {
    Standalone(bb8::Pool<RedisConnectionManager>),
    #[cfg(feature = "cluster")]
    Cluster(bb8::Pool<redis::cluster::ClusterClient>),
}

/// A connection as it comes out of the pool.
#[derive(Clone)]
pub(crate) enum RawConnection {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

pub(crate) struct Slot {
    current: Mutex<Option<(u64, RawConnection)>>,
    refill: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    timeouts: AtomicU32,
    /// A cluster connection is being made in the background.
    #[cfg(feature = "cluster")]
    replacing: AtomicBool,
    /// When the last cluster timeout came (ms on the handle's clock).
    #[cfg(feature = "cluster")]
    last_timeout_ms: AtomicU64,
    /// Told when a cluster connection made in the background is in place.
    #[cfg(feature = "cluster")]
    filled: tokio::sync::Notify,
}

impl Slot {
    fn new() -> Self {
        Slot {
            current: Mutex::new(None),
            refill: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            timeouts: AtomicU32::new(0),
            #[cfg(feature = "cluster")]
            replacing: AtomicBool::new(false),
            #[cfg(feature = "cluster")]
            last_timeout_ms: AtomicU64::new(0),
            #[cfg(feature = "cluster")]
            filled: tokio::sync::Notify::new(),
        }
    }

    fn cached(&self) -> Option<(u64, RawConnection)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn succeeded(&self) {
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn timed_out(&self, generation: u64) {
        if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_RECONNECT {
            self.invalidate(generation, "repeated timeouts");
        }
    }

    /// A cluster connection timed out: after a few (a frozen or cut off
    /// master), a new one is made in the background while this one keeps
    /// serving the other masters' keys. redis-rs retries a timed-out node on
    /// the same socket and learns of a failover only from a node that
    /// answers, so without a new connection the lost master's keys would
    /// never move to the replica that took over. The other masters' answers
    /// do not reset the count (they go on while one master is lost): it
    /// restarts after [`CLUSTER_TIMEOUT_WINDOW`] without a timeout, and
    /// after each new connection made.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster_timed_out(inner: &Arc<Inner>, index: usize, generation: u64) {
        let slot = &inner.slots[index];
        if !matches!(slot.cached(), Some((current, _)) if current == generation) {
            return; // Already replaced.
        }
        let now = inner.clock.elapsed().as_millis() as u64;
        let last = slot.last_timeout_ms.swap(now, Ordering::Relaxed);
        if now.saturating_sub(last) > CLUSTER_TIMEOUT_WINDOW.as_millis() as u64 {
            slot.timeouts.store(0, Ordering::Relaxed);
        }
        if slot.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_RECONNECT {
            Slot::build_cluster_connection(inner, index, Some(generation));
        }
    }

    /// Makes a new cluster connection for slot `index` in a task of its own
    /// (one at a time per slot), and puts it in place of connection
    /// `replacing`, or in the empty slot. A task, not the caller's future: a
    /// frozen node holds a new cluster connection up to its connect timeout,
    /// which may be longer than the caller waits, and an attempt cancelled
    /// each time would never finish.
    #[cfg(feature = "cluster")]
    fn build_cluster_connection(inner: &Arc<Inner>, index: usize, replacing: Option<u64>) {
        let slot = &inner.slots[index];
        if slot.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            slot.replacing.store(false, Ordering::Release);
            return;
        };
        // Clears the flag and wakes the waiters however the task ends
        // (done, panicked, dropped unrun by a runtime shutting down).
        let building = Building { inner: inner.clone(), index };
        runtime.spawn(async move {
            let inner = &building.inner;
            let slot = &inner.slots[index];
            if let Source::Cluster(pool) = &inner.source {
                match tokio::time::timeout(BUILD_ATTEMPT, pool.dedicated_connection()).await {
                    Ok(Ok(raw)) => {
                        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
                        if current.as_ref().is_none_or(|(g, _)| Some(*g) == replacing) {
                            let next = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                            *current = Some((next, RawConnection::Cluster(raw)));
                            tracing::debug!(target: "redlayer", "a new cluster connection is in place");
                        }
                    }
                    Ok(Err(error)) => tracing::debug!(target: "redlayer", %error, "no new cluster connection yet"),
                    Err(_) => tracing::debug!(target: "redlayer", "no new cluster connection yet (timed out)"),
                }
            }
            // Counted again from here, made or not: no new attempt at every
            // timeout while a master stays lost.
            slot.timeouts.store(0, Ordering::Relaxed);
            drop(building);
        });
    }

    /// Waits for a cluster connection in slot `index`, made in the background
    /// (see [`Slot::build_cluster_connection`]); the caller bounds the wait.
    #[cfg(feature = "cluster")]
    async fn cluster_connection(inner: &Arc<Inner>, index: usize) -> Result<(u64, RawConnection)> {
        let slot = &inner.slots[index];
        loop {
            let filled = slot.filled.notified();
            tokio::pin!(filled);
            filled.as_mut().enable();
            if let Some(current) = slot.cached() {
                return Ok(current);
            }
            if !slot.replacing.load(Ordering::Acquire) {
                Slot::build_cluster_connection(inner, index, None);
            }
            filled.await;
            if slot.cached().is_none() && !slot.replacing.load(Ordering::Acquire) {
                // The attempt failed (every node refused, say): tell the caller now.
                return Err(Error::Unavailable("no node of the cluster could be reached".into()));
            }
        }
    }

    pub(crate) fn invalidate(&self, generation: u64, why: &str) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(&*current, Some((g, _)) if *g == generation) {
            *current = None;
            self.timeouts.store(0, Ordering::Relaxed);
            tracing::debug!(target: "redlayer", why, "dropping redis connection; the next command reconnects");
        }
    }
}

/// A cluster connection being made for one slot (see
/// [`Slot::build_cluster_connection`]): when it goes, the slot is free for
/// the next attempt and its waiters look again.
#[cfg(feature = "cluster")]
struct Building {
    inner: Arc<Inner>,
    index: usize,
}

#[cfg(feature = "cluster")]
impl Drop for Building {
    fn drop(&mut self) {
        let slot = &self.inner.slots[self.index];
        slot.replacing.store(false, Ordering::Release);
        slot.filled.notify_waiters();
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("cluster", &self.is_cluster())
            .field("connections", &self.inner.slots.len())
            .field("timeout", &self.inner.timeout)
            .field("keys", &self.inner.keys)
            .finish()
    }
}

impl Redis {
    /// A builder to set the timeout, the key prefix and the connection count.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Connects to one Redis server (`redis://host:port/db`, `rediss://...`)
    /// and checks that it answers `PING`. A URL naming a node of a Redis
    /// Cluster gives a handle on the whole cluster (with the `cluster`
    /// feature; see [`RedisBuilder::connect`]). See
    /// [`RedisBuilder::connect_lazy`] to start even while Redis is down.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().connect(url).await
    }

    /// Wraps a bb8 pool the application already has. Keep bb8's default
    /// `test_on_check_out(true)`: the handle checks out only to (re)connect, so
    /// that `PING` costs nothing per request and keeps dead connections out.
    pub fn from_pool(pool: bb8::Pool<RedisConnectionManager>) -> Self {
        Self::builder().from_pool(pool)
    }

    /// Connects to a Redis Cluster given some of its nodes' URLs.
    #[cfg(feature = "cluster")]
    pub async fn connect_cluster<I, S>(nodes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::builder().connect_cluster(nodes).await
    }

    /// The key builder (prefix) that layers built on this handle use.
    pub fn keys(&self) -> &KeyBuilder {
        &self.inner.keys
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// True when this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        match self.inner.source {
            Source::Standalone(_) => false,
            #[cfg(feature = "cluster")]
            Source::Cluster(_) => true,
        }
    }

    /// The standalone bb8 pool, for the application's own commands.
    pub fn pool(&self) -> Option<&bb8::Pool<RedisConnectionManager>> {
        match &self.inner.source {
            Source::Standalone(pool) => Some(pool),
            #[cfg(feature = "cluster")]
            Source::Cluster(_) => None,
        }
    }

    /// A connection for one or more commands. It implements
    /// [`redis::aio::ConnectionLike`], so `query_async`, pipelines and
    /// [`redis::Script::invoke_async`] work on it; each command is bounded by
    /// the handle's timeout. Cheap: a clone of a multiplexed connection.
    pub async fn connection(&self) -> Result<Connection> {
        let slots = &self.inner.slots;
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % slots.len();
        if let Some((generation, raw)) = slots[index].cached() {
            return Ok(Connection::new(self.inner.clone(), index, generation, raw));
        }
        // This slot is empty: use another live one, if any, while it refills.
        for (other, slot) in slots.iter().enumerate() {
            if let Some((generation, raw)) = slot.cached() {
                let this = self.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(this.inner.timeout, this.refill(index)).await;
                });
                return Ok(Connection::new(self.inner.clone(), other, generation, raw));
            }
        }
        match tokio::time::timeout(self.inner.timeout, self.refill(index)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(self.inner.timeout)),
        }
    }

    async fn refill(&self, index: usize) -> Result<Connection> {
        let slot = &self.inner.slots[index];
        let _refilling = slot.refill.lock().await;
        if let Some((generation, raw)) = slot.cached() {
            return Ok(Connection::new(self.inner.clone(), index, generation, raw));
        }
        let attempt = CONNECT_ATTEMPT.min(self.inner.timeout);
        let raw = match &self.inner.source {
            Source::Standalone(pool) => {
                let mut raw = take_bounded(pool, attempt).await?;
                // redis-rs's own response timeout (500 ms on connections it
                // makes) follows the handle's, so a longer one is honoured.
                raw.set_response_timeout(self.inner.timeout);
                RawConnection::Single(raw)
            }
            // The cluster client was built with the handle's response timeout.
            #[cfg(feature = "cluster")]
            Source::Cluster(_) => {
                let (generation, raw) = Slot::cluster_connection(&self.inner, index).await?;
                return Ok(Connection::new(self.inner.clone(), index, generation, raw));
            }
        };
        let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, raw.clone()));
        slot.timeouts.store(0, Ordering::Relaxed);
        Ok(Connection::new(self.inner.clone(), index, generation, raw))
    }

    /// The host and port of every master of a cluster, from `CLUSTER SLOTS`
    /// (in a stable order). On a single server: an error from Redis.
    pub async fn cluster_masters(&self) -> Result<Vec<(String, u16)>> {
        let mut conn = self.connection().await?;
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?;
        let mut masters = Vec::new();
        if let redis::Value::Array(ranges) = slots {
            for range in ranges {
                let redis::Value::Array(items) = range else { continue };
                let Some(redis::Value::Array(master)) = items.get(2) else { continue };
                let host = match master.first() {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    _ => continue,
                };
                let Some(port) = master.get(1).and_then(|p| match p {
                    redis::Value::Int(port) => u16::try_from(*port).ok(),
                    _ => None,
                }) else {
                    continue;
                };
                if !masters.contains(&(host.clone(), port)) {
                    masters.push((host, port));
                }
            }
        }
        masters.sort();
        Ok(masters)
    }

    /// How to reach the cluster node `host:port` directly: with the
    /// credentials, database and TLS settings of the URL the handle was built
    /// from (a cluster's first node), plain TCP without them otherwise.
    pub fn node_info(&self, host: &str, port: u16) -> redis::ConnectionInfo {
        let template = self.inner.info.clone().unwrap_or_else(|| {
            redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1/").expect("a valid URL")
        });
        let addr = match template.addr() {
            redis::ConnectionAddr::TcpTls { insecure, tls_params, .. } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        };
        template.set_addr(addr)
    }

    /// Makes the first connection of a cluster handle, which reads the
    /// cluster's topology from a node that answers: the check that it is
    /// there. Not a `PING` (redis-rs sends that to every master, and one
    /// lost master would fail it) and not the handle's timeout (a frozen node
    /// holds a new cluster connection up to its connect timeout).
    #[cfg(feature = "cluster")]
    async fn first_cluster_connection(&self) -> Result<()> {
        let wait = self.inner.timeout.max(FIRST_CLUSTER_CONNECTION);
        match tokio::time::timeout(wait, self.refill(0)).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(Error::Timeout(wait)),
        }
    }

    /// Whether the server behind this (standalone) handle is a node of a
    /// Redis Cluster; its answer is also the check that it is there (no
    /// `PING` besides). A server that refuses `INFO` (an ACL, a proxy) is
    /// taken for a single server once it answers `PING`.
    async fn is_cluster_node(&self) -> Result<bool> {
        let mut conn = self.connection().await?;
        match redis::cmd("INFO").arg("cluster").query_async::<String>(&mut conn).await.map_err(Error::from) {
            Ok(info) => Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1")),
            Err(error) if error.is_unavailable() => Err(error),
            Err(error) => {
                tracing::warn!(target: "redlayer", %error, "INFO refused: taking this Redis for a single server");
                self.ping().await.map(|()| false)
            }
        }
    }

    /// Sends `PING`; `Ok` when Redis answered within the timeout. On a
    /// cluster, one master (any) answers: a cluster with a master lost still
    /// serves the other masters' keys.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.connection().await?;
        conn.ping().await
    }
}

/// [`take`], each attempt given up after `attempt` and made again (a single
/// server's connection; redis-rs's cluster client was seen to hang while
/// connecting, redis-rs issue #1953, which is why cluster connections are
/// made in a task bounded by `BUILD_ATTEMPT`). The caller's timeout bounds
/// the whole.
async fn take_bounded<M>(pool: &bb8::Pool<M>, attempt: Duration) -> Result<M::Connection>
where
    M: bb8::ManageConnection<Error = redis::RedisError>,
    M::Connection: Clone,
{
    loop {
        if let Ok(result) = tokio::time::timeout(attempt, take(pool)).await {
            return result;
        }
        tracing::debug!(target: "redlayer", ?attempt, "a redis connection attempt hung; making it again");
    }
}

/// A connection of the pool, to keep in a slot. When the pool holds none
/// (first use, or Redis went away and its connections were dropped), a new
/// one is made directly and added to the pool: a refused connection is then
/// an error at once, where a checkout would wait for a connection until its
/// timeout.
async fn take<M>(pool: &bb8::Pool<M>) -> Result<M::Connection>
where
    M: bb8::ManageConnection<Error = redis::RedisError>,
    M::Connection: Clone,
{
    if pool.state().connections == 0 {
        let conn = pool.dedicated_connection().await.map_err(connect_error)?;
        let _ = pool.add(conn.clone());
        Ok(conn)
    } else {
        Ok(pool.get().await.map_err(pool_error)?.clone())
    }
}

/// A failed connection attempt, classified as any Redis error: unreachable
/// is unavailable; a refused password or ACL user, or a server that does not
/// speak Redis, is an error to report.
fn connect_error(e: redis::RedisError) -> Error {
    match Error::from(e) {
        Error::Timeout(_) => Error::Unavailable("connecting to Redis timed out".into()),
        other => other,
    }
}

fn pool_error(e: bb8::RunError<redis::RedisError>) -> Error {
    match e {
        bb8::RunError::User(e) => connect_error(e),
        bb8::RunError::TimedOut => Error::Unavailable("timed out waiting for a pooled connection".into()),
    }
}

/// Configures a [`Redis`] handle.
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBuilder {
    timeout: Duration,
    connections: usize,
    keys: KeyBuilder,
}

impl Default for RedisBuilder {
    fn default() -> Self {
        RedisBuilder { timeout: DEFAULT_TIMEOUT, connections: DEFAULT_CONNECTIONS, keys: KeyBuilder::default() }
    }
}

impl RedisBuilder {
    /// Per-command timeout (default 500 ms); redis-rs's own response timeout
    /// on the handle's connections is set to the same.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many multiplexed connections to keep (default 2, at least 1).
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// The key prefix of every key the layers write (default `redlayer`).
    pub fn key_prefix(mut self, keys: KeyBuilder) -> Self {
        self.keys = keys;
        self
    }

    /// Connects to the server at `url` and checks that it answers.
    ///
    /// A URL that names a node of a Redis Cluster (its `INFO` says
    /// `cluster_enabled:1`) gives a cluster handle, as `connect_cluster`
    /// would, seeded with that node and every master it lists, so that one
    /// `REDIS_URL` works for both; it is returned once the node has answered,
    /// even if its first cluster connection is still being made (logged).
    /// That needs the `cluster` feature: without it, the answer is an error
    /// that says so (a single-node handle on a cluster node would fail on
    /// every key of the other nodes' slots), except for a cluster of one
    /// master, which answers every key itself.
    pub async fn connect(self, url: &str) -> Result<Redis> {
        let builder = self.clone();
        let redis = self.connect_lazy(url)?;
        if redis.is_cluster_node().await? {
            return builder.connect_cluster_seeded_by(redis).await;
        }
        Ok(redis)
    }

    /// A cluster handle seeded with `node` (a standalone handle on one
    /// cluster node) and the masters it lists: the client can still find
    /// the cluster when that one node is gone.
    #[cfg(feature = "cluster")]
    async fn connect_cluster_seeded_by(self, node: Redis) -> Result<Redis> {
        let first = node.inner.info.clone().ok_or_else(|| Error::InvalidInput("no node URL".into()))?;
        let mut seeds = vec![first];
        for (host, port) in node.cluster_masters().await.unwrap_or_default() {
            seeds.push(node.node_info(&host, port));
        }
        let redis = self.cluster_from_infos(seeds)?;
        // The node answered: a cluster handle it is, even if its first
        // connection is still being made (a caller falling back to a
        // single-server handle on an error would then fail most keys).
        if let Err(error) = redis.first_cluster_connection().await {
            tracing::warn!(target: "redlayer", %error, "the cluster's first connection is not made yet");
        }
        Ok(redis)
    }

    /// Without the `cluster` feature: a cluster of one master (a one-shard
    /// managed cluster) answers every key itself, so the single-server handle
    /// is kept; with more masters, an error.
    #[cfg(not(feature = "cluster"))]
    async fn connect_cluster_seeded_by(self, node: Redis) -> Result<Redis> {
        if node.cluster_masters().await.is_ok_and(|masters| masters.len() == 1) {
            return Ok(node);
        }
        Err(Error::InvalidInput(
            "this Redis is a node of a Redis Cluster: enable redlayer's `cluster` feature \
             (then `Redis::connect` with this URL talks to the whole cluster)"
                .into(),
        ))
    }

    /// [`connect`](Self::connect), or, while Redis is unreachable, the handle
    /// of [`connect_lazy`](Self::connect_lazy) (with a warning): the
    /// application starts either way, and a cluster node's URL gives a
    /// cluster handle whenever the node answers at start.
    pub async fn connect_or_lazy(self, url: &str) -> Result<Redis> {
        match self.clone().connect(url).await {
            Err(error) if error.is_unavailable() => {
                tracing::warn!(target: "redlayer", %error, "Redis is not reachable yet: starting without it");
                self.connect_lazy(url)
            }
            other => other,
        }
    }

    /// Builds the handle without contacting Redis: an application can start
    /// while Redis is down, and the layers apply their failure policy until it is up.
    /// It can not tell a cluster node from a single server: for a cluster, use
    /// `connect_cluster_lazy` (a single-server handle on a cluster node logs
    /// an error at the first redirection it gets).
    pub fn connect_lazy(self, url: &str) -> Result<Redis> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| Error::InvalidInput(format!("redis url: {e}")))?;
        self.connect_info_lazy(info)
    }

    /// Connects to one server given its connection info (e.g. a cluster
    /// node's, from [`Redis::node_info`]) and checks that it answers.
    pub async fn connect_info(self, info: redis::ConnectionInfo) -> Result<Redis> {
        let redis = self.connect_info_lazy(info)?;
        redis.ping().await?;
        Ok(redis)
    }

    fn connect_info_lazy(self, info: redis::ConnectionInfo) -> Result<Redis> {
        let manager =
            RedisConnectionManager::new(info.clone()).map_err(|e| Error::InvalidInput(format!("redis url: {e}")))?;
        let pool = self.pool_builder().build_unchecked(manager);
        Ok(self.build(Source::Standalone(pool), Some(info)))
    }

    /// Wraps an existing bb8 pool (see [`Redis::from_pool`]).
    pub fn from_pool(self, pool: bb8::Pool<RedisConnectionManager>) -> Redis {
        self.build(Source::Standalone(pool), None)
    }

    /// Connects to a Redis Cluster given some of its nodes and checks that it answers.
    #[cfg(feature = "cluster")]
    pub async fn connect_cluster<I, S>(self, nodes: I) -> Result<Redis>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let redis = self.connect_cluster_lazy(nodes)?;
        redis.first_cluster_connection().await?;
        Ok(redis)
    }

    /// Builds a cluster handle without contacting Redis.
    #[cfg(feature = "cluster")]
    pub fn connect_cluster_lazy<I, S>(self, nodes: I) -> Result<Redis>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = nodes
            .into_iter()
            .map(|n| redis::IntoConnectionInfo::into_connection_info(n.as_ref()))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| Error::InvalidInput(format!("redis cluster nodes: {e}")))?;
        self.cluster_from_infos(nodes)
    }

    /// Builds a cluster handle on these nodes (the first one's credentials
    /// and TLS settings serve every node) without contacting Redis.
    #[cfg(feature = "cluster")]
    fn cluster_from_infos(self, nodes: Vec<redis::ConnectionInfo>) -> Result<Redis> {
        let info = nodes.first().cloned();
        let client = redis::cluster::ClusterClient::builder(nodes)
            .response_timeout(self.timeout)
            .connection_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| Error::InvalidInput(format!("redis cluster nodes: {e}")))?;
        // No checkout test: redis-rs sends `PING` to every master, so one
        // lost master would refuse every fresh connection, and with it the
        // healthy masters' keys. Making the connection already checked the
        // nodes it reached.
        let pool = self.pool_builder().test_on_check_out(false).build_unchecked(client);
        Ok(self.build(Source::Cluster(pool), info))
    }

    /// Wraps an existing bb8 pool of cluster connections: its manager makes
    /// the handle's connections (see [`Redis`] on clusters); its checkout
    /// settings and idle connections are not used. The handle knows
    /// no node URL then: a [`NearCache`](crate::NearCache) can not start on
    /// it, and the cache's purge by prefix reaches the masters without
    /// credentials or TLS.
    #[cfg(feature = "cluster")]
    pub fn from_cluster_pool(self, pool: bb8::Pool<redis::cluster::ClusterClient>) -> Redis {
        self.build(Source::Cluster(pool), None)
    }

    /// The pool the handle builds for a URL or cluster nodes: as many
    /// connections as it keeps, each tested on checkout; a checkout that finds
    /// none connects at once (bb8's own retries back off up to half a second,
    /// which a restarted Redis would wait out).
    fn pool_builder<M: bb8::ManageConnection>(&self) -> bb8::Builder<M> {
        bb8::Pool::builder()
            .max_size(self.connections as u32)
            .test_on_check_out(true)
            .retry_connection(false)
            .connection_timeout(Duration::from_secs(1))
    }

    fn build(self, source: Source, info: Option<redis::ConnectionInfo>) -> Redis {
        Redis {
            inner: Arc::new(Inner {
                source,
                slots: (0..self.connections).map(|_| Slot::new()).collect(),
                next: AtomicUsize::new(0),
                timeout: self.timeout,
                keys: self.keys,
                info,
                told_moved: AtomicBool::new(false),
                #[cfg(feature = "cluster")]
                clock: std::time::Instant::now(),
            }),
        }
    }
}
