//! [`Idempotency`]: the service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use redlayer_core::problem::is_grpc;
use tower_service::Service;

use crate::{
    ResponseFuture,
    flow::{BoxError, decide, key_problem},
    key::{KeyHeader, parse_key, record_id},
    layer::Config,
};

/// Makes covered requests with an `Idempotency-Key` run once: see the crate docs.
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = crate::flow::Answer<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = &self.config;
        if !config.methods.contains(req.method()) {
            return ResponseFuture::pass(inner.call(req));
        }
        let key = match parse_key(req.headers(), &config.header, config.max_key_len) {
            KeyHeader::Key(key) => key,
            KeyHeader::Missing if !config.required => return ResponseFuture::pass(inner.call(req)),
            KeyHeader::Missing => {
                return ResponseFuture::respond(key_problem(
                    is_grpc(req.headers()),
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key required",
                    "this endpoint requires an Idempotency-Key header (a structured-field string)",
                ));
            }
            KeyHeader::Invalid(why) => {
                let grpc = is_grpc(req.headers());
                return ResponseFuture::respond(key_problem(
                    grpc,
                    StatusCode::BAD_REQUEST,
                    "Invalid Idempotency-Key",
                    why,
                ));
            }
        };
        let (parts, body) = req.into_parts();
        let id = record_id(config.scope.of(&parts).as_deref(), &key);
        ResponseFuture::decide(Box::pin(decide(config.clone(), id, parts, body)), inner)
    }
}
