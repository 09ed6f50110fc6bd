//! The session layer against real Redis (standalone and cluster) and memory.
//! One conformance suite runs unchanged on all three backends.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{Client, Probe, app};
use redlayer_core::Redis;
use redlayer_session::{SessionLayer, Store};
use redlayer_testkit::{RedisCluster, RedisServer};

const MS: Duration = Duration::from_millis(1);

fn layer(store: &Store) -> SessionLayer {
    SessionLayer::new(store.clone())
}

fn client(store: &Store) -> Client {
    Client::new(app(layer(store), Probe::default()))
}

/// Every conformance check, on one backend. `stores` are several handles on one backend.
async fn suite(stores: Vec<Store>) {
    let s = &stores;
    tokio::join!(
        idle_timeout_is_rolling_and_enforced(s),
        absolute_timeout_ends_active_sessions(s),
        periodic_renewal_keeps_requests_in_flight_and_ends_the_old_id(s),
        a_login_through_a_renewed_id_kills_every_older_id(s),
        a_shorter_lived_login_does_not_shorten_the_users_index(s),
        async {
            new_visitor_gets_one_and_a_cookie(s).await;
            concurrent_increments_lose_nothing(s).await;
            concurrent_writes_to_different_keys_both_stay(s).await;
            an_abandoned_save_loses_no_change(s).await;
            typed_values_remove_and_clear(s).await;
            unknown_ids_are_never_adopted(s).await;
            login_cycles_the_id_keeps_data_and_kills_the_old_id(s).await;
            destroy_ends_the_session(s).await;
            save_to_a_session_ended_mid_request_is_refused_and_reported(s).await;
            a_request_racing_a_login_does_not_erase_the_new_id(s).await;
            user_index_lists_and_revokes(s).await;
            revoking_the_others_during_a_login_keeps_this_session(s).await;
            another_login_on_a_session_takes_it_out_of_the_previous_users_index(s).await;
            second_instance_sees_the_same_sessions(s).await;
            header_transport(s).await;
        }
    );
}

async fn new_visitor_gets_one_and_a_cookie(s: &[Store]) {
    let mut c = client(&s[0]);
    let a = c.call("GET", "/visits").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "1"));
    let set = a.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("id=") && set.contains("HttpOnly") && set.contains("Secure"), "{set}");
    assert_eq!(c.call("GET", "/visits").await.body, "2");
    // No new cookie when the id did not change.
    assert!(c.call("GET", "/visits").await.headers.get("set-cookie").is_none());
}

async fn concurrent_increments_lose_nothing(s: &[Store]) {
    let mut c = client(&s[0]);
    assert_eq!(c.call("GET", "/visits").await.body, "1");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.call("GET", "/visits").await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(c.call("GET", "/visits").await.body, "34", "32 concurrent increments, none lost");
}

/// (The memory store's save finishes on its first poll: only Redis can fail this.)
async fn an_abandoned_save_loses_no_change(s: &[Store]) {
    for session_exists in [false, true] {
        let mut c = client(&s[0]);
        if session_exists {
            c.call("POST", "/set/a/1").await;
        }
        assert_eq!(c.call("POST", "/set-then-abandon-save/cart/3").await.status, StatusCode::OK);
        assert_eq!(c.call("GET", "/get/cart").await.body, "3", "session existed: {session_exists}");
    }
}

