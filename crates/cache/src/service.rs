//! [`Cache`]: the cache service, and the decision flow of one request.

use std::{
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use http_cache_semantics::{BeforeRequest, CachePolicy};
use redlayer_core::{FailurePolicy, report_degraded};
use tower_service::Service;

use crate::{
    body::{CacheBody, Collected, Collector},
    entry::Entry,
    flight::{self, FlightGuard, Join, RefreshMark, Waited},
    future::ResponseFuture,
    key::{normalized_uri, vary_spec},
    layer::{Config, State},
    policy::{self, Incoming, Res},
    reference,
    status::CacheStatus,
};

/// What a fill holds until its entry is stored: the in-process flight (its
/// waiters get the entry) and the cross-instance fill lock; and whether an
/// unstorable response leaves a hit-for-pass marker.
#[derive(Default)]
pub(crate) struct Guards {
    flight: Option<FlightGuard>,
    lock: Option<redlayer_lock::LockGuard>,
    mark_pass: bool,
}

impl Guards {
    /// The fill ends without an entry to share: the waiters go to the origin
    /// themselves (a dropped `Guards` tells them to join again instead).
    fn not_shareable(mut self) {
        if let Some(flight) = self.flight.take() {
            flight.finish(None);
        }
    }
}

/// A look at the store while coalescing.
enum Probe {
    Fresh(Arc<Entry>),
    /// A hit-for-pass marker: go to the origin without waiting.
    Pass,
    Miss,
    Failed,
}

/// How cross-instance coalescing ended.
enum Across {
    /// Go to the origin, holding the fill lock if taken.
    Fill(Option<redlayer_lock::LockGuard>),
    /// Found in the store right after taking the lock (a fill just ended).
    Hit(Arc<Entry>),
    /// Found in the store while waiting for another instance's fill.
    Collapsed(Arc<Entry>),
    /// The key is hit-for-pass: go to the origin without the lock.
    Pass,
}

/// Most tags taken from one response, and the longest tag kept.
const MAX_TAGS: usize = 32;
/// The longest primary key (`GET <normalized uri>`, the `Host` in it) cached:
/// longer requests pass through (`fwd=bypass; detail=key-too-long`).
const MAX_PRIMARY_KEY: usize = 32 * 1024;
/// How long an entry without a validator is kept past its freshness.
const GRACE: Duration = Duration::from_secs(10);
const MAX_TAG_LEN: usize = 256;

/// The cache middleware; built by [`CacheLayer`](crate::CacheLayer).
pub struct Cache<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl<S: Clone> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Cache { inner: self.inner.clone(), config: self.config.clone(), state: self.state.clone() }
    }
}

