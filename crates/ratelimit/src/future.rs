//! [`ResponseFuture`]: decide, then call the inner service (or answer).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use redlayer_core::ResponseBody;
use tower_service::Service;

use crate::{Decision, headers, layer::LayerConfig, service::Decide};

/// What the limiter decided about one request.
pub(crate) enum Verdict {
    Allow { decision: Option<Decision> },
    Deny { decision: Decision, grpc: bool },
    Unavailable { grpc: bool },
    NoKey { grpc: bool },
}

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        config: Arc<LayerConfig>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding { decision: Decide, inner: Option<S>, request: Option<Request<ReqBody>> },
        Calling { #[pin] future: S::Future, decision: Option<Decision> },
        Done,
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// `inner` is `None` only when `decision` is a refusal known now.
    pub(crate) fn new(decision: Decide, inner: Option<S>, request: Request<ReqBody>, config: Arc<LayerConfig>) -> Self {
        ResponseFuture { state: State::Deciding { decision, inner, request: Some(request) }, config }
    }
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
                StateProj::Deciding { decision, inner, request } => {
                    let verdict = match decision {
                        Decide::Ready(verdict) => verdict.take().expect("ResponseFuture polled after completion"),
                        Decide::Pending(future) => ready!(future.as_mut().poll(cx)),
                    };
                    let response = match verdict {
                        Verdict::Allow { decision } => {
                            let (Some(mut inner), Some(request)) = (inner.take(), request.take()) else {
                                panic!("ResponseFuture polled after completion");
                            };
                            let future = inner.call(request);
                            let decision = decision.filter(|_| this.config.on_allowed);
                            this.state.set(State::Calling { future, decision });
                            continue;
                        }
                        Verdict::Deny { decision, grpc } => headers::denied(&decision, grpc, this.config.legacy),
                        Verdict::Unavailable { grpc } => headers::unavailable(grpc),
                        Verdict::NoKey { grpc } => headers::no_key(grpc),
                    };
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Calling { future, decision } => {
                    let response = ready!(future.poll(cx))?;
                    let (mut parts, body) = response.into_parts();
                    if let Some(decision) = decision.take() {
                        headers::apply(&mut parts.headers, &decision, this.config.legacy);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
