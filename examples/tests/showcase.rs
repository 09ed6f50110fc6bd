//! The showcase server as a user runs it: two processes of the built example
//! on one real Redis (started here), driven over HTTP on loopback.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redlayer_testkit::{RedisCluster, RedisServer};

/// A showcase process, killed when dropped.
struct Showcase {
    child: Child,
    port: u16,
}

impl Drop for Showcase {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/<profile>/examples/showcase`: `cargo test` builds a package's
/// examples before running its tests (unless a `--test` filter leaves them out).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    profile_dir.join("examples").join(format!("showcase{}", std::env::consts::EXE_SUFFIX))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Showcase {
    fn start(redis_url: &str) -> Self {
        let port = free_port();
        let child = Command::new(binary())
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "no showcase binary: `cargo test -p redlayer-examples` builds it (a `--test showcase` filter does not)",
            );
        let showcase = Showcase { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "showcase did not listen on {port}");
            thread::sleep(Duration::from_millis(50));
        }
        showcase
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read");
        Answer::parse(&String::from_utf8_lossy(&raw))
    }
}

/// A chunked body's data: each chunk is its hex size, CRLF, that many bytes, CRLF.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
    out
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete HTTP answer");
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Answer { status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The `id=...` pair of the session cookie this answer sets.
    fn cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        Some(set.split(';').next()?.to_owned())
    }
}

#[test]
fn two_showcase_processes_share_limits_sessions_and_payments() {
    let redis = RedisServer::start();
    let (a, b) = (Showcase::start(&redis.url()), Showcase::start(&redis.url()));
    two_instances_share_state(&a, &b);
}

/// The same on a 3-master Redis Cluster, each process given the URL of a
/// different node (as `REDIS_URL`): each finds the whole cluster.
#[test]
fn two_showcase_processes_share_state_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let (a, b) = (Showcase::start(&urls[0]), Showcase::start(&urls[1]));
    two_instances_share_state(&a, &b);
}

/// The answer came from the cache: `hit` is a member of its `Cache-Status`.
fn is_hit(answer: &Answer) -> bool {
    answer.header("cache-status").unwrap_or_default().split(';').any(|member| member.trim() == "hit")
}

/// The showcase's routes, driven through two processes on one store.
fn two_instances_share_state(a: &Showcase, b: &Showcase) {
    // Rate limit: 5 per minute per client IP, shared by both instances.
    for i in 0..5 {
        let server = if i % 2 == 0 { a } else { b };
        assert_eq!(server.call("GET", "/api/limited", &[], "").status, 200, "request {}", i + 1);
    }
    let sixth = b.call("GET", "/api/limited", &[], "");
    assert_eq!(sixth.status, 429);
    let retry_after: u64 = sixth.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(sixth.header("ratelimit-policy").expect("RateLimit-Policy").contains("q=5"));
    assert!(sixth.header("ratelimit").expect("RateLimit").contains("r=0"));

    // Sessions: a visit counter seen by both instances; login rotates the id.
    let first = a.call("GET", "/visits", &[], "");
    assert_eq!((first.status, first.body.as_str()), (200, "1"));
    let cookie = first.cookie().expect("a session cookie");
    assert_eq!(b.call("GET", "/visits", &[("Cookie", &cookie)], "").body, "2");
    let login = b.call("POST", "/login", &[("Cookie", &cookie)], r#"{"user":"alice"}"#);
    assert_eq!(login.status, 200, "{}", login.body);
    let logged_in = login.cookie().expect("a new id at login");
    assert_ne!(logged_in, cookie);
    let me = a.call("GET", "/me", &[("Cookie", &logged_in)], "");
    assert_eq!(me.status, 200);
    assert!(me.body.contains("\"user\":\"alice\"") && me.body.contains("\"visits\":2"), "{}", me.body);
    assert_eq!(a.call("GET", "/me", &[("Cookie", &cookie)], "").status, 401, "the old id is dead");
    for garbage in ["id=garbage", "id=", &format!("id={}", "A".repeat(64)), &format!("id={}", "x".repeat(10_000))] {
        assert_eq!(b.call("GET", "/me", &[("Cookie", garbage)], "").status, 401, "{:.40}", garbage);
    }
    let everywhere = a.call("POST", "/logout-everywhere", &[("Cookie", &logged_in)], "");
    assert_eq!(everywhere.status, 200, "{}", everywhere.body);
    assert_eq!(b.call("GET", "/me", &[("Cookie", &logged_in)], "").status, 401);

    // Payments: a retry on the other instance replays; another body is 422; no key is 400.
    let key = ("Idempotency-Key", "\"order-1\"");
    let paid = a.call("POST", "/payments", &[key], r#"{"amount":10}"#);
    assert_eq!(paid.status, 201, "{}", paid.body);
    let replay = b.call("POST", "/payments", &[key], r#"{"amount":10}"#);
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, paid.body, "the same payment id");
    assert_eq!(b.call("POST", "/payments", &[key], r#"{"amount":99}"#).status, 422);
    assert_eq!(a.call("POST", "/payments", &[], r#"{"amount":10}"#).status, 400);

    // Cache: a page one instance stored is a hit on the other. (The store
    // completes as the body ends: wait until the first instance hits it.)
    let started = Instant::now();
    let stored = loop {
        let page = a.call("GET", "/cached/time", &[], "");
        assert_eq!(page.status, 200);
        if is_hit(&page) {
            break page;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the page was never stored");
        thread::sleep(Duration::from_millis(50));
    };
    let other = b.call("GET", "/cached/time", &[], "");
    assert!(is_hit(&other), "{:?}", other.header("cache-status"));
    assert_eq!(other.body, stored.body, "the page the first instance stored");
}

/// Redis killed under a running showcase, then back: every route answers
/// within the timeouts while it is gone (the rate limit fails open, the cache
/// steps aside, sessions and payments say 503), and all of them work on Redis
/// again after the restart, without restarting the showcase.
#[test]
fn the_showcase_answers_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    let showcase = Showcase::start(&redis.url());
    let visit = showcase.call("GET", "/visits", &[], "");
    assert_eq!(visit.status, 200);
    let cookie = visit.cookie().expect("a session cookie");
    let key = ("Idempotency-Key", "\"down-1\"");

    let timed = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let started = Instant::now();
        let answer = showcase.call(method, path, headers, body);
        // The handle's timeout is 500 ms (a frozen server); a dead one refuses connections at once.
        assert!(started.elapsed() < Duration::from_secs(3), "{method} {path} took {:?}", started.elapsed());
        answer
    };
    let all_routes_degrade = |what: &str| {
        assert_eq!(timed("GET", "/api/limited", &[], "").status, 200, "{what}: the rate limit fails open");
        let visits = timed("GET", "/visits", &[("Cookie", &cookie)], "").status;
        assert_eq!(visits, 503, "{what}: a session is not silently lost");
        let paid = timed("POST", "/payments", &[key], r#"{"amount":1}"#).status;
        assert_eq!(paid, 503, "{what}: no payment without idempotency");
        let page = timed("GET", "/cached/time", &[], "");
        assert_eq!(page.status, 200, "{what}: the cache steps aside");
        let status = page.header("cache-status").unwrap_or_default().to_owned();
        assert!(status.contains("bypass"), "{what}: {status}");
    };
    // Frozen (SIGSTOP): connections stay open and nothing answers.
    redis.pause();
    all_routes_degrade("frozen");
    redis.resume();
    redis.kill();
    all_routes_degrade("killed");

    redis.restart();
    let started = Instant::now();
    loop {
        let visits = showcase.call("GET", "/visits", &[], "");
        let paid = showcase.call("POST", "/payments", &[key], r#"{"amount":1}"#);
        if visits.status == 200 && paid.status == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {} / {} after the restart",
            visits.status,
            paid.status
        );
        thread::sleep(Duration::from_millis(100));
    }
    let replay = showcase.call("POST", "/payments", &[key], r#"{"amount":1}"#);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    // A fresh Redis (no persistence): the limit starts again, and is enforced.
    let statuses: Vec<u16> = (0..6).map(|_| showcase.call("GET", "/api/limited", &[], "").status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}
