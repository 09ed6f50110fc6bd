//! [`PassBody`]: the first response's body after the layer looked at it.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's response body: passed through untouched, or (for
    /// a response the layer stored) the frames it already read, then
    /// whatever it did not read.
    pub struct PassBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Direct { #[pin] body: B },
        Resumed { read: VecDeque<Frame<Bytes>>, error: Option<B::Error>, rest: Option<Pin<Box<B>>> },
    }
}

impl<B: Body> std::fmt::Debug for PassBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassBody").finish_non_exhaustive()
    }
}

impl<B: Body> PassBody<B> {
    /// The inner body, untouched.
    pub(crate) fn new(body: B) -> Self {
        PassBody { kind: Kind::Direct { body } }
    }

    /// Frames already read, then an error or the unread rest (`None`: the end).
    pub(crate) fn resume(read: VecDeque<Frame<Bytes>>, error: Option<B::Error>, rest: Option<Pin<Box<B>>>) -> Self {
        PassBody { kind: Kind::Resumed { read, error, rest } }
    }
}

impl<B> Body for PassBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Direct { body } => body.poll_frame(cx),
            KindProj::Resumed { read, error, rest } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(rest) => rest.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Direct { body } => body.is_end_stream(),
            Kind::Resumed { read, error, rest } => {
                read.is_empty() && error.is_none() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Direct { body } => body.size_hint(),
            Kind::Resumed { read, rest, .. } => {
                let read: u64 = read.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
                match rest {
                    None => SizeHint::with_exact(read),
                    Some(rest) => {
                        let inner = rest.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.lower().saturating_add(read));
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper.saturating_add(read));
                        }
                        hint
                    }
                }
            }
        }
    }
}
