//! NearCache against a real redis-server (and a 3-master cluster): copies
//! are dropped when anyone writes their key, a read racing a write keeps
//! nothing, and no copy is served while tracking is down.

use std::time::{Duration, Instant};

use redlayer_core::{Error, NearCache, Redis};
use redlayer_testkit::RedisServer;

const PREFIX: &str = "t:near:";
const TTL: Duration = Duration::from_secs(60);

/// Waits (at most `within`) for `done`; false if it never happened.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

async fn started(redis: &Redis) -> NearCache<String> {
    let near = NearCache::start(redis, &[PREFIX], 1 << 20, |v: &String| v.len()).unwrap();
    assert!(eventually(Duration::from_secs(5), || near.is_live()).await, "tracking turned on");
    near
}

/// Reads `key` through the handle and keeps the value, as a caller does.
async fn try_read_through(near: &NearCache<String>, redis: &Redis, key: &str) -> Result<Option<String>, Error> {
    if let Some(copy) = near.get(key) {
        return Ok(Some(copy));
    }
    let ticket = near.ticket(key);
    let mut conn = redis.connection().await?;
    let value: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
    if let Some(value) = &value {
        near.insert(ticket, key, value.clone(), TTL);
    }
    Ok(value)
}

async fn read_through(near: &NearCache<String>, redis: &Redis, key: &str) -> Option<String> {
    try_read_through(near, redis, key).await.unwrap()
}

