//! [`ResponseFuture`]: calls the inner service, then finishes the session.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;
use redlayer_core::{
    ResponseBody,
    problem::{GrpcCode, Problem, grpc_response},
};

use crate::{Session, SessionError, layer::Shared, session::Finish, transport};

type FinishFuture = Pin<Box<dyn Future<Output = Finish> + Send>>;

pin_project! {
    /// The response future of [`SessionService`](crate::SessionService).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        session: Option<Session>,
        shared: Arc<Shared>,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F },
        Finishing { future: FinishFuture, response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, session: Session, shared: Arc<Shared>, grpc: bool) -> Self {
        ResponseFuture { state: State::Inner { future }, session: Some(session), shared, grpc }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { future } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            // No response to put a failed write or a new id
                            // on: what the handler changed is not written.
                            if this.session.as_ref().is_some_and(Session::needs_finish) {
                                tracing::warn!(
                                    target: "redlayer",
                                    layer = "session",
                                    "the inner service failed: this request's session changes were not saved"
                                );
                            }
                            return Poll::Ready(Err(error));
                        }
                    };
                    match this.session.take() {
                        Some(session) if session.needs_finish() => {
                            let future: FinishFuture = Box::pin(async move { session.finish().await });
                            this.state.set(State::Finishing { future, response: Some(response) });
                        }
                        Some(session) if session.is_accessed() => {
                            let mut response = answer(response, *this.grpc);
                            transport::add_vary(&this.shared.transport, response.headers_mut());
                            return Poll::Ready(Ok(response));
                        }
                        _ => return Poll::Ready(Ok(answer(response, *this.grpc))),
                    }
                }
                StateProj::Finishing { future, response } => {
                    let finish = ready!(future.as_mut().poll(cx));
                    let response = response.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(complete(response, finish, this.shared, *this.grpc)));
                }
            }
        }
    }
}

/// Applies the outcome of the session to the response. A write that failed
/// replaces the handler's answer: the client must not believe it succeeded.
fn complete<B>(response: Response<B>, finish: Finish, shared: &Shared, grpc: bool) -> Response<ResponseBody<B>> {
    let mut response = match finish.error {
        None => answer(response, grpc),
        Some(error) => {
            tracing::warn!(target: "redlayer", layer = "session", %error, "session changes were not saved");
            error_response(&error, grpc)
        }
    };
    if let Some(action) = &finish.action {
        transport::write_id(&shared.transport, response.headers_mut(), action);
    }
    // Finishing means the handler used the session: the answer depends on it.
    transport::add_vary(&shared.transport, response.headers_mut());
    response
}

/// Set on the response a handler's [`SessionError`] turns into (axum's
/// `IntoResponse` cannot see the request): for a gRPC call the layer answers
/// with the error's gRPC status instead of the HTTP problem document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandlerError {
    pub(crate) code: GrpcCode,
    pub(crate) title: &'static str,
}

/// The handler's response, unless it is a session error answered to a gRPC call.
fn answer<B>(response: Response<B>, grpc: bool) -> Response<ResponseBody<B>> {
    match response.extensions().get::<HandlerError>() {
        Some(error) if grpc => grpc_response(error.code, error.title),
        _ => response.map(ResponseBody::inner),
    }
}

pub(crate) fn error_response<B>(error: &SessionError, grpc: bool) -> Response<ResponseBody<B>> {
    if grpc {
        return grpc_response(error.grpc_code(), error.title());
    }
    let mut problem = Problem::new(error.status(), error.title());
    if let SessionError::Expired = error {
        problem = problem.detail("the session ended during this request; its changes were not saved");
    } else if error.is_unavailable() {
        problem =
            problem.detail("the session store did not answer; the changes of this request may not have been saved");
    } else if let SessionError::MissingLayer = error {
        problem = problem.detail("no SessionLayer in front of this handler");
    } else {
        problem = problem.detail("the session could not be read or written");
    }
    problem.into_response()
}
