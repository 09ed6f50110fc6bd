//! The answer fields: IETF draft-10 `RateLimit-Policy` / `RateLimit` (built
//! with `sfv`), `Retry-After`, legacy `X-RateLimit-*`, and the 429 / gRPC answers.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use redlayer_core::{
    ResponseBody,
    problem::{GrpcCode, PROBLEM_JSON, Problem, grpc_response},
};
use sfv::{Integer, KeyRef, ListSerializer, StringRef};

use bytes::Bytes;

use crate::{Decision, PolicyStatus, decision::retry_after_secs, policy::is_plain_name};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn int(v: u64) -> Integer {
    Integer::try_from(v.min(MAX_SF_INT) as i64).unwrap_or(Integer::constant(0))
}

/// `RateLimit-Policy: "name";q=100;w=60, ...` of these policies.
pub(crate) fn policy_field(policies: &[crate::Policy]) -> Option<HeaderValue> {
    let mut list = ListSerializer::new();
    for p in policies {
        let _ = list
            .bare_item(StringRef::from_str(&p.name).ok()?)
            .parameter(KeyRef::constant("q"), int(p.quota.count()))
            .parameter(KeyRef::constant("w"), int(secs_ceil(p.quota.period()).max(1)));
    }
    HeaderValue::from_str(&list.finish()?).ok()
}

/// `RateLimit-Policy: "name";q=100;w=60, ...` and `RateLimit: "name";r=50;t=30, ...`.
pub(crate) fn fields(decision: &Decision) -> Option<(HeaderValue, HeaderValue)> {
    let policy = match &decision.policy_field {
        Some(field) => field.clone(),
        None => policy_field_of(decision.policies())?,
    };
    Some((policy, state_field(decision.policies())?))
}

/// `RateLimit-Policy` of the policies of a decision that does not report them all.
fn policy_field_of(statuses: &[PolicyStatus]) -> Option<HeaderValue> {
    let mut policy = ListSerializer::new();
    for p in statuses {
        let _ = policy
            .bare_item(StringRef::from_str(&p.name).ok()?)
            .parameter(KeyRef::constant("q"), int(p.quota.count()))
            .parameter(KeyRef::constant("w"), int(secs_ceil(p.quota.period()).max(1)));
    }
    HeaderValue::from_str(&policy.finish()?).ok()
}

