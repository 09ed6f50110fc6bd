//! Redlock on 3 and 5 independent servers: it succeeds exactly when a
//! majority is reachable (every subset), tolerates killed minorities, and
//! never lets two holders overlap.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_core::Redis;
use redlayer_lock::{Locks, Retry};
use redlayer_testkit::RedisServer;

const TTL: Duration = Duration::from_secs(3);
/// The lock of the contention test (its holders must never overlap, so it
/// must outlast a holder that a loaded machine descheduled for a while).
const SHORT_TTL: Duration = Duration::from_secs(2);
/// Each node gets min(ttl / 10, its handle's timeout) to answer
/// (src/redlock.rs). A node that is up gets 300 ms (200 ms with SHORT_TTL),
/// so that one slow reply on a loaded machine does not count as a dead node
/// (with exactly a quorum up, every node that is up must answer in time).
const UP_TIMEOUT: Duration = Duration::from_millis(300);
/// A node this test paused or killed never answers and can cost each round up
/// to its timeout: its own handles give up after 50 ms, so that the many
/// rounds of these tests stay fast. How soon a down node's "no" comes does
/// not change what a majority decides.
const DOWN_TIMEOUT: Duration = Duration::from_millis(50);

/// One handle per server: connected (and checked) with `UP_TIMEOUT`.
async fn handles(servers: &[RedisServer]) -> Vec<Redis> {
    let mut out = Vec::new();
    for s in servers {
        out.push(Redis::builder().timeout(UP_TIMEOUT).connect(&s.url()).await.unwrap());
    }
    out
}

/// One handle per server with `DOWN_TIMEOUT`, for servers that will be
/// paused or killed while it is used. Connected now, while they are up, as a
/// real client would be (on a loaded machine a ping may need a few tries).
async fn down_handles(servers: &[RedisServer]) -> Vec<Redis> {
    let mut out = Vec::new();
    for s in servers {
        let redis = Redis::builder().timeout(DOWN_TIMEOUT).connect_lazy(&s.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = redis.ping().await {
            assert!(Instant::now() < deadline, "no connection to a server that is up: {e}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.push(redis);
    }
    out
}

/// Per node, its handle from `up` when `is_up(node)`, else from `down`.
fn pick(up: &[Redis], down: &[Redis], is_up: impl Fn(usize) -> bool) -> Vec<Redis> {
    (0..up.len()).map(|i| if is_up(i) { up[i].clone() } else { down[i].clone() }).collect()
}

async fn every_subset(n: usize) {
    let servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start()).collect();
    let (up_a, up_b) = (handles(&servers).await, handles(&servers).await);
    let (down_a, down_b) = (down_handles(&servers).await, down_handles(&servers).await);
    let quorum = n / 2 + 1;
    for up in 0u32..(1 << n) {
        for (i, s) in servers.iter().enumerate() {
            if up & (1 << i) == 0 {
                s.pause();
            }
        }
        let is_up = |i: usize| up & (1 << i) != 0;
        let a = Locks::redlock(pick(&up_a, &down_a, is_up));
        let b = Locks::redlock(pick(&up_b, &down_b, is_up));
        let name = format!("subset-{n}-{up}");
        let reachable = up.count_ones() as usize;
        let started = Instant::now();
        let got = a.try_acquire(&name, TTL).await;
        assert!(started.elapsed() < TTL, "attempt bounded: {:?}", started.elapsed());
        match got {
            Ok(Some(guard)) => {
                assert!(reachable >= quorum, "acquired with only {reachable}/{n} nodes");
                assert!(guard.is_held());
                assert!(b.try_acquire(&name, TTL).await.unwrap().is_none(), "a second holder with {reachable}/{n}");
                assert!(guard.extend(TTL).await.unwrap(), "extend with a majority");
                assert!(guard.release().await.unwrap());
            }
            Ok(None) => panic!("{name}: reported busy although nobody holds it"),
            Err(e) => assert!(reachable < quorum, "{name}: failed with {reachable}/{n} nodes: {e}"),
        }
        for (i, s) in servers.iter().enumerate() {
            if up & (1 << i) == 0 {
                s.resume();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_3_nodes_every_subset() {
    every_subset(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_5_nodes_every_subset() {
    every_subset(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redlock_tolerates_killed_minorities_and_never_overlaps() {
    for (n, kill) in [(3usize, 1usize), (5, 2)] {
        let mut servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start()).collect();
        let mut pools = Vec::new();
        for _ in 0..3 {
            // The nodes about to be killed get short timeouts (see `DOWN_TIMEOUT`).
            pools.push(Locks::redlock(pick(&handles(&servers).await, &down_handles(&servers).await, |i| i >= kill)));
        }
        for s in servers.iter_mut().take(kill) {
            s.kill();
        }
        let inside = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(0u64));
        let mut tasks = Vec::new();
        for t in 0..4 {
            let locks = pools[t % pools.len()].clone();
            let (inside, overlaps, last) = (inside.clone(), overlaps.clone(), last.clone());
            tasks.push(tokio::spawn(async move {
                let retry =
                    Retry::new(Duration::from_secs(30)).delays(Duration::from_millis(1), Duration::from_millis(10));
                for _ in 0..25 {
                    let g = locks.acquire("shared", SHORT_TTL, retry).await.expect("acquire with a minority down");
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    {
                        let mut last = last.lock().unwrap();
                        assert!(g.fencing_token() > *last, "fence went back");
                        *last = g.fencing_token();
                    }
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.unwrap();
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(120), t).await.unwrap().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "{n} nodes, {kill} killed: overlap");
        // One more node down: no majority, a bounded error rather than a hang.
        servers[kill].kill();
        let started = Instant::now();
        assert!(pools[0].try_acquire("shared", TTL).await.is_err(), "no majority");
        assert!(started.elapsed() < TTL);
        // Back: works again.
        for s in servers.iter_mut().take(kill + 1) {
            s.restart();
        }
        let back = Instant::now();
        loop {
            if let Ok(Some(g)) = pools[1].try_acquire("after", TTL).await {
                g.release().await.unwrap();
                break;
            }
            assert!(back.elapsed() < Duration::from_secs(5), "no recovery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each node counts fencing tokens on its own; the token of a majority is the
/// largest of its nodes. A later majority without the node that gave the
/// largest token must still issue a larger one (it used to give the small
/// counters of the other nodes: a token going backwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_fencing_tokens_increase_across_different_majorities() {
    use redlayer_core::KeyPart;
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let nodes = handles(&servers).await;
    let locks = Locks::redlock(nodes.clone());
    let name = "fence-majorities";
    let fence_key = nodes[0].keys().key_with("lock", &KeyPart::client(name), "fence");
    // Node 0's counter runs far ahead (a faster clock, or acquisitions the others missed).
    let ahead = 9_000_000_000_000_000u64;
    servers[0].cli(&["SET", &fence_key, &ahead.to_string()]);
    let first = locks.try_acquire(name, TTL).await.unwrap().expect("free");
    let first_fence = first.fencing_token();
    assert!(first_fence > ahead);
    assert!(first.release().await.unwrap());
    // Node 0 unreachable: the majority is nodes 1 and 2.
    servers[0].pause();
    let second = locks.try_acquire(name, TTL).await.unwrap().expect("a majority is up");
    servers[0].resume();
    assert!(
        second.fencing_token() > first_fence,
        "token went backwards: {} after {first_fence}",
        second.fencing_token()
    );
    assert!(second.release().await.unwrap());
}