impl<S> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("store", &self.state.store).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = Ctx { config: self.config.clone(), state: self.state.clone() };
        // gRPC calls (POSTs whose answers live in trailers) are not HTTP
        // resources this cache stores or invalidates: straight through. Only
        // POSTs: another method with a gRPC content type is no gRPC call, and
        // a PUT or DELETE still invalidates.
        let grpc = req.method() == Method::POST && redlayer_core::problem::is_grpc(req.headers());
        match *req.method() {
            _ if grpc => ResponseFuture::passthrough(inner.call(req), self.config.status_arc.clone()),
            Method::GET | Method::HEAD => ResponseFuture::flow(Box::pin(ctx.cacheable(inner, req))),
            Method::OPTIONS | Method::TRACE | Method::CONNECT => {
                ResponseFuture::passthrough(inner.call(req), self.config.status_arc.clone())
            }
            _ => ResponseFuture::flow(Box::pin(ctx.unsafe_method(inner, req))),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Ctx {
    pub config: Arc<Config>,
    pub state: Arc<State>,
}

/// What a fill needs to store the response once its body is complete.
struct Plan {
    entry: Entry,
    key: String,
    uri: String,
    spec: String,
    /// The variant id of the request that fetched the entry
    /// ([`variant_id`](crate::key::variant_id) of its headers as sent).
    variant: String,
    ttl: Duration,
    tags: Vec<String>,
    /// The purge epoch, the invalidation number and the entry's generation
    /// when the fill started.
    epoch: u64,
    invalidations: u64,
    generation: Option<u64>,
    started: std::time::Instant,
}

/// The purge epoch and the invalidation number when a request was sent on:
/// a response is not stored when a purge or an invalidation of its key came
/// while it was on its way. Those are this process's; across instances, the
/// entry's generation when it was looked up (checked by the store script).
#[derive(Clone, Copy)]
struct Snapshot {
    epoch: u64,
    invalidations: u64,
    generation: Option<u64>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// An invalidation that failed (Redis slow, or this instance backing off
/// after an error) is tried again 1, 2 and 4 s later: the entry would
/// otherwise be served, on every instance, until its freshness ends.
fn retry_invalidation(store: crate::Store, mut keys: Vec<String>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    rt.spawn(async move {
        let mut wait = INVALIDATION_RETRY;
        for _ in 0..3 {
            tokio::time::sleep(wait).await;
            keys = delete_entries(&store, keys).await;
            if keys.is_empty() {
                return;
            }
            wait *= 2;
        }
        tracing::warn!(target: "redlayer", keys = keys.len(), "cache: invalidated entries could not be deleted");
    });
}

/// Deletes the entries `keys`; returns those that could not be deleted.
async fn delete_entries(store: &crate::Store, keys: Vec<String>) -> Vec<String> {
    let mut failed = Vec::new();
    for key in keys {
        if store.delete_entry_key(&key).await.is_err() {
            failed.push(key);
        }
    }
    failed
}

/// How long after a failed invalidation it is first tried again (past the store's back-off).
const INVALIDATION_RETRY: Duration = Duration::from_secs(1);

fn secs(d: Duration) -> i64 {
    d.as_secs().min(i64::MAX as u64) as i64
}

/// The entry's remaining freshness in seconds, negative once stale.
fn signed_ttl(policy: &CachePolicy, entry: &Entry, at: SystemTime) -> i64 {
    let ttl = policy.time_to_live(at);
    // Stale by a fraction of a second is stale: -1, not 0.
    let stale_by = policy::staleness(policy, entry.response_time, at);
    if ttl.is_zero() { -secs(stale_by.saturating_add(Duration::from_nanos(999_999_999))) } else { secs(ttl) }
}

impl Ctx {
    fn primary(&self, parts: &Parts, ns_parts: &Parts) -> Option<String> {
        let base = (self.config.key_fn)(parts)?;
        match &self.config.namespace {
            Some(ns) => ns(ns_parts).map(|ns| format!("{ns}|{base}")).or(Some(base)),
            None => Some(base),
        }
    }

    fn write_status<B>(&self, res: &mut Response<B>, status: &CacheStatus) {
        status.write(&self.config.status_name, res.headers_mut());
    }

    fn bare<B>(&self, code: StatusCode, status: CacheStatus) -> Response<CacheBody<B>> {
        let mut res = Response::new(CacheBody::empty());
        *res.status_mut() = code;
        res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        self.write_status(&mut res, &status);
        res
    }

    /// The 504 of a request that may not go to the origin (`only-if-cached`):
    /// no `fwd` in its `Cache-Status`, since nothing was forwarded.
    fn unforwarded_504<B>(&self, detail: &'static str) -> Response<CacheBody<B>> {
        self.bare(StatusCode::GATEWAY_TIMEOUT, CacheStatus::default().detail(detail))
    }

    /// Builds the response from a stored entry (consumed: its headers become
    /// the response's), `age` being the entry's current age.
    fn serve<B>(&self, entry: Entry, age: Duration, parts: &Parts, status: CacheStatus) -> Response<CacheBody<B>> {
        // Conditionals only apply to a 2xx selected representation (RFC 9110 13.2.1).
        let not_modified = entry.status.is_success() && policy::client_not_modified(parts, &entry.headers);
        let range = if not_modified { None } else { policy::served_range(parts, &entry) };
        let Entry { status: stored_status, mut headers, body: stored_body, .. } = entry;
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
        let (code, body) = if not_modified {
            headers.remove(header::CONTENT_LENGTH);
            (StatusCode::NOT_MODIFIED, CacheBody::empty())
        } else if let Some((first, last)) = range {
            // A byte range of a complete stored response (RFC 9110 14.2, RFC 9111 3.4).
            let total = stored_body.len();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            if let Ok(range) = HeaderValue::from_str(&format!("bytes {first}-{last}/{total}")) {
                headers.insert(header::CONTENT_RANGE, range);
            }
            let body = if parts.method == Method::HEAD {
                CacheBody::empty()
            } else {
                CacheBody::full(stored_body.slice(first..=last))
            };
            (StatusCode::PARTIAL_CONTENT, body)
        } else if parts.method == Method::HEAD {
            (stored_status, CacheBody::empty())
        } else {
            (stored_status, CacheBody::full(stored_body))
        };
        let mut res = Response::new(body);
        *res.status_mut() = code;
        *res.headers_mut() = headers;
        self.write_status(&mut res, &status);
        res
    }

    async fn cacheable<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let (parts, body) = req.into_parts();
        let Some(primary) = self.primary(&parts, &parts) else {
            let res = inner.call(Request::from_parts(parts, body)).await?;
            return Ok(self.pass(res, CacheStatus::fwd("bypass").detail("no-key")));
        };
        if crate::key::request_authority(&parts).is_none() {
            // `GET http://a.test/ HTTP/1.1` with `Host: b.test`: the key says
            // one site, the handler may answer for the other.
            let res = inner.call(Request::from_parts(parts, body)).await?;
            return Ok(self.pass(res, CacheStatus::fwd("bypass").detail("host-mismatch")));
        }
        if primary.len() > MAX_PRIMARY_KEY {
            // The key's URI is stored in the entry (for purges by prefix): a
            // client's 300 KB Host or query is not kept in Redis.
            let res = inner.call(Request::from_parts(parts, body)).await?;
            return Ok(self.pass(res, CacheStatus::fwd("bypass").detail("key-too-long")));
        }
        let key = self.state.store.entry_key(&primary);
        // The request's Cache-Control, parsed once.
        let request_cc = policy::parse_cc(&parts.headers);
        let only_if_cached = request_cc.iter().any(|d| d.name == "only-if-cached");
        if request_cc.iter().any(|d| d.name == "no-store") {
            if only_if_cached {
                // Never forwarded (RFC 9111 5.2.1.7); with no-store, not served from the store either.
                return Ok(self.unforwarded_504("only-if-cached"));
            }
            // Nothing of this exchange may be stored; answer it from the origin.
            let res = inner.call(Request::from_parts(parts, body)).await?;
            return Ok(self.pass(res, CacheStatus::fwd("request").detail("no-store")));
        }
        drop(request_cc);
        let (found, pass, generation, fwd) = match self.state.store.lookup(&key, &parts.headers).await {
            Ok(looked) => {
                let pass = looked.pass(self.config.hit_for_pass);
                let fwd = if looked.vary_miss { "vary-miss" } else { "uri-miss" };
                (looked.found.and_then(|f| Entry::decode(f.value)), pass, looked.generation, fwd)
            }
            Err(e) => {
                report_degraded("cache", FailurePolicy::FailOpen, &e);
                if only_if_cached {
                    return Ok(self.unforwarded_504("store-unavailable"));
                }
                let res = inner.call(Request::from_parts(parts, body)).await?;
                return Ok(self.pass(res, CacheStatus::fwd("bypass").detail("store-unavailable")));
            }
        };
        let at = now();
        let Some(entry) = found else {
            if only_if_cached {
                return Ok(self.unforwarded_504("only-if-cached"));
            }
            return self.miss(inner, parts, body, generation, key, pass, fwd).await;
        };
        // The common fresh hit, from the stored freshness summary: the same
        // answer the policy gives, without rebuilding it.
        if let Some((age, ttl)) = entry.quick_fresh(&parts, &self.config.opts, at) {
            self.maybe_xfetch(&inner, &entry, None, ttl, &parts, &key, generation);
            let status = CacheStatus::hit(secs(ttl));
            return Ok(self.serve(entry, age, &parts, status));
        }
        let policy = entry.policy(self.config.opts);
        let req_view = policy::request_view(&parts, &entry);
        match policy.before_request(&Incoming(&req_view), at) {
            BeforeRequest::Fresh(_) => {
                let left = policy.time_to_live(at);
                self.maybe_xfetch(&inner, &entry, Some(&policy), left, &parts, &key, generation);
                // Fresh to this request, possibly stale (`max-stale`): then a negative ttl (RFC 9211 2.5).
                let status = CacheStatus::hit(signed_ttl(&policy, &entry, at));
                Ok(self.serve(entry, policy.age(at), &parts, status))
            }
            BeforeRequest::Stale { request, matches } => {
                let stale_by = policy::staleness(&policy, entry.response_time, at);
                if matches
                    && !policy::forbids_stale(&entry.headers)
                    && !policy::request_limits_staleness(&parts.headers)
                    && policy::directive(&entry.headers, "stale-while-revalidate")
                        .flatten()
                        .is_some_and(|w| stale_by < Duration::from_secs(w))
                {
                    self.refresh_in_background(inner, &entry, &policy, &parts, &key, generation);
                    let mut status = CacheStatus::hit(-secs(stale_by)).detail("stale-while-revalidate");
                    status.ttl = Some(-secs(stale_by));
                    return Ok(self.serve(entry, policy.age(at), &parts, status));
                }
                if only_if_cached {
                    return Ok(self.unforwarded_504("only-if-cached"));
                }
                let fwd = if policy.is_stale(at) { "stale" } else { "request" };
                let (request_time, since) = (now(), self.snapshot(Some(generation)));
                let client = clone_parts(&parts);
                // Kept for a second request (see below).
                let extensions = parts.extensions.clone();
                let mut parts = parts;
                let mut revalidating = matches && policy::has_validator(&entry.headers);
                if revalidating {
                    // The client's request as it came (every line of a
                    // repeated field, its own Cache-Control), with the
                    // validators the policy chose (the stored ones added to
                    // the client's).
                    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_RANGE] {
                        parts.headers.remove(&name);
                    }
                    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                        for value in request.headers.get_all(&name) {
                            parts.headers.append(name.clone(), value.clone());
                        }
                    }
                }
                let mut res = inner.call(Request::from_parts(parts, body)).await?;
                if revalidating
                    && res.status() == StatusCode::NOT_MODIFIED
                    && !policy::is_conditional(&client.headers)
                    && res.headers().contains_key(header::ETAG)
                    && !policy::selects_stored(res.headers(), &entry.headers)
                {
                    // A 304 naming a representation this cache does not hold
                    // (another strong ETag) updates nothing (RFC 9111 4.3.4),
                    // and the client asked for a whole response: ask again,
                    // without validators.
                    revalidating = false;
                    let mut again = clone_parts(&client);
                    again.extensions = extensions;
                    for name in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING] {
                        again.headers.remove(name);
                    }
                    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    res = inner.call(Request::from_parts(again, ReqBody::default())).await?;
                }
                Ok(self.after_forward(
                    res,
                    entry,
                    policy,
                    client,
                    (request_time, since),
                    &key,
                    fwd,
                    revalidating,
                    stale_by,
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn after_forward<ResBody>(
        &self,
        res: Response<ResBody>,
        entry: Entry,
        policy: CachePolicy,
        client: Parts,
        (request_time, since): (SystemTime, Snapshot),
        key: &str,
        fwd: &'static str,
        revalidating: bool,
        stale_by: Duration,
    ) -> Response<CacheBody<ResBody>>
    where
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let response_time = now();
        let code = res.status();
        // Disconnected from the origin (RFC 9111 4.2.4): stale unless forbidden.
        if res.extensions().get::<crate::OriginUnreachable>().is_some()
            && !policy::forbids_stale(&entry.headers)
            && !policy::request_limits_staleness(&client.headers)
        {
            let mut status = CacheStatus::fwd("stale").detail("origin-unreachable");
            status.fwd_status = Some(code.as_u16());
            status.ttl = Some(-secs(stale_by));
            return self.serve(entry, policy.age(response_time), &client, status);
        }
        // stale-if-error: the origin failed; serve the stale entry if allowed.
        if matches!(code.as_u16(), 500 | 502 | 503 | 504) && !policy::forbids_stale(&entry.headers) {
            let window = policy::directive(&client.headers, "stale-if-error").flatten().or(policy::directive(
                &entry.headers,
                "stale-if-error",
            )
            .flatten());
            if window.is_some_and(|w| stale_by < Duration::from_secs(w)) {
                let mut status = CacheStatus::fwd("stale").detail("stale-if-error");
                status.fwd_status = Some(code.as_u16());
                status.ttl = Some(-secs(stale_by));
                return self.serve(entry, policy.age(response_time), &client, status);
            }
        }
        if revalidating && code == StatusCode::NOT_MODIFIED {
            let (rparts, _body) = res.into_parts();
            // Which stored response does the 304 validate (RFC 9111 4.3.4)? When the
            // client sent no validators of its own, only the stored entry's were
            // sent, so the 304 can only be about it (even when it carries no
            // validator, as many origins do); otherwise its validators must match.
            if !policy::is_conditional(&client.headers) || policy::selects_stored(&rparts.headers, &entry.headers) {
                // Update the stored headers with those of the 304 (RFC 9111 4.3.4).
                let times = (request_time, response_time, since);
                return self.serve_updated(&entry, &rparts.headers, &client, times, key, fwd, 304);
            }
            // A 304 for the client's own validators, not ours: pass it on.
            let res = Response::from_parts(rparts, _body);
            let mut status = CacheStatus::fwd(fwd);
            status.fwd_status = Some(304);
            return self.pass(res, status);
        }
        if client.method == Method::HEAD && code == StatusCode::OK && entry.status == StatusCode::OK {
            let (rparts, body) = res.into_parts();
            let agrees = policy::head_agrees(&rparts.headers, &entry);
            if agrees == Some(true) {
                // A 200 to a HEAD updates the stored GET response it could have
                // chosen (RFC 9111 4.3.5), as a 304 would.
                let times = (request_time, response_time, since);
                return self.serve_updated(&entry, &rparts.headers, &client, times, key, fwd, 200);
            }
            // Other validators: another representation now, the stored one
            // is outdated (4.3.5). A length alone that differs (some origins
            // send `Content-Length: 0` to HEAD) neither updates nor drops it.
            if agrees == Some(false) {
                self.spawn_invalidate(key);
            }
            let res = Response::from_parts(rparts, body);
            let mut status = CacheStatus::fwd(fwd);
            status.fwd_status = Some(200);
            return self.pass(res, status);
        }
        let mut status = CacheStatus::fwd(fwd);
        status.fwd_status = Some(code.as_u16());
        let method = client.method.clone();
        self.fill(res, &client, method, key, (request_time, since), Guards::default(), status)
    }

    /// Deletes the entries `keys` in a task of its own, awaited: an
    /// invalidation due to a successful unsafe request still happens, every
    /// key of it, when the request is dropped meanwhile. False when one failed.
    async fn delete_detached(&self, keys: Vec<String>) -> bool {
        let store = self.state.store.clone();
        let delete = async move {
            let failed = delete_entries(&store, keys).await;
            let all = failed.is_empty();
            if !all {
                retry_invalidation(store, failed);
            }
            all
        };
        redlayer_core::run_detached(delete).await.unwrap_or(false)
    }

    /// Deletes the entries under `key` (in the background; tried again
    /// later if that fails, see [`retry_invalidation`]).
    fn spawn_invalidate(&self, key: &str) {
        self.state.invalidated.record(key);
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (store, key) = (self.state.store.clone(), key.to_owned());
        rt.spawn(async move {
            let failed = delete_entries(&store, vec![key]).await;
            if !failed.is_empty() {
                retry_invalidation(store, failed);
            }
        });
    }

    /// Answers with `entry` updated by the header fields of a 304 or of a
    /// 200 to a HEAD (`code`), and stores the update when it may be stored.
    /// The answer's own `Set-Cookie` goes to this client only.
    #[allow(clippy::too_many_arguments)]
    fn serve_updated<B>(
        &self,
        entry: &Entry,
        new: &HeaderMap,
        client: &Parts,
        (request_time, response_time, since): (SystemTime, SystemTime, Snapshot),
        key: &str,
        fwd: &'static str,
        code: u16,
    ) -> Response<CacheBody<B>> {
        let updated = freshened(entry, new, request_time, response_time, self.config.replay_set_cookie);
        let new_policy = updated.policy(self.config.opts);
        let mut status = CacheStatus::fwd(fwd);
        status.fwd_status = Some(code);
        if let Some(plan) = self.plan_for_update(&updated, key, client, since) {
            status.stored = true;
            self.spawn_store(plan, updated.body.clone(), Guards::default());
        }
        status.ttl = Some(secs(new_policy.time_to_live(response_time)));
        let mut res = self.serve(updated, new_policy.age(response_time), client, status);
        // Replayed cookies are in the updated entry already (the 304's replace the stored ones).
        if !self.config.replay_set_cookie {
            for cookie in new.get_all(header::SET_COOKIE) {
                res.headers_mut().append(header::SET_COOKIE, cookie.clone());
            }
        }
        res
    }

    fn snapshot(&self, generation: Option<u64>) -> Snapshot {
        Snapshot {
            epoch: self.state.epoch.load(Ordering::SeqCst),
            invalidations: self.state.invalidated.current(),
            generation,
        }
    }

    /// The plan to store `entry` with the header fields of a 304 or of a 200
    /// to a HEAD: `None` when they make it unstorable for this request, and
    /// the stored entry dropped when that is not only for its credentials
    /// (`no-store`, `private`).
    fn plan_for_update(&self, entry: &Entry, key: &str, client: &Parts, since: Snapshot) -> Option<Plan> {
        let (status, res_view) = policy::response_view(entry.status, &entry.headers);
        let storable = |req_headers: &HeaderMap| {
            let req_view = policy::policy_view(req_headers);
            let res = Res { status, headers: &res_view };
            CachePolicy::new_options(&Incoming(&req_view), &res, entry.response_time, self.config.opts).is_storable()
                && policy::authorization_allows_storing(req_headers, &entry.headers)
        };
        if !storable(&client.headers) {
            // The origin now says `no-store` or `private`: the entry goes. Only
            // credentials in this request: it stays as it was.
            let mut anonymous = client.headers.clone();
            anonymous.remove(header::AUTHORIZATION);
            if !storable(&anonymous) {
                self.spawn_invalidate(key);
            }
            return None;
        }
        let spec = vary_spec(&entry.headers)?;
        let uri = normalized_uri(client);
        if uri.len() > MAX_PRIMARY_KEY {
            return None;
        }
        let policy = entry.policy(self.config.opts);
        let ttl = self.keep_for(&policy, entry)?;
        let mut stored = Entry { body: Bytes::new(), ..entry.clone() };
        stored.summarize(&policy, &self.config.opts);
        Some(Plan {
            entry: stored,
            key: key.to_owned(),
            uri,
            variant: crate::key::variant_id(&spec, &client.headers),
            spec,
            ttl,
            tags: self.tags(&entry.headers),
            epoch: since.epoch,
            invalidations: since.invalidations,
            generation: since.generation,
            started: std::time::Instant::now(),
        })
    }

    /// How long to keep an entry in the store, or `None` when not worth storing.
    fn keep_for(&self, policy: &CachePolicy, entry: &Entry) -> Option<Duration> {
        let fresh = policy.time_to_live(entry.response_time);
        let windows = ["stale-while-revalidate", "stale-if-error"]
            .iter()
            .filter_map(|d| policy::directive(&entry.headers, d).flatten())
            .max()
            .unwrap_or(0);
        // Kept past freshness: with a validator, to revalidate it; without one,
        // a short grace (as Varnish's default 10 s) to answer stale while the
        // origin is unreachable (`OriginUnreachable`), if it was fresh at all.
        let retention = if policy::has_validator(&entry.headers) {
            self.config.stale_retention
        } else if !fresh.is_zero() {
            self.config.stale_retention.min(GRACE)
        } else {
            // Never fresh and nothing to revalidate with: not worth storing.
            Duration::ZERO
        };
        let keep = fresh.saturating_add(Duration::from_secs(windows)).saturating_add(retention);
        (!keep.is_zero()).then_some(keep)
    }

    fn tags(&self, headers: &HeaderMap) -> Vec<String> {
        let Some(name) = &self.config.tag_header else { return Vec::new() };
        let mut tags: Vec<String> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ' ']))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN)
            .map(str::to_owned)
            .collect();
        tags.sort();
        tags.dedup();
        tags.truncate(MAX_TAGS);
        tags
    }

    /// Decides whether a fresh origin response may be stored, and how.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        client: &Parts,
        method: &Method,
        uri: String,
        key: &str,
        res: &http::response::Parts,
        request_time: SystemTime,
        response_time: SystemTime,
        since: Snapshot,
    ) -> Option<Plan> {
        // The URI is stored with the entry (purges by URI and prefix read it):
        // a custom key may be short while the URI is not.
        if method != Method::GET || uri.len() > MAX_PRIMARY_KEY {
            return None;
        }
        if res.headers.contains_key(header::SET_COOKIE)
            && !self.config.store_set_cookie
            && !self.config.replay_set_cookie
        {
            return None;
        }
        if res
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > self.config.max_body)
        {
            return None;
        }
        let (status, res_view) = policy::response_view(res.status, &res.headers);
        let req_headers = &client.headers;
        let req_view = policy::policy_view(req_headers);
        let policy = CachePolicy::new_options(
            &Incoming(&req_view),
            &Res { status, headers: &res_view },
            response_time,
            self.config.opts,
        );
        if !policy.is_storable() || !policy::authorization_allows_storing(req_headers, &res.headers) {
            return None;
        }
        let spec = vary_spec(&res.headers)?;
        let mut headers = policy::storable_headers(&res.headers);
        for name in policy::qualified_fields(&res.headers) {
            headers.remove(name.as_str());
        }
        if !self.config.replay_set_cookie {
            headers.remove(header::SET_COOKIE);
        }
        headers.remove("cache-status");
        headers.insert(header::AGE, HeaderValue::from(policy::initial_age(&res.headers, request_time, response_time)));
        if !headers.contains_key(header::DATE)
            && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time))
        {
            headers.insert(header::DATE, date);
        }
        let mut stored_req = HeaderMap::new();
        // The normalized authority, as hits compare it (see `request_view`).
        let authority = crate::key::request_authority(client)?;
        stored_req.insert(header::HOST, HeaderValue::from_str(&authority).ok()?);
        if !spec.is_empty() {
            // `Host` is stored once, normalized, above (`Vary: Host` compares that).
            for name in spec.split(',').filter(|name| *name != "host") {
                if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                    for v in req_headers.get_all(&name) {
                        stored_req.append(name.clone(), v.clone());
                    }
                }
            }
            crate::key::normalize_selecting(&spec, &mut stored_req);
        }
        let mut entry = Entry {
            response_time,
            fetch_time: response_time.duration_since(request_time).unwrap_or_default(),
            status: res.status,
            req_headers: stored_req,
            headers,
            body: Bytes::new(),
            freshness: None,
        };
        let policy = entry.policy(self.config.opts);
        let ttl = self.keep_for(&policy, &entry)?;
        entry.summarize(&policy, &self.config.opts);
        Some(Plan {
            tags: self.tags(&entry.headers),
            entry,
            key: key.to_owned(),
            uri,
            variant: crate::key::variant_id(&spec, &client.headers),
            spec,
            ttl,
            epoch: since.epoch,
            invalidations: since.invalidations,
            generation: since.generation,
            started: std::time::Instant::now(),
        })
    }

    /// Wraps an origin response: when storable, its body streams to the
    /// client while a copy is collected and then stored (and handed to the
    /// waiters of `guard`).
    #[allow(clippy::too_many_arguments)]
    fn fill<ResBody>(
        &self,
        res: Response<ResBody>,
        client: &Parts,
        method: Method,
        key: &str,
        (request_time, since): (SystemTime, Snapshot),
        guard: Guards,
        mut status: CacheStatus,
    ) -> Response<CacheBody<ResBody>>
    where
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let response_time = now();
        let (rparts, body) = res.into_parts();
        let uri = normalized_uri(client);
        let plan = self.plan(client, &method, uri, key, &rparts, request_time, response_time, since);
        status.fwd_status = Some(rparts.status.as_u16());
        let mut res = match plan {
            Some(plan) => {
                status.stored = true;
                // The body's exact length, or its Content-Length (a server
                // stops polling a body once that much is written).
                let exact = body
                    .size_hint()
                    .exact()
                    .or_else(|| rparts.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse::<u64>().ok());
                let ctx = self.clone();
                let collector = Collector::new(
                    self.config.max_body,
                    exact,
                    Box::new(move |collected| match collected {
                        Collected::Body(body) => ctx.spawn_store(plan, body, guard),
                        Collected::TooLarge => guard.not_shareable(),
                        // The client went away (or the body failed): a waiter leads a new fill.
                        Collected::Cut => drop(guard),
                    }),
                );
                Response::from_parts(rparts, CacheBody::tee(body, collector))
            }
            None => {
                if guard.mark_pass && method == Method::GET && !self.config.hit_for_pass.is_zero() {
                    self.spawn_mark_pass(key, client, guard);
                } else {
                    guard.not_shareable();
                }
                Response::from_parts(rparts, CacheBody::inner(body))
            }
        };
        self.write_status(&mut res, &status);
        res
    }

    /// Marks `key` hit-for-pass (in the background). The in-process waiters
    /// go to the origin at once; the fill lock is released after the marker
    /// is written, so that other instances' waiters see it.
    fn spawn_mark_pass(&self, key: &str, client: &Parts, guard: Guards) {
        let Guards { flight, lock, .. } = guard;
        if let Some(flight) = flight {
            flight.finish(None);
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (store, key, uri, ttl) =
            (self.state.store.clone(), key.to_owned(), normalized_uri(client), self.config.hit_for_pass);
        if uri.len() > MAX_PRIMARY_KEY {
            // Not kept in the store (see `plan`): no marker either.
            return;
        }
        rt.spawn(async move {
            if let Err(e) = store.mark_pass(&key, &uri, ttl).await {
                tracing::debug!(target: "redlayer", %e, "cache: hit-for-pass marker not stored");
            }
            drop(lock);
        });
    }

    /// Stores a completed entry (in the background) and hands it to waiters.
    fn spawn_store(&self, plan: Plan, body: Bytes, guard: Guards) {
        if self.state.epoch.load(Ordering::SeqCst) != plan.epoch
            || self.state.invalidated.since(&plan.key, plan.invalidations)
            || plan.started.elapsed() >= crate::layer::INVALIDATION_MEMORY
        {
            // A purge, or an invalidation of this key, happened while this fill ran.
            guard.not_shareable();
            return;
        }
        let entry = Arc::new(Entry { body, ..plan.entry });
        let Guards { flight, lock, .. } = guard;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            if let Some(flight) = flight {
                flight.finish(Some(entry));
            }
            return;
        };
        let store = self.state.store.clone();
        rt.spawn(async move {
            // Tags first, all at once (they pipeline on one connection): once
            // the entry can be found, a purge of any of its tags finds it too.
            // A tag left by a failed store names a key that is not there: a
            // purge deletes nothing for it. An entry that could not be
            // indexed under one of its tags is not stored: a purge of that
            // tag would miss it.
            let tagging = plan.tags.iter().map(|tag| store.add_tag(tag, &plan.key, plan.ttl));
            let untagged = futures_util::future::join_all(tagging).await.into_iter().find_map(Result::err);
            let stored = match untagged {
                Some(e) => Err(e),
                None => {
                    let value = entry.encode();
                    store.put(&plan.key, &plan.uri, &plan.spec, &plan.variant, value, plan.ttl, plan.generation).await
                }
            };
            if stored.as_ref().is_ok_and(|stored| !stored) {
                tracing::debug!(target: "redlayer", "cache: entry invalidated during the fill; not stored");
            }
            if stored.as_ref().is_ok_and(|stored| *stored) && !store.tags_hold(&plan.key, &plan.tags) {
                // A memory tag index let go of it meanwhile: a purge would miss it.
                let _ = store.delete_entry_key(&plan.key).await;
            }
            // The flight ends once the entry is in the store (or failed to get
            // there): a request arriving in between joins it instead of missing
            // the store and going to the origin again.
            if let Some(flight) = flight {
                flight.finish(Some(entry.clone()));
            }
            // Only now (entry stored, or the store failed) is the fill lock
            // released: another instance that takes it next looks up the
            // store first, and finds the entry.
            drop(lock);
            if let Err(e) = stored {
                tracing::debug!(target: "redlayer", %e, "cache: entry not stored");
            }
        });
    }

    fn pass<ResBody>(&self, res: Response<ResBody>, mut status: CacheStatus) -> Response<CacheBody<ResBody>> {
        if status.fwd_status.is_none() && status.fwd != Some("bypass") {
            status.fwd_status = Some(res.status().as_u16());
        }
        let mut res = res.map(CacheBody::inner);
        self.write_status(&mut res, &status);
        res
    }

    #[allow(clippy::too_many_arguments)]
    async fn miss<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        parts: Parts,
        body: ReqBody,
        generation: u64,
        key: String,
        pass: bool,
        fwd: &'static str,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let mut guards = Guards::default();
        let mut detail = None;
        if pass {
            // Hit-for-pass: the last response was not storable; no
            // coalescing (a storable response is still stored below).
            detail = Some("hit-for-pass");
        } else if parts.method == Method::GET && !policy::has_directive(&parts.headers, "no-store") {
            // Waiters of a leader that went away unfinished join again (one
            // of them leads), within one coalesce timeout in all.
            let deadline = tokio::time::Instant::now() + self.config.coalesce_timeout;
            loop {
                // Only a miss that coalesced leaves a marker (a pass that stays
                // unstorable does not rewrite it); a request with credentials
                // says nothing about the response to others.
                guards.mark_pass = !parts.headers.contains_key(header::AUTHORIZATION);
                match self.state.flights.join(&key, self.config.coalesce_timeout) {
                    Join::Leader(g) => {
                        guards.flight = Some(g);
                        let across = match &self.state.locks {
                            Some(locks) => self.coalesce_across(locks, &key, &parts).await,
                            // A fill of this key may have ended (entry stored, then
                            // its flight closed) since this request's lookup: look again.
                            None => match self.probe(&key, &parts).await {
                                Probe::Fresh(entry) => Across::Hit(entry),
                                Probe::Pass => Across::Pass,
                                Probe::Miss | Probe::Failed => Across::Fill(None),
                            },
                        };
                        match across {
                            Across::Fill(lock) => guards.lock = lock,
                            Across::Pass => {
                                std::mem::take(&mut guards).not_shareable();
                                detail = Some("hit-for-pass");
                            }
                            Across::Hit(entry) => {
                                let at = now();
                                let policy = entry.policy(self.config.opts);
                                if let Some(flight) = guards.flight.take() {
                                    flight.finish(Some(entry.clone()));
                                }
                                let status = CacheStatus::hit(secs(policy.time_to_live(at)));
                                return Ok(self.serve(Arc::unwrap_or_clone(entry), policy.age(at), &parts, status));
                            }
                            Across::Collapsed(entry) => {
                                let at = now();
                                let policy = entry.policy(self.config.opts);
                                if let Some(flight) = guards.flight.take() {
                                    flight.finish(Some(entry.clone()));
                                }
                                let mut status = CacheStatus::fwd(fwd);
                                status.collapsed = true;
                                status.ttl = Some(secs(policy.time_to_live(at)));
                                return Ok(self.serve(Arc::unwrap_or_clone(entry), policy.age(at), &parts, status));
                            }
                        }
                    }
                    Join::Waiter(rx) => {
                        guards.mark_pass = false;
                        detail = Some("coalesce-fallthrough");
                        match tokio::time::timeout_at(deadline, flight::wait(rx)).await {
                            Ok(Waited::Entry(entry)) => {
                                let at = now();
                                if let Some(policy) = self.fresh_for(&entry, &parts, at) {
                                    let mut status = CacheStatus::fwd(fwd);
                                    status.collapsed = true;
                                    status.ttl = Some(secs(policy.time_to_live(at)));
                                    return Ok(self.serve(Arc::unwrap_or_clone(entry), policy.age(at), &parts, status));
                                }
                            }
                            Ok(Waited::Abandoned) => {
                                detail = None;
                                continue;
                            }
                            Ok(Waited::NotShareable) | Err(_) => {}
                        }
                    }
                }
                break;
            }
        }
        let (request_time, since) = (now(), self.snapshot(Some(generation)));
        let client = clone_parts(&parts);
        let res = inner.call(Request::from_parts(parts, body)).await?;
        let mut status = CacheStatus::fwd(fwd);
        status.detail = detail;
        Ok(self.fill(res, &client, client.method.clone(), &key, (request_time, since), guards, status))
    }

    /// The policy of `entry` when it answers this request without revalidation.
    fn fresh_for(&self, entry: &Entry, parts: &Parts, at: SystemTime) -> Option<CachePolicy> {
        let policy = entry.policy(self.config.opts);
        let req_view = policy::request_view(parts, entry);
        matches!(policy.before_request(&Incoming(&req_view), at), BeforeRequest::Fresh(_)).then_some(policy)
    }

    /// Looks at the store for a fresh entry of this request, or a
    /// hit-for-pass marker.
    async fn probe(&self, key: &str, parts: &Parts) -> Probe {
        match self.state.store.lookup(key, &parts.headers).await {
            Ok(looked) => {
                let pass = looked.pass(self.config.hit_for_pass);
                let fresh = looked
                    .found
                    .and_then(|f| Entry::decode(f.value))
                    .filter(|e| self.fresh_for(e, parts, now()).is_some());
                match fresh {
                    Some(entry) => Probe::Fresh(Arc::new(entry)),
                    None if pass => Probe::Pass,
                    None => Probe::Miss,
                }
            }
            Err(_) => Probe::Failed,
        }
    }

    /// Cross-instance coalescing of a cold key: the instance that takes the
    /// short fill lock looks up the store once more (a fill releases the lock
    /// only after storing its entry) and goes to the origin; the others poll
    /// the store until the entry appears, the key turns hit-for-pass, the
    /// lock is free again (the leader finished without storing, or died:
    /// they go to the origin), or the coalesce timeout ends.
    async fn coalesce_across(&self, locks: &redlayer_lock::Locks, key: &str, parts: &Parts) -> Across {
        let name = format!("cache-fill:{key}");
        let ttl = self.config.coalesce_timeout.max(Duration::from_millis(100));
        let lock = match locks.try_acquire(&name, ttl).await {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => None,
            // No lock service: fill without it.
            Err(_) => {
                return match self.probe(key, parts).await {
                    Probe::Fresh(entry) => Across::Hit(entry),
                    Probe::Pass => Across::Pass,
                    Probe::Miss | Probe::Failed => Across::Fill(None),
                };
            }
        };
        if let Some(lock) = lock {
            // Taken: any fill that held it before has stored its entry.
            return match self.probe(key, parts).await {
                Probe::Fresh(entry) => Across::Hit(entry),
                Probe::Pass => Across::Pass,
                Probe::Miss | Probe::Failed => Across::Fill(Some(lock)),
            };
        }
        let deadline = tokio::time::Instant::now() + self.config.coalesce_timeout;
        let mut poll = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(100));
            match self.probe(key, parts).await {
                Probe::Fresh(entry) => return Across::Collapsed(entry),
                Probe::Pass => return Across::Pass,
                Probe::Miss => {}
                Probe::Failed => return Across::Fill(None),
            }
            match locks.try_acquire(&name, ttl).await {
                Ok(Some(lock)) => {
                    // Free again: the entry may have just landed.
                    match self.probe(key, parts).await {
                        Probe::Fresh(entry) => return Across::Collapsed(entry),
                        Probe::Pass => return Across::Pass,
                        _ => {}
                    }
                    // The leader died, or failed to store: this one leads the
                    // next fill, keeping the lock so that the other waiters wait
                    // for it rather than all going to the origin. Without
                    // hit-for-pass markers an unstorable answer would leave
                    // no trace for them: then each goes to the origin at once.
                    if self.config.hit_for_pass.is_zero() {
                        drop(lock);
                        return Across::Fill(None);
                    }
                    return Across::Fill(Some(lock));
                }
                Ok(None) => {}
                Err(_) => return Across::Fill(None),
            }
        }
        Across::Fill(None)
    }

    /// XFetch: maybe refresh a fresh entry before it expires.
    #[allow(clippy::too_many_arguments)]
    fn maybe_xfetch<S, ReqBody, ResBody>(
        &self,
        inner: &S,
        entry: &Entry,
        policy: Option<&CachePolicy>,
        left: Duration,
        parts: &Parts,
        key: &str,
        generation: u64,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let beta = self.config.xfetch_beta;
        if beta <= 0.0 {
            return;
        }
        let left = left.as_secs_f64();
        let delta = entry.fetch_time.as_secs_f64().max(0.001);
        let r: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
        if delta * beta * -r.ln() >= left {
            let built;
            let policy = match policy {
                Some(policy) => policy,
                None => {
                    built = entry.policy(self.config.opts);
                    &built
                }
            };
            self.refresh_in_background(inner.clone(), entry, policy, parts, key, generation);
        }
    }

    /// One background refresh per key (per process): a conditional GET to
    /// the origin; the result is stored.
    fn refresh_in_background<S, ReqBody, ResBody>(
        &self,
        mut inner: S,
        entry: &Entry,
        policy: &CachePolicy,
        parts: &Parts,
        key: &str,
        generation: u64,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let Some(mark) = RefreshMark::claim(&self.state.refreshing, key) else { return };
        let mut client = clone_parts(parts);
        client.method = Method::GET;
        policy::strip_conditionals(&mut client.headers);
        for name in ["cache-control", "pragma"] {
            client.headers.remove(name);
        }
        let req_view = policy::request_view(&client, entry);
        if let BeforeRequest::Stale { request, .. } = policy
            .before_request(&Incoming(&req_view), SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64 * 4))
        {
            // The revalidation headers (If-None-Match / If-Modified-Since).
            for name in ["if-none-match", "if-modified-since"] {
                if let Some(v) = request.headers.get(name) {
                    client.headers.insert(name, v.clone());
                }
            }
        }
        let ctx = self.clone();
        let entry = entry.clone();
        let policy = policy.clone();
        let key = key.to_owned();
        let refresh = async move {
            // One refresh per key across instances: a short lock.
            let _lock = match &ctx.state.locks {
                Some(locks) => {
                    match locks.try_acquire(&format!("cache-refresh:{key}"), Duration::from_secs(10)).await {
                        Ok(Some(lock)) => Some(lock),
                        _ => return,
                    }
                }
                None => None,
            };
            let (request_time, since) = (now(), ctx.snapshot(Some(generation)));
            let mut req = Request::new(ReqBody::default());
            *req.method_mut() = Method::GET;
            *req.uri_mut() = client.uri.clone();
            *req.headers_mut() = client.headers.clone();
            let ready = std::future::poll_fn(|cx| inner.poll_ready(cx)).await.is_ok();
            let res = if ready { inner.call(req).await.ok() } else { None };
            if let Some(res) = res {
                let mut plain = clone_parts(&client);
                policy::strip_conditionals(&mut plain.headers);
                let stale_by = Duration::ZERO;
                let res =
                    ctx.after_forward(res, entry, policy, plain, (request_time, since), &key, "stale", true, stale_by);
                // Drive the body so that the tee stores it.
                let mut body = std::pin::pin!(res.into_body());
                while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                    if frame.is_err() {
                        break;
                    }
                }
            }
        };
        mark.spawn(&rt, refresh);
    }

    async fn unsafe_method<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let parts = clone_parts_of(&req);
        // No generation to check: the target is invalidated by this request.
        let (request_time, before) = (now(), self.snapshot(None));
        let res = inner.call(req).await?;
        let mut status = CacheStatus::fwd("method");
        let mut answers_get = None;
        if res.status().is_success() || res.status().is_redirection() {
            // The request's own URI (as it is), then the references its answer names.
            let mut targets = vec![(None, None)];
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                // UTF-8, not only visible ASCII: a path a client may request (and a GET stored) raw.
                if let Some(v) = res.headers().get(&name).and_then(|v| std::str::from_utf8(v.as_bytes()).ok()) {
                    targets.push((Some(name), Some(v.trim().to_owned())));
                }
            }
            let origin = origin_of(&parts);
            // The target's key, and whether another request invalidated it
            // while this one was on its way; then this request's own
            // invalidation number (a store of this answer sees later ones).
            let (mut target, mut content_location_key) = (None, None);
            let mut doomed = Vec::new();
            for (name, uri) in targets {
                let Some(get) = same_origin_get(&parts, uri.as_deref(), &origin) else { continue };
                let Some(primary) = self.primary(&get, &parts) else { continue };
                let key = self.state.store.entry_key(&primary);
                // Content-Location may name the target again: count from our own record then.
                let ours = match &target {
                    Some((target_key, _, n)) if *target_key == key => *n,
                    _ => before.invalidations,
                };
                let raced = self.state.invalidated.since(&key, ours);
                let n = self.state.invalidated.record(&key);
                if let Some((target_key, target_raced, own)) = target.as_mut()
                    && *target_key == key
                {
                    *target_raced |= raced;
                    *own = n;
                }
                doomed.push(key.clone());
                match name {
                    None => target = Some((key, raced, n)),
                    Some(name) if name == header::CONTENT_LOCATION => content_location_key = Some(key),
                    Some(_) => {}
                }
            }
            // Every target recorded first (above, at once), then all deleted
            // together: a request dropped during a slow delete loses none.
            if !self.delete_detached(doomed).await {
                status = status.detail("invalidation-failed");
            }
            // A POST answer whose Content-Location is its target URI, with
            // explicit freshness, is the target's current representation: it
            // answers later GETs of it (RFC 9110 9.3.3, RFC 9111 2). Only a
            // 200 or 203 (another status would answer a GET wrongly), never
            // with cookies, and only when no other request invalidated the
            // target while this one was on its way (a purge or a later
            // invalidation is caught when storing, as for any fill).
            if parts.method == Method::POST
                && matches!(res.status().as_u16(), 200 | 203)
                && !res.headers().contains_key(header::SET_COOKIE)
                && let Some((target_key, false, n)) = target
                && content_location_key.as_ref() == Some(&target_key)
                && policy::has_explicit_freshness(res.headers())
            {
                // The key of the GET this answer stands for, from the request
                // itself (a key function may read its headers).
                let mut get = parts;
                get.method = Method::GET;
                for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                    get.headers.remove(name);
                }
                let key = self.primary(&get, &get).map(|primary| self.state.store.entry_key(&primary));
                if key.as_ref() == Some(&target_key) {
                    // From our own last invalidation of the target on.
                    let since = Snapshot { epoch: before.epoch, invalidations: n, generation: None };
                    answers_get = Some((target_key, get, since));
                }
            }
        }
        if let Some((key, get, since)) = answers_get {
            return Ok(self.fill(res, &get, Method::GET, &key, (request_time, since), Guards::default(), status));
        }
        Ok(self.pass(res, status))
    }
}

