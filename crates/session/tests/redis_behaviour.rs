//! What only a real Redis can show: commands counted on the server, what is
//! stored, and Redis going away mid-traffic.

mod common;

use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use common::{Client, Probe, app};
use redlayer_core::Redis;
use redlayer_session::{Key, SessionLayer, Store};
use redlayer_testkit::RedisServer;

const MS: Duration = Duration::from_millis(1);

async fn setup(server: &RedisServer, configure: impl FnOnce(SessionLayer) -> SessionLayer) -> Client {
    // One connection: a second one filled in the background would send its
    // checkout PING inside a window where commands are counted.
    let store = Store::redis(Redis::builder().connections(1).connect(&server.url()).await.unwrap());
    Client::new(app(configure(SessionLayer::new(store)), Probe::default()))
}

/// Commands the server ran during `f`, not counting the `INFO` that measures.
async fn commands_during<F: Future>(server: &RedisServer, f: F) -> (u64, F::Output) {
    let before = server.total_commands();
    let out = f.await;
    let after = server.total_commands();
    (after - before - 1, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_untouched_sessions_cost_no_command_reads_one_writes_only_changes() {
    let server = RedisServer::start();
    let mut c = setup(&server, |l| l.touch_interval(Duration::from_secs(60))).await;
    // Nobody knows us yet, no session touched: nothing sent.
    let (n, _) = commands_during(&server, async {
        for _ in 0..20 {
            assert_eq!(c.clone().call("GET", "/untouched").await.status, StatusCode::OK);
        }
    })
    .await;
    assert_eq!(n, 0, "untouched requests sent commands");
    c.call("POST", "/set/a/1").await;
    // With a live session cookie, still nothing.
    let (n, _) = commands_during(&server, c.clone().call("GET", "/untouched")).await;
    assert_eq!(n, 0);
    // A read: one round trip (HGETALL, with TIME pipelined when the estimate of
    // Redis's clock is due for a reading: at most once a second); no write after.
    let (n, a) = commands_during(&server, c.clone().call("GET", "/get/a")).await;
    assert_eq!(a.body, "1");
    assert_eq!(n, 2, "TIME + HGETALL; no TTL refresh within the touch interval");
    let (times, hgetalls) = (server.command_calls("time"), server.command_calls("hgetall"));
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let (n, a) = commands_during(&server, c.clone().call("GET", "/get/a")).await;
        assert_eq!(a.body, "1");
        assert!(n == 1 || n == 2, "{n} commands for a read");
    }
    assert_eq!(server.command_calls("hgetall") - hgetalls, 10);
    let times = server.command_calls("time") - times;
    assert!(
        times <= started.elapsed().as_secs() + 1,
        "{times} TIME for 10 reads: Redis's clock is read at most every second"
    );
    // A write: one script for the changed field. Within the touch interval
    // it leaves last-seen and the idle expiry as they are.
    let (saves, expires) = (server.command_calls("hset"), server.command_calls("pexpire"));
    let (_, a) = commands_during(&server, c.clone().call("POST", "/set/b/2")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(server.command_calls("hset") - saves, 1, "only the one changed field");
    assert_eq!(server.command_calls("pexpire"), expires, "no EXPIRE within the touch interval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_refresh_is_throttled() {
    let server = RedisServer::start();
    let mut slow = setup(&server, |l| l.touch_interval(Duration::from_secs(60))).await;
    slow.call("POST", "/set/a/1").await;
    let before = server.command_calls("pexpire");
    for _ in 0..10 {
        slow.call("GET", "/get/a").await;
    }
    assert_eq!(server.command_calls("pexpire"), before, "no EXPIRE within the touch interval");
    for i in 0..10 {
        slow.call("POST", &format!("/set/a/{i}")).await;
    }
    assert_eq!(server.command_calls("pexpire"), before, "writes: no EXPIRE within the touch interval either");
    let mut eager = setup(&server, |l| l.touch_interval(Duration::ZERO)).await;
    eager.call("POST", "/set/a/1").await;
    let before = server.command_calls("pexpire");
    for _ in 0..10 {
        eager.call("GET", "/get/a").await;
    }
    assert_eq!(server.command_calls("pexpire") - before, 10);
    for i in 0..10 {
        eager.call("POST", &format!("/set/a/{i}")).await;
    }
    assert_eq!(server.command_calls("pexpire") - before, 20, "each write refreshes past the touch interval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_session_id() {
    let server = RedisServer::start();
    let mut c = setup(&server, |l| l).await;
    c.call("GET", "/visits").await;
    c.login("erin").await;
    let id = c.cookie.clone().unwrap().trim_start_matches("id=").to_owned();
    assert_eq!(id.len(), 64);
    let mut dump = String::new();
    for key in server.cli(&["--scan"]).lines() {
        dump.push_str(key);
        dump.push_str(&server.cli(&["HGETALL", key]));
    }
    assert!(dump.contains("erin"), "{dump}");
    for part in [&id[..], &id[..22], &id[22..44], &id[42..]] {
        assert!(!dump.contains(part), "{part} found in {dump}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_leaves_no_usable_id_in_redis() {
    let server = RedisServer::start();
    let mut c = setup(&server, |l| l.renew_id(Duration::from_secs(2), Duration::from_secs(30))).await;
    c.login("fred").await;
    let old = c.cookie.clone().unwrap().trim_start_matches("id=").to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.call("GET", "/visits").await;
    let new = c.cookie.clone().unwrap().trim_start_matches("id=").to_owned();
    assert_ne!(new, old, "renewed");
    let mut dump = String::new();
    let keys: Vec<String> = server.cli(&["--scan"]).lines().map(str::to_owned).collect();
    for key in &keys {
        dump.push_str(key);
        dump.push_str(&server.cli(&["HGETALL", key]));
    }
    assert!(dump.contains("fred") && dump.contains("m:r"), "the session and the old id's alias: {dump}");
    for id in [&old, &new] {
        for part in [&id[..], &id[..22], &id[22..44], &id[42..]] {
            assert!(!dump.contains(part), "{part} found in {dump}");
        }
    }
    // The alias lives for the grace period only (at most the interval: 2 s).
    let alias = keys.iter().find(|k| server.cli(&["HEXISTS", k, "m:r"]).trim() == "1").expect("the alias");
    let ttl: i64 = server.cli(&["PTTL", alias]).trim().parse().unwrap();
    assert!((1..=2_000).contains(&ttl), "alias ttl {ttl}");

    // "Log out everywhere" that listed the index before the renewal holds the
    // old key: deleting it follows the alias and ends the session.
    let index = keys.iter().find(|k| k.contains(":sessu:")).expect("the user's index");
    let session = keys
        .iter()
        .find(|k| !k.contains(":sessu:") && server.cli(&["HEXISTS", k, "m:c"]).trim() == "1")
        .expect("the session");
    server.cli(&["HDEL", index, session]);
    server.cli(&["HSET", index, alias, "0"]);
    let store = Store::redis(Redis::connect(&server.url()).await.unwrap());
    assert_eq!(store.revoke_all("fred").await.unwrap(), 1, "the renewed session ended");
    assert_eq!(c.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
}

/// An alias whose sealed id does not open to its new key (garbage, or
/// pointing elsewhere) is no session: the id is not adopted, and nothing it
/// names is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_that_does_not_open_is_never_followed() {
    let server = RedisServer::start();
    let mut victim = setup(&server, |l| l).await;
    victim.login("vera").await;
    let mut c = setup(&server, |l| l.renew_id(Duration::from_secs(60), Duration::from_secs(30))).await;
    c.call("GET", "/visits").await;
    let cookie = c.cookie.clone().unwrap();
    let keys: Vec<String> = server.cli(&["--scan", "--pattern", "*:sess:*"]).lines().map(str::to_owned).collect();
    let victim_key = keys.iter().find(|k| server.cli(&["HGET", k, "m:u"]).trim() == "vera").expect("vera's session");
    let own_key = keys.iter().find(|k| *k != victim_key).expect("the visitor's session");
    // The visitor's key turned into an alias that points at vera's session.
    server.cli(&["DEL", own_key]);
    server.cli(&["HSET", own_key, "m:r", victim_key, "m:x", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    let me = c.call("GET", "/me").await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
    let visit = c.call("GET", "/visits").await;
    assert_eq!(visit.body, "1", "a new session");
    assert_ne!(c.cookie.as_deref(), Some(cookie.as_str()), "the id is not adopted");
    assert_eq!(victim.call("GET", "/me").await.body, "vera", "vera's session untouched");
}

/// Times in a session hash written by something else (another program, a
/// hand edit) at the limits of `i64`: an answer, never an overflow (which
/// panics in debug builds and wraps in release ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_times_in_redis_are_answered_not_overflowed() {
    let server = RedisServer::start();
    let mut c = setup(&server, |l| l.renew_id(Duration::from_secs(60), Duration::from_secs(30))).await;
    c.login("gina").await;
    let key = server.cli(&["--scan", "--pattern", "*:sess:*"]).lines().next().expect("gina's session").to_owned();
    let (min, max) = (i64::MIN.to_string(), i64::MAX.to_string());
    for (field, value) in [("m:i", &min), ("m:c", &min), ("m:s", &max), ("m:i", &max), ("m:s", &min)] {
        server.cli(&["HSET", &key, field, value]);
        let me = c.call("GET", "/me").await;
        assert!(me.status == StatusCode::OK || me.status == StatusCode::UNAUTHORIZED, "{field}={value}: {}", me.body);
        let visit = c.call("GET", "/visits").await;
        assert_eq!(visit.status, StatusCode::OK, "{field}={value}: {}", visit.body);
    }
}

/// A login whose user index cannot be written (here: its key holds another
/// type) fails as a whole: it never leaves a session logged in that "log
/// out everywhere" cannot find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_cannot_be_indexed_does_not_log_in() {
    let server = RedisServer::start();
    let mut first = setup(&server, |l| l).await;
    assert_eq!(first.login("ursula").await.status, StatusCode::OK);
    let index = server.cli(&["--scan", "--pattern", "*:sessu:*"]).lines().next().expect("ursula's index").to_owned();
    server.cli(&["DEL", &index]);
    server.cli(&["SET", &index, "not a hash"]);
    let mut second = setup(&server, |l| l).await;
    assert_eq!(second.call("GET", "/visits").await.body, "1");
    let login = second.login("ursula").await;
    assert!(login.status.is_server_error(), "{:?} {}", login.status, login.body);
    let me = second.call("GET", "/me").await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "logged in without an index entry: {}", me.body);
    assert_eq!(second.call("GET", "/visits").await.body, "2", "the session itself goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_forged_cookies_never_reach_redis() {
    let server = RedisServer::start();
    let key = Key::generate();
    let mut signed = setup(&server, |l| l.signed(key.clone())).await;
    signed.login("frank").await;
    assert_eq!(signed.call("GET", "/me").await.body, "frank");
    let good = signed.cookie.clone().unwrap();
    let bare_id = format!("id={}", &good[good.len() - 64..]);
    let plain = setup(&server, |l| l).await;
    let hostile: Vec<HeaderValue> = vec![
        HeaderValue::from_bytes(b"id=\xff\xfe\x80").unwrap(),
        HeaderValue::from_str(&format!("id={}", "A".repeat(7000))).unwrap(),
        HeaderValue::from_str(&format!("id={}", "B".repeat(63))).unwrap(),
        HeaderValue::from_static("id=..%2F..%2F; id={}; id=*"),
        HeaderValue::from_str(&format!("x=1; {}", "id=; ".repeat(500))).unwrap(),
    ];
    let (n, _) = commands_during(&server, async {
        for value in &hostile {
            for app in [&signed.app, &plain.app] {
                let mut c = Client::new(app.clone());
                let mut request = c.request("GET", "/me");
                request.headers_mut().insert(header::COOKIE, value.clone());
                assert_eq!(c.send(request).await.status, StatusCode::UNAUTHORIZED);
            }
        }
        // The id of a real session, unsigned or signed with another key: forged.
        let mut forged = Client::new(signed.app.clone());
        forged.cookie = Some(bare_id.clone());
        assert_eq!(forged.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
        let mut other = Client::new(signed.app.clone());
        other.cookie = Some(good.replace(&good[3..10], "AAAAAAA"));
        assert_eq!(other.call("GET", "/me").await.status, StatusCode::UNAUTHORIZED);
    })
    .await;
    assert_eq!(n, 0, "hostile cookies reached Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_answers_503_within_the_timeout_and_recovers() {
    let mut server = RedisServer::start();
    let redis = Redis::builder().timeout(300 * MS).connect_lazy(&server.url()).unwrap();
    let mut c = Client::new(app(SessionLayer::new(Store::redis(redis)), Probe::default()));
    assert_eq!(c.call("GET", "/visits").await.body, "1");
    let traffic = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut statuses = Vec::new();
            let start = Instant::now();
            while start.elapsed() < 3000 * MS {
                let started = Instant::now();
                let status = c.clone().call("GET", "/visits").await.status;
                worst = worst.max(started.elapsed());
                statuses.push(status);
                tokio::time::sleep(20 * MS).await;
            }
            (worst, statuses)
        })
    };
    tokio::time::sleep(300 * MS).await;
    server.kill();
    // Redis down: reads answer 503, a buffered write that fails replaces the handler's 200 with 503.
    tokio::time::sleep(300 * MS).await;
    let a = c.call("POST", "/set/k/v").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "failed write reported: {}", a.body);
    assert!(a.headers["content-type"].to_str().unwrap().contains("problem+json"));
    assert_eq!(c.call("GET", "/me").await.status, StatusCode::SERVICE_UNAVAILABLE);
    // A gRPC call gets UNAVAILABLE (HTTP 200, trailers-only).
    let mut grpc = c.request("GET", "/me");
    grpc.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let a = c.send(grpc).await;
    assert_eq!((a.status, a.headers.get("grpc-status").map(|v| v.to_str().unwrap())), (StatusCode::OK, Some("14")));
    tokio::time::sleep(500 * MS).await;
    server.restart();
    let back = Instant::now();
    // Data is gone with the restart: the old id is not adopted, a new session starts at 1.
    loop {
        let a = c.call("GET", "/visits").await;
        if a.status == StatusCode::OK {
            assert_eq!(a.body, "1");
            break;
        }
        assert!(back.elapsed() < 3000 * MS, "not recovered: {}", a.status);
        tokio::time::sleep(50 * MS).await;
    }
    let recovered = back.elapsed();
    let (worst, statuses) = traffic.await.unwrap();
    assert!(worst < 1500 * MS, "a request waited {worst:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::SERVICE_UNAVAILABLE));
    assert!(recovered < 1500 * MS, "recovered after {recovered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_index_does_not_keep_growing_with_sessions_that_ended() {
    let server = RedisServer::start();
    let client = setup(&server, |layer| layer).await;
    let drop_sessions = "for _, k in ipairs(redis.call('KEYS', '*:sess:*')) do redis.call('DEL', k) end return 1";
    for _ in 0..300 {
        let mut c = client.clone();
        assert_eq!(c.login("erin").await.status, StatusCode::OK);
        // The session ends without a logout (as by its idle timeout).
        server.cli(&["EVAL", drop_sessions, "0"]);
    }
    let index = server.cli(&["--scan", "--pattern", "*:sessu:*"]);
    let entries: usize = server.cli(&["HLEN", index.trim()]).trim().parse().unwrap();
    assert!(entries < 256, "{entries} index entries for 0 live sessions");
}

/// `cycle_id` (a login) works whatever the session's stored times say: a
/// Redis clock that went back (times written in its future) only matters to
/// periodic renewal, which asks for a minimum age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_works_after_the_redis_clock_went_back() {
    let server = RedisServer::start();
    let mut c = setup(&server, |l| l).await;
    c.call("POST", "/set/a/1").await;
    let key = server.cli(&["--scan", "--pattern", "*:sess:*"]).lines().next().expect("a session key").to_owned();
    let future =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 600_000).to_string();
    server.cli(&["HSET", &key, "m:c", &future, "m:i", &future]);
    assert_eq!(c.login("gus").await.status, StatusCode::OK);
    assert_eq!(c.call("GET", "/me").await.body, "gus");
    assert_eq!(c.call("GET", "/get/a").await.body, "1", "data kept");
}
