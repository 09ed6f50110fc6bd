//! [`ResponseFuture`]: decide → call the inner service → store → done.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use redlayer_core::ResponseBody;
use tower_service::Service;

use crate::{
    PassBody,
    flow::{Answer, Claim, Decision, finish},
};

pin_project_lite::pin_project! {
    /// The response future of [`Idempotency`](crate::Idempotency).
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body,
    {
        Decide { decision: BoxFuture<'static, Decision<ReqBody, ResBody>>, service: Option<S> },
        Call { #[pin] future: S::Future, claim: Option<Claim> },
        Finish { finish: BoxFuture<'static, Answer<ResBody>> },
        // The inner service failed: its attempt is forgotten before the error goes out.
        Forget { forget: BoxFuture<'static, ()>, error: Option<S::Error> },
        Done { answer: Option<Answer<ResBody>> },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    pub(crate) fn pass(future: S::Future) -> Self {
        ResponseFuture { state: State::Call { future, claim: None } }
    }

    pub(crate) fn respond(answer: Answer<ResBody>) -> Self {
        ResponseFuture { state: State::Done { answer: Some(answer) } }
    }

    pub(crate) fn decide(decision: BoxFuture<'static, Decision<ReqBody, ResBody>>, service: S) -> Self {
        ResponseFuture { state: State::Decide { decision, service: Some(service) } }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Output = Result<Answer<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Decide { decision, service } => match ready!(decision.as_mut().poll(cx)) {
                    Decision::Respond(answer) => return Poll::Ready(Ok(answer)),
                    Decision::Run(request, claim) => {
                        let mut service = service.take().expect("polled after completion");
                        let future = service.call(request);
                        this.state.set(State::Call { future, claim });
                    }
                },
                StateProj::Call { future, claim } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            // As for a 5xx: the attempt is forgotten (before the
                            // error is returned), so that a retry runs instead
                            // of getting 422 or 409 for the retention.
                            match claim.take() {
                                Some(claim) => {
                                    let forget = Box::pin(crate::flow::forget(claim));
                                    this.state.set(State::Forget { forget, error: Some(error) });
                                    continue;
                                }
                                None => return Poll::Ready(Err(error)),
                            }
                        }
                    };
                    match claim.take() {
                        None => return Poll::Ready(Ok(response.map(|b| ResponseBody::inner(PassBody::new(b))))),
                        Some(claim) => this.state.set(State::Finish { finish: Box::pin(finish(claim, response)) }),
                    }
                }
                StateProj::Finish { finish } => return finish.as_mut().poll(cx).map(Ok),
                StateProj::Forget { forget, error } => {
                    ready!(forget.as_mut().poll(cx));
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Done { answer } => return Poll::Ready(Ok(answer.take().expect("polled after completion"))),
            }
        }
    }
}
