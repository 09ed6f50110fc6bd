//! The near cache (`Store::with_near_cache`) on a real redis-server: hits
//! served without a Redis command, and every purge, store or unsafe request
//! made through another instance seen by this one.

mod support;

use std::time::{Duration, Instant};

use redlayer_cache::{CacheAside, CacheLayer, Store};
use redlayer_testkit::RedisServer;
use support::{App, Origin, resp};

/// A handle on one server (one URL) or on a cluster (its nodes' URLs).
async fn handle(urls: &[String]) -> redlayer_core::Redis {
    if urls.len() == 1 {
        return redlayer_core::Redis::connect(&urls[0]).await.unwrap();
    }
    #[cfg(feature = "cluster")]
    return redlayer_core::Redis::connect_cluster(urls).await.unwrap();
    #[cfg(not(feature = "cluster"))]
    unreachable!("cluster tests need the cluster feature")
}

/// One instance: its own handle, its store with a near cache, its app.
async fn instance(urls: &[String], origin: &Origin) -> (Store, App) {
    let store = Store::redis(handle(urls).await).with_near_cache(1 << 20).unwrap();
    (store.clone(), App::new(CacheLayer::with_store(store), origin))
}

/// Requests `path` until this instance holds a copy of it (the push of its
/// own store may drop the first copy), checking every answer's body.
async fn warm(store: &Store, app: &App, path: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.near_cache_len() == Some(0) {
        assert!(Instant::now() < deadline, "no near copy of {path} after 5 s");
        assert_eq!(app.get(path).await.body, body);
    }
}

/// Reads the cache-aside value `key` until this instance holds a copy.
async fn warm_value(store: &Store, aside: &CacheAside, key: &str, expected: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.near_cache_len() == Some(0) {
        assert!(Instant::now() < deadline, "no near copy of {key} after 5 s");
        assert_eq!(aside.get::<u32>(key).await.unwrap(), Some(expected));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn eventually_empty(store: &Store) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.near_cache_len() != Some(0) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_come_from_memory_and_another_instances_purge_is_seen() {
    let server = RedisServer::start();
    let lookups = || server.command_calls("hmget");
    purge_and_post_seen_across_instances(&[server.url()], lookups).await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_come_from_memory_and_another_instances_purge_is_seen_on_cluster() {
    let cluster = redlayer_testkit::RedisCluster::start();
    let lookups = || cluster.command_calls("hmget");
    purge_and_post_seen_across_instances(&cluster.urls(), lookups).await;
}

async fn purge_and_post_seen_across_instances(urls: &[String], lookups: impl Fn() -> u64) {
    let origin =
        Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60"), ("cache-tag", "t1")], &format!("v{n}")));
    let (store_a, a) = instance(urls, &origin).await;
    let (store_b, b) = instance(urls, &origin).await;

    assert_eq!(a.get("/p").await.body, "v1");
    warm(&store_a, &a, "/p", "v1").await;
    warm(&store_b, &b, "/p", "v1").await;
    let looked_up = lookups();
    for _ in 0..20 {
        let got = a.get("/p").await;
        assert!(got.is_hit(), "{}", got.cache_status());
        assert_eq!(got.body, "v1");
        assert!(!got.header("age").is_empty(), "Age on a near hit");
    }
    assert_eq!(lookups(), looked_up, "near hits send no command");

    // A purge through instance A: A's copy goes at once, B's when Redis's
    // push is read; then B asks the origin again.
    assert_eq!(store_a.purge_tag("t1").await.unwrap(), 1);
    assert_eq!(store_a.near_cache_len(), Some(0));
    assert!(eventually_empty(&store_b).await, "B dropped its copy after A's purge");
    let got = b.get("/p").await;
    assert!(!got.is_hit(), "{}", got.cache_status());
    assert_eq!(got.body, "v2");
    assert_eq!(origin.hits(), 2);

    // A successful unsafe request through B invalidates the URI: A's copy goes.
    warm(&store_a, &a, "/p", "v2").await;
    let posted = b.send("POST", "/p", &[]).await;
    assert_eq!(posted.status, 200);
    assert!(eventually_empty(&store_a).await, "A dropped its copy after B's POST");
    assert_eq!(a.get("/p").await.body, "v4", "the POST (v3) went to the origin, then this miss (v4)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aside_values_are_near_cached_and_invalidated_across_instances() {
    let server = RedisServer::start();
    let connect = || async {
        let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
        Store::redis(redis).with_near_cache(1 << 20).unwrap()
    };
    let (store_a, store_b) = (connect().await, connect().await);
    let (a, b) = (CacheAside::new(store_a.clone()), CacheAside::new(store_b.clone()));
    b.set("price", &10u32, Duration::from_secs(60)).await.unwrap();

    warm_value(&store_a, &a, "price", 10).await;
    let gets = server.command_calls("get");
    for _ in 0..20 {
        assert_eq!(a.get::<u32>("price").await.unwrap(), Some(10));
    }
    assert_eq!(server.command_calls("get"), gets, "near copies send no command");

    b.set("price", &12u32, Duration::from_secs(60)).await.unwrap();
    assert!(eventually_empty(&store_a).await, "A dropped its copy after B's set");
    assert_eq!(a.get::<u32>("price").await.unwrap(), Some(12));
    b.invalidate("price").await.unwrap();
    assert!(eventually_empty(&store_a).await, "A dropped its copy after B's invalidate");
    assert_eq!(a.get::<u32>("price").await.unwrap(), None);

    // A copy never outlives its key: Redis only says that a key expired once
    // it notices, which without active expiry (switched off here) is when a
    // command touches the key, and a near hit sends none.
    assert!(server.cli(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]).contains("OK"));
    b.set("short", &1u32, Duration::from_millis(800)).await.unwrap();
    warm_value(&store_a, &a, "short", 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(a.get::<u32>("short").await.unwrap(), None, "the value expired with its key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_near_hit_while_redis_is_down() {
    let mut server = RedisServer::start();
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    let (store, app) = instance(&[server.url()], &origin).await;
    assert_eq!(app.get("/d").await.body, "v1");
    warm(&store, &app, "/d", "v1").await;
    server.kill();
    assert!(eventually_empty(&store).await, "copies dropped when redis died");
    // The layer steps aside: the origin answers.
    let got = app.get("/d").await;
    assert!(!got.is_hit(), "{}", got.cache_status());
    assert_eq!(got.body, "v2");
}
