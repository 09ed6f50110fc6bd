//! The memory store holds at most its byte budget, however many sessions
//! clients start.

mod common;

use axum::http::StatusCode;
use common::{Client, Probe, app};
use redlayer_session::{SessionLayer, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_sessions_stays_within_the_memory_budget() {
    const BUDGET: usize = 128 * 1024;
    let store = Store::memory_with_budget(BUDGET);
    let router = app(SessionLayer::new(store.clone()).secure(false), Probe::default());
    let value = "v".repeat(200);
    let mut newest = Vec::new();
    for i in 0..2_000 {
        // Each client starts a session of its own.
        let mut client = Client::new(router.clone());
        assert_eq!(client.call("POST", &format!("/set/a/{value}")).await.status, StatusCode::OK);
        if i % 500 == 499 {
            // The session just written is there.
            assert_eq!(client.call("GET", "/get/a").await.body, value, "session {i} was not kept");
        }
        if i >= 1_995 {
            newest.push(client);
        }
    }
    let used = store.memory_used().unwrap();
    assert!(used <= BUDGET + BUDGET / 4, "{used} bytes held for a budget of {BUDGET}");
    assert!(used > BUDGET / 4, "{used} bytes: the budget was not used");
    // Old sessions went (those closest to their idle expiry first): the
    // newest are all kept.
    let mut kept = 0;
    for client in &mut newest {
        kept += usize::from(client.call("GET", "/get/a").await.body == value);
    }
    assert_eq!(kept, 5, "only {kept} of the 5 newest sessions kept");
}
