//! One conformance suite, run unchanged against memory, standalone Redis and
//! a 3-master Redis Cluster.

mod support;

use std::time::Duration;

use support::{App, Backend, Got, Origin, resp};

/// Checks `check` every 20 ms until it holds or `within` has passed; true
/// when it held. For background work (stores, refreshes, markers) whose end a
/// test cannot await: the outcome is polled, then counts are asserted exactly.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fresh_responses_are_hits_with_age_and_cache_status(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    let app = App::new(b.layer(), &origin);
    let first = app.get("/a").await;
    assert_eq!(first.body, "v1");
    assert!(first.cache_status().contains("fwd=uri-miss"), "{}", first.cache_status());
    assert!(first.cache_status().contains("stored"));
    let second = app.get("/a").await;
    assert_eq!(second.body, "v1");
    assert!(second.is_hit(), "{}", second.cache_status());
    assert!(second.headers.contains_key("age"));
    assert!(second.headers.contains_key("date"));
    assert_eq!(origin.hits(), 1);
    // Another URI is another entry.
    assert_eq!(app.get("/a?x=1").await.body, "v2");
}

async fn age_counts_upstream_age_and_expires_entries(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=2"), ("age", "1")], &format!("v{n}")));
    let app = App::new(b.layer(), &origin);
    app.get("/age").await;
    let hit = app.get("/age").await;
    assert!(hit.is_hit());
    let age: u64 = hit.header("age").parse().unwrap();
    assert!(age >= 1, "age {age}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = app.get("/age").await;
    assert!(!later.is_hit(), "stale after max-age - age: {}", later.cache_status());
    assert_eq!(origin.hits(), 2);
}

/// cache-tests `age-parse-suffix`: `Age: 7200, 0` is read as its first
/// member, 7200, so a `max-age=3600` response is already stale.
async fn a_list_valued_age_counts_its_first_member(b: Backend) {
    let origin =
        Origin::new(|_, n| resp(200, &[("cache-control", "max-age=3600"), ("age", "7200, 0")], &format!("v{n}")));
    let app = App::new(b.layer(), &origin);
    app.get("/age-list").await;
    let second = app.get("/age-list").await;
    assert!(!second.is_hit(), "served although 7200 s old: {}", second.cache_status());
    assert_eq!(origin.hits(), 2);
}

async fn no_store_private_and_set_cookie_are_not_stored(b: Backend) {
    let origin = Origin::new(|parts, n| match parts.uri.path() {
        "/nostore" => resp(200, &[("cache-control", "max-age=60, no-store")], &format!("{n}")),
        "/private" => resp(200, &[("cache-control", "private, max-age=60")], &format!("{n}")),
        _ => resp(200, &[("cache-control", "max-age=60"), ("set-cookie", "sid=secret")], &format!("{n}")),
    });
    let app = App::new(b.layer(), &origin);
    for path in ["/nostore", "/private", "/cookie"] {
        let a = app.get(path).await;
        let b2 = app.get(path).await;
        assert_ne!(a.body, b2.body, "{path} was served from the cache");
        assert!(!b2.is_hit());
    }
}

async fn authorization_is_shared_only_when_the_response_allows(b: Backend) {
    let origin = Origin::new(|parts, n| match parts.uri.path() {
        "/auth-public" => resp(200, &[("cache-control", "public, max-age=60")], &format!("{n}")),
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("{n}")),
    });
    let app = App::new(b.layer(), &origin);
    let alice = app.send("GET", "/auth", &[("authorization", "Bearer alice")]).await;
    let bob = app.send("GET", "/auth", &[("authorization", "Bearer bob")]).await;
    assert_ne!(alice.body, bob.body, "alice's response reached bob");
    app.send("GET", "/auth-public", &[("authorization", "Bearer alice")]).await;
    assert!(app.send("GET", "/auth-public", &[("authorization", "Bearer bob")]).await.is_hit());
}

async fn vary_keeps_variants_apart(b: Backend) {
    let origin = Origin::new(|parts, _| {
        let lang = parts.headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        if parts.uri.path() == "/star" {
            return resp(200, &[("cache-control", "max-age=60"), ("vary", "*")], &lang);
        }
        resp(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Language")], &lang)
    });
    let app = App::new(b.layer(), &origin);
    let first = app.send("GET", "/v", &[("accept-language", "en")]).await;
    assert_eq!(first.body, "en");
    assert!(first.cache_status().contains("fwd=uri-miss"), "nothing stored for the URI: {}", first.cache_status());
    assert_eq!(app.send("GET", "/v", &[("accept-language", "fr")]).await.body, "fr");
    let en = app.send("GET", "/v", &[("accept-language", "en")]).await;
    assert_eq!(en.body, "en");
    assert!(en.is_hit());
    let fr = app.send("GET", "/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "fr");
    assert!(fr.is_hit());
    // Stored for the URI, not for this value (RFC 9211 2.2).
    let it = app.send("GET", "/v", &[("accept-language", "it")]).await;
    assert_eq!(it.body, "it");
    assert!(it.cache_status().contains("fwd=vary-miss"), "{}", it.cache_status());
    assert_eq!(app.get("/v").await.body, "none");
    assert_eq!(origin.hits(), 4);
    // Selecting headers are normalized: whitespace, and several lines joined.
    app.send("GET", "/v", &[("accept-language", "de,fr")]).await;
    assert!(app.send("GET", "/v", &[("accept-language", " de, fr ")]).await.is_hit());
    assert!(app.send("GET", "/v", &[("accept-language", "de"), ("accept-language", "fr")]).await.is_hit());
    app.get("/star").await;
    assert!(!app.get("/star").await.is_hit(), "Vary: * is never served from the cache");
}

/// A client sending ever new values of a `Vary` header cannot grow one entry
/// without bound: at most `MAX_VARIANTS` are kept, the newest among them.
async fn variants_per_entry_are_bounded(b: Backend) {
    let origin = Origin::new(|parts, _| {
        let lang = parts.headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        resp(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Language")], &lang)
    });
    let app = App::new(b.layer(), &origin);
    let total = redlayer_cache::MAX_VARIANTS + 8;
    for i in 0..total {
        assert_eq!(app.send("GET", "/many", &[("accept-language", &format!("l{i}"))]).await.body, format!("l{i}"));
    }
    let newest = app.send("GET", "/many", &[("accept-language", &format!("l{}", total - 1))]).await;
    assert!(newest.is_hit(), "the newest variant is kept: {}", newest.cache_status());
    let mut hits = 0;
    for i in 0..total {
        let got = app.send("GET", "/many", &[("accept-language", &format!("l{i}"))]).await;
        assert_eq!(got.body, format!("l{i}"), "a variant answered for another");
        hits += usize::from(got.is_hit());
    }
    assert!(hits <= redlayer_cache::MAX_VARIANTS, "{hits} of {total} variants were kept");
}

async fn a_short_lived_variant_does_not_shorten_the_others(b: Backend) {
    let origin = Origin::new(|parts, _| {
        let lang = parts.headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        let cc = if lang == "fr" { "max-age=1" } else { "max-age=60" };
        resp(200, &[("cache-control", cc), ("vary", "Accept-Language")], &lang)
    });
    let app = App::new(b.layer(), &origin);
    app.send("GET", "/v", &[("accept-language", "en")]).await;
    assert!(app.send("GET", "/v", &[("accept-language", "en")]).await.is_hit());
    app.send("GET", "/v", &[("accept-language", "fr")]).await;
    assert!(app.send("GET", "/v", &[("accept-language", "fr")]).await.is_hit());
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let en = app.send("GET", "/v", &[("accept-language", "en")]).await;
    assert!(en.is_hit(), "the entry lives as long as its longest-lived variant");
    assert_eq!(en.body, "en");
}

async fn clients_with_matching_validators_get_304(b: Backend) {
    let origin = Origin::new(|_, _| {
        resp(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"abc\""), ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            "body",
        )
    });
    let app = App::new(b.layer(), &origin);
    app.get("/c").await;
    let inm = app.send("GET", "/c", &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(inm.status, 304);
    assert!(inm.body.is_empty());
    assert_eq!(inm.header("etag"), "\"abc\"");
    let other = app.send("GET", "/c", &[("if-none-match", "\"zzz\"")]).await;
    assert_eq!(other.status, 200);
    let ims = app.send("GET", "/c", &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]).await;
    assert_eq!(ims.status, 304);
    assert_eq!(origin.hits(), 1);
}

async fn stale_entries_are_revalidated_and_refreshed_by_304(b: Backend) {
    let origin = Origin::new(|parts, n| {
        if parts.headers.get("if-none-match").is_some_and(|v| v == "\"e1\"") {
            return resp(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"e1\""), ("x-updated", &n.to_string())],
                "",
            );
        }
        resp(200, &[("cache-control", "max-age=1"), ("etag", "\"e1\""), ("x-updated", "0")], "original")
    });
    let app = App::new(b.layer(), &origin);
    app.get("/r").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = app.get("/r").await;
    assert_eq!(origin.last_seen().get("if-none-match").unwrap(), "\"e1\"");
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, "original");
    assert_eq!(revalidated.header("x-updated"), "2", "headers updated from the 304");
    assert!(revalidated.cache_status().contains("fwd=stale"), "{}", revalidated.cache_status());
    assert!(revalidated.cache_status().contains("fwd-status=304"));
    let hit = app.get("/r").await;
    assert!(hit.is_hit(), "refreshed entry is fresh: {}", hit.cache_status());
    assert_eq!(hit.header("x-updated"), "2");
    assert_eq!(hit.body, "original");
    assert_eq!(origin.hits(), 2);
}