async fn concurrent_writes_to_different_keys_both_stay(s: &[Store]) {
    let probe = Probe::default();
    let mut c = Client::new(app(layer(&s[0]), probe));
    c.call("POST", "/set/base/x").await;
    // Both requests load the session before either writes: a whole-record
    // store would let the second write erase the first.
    let (mut a, mut b) = (c.clone(), c.clone());
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { a.call("POST", "/set-together/a/1").await.status }),
        tokio::spawn(async move { b.call("POST", "/set-together/b/2").await.status }),
    );
    assert_eq!((ra.unwrap(), rb.unwrap()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(c.call("GET", "/get/a").await.body, "1");
    assert_eq!(c.call("GET", "/get/b").await.body, "2");
    assert_eq!(c.call("GET", "/get/base").await.body, "x");
}

async fn typed_values_remove_and_clear(s: &[Store]) {
    let mut c = client(&s[0]);
    c.call("POST", "/set/k1/v1").await;
    c.call("POST", "/set/k2/v2").await;
    assert_eq!(c.call("GET", "/get/k1").await.body, "v1");
    c.call("POST", "/remove/k1").await;
    assert_eq!(c.call("GET", "/get/k1").await.body, "none");
    assert_eq!(c.call("GET", "/get/k2").await.body, "v2");
    // A string is not an integer: increment refuses and writes nothing.
    let a = c.call("GET", "/visits").await;
    assert_eq!(a.body, "1");
    c.call("POST", "/set/visits/abc").await;
    assert_eq!(c.call("GET", "/visits").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.call("GET", "/get/visits").await.body, "abc");
    // A value set in the same request is counted on; a sum past 64 bits is refused.
    assert_eq!(c.call("POST", "/set-and-increment/n/41").await.body, "42");
    let max = format!("/set-and-increment/n/{}", i64::MAX);
    assert_eq!(c.call("POST", &max).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    let before = c.cookie.clone();
    c.call("POST", "/clear").await;
    assert_eq!(c.call("GET", "/get/k2").await.body, "none");
    assert_eq!(c.cookie, before, "clear keeps the session and its id");
}

async fn unknown_ids_are_never_adopted(s: &[Store]) {
    let mut c = client(&s[0]);
    let forged = format!("id={}", "A".repeat(64));
    c.cookie = Some(forged.clone());
    let a = c.call("GET", "/visits").await;
    assert_eq!(a.body, "1");
    assert_ne!(c.cookie.as_deref(), Some(forged.as_str()), "a fresh id was issued");
    c.cookie = Some(forged);
    assert_eq!(c.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
    let a = c.call("GET", "/get/visits").await;
    assert_eq!(a.body, "none");
    assert!(a.headers.get("set-cookie").is_none(), "reads never set or remove ids");
}

async fn login_cycles_the_id_keeps_data_and_kills_the_old_id(s: &[Store]) {
    let mut c = client(&s[0]);
    c.call("GET", "/visits").await;
    c.call("GET", "/visits").await;
    let before = c.cookie.clone().unwrap();
    assert_eq!(c.login("alice").await.status, StatusCode::OK);
    let after = c.cookie.clone().unwrap();
    assert_ne!(before, after, "login issues a new id");
    assert_eq!(c.call("GET", "/me").await.body, "alice");
    assert_eq!(c.call("GET", "/visits").await.body, "3", "data kept across the new id");
    let mut old = client(&s[0]);
    old.cookie = Some(before);
    assert_eq!(old.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED, "old id dead at once");
    old.cookie = Some(c.cookie.clone().unwrap());
    assert_eq!(old.call("GET", "/me").await.body, "alice");
}

async fn destroy_ends_the_session(s: &[Store]) {
    let mut c = client(&s[0]);
    c.login("bob").await;
    let id = c.cookie.clone();
    let a = c.call("POST", "/logout").await;
    assert!(a.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"), "removal cookie");
    assert_eq!(c.cookie, None);
    c.cookie = id;
    assert_eq!(c.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
}

async fn save_to_a_session_ended_mid_request_is_refused_and_reported(s: &[Store]) {
    let probe = Probe::default();
    let mut c = Client::new(app(layer(&s[0]), probe.clone()));
    c.call("POST", "/set/cart/1").await;
    let mut slow = c.clone();
    let task = tokio::spawn(async move { slow.call("POST", "/slow-set/cart/2").await });
    probe.loaded.notified().await;
    let old = c.cookie.clone();
    // The session ends (logged out elsewhere) while the slow request runs.
    assert_eq!(c.call("POST", "/logout").await.status, StatusCode::OK);
    probe.go.notify_one();
    let a = task.await.unwrap();
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "the lost write is reported: {}", a.body);
    assert!(a.body.contains("the session ended during this request"), "{}", a.body);
    assert!(a.headers.get("set-cookie").is_none(), "no new session, and no cookie change");
    // Not resurrected: nothing under the old id, and the write is not anywhere.
    let mut again = client(&s[0]);
    again.cookie = old;
    assert_eq!(again.call("GET", "/get/cart").await.body, "none");
    assert_eq!(again.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
}

async fn a_request_racing_a_login_does_not_erase_the_new_id(s: &[Store]) {
    let probe = Probe::default();
    let mut c = Client::new(app(layer(&s[0]), probe.clone()));
    c.call("POST", "/set/theme/dark").await;
    let before_login = c.cookie.clone();
    // A request with the pre-login id is in flight while the login happens.
    let mut slow = c.clone();
    let racing = tokio::spawn(async move { slow.call("POST", "/slow-set/theme/light").await });
    probe.loaded.notified().await;
    assert_eq!(c.login("gina").await.status, StatusCode::OK);
    probe.go.notify_one();
    let late = racing.await.unwrap();
    // Its write is refused (the old id is dead), but its answer must not
    // remove the cookie: it may reach the browser after the login's.
    assert_eq!(late.status, StatusCode::UNAUTHORIZED);
    assert!(late.headers.get("set-cookie").is_none());
    // A read with the old id after the login changes no cookie either.
    let mut old = c.clone();
    old.cookie = before_login;
    let a = old.call("GET", "/get/theme").await;
    assert_eq!(a.body, "none");
    assert!(a.headers.get("set-cookie").is_none());
    assert_eq!(c.call("GET", "/me").await.body, "gina");
    assert_eq!(c.call("GET", "/get/theme").await.body, "dark");
}

async fn user_index_lists_and_revokes(s: &[Store]) {
    let (mut a, mut b, mut c) = (client(&s[0]), client(&s[0]), client(&s[0]));
    a.login("carol").await;
    b.login("carol").await;
    assert_eq!(a.call("GET", "/sessions").await.body, "2 1");
    let listed = s[0].sessions_of("carol").await.unwrap();
    assert_eq!(listed.len(), 2);
    for info in &listed {
        assert!(info.last_seen >= info.created);
        // No stored reference contains an id.
        for id in [&a.cookie, &b.cookie] {
            assert!(!info.session.as_str().contains(&id.as_ref().unwrap()[3..]));
        }
    }
    // All but the current one.
    assert_eq!(a.call("POST", "/revoke-others").await.body, "1");
    assert_eq!(b.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.call("GET", "/me").await.body, "carol");
    // One, by reference.
    b.login("carol").await;
    let other = s[0].sessions_of("carol").await.unwrap().into_iter().find(|_| true).unwrap();
    assert!(s[0].revoke("carol", &other.session).await.unwrap());
    assert_eq!(s[0].sessions_of("carol").await.unwrap().len(), 1);
    assert!(!s[0].revoke("mallory", &s[0].sessions_of("carol").await.unwrap()[0].session).await.unwrap(), "not hers");
    // Everywhere, from a third session.
    a.login("carol").await;
    c.login("carol").await;
    assert_eq!(c.call("POST", "/logout-everywhere").await.status, StatusCode::OK);
    for client in [&mut a, &mut c] {
        assert_eq!(client.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
    }
    assert!(s[0].sessions_of("carol").await.unwrap().is_empty());
}

/// "Log out my other sessions" while this session's id is cycled (a login,
/// or a renewal, on another instance): this session survives under its new
/// id; the user's other session ends.
async fn revoking_the_others_during_a_login_keeps_this_session(s: &[Store]) {
    let probe = Probe::default();
    let mut c = Client::new(app(layer(&s[0]), probe.clone()));
    c.login("hugo").await;
    let mut other = client(&s[s.len() - 1]);
    other.login("hugo").await;
    let mut slow = c.clone();
    let racing = tokio::spawn(async move { slow.call("POST", "/slow-revoke-others").await });
    probe.loaded.notified().await;
    // This session's id is cycled while the revocation holds the old one.
    assert_eq!(c.login("hugo").await.status, StatusCode::OK);
    probe.go.notify_one();
    let revoked = racing.await.unwrap();
    assert_eq!((revoked.status, revoked.body.as_str()), (StatusCode::OK, "1"));
    assert_eq!(c.call("GET", "/me").await.body, "hugo", "this session was revoked as another one");
    assert_eq!(other.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
}

/// A shared browser: Bob logs in on the session Alice used. Alice can no
/// longer list it, revoke it, or end it with "log out everywhere".
async fn another_login_on_a_session_takes_it_out_of_the_previous_users_index(s: &[Store]) {
    let mut shared = client(&s[0]);
    shared.login("alice-shared").await;
    assert_eq!(s[0].sessions_of("alice-shared").await.unwrap().len(), 1);
    shared.login("bob-shared").await;
    assert_eq!(shared.call("GET", "/me").await.body, "bob-shared");
    assert!(s[0].sessions_of("alice-shared").await.unwrap().is_empty(), "still listed under alice");
    assert_eq!(s[0].sessions_of("bob-shared").await.unwrap().len(), 1);
    let mut alice = client(&s[0]);
    alice.login("alice-shared").await;
    assert_eq!(alice.call("POST", "/logout-everywhere").await.status, StatusCode::OK);
    assert_eq!(shared.call("GET", "/me").await.body, "bob-shared", "alice ended bob's session");
}

/// Two layers on one store with different absolute lifetimes: a login under
/// the shorter one must not shorten the user's index, or "log out
/// everywhere" would miss the longer-lived session once the index expired.
async fn a_shorter_lived_login_does_not_shorten_the_users_index(s: &[Store]) {
    let long = SessionLayer::new(s[0].clone()).absolute_timeout(60_000 * MS);
    let short = SessionLayer::new(s[s.len() - 1].clone()).absolute_timeout(1500 * MS);
    let mut kept = Client::new(app(long.clone(), Probe::default()));
    kept.login("ursula").await;
    let mut brief = Client::new(app(short, Probe::default()));
    brief.login("ursula").await;
    assert_eq!(s[0].sessions_of("ursula").await.unwrap().len(), 2);
    tokio::time::sleep(2000 * MS).await;
    assert_eq!(brief.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED, "past its lifetime");
    assert_eq!(s[0].sessions_of("ursula").await.unwrap().len(), 1, "the longer-lived session is still indexed");
    let mut other = Client::new(app(long, Probe::default()));
    other.login("ursula").await;
    assert_eq!(other.call("POST", "/logout-everywhere").await.status, StatusCode::OK);
    assert_eq!(kept.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED, "logged out everywhere");
}

async fn second_instance_sees_the_same_sessions(s: &[Store]) {
    let mut one = client(&s[0]);
    one.login("dave").await;
    one.call("GET", "/visits").await;
    let mut two = client(&s[s.len() - 1]);
    two.cookie = one.cookie.clone();
    assert_eq!(two.call("GET", "/me").await.body, "dave");
    assert_eq!(two.call("GET", "/visits").await.body, "2");
    // Revocation on one instance holds on the other.
    assert_eq!(two.call("POST", "/logout-everywhere").await.status, StatusCode::OK);
    assert_eq!(one.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
}

async fn header_transport(s: &[Store]) {
    let layer = SessionLayer::new(s[0].clone()).header("x-session-id".parse().unwrap());
    let mut c = Client::new(app(layer, Probe::default()));
    c.header = Some("x-session-id");
    let a = c.call("GET", "/visits").await;
    assert_eq!(a.body, "1");
    assert!(a.headers.get("set-cookie").is_none());
    assert_eq!(c.cookie.as_ref().map(|id| id.len()), Some(64));
    assert_eq!(c.call("GET", "/visits").await.body, "2");
    c.call("POST", "/logout").await;
    assert_eq!(c.cookie, None, "an ended session comes back as an empty header");
}

async fn idle_timeout_is_rolling_and_enforced(s: &[Store]) {
    let layer = SessionLayer::new(s[0].clone()).idle_timeout(3000 * MS).touch_interval(100 * MS);
    let (mut c, mut w) = (Client::new(app(layer.clone(), Probe::default())), Client::new(app(layer, Probe::default())));
    c.call("GET", "/visits").await;
    w.call("GET", "/visits").await;
    for visit in 2..5 {
        // Each read (or write) within the idle timeout keeps the session alive past it.
        tokio::time::sleep(1000 * MS).await;
        assert_ne!(c.call("GET", "/get/visits").await.body, "none", "active session kept");
        assert_eq!(w.call("GET", "/visits").await.body, visit.to_string(), "session kept by writes alone");
    }
    tokio::time::sleep(3600 * MS).await;
    assert_eq!(c.call("GET", "/get/visits").await.body, "none", "idle session ended");
    assert_eq!(w.call("GET", "/get/visits").await.body, "none", "idle session ended");
}

async fn absolute_timeout_ends_active_sessions(s: &[Store]) {
    let layer = SessionLayer::new(s[0].clone())
        .idle_timeout(60_000 * MS)
        .absolute_timeout(2000 * MS)
        .touch_interval(Duration::ZERO);
    let mut c = Client::new(app(layer, Probe::default()));
    let start = Instant::now();
    c.call("GET", "/visits").await;
    let mut ended = None;
    while start.elapsed() < 5000 * MS {
        tokio::time::sleep(250 * MS).await;
        if c.call("GET", "/get/visits").await.body == "none" {
            ended = Some(start.elapsed());
            break;
        }
    }
    let ended = ended.expect("absolute lifetime enforced");
    assert!(ended >= 1900 * MS, "ended too early: {ended:?}");
}

/// The id of a cookie jar (`id=...`).
fn jar(c: &Client) -> String {
    c.cookie.clone().expect("a session cookie")
}

async fn periodic_renewal_keeps_requests_in_flight_and_ends_the_old_id(s: &[Store]) {
    let renewing = |store: &Store| SessionLayer::new(store.clone()).renew_id(1000 * MS, 2000 * MS);
    let probe = Probe::default();
    let mut c = Client::new(app(renewing(&s[0]), probe.clone()));
    c.login("rita").await;
    assert_eq!(c.call("GET", "/visits").await.body, "1");
    let a = c.call("GET", "/visits").await;
    assert_eq!(a.body, "2");
    assert!(a.headers.get("set-cookie").is_none(), "an id younger than the interval is kept");
    let old = jar(&c);
    tokio::time::sleep(1100 * MS).await;

    // A request with the old id is in flight (loaded) while another renews it.
    let mut slow = c.clone();
    let in_flight = tokio::spawn(async move { slow.call("POST", "/slow-set/theme/light").await });
    probe.loaded.notified().await;
    let a = c.call("GET", "/visits").await;
    assert_eq!(a.body, "3");
    let new = jar(&c);
    assert_ne!(new, old, "the first use past the interval renews the id");
    probe.go.notify_one();
    let late = in_flight.await.unwrap();
    assert_eq!(late.status, StatusCode::OK, "a request in flight with the old id keeps its write: {}", late.body);
    assert!(late.headers["set-cookie"].to_str().unwrap().starts_with(&format!("{new};")), "and learns the new id");

    // Within the grace period the old id still finds the session (on any instance), and is told the new id.
    let mut stale = Client::new(app(renewing(&s[1]), Probe::default()));
    stale.cookie = Some(old.clone());
    let a = stale.call("GET", "/get/theme").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "light"));
    assert_eq!(jar(&stale), new);
    assert_eq!(c.call("GET", "/me").await.body, "rita");
    assert_eq!(c.call("GET", "/sessions").await.body, "1 1", "the user's index follows the new id");

    // After it, the old id is dead.
    tokio::time::sleep(2100 * MS).await;
    let mut stale = Client::new(app(renewing(&s[1]), Probe::default()));
    stale.cookie = Some(old);
    let a = stale.call("GET", "/me").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.headers.get("set-cookie").is_none());

    // The id is due again: concurrent requests renew it once, all learn the same new id, lose no increment.
    let before = jar(&c);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let a = c.call("GET", "/visits").await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.body);
                jar(&c)
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one renewal: {ids:?}");
    let renewed = ids.pop_first().unwrap();
    assert_ne!(renewed, before);
    c.cookie = Some(renewed.clone());
    assert_eq!(c.call("GET", "/visits").await.body, "12", "no increment lost");

    // Logging out with the old id within the grace period ends the session itself.
    let mut stale = Client::new(app(renewing(&s[0]), Probe::default()));
    stale.cookie = Some(before);
    assert_eq!(stale.call("POST", "/logout").await.status, StatusCode::OK);
    assert_eq!(stale.cookie, None);
    assert_eq!(c.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED, "the renewed session ended too");
    let mut other = Client::new(app(renewing(&s[1]), Probe::default()));
    other.cookie = Some(renewed);
    assert_eq!(other.call("GET", "/get/visits").await.body, "none");
}

async fn a_login_through_a_renewed_id_kills_every_older_id(s: &[Store]) {
    let renewing = |store: &Store| SessionLayer::new(store.clone()).renew_id(1000 * MS, 1000 * MS);
    let mut c = Client::new(app(renewing(&s[0]), Probe::default()));
    c.login("sam").await;
    assert_eq!(c.call("GET", "/visits").await.body, "1");
    let first = jar(&c);
    tokio::time::sleep(1100 * MS).await;
    assert_eq!(c.call("GET", "/visits").await.body, "2");
    let renewed = jar(&c);
    assert_ne!(renewed, first);
    // A login with the first id, within the grace period (say a tab that missed the new cookie).
    let mut tab = Client::new(app(renewing(&s[1]), Probe::default()));
    tab.cookie = Some(first.clone());
    assert_eq!(tab.login("sam").await.status, StatusCode::OK);
    let cycled = jar(&tab);
    assert!(cycled != first && cycled != renewed);
    assert_eq!(tab.call("GET", "/visits").await.body, "3", "the same session, data kept");
    assert_eq!(tab.call("GET", "/sessions").await.body, "1 1");
    for dead in [first, renewed] {
        let mut old = Client::new(app(renewing(&s[0]), Probe::default()));
        old.cookie = Some(dead);
        assert_eq!(old.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED, "older ids die at login");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let store = Store::memory();
    suite(vec![store.clone(), store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_standalone() {
    let server = RedisServer::start();
    // Two handles (two pools): two instances of an application.
    let one = Store::redis(Redis::connect(&server.url()).await.unwrap());
    let two = Store::redis(Redis::connect(&server.url()).await.unwrap());
    suite(vec![one, two]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    let cluster = RedisCluster::start();
    let one = Store::redis(Redis::connect_cluster(cluster.urls()).await.unwrap());
    let two = Store::redis(Redis::connect_cluster(cluster.urls()).await.unwrap());
    suite(vec![one, two]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_get_grpc_statuses() {
    let probe = Probe::default();
    let layer = SessionLayer::new(Store::memory()).header("x-session-id".parse().unwrap());
    let mut c = Client::new(app(layer, probe.clone()));
    c.header = Some("x-session-id");
    c.call("POST", "/set/cart/1").await;
    let mut slow = c.clone();
    let task = tokio::spawn(async move {
        let mut request = slow.request("POST", "/slow-set/cart/2");
        request.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
        slow.send(request).await
    });
    probe.loaded.notified().await;
    assert_eq!(c.call("POST", "/logout").await.status, StatusCode::OK);
    probe.go.notify_one();
    let a = task.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "gRPC errors travel as HTTP 200");
    assert_eq!(a.headers["grpc-status"], "16", "UNAUTHENTICATED: the session ended, the write was not saved");
    assert!(a.headers.get("x-session-id").is_none(), "no new session");
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_server_error() {
    use tower::ServiceExt;
    let router = axum::Router::new()
        .route("/", axum::routing::get(|_session: redlayer_session::Session| async { "unreachable" }));
    let response =
        router.oneshot(axum::http::Request::get("/").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A shared response cache in front must never serve one user's page to
/// another: a response whose handler used the session varies on the cookie
/// (or the id header), joined to any `Vary` the handler set, never twice.
#[tokio::test]
async fn responses_that_used_the_session_vary_on_its_id() {
    use axum::{Router, http::header::VARY, routing::get};
    use redlayer_session::Session;
    let store = Store::memory();
    let routes = |layer: SessionLayer| {
        Router::new()
            .route("/untouched", get(|| async { "hello" }))
            .route("/read", get(|s: Session| async move { format!("{:?}", s.user().await.ok().flatten()) }))
            .route("/write", get(|s: Session| async move { s.increment("n", 1).await.unwrap().to_string() }))
            .route(
                "/read-with-vary",
                get(|s: Session| async move {
                    let _ = s.user().await;
                    ([(VARY, "Accept-Encoding")], "x")
                }),
            )
            .route(
                "/read-already-varies",
                get(|s: Session| async move {
                    let _ = s.user().await;
                    ([(VARY, "accept-encoding, COOKIE")], "x")
                }),
            )
            .layer(layer)
    };
    let mut c = Client::new(routes(layer(&store)));
    assert!(c.call("GET", "/untouched").await.headers.get(VARY).is_none(), "no session used, no Vary");
    assert_eq!(c.call("GET", "/read").await.headers[VARY], "Cookie", "a read-only use varies too");
    let a = c.call("GET", "/write").await;
    assert_eq!(a.headers.get_all(VARY).iter().collect::<Vec<_>>(), ["Cookie"]);
    assert!(a.headers.get("set-cookie").is_some());
    assert_eq!(c.call("GET", "/read-with-vary").await.headers[VARY], "Accept-Encoding, Cookie");
    let a = c.call("GET", "/read-already-varies").await;
    assert_eq!(a.headers.get_all(VARY).iter().collect::<Vec<_>>(), ["accept-encoding, COOKIE"]);

    let mut h = Client::new(routes(layer(&store).header("x-session-id".parse().unwrap())));
    h.header = Some("x-session-id");
    assert_eq!(h.call("GET", "/write").await.headers[VARY], "x-session-id");
    assert_eq!(h.call("GET", "/read").await.headers[VARY], "x-session-id");
    assert!(h.call("GET", "/untouched").await.headers.get(VARY).is_none());
}