/// Reads `key` until its copy is held: the push of the write that set it
/// may come after the first read and drop that read's copy (as it should).
async fn settle(near: &NearCache<String>, redis: &Redis, key: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while near.get(key).is_none() && Instant::now() < deadline {
        if let Ok(value) = try_read_through(near, redis, key).await {
            assert_eq!(value.as_deref(), Some(expected));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(near.get(key).as_deref(), Some(expected), "copy of {key} held");
}

/// Waits until every push Redis sent before now has been read: writes a
/// barrier key held in the cache, and waits for its copy to go (pushes
/// come in order on the one tracking connection).
async fn barrier(near: &NearCache<String>, server: &RedisServer) {
    let key = format!("{PREFIX}~barrier");
    let ticket = near.ticket(&key);
    near.insert(ticket, &key, "b".to_owned(), TTL);
    assert!(near.get(&key).is_some(), "barrier copy held");
    server.cli(&["SET", &key, "b"]);
    assert!(eventually(Duration::from_secs(2), || near.get(&key).is_none()).await, "barrier push read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_served_without_redis_and_dropped_when_another_instance_writes() {
    let server = RedisServer::start();
    let (redis, other) = (Redis::connect(&server.url()).await.unwrap(), Redis::connect(&server.url()).await.unwrap());
    let near = started(&redis).await;
    let key = format!("{PREFIX}page");
    server.cli(&["SET", &key, "v1"]);

    settle(&near, &redis, &key, "v1").await;
    barrier(&near, &server).await;
    settle(&near, &redis, &key, "v1").await;
    let gets = server.command_calls("get");
    for _ in 0..100 {
        assert_eq!(read_through(&near, &redis, &key).await.as_deref(), Some("v1"));
    }
    assert_eq!(server.command_calls("get"), gets, "copies are served without a command");

    // Another instance (its own handle) writes the key: Redis pushes the
    // invalidation and the copy goes.
    let mut conn = other.connection().await.unwrap();
    let _: () = redis::cmd("SET").arg(&key).arg("v2").query_async(&mut conn).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || near.get(&key).is_none()).await, "copy dropped");
    assert_eq!(read_through(&near, &redis, &key).await.as_deref(), Some("v2"));

    // Deletion and expiry invalidate too.
    server.cli(&["DEL", &key]);
    assert!(eventually(Duration::from_secs(2), || near.get(&key).is_none()).await, "copy dropped on DEL");
    server.cli(&["SET", &key, "v3", "PX", "1000"]);
    assert_eq!(read_through(&near, &redis, &key).await.as_deref(), Some("v3"));
    assert!(eventually(Duration::from_secs(4), || near.get(&key).is_none()).await, "copy dropped on expiry");

    // FLUSHALL drops every copy.
    server.cli(&["SET", &key, "v4"]);
    assert_eq!(read_through(&near, &redis, &key).await.as_deref(), Some("v4"));
    server.cli(&["FLUSHALL"]);
    assert!(eventually(Duration::from_secs(2), || near.is_empty()).await, "flush drops every copy");

    // Keys outside the prefix are not tracked, so never kept.
    let elsewhere = "elsewhere";
    server.cli(&["SET", elsewhere, "x"]);
    let ticket = near.ticket(elsewhere);
    near.insert(ticket, elsewhere, "x".to_owned(), TTL);
    assert_eq!(near.get(elsewhere), None, "a key outside the prefix is not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_cache_closes_its_tracking_connection() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    // `CLIENT LIST` marks tracking clients with flag `t`.
    let tracking = || {
        server
            .cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.split(' ').any(|f| f.strip_prefix("flags=").is_some_and(|flags| flags.contains('t'))))
            .count()
    };
    let near = started(&redis).await;
    assert_eq!(tracking(), 1);
    let clone = near.clone();
    drop(near);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tracking(), 1, "a clone keeps it");
    drop(clone);
    assert!(eventually(Duration::from_secs(3), || tracking() == 0).await, "tracking connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_read_before_a_write_is_not_kept() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let near = started(&redis).await;
    // (Redis sends the keys of one push in order: the probe's comes last.)
    let (key, probe) = (format!("{PREFIX}a-raced"), format!("{PREFIX}z-probe"));
    server.cli(&["SET", &key, "old"]);
    server.cli(&["SET", &probe, "p"]);
    settle(&near, &redis, &probe, "p").await;

    // A read of `key` starts (ticket) and gets "old"; then another client
    // writes both keys in one command, and its push is read (the probe's copy
    // is gone) before the reader keeps its value: nothing is kept.
    let ticket = near.ticket(&key);
    server.cli(&["MSET", &key, "new", &probe, "q"]);
    assert!(eventually(Duration::from_secs(2), || near.get(&probe).is_none()).await, "push read");
    near.insert(ticket, &key, "old".to_owned(), TTL);
    assert_eq!(near.get(&key), None, "a value read before the write must not be kept");

    // The same for this process's own write (remove), before any push.
    let ticket = near.ticket(&key);
    near.remove(&key);
    near.insert(ticket, &key, "new".to_owned(), TTL);
    assert_eq!(near.get(&key), None);
    // A fresh ticket keeps the value.
    let ticket = near.ticket(&key);
    near.insert(ticket, &key, "new".to_owned(), TTL);
    assert_eq!(near.get(&key).as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_copy_is_served_while_redis_is_down_or_frozen() {
    let mut server = RedisServer::start();
    let redis = Redis::builder().timeout(Duration::from_millis(300)).connect(&server.url()).await.unwrap();
    let near = started(&redis).await;
    let key = format!("{PREFIX}k");
    server.cli(&["SET", &key, "v"]);
    settle(&near, &redis, &key, "v").await;

    // Killed: the connection's end drops every copy at once.
    server.kill();
    assert!(eventually(Duration::from_secs(2), || !near.is_live()).await, "tracking off when redis dies");
    assert!(near.get(&key).is_none() && near.is_empty());
    // A read that began while tracking was off keeps nothing.
    let ticket = near.ticket(&key);
    near.insert(ticket, &key, "stale".to_owned(), TTL);
    assert!(near.is_empty());

    // Back (empty, as after a crash): tracking resumes by itself.
    server.restart();
    assert!(eventually(Duration::from_secs(10), || near.is_live()).await, "tracking back after restart");
    server.cli(&["SET", &key, "w"]);
    // (The handle's own connections learn of the restart on their next command.)
    settle(&near, &redis, &key, "w").await;

    // Frozen (SIGSTOP): its writes can not be seen, so the heartbeat drops
    // every copy within a second plus the timeout.
    server.pause();
    let frozen = eventually(Duration::from_secs(4), || !near.is_live()).await;
    server.resume();
    assert!(frozen, "tracking off while redis is frozen");
    assert!(eventually(Duration::from_secs(10), || near.is_live()).await, "tracking back after SIGCONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_without_a_url_is_refused() {
    let server = RedisServer::start();
    let manager = bb8_redis::RedisConnectionManager::new(server.url()).unwrap();
    let pool = bb8::Pool::builder().max_size(2).build(manager).await.unwrap();
    let redis = Redis::from_pool(pool);
    let err = NearCache::<String>::start(&redis, &[PREFIX], 1 << 20, |v: &String| v.len()).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[test]
fn no_copy_is_served_once_its_runtime_is_gone() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let key = format!("{PREFIX}k");
    server.cli(&["SET", &key, "v"]);
    let near = runtime.block_on(async {
        let redis = Redis::connect(&server.url()).await.unwrap();
        let near = started(&redis).await;
        settle(&near, &redis, &key, "v").await;
        near
    });
    assert!(near.is_live() && near.get(&key).is_some());
    // The tracking task dies with its runtime: no invalidation could reach
    // the copies any more, so they go.
    drop(runtime);
    assert!(!near.is_live());
    assert_eq!(near.get(&key), None);
    assert!(near.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_old_copy_survives_reads_racing_writes() {
    let server = RedisServer::start();
    let url = server.url();
    let connect = || Redis::builder().timeout(Duration::from_secs(5)).connect(&url);
    let (redis, other) = (connect().await.unwrap(), connect().await.unwrap());
    let near = started(&redis).await;
    let keys: Vec<String> = (0..32).map(|i| format!("{PREFIX}race-{i}")).collect();
    const WRITES: usize = 500;

    // One writer per key (another instance), while readers keep reading
    // every key through the near cache.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (near, redis, keys, done) = (near.clone(), redis.clone(), keys.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for key in &keys {
                    if try_read_through(&near, &redis, key).await.is_ok() {
                        reads += 1;
                    }
                }
                // A near hit awaits nothing: let the writers run.
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for key in keys.clone() {
        let other = other.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = other.connection().await.unwrap();
            for i in 1..=WRITES {
                let _: () = redis::cmd("SET").arg(&key).arg(i.to_string()).query_async(&mut conn).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(reads > 100, "the readers raced the writers ({reads} reads)");

    // Every push of the writes has been read: any copy left must be the last
    // value. (With the ticket check taken out of `insert`, this failed in
    // about half the runs on the project's 2-core machine.)
    barrier(&near, &server).await;
    for key in &keys {
        if let Some(copy) = near.get(key) {
            assert_eq!(copy, WRITES.to_string(), "{key}: a copy older than the last write survived");
        }
        assert_eq!(read_through(&near, &redis, key).await, Some(WRITES.to_string()));
    }
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_tracks_every_master() {
    use redlayer_core::keys::cluster_slot;

    let mut cluster = redlayer_testkit::RedisCluster::start();
    let redis = Redis::connect_cluster(cluster.urls()).await.unwrap();
    let other = Redis::connect_cluster(cluster.urls()).await.unwrap();
    let near: NearCache<String> = NearCache::start(&redis, &[PREFIX], 1 << 20, |v: &String| v.len()).unwrap();
    assert!(eventually(Duration::from_secs(5), || near.is_live()).await, "tracking on every master");

    // Keys on every master, written by another instance.
    let keys: Vec<String> = (0..12).map(|i| format!("{PREFIX}{{k{i}}}")).collect();
    let nodes: std::collections::HashSet<u16> = keys.iter().map(|k| cluster_slot(k) / 5462).collect();
    assert_eq!(nodes.len(), 3, "the keys spread over the three masters");
    let mut conn = other.connection().await.unwrap();
    for key in &keys {
        let _: () = redis::cmd("SET").arg(key).arg("v1").query_async(&mut conn).await.unwrap();
    }
    // Read each until its copy is held (the SET's own push may drop a first copy).
    let deadline = Instant::now() + Duration::from_secs(5);
    for key in &keys {
        while near.get(key).is_none() {
            assert!(Instant::now() < deadline, "no copy of {key}");
            let ticket = near.ticket(key);
            let mut mine = redis.connection().await.unwrap();
            let value: String = redis::cmd("GET").arg(key).query_async(&mut mine).await.unwrap();
            near.insert(ticket, key, value, Duration::from_secs(60));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Another instance's writes on any master drop the copies.
    for key in &keys {
        let _: () = redis::cmd("SET").arg(key).arg("v2").query_async(&mut conn).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(2), || near.is_empty()).await, "every copy dropped: {}", near.len());

    // A master killed: tracking is off (no copy served) until it is back.
    cluster.node_mut(1).kill();
    assert!(eventually(Duration::from_secs(5), || !near.is_live()).await, "tracking off with a master down");
    cluster.node_mut(1).restart();
    cluster.wait_ok(Duration::from_secs(20));
    assert!(eventually(Duration::from_secs(20), || near.is_live()).await, "tracking back on every master");
}
