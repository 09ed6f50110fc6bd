//! One conformance suite for the lock helper, run unchanged on the in-memory
//! backend, a standalone Redis and a 3-master Redis Cluster.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_lock::{AcquireError, Locks, Retry};

const MS: Duration = Duration::from_millis(1);

/// `handles`: several `Locks` on the same store through separate pools.
async fn suite(handles: Vec<Locks>) {
    exclusive_and_owner_checked(&handles).await;
    fencing_tokens_strictly_increase(&handles).await;
    drop_releases_without_blocking(&handles).await;
    // These mostly wait for ttls to run out, each on its own lock name: side
    // by side, the suite takes as long as the longest of them.
    tokio::join!(
        stale_holder_cannot_release_or_extend(&handles),
        acquire_waits_bounded(&handles),
        watchdog_renews_and_stops_on_release(&handles),
        hold_cap_ends_renewal_and_fires_lost(&handles),
        with_lock_runs_and_releases(&handles),
        endless_durations_mean_no_limit(&handles),
        a_shorter_extension_shortens_the_validity(&handles),
    );
    hostile_names_are_fine(&handles).await;
    no_overlap_under_contention(&handles).await;
}

async fn exclusive_and_owner_checked(h: &[Locks]) {
    let a = h[0].try_acquire("excl", 5000 * MS).await.unwrap().expect("free lock");
    assert!(h[1].try_acquire("excl", 5000 * MS).await.unwrap().is_none(), "second holder");
    assert!(h[0].try_acquire("excl", 5000 * MS).await.unwrap().is_none(), "same handle, second holder");
    assert!(a.is_held());
    assert!(a.release().await.unwrap(), "owner releases");
    let b = h[1].try_acquire("excl", 5000 * MS).await.unwrap().expect("free again");
    assert!(b.release().await.unwrap());
    assert!(h[0].try_acquire("excl", Duration::ZERO).await.is_err(), "zero ttl refused");
}

async fn fencing_tokens_strictly_increase(h: &[Locks]) {
    let mut last = 0;
    for i in 0..50 {
        let g = h[i % h.len()].try_acquire("fence", 5000 * MS).await.unwrap().unwrap();
        assert!(g.fencing_token() > last, "{} after {last}", g.fencing_token());
        last = g.fencing_token();
        if i % 2 == 0 {
            g.release().await.unwrap();
        } else {
            drop(g);
            // the drop releases in the background
            let g = h[0].acquire("fence", 5000 * MS, Retry::new(Duration::from_secs(3))).await.unwrap();
            assert!(g.fencing_token() > last);
            last = g.fencing_token();
            g.release().await.unwrap();
        }
    }
    // Without fencing, no token (the same lock, though: exclusive with the fenced helpers).
    let plain = h[1].clone().fencing(false);
    let g = plain.try_acquire("fence", 5000 * MS).await.unwrap().unwrap();
    assert_eq!(g.fencing_token(), 0);
    assert!(h[0].try_acquire("fence", 5000 * MS).await.unwrap().is_none());
    g.release().await.unwrap();
}

/// `extend` sets the lock's time to live, shorter too: the guard's validity
/// follows, so it does not claim a lock that has run out (and that another
/// holder may have taken).
async fn a_shorter_extension_shortens_the_validity(h: &[Locks]) {
    let a = h[0].try_acquire("shortened", 5000 * MS).await.unwrap().unwrap();
    assert!(a.extend(200 * MS).await.unwrap());
    tokio::time::timeout(Duration::from_secs(2), a.lost()).await.expect("lost() fires when the shorter ttl ends");
    assert!(!a.is_held());
    let deadline = Instant::now() + Duration::from_secs(1);
    while h[1].try_acquire("shortened", 5000 * MS).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the lock ran out with its shorter ttl");
        tokio::time::sleep(10 * MS).await;
    }
}

