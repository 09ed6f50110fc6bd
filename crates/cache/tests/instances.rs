//! Several instances (each with its own pool) on one Redis; Redis failures.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use redlayer_cache::{CacheLayer, Store};
use redlayer_testkit::RedisServer;
use support::{App, Origin, resp, settle};

/// A handle with one connection, made at connect: tests that count the
/// commands the server runs see no second connection being set up (and
/// checked with `PING`) in the background.
async fn one_connection(server: &RedisServer) -> redlayer_core::Redis {
    redlayer_core::Redis::builder().connections(1).connect(&server.url()).await.unwrap()
}

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

/// The request leading a fill is dropped (its client went away) while the
/// origin works: one of the waiters leads a new fill, and the others wait
/// for it instead of all going to the origin at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dropped_mid_fill_hands_the_fill_to_one_waiter() {
    let server = RedisServer::start();
    let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")))
        .delay(Duration::from_millis(300));
    let app = App::new(CacheLayer::new(redis), &origin);
    let leader = {
        let app = app.clone();
        tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(150), app.get("/dropped")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.get("/dropped").await })
        })
        .collect();
    assert!(leader.await.unwrap().is_err(), "the leader was dropped before the origin answered");
    let started = Instant::now();
    for w in waiters {
        let got = w.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "v2", "the new leader's entry");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    assert_eq!(origin.hits(), 2, "the dropped leader's call and one more");
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
    let redis = one_connection(&server).await;
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "public, max-age=3600")], &format!("v{n}")));
    let app = App::new(CacheLayer::new(redis.clone()), &origin);
    let mut stored = false;
    for _ in 0..40 {
        if app.get("/one").await.is_hit() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(stored, "entry never stored");
    // The fill's lock release runs in the background.
    settle(&redis, "/one", false).await;
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

/// A repeated uncacheable GET costs one Redis command (the lookup's HMGET,
/// which also reads the hit-for-pass marker) once the first miss marked the
/// key; with hit-for-pass disabled it costs the lookup, the re-check and the
/// fill lock's acquire and release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_uncacheable_get_is_one_redis_command() {
    let server = RedisServer::start();
    let redis = one_connection(&server).await;
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "no-store")], &format!("v{n}")));
    let app = App::new(CacheLayer::new(redis.clone()), &origin);
    app.get("/uncacheable").await;
    // The marker is written in the background, then the fill lock released.
    settle(&redis, "/uncacheable", true).await;
    let before = server.total_commands();
    for i in 0..10 {
        let got = app.get("/uncacheable").await;
        assert_eq!(got.body, format!("v{}", i + 2));
        assert!(got.cache_status().contains("detail=hit-for-pass"), "{}", got.cache_status());
    }
    // + 1: the INFO of the first count.
    let with = server.total_commands() - before - 1;
    assert_eq!(with, 10, "one HMGET per request");

    let off = App::new(CacheLayer::new(redis.clone()).hit_for_pass(Duration::ZERO), &origin);
    off.get("/uncacheable-off").await;
    settle(&redis, "/uncacheable-off", false).await;
    let round_trips = || ["hmget", "set", "evalsha"].map(|c| server.command_calls(c));
    let trips_before = round_trips();
    for _ in 0..10 {
        off.get("/uncacheable-off").await;
        // Each lock release is sent in the background: wait for it, so that
        // the next request takes the lock at once (no waiting, no re-polls).
        settle(&redis, "/uncacheable-off", false).await;
    }
    let trips_after = round_trips();
    let [hmget, set, evalsha] = std::array::from_fn(|i| trips_after[i] - trips_before[i]);
    eprintln!(
        "10 uncacheable GETs: {with} Redis commands with hit-for-pass; without: \
         {hmget} HMGET, {set} SET NX, {evalsha} EVALSHA release"
    );
    assert_eq!((hmget, set, evalsha), (20, 10, 10), "lookup, lock, re-check, release per request");
}

/// Cross-instance fill ordering: a request reaching another instance right
/// after the first instance's response was sent finds the entry (the fill
/// lock is released only once the entry is stored, and its next holder looks
/// again), and a hit-for-pass marker written by one instance is seen by the
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_another_instance_right_after_a_fill_finds_the_entry() {
    let server = RedisServer::start();
    let origin = Origin::new(|parts, n| {
        if parts.uri.path().starts_with("/private") {
            resp(200, &[("cache-control", "private")], &format!("v{n}"))
        } else {
            resp(200, &[("cache-control", "max-age=60")], &format!("v{n}"))
        }
    });
    let mut apps = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
        apps.push(App::new(CacheLayer::new(redis.clone()), &origin));
        handles.push(redis);
    }
    async fn fetch(app: &App, uri: &str) -> (String, String) {
        let req = http::Request::builder().uri(uri).header("host", "example.test");
        let res = tower::ServiceExt::oneshot(app.service(), req.body(axum::body::Body::empty()).unwrap());
        let res = tokio::time::timeout(Duration::from_secs(10), res).await.unwrap().unwrap();
        let status = res.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        (String::from_utf8_lossy(&body).into_owned(), status)
    }
    for i in 0..40 {
        let uri = format!("/across/{i}");
        let (first, _) = fetch(&apps[i % 2], &uri).await;
        let (second, status) = fetch(&apps[(i + 1) % 2], &uri).await;
        assert_eq!(first, second, "request {i} on the other instance missed: {status}");
    }
    assert_eq!(origin.hits(), 40, "a back-to-back request on another instance went to the origin");

    fetch(&apps[0], "/private").await;
    // The marker is written in the background.
    settle(&handles[0], "/private", true).await;
    let (_, status) = fetch(&apps[1], "/private").await;
    assert!(status.contains("detail=hit-for-pass"), "{status}");
}

