//! [`SessionService`]: the middleware service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use redlayer_core::{ResponseBody, problem::is_grpc};
use tower_service::Service;

use crate::{ResponseFuture, Session, layer::Shared, transport};

/// The service made by [`SessionLayer`](crate::SessionLayer): reads the id
/// (without any store call), puts a lazy [`Session`] in the request's
/// extensions, and after the inner service answers writes what changed and
/// sets or removes the id on the response.
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for SessionService<S> {
    fn clone(&self) -> Self {
        SessionService { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S> SessionService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        SessionService { inner, shared }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = transport::read_id(&self.shared.transport, request.headers());
        let grpc = is_grpc(request.headers());
        let session = Session::new(self.shared.clone(), id);
        request.extensions_mut().insert(session.clone());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner.call(request), session, self.shared.clone(), grpc)
    }
}
