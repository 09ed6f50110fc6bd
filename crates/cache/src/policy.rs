//! Glue between stored entries and `http-cache-semantics`, which decides
//! storability, freshness and revalidation.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, request::Parts};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};

use crate::entry::Entry;

/// Hop-by-hop headers: never stored, never served from the cache.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// The incoming request as `http-cache-semantics` sees it: always `GET` (a
/// stored GET answers HEAD too) and always the same URI (the key matched).
pub(crate) struct Incoming<'a>(pub &'a HeaderMap);

static GET: Method = Method::GET;

impl RequestLike for Incoming<'_> {
    fn uri(&self) -> Uri {
        Uri::from_static("/")
    }
    fn is_same_uri(&self, _other: &Uri) -> bool {
        true
    }
    fn method(&self) -> &Method {
        &GET
    }
    fn headers(&self) -> &HeaderMap {
        self.0
    }
}

pub(crate) struct Res<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

impl ResponseLike for Res<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// One parsed `Cache-Control` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    /// Lowercased name.
    pub name: String,
    /// The value, unquoted.
    pub value: Option<String>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `Cache-Control` fields strictly (RFC 9111 5.2: `token [ "=" (
/// token / quoted-string ) ]`). Invalid directives (`max-age =1`,
/// `max-age= 1`) are dropped; commas inside quoted strings are respected.
pub(crate) fn parse_cc(headers: &HeaderMap) -> Vec<Directive> {
    let mut out = Vec::new();
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let b = value.as_bytes();
        let mut i = 0;
        let skip_to_comma = |mut i: usize| {
            let mut quoted = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if quoted => i += 1,
                    b'"' => quoted = !quoted,
                    b',' if !quoted => break,
                    _ => {}
                }
                i += 1;
            }
            i
        };
        while i < b.len() {
            while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            if i == start {
                i = skip_to_comma(i);
                continue;
            }
            let name = String::from_utf8_lossy(&b[start..i]).to_ascii_lowercase();
            let mut value = None;
            let mut valid = true;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                    let mut v = Vec::new();
                    let mut closed = false;
                    while i < b.len() {
                        match b[i] {
                            b'\\' if i + 1 < b.len() => {
                                v.push(b[i + 1]);
                                i += 2;
                                continue;
                            }
                            b'"' => {
                                closed = true;
                                i += 1;
                                break;
                            }
                            c => v.push(c),
                        }
                        i += 1;
                    }
                    valid = closed;
                    value = Some(String::from_utf8_lossy(&v).into_owned());
                } else {
                    let vs = i;
                    while i < b.len() && is_tchar(b[i]) {
                        i += 1;
                    }
                    valid = i > vs;
                    value = Some(String::from_utf8_lossy(&b[vs..i]).into_owned());
                }
            }
            while i < b.len() && matches!(b[i], b' ' | b'\t') {
                i += 1;
            }
            if i < b.len() && b[i] != b',' {
                valid = false;
                i = skip_to_comma(i);
            }
            if valid {
                out.push(Directive { name, value });
            }
        }
    }
    out
}

/// A `Cache-Control` directive: `None` when absent, `Some(None)` when present
/// without a valid delta-seconds value, `Some(Some(n))` otherwise.
pub(crate) fn directive(headers: &HeaderMap, name: &str) -> Option<Option<u64>> {
    let mut found = None;
    for d in parse_cc(headers) {
        if d.name == name {
            let n = d.value.as_deref().filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()));
            found = Some(n.map(|v| v.parse::<u64>().unwrap_or(u64::MAX)));
        }
    }
    found
}

