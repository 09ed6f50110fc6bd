//! [`RateLimit`]: the service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, request::Parts};
use redlayer_core::{FailurePolicy, KeyPart, ResponseBody, problem::is_grpc};
use tower_service::Service;

use crate::{
    Decision, NoKey, RateLimiter,
    future::{ResponseFuture, Verdict},
    key::Extracted,
    layer::LayerConfig,
};

/// The rate-limit service made by [`RateLimitLayer`](crate::RateLimitLayer).
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    pub(crate) inner: S,
    pub(crate) limiter: RateLimiter,
    pub(crate) config: Arc<LayerConfig>,
}

impl<S> RateLimit<S> {
    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ResBody: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let verdict = verdict(&self.limiter, &self.config, &parts);
        // A refusal known now (a flood answered from the deny cache) never
        // calls the inner service: no clone of it, which stays ready.
        let inner = (!verdict.refused_now()).then(|| {
            let clone = self.inner.clone();
            std::mem::replace(&mut self.inner, clone)
        });
        ResponseFuture::new(verdict, inner, Request::from_parts(parts, body), self.config.clone())
    }
}

/// The decision: known now (deny cache, no key), or a future (the store, an async key extractor).
pub(crate) enum Decide {
    Ready(Option<Verdict>),
    Pending(BoxFuture<'static, Verdict>),
}

impl Decide {
    /// True when the request is refused without calling the inner service.
    fn refused_now(&self) -> bool {
        matches!(self, Decide::Ready(Some(verdict)) if !matches!(verdict, Verdict::Allow { .. }))
    }
}

/// Extracts keys and cost now (from the head); answers from the deny cache
/// without allocating a future when it can.
fn verdict(limiter: &RateLimiter, config: &LayerConfig, parts: &Parts) -> Decide {
    let grpc = is_grpc(&parts.headers);
    let cost = config.cost.as_ref().map_or(1, |f| f(parts));
    let policies = &limiter.inner.policies;
    let shared = policies.iter().all(|p| p.key.is_none());
    let no_key = config.no_key;
    let extracted: Vec<Extracted> = if shared {
        match config.key.extract(parts) {
            // The usual case: one key for every policy, known now.
            Extracted::Ready(id) => return decide_now(limiter, shared, [id], no_key, grpc, cost),
            pending => vec![pending],
        }
    } else {
        policies.iter().map(|p| p.key.as_ref().unwrap_or(&config.key).extract(parts)).collect()
    };
    if extracted.iter().all(|e| matches!(e, Extracted::Ready(_))) {
        let ids = extracted.into_iter().map(|e| if let Extracted::Ready(id) = e { id } else { None });
        return decide_now(limiter, shared, ids, no_key, grpc, cost);
    }
    let limiter = limiter.clone();
    Decide::Pending(Box::pin(async move {
        let mut ids = Vec::with_capacity(extracted.len());
        for e in extracted {
            ids.push(match e {
                Extracted::Ready(id) => id,
                Extracted::Pending(fut) => fut.await,
            });
        }
        match plan(&limiter, shared, ids, no_key, grpc) {
            Ok((keys, active)) => to_verdict(limiter.decide(keys, active, cost).await, grpc),
            Err(verdict) => verdict,
        }
    }))
}

/// The decision once every key is known: from the deny cache, or a future of the store's.
fn decide_now(
    limiter: &RateLimiter,
    shared: bool,
    ids: impl IntoIterator<Item = Option<KeyPart>>,
    no_key: NoKey,
    grpc: bool,
    cost: u64,
) -> Decide {
    let (keys, active) = match plan(limiter, shared, ids, no_key, grpc) {
        Ok(plan) => plan,
        Err(verdict) => return Decide::Ready(Some(verdict)),
    };
    if let Some(decision) = limiter.decide_locally(&keys, &active, cost) {
        return Decide::Ready(Some(to_verdict(decision, grpc)));
    }
    let limiter = limiter.clone();
    Decide::Pending(Box::pin(async move { to_verdict(limiter.decide_in_store(keys, active, cost).await, grpc) }))
}

/// The state keys of the policies that apply (`keys[i]` belongs to policy `active[i]`):
/// `ids` holds one key for all policies when `shared`, else one per policy.
fn plan(
    limiter: &RateLimiter,
    shared: bool,
    ids: impl IntoIterator<Item = Option<KeyPart>>,
    no_key: NoKey,
    grpc: bool,
) -> Result<(Vec<String>, Vec<usize>), Verdict> {
    let policies = &limiter.inner.policies;
    let mut keys = Vec::with_capacity(policies.len());
    let mut active = Vec::with_capacity(policies.len());
    let none = || {
        // Once per process at warn level: usually a server not giving the peer address.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                target: "redlayer",
                "rate limit: a request had no key; keyless requests share one bucket (NoKey::Shared). With the \
                 peer-IP key, serve axum with `into_make_service_with_connect_info::<SocketAddr>()`"
            );
        } else {
            tracing::debug!(target: "redlayer", "rate limit: no key for this request; using the shared no-key bucket");
        }
        KeyPart::hashed("redlayer:no-key")
    };
    if shared {
        let id = match (ids.into_iter().next().flatten(), no_key) {
            (Some(id), _) => id,
            (None, NoKey::Reject) => return Err(Verdict::NoKey { grpc }),
            (None, NoKey::Skip) => return Err(Verdict::Allow { decision: None }),
            (None, _) => none(),
        };
        for i in 0..policies.len() {
            keys.push(limiter.shared_key(&id, i));
            active.push(i);
        }
    } else {
        for (i, id) in ids.into_iter().enumerate() {
            let id = match (id, no_key) {
                (Some(id), _) => id,
                (None, NoKey::Reject) => return Err(Verdict::NoKey { grpc }),
                (None, NoKey::Skip) => continue,
                (None, _) => none(),
            };
            keys.push(limiter.tagged_key(&id, i));
            active.push(i);
        }
    }
    Ok((keys, active))
}

fn to_verdict(decision: Decision, grpc: bool) -> Verdict {
    if decision.is_allowed() {
        Verdict::Allow { decision: Some(decision) }
    } else if decision.degraded() == Some(FailurePolicy::FailClosed) {
        Verdict::Unavailable { grpc }
    } else {
        Verdict::Deny { decision, grpc }
    }
}
