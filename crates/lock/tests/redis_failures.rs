//! Behaviour that needs a real Redis to observe: a key lost behind the
//! holder's back, the watchdog's commands, Redis killed and restarted.

use std::time::{Duration, Instant};

use redlayer_lock::{AcquireError, Locks, Retry};
use redlayer_testkit::RedisServer;

const MS: Duration = Duration::from_millis(1);

async fn locks(server: &RedisServer) -> Locks {
    Locks::redis(redlayer_core::Redis::connect(&server.url()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_when_redis_loses_the_key() {
    let server = RedisServer::start();
    let locks = locks(&server).await;
    let guard = locks.try_acquire("job", 3000 * MS).await.unwrap().unwrap();
    guard.start_watchdog(Duration::from_secs(30));
    let lost = guard.lost();
    server.cli(&["DEL", guard.key()]);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), lost).await.expect("lost() fires");
    // The next renewal (every ttl/3, here 1 s) finds the key gone, well before the ttl ends.
    assert!(started.elapsed() < 2000 * MS, "{:?}", started.elapsed());
    assert!(!guard.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_sends_nothing_after_release() {
    let server = RedisServer::start();
    let locks = locks(&server).await;
    // Renewed every 200 ms; the checks below watch for 500 ms, over two renewals.
    let ttl = 600 * MS;
    let guard = locks.try_acquire("job", ttl).await.unwrap().unwrap();
    guard.start_watchdog(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.command_calls("evalsha") < 3 {
        assert!(Instant::now() < deadline, "acquire + renewals: {}", server.command_calls("evalsha"));
        tokio::time::sleep(20 * MS).await;
    }
    guard.release().await.unwrap();
    let after_release = server.command_calls("evalsha");
    tokio::time::sleep(500 * MS).await;
    assert_eq!(server.command_calls("evalsha"), after_release, "renewal stopped");
    // And after a drop, which releases in a spawned task: wait for that
    // release's DEL (an expiry counts no DEL, and the key would outlive the
    // drop by about 600 ms), so the count below starts after it.
    let dels = server.command_calls("del");
    let guard = locks.try_acquire("job", ttl).await.unwrap().unwrap();
    guard.start_watchdog(Duration::from_secs(30));
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.command_calls("del") == dels {
        assert!(Instant::now() < deadline, "drop released: no DEL");
        tokio::time::sleep(10 * MS).await;
    }
    let after_drop = server.command_calls("evalsha");
    tokio::time::sleep(500 * MS).await;
    assert_eq!(server.command_calls("evalsha"), after_drop, "renewal stopped on drop");
    assert_eq!(server.cli(&["EXISTS", "redlayer:lock:{job}"]).trim(), "0", "drop released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_traffic() {
    let mut server = RedisServer::start();
    let locks = locks(&server).await;
    let worker = {
        let locks = locks.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
            let stop = Instant::now() + Duration::from_secs(4);
            while Instant::now() < stop {
                let started = Instant::now();
                match locks.acquire("traffic", 1000 * MS, Retry::new(300 * MS)).await {
                    Ok(g) => {
                        let _ = g.release().await;
                        ok += 1;
                    }
                    Err(AcquireError::TimedOut { .. }) => failed += 1,
                    Err(e) => panic!("unexpected error {e}"),
                }
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(5 * MS).await;
            }
            (ok, failed, slowest)
        })
    };
    tokio::time::sleep(800 * MS).await;
    server.kill();
    tokio::time::sleep(1000 * MS).await;
    server.restart();
    let back = Instant::now();
    // Works again soon after Redis is back.
    loop {
        if let Ok(Some(g)) = locks.try_acquire("after", 1000 * MS).await {
            g.release().await.unwrap();
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(3), "no recovery");
        tokio::time::sleep(20 * MS).await;
    }
    let (ok, failed, slowest) = worker.await.expect("no panic");
    assert!(ok > 10 && failed > 0, "ok {ok} failed {failed}");
    // 300 ms retry budget + one in-flight command bounded by the 500 ms timeout + release.
    assert!(slowest < 2000 * MS, "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_fencing_locks_are_still_exclusive() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let server = RedisServer::start();
    let a = locks(&server).await.fencing(false);
    let b = locks(&server).await.fencing(false);
    let g = a.try_acquire("plain", 5000 * MS).await.unwrap().unwrap();
    assert_eq!(g.fencing_token(), 0);
    assert!(b.try_acquire("plain", 5000 * MS).await.unwrap().is_none());
    assert!(g.extend(5000 * MS).await.unwrap());
    assert!(g.release().await.unwrap());
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..6 {
        let locks = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (inside, overlaps) = (inside.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            let retry = Retry::new(Duration::from_secs(30)).delays(MS, 5 * MS);
            for _ in 0..150 {
                let g = locks.acquire("plain", 10_000 * MS, retry).await.unwrap();
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_under_client_chosen_names_leave_nothing_long_lived() {
    let server = RedisServer::start();
    let locks = locks(&server).await;
    for i in 0..20 {
        let guard = locks.try_acquire(&format!("order-{i}"), 5_000 * MS).await.unwrap().unwrap();
        assert!(guard.release().await.unwrap());
    }
    let keys = server.cli(&["--scan"]);
    assert_eq!(keys.lines().count(), 20, "one fence counter per name: {keys}");
    for key in keys.lines() {
        let pttl: i64 = server.cli(&["PTTL", key]).trim().parse().unwrap();
        let limit = redlayer_lock::DEFAULT_FENCE_RETENTION.as_millis() as i64;
        assert!(pttl > 0 && pttl <= limit, "{key} lives {pttl} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_increasing_when_the_counter_is_lost_behind_or_overwritten() {
    let server = RedisServer::start();
    let locks = locks(&server).await;
    let first = locks.try_acquire("ledger", 5_000 * MS).await.unwrap().unwrap();
    let lock_key = first.key().to_owned();
    let fence_key = format!("{lock_key}:fence");
    let mut last = first.fencing_token();
    // From the Redis clock in µs: far above what INCR alone would give.
    assert!(last > 1_000_000_000_000_000, "{last}");
    first.release().await.unwrap();

    // Lost (a restart without persistence), overwritten, and behind: a new
    // primary that never received the last increments (asynchronous
    // replication) holds the counter as it was before them.
    let behind = (last - 1).to_string();
    for damage in [vec!["DEL", &fence_key], vec!["SET", &fence_key, "7"], vec!["SET", &fence_key, &behind]] {
        server.cli(&damage);
        let guard = locks.try_acquire("ledger", 5_000 * MS).await.unwrap().unwrap();
        assert!(guard.fencing_token() > last, "{damage:?}: {} after {last}", guard.fencing_token());
        last = guard.fencing_token();
        // The counter holds the token, with its retention.
        assert_eq!(server.cli(&["GET", &fence_key]).trim(), last.to_string(), "{damage:?}");
        let pttl: i64 = server.cli(&["PTTL", &fence_key]).trim().parse().unwrap();
        assert!(pttl > 0, "{damage:?}: counter without expiry");
        guard.release().await.unwrap();
        let next = locks.try_acquire("ledger", 5_000 * MS).await.unwrap().unwrap();
        assert!(next.fencing_token() > last, "{damage:?}: then it goes on increasing");
        last = next.fencing_token();
        next.release().await.unwrap();
    }

    // A counter ahead of the clock (the clock went back): counted on by one.
    let ahead = last + 10_000_000_000;
    server.cli(&["SET", &fence_key, &ahead.to_string()]);
    let guard = locks.try_acquire("ledger", 5_000 * MS).await.unwrap().unwrap();
    assert_eq!(guard.fencing_token(), ahead + 1);
    guard.release().await.unwrap();

    // A counter someone overwrote with garbage: an error, and the lock is not left taken.
    server.cli(&["SET", &fence_key, "garbage"]);
    assert!(locks.try_acquire("ledger", 5_000 * MS).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.cli(&["EXISTS", &lock_key]).trim() != "0" {
        assert!(Instant::now() < deadline, "the failed acquisition left the lock taken");
        tokio::time::sleep(10 * MS).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_is_reported_after_the_unavailable_wait_not_the_whole_wait() {
    let mut server = RedisServer::start();
    // A short timeout: an attempt on a Redis that is down may wait all of it.
    let redis = redlayer_core::Redis::builder().timeout(200 * MS).connect_lazy(&server.url()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = redis.ping().await {
        assert!(Instant::now() < deadline, "no connection to a Redis that is up: {e}");
        tokio::time::sleep(10 * MS).await;
    }
    let locks = Locks::redis(redis);
    server.kill();
    // (retry, at least, less than): the default unavailable wait (1 s), then
    // none, both far below the whole 10 s wait. An unavailable wait of 1 s
    // cannot end before 1 s (it counts from the first failure).
    for (retry, at_least, within) in [
        (Retry::new(Duration::from_secs(10)), Duration::from_secs(1), Duration::from_secs(3)),
        (Retry::new(Duration::from_secs(10)).unavailable_wait(Duration::ZERO), Duration::ZERO, Duration::from_secs(1)),
    ] {
        let started = Instant::now();
        match locks.acquire("job", 5_000 * MS, retry).await {
            Err(AcquireError::TimedOut { last_error: Some(e), .. }) => assert!(e.is_unavailable(), "{e}"),
            other => panic!("expected a timeout with the store error, got {other:?}"),
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= at_least && elapsed < within, "{retry:?}: {elapsed:?}");
    }
}

/// An acquisition cancelled while its command is out (a request whose
/// client went away, a timeout around it) may still take the lock in Redis,
/// for a holder that no longer exists: it is released in the background, not
/// left taken by nobody until its ttl. Redis is paused so that the command is
/// surely sent and run, but only after the caller gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_cancelled_mid_command_does_not_keep_the_lock() {
    let server = RedisServer::start();
    for (name, mine) in [("fenced", locks(&server).await), ("plain", locks(&server).await.fencing(false))] {
        server.pause();
        let cancelled = tokio::time::timeout(200 * MS, mine.try_acquire(name, Duration::from_secs(30))).await;
        server.resume();
        assert!(cancelled.is_err(), "{name}: the attempt was cancelled");
        let other = locks(&server).await;
        let started = Instant::now();
        let taken = loop {
            if let Some(guard) = other.try_acquire(name, 5000 * MS).await.unwrap() {
                break guard;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{name}: still held by nobody");
            tokio::time::sleep(20 * MS).await;
        };
        taken.release().await.unwrap();
    }
}

/// A cluster master dies and its replica takes over: a lock held at that
/// moment (its `SET` replicated) is still held, fences go on increasing, and
/// the lock can be taken again once the replica serves the slot, within a
/// bounded time and with no call waiting past its timeouts.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_keeps_held_locks_and_fences_increasing() {
    let mut cluster = redlayer_testkit::RedisCluster::start_with_replicas();
    let timeout = 500 * MS;
    let redis = redlayer_core::Redis::builder().timeout(timeout).connect_cluster(cluster.urls()).await.unwrap();
    let locks = Locks::redis(redis);
    let mut last = 0;
    for _ in 0..20 {
        let guard = locks.try_acquire("ledger", 30_000 * MS).await.unwrap().unwrap();
        assert!(guard.fencing_token() > last);
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
    let held = locks.try_acquire("ledger", 30_000 * MS).await.unwrap().unwrap();
    last = held.fencing_token();
    let key = held.key().to_owned();
    let master = cluster.masters().into_iter().find(|&m| cluster.nodes()[m].cli(&["EXISTS", &key]).trim() == "1");
    let master = master.expect("one master holds the lock key");
    // Wait until the replica has the lock's SET (replication is asynchronous).
    cluster.wait_replicated(master, Duration::from_secs(5));
    cluster.node_mut(master).kill();

    let started = Instant::now();
    let second = loop {
        let attempt = Instant::now();
        match locks.try_acquire("ledger", 30_000 * MS).await {
            // Refused: the promoted replica serves the slot and has the lock.
            Ok(None) => break None,
            Ok(Some(guard)) => break Some(guard),
            Err(_) => assert!(attempt.elapsed() < 4 * timeout, "a failing call took {:?}", attempt.elapsed()),
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no answer {:?} after the kill", started.elapsed());
        tokio::time::sleep(100 * MS).await;
    };
    assert!(second.is_none(), "the lock held across the failover was taken twice");
    println!("the promoted replica answered {:?} after the kill", started.elapsed());
    assert!(held.is_held());
    held.release().await.unwrap();

    let next = locks.try_acquire("ledger", 30_000 * MS).await.unwrap().expect("free after its release");
    assert!(next.fencing_token() > last, "{} after {last}", next.fencing_token());
    next.release().await.unwrap();
}
