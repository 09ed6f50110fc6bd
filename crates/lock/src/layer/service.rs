//! [`KeyLock`]: the service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use redlayer_core::ResponseBody;
use tower_service::Service;

use crate::layer::{ExtractKey, ResponseFuture, layer::Config};

/// Runs requests with the same key one at a time (see [`LockLayer`](crate::layer::LockLayer)).
#[derive(Debug, Clone)]
pub struct KeyLock<S, K> {
    pub(crate) inner: S,
    pub(crate) key: K,
    pub(crate) config: Arc<Config>,
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for KeyLock<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: ExtractKey<ReqBody>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match self.key.extract(&req) {
            None => ResponseFuture::pass(inner.call(req)),
            Some(key) => ResponseFuture::acquire(self.config.clone(), key, req, inner),
        }
    }
}
