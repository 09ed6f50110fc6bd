//! Hostile input, as property tests (proptest, bounded case counts): the
//! public parsers that read client input get arbitrary strings; the private
//! ones are driven through the stacked app with arbitrary header bytes. No
//! panic, a clear 4xx or a pass-through, and nothing unbounded reaches Redis
//! (every key on the test server is checked against a length bound).
//!
//! The runners use a fixed seed, so every CI run checks the same cases and a
//! failure reproduces. Longer or other runs: `PROPTEST_CASES=100000
//! PROPTEST_RNG_SEED=<u64> cargo test -p redlayer-tests --release --test hostile`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::Router;
use http::{HeaderValue, Request, StatusCode};
use proptest::{
    prelude::*,
    test_runner::{RngSeed, TestRunner},
};
use redlayer::{
    cache::key::{default_key, normalize, normalized_uri, variant_id, vary_spec},
    ratelimit::{ClientIp, PeerAddr},
};
use redlayer_testkit::RedisServer;
use redlayer_tests::{Backend, Config, Counters, app, request, send};

/// The longest Redis key any layer may write, whatever the client sent.
const MAX_KEY_LEN: usize = 200;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The seed used unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x7265_646c_6179_6572;

fn runner(n: u32) -> TestRunner {
    let config = ProptestConfig::default();
    let rng_seed = match config.rng_seed {
        RngSeed::Random => RngSeed::Fixed(SEED),
        fixed => fixed,
    };
    TestRunner::new(ProptestConfig { cases: cases(n), failure_persistence: None, rng_seed, ..config })
}

/// Arbitrary bytes that `HeaderValue` accepts: anything but controls (tab
/// allowed), so non-UTF-8 (obs-text) included; up to 8 KiB.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..8192),
        "[ -~]{0,300}".prop_map(String::into_bytes),
        "\"[ -~]{0,300}\"".prop_map(String::into_bytes),
    ]
    .prop_map(|v| v.into_iter().map(|b| if (b < 0x20 && b != b'\t') || b == 0x7f { b'%' } else { b }).collect())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn with_header(method: &str, path: &str, name: &str, value: &[u8], body: &str) -> Request<axum::body::Body> {
    let mut req = request(method, path, &[], body);
    req.headers_mut()
        .append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
    req
}

/// Checks every key's length; returns the count of keys per kind (`prefix:kind:...`).
fn assert_keys_bounded(server: &RedisServer) -> std::collections::BTreeMap<String, usize> {
    let keys = server.cli(&["--scan"]);
    let mut n = std::collections::BTreeMap::new();
    for key in keys.lines() {
        let kind = key.split(':').nth(1).unwrap_or("?");
        let kind = if key.ends_with(":fence") { format!("{kind}-fence") } else { kind.to_owned() };
        *n.entry(kind).or_default() += 1;
        assert!(key.len() <= MAX_KEY_LEN, "unbounded key reached Redis ({} bytes): {:.120}", key.len(), key);
    }
    n
}

struct Stack {
    rt: tokio::runtime::Runtime,
    server: RedisServer,
    app: Router,
    counters: Arc<Counters>,
}

fn stack() -> Stack {
    let rt = rt();
    let server = RedisServer::start();
    let counters = Arc::new(Counters::default());
    let redis = rt.block_on(redlayer::Redis::connect(&server.url())).unwrap();
    let app = app(&Backend::Redis(redis), &Config { limit: 1_000_000, ..Config::default() }, counters.clone());
    Stack { rt, server, app, counters }
}

// --- public parsers ---------------------------------------------------------

fn parts_with(headers: &[(&str, &[u8])], peer: Option<SocketAddr>) -> http::request::Parts {
    let mut req = Request::builder().uri("/").body(()).unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
    }
    if let Some(peer) = peer {
        req.extensions_mut().insert(PeerAddr(peer));
    }
    req.into_parts().0
}

