//! [`ResponseFuture`] of the cache service.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use std::sync::Arc;

use crate::{body::CacheBody, status::CacheStatus};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`Cache`](crate::Cache): the inner future
    /// directly for requests the cache does not handle (OPTIONS, TRACE,
    /// CONNECT), or the cache's own decision flow (store lookups are boxed
    /// futures in redis-rs anyway).
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] fut: F, name: Arc<str> },
        Flow { fut: BoxFuture<Result<Response<CacheBody<B>>, E>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(fut: F, name: Arc<str>) -> Self {
        ResponseFuture { kind: Kind::Passthrough { fut, name } }
    }

    pub(crate) fn flow(fut: BoxFuture<Result<Response<CacheBody<B>>, E>>) -> Self {
        ResponseFuture { kind: Kind::Flow { fut } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { fut, name } => fut.poll(cx).map(|r| {
                r.map(|res| {
                    let mut res = res.map(CacheBody::inner);
                    CacheStatus::fwd("method").write(name, res.headers_mut());
                    res
                })
            }),
            KindProj::Flow { fut } => fut.as_mut().poll(cx),
        }
    }
}