async fn unsafe_methods_invalidate_target_and_locations(b: Backend) {
    let origin = Origin::new(|parts, n| match parts.method.as_str() {
        "POST" => resp(201, &[("location", "/items/1"), ("content-location", "http://other.test/items/2")], ""),
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("{n}")),
    });
    let app = App::new(b.layer(), &origin);
    for path in ["/items", "/items/1"] {
        app.get(path).await;
        assert!(app.get(path).await.is_hit());
    }
    let post = app.send("POST", "/items", &[]).await;
    assert_eq!(post.status, 201);
    assert!(!app.get("/items").await.is_hit(), "target invalidated");
    assert!(!app.get("/items/1").await.is_hit(), "Location invalidated");
    // Relative references resolve against the request URI (RFC 3986 5.2).
    let relative = Origin::new(|parts, n| match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/shop/items/new") => resp(201, &[("location", "../list"), ("content-location", "?page=2")], ""),
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("{n}")),
    });
    let app = App::new(b.layer(), &relative);
    for path in ["/shop/list", "/shop/items/new?page=2", "/shop/items/list"] {
        app.get(path).await;
        assert!(app.get(path).await.is_hit(), "{path}");
    }
    assert_eq!(app.send("POST", "/shop/items/new", &[]).await.status, 201);
    assert!(!app.get("/shop/list").await.is_hit(), "../list is /shop/list");
    assert!(!app.get("/shop/items/new?page=2").await.is_hit(), "?page=2 is /shop/items/new?page=2");
    assert!(app.get("/shop/items/list").await.is_hit(), "not /shop/items/list");
    // A Location in raw UTF-8 names the raw UTF-8 path clients request.
    let utf8 = Origin::new(|parts, n| match parts.method.as_str() {
        "POST" => {
            let mut r = resp(201, &[], "");
            r.headers_mut().insert("location", http::HeaderValue::from_bytes("/caf\u{e9}".as_bytes()).unwrap());
            r
        }
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("{n}")),
    });
    let app8 = App::new(b.layer(), &utf8);
    app8.get("/caf\u{e9}").await;
    assert!(app8.get("/caf\u{e9}").await.is_hit());
    app8.send("POST", "/new", &[]).await;
    assert!(!app8.get("/caf\u{e9}").await.is_hit(), "a raw UTF-8 Location invalidates");
    // The request's own URI is invalidated as it was sent (nothing re-encoded, no dots removed).
    for own in ["/q?name=O'Brien", "/d/./x"] {
        app.get(own).await;
        assert!(app.get(own).await.is_hit(), "{own}");
        app.send("POST", own, &[]).await;
        assert!(!app.get(own).await.is_hit(), "{own} invalidated by its own POST");
    }
    // A failed unsafe request invalidates nothing.
    let origin2 = Origin::new(|parts, n| match parts.method.as_str() {
        "DELETE" => resp(500, &[], ""),
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("{n}")),
    });
    let app2 = App::new(b.layer(), &origin2);
    app2.get("/keep").await;
    app2.send("DELETE", "/keep", &[]).await;
    assert!(app2.get("/keep").await.is_hit());
}

/// A 304 that makes the updated entry unstorable: with `no-store` from the
/// origin the entry goes; for a request with credentials only, it stays as it was.
async fn an_unstorable_update_is_not_stored(b: Backend) {
    let origin = Origin::new(|parts, _| {
        if parts.headers.contains_key("if-none-match") {
            let cc = if parts.uri.path() == "/ns" { "no-store" } else { "max-age=60" };
            return resp(304, &[("cache-control", cc), ("etag", "\"e\"")], "");
        }
        resp(200, &[("cache-control", "max-age=1"), ("etag", "\"e\"")], "stored")
    });
    let app = App::new(b.layer(), &origin);
    for path in ["/ns", "/auth"] {
        app.get(path).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.get("/ns").await;
    let mut after = app.get("/ns").await;
    for _ in 0..50 {
        if after.cache_status().contains("uri-miss") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = app.get("/ns").await;
    }
    assert!(after.cache_status().contains("uri-miss"), "the no-store 304 dropped the entry: {}", after.cache_status());
    let authorized = app.send("GET", "/auth", &[("authorization", "Bearer x")]).await;
    assert_eq!(&authorized.body[..], b"stored");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let anonymous = app.get("/auth").await;
    assert!(anonymous.cache_status().contains("fwd=stale"), "kept, still stale: {}", anonymous.cache_status());
}

/// GETs `path` until its answer is a hit (or is not, `hit: false`), for
/// about a second: entries are stored in the background.
async fn get_until(app: &App, path: &str, hit: bool) -> Got {
    let mut got = app.get(path).await;
    for _ in 0..50 {
        if got.is_hit() == hit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = app.get(path).await;
    }
    got
}

/// cache-tests `method-POST`: a POST answer with explicit freshness whose
/// `Content-Location` is the target URI answers later GETs of it; others do not.
async fn a_post_answer_naming_its_target_answers_gets(b: Backend) {
    let origin = Origin::new(|parts, n| match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/doc") => resp(200, &[("cache-control", "max-age=60"), ("content-location", "/doc")], "posted"),
        ("POST", "/plain") => resp(200, &[("cache-control", "max-age=60")], "posted"),
        ("POST", "/elsewhere") => resp(200, &[("cache-control", "max-age=60"), ("content-location", "/doc")], "other"),
        ("POST", "/created") => {
            resp(201, &[("cache-control", "max-age=60"), ("content-location", "/created")], "posted")
        }
        ("POST", "/cookie") => resp(
            200,
            &[("cache-control", "max-age=60"), ("content-location", "/cookie"), ("set-cookie", "s=1")],
            "posted",
        ),
        _ => resp(200, &[("cache-control", "max-age=60")], &format!("got {n}")),
    });
    let app = App::new(b.layer(), &origin);
    app.send("POST", "/doc", &[]).await;
    let get = get_until(&app, "/doc", true).await;
    assert!(get.is_hit(), "{}", get.cache_status());
    assert_eq!(&get.body[..], b"posted");
    // Without Content-Location, or naming another URI: not stored for GETs.
    app.send("POST", "/plain", &[]).await;
    let plain = app.get("/plain").await;
    assert!(!plain.is_hit());
    assert_ne!(&plain.body[..], b"posted");
    // Not a 200, or with a cookie: not stored for GETs either.
    for path in ["/created", "/cookie"] {
        app.send("POST", path, &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let get = app.get(path).await;
        assert!(!get.is_hit() && &get.body[..] != b"posted", "{path}: {}", get.cache_status());
    }
    app.send("POST", "/elsewhere", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let doc = app.get("/doc").await;
    assert!(!doc.is_hit(), "the POST to /elsewhere invalidated /doc: {}", doc.cache_status());
    assert_ne!(&doc.body[..], b"other");
}

async fn head_is_answered_from_a_stored_get(b: Backend) {
    let origin = Origin::new(|_, _| resp(200, &[("cache-control", "max-age=60")], "hello"));
    let app = App::new(b.layer(), &origin);
    app.get("/h").await;
    let head = app.send("HEAD", "/h", &[]).await;
    assert!(head.is_hit());
    assert!(head.body.is_empty());
    assert_eq!(origin.hits(), 1);
}

/// RFC 9111 4.3.5 (cache-tests `head-200-*`): a `200` to a `HEAD` that the
/// cache forwarded updates the stored GET response when it describes the same
/// representation, and makes it go when it does not.
async fn a_200_to_a_head_updates_or_drops_the_stored_get(b: Backend) {
    let origin = Origin::new(|parts, n| {
        // On /hd, the representation changed after the GET: HEAD (and later GETs) see v2.
        let version = if parts.uri.path() == "/hd" && (parts.method == "HEAD" || n > 4) { "\"v2\"" } else { "\"v1\"" };
        if parts.method == "HEAD" {
            // axum sends the GET body's length and strips the body.
            return resp(200, &[("cache-control", "max-age=60"), ("etag", version), ("x-n", &n.to_string())], "stored");
        }
        let max_age = if parts.uri.path() == "/hd" { "max-age=60" } else { "max-age=1" };
        resp(200, &[("cache-control", max_age), ("etag", version), ("x-n", &n.to_string())], "stored")
    });
    let app = App::new(b.layer(), &origin);
    app.get("/hu").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let head = app.send("HEAD", "/hu", &[]).await;
    assert_eq!((head.status.as_u16(), head.header("x-n")), (200, "2"), "{}", head.cache_status());
    assert_eq!(origin.hits(), 2, "the HEAD went to the origin");
    assert!(head.cache_status().contains("stored"), "{}", head.cache_status());
    assert!(head.body.is_empty());
    // The stored GET is fresh again (max-age=60 from the HEAD), with the HEAD's fields.
    let hit = get_until(&app, "/hu", true).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!((&hit.body[..], hit.header("x-n")), (&b"stored"[..], "2"));
    assert_eq!(origin.hits(), 2);

    // A HEAD (sent on with no-cache) answered with another ETag: the stored
    // GET, fresh until then, is outdated and goes.
    app.get("/hd").await;
    assert!(app.get("/hd").await.is_hit());
    app.send("HEAD", "/hd", &[("cache-control", "no-cache")]).await;
    let after = get_until(&app, "/hd", false).await;
    assert!(!after.is_hit(), "{}", after.cache_status());
    assert_eq!(after.header("etag"), "\"v2\"");
}

async fn request_cache_control_is_honoured(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("{n}")));
    let app = App::new(b.layer(), &origin);
    let miss = app.send("GET", "/rc", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(miss.status, 504);
    // Not forwarded, so no `fwd` (RFC 9211 2.2), with no-store too.
    assert_eq!(miss.cache_status(), "redlayer; detail=only-if-cached");
    let both = app.send("GET", "/rc", &[("cache-control", "no-store, only-if-cached")]).await;
    assert_eq!((both.status.as_u16(), both.cache_status()), (504, "redlayer; detail=only-if-cached"));
    assert_eq!(origin.hits(), 0);
    app.get("/rc").await;
    assert!(app.send("GET", "/rc", &[("cache-control", "only-if-cached")]).await.is_hit());
    assert!(!app.send("GET", "/rc", &[("cache-control", "no-cache")]).await.is_hit());
    assert!(!app.send("GET", "/rc", &[("pragma", "no-cache")]).await.is_hit());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!app.send("GET", "/rc", &[("cache-control", "max-age=0")]).await.is_hit());
    assert!(!app.send("GET", "/rc", &[("cache-control", "min-fresh=120")]).await.is_hit());
    assert!(app.get("/rc").await.is_hit());
    // A stale response served under `max-stale` reports a negative ttl (RFC 9211 2.5).
    let short = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=1")], &format!("{n}")));
    let app = App::new(b.layer(), &short);
    app.get("/ms").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = app.send("GET", "/ms", &[("cache-control", "max-stale=60")]).await;
    assert!(stale.is_hit(), "{}", stale.cache_status());
    let ttl: i64 =
        stale.cache_status().split("ttl=").nth(1).unwrap().split(';').next().unwrap().trim().parse().unwrap();
    assert!(ttl < 0, "{}", stale.cache_status());
}

