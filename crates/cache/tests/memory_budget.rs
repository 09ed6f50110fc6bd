//! The memory store holds at most its byte budget, whatever clients ask for.

mod support;

use redlayer_cache::{CacheLayer, Store};
use support::{App, Origin, resp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_uris_stays_within_the_memory_budget() {
    const BUDGET: usize = 256 * 1024;
    let store = Store::memory_with_budget(BUDGET);
    let body = "x".repeat(4_000);
    let origin = Origin::new(move |_, _| resp(200, &[("cache-control", "max-age=3600"), ("cache-tag", "all")], &body));
    let app = App::new(CacheLayer::with_store(store.clone()), &origin);
    for i in 0..300 {
        let uri = format!("/flood?n={i}");
        assert_eq!(app.get(&uri).await.status, 200);
        // The newest entries are the ones kept: a repeat is a hit.
        if i % 50 == 49 {
            assert!(app.get(&uri).await.is_hit(), "{uri} was not kept");
        }
    }
    let used = store.memory_used().unwrap();
    assert!(used <= BUDGET + BUDGET / 4, "{used} bytes held for a budget of {BUDGET}");
    assert!(used > BUDGET / 4, "{used} bytes: the budget was not used");
}

/// A tag's index has a share of the budget: past it, the members closest to
/// expiry make room and their entries go too. Whatever stays cached is in
/// its tag's index, so a purge of the tag leaves no hit behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_reaches_every_entry_however_many_the_tag_has() {
    // A tag's index may hold about 64 members here (16 parts of 512 bytes);
    // entries have room for more.
    let store = Store::memory_with_budget(64 * 1024);
    let origin = Origin::new(|_, _| resp(200, &[("cache-control", "max-age=3600"), ("cache-tag", "all, page")], "x"));
    let app = App::new(CacheLayer::with_store(store.clone()), &origin);
    for i in 0..100 {
        let uri = format!("/tagged?n={i}");
        assert_eq!(app.get(&uri).await.status, 200);
        assert!(app.get(&uri).await.is_hit(), "{uri} was not kept");
    }
    let purged = store.purge_tag("all").await.unwrap();
    assert!(purged >= 10, "only {purged} entries purged");
    for i in 0..100 {
        let uri = format!("/tagged?n={i}");
        assert!(!app.get(&uri).await.is_hit(), "{uri} outlived the purge of its tag");
    }
}

/// A value the store cannot keep (larger than the budget) is still fetched
/// once for the callers that wait for the same key together: the fetching
/// caller hands it to them, instead of each fetching again in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_one_key_share_a_value_too_large_to_store() {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };
    let cache = redlayer_cache::CacheAside::new(Store::memory_with_budget(64 * 1024));
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..10 {
        let (cache, fetches) = (cache.clone(), fetches.clone());
        callers.push(tokio::spawn(async move {
            cache
                .get_or_insert_with("big", Duration::from_secs(60), || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    // Long enough for every caller to queue behind this fetch.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok::<_, std::io::Error>("x".repeat(200_000))
                })
                .await
                .unwrap()
        }));
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap().len(), 200_000);
    }
    assert_eq!(cache.get::<String>("big").await.unwrap(), None, "too large to keep");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}
