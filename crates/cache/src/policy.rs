//! Glue between stored entries and `http-cache-semantics`, which decides
//! storability, freshness and revalidation.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, request::Parts};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};

use crate::entry::{Entry, Freshness, OptsKey};

/// `CDN-Cache-Control` (RFC 9213).
const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Hop-by-hop headers: never stored, never served from the cache.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-authentication-info",
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

/// The longest `Cache-Control` (all its lines) read as it is.
const MAX_CACHE_CONTROL: usize = 8192;

/// Parses `Cache-Control` fields strictly (RFC 9111 5.2: `token [ "=" (
/// token / quoted-string ) ]`). Invalid directives (`max-age =1`,
/// `max-age= 1`) are dropped; commas inside quoted strings are respected.
///
/// A valid `CDN-Cache-Control` (RFC 9213) takes the place of `Cache-Control`:
/// this cache sits at the origin's edge, which is what that field targets.
pub(crate) fn parse_cc(headers: &HeaderMap) -> Vec<Directive> {
    if let Some(targeted) = targeted_cc(headers) {
        return targeted;
    }
    let size: usize = headers.get_all(http::header::CACHE_CONTROL).iter().map(|v| v.len()).sum();
    if size > MAX_CACHE_CONTROL {
        // No real field is that long: a hostile or broken one is read as
        // `no-store` (nothing stored, nothing served from the cache for a
        // request), and not parsed (it is parsed several times per request).
        return vec![Directive { name: "no-store".to_owned(), value: None }];
    }
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

/// The directives of `CDN-Cache-Control` (RFC 9213), a Structured Fields
/// dictionary: `None` when absent, empty, unparsable, or when a known
/// directive has a value of the wrong type (RFC 9213 2.1: the field is then
/// ignored as a whole and `Cache-Control` applies).
fn targeted_cc(headers: &HeaderMap) -> Option<Vec<Directive>> {
    const TARGETED: HeaderName = CDN_CACHE_CONTROL;
    const DELTAS: &[&str] = &["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"];
    if !headers.contains_key(&TARGETED) {
        return None;
    }
    // Measured before anything is copied: the field is read several times per request.
    if headers.get_all(&TARGETED).iter().map(|v| v.len() + 2).sum::<usize>() > MAX_CACHE_CONTROL + 2 {
        return None;
    }
    let joined = headers.get_all(&TARGETED).iter().map(HeaderValue::as_bytes).collect::<Vec<_>>().join(&b", "[..]);
    let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    let mut out = Vec::new();
    for (key, member) in &dict {
        let name = key.as_str();
        let value = match member {
            sfv::ListEntry::Item(item) => match &item.bare_item {
                sfv::BareItem::Boolean(true) => None,
                sfv::BareItem::Boolean(false) => continue,
                sfv::BareItem::Integer(n) if i64::from(*n) >= 0 => Some(i64::from(*n).to_string()),
                _ if DELTAS.contains(&name) => return None,
                sfv::BareItem::Token(t) => Some(t.as_str().to_owned()),
                sfv::BareItem::String(v) => Some(v.as_str().to_owned()),
                _ => None,
            },
            // e.g. `no-cache=("a" "b")`: the whole response is concerned.
            sfv::ListEntry::InnerList(_) if DELTAS.contains(&name) => return None,
            sfv::ListEntry::InnerList(_) => None,
        };
        if DELTAS.contains(&name) && value.is_none() {
            return None;
        }
        let value = if matches!(name, "no-cache" | "private") { None } else { value };
        out.push(Directive { name: name.to_owned(), value });
    }
    (!out.is_empty()).then_some(out)
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
/// means to a shared cache), and without `Set-Cookie`: the layer decides
/// about cookies itself (not stored by default; `store_set_cookie` and
/// `replay_set_cookie` opt in), where the library would silently give such
/// responses no freshness unless `public`.
pub(crate) fn policy_view(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    let dates = [http::header::EXPIRES, http::header::DATE, http::header::LAST_MODIFIED];
    let targeted = headers.contains_key(&CDN_CACHE_CONTROL);
    let cookie = headers.contains_key(http::header::SET_COOKIE);
    let oversized_age = has_oversized_age(headers);
    if !targeted
        && !cookie
        && !oversized_age
        && !headers.contains_key(http::header::CACHE_CONTROL)
        && !dates.iter().any(|d| headers.contains_key(d))
    {
        return Cow::Borrowed(headers);
    }
    let mut out = headers.clone();
    out.remove(http::header::SET_COOKIE);
    if oversized_age {
        out.insert(http::header::AGE, HeaderValue::from(MAX_DELTA_SECONDS));
    }
    if targeted || headers.contains_key(http::header::CACHE_CONTROL) {
        let mut parts: Vec<String> = Vec::new();
        for d in parse_cc(headers) {
            if (d.name == "no-cache" || d.name == "private") && d.value.is_some() {
                continue;
            }
            // `immutable` is read by the library as a heuristic of at least
            // 24 h, which it lets outlast an explicit `Expires` (RFC 9111
            // 4.2.1: an explicit time is the freshness lifetime).
            if d.name == "immutable" && expires_applies(headers) {
                continue;
            }
            let name = if d.name == "proxy-revalidate" { "must-revalidate".to_owned() } else { d.name };
            match d.value {
                // A delta-seconds past 2^31 counts as 2^31 (RFC 9111 1.2.2):
                // the library reads one past u64 as 0.
                Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    let capped = v.parse::<u64>().map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS));
                    parts.push(format!("{name}={capped}"))
                }
                Some(v) if !v.is_empty() && v.bytes().all(is_tchar) => parts.push(format!("{name}={v}")),
                Some(_) => parts.push(format!("{name}=invalid")),
                None => parts.push(name),
            }
        }
        out.remove(http::header::CACHE_CONTROL);
        if !parts.is_empty()
            && let Ok(v) = HeaderValue::from_str(&parts.join(", "))
        {
            out.insert(http::header::CACHE_CONTROL, v);
        }
    }
    // HTTP dates strictly (RFC 9110 5.6.7, via httpdate), rewritten as
    // IMF-fixdate. An invalid Expires means "already expired"; an invalid
    // Date or Last-Modified is ignored.
    for name in dates {
        let Some(value) = headers.get(&name) else { continue };
        if name == http::header::EXPIRES && !expires_applies(headers) {
            out.remove(name);
            continue;
        }
        let parsed = value.to_str().ok().and_then(parse_date);
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

/// Status codes whose semantics `http-cache-semantics` knows (its own list).
const UNDERSTOOD: &[u16] = &[200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501];

/// The status and headers of a response as `http-cache-semantics` should see
/// them: headers as in [`policy_view`], and two RFC 9111 rules it lacks.
/// - Section 3: any final status may be stored when the response has explicit
///   freshness (`max-age`, `s-maxage`, `Expires`) or `public`; the library
///   only stores the statuses it understands, so such a response is shown to
///   it as a `200` (the status itself is stored and served unchanged). 206,
///   304 and `must-understand` responses keep their status.
/// - Section 5.2.2.3: `must-understand` with an understood status overrides
///   `no-store`.
pub(crate) fn response_view(status: StatusCode, headers: &HeaderMap) -> (StatusCode, Cow<'_, HeaderMap>) {
    let mut view = policy_view(headers);
    let code = status.as_u16();
    let must_understand = has_directive(headers, "must-understand");
    if must_understand && UNDERSTOOD.contains(&code) && has_directive(headers, "no-store") {
        drop_directive(&mut view, "no-store");
        return (status, view);
    }
    let final_status = (200..600).contains(&code) && code != 206 && code != 304;
    let explicit = has_directive(headers, "max-age")
        || has_directive(headers, "s-maxage")
        || has_directive(headers, "public")
        || expires_applies(headers);
    if final_status && !UNDERSTOOD.contains(&code) && !must_understand && explicit {
        return (StatusCode::OK, view);
    }
    (status, view)
}

/// Parses an HTTP-date (RFC 9110 5.6.7: IMF-fixdate and the obsolete RFC 850
/// and asctime forms, strictly, via `httpdate`), tolerating only a wrong
/// letter case in day names, month names and `GMT` (as most caches do).
pub(crate) fn parse_date(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(t);
    }
    if !value.is_ascii() || value.len() > 64 {
        return None;
    }
    const NAMES: &[&str] = &[
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "jan",
        "feb",
        "mar",
        "apr",
        "may",
        "jun",
        "jul",
        "aug",
        "sep",
        "oct",
        "nov",
        "dec",
    ];
    let mut fixed = String::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        let letters = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        if letters == 0 {
            let other = rest.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(rest.len());
            fixed.push_str(&rest[..other]);
            rest = &rest[other..];
            continue;
        }
        let word = rest[..letters].to_ascii_lowercase();
        if word == "gmt" {
            fixed.push_str("GMT");
        } else if NAMES.contains(&word.as_str()) {
            fixed.push_str(&word[..1].to_ascii_uppercase());
            fixed.push_str(&word[1..]);
        } else {
            fixed.push_str(&rest[..letters]);
        }
        rest = &rest[letters..];
    }
    if let Ok(t) = httpdate::parse_http_date(&fixed) {
        return Some(t);
    }
    // The weekday is redundant and often wrong (`Thu Aug  8 ... 2050` is a
    // Monday); the parser checks it, other caches ignore it: try each one.
    const SHORT: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const LONG: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let day_len = fixed.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(0);
    let (day, tail) = fixed.split_at(day_len);
    let names = if day.len() == 3 { SHORT } else { LONG };
    if !names.contains(&day) {
        return None;
    }
    names.iter().find_map(|name| httpdate::parse_http_date(&format!("{name}{tail}")).ok())
}