async fn stale_while_revalidate_serves_stale_and_refreshes_once(b: Backend) {
    let origin =
        Origin::new(|_, n| resp(200, &[("cache-control", "max-age=1, stale-while-revalidate=30")], &format!("v{n}")))
            .delay(Duration::from_millis(400));
    let app = App::new(b.layer(), &origin);
    app.get("/swr").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut handles = Vec::new();
    for _ in 0..10 {
        let app = app.clone();
        handles.push(tokio::spawn(async move { app.get("/swr").await }));
    }
    for h in handles {
        let got = h.await.unwrap();
        assert_eq!(got.body, "v1");
        assert!(got.cache_status().contains("stale-while-revalidate"), "{}", got.cache_status());
    }
    // Wait for the refreshed entry with requests that can start nothing: one
    // that limits staleness is never served stale-while-revalidate, and
    // `only-if-cached` never goes to the origin (a 504 while still stale).
    let refreshed = eventually(Duration::from_secs(5), || async {
        let got = app.send("GET", "/swr", &[("cache-control", "only-if-cached, max-age=60")]).await;
        got.is_hit() && got.body == "v2"
    })
    .await;
    assert!(refreshed, "the background refresh never stored v2 (origin hits: {})", origin.hits());
    assert_eq!(origin.hits(), 2, "one background refresh");
    let fresh = app.get("/swr").await;
    assert_eq!(fresh.body, "v2");
    assert!(fresh.is_hit());
}

async fn stale_if_error_serves_stale_when_the_origin_fails(b: Backend) {
    let origin = Origin::new(|_, n| {
        if n == 1 {
            resp(200, &[("cache-control", "max-age=1, stale-if-error=60")], "good")
        } else {
            resp(503, &[], "down")
        }
    });
    let app = App::new(b.layer(), &origin);
    app.get("/sie").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = app.get("/sie").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "good");
    assert!(got.cache_status().contains("stale-if-error"), "{}", got.cache_status());
    // Without the directive the error passes through.
    let origin =
        Origin::new(
            |_, n| if n == 1 { resp(200, &[("cache-control", "max-age=1")], "good") } else { resp(503, &[], "down") },
        );
    let app = App::new(b.layer(), &origin);
    app.get("/nosie").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.get("/nosie").await.status, 503);
}

async fn tag_purge_leaves_no_stale_copy(b: Backend) {
    let origin = Origin::new(|parts, n| {
        let tag = if parts.uri.path().starts_with("/p/") { "products" } else { "other" };
        resp(200, &[("cache-control", "max-age=60"), ("cache-tag", &format!("{tag}, all"))], &format!("{n}"))
    });
    let layer = b.layer();
    let app = App::new(layer.clone(), &origin);
    for path in ["/p/1", "/p/2", "/o/1"] {
        app.get(path).await;
        assert!(app.get(path).await.is_hit());
    }
    let purged = layer.purge_tag("products").await.unwrap();
    assert_eq!(purged, 2);
    assert!(!app.get("/p/1").await.is_hit());
    assert!(!app.get("/p/2").await.is_hit());
    assert!(app.get("/o/1").await.is_hit());
    assert!(layer.purge_key("GET http://example.test/o/1").await.unwrap());
    assert!(!app.get("/o/1").await.is_hit());

    // By URI, in any spelling that normalizes to the stored one.
    assert!(app.get("/o/1").await.is_hit());
    assert!(layer.purge_uri("HTTP://EXAMPLE.test:80/o/1").await.unwrap());
    assert!(!layer.purge_uri("http://example.test/o/1").await.unwrap(), "already gone");
    assert!(!app.get("/o/1").await.is_hit());

    // Another tag header (Surrogate-Key, space-separated): `Cache-Tag` is then not read.
    let origin = Origin::new(|_, n| {
        resp(
            200,
            &[("cache-control", "max-age=60"), ("surrogate-key", "red blue"), ("cache-tag", "green")],
            &format!("{n}"),
        )
    });
    let layer = b.layer().tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    let app = App::new(layer.clone(), &origin);
    app.get("/s/1").await;
    assert!(app.get("/s/1").await.is_hit());
    assert_eq!(layer.purge_tag("green").await.unwrap(), 0, "Cache-Tag is not the tag header here");
    assert!(app.get("/s/1").await.is_hit());
    assert_eq!(layer.purge_tag("blue").await.unwrap(), 1);
    assert!(!app.get("/s/1").await.is_hit());
}

/// At most 32 tags are taken from one response (the first in sorted order):
/// an origin cannot make one entry write an unbounded number of tag sets.
async fn tags_per_response_are_bounded(b: Backend) {
    let tags: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    let header = tags.join(", ");
    let origin =
        Origin::new(move |_, n| resp(200, &[("cache-control", "max-age=60"), ("cache-tag", &header)], &format!("{n}")));
    let layer = b.layer();
    let app = App::new(layer.clone(), &origin);
    app.get("/tagged").await;
    assert!(app.get("/tagged").await.is_hit());
    assert_eq!(layer.purge_tag("t35").await.unwrap(), 0, "the 36th tag was not recorded");
    assert!(app.get("/tagged").await.is_hit());
    assert_eq!(layer.purge_tag("t31").await.unwrap(), 1, "the 32nd tag was recorded");
    assert!(!app.get("/tagged").await.is_hit());
}

async fn large_bodies_stream_through_unstored(b: Backend) {
    let origin = Origin::new(|parts, n| {
        let size = if parts.uri.path() == "/big" { 5000 } else { 50 };
        resp(200, &[("cache-control", "max-age=60")], &format!("{n}").repeat(size))
    });
    let app = App::new(b.layer().max_body_size(1000), &origin);
    let a = app.get("/big").await;
    assert_eq!(a.body.len(), 5000);
    assert!(!a.cache_status().contains("stored"));
    assert!(!app.get("/big").await.is_hit());
    app.get("/small").await;
    assert!(app.get("/small").await.is_hit());
}

