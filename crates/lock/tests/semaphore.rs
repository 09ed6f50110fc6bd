//! The counting semaphore on memory, standalone and cluster: never more than
//! N holders, and a dead holder's permit comes back when its lease ends.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_lock::{Retry, Semaphore};

async fn suite(make: impl Fn(&str) -> Vec<Semaphore>) {
    // Never more than 3 at a time, from several handles.
    let sems = make("pool-3");
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..10 {
        let sem = sems[t % sems.len()].clone();
        let (inside, peak) = (inside.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let retry = Retry::new(Duration::from_secs(30)).delays(Duration::from_millis(1), Duration::from_millis(10));
            for _ in 0..20 {
                let permit = sem.acquire(Duration::from_secs(10), retry).await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(permit.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} holders of 3 permits");
    assert!(peak >= 2, "permits were shared: peak {peak}");

    // Leases: a holder that dies (never releases) gives its permit back when the lease ends.
    let sems = make("lease-2");
    let lease = Duration::from_millis(300);
    let b = sems[1].try_acquire(Duration::from_secs(10)).await.unwrap().unwrap();
    // Taken before the acquisition: the store starts the lease after this.
    let started = Instant::now();
    let a = sems[0].try_acquire(lease).await.unwrap().unwrap();
    assert!(sems[0].try_acquire(Duration::from_secs(10)).await.unwrap().is_none(), "2 of 2 taken");
    std::mem::forget(a); // the holder died
    let c = sems[1].acquire(Duration::from_secs(10), Retry::new(Duration::from_secs(3))).await.unwrap();
    // 5 ms: the store's millisecond clock.
    assert!(started.elapsed() >= lease - Duration::from_millis(5), "{:?}", started.elapsed());
    assert!(b.extend(Duration::from_secs(10)).await.unwrap());
    drop(b); // released in the background
    let d = sems[0].acquire(Duration::from_secs(10), Retry::new(Duration::from_secs(2))).await.unwrap();
    assert!(sems[0].try_acquire(Duration::from_secs(10)).await.unwrap().is_none());
    assert!(c.release().await.unwrap());
    assert!(d.release().await.unwrap());

    // A release tells whether the permit was still held: never for a lease
    // that ended, whatever became of the other holders.
    let sems = make("ended-3");
    let (p1, p2) = (sems[0].try_acquire(Duration::from_millis(20)).await.unwrap().unwrap(), {
        sems[1].try_acquire(Duration::from_millis(20)).await.unwrap().unwrap()
    });
    let p3 = sems[0].try_acquire(Duration::from_secs(10)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!p1.release().await.unwrap(), "p1's lease had ended");
    assert!(!p2.release().await.unwrap(), "p2's lease had ended");
    assert!(p3.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semaphore_memory() {
    suite(|name| {
        let sem = Semaphore::memory(name, if name == "pool-3" || name == "ended-3" { 3 } else { 2 });
        vec![sem.clone(), sem]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semaphore_standalone() {
    let server = redlayer_testkit::RedisServer::start();
    let a = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    let b = redlayer_core::Redis::connect(&server.url()).await.unwrap();
    suite(|name| {
        let n = if name == "pool-3" || name == "ended-3" { 3 } else { 2 };
        vec![Semaphore::redis(a.clone(), name, n), Semaphore::redis(b.clone(), name, n)]
    })
    .await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semaphore_cluster() {
    let cluster = redlayer_testkit::RedisCluster::start();
    let a = redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap();
    let b = redlayer_core::Redis::connect_cluster(cluster.urls()).await.unwrap();
    suite(|name| {
        let n = if name == "pool-3" || name == "ended-3" { 3 } else { 2 };
        vec![Semaphore::redis(a.clone(), name, n), Semaphore::redis(b.clone(), name, n)]
    })
    .await;
}
