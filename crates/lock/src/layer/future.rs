//! [`ResponseFuture`]: wait for the lock → call the inner service → release.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use redlayer_core::{
    FailurePolicy, ResponseBody,
    problem::{GrpcCode, Problem, grpc_response, is_grpc},
    report_degraded,
};
use tower_service::Service;

use crate::{AcquireError, LockGuard, layer::layer::Config};

pin_project_lite::pin_project! {
    /// The response future of [`KeyLock`](crate::layer::KeyLock).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Acquire {
            acquire: BoxFuture<'static, Result<LockGuard, AcquireError>>,
            config: Arc<Config>,
            request: Option<Request<ReqBody>>,
            service: Option<S>,
        },
        Call {
            #[pin]
            future: S::Future,
            guard: Option<LockGuard>,
            // Resolves when the lock can no longer be guaranteed (see `LockGuard::lost`).
            lost: Option<BoxFuture<'static, ()>>,
            grpc: bool,
        },
        Done { finished: () },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn pass(future: S::Future) -> Self {
        ResponseFuture { state: State::Call { future, guard: None, lost: None, grpc: false } }
    }

    pub(crate) fn acquire(config: Arc<Config>, key: String, request: Request<ReqBody>, service: S) -> Self {
        let locks = config.locks.clone();
        let (ttl, wait) = (config.ttl, config.wait);
        // A namespace of its own: a request-chosen key never names another lock.
        let acquire = Box::pin(async move { locks.acquire(&format!("req:{key}"), ttl, wait).await });
        ResponseFuture { state: State::Acquire { acquire, config, request: Some(request), service: Some(service) } }
    }
}

fn refuse<B>(
    grpc: bool,
    status: StatusCode,
    code: GrpcCode,
    title: &'static str,
    detail: &str,
) -> Response<ResponseBody<B>> {
    let mut response =
        if grpc { grpc_response(code, detail) } else { Problem::new(status, title).detail(detail).into_response() };
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Acquire { acquire, config, request, service } => {
                    let outcome = ready!(acquire.as_mut().poll(cx));
                    let request = request.take().expect("polled after completion");
                    let grpc = is_grpc(request.headers());
                    let guard = match outcome {
                        Ok(guard) => {
                            guard.start_watchdog(config.max_hold);
                            Some(guard)
                        }
                        Err(AcquireError::TimedOut { last_error: None, .. }) => {
                            return Poll::Ready(Ok(refuse(
                                grpc,
                                config.busy_status,
                                GrpcCode::Aborted,
                                "Resource busy",
                                "another request on the same resource is still running; retry later",
                            )));
                        }
                        Err(AcquireError::TimedOut { last_error: Some(error), .. } | AcquireError::Store(error))
                            if config.failure == FailurePolicy::FailOpen && error.is_unavailable() =>
                        {
                            // Only an unreachable store: another error (a
                            // foreign value at the key, a script error) says
                            // nothing about the key being free.
                            report_degraded("lock", FailurePolicy::FailOpen, &error);
                            None
                        }
                        Err(error) => {
                            if let AcquireError::TimedOut { last_error: Some(e), .. } | AcquireError::Store(e) = &error
                            {
                                report_degraded("lock", FailurePolicy::FailClosed, e);
                            }
                            return Poll::Ready(Ok(refuse(
                                grpc,
                                StatusCode::SERVICE_UNAVAILABLE,
                                GrpcCode::Unavailable,
                                "Service unavailable",
                                "the lock store is unavailable; retry later",
                            )));
                        }
                    };
                    let lost = guard.as_ref().map(|g| Box::pin(g.lost()) as BoxFuture<'static, ()>);
                    let future = service.take().expect("polled after completion").call(request);
                    this.state.set(State::Call { future, guard, lost, grpc });
                }
                StateProj::Call { future, guard, lost, grpc } => {
                    if let Poll::Ready(response) = future.poll(cx) {
                        // Dropping the guard releases the lock in the background.
                        drop(guard.take());
                        return Poll::Ready(response.map(|r| r.map(ResponseBody::inner)));
                    }
                    if let Some(lost) = lost
                        && lost.as_mut().poll(cx).is_ready()
                    {
                        // Another request may hold the key now: the handler
                        // is stopped rather than left running beside it.
                        let grpc = *grpc;
                        this.state.set(State::Done { finished: () });
                        return Poll::Ready(Ok(refuse(
                            grpc,
                            StatusCode::SERVICE_UNAVAILABLE,
                            GrpcCode::Unavailable,
                            "Lock lost",
                            "the lock of this resource was lost while the request ran (the lock store was \
                             unreachable or restarted, or the handler outran max_hold); the request was stopped \
                             and may have been partly done",
                        )));
                    }
                    return Poll::Pending;
                }
                StateProj::Done { .. } => panic!("polled after completion"),
            }
        }
    }
}