#[test]
fn forwarded_headers_never_panic_and_are_not_trusted_by_default() {
    let peer: SocketAddr = "10.1.2.3:4000".parse().unwrap();
    let untrusted = [ClientIp::peer(), ClientIp::x_forwarded_for(), ClientIp::forwarded()];
    let trusted = [
        ClientIp::x_forwarded_for().trusted_hops(1),
        ClientIp::x_forwarded_for().trusted_hops(3),
        ClientIp::forwarded().trusted_hops(2),
        ClientIp::x_forwarded_for().trusted_proxies(["10.0.0.0/8"]),
        ClientIp::forwarded().trusted_proxies(["10.0.0.0/8", "::1/128"]),
    ];
    let ip_list = proptest::collection::vec(any::<IpAddr>().prop_map(|ip| ip.to_string()), 0..6)
        .prop_map(|v| v.join(", ").into_bytes());
    let strategy = (prop_oneof![header_bytes(), ip_list], header_bytes());
    runner(256)
        .run(&strategy, |(xff, fwd)| {
            let parts = parts_with(&[("x-forwarded-for", &xff), ("forwarded", &fwd), ("x-real-ip", &xff)], Some(peer));
            let bare = parts_with(&[], Some(peer));
            for extractor in &untrusted {
                // Spoofing refused: without trusted proxies the headers change nothing.
                prop_assert_eq!(extractor.client_ip(&parts), extractor.client_ip(&bare));
            }
            for extractor in &trusted {
                let _ = extractor.client_ip(&parts); // no panic; any address
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn trusted_proxy_lists_are_parsed_without_panic() {
    runner(256)
        .run(&proptest::collection::vec("[0-9a-fA-F:./ ]{0,50}|\\PC{0,40}", 0..4), |cidrs| {
            let _ = ClientIp::x_forwarded_for().try_trusted_proxies(cidrs.iter().map(String::as_str));
            Ok(())
        })
        .unwrap();
}

#[test]
fn cache_key_and_vary_handling_never_panic() {
    let strategy = ("\\PC{0,20}", "\\PC{0,80}", "\\PC{0,300}", header_bytes(), header_bytes());
    runner(256)
        .run(&strategy, |(scheme, host, pq, vary, other)| {
            let uri = normalize(&scheme, &host, &pq);
            prop_assert!(uri.len() <= 4 * (scheme.len() + host.len() + pq.len()) + 8);
            let mut req = Request::builder().uri("/x?a=%41%zz").body(()).unwrap();
            req.headers_mut().insert(http::header::HOST, HeaderValue::from_bytes(&other).unwrap());
            req.headers_mut().append(http::header::VARY, HeaderValue::from_bytes(&vary).unwrap());
            req.headers_mut().append("accept-language", HeaderValue::from_bytes(&other).unwrap());
            let (parts, ()) = req.into_parts();
            let _ = normalized_uri(&parts);
            let _ = default_key(&parts);
            if let Some(spec) = vary_spec(&parts.headers) {
                let _ = variant_id(&spec, &parts.headers);
            }
            Ok(())
        })
        .unwrap();
}

// --- private parsers, through the stack on a real Redis --------------------------

#[test]
fn garbage_cookies_get_no_session_and_touch_nothing() {
    let s = stack();
    let strategy = (header_bytes(), prop_oneof![Just("id"), Just("ID"), Just("other"), Just("")]);
    runner(256)
        .run(&strategy, |(value, name)| {
            let mut cookie = format!("{name}=").into_bytes();
            cookie.extend_from_slice(&value);
            let reply = s.rt.block_on(send(&s.app, with_header("GET", "/note", "cookie", &cookie, "")));
            // A read of an unknown/garbage session: empty, no new id, no error.
            prop_assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            prop_assert_eq!(reply.body.as_str(), "");
            prop_assert!(reply.session_cookie().is_none());
            // and the session header transport is not in this stack: x-session-id is ignored
            Ok(())
        })
        .unwrap();
    let kinds = assert_keys_bounded(&s.server);
    println!("after garbage cookies: {kinds:?}");
    assert!(!kinds.contains_key("sess") && !kinds.contains_key("sessu"), "garbage cookies created sessions: {kinds:?}");
    // A write with a garbage cookie issues a fresh id (never adopts the client's).
    let reply = s.rt.block_on(send(&s.app, with_header("GET", "/visits", "cookie", b"id=AAAA", "")));
    assert_eq!(reply.body, "1");
    assert_ne!(reply.session_cookie().unwrap(), "id=AAAA");
    assert_keys_bounded(&s.server);
}

#[test]
fn hostile_idempotency_keys_get_400_or_run_once() {
    let s = stack();
    runner(256)
        .run(&header_bytes(), |key| {
            let before = Counters::get(&s.counters.paid);
            let reply = s.rt.block_on(send(&s.app, with_header("POST", "/pay", "idempotency-key", &key, "same body")));
            let ran = Counters::get(&s.counters.paid) - before;
            match reply.status.as_u16() {
                400 => {
                    prop_assert_eq!(ran, 0);
                    prop_assert!(reply.header("content-type").starts_with("application/problem+json"));
                }
                201 => prop_assert!(ran <= 1, "ran {}", ran),
                other => prop_assert!(false, "{} for key {:?}: {}", other, String::from_utf8_lossy(&key), reply.body),
            }
            Ok(())
        })
        .unwrap();
    let n = assert_keys_bounded(&s.server);
    println!("idempotency: keys {n:?}, all <= {MAX_KEY_LEN} bytes");
}

#[test]
fn hostile_rate_limit_keys_and_forwarded_headers_stay_bounded() {
    let s = stack();
    runner(256)
        .run(&(header_bytes(), header_bytes()), |(client, xff)| {
            let mut req = with_header("GET", "/hello", "x-forwarded-for", &xff, "");
            req.headers_mut().insert("x-client", HeaderValue::from_bytes(&client).unwrap());
            let reply = s.rt.block_on(send(&s.app, req));
            prop_assert!(
                reply.status == StatusCode::OK || reply.status == StatusCode::TOO_MANY_REQUESTS,
                "{}",
                reply.status
            );
            Ok(())
        })
        .unwrap();
    let n = assert_keys_bounded(&s.server);
    println!("ratelimit: keys {n:?}, all <= {MAX_KEY_LEN} bytes");
}

#[test]
fn hostile_paths_and_cache_headers_stay_bounded() {
    let s = stack();
    let path = proptest::collection::vec(
        prop_oneof![
            Just("%2F"),
            Just("%41"),
            Just("a"),
            Just("%zz"),
            Just("~"),
            Just("%E2%82%AC"),
            Just("?q=1&"),
            Just("//")
        ],
        0..400,
    )
    .prop_map(|parts| parts.concat());
    runner(128)
        .run(&(path, header_bytes(), header_bytes()), |(path, cc, other)| {
            let mut req = with_header("GET", &format!("/cached/{path}"), "cache-control", &cc, "");
            for name in ["if-none-match", "if-modified-since", "pragma", "accept", "authorization"] {
                if other.len() % 5 != name.len() % 5 {
                    req.headers_mut().insert(name, HeaderValue::from_bytes(&other).unwrap());
                }
            }
            let reply = s.rt.block_on(send(&s.app, req));
            prop_assert!(
                matches!(reply.status.as_u16(), 200 | 304 | 404 | 504),
                "{} for {:?} {:?}: {}",
                reply.status,
                path,
                String::from_utf8_lossy(&cc),
                reply.body
            );
            Ok(())
        })
        .unwrap();
    let n = assert_keys_bounded(&s.server);
    println!("cache: keys {n:?}, all <= {MAX_KEY_LEN} bytes");
}

/// Waits (bounded) until no lock key is left: a cache fill releases its lock
/// (a `{prefix}:lock:{...}` key) only after its entry is stored.
async fn fill_locks_released(conn: &mut redis::aio::MultiplexedConnection, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let locks: Vec<String> = redis::cmd("KEYS").arg("*:lock:*").query_async(conn).await.unwrap();
        if locks.is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn garbage_cache_entries_are_misses() {
    let s = stack();
    let url = s.server.url();
    let conn =
        s.rt.block_on(async { redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap() });
    let first = s.rt.block_on(send(&s.app, request("GET", "/cached/entry", &[], "")));
    assert_eq!(first.body, "entry:1");
    assert!(s.rt.block_on(fill_locks_released(&mut conn.clone(), Duration::from_secs(5))), "first fill never ended");
    let key =
        s.server.cli(&["--scan", "--pattern", "*:cache:*"]).lines().next().expect("the entry is stored").to_owned();
    runner(128)
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |garbage| {
            let mut conn = conn.clone();
            s.rt.block_on(async {
                let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await.unwrap();
                for field in fields.iter().filter(|f| f.as_str() != "uri") {
                    let _: () =
                        redis::cmd("HSET").arg(&key).arg(field).arg(&garbage).query_async(&mut conn).await.unwrap();
                }
            });
            let before = Counters::get(&s.counters.origin);
            let reply = s.rt.block_on(send(&s.app, request("GET", "/cached/entry", &[], "")));
            prop_assert_eq!(reply.status, StatusCode::OK);
            let after = Counters::get(&s.counters.origin);
            prop_assert_eq!(after, before + 1, "a garbage entry must be a miss: {}", reply.header("cache-status"));
            prop_assert_eq!(reply.body, format!("entry:{after}"));
            // That miss stores the entry again in the background and releases
            // its fill lock only once the entry is stored: wait for that, or
            // the store could land on the next case's garbage.
            let filled = s.rt.block_on(fill_locks_released(&mut conn.clone(), Duration::from_secs(5)));
            prop_assert!(filled, "the fill lock of the miss was still held after 5 s");
            Ok(())
        })
        .unwrap();
}

/// Every distinct GET URI that misses takes a cross-instance fill lock; a
/// client requesting random URIs must not leave one long-lived key per request
/// in Redis (the fill locks run without fencing counters).
#[test]
fn distinct_misses_leave_no_long_lived_keys() {
    let s = stack();
    for i in 0..50 {
        let reply = s.rt.block_on(send(&s.app, request("GET", &format!("/note?random={i}"), &[], "")));
        assert_eq!(reply.status, StatusCode::OK);
    }
    let long_lived: Vec<String> = s
        .server
        .cli(&["--scan"])
        .lines()
        .filter(|k| s.server.cli(&["PTTL", k]).trim().parse::<i64>().unwrap_or(-1) > 60_000)
        .map(str::to_owned)
        .collect();
    assert!(
        long_lived.is_empty(),
        "{} keys live > 60 s after 50 uncacheable GETs: {:?}",
        long_lived.len(),
        &long_lived[..3.min(long_lived.len())]
    );
}

#[test]
fn garbage_session_header_ids_are_dropped_before_redis() {
    use axum::routing::get;
    use redlayer::session::{Session, SessionLayer};
    let rt = rt();
    let server = RedisServer::start();
    let redis = rt.block_on(redlayer::Redis::connect(&server.url())).unwrap();
    let app: Router = Router::new()
        .route(
            "/who",
            get(|s: Session| async move {
                s.get::<String>("u").await.map(|u| u.unwrap_or_default()).unwrap_or_else(|e| e.to_string())
            }),
        )
        .layer(SessionLayer::new(redis).header(http::HeaderName::from_static("x-session-id")));
    let calls_before = server.command_calls("evalsha") + server.command_calls("hgetall");
    runner(256)
        .run(&header_bytes(), |id| {
            let reply = rt.block_on(send(&app, with_header("GET", "/who", "x-session-id", &id, "")));
            prop_assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            prop_assert_eq!(reply.body.as_str(), "");
            prop_assert!(reply.header("x-session-id").is_empty(), "a read never issues an id");
            Ok(())
        })
        .unwrap();
    // a well-formed but unknown id may cost one lookup; garbage costs none
    let calls = server.command_calls("evalsha") + server.command_calls("hgetall") - calls_before;
    println!("session header ids: {calls} store lookups for hostile ids");
    assert_eq!(calls, 0, "malformed ids must be dropped before any store call");
    let kinds = assert_keys_bounded(&server);
    assert!(kinds.is_empty(), "hostile session ids created keys: {kinds:?}");
}
