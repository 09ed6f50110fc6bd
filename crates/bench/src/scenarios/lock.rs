//! redlayer-lock: uncontended acquire + release cycles per second from 32
//! tasks in this process (no HTTP), against the same two commands sent raw.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::aio::MultiplexedConnection;
use redlayer::lock::Locks;

/// Concurrent tasks, each cycling on its own lock name.
pub const TASKS: usize = 32;
/// The baseline of the lock table.
pub const RAW: &str = "raw SET NX PX + EVALSHA release, redlayer handle (floor)";
/// The same on one shared connection (the floor).
pub const RAW_SHARED: &str = "raw SET NX PX + EVALSHA release, one shared connection";

const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// How a cycle is run.
#[derive(Clone)]
enum Mode {
    RawHandle(redlayer::Redis),
    RawShared(MultiplexedConnection),
    Locks(Locks),
    #[cfg(feature = "peers")]
    Rslock(Arc<rslock::LockManager>),
}

pub struct LockScenario {
    pub name: &'static str,
    pub about: &'static str,
    mode: Mode,
}

pub async fn start(redis_url: &str, handle: &redlayer::Redis) -> Vec<LockScenario> {
    let shared =
        redis::Client::open(redis_url).expect("client").get_multiplexed_async_connection().await.expect("conn");
    let locks = Locks::redis(handle.clone());
    vec![
        LockScenario {
            name: RAW,
            about: "`SET key token NX PX 10000`, then an owner-checked `DEL` script by EVALSHA, through \
                    `redlayer::Redis::connection()`: the two commands any lock needs",
            mode: Mode::RawHandle(handle.clone()),
        },
        LockScenario {
            name: RAW_SHARED,
            about: "the same two commands on one shared redis-rs `MultiplexedConnection`, no pool",
            mode: Mode::RawShared(shared),
        },
        LockScenario {
            name: "Locks::try_acquire + release (fencing on)",
            about: "`Locks::redis(handle)` defaults: `try_acquire(name, 10 s)` (the acquire script: `SET NX PX`, \
                    then the fencing token, the counter plus one or the Redis clock in µs, whichever is larger, \
                    kept in the counter) then `guard.release()`",
            mode: Mode::Locks(locks.clone()),
        },
        LockScenario {
            name: "Locks::try_acquire + release (fencing off)",
            about: "the same with `.fencing(false)`",
            mode: Mode::Locks(locks.fencing(false)),
        },
        #[cfg(feature = "peers")]
        LockScenario {
            name: "rslock 0.10: lock + unlock",
            about: "rslock's `LockManager` on the same server (one node): `lock(name, 10 s)` then `unlock`",
            mode: Mode::Rslock(Arc::new(rslock::LockManager::new(vec![redis_url]))),
        },
    ]
}

impl LockScenario {
    /// Cycles per second over `duration`, `TASKS` tasks at once, and the
    /// number of cycles made.
    pub async fn run(&self, duration: Duration) -> (f64, u64) {
        let release = Arc::new(redis::Script::new(RELEASE));
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let stop = start + duration;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (mode, release, count) = (self.mode.clone(), release.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("bench-lock-{t}");
                while Instant::now() < stop {
                    cycle(&mode, &name, &release).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.expect("lock task");
        }
        let made = count.load(Ordering::Relaxed);
        (made as f64 / start.elapsed().as_secs_f64(), made)
    }
}

async fn cycle(mode: &Mode, name: &str, release: &redis::Script) {
    match mode {
        Mode::RawHandle(redis) => {
            let mut conn = redis.connection().await.expect("connection");
            raw_cycle(&mut conn, name, release).await;
        }
        Mode::RawShared(conn) => raw_cycle(&mut conn.clone(), name, release).await,
        Mode::Locks(locks) => {
            let guard = locks.try_acquire(name, Duration::from_secs(10)).await.expect("try_acquire");
            let guard = guard.unwrap_or_else(|| panic!("uncontended lock {name} was held"));
            assert!(guard.release().await.expect("release"), "release of {name} found it gone");
        }
        #[cfg(feature = "peers")]
        Mode::Rslock(manager) => {
            let lock = manager.lock(name, Duration::from_secs(10)).await.expect("rslock lock");
            manager.unlock(&lock).await;
        }
    }
}

async fn raw_cycle(conn: &mut impl redis::aio::ConnectionLike, name: &str, release: &redis::Script) {
    let key = format!("bench:rawlock:{name}");
    let ok: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("token")
        .arg("NX")
        .arg("PX")
        .arg(10_000)
        .query_async(conn)
        .await
        .expect("SET NX PX");
    assert!(ok.is_some(), "uncontended raw lock {key} was held");
    let released: i64 = release.key(&key).arg("token").invoke_async(conn).await.expect("release script");
    assert_eq!(released, 1, "raw release of {key}");
}
