//! The typed cache-aside API: `get_or_insert_tagged(key, ttl, tags, fetch)`
//! (`get_or_insert_with` is the same without tags).
//!
//! ```text
//! cargo run --example cache_aside                                     # in memory
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example cache_aside   # in Redis
//! ```
//!
//! Ten concurrent callers ask for the same user; the slow lookup runs once,
//! the others get its value. Then the value is invalidated by its tag.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlayer::cache::CacheAside;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

async fn load_user(id: u64, calls: &AtomicUsize) -> Result<User, std::io::Error> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await; // a slow database
    Ok(User { id, name: "Ada Lovelace".into() })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => CacheAside::redis(redlayer::Redis::connect(&url).await?),
        _ => CacheAside::memory(),
    };
    cache.invalidate("user:42").await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache.get_or_insert_tagged("user:42", Duration::from_secs(60), &["users"], || load_user(42, &calls)).await
        }));
    }
    for task in tasks {
        let user = task.await??;
        assert_eq!(user.id, 42);
    }
    println!("10 callers, {} lookup(s), {:?}", calls.load(Ordering::SeqCst), started.elapsed());
    let cached: Option<User> = cache.get("user:42").await?;
    println!("cached: {cached:?}");
    println!("invalidated {} value(s) tagged users", cache.invalidate_tag("users").await?);
    let gone: Option<User> = cache.get("user:42").await?;
    println!("after invalidation: {gone:?}");
    Ok(())
}