/// Explicit freshness (RFC 9111 4.2.1): a valid `max-age` or `s-maxage`, or `Expires`.
pub(crate) fn has_explicit_freshness(headers: &HeaderMap) -> bool {
    directive(headers, "max-age").flatten().is_some()
        || directive(headers, "s-maxage").flatten().is_some()
        || expires_applies(headers)
}

/// Whether the response's `Expires` counts: not beside a valid
/// `CDN-Cache-Control`, which replaces `Cache-Control` and `Expires` both
/// (RFC 9213 2.2).
fn expires_applies(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::EXPIRES) && targeted_cc(headers).is_none()
}

/// `view` (already a [`policy_view`], so every value is a token) without the
/// Cache-Control directive `name`.
fn drop_directive(view: &mut Cow<'_, HeaderMap>, name: &str) {
    let kept: Vec<String> = parse_cc(view)
        .into_iter()
        .filter(|d| d.name != name)
        .map(|d| match d.value {
            Some(v) => format!("{}={v}", d.name),
            None => d.name,
        })
        .collect();
    let view = view.to_mut();
    view.remove(http::header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        view.insert(http::header::CACHE_CONTROL, v);
    }
}

pub(crate) fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    directive(headers, name).is_some()
}

/// RFC 9111 3.5: a response to a request with `Authorization` is stored only
/// when `public`, `s-maxage` or `must-revalidate` allow it. Checked here on
/// the response as sent, because the library sees `proxy-revalidate` as
/// `must-revalidate` (see [`policy_view`]), which 3.5 does not list.
pub(crate) fn authorization_allows_storing(req: &HeaderMap, res: &HeaderMap) -> bool {
    !req.contains_key(http::header::AUTHORIZATION)
        || has_directive(res, "public")
        || has_directive(res, "s-maxage")
        || has_directive(res, "must-revalidate")
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

/// The largest delta-seconds value a cache uses (RFC 9111 1.2.2).
pub(crate) const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// An `Age` of digits past 2^31, which counts as 2^31 (RFC 9111 1.2.2):
/// `http-cache-semantics` would take it whole (or as 0 past `u64`), and its
/// sum with the resident time can overflow. A leading `+` too: Rust's
/// integer parse, which the library uses, accepts it.
fn has_oversized_age(headers: &HeaderMap) -> bool {
    headers.get(http::header::AGE).and_then(|v| v.to_str().ok()).map(str::trim).is_some_and(|v| {
        let digits = v.strip_prefix('+').unwrap_or(v);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<u64>().map_or(true, |n| n > MAX_DELTA_SECONDS)
    })
}

/// The `Age` to record at store time (RFC 9111 4.2.3 `corrected_initial_age`).
pub(crate) fn initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> u64 {
    let age_value = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        // A list (`Age: 7200, 0`): its first member, as caches read a repeated field.
        .and_then(|v| v.split(',').next().unwrap_or_default().trim().parse::<u64>().ok())
        .unwrap_or(0);
    let date = headers.get(http::header::DATE).and_then(|v| v.to_str().ok()).and_then(parse_date);
    let apparent = date.and_then(|d| response_time.duration_since(d).ok()).unwrap_or_default().as_secs();
    let delay = response_time.duration_since(request_time).unwrap_or_default().as_secs();
    // RFC 9111 1.2.2: a larger delta-seconds counts as 2^31.
    apparent.max(age_value.saturating_add(delay)).min(MAX_DELTA_SECONDS)
}

/// The request as the stored entry's policy should see it: `Cache-Control`
/// and dates as in [`policy_view`], and the headers named by the entry's
/// `Vary` normalized the way they were stored.
pub(crate) fn request_view<'a>(parts: &'a Parts, entry: &Entry) -> Cow<'a, HeaderMap> {
    let mut view = policy_view(&parts.headers);
    // The host as stored: the request's authority, normalized (an HTTP/2
    // request has it in its URI, `Host: EXAMPLE.test:80` is example.test).
    let authority = crate::key::request_authority(parts).unwrap_or_default();
    if view.get(http::header::HOST).map(|h| h.as_bytes()) != Some(authority.as_bytes())
        && let Ok(host) = HeaderValue::from_str(&authority)
    {
        view.to_mut().insert(http::header::HOST, host);
    }
    // RFC 9111 5.4: with Cache-Control in the request, Pragma is ignored.
    if view.contains_key(http::header::CACHE_CONTROL) && view.contains_key(http::header::PRAGMA) {
        view.to_mut().remove(http::header::PRAGMA);
    }
    // A stored response that forbids stale use (must-revalidate, no-cache,
    // s-maxage, proxy-revalidate: RFC 9111 4.2.4, 5.2.2) is never served
    // stale, whatever `max-stale` the request allows; the library only
    // knows must-revalidate.
    if has_directive(&view, "max-stale") && forbids_stale(&entry.headers) {
        drop_directive(&mut view, "max-stale");
    }
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
    /// Records the freshness summary of this entry, from `policy` (its own,
    /// [`Entry::policy`] with `opts`): the stored `Age` and the freshness
    /// lifetime. Entries with `Vary` get none (their hits compare the
    /// selecting headers through the policy).
    pub(crate) fn summarize(&mut self, policy: &CachePolicy, opts: &CacheOptions) {
        self.freshness = (!self.headers.contains_key(http::header::VARY)).then(|| {
            let age = policy.age(self.response_time);
            Freshness {
                opts: OptsKey::of(opts),
                age,
                lifetime: policy.time_to_live(self.response_time).saturating_add(age),
            }
        });
    }

    /// A fresh hit decided from the stored [`Freshness`], without a policy:
    /// `Some((age, time to live))` exactly when the entry's policy would
    /// answer `Fresh` to these request headers at `now`, for the requests it
    /// covers (no `Cache-Control`, `CDN-Cache-Control` or `Pragma`, the
    /// stored `Host`, an entry without `Vary`, the same options); `None`
    /// otherwise (stale, or not covered: ask the policy).
    pub(crate) fn quick_fresh(
        &self,
        parts: &Parts,
        opts: &CacheOptions,
        now: SystemTime,
    ) -> Option<(Duration, Duration)> {
        let f = self.freshness.as_ref()?;
        let req = &parts.headers;
        let authority = crate::key::request_authority(parts)?;
        if f.opts != OptsKey::of(opts)
            || req.contains_key(http::header::CACHE_CONTROL)
            || req.contains_key(http::header::PRAGMA)
            || req.contains_key(&CDN_CACHE_CONTROL)
            || self.headers.contains_key(http::header::VARY)
            || self.req_headers.get(http::header::HOST).map(|h| h.as_bytes()) != Some(authority.as_bytes())
        {
            return None;
        }
        // `CachePolicy`: fresh while `max_age > age(now)`; the lifetime is
        // `max_age` whenever that can hold, and the ttl `max_age - age`.
        let age = f.age_at(self.response_time, now);
        (age < f.lifetime).then(|| (age, f.lifetime - age))
    }

    /// The policy of this entry, rebuilt from what was stored.
    pub(crate) fn policy(&self, opts: CacheOptions) -> CachePolicy {
        let (status, headers) = response_view(self.status, &self.headers);
        CachePolicy::new_options(
            &Incoming(&self.req_headers),
            &Res { status, headers: &headers },
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

/// An entity-tag without its weakness flag (`W/`), for weak comparison.
fn opaque(tag: &[u8]) -> &[u8] {
    let tag = tag.trim_ascii();
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// True when the `If-None-Match` list matches `etag` (weak comparison, RFC
/// 9110 13.1.2). Compared as bytes: entity-tags may hold obs-text.
fn etag_matches(list: &[u8], etag: &[u8]) -> bool {
    let etag = opaque(etag);
    list.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        t == b"*" || (!t.is_empty() && opaque(t) == etag)
    })
}

/// True when the request carries conditional header fields of its own.
pub(crate) fn is_conditional(headers: &HeaderMap) -> bool {
    ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"]
        .iter()
        .any(|name| headers.contains_key(*name))
}

/// True when a 304 selects the stored response (RFC 9111 4.3.4): its
/// entity-tag matches the stored one (weak comparison), else its
/// `Last-Modified` equals the stored one. A 304 without any validator
/// selects nothing here.
pub(crate) fn selects_stored(not_modified: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(new) = not_modified.get(http::header::ETAG) {
        return stored.get(http::header::ETAG).is_some_and(|old| opaque(old.as_bytes()) == opaque(new.as_bytes()));
    }
    if let Some(new) = not_modified.get(http::header::LAST_MODIFIED) {
        return stored.get(http::header::LAST_MODIFIED).is_some_and(|old| old.as_bytes() == new.as_bytes());
    }
    false
}

/// Whether a `200` to a `HEAD` describes the stored GET response's
/// representation (RFC 9111 4.3.5): `Some(true)` when every validator it
/// carries (`ETag`, `Last-Modified`) equals the stored one and its
/// `Content-Length`, if any, is the stored body's length; `Some(false)` when a
/// validator differs (another representation); `None` when only the length
/// differs.
pub(crate) fn head_agrees(head: &HeaderMap, stored: &Entry) -> Option<bool> {
    let etag_ok = head.get(http::header::ETAG).is_none_or(|new| {
        stored.headers.get(http::header::ETAG).is_some_and(|old| opaque(old.as_bytes()) == opaque(new.as_bytes()))
    });
    let lm_ok = head.get(http::header::LAST_MODIFIED).is_none_or(|new| {
        stored.headers.get(http::header::LAST_MODIFIED).is_some_and(|old| old.as_bytes() == new.as_bytes())
    });
    let length_ok = head
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|len| len.to_str().ok().and_then(|l| l.trim().parse::<usize>().ok()) == Some(stored.body.len()));
    match (etag_ok && lm_ok, length_ok) {
        (false, _) => Some(false),
        (true, true) => Some(true),
        (true, false) => None,
    }
}