/// The stored `entry` with the header fields of a response that validated
/// it (a 304, RFC 9111 4.3.4, or a 200 to a HEAD, 4.3.5) put in place of its
/// own, except those that describe the body, hop-by-hop ones (and those
/// `Connection` names) and `Cache-Status`; `Set-Cookie` only when cookies
/// are stored and replayed (`replay_cookies`), as the entry holds none
/// otherwise. The fields a qualified `no-cache="f"` / `private="f"` names
/// are then dropped, as when storing.
fn freshened(
    entry: &Entry,
    new: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    replay_cookies: bool,
) -> Entry {
    let mut headers = entry.headers.clone();
    let new_fields = policy::storable_headers(new);
    for name in new_fields.keys() {
        if matches!(name.as_str(), "content-length" | "content-encoding" | "content-range" | "cache-status")
            || (name == header::SET_COOKIE && !replay_cookies)
        {
            continue;
        }
        headers.remove(name);
        for v in new_fields.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    for name in policy::qualified_fields(&headers) {
        headers.remove(name.as_str());
    }
    headers.insert(header::AGE, HeaderValue::from(policy::initial_age(new, request_time, response_time)));
    Entry {
        response_time,
        fetch_time: response_time.duration_since(request_time).unwrap_or_default(),
        status: entry.status,
        req_headers: entry.req_headers.clone(),
        headers,
        body: entry.body.clone(),
        freshness: None,
    }
}

fn clone_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

fn clone_parts_of<B>(req: &Request<B>) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r.into_parts().0
}