async fn concurrent_misses_reach_the_origin_once(b: Backend) {
    let origin = Origin::new(|_, n| {
        resp(200, &[("cache-control", "public, max-age=60"), ("set-cookie", &format!("sid={n}"))], "shared")
    })
    .delay(Duration::from_millis(300));
    let app = App::new(b.layer().store_set_cookie(true), &origin);
    let mut handles = Vec::new();
    for _ in 0..50 {
        let app = app.clone();
        handles.push(tokio::spawn(async move { app.get("/cold").await }));
    }
    let mut cookies = 0;
    for h in handles {
        let got = h.await.unwrap();
        assert_eq!(got.body, "shared");
        if got.headers.contains_key("set-cookie") {
            cookies += 1;
        }
    }
    assert_eq!(origin.hits(), 1);
    assert_eq!(cookies, 1, "only the leader's client gets its Set-Cookie");
    assert!(!app.get("/cold").await.headers.contains_key("set-cookie"));
}

/// cache-tests `headers-store-Set-Cookie`: with `replay_set_cookie` the
/// response is stored with its cookie and replayed, as RFC 9111 3.1 asks;
/// without any option it is not stored at all.
async fn set_cookie_is_replayed_only_when_asked(b: Backend) {
    let origin =
        Origin::new(|_, n| resp(200, &[("cache-control", "max-age=3600"), ("set-cookie", "a=c")], &format!("{n}")));
    let replaying = App::new(b.layer().replay_set_cookie(true), &origin);
    replaying.get("/sc").await;
    let hit = replaying.get("/sc").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("set-cookie"), "a=c");
    let default = App::new(b.layer(), &origin);
    default.get("/sc-default").await;
    assert!(!default.get("/sc-default").await.is_hit());
}

/// cache-tests `stale-close` and `stale-close-*`: when the inner service
/// could not reach the origin ([`OriginUnreachable`]) a stale entry answers,
/// unless it forbids staleness (`must-revalidate`, `no-cache`, ...).
async fn a_stale_entry_answers_when_the_origin_is_unreachable(b: Backend) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let down = Arc::new(AtomicBool::new(false));
    let origin = Origin::new({
        let down = down.clone();
        move |parts, n| {
            if down.load(Ordering::SeqCst) {
                let mut r = resp(502, &[], "bad gateway");
                r.extensions_mut().insert(redlayer_cache::OriginUnreachable);
                return r;
            }
            let cc = if parts.uri.path() == "/mr" { "max-age=1, must-revalidate" } else { "max-age=1" };
            resp(200, &[("cache-control", cc)], &format!("v{n}"))
        }
    });
    let app = App::new(b.layer(), &origin);
    let (plain, strict) = (app.get("/plain").await.body, app.get("/mr").await.body);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    down.store(true, Ordering::SeqCst);
    let stale = app.get("/plain").await;
    assert_eq!((stale.status.as_u16(), &stale.body), (200, &plain), "{}", stale.cache_status());
    assert!(stale.cache_status().contains("origin-unreachable"), "{}", stale.cache_status());
    let refused = app.get("/mr").await;
    assert_eq!(refused.status, 502, "must-revalidate served stale: {:?} (stored {strict:?})", refused.body);
    let asked_fresh = app.send("GET", "/plain", &[("cache-control", "no-cache")]).await;
    assert_eq!(asked_fresh.status, 502, "the client asked for a fresh answer");
}

async fn purge_by_prefix(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("{n}")));
    let layer = b.layer();
    let app = App::new(layer.clone(), &origin);
    for path in ["/docs/a", "/docs/b", "/blog/a"] {
        app.get(path).await;
    }
    assert_eq!(layer.purge_prefix("http://example.test/docs/").await.unwrap(), 2);
    assert!(!app.get("/docs/a").await.is_hit());
    assert!(app.get("/blog/a").await.is_hit());
    // The empty prefix purges every response, and only responses: values of
    // the cache-aside API on the same store stay.
    let aside = redlayer_cache::CacheAside::new(b.store.clone());
    aside.set("kept", &7u32, Duration::from_secs(60)).await.unwrap();
    assert_eq!(layer.purge_prefix("").await.unwrap(), 2, "/docs/a and /blog/a");
    assert!(!app.get("/blog/a").await.is_hit());
    assert_eq!(aside.get::<u32>("kept").await.unwrap(), Some(7));
}

async fn cache_aside_runs_the_fetcher_once(b: Backend) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let cache = redlayer_cache::CacheAside::new(b.store.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..20 {
        let cache = cache.clone();
        let calls = calls.clone();
        handles.push(tokio::spawn(async move {
            cache
                .get_or_insert_tagged("user:1", Duration::from_secs(60), &["users"], || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(vec![1u32, 2, 3])
                })
                .await
                .unwrap()
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), vec![1, 2, 3]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get::<Vec<u32>>("user:1").await.unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(cache.get::<String>("user:1").await.unwrap(), None, "wrong type is a miss");
    cache.set("user:2", &"x", Duration::from_secs(60)).await.unwrap();
    assert!(cache.invalidate("user:2").await.unwrap());
    assert_eq!(cache.get::<String>("user:2").await.unwrap(), None);
    assert_eq!(cache.invalidate_tag("users").await.unwrap(), 1);
    assert_eq!(cache.get::<Vec<u32>>("user:1").await.unwrap(), None);
    // A write given up at once (its caller dropped) still ends with the value
    // findable by its tag, or not there at all: never an untagged value.
    // An invalidation while a fetch runs: its value is returned, not stored.
    let slow = cache.clone();
    let loading = tokio::spawn(async move {
        slow.get_or_insert_with("inflight", Duration::from_secs(60), || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::io::Error>(1u32)
        })
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cache.invalidate("inflight").await.unwrap();
    assert_eq!(loading.await.unwrap(), 1);
    assert_eq!(cache.get::<u32>("inflight").await.unwrap(), None, "stored after its invalidation");
    for i in 0..40u64 {
        let key = format!("drop:{i}");
        let set = cache.set_with_tags(&key, &i, Duration::from_secs(60), &["t", "u"]);
        let _ = tokio::time::timeout(Duration::from_micros(i * 50), set).await;
    }
    // The writes go on without their callers: wait for them (bounded).
    let started = std::time::Instant::now();
    for i in 0..40u64 {
        while cache.get::<u64>(&format!("drop:{i}")).await.unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "drop:{i} was never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cache.invalidate_tag("u").await.unwrap();
    for i in 0..40u64 {
        let left = cache.get::<u64>(&format!("drop:{i}")).await.unwrap();
        assert_eq!(left, None, "drop:{i} outlived the purge of its tag");
    }
}

async fn xfetch_refreshes_hot_keys_before_they_expire(b: Backend) {
    // v1 stays fresh for 60 s: within the wait below, only an early refresh
    // can store another body.
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")))
        .delay(Duration::from_millis(100));
    // A huge beta: every hit refreshes early (one refresh at a time).
    let app = App::new(b.layer().xfetch(1e9), &origin);
    app.get("/hot").await;
    let hit = app.get("/hot").await;
    assert!(hit.is_hit());
    let refreshed = eventually(Duration::from_secs(5), || async {
        let later = app.get("/hot").await;
        assert!(later.is_hit(), "{}", later.cache_status());
        later.body != "v1"
    })
    .await;
    assert!(refreshed, "the refreshed entry was never served (origin hits: {})", origin.hits());
    assert!(origin.hits() >= 2, "early refresh happened");
}

async fn key_function_and_namespace(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("{n}")));
    let layer = b
        .layer()
        .key_fn(|parts| (parts.uri.path() != "/nocache").then(|| format!("GET {}", parts.uri.path())))
        .namespace(|parts| parts.headers.get("x-tenant").and_then(|v| v.to_str().ok()).map(str::to_owned));
    let app = App::new(layer, &origin);
    app.send("GET", "/k?a=1", &[("x-tenant", "t1")]).await;
    assert!(app.send("GET", "/k?a=2", &[("x-tenant", "t1")]).await.is_hit(), "query ignored by the key fn");
    assert!(!app.send("GET", "/k", &[("x-tenant", "t2")]).await.is_hit(), "tenants never share");
    app.get("/nocache").await;
    let bypass = app.get("/nocache").await;
    assert!(bypass.cache_status().contains("fwd=bypass"), "{}", bypass.cache_status());
}

async fn hostile_cache_control_is_parsed_strictly(b: Backend) {
    let origin = Origin::new(|parts, n| {
        let cc = match parts.uri.path() {
            "/space" => "max-age =100",
            "/quoted" => "extension=\"max-age=100\", max-age=1",
            "/huge" => "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615",
            _ => "max-age=100, no-cache=\"x-secret\"",
        };
        resp(200, &[("cache-control", cc), ("x-secret", "s"), ("x-public", "p")], &format!("{n}"))
    });
    let app = App::new(b.layer(), &origin);
    app.get("/space").await;
    assert!(!app.get("/space").await.is_hit(), "max-age with a space before = is ignored");
    app.get("/quoted").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!app.get("/quoted").await.is_hit(), "max-age inside a quoted string is ignored");
    app.get("/huge").await;
    assert!(app.get("/huge").await.is_hit(), "a huge max-age is bounded, not a panic");
    app.get("/qualified").await;
    let hit = app.get("/qualified").await;
    assert!(hit.is_hit(), "qualified no-cache does not prevent reuse");
    assert!(!hit.headers.contains_key("x-secret"), "the listed field is not stored");
    assert_eq!(hit.header("x-public"), "p");
}

async fn cache_aside_stale_while_revalidate(b: Backend) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let cache = redlayer_cache::CacheAside::new(b.store.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let fetch = {
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                // Slow, so that a read that waited for it is told apart
                // from a stale read answered at once.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::io::Error>(n)
            }
        }
    };
    let (ttl, stale) = (Duration::from_millis(500), Duration::from_secs(30));
    assert_eq!(cache.get_or_insert_swr("swr", ttl, stale, fetch.clone()).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(cache.get_or_insert_swr("swr", ttl, stale, fetch.clone()).await.unwrap(), 1, "stale value at once");
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "a stale read waited {took:?} (the fetch takes 1 s)");
    }
    // A plain read starts no refresh: wait for the background one to store.
    let refreshed =
        eventually(Duration::from_secs(5), || async { cache.get::<usize>("swr").await.unwrap() == Some(2) }).await;
    assert!(refreshed, "the background refresh never stored 2 (fetches: {})", calls.load(Ordering::SeqCst));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one background refresh");
    assert_eq!(cache.get_or_insert_swr("swr", ttl, stale, fetch).await.unwrap(), 2);
}