/// The same over real HTTP/1 servers (hyper stops polling a body once its
/// `Content-Length` is written): two instances on one Redis, an origin that
/// streams its body (like a proxied one); a request to the second instance
/// right after the first instance's response was read is answered from the
/// cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_request_on_another_instance_right_after_a_fill_finds_the_entry() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let redis = redlayer_core::Redis::connect(&server.url()).await.unwrap();
        let calls = calls.clone();
        let app = axum::Router::new()
            .fallback(move |req: axum::extract::Request| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let body = format!("{} #{n}", req.uri().path());
                    let len = body.len().to_string();
                    let body = if req.uri().path().starts_with("/streamed") {
                        let data = [Ok::<_, std::convert::Infallible>(bytes::Bytes::from(body))];
                        let stream = futures_util::stream::iter(data).chain(futures_util::stream::pending());
                        axum::body::Body::from_stream(stream.boxed())
                    } else {
                        axum::body::Body::from(body)
                    };
                    ([("cache-control", "max-age=60".to_owned()), ("content-length", len)], body)
                }
            })
            .layer(CacheLayer::new(redis));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw)).await.unwrap().unwrap();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        (head.to_owned(), body.to_owned())
    }
    for i in 0..40 {
        let path = if i % 4 < 2 { format!("/streamed/{i}") } else { format!("/page/{i}") };
        let (_, first) = get(addrs[i % 2], &path).await;
        let (head, second) = get(addrs[(i + 1) % 2], &path).await;
        assert_eq!(first, second, "the other instance missed:\n{head}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 40);
}

/// A tag index drops the members whose entries expired as new ones come: a
/// site-wide tag on cache-busting URLs does not grow one index forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_index_does_not_keep_expired_members() {
    let server = RedisServer::start();
    let cache = redlayer_cache::CacheAside::new(Store::redis(one_connection(&server).await));
    for i in 0..50 {
        cache.set_with_tags(&format!("busted-{i}"), &i, Duration::from_millis(1000), &["site"]).await.unwrap();
    }
    let index = server.cli(&["--scan", "--pattern", "*cachetag*"]).lines().next().expect("the tag index").to_owned();
    assert_eq!(server.cli(&["ZCARD", &index]).trim(), "50");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cache.set_with_tags("fresh", &1, Duration::from_secs(60), &["site"]).await.unwrap();
    assert_eq!(server.cli(&["ZCARD", &index]).trim(), "1", "only the live entry is left");
    assert_eq!(cache.invalidate_tag("site").await.unwrap(), 1);
    assert_eq!(cache.get::<i32>("fresh").await.unwrap(), None);
}