/// `RateLimit: "name";r=50;t=30, ...`, written straight into one buffer: it
/// is built for every answer, so it skips the general serializer. Policy
/// names need no escaping (see [`is_plain_name`]); a test checks the field
/// against `sfv`'s.
fn state_field(statuses: &[PolicyStatus]) -> Option<HeaderValue> {
    debug_assert!(statuses.iter().all(|p| is_plain_name(&p.name)));
    let mut out = Vec::with_capacity(statuses.iter().map(|p| p.name.len() + 40).sum());
    for (i, p) in statuses.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.push(b'"');
        out.extend_from_slice(p.name.as_bytes());
        out.extend_from_slice(b"\";r=");
        push_int(&mut out, p.remaining.min(MAX_SF_INT));
        out.extend_from_slice(b";t=");
        push_int(&mut out, secs_ceil(p.reset).min(MAX_SF_INT));
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

#[cfg(test)]
fn state_field_sfv(statuses: &[PolicyStatus]) -> Option<HeaderValue> {
    let mut state = ListSerializer::new();
    for p in statuses {
        let _ = state
            .bare_item(StringRef::from_str(&p.name).ok()?)
            .parameter(KeyRef::constant("r"), int(p.remaining))
            .parameter(KeyRef::constant("t"), int(secs_ceil(p.reset)));
    }
    HeaderValue::from_str(&state.finish()?).ok()
}

/// The largest structured-field integer (15 digits).
const MAX_SF_INT: u64 = 999_999_999_999_999;

fn push_int(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes the fields of `decision` into `headers`. Fields already there (set
/// by another rate-limit layer nested inside this one) are kept: the
/// structured lists are joined, `Retry-After` and the legacy fields stay.
pub(crate) fn apply(headers: &mut HeaderMap, decision: &Decision, legacy: bool) {
    if let Some((policy, state)) = fields(decision) {
        join(headers, &RATELIMIT_POLICY, policy);
        join(headers, &RATELIMIT, state);
    }
    if let Some(wait) = decision.retry_after() {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    if legacy
        && !headers.contains_key("x-ratelimit-limit")
        && let Some(p) = decision.tightest()
    {
        headers.insert("x-ratelimit-limit", HeaderValue::from(p.quota.count()));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(p.remaining));
        let reset = p.retry_after.unwrap_or(p.reset);
        headers.insert("x-ratelimit-reset", HeaderValue::from(secs_ceil(reset)));
    }
}

/// Appends the members of `value` to the list field `name` (one field line).
fn join(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    // One lookup: the usual case is a response without the field.
    match headers.entry(name) {
        http::header::Entry::Vacant(slot) => {
            slot.insert(value);
        }
        http::header::Entry::Occupied(mut slot) => {
            // A list may come split over several field lines (RFC 9651 3.1): all are kept.
            let mut bytes = Vec::new();
            for line in slot.iter().filter(|line| !line.is_empty()) {
                bytes.extend_from_slice(line.as_bytes());
                bytes.extend_from_slice(b", ");
            }
            bytes.extend_from_slice(value.as_bytes());
            let joined = HeaderValue::from_bytes(&bytes).unwrap_or(value);
            // `insert` replaces every line of the field with the joined one.
            slot.insert(joined);
        }
    }
}

/// The answer to a denied request: 429 problem+json, or gRPC RESOURCE_EXHAUSTED.
pub(crate) fn denied<B>(decision: &Decision, grpc: bool, legacy: bool) -> Response<ResponseBody<B>> {
    let denied: Vec<&str> = decision.policies().iter().filter(|p| !p.allowed).map(|p| &*p.name).collect();
    let wait = decision.retry_after().map(retry_after_secs);
    let mut response = if grpc {
        let message = match wait {
            Some(s) => format!("rate limit exceeded ({}); retry after {s} s", denied.join(", ")),
            None => format!("rate limit exceeded ({}); the request costs more than the limit", denied.join(", ")),
        };
        grpc_response(GrpcCode::ResourceExhausted, &message)
    } else {
        // A flood of 429s is answered from the deny cache: no serializer, and
        // a header map sized for the fields added below.
        let mut response = Response::new(ResponseBody::full(problem_body(&denied, wait)));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        *response.headers_mut() = HeaderMap::with_capacity(8);
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    };
    apply(response.headers_mut(), decision, legacy);
    response
}

/// The 429 problem document (RFC 9457) through the general serializer: what
/// [`problem_body`] must write (checked by a test).
#[cfg(test)]
fn problem(denied: &[&str], wait: Option<u64>) -> Problem {
    let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED_TITLE)
        .type_uri(QUOTA_EXCEEDED)
        .detail(match wait {
            Some(s) => format!("Rate limit exceeded ({}). Retry after {s} second(s).", denied.join(", ")),
            None => format!("Rate limit exceeded ({}): this request costs more than the limit.", denied.join(", ")),
        })
        .extension("violated-policies", serde_json::Value::from(denied.to_vec()));
    if let Some(s) = wait {
        problem = problem.extension("retry_after", s);
    }
    problem
}

/// The problem type draft-10 (section 5.1) defines for a request over its quota.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
const QUOTA_EXCEEDED_TITLE: &str = "Request cannot be satisfied as assigned quota has been exceeded";

/// The 429 problem document (RFC 9457), written straight into one buffer:
/// policy names need no escaping (see [`is_plain_name`]).
fn problem_body(denied: &[&str], wait: Option<u64>) -> Bytes {
    debug_assert!(denied.iter().all(|name| is_plain_name(name)));
    let names: usize = denied.iter().map(|name| 2 * name.len() + 5).sum();
    let mut out = Vec::with_capacity(180 + names);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(QUOTA_EXCEEDED.as_bytes());
    out.extend_from_slice(br#"","title":""#);
    out.extend_from_slice(QUOTA_EXCEEDED_TITLE.as_bytes());
    out.extend_from_slice(br#"","status":429,"detail":"Rate limit exceeded ("#);
    for (i, name) in denied.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(name.as_bytes());
    }
    match wait {
        Some(s) => {
            out.extend_from_slice(b"). Retry after ");
            push_int(&mut out, s);
            out.extend_from_slice(b" second(s).\"");
        }
        None => out.extend_from_slice(b"): this request costs more than the limit.\""),
    }
    out.extend_from_slice(br#","violated-policies":["#);
    for (i, name) in denied.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
    }
    out.push(b']');
    if let Some(s) = wait {
        out.extend_from_slice(br#","retry_after":"#);
        push_int(&mut out, s);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// The answer when the store is down under fail-closed: 503 (gRPC UNAVAILABLE).
pub(crate) fn unavailable<B>(grpc: bool) -> Response<ResponseBody<B>> {
    let mut response = if grpc {
        grpc_response(GrpcCode::Unavailable, "rate limiter unavailable")
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            .detail("The rate limiter cannot decide right now; retry shortly.")
            .into_response()
    };
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(1u64));
    response
}

/// The answer to a request without a key under [`NoKey::Reject`](crate::NoKey::Reject).
pub(crate) fn no_key<B>(grpc: bool) -> Response<ResponseBody<B>> {
    if grpc {
        grpc_response(GrpcCode::InvalidArgument, "no rate-limit key (client identity) in the request")
    } else {
        Problem::new(StatusCode::BAD_REQUEST, "Bad Request")
            .detail("The request carries no rate-limit key (client identity).")
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PolicyStatus, Quota};

    fn decided(allowed: bool, policies: Vec<PolicyStatus>) -> Decision {
        Decision { allowed, policies, degraded: None, from_deny_cache: false, policy_field: None }
    }

    fn status(name: &str, quota: Quota, remaining: u64, reset_ms: u64, retry_ms: Option<u64>) -> PolicyStatus {
        PolicyStatus {
            name: name.into(),
            quota,
            allowed: retry_ms.is_none(),
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    /// No `Retry-After` when waiting cannot help: one denying policy can
    /// never fit the request, however long another one asks to wait.
    #[test]
    fn no_retry_after_when_a_denying_policy_never_fits() {
        let decision = decided(
            false,
            vec![
                status("burst", Quota::per_second(10), 0, 100, Some(1)),
                PolicyStatus { allowed: false, ..status("tiny", Quota::per_second(1), 0, 100, None) },
            ],
        );
        let mut headers = HeaderMap::new();
        apply(&mut headers, &decision, false);
        assert!(headers.get("retry-after").is_none(), "{headers:?}");
    }

    #[test]
    fn draft_10_fields_list_every_policy() {
        let decision = decided(
            false,
            vec![
                status("burst", Quota::per_second(10), 0, 100, Some(1)),
                status("daily", Quota::per_day(1000), 950, 3_600_500, None),
            ],
        );
        let mut headers = HeaderMap::new();
        apply(&mut headers, &decision, true);
        assert_eq!(headers["ratelimit-policy"], r#""burst";q=10;w=1, "daily";q=1000;w=86400"#);
        assert_eq!(headers["ratelimit"], r#""burst";r=0;t=1, "daily";r=950;t=3601"#);
        assert_eq!(headers["retry-after"], "1", "1 ms of wait is 1 s, never 0");
        assert_eq!(headers["x-ratelimit-limit"], "10");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "1");
        // An outer layer adds its policies to the lists of an inner one.
        let outer = decided(true, vec![status("outer", Quota::per_minute(60), 59, 1000, None)]);
        apply(&mut headers, &outer, true);
        assert_eq!(headers["ratelimit"], r#""burst";r=0;t=1, "daily";r=950;t=3601, "outer";r=59;t=1"#);
        // An inner list split over two field lines keeps both.
        let mut split = HeaderMap::new();
        split.append("ratelimit", HeaderValue::from_static(r#""a";r=1;t=1"#));
        split.append("ratelimit", HeaderValue::from_static(r#""b";r=2;t=2"#));
        apply(&mut split, &outer, false);
        assert_eq!(split.get_all("ratelimit").iter().count(), 1);
        assert_eq!(split["ratelimit"], r#""a";r=1;t=1, "b";r=2;t=2, "outer";r=59;t=1"#);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["x-ratelimit-limit"], "10");
    }

    #[test]
    fn the_direct_state_field_is_what_sfv_writes() {
        let mut statuses = Vec::new();
        for (i, (remaining, reset_ms)) in
            [(0, 0), (1, 1), (9, 999), (10, 1000), (12345, 1001), (u64::MAX, u64::MAX / 2)].into_iter().enumerate()
        {
            statuses.push(status(&format!("p-{i}.x_y"), Quota::per_second(10), remaining, reset_ms, None));
            assert_eq!(state_field(&statuses), state_field_sfv(&statuses), "{statuses:?}");
        }
        assert!(state_field(&statuses).is_some());
    }

    #[test]
    fn the_direct_problem_body_is_what_the_serializer_writes() {
        for denied in [vec!["a"], vec!["per-second", "daily.quota_2"]] {
            for wait in [None, Some(1), Some(86_400)] {
                let direct = problem_body(&denied, wait);
                assert_eq!(direct, problem(&denied, wait).to_json(), "{denied:?} {wait:?}");
                serde_json::from_slice::<serde_json::Value>(&direct).expect("valid JSON");
            }
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(12)), 12);
    }
}