/// Header names listed by qualified `no-cache="..."` / `private="..."`: a
/// shared cache stores the response without them.
pub(crate) fn qualified_fields(headers: &HeaderMap) -> Vec<String> {
    parse_cc(headers)
        .into_iter()
        .filter(|d| d.name == "no-cache" || d.name == "private")
        .filter_map(|d| d.value)
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Headers as `http-cache-semantics` should see them: `Cache-Control`
/// rewritten from the strict parse (invalid directives dropped, quoted values
/// unquoted, qualified `no-cache` / `private` dropped since their fields are
/// not stored, `proxy-revalidate` as `must-revalidate`, which is what it
/// means to a shared cache).
pub(crate) fn policy_view(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    let dates = [http::header::EXPIRES, http::header::DATE, http::header::LAST_MODIFIED];
    if !headers.contains_key(http::header::CACHE_CONTROL) && !dates.iter().any(|d| headers.contains_key(d)) {
        return Cow::Borrowed(headers);
    }
    let mut out = headers.clone();
    if headers.contains_key(http::header::CACHE_CONTROL) {
        let mut parts: Vec<String> = Vec::new();
        for d in parse_cc(headers) {
            if (d.name == "no-cache" || d.name == "private") && d.value.is_some() {
                continue;
            }
            let name = if d.name == "proxy-revalidate" { "must-revalidate".to_owned() } else { d.name };
            match d.value {
                Some(v) if !v.is_empty() && v.bytes().all(is_tchar) => parts.push(format!("{name}={v}")),
                Some(_) => parts.push(format!("{name}=invalid")),
                None => parts.push(name),
            }
        }
        out.remove(http::header::CACHE_CONTROL);
        if let Ok(v) = HeaderValue::from_str(&parts.join(", ")) {
            out.insert(http::header::CACHE_CONTROL, v);
        }
    }
    // HTTP dates strictly (RFC 9110 5.6.7, via httpdate), rewritten as
    // IMF-fixdate. An invalid Expires means "already expired"; an invalid
    // Date or Last-Modified is ignored.
    for name in dates {
        let Some(value) = headers.get(&name) else { continue };
        let parsed = value.to_str().ok().and_then(|v| httpdate::parse_http_date(v.trim()).ok());
        match parsed {
            Some(t) => {
                if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
                    out.insert(name, v);
                }
            }
            None if name == http::header::EXPIRES => {
                out.insert(name, HeaderValue::from_static("0"));
            }
            None => {
                out.remove(name);
            }
        }
    }
    Cow::Owned(out)
}

pub(crate) fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    directive(headers, name).is_some()
}

/// Headers as stored: hop-by-hop ones (and those named by `Connection`) removed.
pub(crate) fn storable_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        out.remove(name);
    }
    out
}

/// The `Age` to record at store time (RFC 9111 4.2.3 `corrected_initial_age`).
pub(crate) fn initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> u64 {
    let age_value = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let date =
        headers.get(http::header::DATE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    let apparent = date.and_then(|d| response_time.duration_since(d).ok()).unwrap_or_default().as_secs();
    let delay = response_time.duration_since(request_time).unwrap_or_default().as_secs();
    apparent.max(age_value + delay)
}

/// The request as the stored entry's policy should see it: `Cache-Control`
/// and dates as in [`policy_view`], and the headers named by the entry's
/// `Vary` normalized the way they were stored.
pub(crate) fn request_view<'a>(headers: &'a HeaderMap, entry: &Entry) -> Cow<'a, HeaderMap> {
    let view = policy_view(headers);
    match crate::key::vary_spec(&entry.headers) {
        Some(spec) if !spec.is_empty() => {
            let mut owned = view.into_owned();
            crate::key::normalize_selecting(&spec, &mut owned);
            Cow::Owned(owned)
        }
        _ => view,
    }
}

impl Entry {
    /// The policy of this entry, rebuilt from what was stored.
    pub(crate) fn policy(&self, opts: CacheOptions) -> CachePolicy {
        let headers = policy_view(&self.headers);
        CachePolicy::new_options(
            &Incoming(&self.req_headers),
            &Res { status: self.status, headers: &headers },
            self.response_time,
            opts,
        )
    }
}

/// The freshness lifetime of a policy.
pub(crate) fn lifetime(policy: &CachePolicy, response_time: SystemTime) -> Duration {
    policy.time_to_live(response_time).saturating_add(policy.age(response_time))
}

/// How long past its freshness the entry is (zero while fresh).
pub(crate) fn staleness(policy: &CachePolicy, response_time: SystemTime, now: SystemTime) -> Duration {
    policy.age(now).saturating_sub(lifetime(policy, response_time))
}