/// Waits (bounded) until `origin` has seen `n` requests: a fill on its way.
async fn until_hits(origin: &Origin, n: usize) {
    let started = Instant::now();
    while origin.hits() < n {
        assert!(started.elapsed() < Duration::from_secs(5), "the fill never reached the origin");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A purge on one instance while another is filling the key: the fill,
/// which that instance cannot see, fetched its response before the purge;
/// the purge bumped the entry's generation, so the fill does not store it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_on_another_instance_does_not_store_over_a_purge() {
    let server = RedisServer::start();
    let body = |_: &http::request::Parts, n: usize| resp(200, &[("cache-control", "max-age=600")], &format!("v{n}"));
    let (slow, quick) = (Origin::new(body).delay(Duration::from_millis(500)), Origin::new(body));
    let a = CacheLayer::new(redlayer_core::Redis::connect(&server.url()).await.unwrap());
    let app_a = App::new(a.clone(), &quick);
    let app_b = App::new(CacheLayer::new(redlayer_core::Redis::connect(&server.url()).await.unwrap()), &slow);
    let filling = tokio::spawn(async move { app_b.get("/x").await });
    until_hits(&slow, 1).await;
    assert!(!a.purge_uri("http://example.test/x").await.unwrap(), "nothing stored yet");
    assert!(!filling.is_finished(), "the purge came while the fill was on its way");
    assert_eq!(filling.await.unwrap().body, "v1", "the fill answers its own client");
    let after = app_a.get("/x").await;
    assert!(!after.is_hit(), "the pre-purge response was stored after the purge: {}", after.cache_status());
    assert_eq!(after.body, "v1", "from A's own origin");
    assert!(app_a.get("/x").await.is_hit(), "a fill that started after the purge is stored");
}

/// The same for an unsafe request's invalidation, and for a tag purge, made
/// on one instance while another fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_on_another_instance_do_not_store_over_invalidations_and_tag_purges() {
    let server = RedisServer::start();
    let body = |parts: &http::request::Parts, n: usize| match parts.method.as_str() {
        "POST" => resp(200, &[], "changed"),
        _ => resp(200, &[("cache-control", "max-age=600"), ("cache-tag", "all")], &format!("v{n}")),
    };
    let (slow, quick) = (Origin::new(body).delay(Duration::from_millis(500)), Origin::new(body));
    let a = CacheLayer::new(redlayer_core::Redis::connect(&server.url()).await.unwrap());
    let app_a = App::new(a.clone(), &quick);
    let app_b = App::new(CacheLayer::new(redlayer_core::Redis::connect(&server.url()).await.unwrap()), &slow);

    let filling = tokio::spawn({
        let app_b = app_b.clone();
        async move { app_b.get("/posted").await }
    });
    until_hits(&slow, 1).await;
    assert_eq!(app_a.send("POST", "/posted", &[]).await.body, "changed");
    assert!(!filling.is_finished(), "the POST came while the fill was on its way");
    filling.await.unwrap();
    assert!(!app_a.get("/posted").await.is_hit(), "stored over the POST's invalidation");

    // Stored and tagged once (by A); then filled again by B (a request that
    // skips the stored response) while the tag is purged.
    app_a.get("/tagged").await;
    assert!(app_a.get("/tagged").await.is_hit());
    let filling = tokio::spawn({
        let app_b = app_b.clone();
        async move { app_b.send("GET", "/tagged", &[("cache-control", "no-cache")]).await }
    });
    until_hits(&slow, 2).await;
    assert!(a.purge_tag("all").await.unwrap() >= 1);
    assert!(!filling.is_finished(), "the tag purge came while the fill was on its way");
    filling.await.unwrap();
    let after = app_a.get("/tagged").await;
    assert!(!after.is_hit(), "stored over the tag purge: {}", after.cache_status());
}

/// An invalidation that failed (here: made while this instance backs off
/// after a Redis timeout) is tried again a second later, so other instances
/// stop serving the outdated entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_is_tried_again() {
    let server = RedisServer::start();
    let origin = Origin::new(|parts, n| match parts.method.as_str() {
        "POST" => resp(200, &[], "done"),
        _ => resp(200, &[("cache-control", "max-age=600")], &format!("v{n}")),
    });
    let b = App::new(CacheLayer::new(redlayer_core::Redis::connect(&server.url()).await.unwrap()), &origin);
    b.get("/x").await;
    assert!(b.get("/x").await.is_hit());
    let quick =
        redlayer_core::Redis::builder().timeout(Duration::from_millis(50)).connect(&server.url()).await.unwrap();
    let a = App::new(CacheLayer::new(quick), &origin);
    server.pause();
    a.get("/y").await;
    server.resume();
    let post = a.send("POST", "/x", &[]).await;
    assert_eq!(post.status, 200);
    assert!(post.cache_status().contains("invalidation-failed"), "{}", post.cache_status());
    // Tried again 1, 2 and 4 s later.
    let started = Instant::now();
    while b.get("/x").await.is_hit() {
        assert!(started.elapsed() < Duration::from_secs(9), "the other instance still serves the invalidated entry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tag purge whose deletes fail (here: a Redis user not allowed `DEL`)
/// leaves the tag's index as it was, so that the purge tried again (by an
/// operator, or by the layer's second pass) still finds every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tag_purge_keeps_the_index_for_the_next_try() {
    let server = RedisServer::start();
    let cache = redlayer_cache::CacheAside::new(Store::redis(one_connection(&server).await));
    cache.set_with_tags("product-1", &1, Duration::from_secs(60), &["products"]).await.unwrap();
    cache.set_with_tags("product-2", &2, Duration::from_secs(60), &["products"]).await.unwrap();
    assert_eq!(server.cli(&["ACL", "SETUSER", "nodel", "on", "nopass", "~*", "+@all", "-del"]).trim(), "OK");
    let url = format!("redis://nodel:any@127.0.0.1:{}", server.port());
    let refused = Store::redis(redlayer_core::Redis::connect(&url).await.unwrap());
    assert!(refused.purge_tag("products").await.is_err(), "DEL is refused to this user");
    let index = server.cli(&["--scan", "--pattern", "*cachetag*"]).lines().next().expect("the tag index").to_owned();
    let pttl: i64 = server.cli(&["PTTL", &index]).trim().parse().unwrap();
    assert!(pttl > 0, "the index put back keeps an expiry: {pttl}");
    assert_eq!(cache.get::<i32>("product-1").await.unwrap(), Some(1), "nothing was deleted");
    assert_eq!(cache.invalidate_tag("products").await.unwrap(), 2, "the next purge finds both");
    assert_eq!(cache.get::<i32>("product-2").await.unwrap(), None);
}
