//! Soak: many requests with unique keys through the memory-backend stack
//! (rate limit + deny cache, cache + single flight, sessions, idempotency,
//! per-key lock), with short lifetimes, and a check that the process's RSS
//! stays bounded (every in-process structure is bounded by its live entries).
//!
//! Default: 200k requests (debug build, about a minute on 2 cores). The full run:
//! `SOAK_REQUESTS=1000000 cargo test -p redlayer-tests --release --test soak -- --nocapture`.
//! `SOAK_ONLY=n` (0: rate limit + deny cache, 1: cache, 2: sessions,
//! 3: idempotency, 4: per-key lock) sends one kind of request only.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer_tests::{Backend, Config, Counters, app, request, send, unique};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_unique_keys_memory_stays_bounded() {
    let total: usize = std::env::var("SOAK_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    // SOAK_ONLY=0..4 runs one kind of request only (to find which layer grows).
    let only: Option<usize> = std::env::var("SOAK_ONLY").ok().and_then(|v| v.parse().ok());
    let config = Config {
        limit: 1,
        period: Duration::from_millis(50),
        retention: Some(Duration::from_secs(1)),
        work: Duration::ZERO,
        ..Config::default()
    };
    let app = app(&Backend::Memory, &config, Arc::new(Counters::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut rss_start = 0;
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let app = app.clone();
        let done = done.clone();
        let denied = denied.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while done.fetch_add(1, Ordering::Relaxed) < total {
                i += 1;
                let key = unique(&format!("w{w}"));
                let reply = match only.unwrap_or(i % 5) {
                    // two requests of a fresh client: allowed, then denied (deny cache entry)
                    0 => {
                        send(&app, request("GET", "/hello", &[("x-client", &key)], "")).await;
                        send(&app, request("GET", "/hello", &[("x-client", &key)], "")).await
                    }
                    1 => send(&app, request("GET", &format!("/short/{key}"), &[], "")).await,
                    2 => send(&app, request("GET", "/visits", &[], "")).await,
                    3 => send(&app, request("POST", "/pay", &[("idempotency-key", &format!("\"{key}\""))], "x")).await,
                    _ => send(&app, request("POST", &format!("/locked/{key}"), &[], "")).await,
                };
                // A real connection yields on I/O; in process, a hit or a memory
                // backend may never return Pending, and the tasks the layers
                // spawn (cache stores, lock releases) and the timers would starve.
                tokio::task::yield_now().await;
                if reply.status == http::StatusCode::TOO_MANY_REQUESTS {
                    denied.fetch_add(1, Ordering::Relaxed);
                }
                assert!(reply.status.is_success() || reply.status.as_u16() == 429, "{} {}", reply.status, reply.body);
            }
        }));
    }
    // RSS after the first 10% (allocator and maps warmed up), then at the end.
    let mut samples = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = done.load(Ordering::Relaxed);
        if rss_start == 0 && n >= total / 10 {
            rss_start = rss_kib();
        }
        samples.push((n.min(total), rss_kib()));
        if n >= total + workers {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "soak did not finish");
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Let the last entries expire and be swept by later accesses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..1000 {
        send(&app, request("GET", "/hello", &[("x-client", &unique("tail"))], "")).await;
    }
    let rss_end = rss_kib();
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let rss_half = samples.iter().find(|s| s.0 >= total / 2).map_or(rss_start, |s| s.1);
    let curve: Vec<String> =
        samples.iter().step_by((samples.len() / 10).max(1)).map(|(n, r)| format!("{n}:{}MiB", r / 1024)).collect();
    println!("soak RSS curve (requests:RSS): {}", curve.join(" "));
    println!(
        "soak: {total} requests in {:?} ({} denied by the limit); RSS after 10%: {} MiB, max: {} MiB, end: {} MiB",
        started.elapsed(),
        denied.load(Ordering::Relaxed),
        rss_start / 1024,
        rss_max / 1024,
        rss_end / 1024
    );
    assert!(only.is_some() || denied.load(Ordering::Relaxed) > 0, "the deny path was exercised");
    // Bounded = a plateau: the second half adds little, whatever the total.
    assert!(
        rss_end < rss_half + 24 * 1024,
        "RSS kept growing: {} MiB at half, {} MiB at the end",
        rss_half / 1024,
        rss_end / 1024
    );
    assert!(
        rss_end < rss_start + 96 * 1024,
        "RSS grew from {} to {} MiB: an in-process structure is not bounded",
        rss_start / 1024,
        rss_end / 1024
    );
}
