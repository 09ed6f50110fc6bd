//! Several instances (each with its own pool) on one Redis; Redis failures.

mod support;

use std::time::{Duration, Instant};

use redlayer_cache::{CacheLayer, Store};
use redlayer_testkit::RedisServer;
use support::{App, Origin, resp};

async fn stampede(urls: Vec<String>, cluster: bool) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")))
        .delay(Duration::from_millis(300));
    let mut apps = Vec::new();
    for _ in 0..4 {
        let redis = if cluster {
            #[cfg(feature = "cluster")]
            {
                redlayer_core::Redis::connect_cluster(urls.clone()).await.unwrap()
            }
            #[cfg(not(feature = "cluster"))]
            unreachable!()
        } else {
            redlayer_core::Redis::connect(&urls[0]).await.unwrap()
        };
        apps.push(App::new(CacheLayer::new(redis), &origin));
    }
    let mut handles = Vec::new();
    for i in 0..200 {
        let app = apps[i % 4].clone();
        handles.push(tokio::spawn(async move { app.get("/stampede").await }));
    }
    for h in handles {
        let got = h.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "v1");
    }
    assert_eq!(origin.hits(), 1, "200 requests across 4 instances reached the origin once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_key_across_four_instances_reaches_origin_once() {
    let server = RedisServer::start();
    stampede(vec![server.url()], false).await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_key_across_four_instances_reaches_origin_once_on_cluster() {
    let cluster = redlayer_testkit::RedisCluster::start();
    stampede(cluster.urls(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_does_not_block_the_others() {
    let server = RedisServer::start();
    let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    // Another instance took the fill lock and died.
    let locks = redlayer_lock::Locks::redis(redis.clone());
    let store = Store::redis(redis.clone());
    let key = store.entry_key("GET http://example.test/dead");
    let lock = locks.try_acquire(&format!("cache-fill:{key}"), Duration::from_millis(600)).await.unwrap().unwrap();
    std::mem::forget(lock);
    let origin = Origin::new(|_, _| resp(200, &[("cache-control", "max-age=60")], "ok"));
    let app = App::new(CacheLayer::new(redis), &origin);
    let started = Instant::now();
    let got = app.get("/dead").await;
    assert_eq!(got.body, "ok");
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_traffic_the_layer_steps_aside() {
    let mut server = RedisServer::start();
    let redis =
        redlayer_core::Redis::builder().timeout(Duration::from_millis(300)).connect(&server.url()).await.unwrap();
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    let app = App::new(CacheLayer::new(redis), &origin);
    app.get("/x").await;
    assert!(app.get("/x").await.is_hit());
    server.kill();
    for i in 0..20 {
        let started = Instant::now();
        let got = app.get(&format!("/down{i}")).await;
        assert_eq!(got.status, 200);
        assert!(started.elapsed() < Duration::from_millis(1500), "request took {:?}", started.elapsed());
        assert!(got.cache_status().contains("fwd="), "{}", got.cache_status());
    }
    let down = app.get("/x").await;
    assert!(!down.is_hit());
    server.restart();
    let back = Instant::now();
    loop {
        let a = app.get("/y").await;
        let b = app.get("/y").await;
        if b.is_hit() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "cache did not come back: {} / {}",
            a.cache_status(),
            b.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_another_version_are_misses() {
    let server = RedisServer::start();
    let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    let layer = CacheLayer::new(redis);
    let key = layer.store().entry_key("GET http://example.test/ver");
    let app = App::new(layer, &origin);
    app.get("/ver").await;
    assert!(app.get("/ver").await.is_hit());
    let raw = server.cli(&["HGET", &key, "v:"]);
    assert!(!raw.trim().is_empty());
    // An entry written by a future version, then plain garbage.
    for value in ["\u{c7}\u{09}future-format", "garbage"] {
        server.cli(&["HSET", &key, "v:", value]);
        let got = app.get("/ver").await;
        assert_eq!(got.status, 200);
        assert!(!got.is_hit(), "{}", got.cache_status());
    }
    assert!(app.get("/ver").await.is_hit(), "re-stored by this version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aside_fetches_once_across_instances() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..4 {
        let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
        let cache = redlayer_cache::CacheAside::redis(redis);
        for _ in 0..10 {
            let (cache, calls) = (cache.clone(), calls.clone());
            handles.push(tokio::spawn(async move {
                cache
                    .get_or_insert_with("report", Duration::from_secs(60), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>(format!("built by {i}"))
                    })
                    .await
                    .unwrap()
            }));
        }
    }
    let mut values = std::collections::HashSet::new();
    for h in handles {
        values.insert(h.await.unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(values.len(), 1);
}

/// A fresh hit costs one Redis command (the HMGET of the entry) and is served
/// with the stored body, `Age` and `Cache-Status`; the summary stored with the
/// entry decides it, and a request the summary does not cover (`max-age=0`)
/// still goes through the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_hit_is_one_redis_command() {
    let server = RedisServer::start();
    let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "public, max-age=3600")], &format!("v{n}")));
    let app = App::new(CacheLayer::new(redis), &origin);
    let mut stored = false;
    for _ in 0..40 {
        if app.get("/one").await.is_hit() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(stored, "entry never stored");
    let before = server.total_commands();
    for _ in 0..10 {
        let got = app.get("/one").await;
        assert!(got.is_hit(), "{}", got.cache_status());
        assert_eq!(got.body, "v1");
        assert!(got.header("age").parse::<u64>().is_ok_and(|a| a < 60), "age {}", got.header("age"));
        assert!(got.cache_status().contains("ttl=35"), "{}", got.cache_status());
    }
    // + 1: the INFO of the first count.
    assert_eq!(server.total_commands() - before, 10 + 1);
    let got = app.send("GET", "/one", &[("cache-control", "max-age=0")]).await;
    assert!(!got.is_hit(), "max-age=0 must not be a hit: {}", got.cache_status());
    assert_eq!(origin.hits(), 2);
}
