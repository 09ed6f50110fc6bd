//! redlayer-core against a real standalone redis-server.

use std::time::{Duration, Instant};

use redlayer_core::{Error, KeyPart, Redis};
use redlayer_testkit::RedisServer;

static MOVE_TOKEN: &str = include_str!("scripts/move_token.lua");

async fn incr(redis: &Redis, key: &str) -> Result<i64, Error> {
    let mut conn = redis.connection().await?;
    Ok(redis::cmd("INCR").arg(key).query_async(&mut conn).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_runs_with_evalsha_and_survives_script_flush() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let id = KeyPart::client("user-7");
    let (from, to) = (redis.keys().key_with("demo", &id, "from"), redis.keys().key_with("demo", &id, "to"));
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("SET").arg(&from).arg(2).query_async(&mut conn).await.unwrap();
    let script = redis::Script::new(MOVE_TOKEN);
    let moved: i64 = script.key(&from).key(&to).invoke_async(&mut conn).await.unwrap();
    assert_eq!(moved, 1);
    // The server forgets every script (as after a restart or failover): EVALSHA gets
    // NOSCRIPT and the script is loaded again transparently.
    server.cli(&["SCRIPT", "FLUSH"]);
    let moved: i64 = script.key(&from).key(&to).invoke_async(&mut conn).await.unwrap();
    assert_eq!(moved, 2);
    let refused: i64 = script.key(&from).key(&to).invoke_async(&mut conn).await.unwrap();
    assert_eq!(refused, -1);
    assert!(server.command_calls("evalsha") >= 3, "scripts run by SHA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wraps_an_application_pool() {
    let server = RedisServer::start();
    let manager = bb8_redis::RedisConnectionManager::new(server.url()).unwrap();
    let pool = bb8::Pool::builder().max_size(4).build(manager).await.unwrap();
    let redis = Redis::from_pool(pool.clone());
    assert_eq!(incr(&redis, "shared").await.unwrap(), 1);
    let mut own = pool.get().await.unwrap();
    let seen: i64 = redis::cmd("GET").arg("shared").query_async(&mut *own).await.unwrap();
    assert_eq!(seen, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_commands_share_few_connections() {
    let server = RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move { incr(&redis, "n").await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(incr(&redis, "n").await.unwrap(), 201);
    let clients = server.cli(&["CLIENT", "LIST"]).lines().count();
    assert!(clients <= 1 + redlayer_core::DEFAULT_CONNECTIONS, "{clients} connections open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_within_a_second_after_a_restart_and_never_hangs_meanwhile() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let redis = Redis::builder().timeout(timeout).connect(&server.url()).await.unwrap();
    assert_eq!(incr(&redis, "k").await.unwrap(), 1);

    server.kill();
    let mut fast = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let result = incr(&redis, "k").await;
        assert!(result.is_err(), "redis is down");
        assert!(result.unwrap_err().is_unavailable());
        assert!(started.elapsed() < timeout + Duration::from_millis(200), "waited {:?}", started.elapsed());
        fast += usize::from(started.elapsed() < timeout / 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once its connections are gone, a refused connection is an error at once,
    // not at the timeout (the first calls find the dead connections).
    assert!(fast >= 10, "only {fast} of 20 calls failed fast while Redis was down");

    server.restart();
    let back = Instant::now();
    let recovered = loop {
        if incr(&redis, "k").await.is_ok() {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(5), "no recovery after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("recovered {recovered:?} after redis came back");
    assert!(recovered < Duration::from_secs(1), "recovery took {recovered:?}");
    // Every slot works again, not only the first.
    for _ in 0..10 {
        incr(&redis, "k").await.unwrap();
    }
}

/// Each call to a paused Redis ends at the handle's timeout: not later, and
/// not earlier either when it is longer than redis-rs's own default (500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_gives_timeouts_within_the_limit() {
    for (timeout, calls) in [(Duration::from_millis(250), 6), (Duration::from_millis(1200), 1)] {
        let server = RedisServer::start();
        let redis = Redis::builder().timeout(timeout).connect(&server.url()).await.unwrap();
        incr(&redis, "k").await.unwrap();

        server.pause();
        for _ in 0..calls {
            let started = Instant::now();
            let err = incr(&redis, "k").await.unwrap_err();
            let took = started.elapsed();
            assert!(err.is_unavailable(), "{err}");
            assert!(took >= timeout - Duration::from_millis(20), "gave up early: {took:?}");
            assert!(took < timeout + Duration::from_millis(200), "took {took:?}");
        }
        server.resume();
        let back = Instant::now();
        while incr(&redis, "k").await.is_err() {
            assert!(back.elapsed() < Duration::from_secs(2), "no recovery after SIGCONT");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reports_a_redis_that_is_not_there_and_lazy_does_not() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let started = Instant::now();
    assert!(Redis::connect(&url).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    let lazy = Redis::builder().connect_lazy(&url).unwrap();
    assert!(lazy.ping().await.is_err());
    assert!(matches!(Redis::connect("not a url").await, Err(Error::InvalidInput(_))));
}

/// A primary turned replica (a failover moved the primary elsewhere) answers
/// writes with `READONLY`: "not now", which failure policies cover, not a
/// hard error; and the connection is dropped, so that a new one finds the
/// primary once the address points to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_turned_replica_is_unavailable_not_a_hard_error() {
    let (server, primary) = (RedisServer::start(), RedisServer::start());
    let redis = Redis::connect(&server.url()).await.unwrap();
    assert_eq!(incr(&redis, "n").await.unwrap(), 1);
    server.cli(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()]);
    let refused = incr(&redis, "n").await.expect_err("a replica refuses writes");
    assert!(refused.is_unavailable(), "{refused}");
    server.cli(&["REPLICAOF", "NO", "ONE"]);
    // Promoted again: writes go through (on a new connection).
    let deadline = Instant::now() + Duration::from_secs(5);
    while incr(&redis, "m").await.is_err() {
        assert!(Instant::now() < deadline, "writes never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `connect` fails while Redis is down; `connect_or_lazy` starts anyway and
/// works once Redis is there, without a restart of the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_or_lazy_starts_while_redis_is_down() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let builder = Redis::builder().timeout(Duration::from_millis(300));
    let err = builder.clone().connect(&url).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let redis = builder.clone().connect_or_lazy(&url).await.expect("a lazy handle while Redis is down");
    assert!(incr(&redis, "lazy").await.unwrap_err().is_unavailable());
    server.restart();
    let started = Instant::now();
    while incr(&redis, "lazy").await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(5), "no answer 5 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A bad URL is not "unavailable": an error, not a lazy handle.
    assert!(builder.connect_or_lazy("not a url").await.is_err());
}

/// A refused password is a configuration error, not Redis being away (which
/// failure policies such as fail-open would hide): `connect` reports it as
/// such, and `connect_or_lazy` does not start on it. A reply of another type
/// than asked for is a decoding error, and the connection stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_a_foreign_value_is_an_error_not_unavailable() {
    let server = RedisServer::start();
    server.cli(&["SET", "text", "not a number"]);
    server.cli(&["CONFIG", "SET", "requirepass", "right"]);
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}/", server.port());
    let refused = Redis::connect(&url("wrong")).await.expect_err("a wrong password");
    assert!(!refused.is_unavailable(), "{refused}");
    assert!(Redis::builder().connect_or_lazy(&url("wrong")).await.is_err(), "started lazily on a wrong password");
    let redis = Redis::connect(&url("right")).await.unwrap();
    let mut conn = redis.connection().await.unwrap();
    let foreign = redis::cmd("GET").arg("text").query_async::<i64>(&mut conn).await.map_err(Error::from);
    assert!(matches!(foreign, Err(Error::Decode(_))), "{foreign:?}");
    assert_eq!(incr(&redis, "n").await.unwrap(), 1);
}
