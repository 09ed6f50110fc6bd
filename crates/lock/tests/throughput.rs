//! A rough, ignored throughput probe (the real figure belongs to
//! `redlayer-bench`): uncontended acquire + release cycles per second with 32
//! tasks, against the floor of raw `SET NX PX` + `EVALSHA` release on the
//! same handle, interleaved. Run with
//! `cargo test -p redlayer-lock --release --test throughput -- --ignored --nocapture`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_core::Redis;
use redlayer_lock::Locks;

const TASKS: usize = 32;
const ROUND: Duration = Duration::from_millis(1500);

async fn raw_round(redis: &Redis) -> f64 {
    let release = Arc::new(redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    ));
    let count = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (redis, release, count) = (redis.clone(), release.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("raw:{t}");
            while Instant::now() < stop {
                let mut conn = redis.connection().await.unwrap();
                let ok: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg("tok")
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(ok.is_some());
                let _: i64 = release.key(&key).arg("tok").invoke_async(&mut conn).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / ROUND.as_secs_f64()
}

async fn lock_round(locks: &Locks) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (locks, count) = (locks.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("lock-{t}");
            while Instant::now() < stop {
                let guard = locks.try_acquire(&name, Duration::from_secs(10)).await.unwrap().unwrap();
                assert!(guard.release().await.unwrap());
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / ROUND.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load probe, not a test"]
async fn uncontended_cycles_per_second() {
    let server = redlayer_testkit::RedisServer::start();
    let redis = Redis::connect(&server.url()).await.unwrap();
    let locks = Locks::redis(redis.clone());
    let plain = locks.clone().fencing(false);
    let (mut raw, mut ours, mut unfenced) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        raw.push(raw_round(&redis).await);
        ours.push(lock_round(&locks).await);
        unfenced.push(lock_round(&plain).await);
    }
    raw.sort_by(f64::total_cmp);
    ours.sort_by(f64::total_cmp);
    unfenced.sort_by(f64::total_cmp);
    println!(
        "Locks without fencing:           {:.0}/s (median of {unfenced:?}), ratio {:.2}",
        unfenced[1],
        unfenced[1] / raw[1]
    );
    println!("raw SET NX PX + EVALSHA release: {:.0}/s (median of {raw:?})", raw[1]);
    println!("Locks::try_acquire + release:   {:.0}/s (median of {ours:?})", ours[1]);
    println!("ratio: {:.2}", ours[1] / raw[1]);
}