/// A background refresh that panics (or is cancelled) does not keep its key
/// from being refreshed again.
async fn cache_aside_refreshes_again_after_a_refresh_panicked(b: Backend) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let cache = redlayer_cache::CacheAside::new(b.store.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let fetch = {
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                assert_ne!(n, 2, "the first refresh fails loudly");
                Ok::<_, std::io::Error>(n)
            }
        }
    };
    let (ttl, stale) = (Duration::from_millis(200), Duration::from_secs(30));
    assert_eq!(cache.get_or_insert_swr("swr-panic", ttl, stale, fetch.clone()).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get_or_insert_swr("swr-panic", ttl, stale, fetch.clone()).await.unwrap(), 1, "stale");
    let panicked = eventually(Duration::from_secs(5), || async { calls.load(Ordering::SeqCst) == 2 }).await;
    assert!(panicked, "the first refresh ran");
    // Its cross-instance refresh lock is released in the background: try until a refresh runs.
    let refreshed = eventually(Duration::from_secs(5), || async {
        let _ = cache.get_or_insert_swr("swr-panic", ttl, stale, fetch.clone()).await;
        cache.get::<usize>("swr-panic").await.unwrap() == Some(3)
    })
    .await;
    assert!(refreshed, "no refresh after the one that panicked (fetches: {})", calls.load(Ordering::SeqCst));
}