async fn stale_holder_cannot_release_or_extend(h: &[Locks]) {
    let a = h[0].try_acquire("stale", 150 * MS).await.unwrap().unwrap();
    let lost = a.lost();
    tokio::time::timeout(Duration::from_secs(2), lost).await.expect("lost() fires when the validity ends");
    assert!(!a.is_held());
    // The store's ttl started a little after the local validity did: poll.
    let deadline = Instant::now() + Duration::from_secs(1);
    let b = loop {
        if let Some(b) = h[1].try_acquire("stale", 5000 * MS).await.unwrap() {
            break b;
        }
        assert!(Instant::now() < deadline, "expired lock is free");
        tokio::time::sleep(10 * MS).await;
    };
    assert!(b.fencing_token() > a.fencing_token());
    assert!(!a.extend(5000 * MS).await.unwrap(), "stale holder cannot extend");
    assert!(!a.release().await.unwrap(), "stale holder cannot release");
    assert!(h[0].try_acquire("stale", 5000 * MS).await.unwrap().is_none(), "b still holds it");
    assert!(b.extend(5000 * MS).await.unwrap(), "owner extends");
    assert!(b.release().await.unwrap());
}

async fn drop_releases_without_blocking(h: &[Locks]) {
    let a = h[0].try_acquire("drop", 60_000 * MS).await.unwrap().unwrap();
    let started = Instant::now();
    drop(a);
    assert!(started.elapsed() < 50 * MS, "drop does not block");
    let b = h[1].acquire("drop", 5000 * MS, Retry::new(Duration::from_secs(2))).await.expect("dropped lock is freed");
    b.release().await.unwrap();
}

