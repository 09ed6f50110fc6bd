//! Several workers, each with its own Redis pool (as separate processes would
//! have), share a queue of jobs with the lock helper. Each write to the
//! "storage" carries the lock's fencing token, and the storage refuses a token
//! older than one it has seen: the guard against a holder that paused past its
//! lock's expiry.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example lock_jobs
//! cargo run --example lock_jobs        # in-memory locks (one process)
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use redlayer::lock::{Locks, Retry};

/// Storage that checks fencing tokens, per job.
#[derive(Default)]
struct FencedStorage {
    last_token: Mutex<HashMap<u32, u64>>,
    done: Mutex<Vec<(u32, usize)>>,
}

impl FencedStorage {
    fn write(&self, job: u32, worker: usize, token: u64) -> Result<(), String> {
        let mut last = self.last_token.lock().unwrap();
        let seen = last.entry(job).or_insert(0);
        if token <= *seen {
            return Err(format!("stale fencing token {token} <= {seen}"));
        }
        *seen = token;
        self.done.lock().unwrap().push((job, worker));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let memory = Locks::memory();
    let storage = Arc::new(FencedStorage::default());
    let jobs: Arc<Vec<u32>> = Arc::new((1..=20).collect());

    let mut workers = Vec::new();
    for worker in 0..4 {
        // One pool per worker, as separate processes would have.
        let locks = match &url {
            Some(url) => Locks::redis(redlayer::Redis::connect(url).await?),
            None => memory.clone(),
        };
        let (storage, jobs) = (storage.clone(), jobs.clone());
        workers.push(tokio::spawn(async move {
            for &job in jobs.iter() {
                // Jobs already done are skipped; a busy job is someone else's.
                if storage.done.lock().unwrap().iter().any(|(j, _)| *j == job) {
                    continue;
                }
                let Ok(Some(guard)) = locks.try_acquire(&format!("job-{job}"), Duration::from_secs(2)).await else {
                    continue;
                };
                // Renew while working, never beyond 30 s in total.
                guard.start_watchdog(Duration::from_secs(30));
                if storage.done.lock().unwrap().iter().any(|(j, _)| *j == job) {
                    let _ = guard.release().await;
                    continue;
                }
                let work = tokio::time::sleep(Duration::from_millis(50 + (job as u64 * 7) % 40));
                tokio::select! {
                    () = work => {
                        match storage.write(job, worker, guard.fencing_token()) {
                            Ok(()) => println!("worker {worker}: job {job} done (fencing token {})", guard.fencing_token()),
                            Err(e) => println!("worker {worker}: job {job} refused: {e}"),
                        }
                    }
                    () = guard.lost() => println!("worker {worker}: lost the lock of job {job}; stopped"),
                }
                let _ = guard.release().await;
            }
        }));
    }
    for w in workers {
        w.await?;
    }

    // A bounded wait for a lock, and a scoped critical section.
    let locks = match &url {
        Some(url) => Locks::redis(redlayer::Redis::connect(url).await?),
        None => memory,
    };
    let report =
        locks.with_lock("daily-report", Duration::from_secs(5), async { storage.done.lock().unwrap().len() }).await?;
    let guard = locks.acquire("daily-report", Duration::from_secs(1), Retry::new(Duration::from_secs(1))).await?;
    println!("{report} jobs done, each exactly once; last report lock token {}", guard.fencing_token());
    guard.release().await?;
    Ok(())
}