async fn hostile_requests_are_bounded(b: Backend) {
    let origin = Origin::new(|_, n| {
        resp(
            200,
            &[("cache-control", "max-age=60"), ("vary", "x-h"), ("cache-tag", &"t".repeat(5000))],
            &format!("{n}"),
        )
    });
    let app = App::new(b.layer(), &origin);
    let long = format!("/{}", "a".repeat(20_000));
    app.get(&long).await;
    assert!(app.get(&long).await.is_hit(), "a 20 KB URI is hashed into its key");
    // Past 32 KiB (a huge Host or query), requests pass through: nothing of them is stored.
    let huge = format!("/{}", "a".repeat(40_000));
    app.get(&huge).await;
    let passed = app.get(&huge).await;
    assert!(passed.cache_status().contains("fwd=bypass; detail=key-too-long"), "{}", passed.cache_status());
    // A Cache-Control longer than any real one reads as no-store.
    let cc = vec!["a"; 10_000].join(",");
    for _ in 0..2 {
        let got = app.send("GET", "/long-cc", &[("cache-control", &cc)]).await;
        assert!(!got.is_hit(), "{}", got.cache_status());
    }
    assert!(!app.get("/long-cc").await.is_hit(), "a request with no-store stored its answer");
    let weird = http::HeaderValue::from_bytes(b"\xff\xfe{}*").unwrap();
    for _ in 0..2 {
        let req = http::Request::get("/weird")
            .header("host", "example.test")
            .header("x-h", weird.clone())
            .header("cache-control", http::HeaderValue::from_bytes(b"max-age=\xff, no-cache=\"").unwrap())
            .body(axum::body::Body::empty())
            .unwrap();
        let res = tower::ServiceExt::oneshot(app.service(), req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
}

/// cache-tests `cc-resp-must-revalidate-stale`, `cc-resp-no-cache-revalidate`:
/// a 304 without validators answers the cache's own conditional request, so
/// it refreshes the stored entry; the unconditional client gets the full 200.
async fn a_304_without_validators_refreshes_the_stored_entry(b: Backend) {
    let origin = Origin::new(|parts, n| {
        if parts.headers.contains_key("if-none-match") {
            return resp(304, &[("x-n", &n.to_string())], "");
        }
        match parts.uri.path() {
            "/mr" => resp(200, &[("cache-control", "max-age=1, must-revalidate"), ("etag", "\"e1\"")], "stored"),
            _ => resp(200, &[("cache-control", "no-cache"), ("etag", "\"e2\"")], "stored"),
        }
    });
    let app = App::new(b.layer(), &origin);
    app.get("/mr").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = app.get("/mr").await;
    assert_eq!(origin.last_seen().get("if-none-match").unwrap(), "\"e1\"");
    assert_eq!(revalidated.status, 200, "{}", revalidated.cache_status());
    assert_eq!(revalidated.body, "stored");
    assert_eq!(revalidated.header("x-n"), "2", "headers updated from the 304");
    assert!(revalidated.cache_status().contains("fwd-status=304"), "{}", revalidated.cache_status());
    app.get("/nc").await;
    let nc = app.get("/nc").await;
    assert_eq!(origin.last_seen().get("if-none-match").unwrap(), "\"e2\"");
    assert_eq!((nc.status.as_u16(), &nc.body[..]), (200, &b"stored"[..]));
    // A client with validators of its own still gets the origin's 304.
    let own = app.send("GET", "/nc", &[("if-none-match", "\"mine\"")]).await;
    assert_eq!(own.status, 304);
}

/// cache-tests `partial-*`: single byte ranges of a stored complete response
/// are answered with 206 from the cache; anything else gets the whole 200.
async fn byte_ranges_are_served_from_stored_responses(b: Backend) {
    let origin = Origin::new(|_, n| {
        resp(200, &[("cache-control", "max-age=60"), ("etag", "\"r\""), ("a", &n.to_string())], "0123456789A")
    });
    let app = App::new(b.layer(), &origin);
    assert_eq!(app.get("/r").await.body, "0123456789A");
    for (range, body, content_range) in [
        ("bytes=0-1", "01", "bytes 0-1/11"),
        ("bytes=1-", "123456789A", "bytes 1-10/11"),
        ("bytes=-1", "A", "bytes 10-10/11"),
    ] {
        let got = app.send("GET", "/r", &[("range", range)]).await;
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(got.body, body, "{range}");
        assert_eq!(got.header("content-range"), content_range);
        assert_eq!(got.header("content-length"), body.len().to_string());
        assert_eq!(got.header("a"), "1", "stored header fields are kept");
        assert!(got.is_hit());
    }
    for headers in [
        &[("range", "bytes=0-1,3-4")][..],
        &[("range", "bytes=50-")][..],
        &[("range", "items=0-1")][..],
        &[("range", "bytes=0-1"), ("if-range", "\"other\"")][..],
    ] {
        let got = app.send("GET", "/r", headers).await;
        assert_eq!((got.status.as_u16(), &got.body[..]), (200, &b"0123456789A"[..]), "{headers:?}");
    }
    assert_eq!(app.send("GET", "/r", &[("range", "bytes=2-3"), ("if-range", "\"r\"")]).await.body, "23");
    assert_eq!(origin.hits(), 1);
}

/// cache-tests `status-5xx-fresh`, `status-599-must-understand`,
/// `status-200-must-understand`, `heuristic-502-not_cached`: any final status
/// with explicit freshness is stored (RFC 9111 3); heuristics only for the
/// heuristically cacheable ones; `must-understand` overrides `no-store` for
/// understood statuses only.
async fn any_final_status_with_explicit_freshness_is_stored(b: Backend) {
    let origin = Origin::new(|parts, n| match parts.uri.path() {
        "/500" => resp(500, &[("cache-control", "max-age=60")], &format!("e{n}")),
        "/400" => resp(400, &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")], &format!("e{n}")),
        "/502-heuristic" => resp(502, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")], &format!("e{n}")),
        "/599-mu" => resp(599, &[("cache-control", "max-age=60, no-store, must-understand")], &format!("e{n}")),
        "/200-mu" => resp(200, &[("cache-control", "max-age=60, no-store, must-understand")], &format!("e{n}")),
        _ => resp(200, &[("cache-control", "max-age=60, no-store")], &format!("e{n}")),
    });
    let app = App::new(b.layer(), &origin);
    for (path, stored) in [
        ("/500", true),
        ("/400", true),
        ("/502-heuristic", false),
        ("/599-mu", false),
        ("/200-mu", true),
        ("/200-no-store", false),
    ] {
        let first = app.get(path).await;
        let second = app.get(path).await;
        assert_eq!(second.status, first.status, "{path}");
        assert_eq!(second.is_hit(), stored, "{path}: {}", second.cache_status());
        assert_eq!(first.body == second.body, stored, "{path}");
    }
}

/// cache-tests `freshness-expires-wrong-case-*`, `pragma-request-no-cache`,
/// `conditional-lm-*`: HTTP dates tolerate a wrong letter case (and nothing
/// else); request `Pragma` is ignored beside `Cache-Control`.
async fn dates_and_pragma_are_read_like_other_caches(b: Backend) {
    let origin = Origin::new(|parts, n| match parts.uri.path() {
        "/case" => resp(200, &[("expires", "THU, 18 AUG 2050 02:01:18 gMT")], &format!("{n}")),
        "/utc" => resp(200, &[("expires", "Thu, 18 Aug 2050 02:01:18 UTC")], &format!("{n}")),
        _ => resp(
            200,
            &[("cache-control", "max-age=60"), ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            &format!("{n}"),
        ),
    });
    let app = App::new(b.layer(), &origin);
    app.get("/case").await;
    assert!(app.get("/case").await.is_hit(), "wrong letter case in Expires is tolerated");
    app.get("/utc").await;
    assert!(!app.get("/utc").await.is_hit(), "an invalid Expires means already expired");
    app.get("/p").await;
    let with_cc = app.send("GET", "/p", &[("pragma", "no-cache"), ("cache-control", "x-ext")]).await;
    assert!(with_cc.is_hit(), "Pragma is ignored with Cache-Control: {}", with_cc.cache_status());
    let pragma_only = app.send("GET", "/p", &[("pragma", "no-cache")]).await;
    assert!(!pragma_only.is_hit(), "Pragma: no-cache alone means no-cache");
    let ims = app.send("GET", "/p", &[("if-modified-since", "MON, 01 JAN 2024 00:00:00 GMT")]).await;
    assert_eq!(ims.status, 304);
}

/// cache-tests `cdn-*`: a valid `CDN-Cache-Control` (RFC 9213) takes the
/// place of `Cache-Control`; an invalid one is ignored as a whole.
async fn cdn_cache_control_targets_this_cache(b: Backend) {
    let origin = Origin::new(|parts, n| {
        let (cc, cdn) = match parts.uri.path() {
            "/cdn-fresh" => ("no-store", "max-age=600"),
            "/cdn-private" => ("max-age=600", "private"),
            "/cdn-short" => ("max-age=600", "max-age=0"),
            "/cdn-wrong-type" => ("no-store", "max-age=\"600\""),
            _ => ("no-store", "max-age=600, &&&"),
        };
        resp(200, &[("cache-control", cc), ("cdn-cache-control", cdn)], &format!("{n}"))
    });
    let app = App::new(b.layer(), &origin);
    for (path, stored) in [
        ("/cdn-fresh", true),
        ("/cdn-private", false),
        ("/cdn-short", false),
        ("/cdn-wrong-type", false),
        ("/cdn-unparsable", false),
    ] {
        let first = app.get(path).await;
        assert!(!first.header("cdn-cache-control").is_empty(), "the field is forwarded");
        let second = app.get(path).await;
        assert_eq!(second.is_hit(), stored, "{path}: {}", second.cache_status());
    }
}

/// cache-tests `heuristic-*` / `other-*` run a second request right after
/// the first one's body ends: it must find the entry (the fill's flight lasts
/// until the entry is in the store), not go to the origin again.
async fn a_request_right_after_a_fill_finds_the_entry(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("{n}")));
    let app = App::new(b.layer(), &origin);
    for i in 0..30 {
        let uri = format!("/back-to-back/{i}");
        for _ in 0..2 {
            let req = http::Request::builder().uri(&uri).header("host", "example.test");
            let res = tower::ServiceExt::oneshot(app.service(), req.body(axum::body::Body::empty()).unwrap());
            let res = tokio::time::timeout(Duration::from_secs(10), res).await.unwrap().unwrap();
            http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
        }
    }
    assert_eq!(origin.hits(), 30, "a back-to-back request went to the origin");
}

/// Calls of `cmd` on the Redis backend (0 on memory).
fn calls(b: &Backend, cmd: &str) -> u64 {
    if let Some(server) = &b.server {
        return server.command_calls(cmd);
    }
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &b.cluster {
        return cluster.command_calls(cmd);
    }
    0
}

/// The commands a cache request can send: lookups, the fill lock (`SET NX`
/// + release script), stores and markers (scripts).
fn cache_commands(b: &Backend) -> [u64; 4] {
    [calls(b, "hmget"), calls(b, "hget"), calls(b, "set"), calls(b, "evalsha") + calls(b, "eval")]
}

/// Whether the entry hash of `path` holds a hit-for-pass marker (Redis only).
async fn has_pass_marker(b: &Backend, path: &str) -> Option<bool> {
    let redis = b.redis.as_ref()?;
    let key = b.store.entry_key(&format!("GET http://example.test{path}"));
    let mut conn = redis.connection().await.unwrap();
    let n: i64 = redis::cmd("HEXISTS").arg(&key).arg("pass").query_async(&mut conn).await.unwrap();
    Some(n == 1)
}

/// Waits until the hit-for-pass marker of `path` is written and the fill
/// lock held while writing it is released: both happen in the background
/// after the response. The memory store writes the marker in a task without
/// I/O, so a short pause does there.
async fn wait_for_pass_marker(b: &Backend, path: &str) {
    match b.redis.as_ref() {
        Some(redis) => support::settle(redis, path, true).await,
        None => tokio::time::sleep(Duration::from_millis(100)).await,
    }
}

/// A response that is never fresh (no freshness information, no heuristic)
/// and has no validator is not stored at all, not even for the stale grace.
async fn never_fresh_responses_without_validators_are_not_stored(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[], &format!("v{n}")));
    let app = App::new(b.layer(), &origin);
    let first = app.get("/plain-page").await;
    assert!(!first.cache_status().contains("stored"), "{}", first.cache_status());
    let second = app.get("/plain-page").await;
    assert_eq!(second.body, "v2");
    assert!(second.cache_status().contains("fwd=uri-miss"), "{}", second.cache_status());
}

/// Hit-for-pass: after an unstorable response, the key's misses go straight
/// to the origin (one HMGET on Redis: no second lookup, no fill lock), and a
/// storable response is stored again and clears the marker.
async fn uncacheable_routes_skip_the_fill_lock_until_they_become_cacheable(b: Backend) {
    let cacheable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cacheable.clone();
    let origin = Origin::new(move |_, n| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            resp(200, &[("cache-control", "max-age=60")], &format!("v{n}"))
        } else {
            resp(200, &[("set-cookie", "sid=1")], &format!("v{n}"))
        }
    });
    let app = App::new(b.layer(), &origin);
    let first = app.get("/hfp").await;
    // The marker is written in the background, then the fill lock released.
    wait_for_pass_marker(&b, "/hfp").await;
    assert!(!first.cache_status().contains("hit-for-pass"), "{}", first.cache_status());
    assert!(!first.cache_status().contains("stored"), "{}", first.cache_status());
    if let Some(marked) = has_pass_marker(&b, "/hfp").await {
        assert!(marked, "an unstorable miss leaves a marker");
    }
    let before = cache_commands(&b);
    for i in 0..10 {
        let got = app.get("/hfp").await;
        assert_eq!(got.body, format!("v{}", i + 2), "a pass marker never serves a response");
        assert!(!got.is_hit());
        assert!(got.cache_status().contains("fwd=uri-miss"), "{}", got.cache_status());
        assert!(got.cache_status().contains("detail=hit-for-pass"), "{}", got.cache_status());
    }
    let after = cache_commands(&b);
    if b.redis.is_some() {
        let [hmget, hget, set, scripts] = std::array::from_fn::<u64, 4, _>(|i| after[i] - before[i]);
        eprintln!("hit-for-pass: 10 uncacheable GETs: hmget {hmget}, hget {hget}, set {set}, scripts {scripts}");
        assert_eq!(hmget, 10, "one lookup per request");
        assert_eq!((hget, set, scripts), (0, 0, 0), "no fill lock, no re-check, no marker rewrite");
    }
    assert_eq!(origin.hits(), 11);
    // The route becomes cacheable: the next response is stored (without the
    // lock) and clears the marker.
    cacheable.store(true, std::sync::atomic::Ordering::SeqCst);
    let stored = app.get("/hfp").await;
    assert!(stored.cache_status().contains("stored"), "{}", stored.cache_status());
    assert_eq!(stored.body, "v12");
    let hit = app.get("/hfp").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, "v12");
    assert_eq!(origin.hits(), 12);
    if let Some(marked) = has_pass_marker(&b, "/hfp").await {
        assert!(!marked, "a stored response clears the marker");
    }
    // Once the entry is gone, a miss coalesces again (no marker).
    b.layer().purge_key("GET http://example.test/hfp").await.unwrap();
    cacheable.store(false, std::sync::atomic::Ordering::SeqCst);
    let again = app.get("/hfp").await;
    assert!(!again.cache_status().contains("hit-for-pass"), "{}", again.cache_status());
}