async fn acquire_waits_bounded(h: &[Locks]) {
    // Long enough that the 100 ms wait below surely ends before it does.
    let ttl = 1000 * MS;
    // Taken before the acquisition: the store starts the ttl after this.
    let started = Instant::now();
    let a = h[0].try_acquire("wait", ttl).await.unwrap().unwrap();
    let waiting = Instant::now();
    match h[1].acquire("wait", 5000 * MS, Retry::new(100 * MS)).await {
        Err(AcquireError::TimedOut { waited, .. }) => assert!(waited < 600 * MS, "{waited:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(waiting.elapsed() < 700 * MS);
    // Without release, the waiter gets it once the ttl ends (5 ms: the store's millisecond clock).
    let b = h[1].acquire("wait", 5000 * MS, Retry::new(Duration::from_secs(3))).await.unwrap();
    assert!(started.elapsed() >= ttl - 5 * MS, "{:?}", started.elapsed());
    assert!(started.elapsed() < ttl + 1600 * MS, "{:?}", started.elapsed());
    assert!(b.fencing_token() > a.fencing_token());
    b.release().await.unwrap();
}

async fn watchdog_renews_and_stops_on_release(h: &[Locks]) {
    // Renewed every 333 ms: one renewal may come 600 ms late without losing it.
    let a = h[0].try_acquire("dog", 1000 * MS).await.unwrap().unwrap();
    a.start_watchdog(Duration::from_secs(30));
    tokio::time::sleep(3000 * MS).await;
    assert!(a.is_held(), "renewed past its ttl");
    assert!(h[1].try_acquire("dog", 300 * MS).await.unwrap().is_none(), "still held after 3 ttls");
    let lost = a.lost();
    assert!(a.release().await.unwrap());
    tokio::time::timeout(100 * MS, lost).await.expect("lost() resolves on release");
    // A new holder that never extends loses its lock on time: the old watchdog is gone.
    let b = h[1].try_acquire("dog", 300 * MS).await.unwrap().unwrap();
    tokio::time::sleep(600 * MS).await;
    let c = h[0].try_acquire("dog", 300 * MS).await.unwrap().expect("b's lock expired: nobody renewed it");
    assert!(!b.release().await.unwrap());
    c.release().await.unwrap();
}

async fn hold_cap_ends_renewal_and_fires_lost(h: &[Locks]) {
    // Taken before the acquisition, which starts the cap.
    let started = Instant::now();
    // Renewed every 333 ms (one renewal may come 600 ms late) up to the 3 s cap.
    let a = h[0].try_acquire("cap", 1000 * MS).await.unwrap().unwrap();
    a.start_watchdog(3000 * MS);
    tokio::time::timeout(Duration::from_secs(10), a.lost()).await.expect("lost() after the cap");
    let held_for = started.elapsed();
    assert!(held_for >= 2500 * MS && held_for < 6000 * MS, "{held_for:?}");
    let b = h[1].acquire("cap", 200 * MS, Retry::new(Duration::from_secs(2))).await.expect("free after the cap");
    b.release().await.unwrap();
}

async fn with_lock_runs_and_releases(h: &[Locks]) {
    let out = h[0].with_lock("with", 300 * MS, async { 7 }).await.unwrap();
    assert_eq!(out, 7);
    h[1].try_acquire("with", 300 * MS).await.unwrap().expect("released after with_lock").release().await.unwrap();
    // Work that outlives the hold cap is cancelled, and told so.
    let capped = h[0].clone().max_hold(400 * MS);
    let started = Instant::now();
    let result = capped.with_lock("with", 200 * MS, tokio::time::sleep(Duration::from_secs(10))).await;
    assert!(matches!(result, Err(AcquireError::Lost)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// `Duration::MAX` ("wait / hold / keep as long as it takes") is no limit,
/// not an overflow: no panic in the retry loop or the watchdog, and the
/// store gets an expiry it accepts.
async fn endless_durations_mean_no_limit(h: &[Locks]) {
    let endless = h[0].clone().retry(Retry::new(Duration::MAX)).max_hold(Duration::MAX).fence_retention(Duration::MAX);
    let forever = endless.try_acquire("endless-ttl", Duration::MAX).await.unwrap().expect("a ttl of Duration::MAX");
    assert!(h[1].try_acquire("endless-ttl", 5000 * MS).await.unwrap().is_none());
    assert!(forever.release().await.unwrap());
    let a = h[1].try_acquire("endless", 300 * MS).await.unwrap().unwrap();
    // Waits as long as it takes: a's ttl ends and the endless retry takes the lock.
    let guard =
        tokio::time::timeout(Duration::from_secs(3), endless.acquire("endless", 300 * MS, Retry::new(Duration::MAX)))
            .await
            .expect("the lock is free once a's ttl ends")
            .unwrap();
    assert!(guard.fencing_token() > a.fencing_token());
    guard.release().await.unwrap();
    // The watchdog renews without a cap: the work outlives its 300 ms ttl.
    let out = endless
        .with_lock("endless", 300 * MS, async {
            tokio::time::sleep(1000 * MS).await;
            h[1].try_acquire("endless", 300 * MS).await.unwrap().is_none()
        })
        .await
        .unwrap();
    assert!(out, "still held after three ttls: renewed without a cap");
}

async fn hostile_names_are_fine(h: &[Locks]) {
    for name in ["", "{a}", "a b*?", &"x".repeat(100_000), "é\u{0}\n"] {
        let g = h[0].try_acquire(name, 5000 * MS).await.unwrap().expect("hostile names lock like any other");
        assert!(g.key().len() < 128, "{}", g.key().len());
        assert!(h[1].try_acquire(name, 5000 * MS).await.unwrap().is_none());
        g.release().await.unwrap();
    }
}

async fn no_overlap_under_contention(h: &[Locks]) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 250;
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let last_fence = Arc::new(AtomicU64::new(0));
    let fence_regressions = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let locks = h[t % h.len()].clone();
        let (inside, overlaps, last_fence, fence_regressions) =
            (inside.clone(), overlaps.clone(), last_fence.clone(), fence_regressions.clone());
        tasks.push(tokio::spawn(async move {
            let retry = Retry::new(Duration::from_secs(30)).delays(MS, 5 * MS);
            for _ in 0..ROUNDS {
                let g = locks.acquire("contended", 10_000 * MS, retry).await.expect("acquire under contention");
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                if last_fence.fetch_max(g.fencing_token(), Ordering::SeqCst) >= g.fencing_token() {
                    fence_regressions.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(g.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t).await.expect("contention run bounded").unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "critical sections overlapped");
    assert_eq!(fence_regressions.load(Ordering::SeqCst), 0, "fencing tokens went back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_memory() {
    let locks = Locks::memory();
    suite(vec![locks.clone(), locks]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_standalone() {
    let server = redlayer_testkit::RedisServer::start();
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(Locks::redis(redlayer_core::Redis::connect(&server.url()).await.unwrap()));
    }
    suite(handles).await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_cluster() {
    let cluster = redlayer_testkit::RedisCluster::start();
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(Locks::redis(redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap()));
    }
    suite(handles).await;
}