/// True when the client's own conditional (`If-None-Match`, else
/// `If-Modified-Since`) matches the stored response: it gets a 304.
pub(crate) fn client_not_modified(req: &Parts, stored: &HeaderMap) -> bool {
    if req.method != Method::GET && req.method != Method::HEAD {
        return false;
    }
    let inm: Vec<&[u8]> = req.headers.get_all(http::header::IF_NONE_MATCH).iter().map(HeaderValue::as_bytes).collect();
    if !inm.is_empty() {
        let Some(etag) = stored.get(http::header::ETAG) else {
            return inm.iter().any(|l| l.trim_ascii() == b"*");
        };
        return inm.iter().any(|l| etag_matches(l, etag.as_bytes()));
    }
    let Some(ims) = req.headers.get(http::header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(parse_date)
    else {
        return false;
    };
    let last = stored
        .get(http::header::LAST_MODIFIED)
        .or_else(|| stored.get(http::header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(parse_date);
    last.is_some_and(|last| last <= ims)
}

/// The byte range (first, last; inclusive) of a stored complete `200`
/// response that answers the request's `Range`, when there is exactly one
/// satisfiable `bytes` range and `If-Range`, if any, matches the stored
/// response (strong comparison). Anything else is ignored: the whole
/// response is served, as RFC 9110 14.2 allows.
pub(crate) fn served_range(req: &Parts, entry: &Entry) -> Option<(usize, usize)> {
    if entry.status != StatusCode::OK || (req.method != Method::GET && req.method != Method::HEAD) {
        return None;
    }
    let mut ranges = req.headers.get_all(http::header::RANGE).iter();
    let range = ranges.next()?.to_str().ok()?.trim();
    if ranges.next().is_some() || entry.headers.contains_key(http::header::CONTENT_RANGE) {
        return None;
    }
    if let Some(if_range) = req.headers.get(http::header::IF_RANGE) {
        let if_range = if_range.as_bytes().trim_ascii();
        let matches = if if_range.starts_with(b"\"") {
            entry.headers.get(http::header::ETAG).is_some_and(|e| e.as_bytes().trim_ascii() == if_range)
        } else {
            let date = std::str::from_utf8(if_range).ok().and_then(parse_date);
            let last =
                entry.headers.get(http::header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(parse_date);
            date.is_some() && date == last
        };
        if !matches {
            return None;
        }
    }
    let (unit, spec) = range.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let len = entry.body.len() as u64;
    if len == 0 {
        return None;
    }
    let (start, end) = if first.trim().is_empty() {
        let suffix = number(last)?;
        if suffix == 0 {
            return None;
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start = number(first)?;
        let end = if last.trim().is_empty() { len - 1 } else { number(last)?.min(len - 1) };
        (start, end)
    };
    (start <= end && start < len).then_some((start as usize, end as usize))
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

    #[test]
    fn a_huge_age_is_capped_not_overflowed() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AGE, HeaderValue::from(u64::MAX));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(initial_age(&headers, t0, t0 + Duration::from_secs(5)), MAX_DELTA_SECONDS);
        headers.insert(http::header::AGE, HeaderValue::from(7u64));
        assert_eq!(initial_age(&headers, t0, t0 + Duration::from_secs(2)), 9);
    }

    #[test]
    fn the_policy_sees_a_huge_age_as_two_to_the_31() {
        // From a broken origin, or an entry written into Redis by someone
        // else: the library would add the resident time to it and overflow.
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = t0 + Duration::from_secs(10);
        for age in ["18446744073709551615", "+18446744073709551615", "99999999999999999999999", "2147483649"] {
            let entry = Entry {
                response_time: t0,
                fetch_time: Duration::ZERO,
                status: StatusCode::OK,
                req_headers: HeaderMap::new(),
                headers: HeaderMap::from_iter([
                    (http::header::AGE, HeaderValue::from_static(age)),
                    (http::header::CACHE_CONTROL, HeaderValue::from_static("max-age=60")),
                ]),
                body: bytes::Bytes::new(),
                freshness: None,
            };
            let policy = entry.policy(CacheOptions { shared: true, ..CacheOptions::default() });
            assert_eq!(policy.age(later), Duration::from_secs(MAX_DELTA_SECONDS + 10), "{age}");
            assert_eq!(policy.time_to_live(later), Duration::ZERO, "{age}");
        }
        let mut small = HeaderMap::new();
        small.insert(http::header::AGE, HeaderValue::from_static("2147483648"));
        assert!(matches!(policy_view(&small), Cow::Borrowed(_)), "2^31 itself is kept as it is");
    }

    fn cc(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn dates_with_a_wrong_weekday_still_parse() {
        let expected = httpdate::parse_http_date("Mon Aug  8 02:01:18 2050").unwrap();
        assert_eq!(parse_date("Thu Aug  8 02:01:18 2050"), Some(expected));
        assert_eq!(parse_date("Fri, 08 Aug 2050 02:01:18 GMT"), Some(expected));
        assert_eq!(parse_date("Xyz Aug  8 02:01:18 2050"), None);
        assert_eq!(parse_date("Thu Aug 32 02:01:18 2050"), None);
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
        assert!(etag_matches(b"\"x\", W/\"abc\xfc\"", b"\"abc\xfc\""), "obs-text, weak comparison");
        assert!(!etag_matches(b"\"abc\"", b"\"abd\""));
        let mut stored = HeaderMap::new();
        stored.insert(http::header::ETAG, HeaderValue::from_static("\"a\""));
        let mut not_modified = HeaderMap::new();
        assert!(!selects_stored(&not_modified, &stored), "no validator: nothing selected");
        not_modified.insert(http::header::ETAG, HeaderValue::from_static("W/\"a\""));
        assert!(selects_stored(&not_modified, &stored));
        not_modified.insert(http::header::ETAG, HeaderValue::from_static("\"b\""));
        assert!(!selects_stored(&not_modified, &stored));
        let mut h = cc(&["no-store"]);
        h.insert("cdn-cache-control", HeaderValue::from_static("max-age=600, stale-if-error=5"));
        assert_eq!(directive(&h, "max-age"), Some(Some(600)), "CDN-Cache-Control replaces Cache-Control");
        assert_eq!(directive(&h, "no-store"), None);
        for invalid in ["max-age=\"600\"", "max-age=600, &&&", "max-age =600", "max-age=-1"] {
            h.insert("cdn-cache-control", HeaderValue::from_static(invalid));
            assert_eq!(directive(&h, "no-store"), Some(None), "{invalid} is ignored as a whole");
        }
        for (date, good) in [
            ("THU, 18 Aug 2050 02:01:18 GMT", true),
            ("Thu, 18 AUG 2050 02:01:18 gMT", true),
            ("Thursday, 18-aug-50 02:01:18 GMT", true),
            ("sun Nov  6 08:49:37 1994", true),
            ("Thu, 18 Aug 2050 02:01:18 UTC", false),
            ("Thu, 18 Aug 2050 2:01:18 GMT", false),
            ("Thu, 18-Aug-2050 02:01:18 GMT", false),
        ] {
            assert_eq!(parse_date(date).is_some(), good, "{date}");
        }
    }

    /// The stored freshness summary answers exactly as the policy does, for
    /// the requests it covers, and covers nothing else.
    #[test]
    fn quick_fresh_agrees_with_the_policy() {
        use http_cache_semantics::BeforeRequest;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(t0);
        let past = httpdate::fmt_http_date(t0 - Duration::from_secs(50_000));
        let soon = httpdate::fmt_http_date(t0 + Duration::from_secs(90));
        let responses: Vec<Vec<(&str, String)>> = vec![
            vec![("cache-control", "max-age=60".into())],
            vec![("cache-control", "public, max-age=3600".into()), ("age", "100".into())],
            vec![("cache-control", "max-age=10".into()), ("age", "30".into())],
            vec![("cache-control", "s-maxage=20, max-age=5".into())],
            vec![("cache-control", "max-age=60, no-cache".into())],
            vec![("cache-control", "max-age=60, must-revalidate".into())],
            vec![("cache-control", "max-age=60, proxy-revalidate".into())],
            vec![("cache-control", "immutable".into()), ("date", date.clone())],
            vec![("expires", soon.clone()), ("date", date.clone())],
            vec![("expires", "0".into())],
            vec![("last-modified", past.clone()), ("date", date.clone())],
            vec![("cache-control", "max-age=60".into()), ("set-cookie", "a=b".into())],
            vec![("pragma", "no-cache".into())],
            vec![("cache-control", "max-age=60".into()), ("vary", "accept".into())],
            vec![("cache-control", "no-store, max-age=60".into())],
            vec![("cache-control", "max-age=99999999999999999999".into())],
            vec![("cdn-cache-control", "max-age=30".into()), ("cache-control", "no-store".into())],
        ];
        let requests: Vec<Vec<(&str, &str)>> = vec![
            vec![("host", "a.test")],
            vec![("host", "b.test")],
            vec![],
            vec![("host", "a.test"), ("cache-control", "max-age=5")],
            vec![("host", "a.test"), ("pragma", "no-cache")],
            vec![("host", "a.test"), ("accept", "text/html")],
        ];
        let opts = [CacheOptions::default(), CacheOptions { cache_heuristic: 0.5, ..CacheOptions::default() }];
        let mut covered = 0;
        for res in &responses {
            for status in [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::INTERNAL_SERVER_ERROR] {
                let mut headers = HeaderMap::new();
                for (n, v) in res {
                    headers.append(*n, HeaderValue::from_str(v).unwrap());
                }
                let mut stored_req = HeaderMap::new();
                stored_req.insert(http::header::HOST, HeaderValue::from_static("a.test"));
                let mut entry = Entry {
                    response_time: t0,
                    fetch_time: Duration::ZERO,
                    status,
                    req_headers: stored_req,
                    headers,
                    body: bytes::Bytes::new(),
                    freshness: None,
                };
                entry.summarize(&entry.policy(opts[0]), &opts[0]);
                let entry = Entry::decode(entry.encode()).unwrap();
                for o in &opts {
                    let policy = entry.policy(*o);
                    for req in &requests {
                        let mut rh = HeaderMap::new();
                        for (n, v) in req {
                            rh.append(*n, HeaderValue::from_static(v));
                        }
                        let (mut rp, ()) = http::Request::new(()).into_parts();
                        rp.headers = rh.clone();
                        for after in [0u64, 1, 5, 9, 19, 25, 59, 60, 61, 89, 90, 3000, 3499, 3500, 10_000, 200_000] {
                            for nanos in [0u32, 999_999_999] {
                                let now = t0 + Duration::new(after, nanos);
                                let view = request_view(&rp, &entry);
                                let fresh =
                                    matches!(policy.before_request(&Incoming(&view), now), BeforeRequest::Fresh(_));
                                let quick = entry.quick_fresh(&rp, o, now);
                                let case = format!("{res:?} {status} {req:?} +{after}.{nanos} {o:?}");
                                if let Some((age, ttl)) = quick {
                                    assert!(fresh, "{case}");
                                    assert_eq!(age, policy.age(now), "{case}");
                                    assert_eq!(ttl, policy.time_to_live(now), "{case}");
                                    covered += 1;
                                }
                                let plain = !rh.contains_key("cache-control")
                                    && !rh.contains_key("pragma")
                                    && !entry.headers.contains_key("vary")
                                    && rh.get("host") == entry.req_headers.get("host")
                                    && o.cache_heuristic == opts[0].cache_heuristic;
                                if plain && fresh {
                                    assert!(quick.is_some(), "not covered: {case}");
                                }
                                if entry.freshness.is_none() {
                                    assert!(quick.is_none());
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(covered > 100, "{covered}");
    }
}
