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

/// What the memory store cannot keep whole is refused, never dropped behind a
/// success: an oversized session write fails (the session stays as it was),
/// and a user index that would outgrow its share refuses the login (else the
/// index would vanish and "log out everywhere" would miss live sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_memory_store_cannot_keep_is_refused_not_lost() {
    // 64 KiB: a session may hold 4 KiB (a sixteenth), a user index 1 KiB.
    let store = Store::memory_with_budget(64 * 1024);
    let router = app(SessionLayer::new(store.clone()).secure(false), Probe::default());
    let mut client = Client::new(router.clone());
    assert_eq!(client.call("POST", "/set/a/small").await.status, StatusCode::OK);
    let big = "b".repeat(8 * 1024);
    let refused = client.call("POST", &format!("/set/a/{big}")).await;
    assert!(refused.status.is_server_error(), "{}", refused.status);
    assert_eq!(client.call("GET", "/get/a").await.body, "small", "the session is as it was");

    let mut logged_in = Vec::new();
    let mut refusals = 0;
    for _ in 0..20 {
        let mut c = Client::new(router.clone());
        if c.login("u").await.status == StatusCode::OK {
            logged_in.push(c);
        } else {
            refusals += 1;
        }
    }
    assert!(refusals > 0, "the index never filled: the test does not test");
    assert_eq!(store.sessions_of("u").await.unwrap().len(), logged_in.len(), "every live session is listed");
    assert_eq!(store.revoke_all("u").await.unwrap(), logged_in.len());
    for c in &mut logged_in {
        assert_eq!(
            c.call("GET", "/me").await.status,
            StatusCode::UNAUTHORIZED,
            "a session outlived log-out-everywhere"
        );
    }
}

/// User indexes have a share of the budget of their own: when logins fill
/// it, an index that has to go takes its sessions with it. A session whose
/// index is gone could never be revoked ("log out everywhere" would find
/// nothing and leave it logged in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_index_dropped_for_the_budget_takes_its_sessions_with_it() {
    let store = Store::memory_with_budget(64 * 1024);
    let router = app(SessionLayer::new(store.clone()).secure(false), Probe::default());
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c = Client::new(router.clone());
        assert_eq!(c.login(&format!("u{i}")).await.status, StatusCode::OK);
        clients.push(c);
    }
    let mut indexed = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let user = format!("u{i}");
        let listed = store.sessions_of(&user).await.unwrap().len();
        let live = c.call("GET", "/me").await.status == StatusCode::OK;
        assert_eq!(listed == 1, live, "{user}: listed {listed}, logged in {live}");
        if live {
            indexed += 1;
            assert_eq!(store.revoke_all(&user).await.unwrap(), 1);
            assert_eq!(c.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED, "{user} outlived its revocation");
        }
    }
    assert!(indexed < 200, "no index was dropped: the test does not test");
    assert!(indexed > 20, "only {indexed} users kept");
}