/// The marker lasts the configured time; zero disables hit-for-pass (every
/// uncacheable miss then pays the re-check and the fill lock on Redis).
async fn hit_for_pass_expires_and_can_be_disabled(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "private, max-age=60")], &format!("v{n}")));
    let app = App::new(b.layer().hit_for_pass(Duration::from_millis(1500)), &origin);
    app.get("/short").await;
    wait_for_pass_marker(&b, "/short").await;
    assert!(app.get("/short").await.cache_status().contains("detail=hit-for-pass"));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let expired = app.get("/short").await;
    assert!(!expired.cache_status().contains("hit-for-pass"), "{}", expired.cache_status());
    // (The expired marker's hash expired with it: a marker found now is new.)
    wait_for_pass_marker(&b, "/short").await;
    // That miss marked the key again.
    assert!(app.get("/short").await.cache_status().contains("detail=hit-for-pass"));

    let off = App::new(b.layer().hit_for_pass(Duration::ZERO), &origin);
    let before = cache_commands(&b);
    for _ in 0..10 {
        let got = off.get("/off").await;
        assert!(!got.cache_status().contains("hit-for-pass"), "{}", got.cache_status());
        assert!(!got.is_hit());
    }
    // The last lock release is sent in the background.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = cache_commands(&b);
    if b.redis.is_some() {
        let total: u64 = (0..4).map(|i| after[i] - before[i]).sum();
        eprintln!("hit-for-pass disabled: 10 uncacheable GETs: {total} commands");
        assert!(total >= 30, "lookup, re-check and fill lock per miss: {total}");
        assert_eq!(has_pass_marker(&b, "/off").await, Some(false));
    }
    assert_eq!(origin.hits(), 14);
}

/// One entry per site, however its name is spelt: `Host: EXAMPLE.test:80`
/// and an HTTP/2 request (the authority in its URI, no `Host`) are hits on the
/// entry an HTTP/1.1 request stored, so they neither miss nor replace it. A
/// request whose URI names another site than its `Host` is neither answered
/// from nor stored in the cache.
async fn host_spellings_share_entries_and_conflicting_ones_bypass(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    let app = App::new(b.layer(), &origin);
    assert_eq!(app.get("/h").await.body, "v1");
    let build = |uri: &str, host: Option<&str>| {
        let mut req = http::Request::get(uri);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        req.body(axum::body::Body::empty()).unwrap()
    };
    for req in [
        build("/h", Some("EXAMPLE.test")),
        build("/h", Some("example.test:80")),
        build("http://example.test/h", None),
        build("http://Example.Test:80/h", Some("example.test")),
    ] {
        let what = format!("{} {:?}", req.uri(), req.headers().get("host"));
        let got = app.request(req).await;
        assert!(got.is_hit(), "{what}: {}", got.cache_status());
        assert_eq!(got.body, "v1", "{what}");
    }
    assert_eq!(origin.hits(), 1);
    let poisoned = app.request(build("http://example.test/h", Some("evil.test"))).await;
    assert!(poisoned.cache_status().contains("fwd=bypass"), "{}", poisoned.cache_status());
    assert_eq!(poisoned.body, "v2");
    let fresh = app.request(build("http://example.test/other", Some("evil.test"))).await;
    assert!(!fresh.cache_status().contains("stored"), "{}", fresh.cache_status());
    assert_eq!(app.get("/h").await.body, "v1", "the entry is untouched");
    assert_eq!(origin.hits(), 3);
    // `Vary: Host`: the stored host is the normalized one, and hits still match it.
    let varying = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60"), ("vary", "Host")], &format!("{n}")));
    let app = App::new(b.layer(), &varying);
    assert_eq!(app.get("/vh").await.body, "1");
    let again = app.get("/vh").await;
    assert!(again.is_hit(), "{}", again.cache_status());
}

/// gRPC calls go straight through: no lookup, no store, and no
/// invalidation (a DEL per call, waited for before the answer) either.
async fn grpc_calls_pass_straight_through(b: Backend) {
    let origin =
        Origin::new(|_, n| resp(200, &[("content-type", "application/grpc"), ("grpc-status", "0")], &format!("{n}")));
    let app = App::new(b.layer(), &origin);
    let (dels, scripts) = (calls(&b, "del"), calls(&b, "evalsha"));
    for _ in 0..3 {
        let got = app.send("POST", "/pkg.Svc/Method", &[("content-type", "application/grpc")]).await;
        assert_eq!(got.status, 200);
        assert!(got.cache_status().contains("fwd=method"), "{}", got.cache_status());
    }
    assert_eq!(origin.hits(), 3);
    assert_eq!((calls(&b, "del"), calls(&b, "evalsha")), (dels, scripts), "a gRPC call sent commands to Redis");
}

/// A fill ends with its body, so a client that does not read it stalls the
/// fill. Its waiters go to the origin after the coalesce timeout; a request
/// that comes after that leads a fill of its own instead of joining the
/// stalled one (and waiting the timeout again).
async fn a_stalled_fill_is_not_joined_past_the_coalesce_timeout(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("{n}")));
    let app = App::new(b.layer().coalesce_timeout(Duration::from_millis(1500)), &origin);
    let request = http::Request::get("/unread").header("host", "example.test").body(axum::body::Body::empty()).unwrap();
    let held = tower::ServiceExt::oneshot(app.service(), request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let later = app.send("GET", "/unread", &[]).await;
    assert_eq!(later.body, "2");
    assert!(
        !later.cache_status().contains("coalesce-fallthrough"),
        "joined the stalled fill: {}",
        later.cache_status()
    );
    drop(held);
}

/// Only POSTs with a gRPC content type are gRPC calls: a PUT that carries one
/// is an unsafe request like any other, and invalidates what it targets.
async fn a_put_with_a_grpc_content_type_still_invalidates(b: Backend) {
    let origin = Origin::new(|_, n| resp(200, &[("cache-control", "max-age=60")], &format!("{n}")));
    let app = App::new(b.layer(), &origin);
    app.get("/doc").await;
    assert!(eventually(Duration::from_secs(2), || async { app.get("/doc").await.is_hit() }).await, "never stored");
    let put = app.send("PUT", "/doc", &[("content-type", "application/grpc")]).await;
    assert_eq!(put.status, 200);
    let after = app.get("/doc").await;
    assert!(!after.is_hit(), "served the copy the PUT replaced: {}", after.cache_status());
}

/// A response that varies on `Cookie` is stored per cookie, and the cookie
/// (a session id, often) never reaches the store in clear; the variant still
/// answers the same cookie, and only it.
async fn a_cookie_selected_variant_keeps_no_cookie_in_clear(b: Backend) {
    // The body names the n-th origin call, not the cookie.
    let origin =
        Origin::new(|_, n| resp(200, &[("cache-control", "public, max-age=60"), ("vary", "Cookie")], &format!("{n}")));
    let app = App::new(b.layer(), &origin);
    let secret = "id=Zm9vYmFyLXNlc3Npb24taWQtdGhhdC1tdXN0LXN0YXktc2VjcmV0";
    let first = app.send("GET", "/me", &[("cookie", secret)]).await.body;
    let hit = || async { app.send("GET", "/me", &[("cookie", secret)]).await };
    assert!(
        eventually(Duration::from_secs(2), || async { hit().await.is_hit() }).await,
        "the variant was never served"
    );
    assert_eq!(hit().await.body, first);
    assert_ne!(app.send("GET", "/me", &[("cookie", "id=other")]).await.body, first, "another cookie got this variant");
    if let Some(server) = &b.server {
        let dump = server.cli(&["--no-raw", "EVAL", "local o = {} for _, k in ipairs(redis.call('KEYS', '*')) do if redis.call('TYPE', k).ok == 'hash' then for _, v in ipairs(redis.call('HGETALL', k)) do o[#o + 1] = v end end end return o", "0"]);
        assert!(dump.contains("public, max-age=60"), "the entry is in Redis: {dump}");
        assert!(!dump.contains("Zm9vYmFyLXNlc3Npb24taWQ"), "the cookie is stored in clear: {dump}");
    }
}