/// True when the response forbids serving it stale in any case (`s-maxage`
/// implies `proxy-revalidate` for a shared cache).
pub(crate) fn forbids_stale(headers: &HeaderMap) -> bool {
    has_directive(headers, "must-revalidate")
        || has_directive(headers, "proxy-revalidate")
        || has_directive(headers, "no-cache")
        || has_directive(headers, "s-maxage")
}

/// True when the request asks for nothing stale (any freshness directive).
pub(crate) fn request_limits_staleness(headers: &HeaderMap) -> bool {
    has_directive(headers, "no-cache")
        || has_directive(headers, "max-age")
        || has_directive(headers, "min-fresh")
        || headers.get(http::header::PRAGMA).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("no-cache"))
}

/// True when the stored response has a validator (ETag or Last-Modified).
pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

fn etag_matches(list: &str, etag: &str) -> bool {
    let etag = etag.trim().trim_start_matches("W/");
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/") == etag
    })
}

/// True when the client's own conditional (`If-None-Match`, else
/// `If-Modified-Since`) matches the stored response: it gets a 304.
pub(crate) fn client_not_modified(req: &Parts, stored: &HeaderMap) -> bool {
    if req.method != Method::GET && req.method != Method::HEAD {
        return false;
    }
    let inm: Vec<&str> =
        req.headers.get_all(http::header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).collect();
    if !inm.is_empty() {
        let Some(etag) = stored.get(http::header::ETAG).and_then(|v| v.to_str().ok()) else {
            return inm.iter().any(|l| l.trim() == "*");
        };
        return inm.iter().any(|l| etag_matches(l, etag));
    }
    let Some(ims) = req
        .headers
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let last = stored
        .get(http::header::LAST_MODIFIED)
        .or_else(|| stored.get(http::header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    last.is_some_and(|last| last <= ims)
}

/// Removes the client's own conditional headers (before a fill request).
pub(crate) fn strip_conditionals(headers: &mut HeaderMap) {
    for name in ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cache_control_is_parsed_strictly() {
        assert_eq!(directive(&cc(&["max-age=100"]), "max-age"), Some(Some(100)));
        assert_eq!(directive(&cc(&["max-age=\"100\""]), "max-age"), Some(Some(100)));
        assert_eq!(directive(&cc(&["MaX-AgE=7"]), "max-age"), Some(Some(7)));
        assert_eq!(directive(&cc(&["max-age =100"]), "max-age"), None);
        assert_eq!(directive(&cc(&["max-age= 100"]), "max-age"), None);
        assert_eq!(directive(&cc(&["max-age=100a"]), "max-age"), Some(None));
        assert_eq!(directive(&cc(&["max-age=-1"]), "max-age"), Some(None));
        assert_eq!(directive(&cc(&["extension=\"max-age=100\", max-age=1"]), "max-age"), Some(Some(1)));
        assert_eq!(directive(&cc(&["no-cache=\"a, b\", max-age=5"]), "max-age"), Some(Some(5)));
        assert_eq!(qualified_fields(&cc(&["no-cache=\"a, b\"", "private=\"C\""])), vec!["a", "b", "c"]);
        let headers = cc(&["no-cache=\"a\"", "max-age=3600, proxy-revalidate"]);
        let view = policy_view(&headers);
        assert_eq!(view.get(http::header::CACHE_CONTROL).unwrap(), "max-age=3600, must-revalidate");
        let mut h = HeaderMap::new();
        for (bad, good) in [
            ("Thu, 18 Aug 50 02:01:18 GMT", false),
            ("Thu, 18  Aug  2050 02:01:18 GMT", false),
            ("Thu, 18 Aug 2050 02:01:18 UTC", false),
            ("Thu, 18 Aug 2050 02:01:18 GMT", true),
        ] {
            h.insert(http::header::EXPIRES, HeaderValue::from_static(bad));
            let view = policy_view(&h);
            assert_eq!(view.get(http::header::EXPIRES).unwrap() != "0", good, "{bad}");
        }
    }
}