/// `scheme://host` of a request, normalized.
fn origin_of(parts: &Parts) -> String {
    let full = normalized_uri(parts);
    let after = full.find("://").map_or(0, |i| i + 3);
    match full[after..].find('/') {
        Some(i) => full[..after + i].to_owned(),
        None => full,
    }
}

/// A GET request for `target` when it has the same origin as the request:
/// the request's own URI (`None`), or a `Location` / `Content-Location`
/// reference resolved against it (see [`reference::resolve`]).
fn same_origin_get(parts: &Parts, target: Option<&str>, origin: &str) -> Option<Parts> {
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    let base = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match target.map(|t| reference::resolve(parts.uri.scheme_str().unwrap_or("http"), base, t)) {
        Some(reference::Resolved::Absolute(uri)) => {
            // `host:8080` or `mailto:x` parse as authority-form: not a same-origin URI.
            let uri: http::Uri = uri.parse().ok()?;
            if !matches!(uri.scheme_str().map(str::to_ascii_lowercase).as_deref(), Some("http" | "https")) {
                return None;
            }
            *req.uri_mut() = uri;
        }
        resolved => {
            let mut uri = parts.uri.clone().into_parts();
            if let Some(reference::Resolved::Path(path_and_query)) = resolved {
                uri.path_and_query = Some(path_and_query.parse().ok()?);
            }
            *req.uri_mut() = http::Uri::from_parts(uri).ok()?;
        }
    }
    if let Some(host) = parts.headers.get(header::HOST) {
        req.headers_mut().insert(header::HOST, host.clone());
    }
    let get = req.into_parts().0;
    (origin_of(&get) == origin).then_some(get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Location` that only looks absolute (`host:port`, `mailto:`) names
    /// nothing of this origin; one that names it is found.
    #[test]
    fn only_http_uris_of_the_same_origin_are_targets() {
        let (parts, ()) = http::Request::post("/x").header("host", "example.test").body(()).unwrap().into_parts();
        let origin = origin_of(&parts);
        for target in
            ["example.test:80", "example.test", "mailto:a@example.test", "x:y@example.test", "https://example.test/a"]
        {
            let get = same_origin_get(&parts, Some(target), &origin);
            let found = get.as_ref().map(|g| g.uri.to_string());
            if target == "example.test" {
                assert_eq!(found.as_deref(), Some("/example.test"), "a relative path");
            } else {
                assert!(found.is_none(), "{target}: {found:?}");
            }
        }
        let same = same_origin_get(&parts, Some("http://EXAMPLE.test:80/a/../b"), &origin).unwrap();
        assert_eq!(same.uri, "http://EXAMPLE.test:80/b");
        assert_eq!(same_origin_get(&parts, None, &origin).unwrap().uri, "/x");
    }
}