/// Corner cases of RFC 9111 (and RFC 9213) where `http-cache-semantics`
/// alone, or the view of the response the layer gives it, decides otherwise.
async fn stale_use_and_storage_follow_the_response_as_sent(b: Backend) {
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let origin = Origin::new(move |parts, n| {
        let body = format!("{n}");
        match parts.uri.path() {
            // Stored for its validator; never reused without one (5.2.2.4).
            "/no-cache" => resp(200, &[("cache-control", "no-cache"), ("etag", "\"v\"")], &body),
            // 3.5: proxy-revalidate does not make an authorized answer shareable.
            "/proxy-revalidate" => resp(200, &[("cache-control", "max-age=60, proxy-revalidate")], &body),
            // 1.2.2: past 2^31 counts as 2^31, not as 0.
            "/huge" => resp(200, &[("cache-control", "max-age=99999999999999999999")], &body),
            // 4.2.1: an explicit Expires is the lifetime, immutable or not.
            "/immutable-expired" => {
                resp(200, &[("cache-control", "immutable"), ("expires", &past), ("etag", "\"i\"")], &body)
            }
            // RFC 9213 2.2: beside CDN-Cache-Control, Expires is ignored, and a
            // 302 without explicit freshness is not stored.
            "/cdn-expires" => {
                resp(302, &[("cdn-cache-control", "no-transform"), ("expires", &later), ("location", "/")], &body)
            }
            // 3.1: never stored, like the hop-by-hop fields.
            "/auth-info" => {
                resp(200, &[("cache-control", "max-age=60"), ("proxy-authentication-info", "nextnonce=\"x\"")], &body)
            }
            _ => resp(404, &[], ""),
        }
    });
    let app = App::new(b.layer(), &origin);

    app.get("/no-cache").await;
    let before = origin.hits();
    let stale_ok = app.send("GET", "/no-cache", &[("cache-control", "max-stale")]).await;
    assert!(!stale_ok.is_hit(), "max-stale cannot skip no-cache's validation: {}", stale_ok.cache_status());
    assert_eq!(origin.hits(), before + 1);
    assert_eq!(origin.last_seen().get("if-none-match").unwrap(), "\"v\"");

    let alice = app.send("GET", "/proxy-revalidate", &[("authorization", "Bearer alice")]).await;
    let anonymous = app.get("/proxy-revalidate").await;
    assert!(!anonymous.is_hit(), "alice's answer reached another client");
    assert_ne!(alice.body, anonymous.body);

    app.get("/huge").await;
    assert!(app.get("/huge").await.is_hit(), "max-age past u64 is 2^31 s");

    app.get("/immutable-expired").await;
    assert!(!app.get("/immutable-expired").await.is_hit(), "Expires in the past: stale, immutable or not");

    app.get("/cdn-expires").await;
    assert!(!app.get("/cdn-expires").await.is_hit(), "Expires ignored beside CDN-Cache-Control");

    app.get("/auth-info").await;
    let hit = app.get("/auth-info").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert!(hit.headers.get("proxy-authentication-info").is_none(), "not stored");
}

/// RFC 9111 4.3.4: a 304's `Set-Cookie` replaces the stored one (when
/// cookies are stored and replayed) instead of being added to it; and the
/// revalidation forwards the client's request whole (each line of a
/// repeated field) with the validators added.
async fn a_304_replaces_stored_cookies_and_the_revalidation_keeps_the_request(b: Backend) {
    let origin = Origin::new(|parts, _| {
        if parts.headers.get("if-none-match").is_some_and(|v| v == "\"c\"") {
            return resp(304, &[("cache-control", "max-age=60"), ("etag", "\"c\""), ("set-cookie", "a=new")], "");
        }
        resp(200, &[("cache-control", "max-age=1"), ("etag", "\"c\""), ("set-cookie", "a=old")], "body")
    });
    let app = App::new(b.layer().replay_set_cookie(true), &origin);
    app.get("/cookie").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = app.send("GET", "/cookie", &[("x-line", "one"), ("x-line", "two")]).await;
    assert!(revalidated.cache_status().contains("fwd-status=304"), "{}", revalidated.cache_status());
    let cookies: Vec<_> = revalidated.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=new"], "the 304's cookie replaces the stored one");
    let lines: Vec<_> = origin.last_seen().get_all("x-line").iter().cloned().collect();
    assert_eq!(lines, ["one", "two"], "every line of a repeated field reaches the origin");
    let hit = app.get("/cookie").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    let cookies: Vec<_> = hit.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=new"], "and is stored");
}

/// RFC 9111 4.3.4: a 304 naming another strong ETag than the stored one
/// validates nothing; the client, who sent no validators, gets a whole
/// response fetched again, and it is stored.
async fn a_304_for_another_representation_is_not_used(b: Backend) {
    let origin = Origin::new(|parts, n| {
        if parts.headers.contains_key("if-none-match") {
            return resp(304, &[("cache-control", "max-age=60"), ("etag", "\"other\"")], "");
        }
        let etag = if n == 1 { "\"first\"" } else { "\"second\"" };
        resp(200, &[("cache-control", "max-age=1"), ("etag", etag)], &format!("body {n}"))
    });
    let app = App::new(b.layer(), &origin);
    assert_eq!(app.get("/etag").await.body, "body 1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = app.get("/etag").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "body 3", "the stored body was served for another representation's 304");
    assert_eq!(origin.hits(), 3, "the conditional request, then the plain one");
    assert!(app.get("/etag").await.is_hit());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::memory().await).await })*
        }
        mod standalone {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::standalone().await).await })*
        }
        #[cfg(feature = "cluster")]
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::cluster().await).await })*
        }
    };
}

suite!(
    fresh_responses_are_hits_with_age_and_cache_status,
    grpc_calls_pass_straight_through,
    a_put_with_a_grpc_content_type_still_invalidates,
    a_stalled_fill_is_not_joined_past_the_coalesce_timeout,
    a_cookie_selected_variant_keeps_no_cookie_in_clear,
    host_spellings_share_entries_and_conflicting_ones_bypass,
    age_counts_upstream_age_and_expires_entries,
    a_list_valued_age_counts_its_first_member,
    no_store_private_and_set_cookie_are_not_stored,
    set_cookie_is_replayed_only_when_asked,
    a_stale_entry_answers_when_the_origin_is_unreachable,
    never_fresh_responses_without_validators_are_not_stored,
    authorization_is_shared_only_when_the_response_allows,
    vary_keeps_variants_apart,
    variants_per_entry_are_bounded,
    a_short_lived_variant_does_not_shorten_the_others,
    clients_with_matching_validators_get_304,
    stale_entries_are_revalidated_and_refreshed_by_304,
    unsafe_methods_invalidate_target_and_locations,
    head_is_answered_from_a_stored_get,
    a_post_answer_naming_its_target_answers_gets,
    a_200_to_a_head_updates_or_drops_the_stored_get,
    an_unstorable_update_is_not_stored,
    request_cache_control_is_honoured,
    stale_while_revalidate_serves_stale_and_refreshes_once,
    stale_if_error_serves_stale_when_the_origin_fails,
    tag_purge_leaves_no_stale_copy,
    tags_per_response_are_bounded,
    large_bodies_stream_through_unstored,
    concurrent_misses_reach_the_origin_once,
    purge_by_prefix,
    cache_aside_runs_the_fetcher_once,
    xfetch_refreshes_hot_keys_before_they_expire,
    key_function_and_namespace,
    hostile_cache_control_is_parsed_strictly,
    cache_aside_stale_while_revalidate,
    cache_aside_refreshes_again_after_a_refresh_panicked,
    hostile_requests_are_bounded,
    a_304_without_validators_refreshes_the_stored_entry,
    byte_ranges_are_served_from_stored_responses,
    any_final_status_with_explicit_freshness_is_stored,
    dates_and_pragma_are_read_like_other_caches,
    cdn_cache_control_targets_this_cache,
    a_request_right_after_a_fill_finds_the_entry,
    uncacheable_routes_skip_the_fill_lock_until_they_become_cacheable,
    hit_for_pass_expires_and_can_be_disabled,
    stale_use_and_storage_follow_the_response_as_sent,
    a_304_replaces_stored_cookies_and_the_revalidation_keeps_the_request,
    a_304_for_another_representation_is_not_used,
);

/// An unsafe request dropped while its invalidation waits on a slow Redis
/// still invalidates every target (the request's own URI and the one its
/// answer names), not only the one in progress when it was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_unsafe_request_still_invalidates_every_target() {
    let b = Backend::standalone().await;
    let origin = Origin::new(|parts, n| match parts.method.as_str() {
        "PUT" => resp(200, &[("content-location", "/b")], ""),
        _ => resp(200, &[("cache-control", "max-age=600")], &format!("{n}")),
    });
    let app = App::new(b.layer(), &origin);
    for path in ["/a", "/b"] {
        app.get(path).await;
        assert!(app.get(path).await.is_hit(), "{path}");
    }
    let server = b.server.as_ref().unwrap();
    server.pause();
    let put = http::Request::put("/a").header("host", "example.test").body(axum::body::Body::empty()).unwrap();
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), tower::ServiceExt::oneshot(app.service(), put)).await;
    assert!(dropped.is_err(), "the request was to be dropped while Redis was frozen");
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!app.get("/a").await.is_hit(), "/a invalidated");
    assert!(!app.get("/b").await.is_hit(), "/b (Content-Location) invalidated");
}
