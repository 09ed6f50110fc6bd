//! [`CacheBody`]: the response body of the cache layer.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What became of a collected copy.
pub(crate) enum Collected {
    /// The complete body.
    Body(Bytes),
    /// Larger than the limit: it will not be stored.
    TooLarge,
    /// Not to its end: the body failed, or was dropped (the client went away).
    Cut,
}

/// Called once with what became of the copy.
pub(crate) type OnComplete = Box<dyn FnOnce(Collected) + Send>;

/// Collects a copy of a streamed body for the store.
pub struct Collector {
    buf: BytesMut,
    max: usize,
    /// The body's exact length when known: once that much is collected the
    /// copy is complete, even if the server stops polling the body there
    /// (hyper drops a body once its `Content-Length` is written, without
    /// polling it for its end).
    exact: Option<u64>,
    done: Option<OnComplete>,
}

impl Collector {
    pub(crate) fn new(max: usize, exact: Option<u64>, done: OnComplete) -> Self {
        let expected = exact.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        Collector { buf: BytesMut::with_capacity(expected.min(max)), max, exact, done: Some(done) }
    }

    fn has_all(&self) -> bool {
        self.exact.is_some_and(|n| n > 0 && self.buf.len() as u64 == n)
    }

    fn push(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        if self.buf.len() + data.len() > self.max {
            self.buf = BytesMut::new();
            if let Some(done) = self.done.take() {
                done(Collected::TooLarge);
            }
            return;
        }
        self.buf.extend_from_slice(data);
    }

    fn complete(&mut self) {
        if let Some(done) = self.done.take() {
            done(Collected::Body(std::mem::take(&mut self.buf).freeze()));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Collected::Cut);
        }
    }
}

pin_project! {
    /// The cache layer's response body: the inner body passed through, the
    /// inner body streamed to the client while a copy is collected for the
    /// store (up to the size cap), or a stored body.
    #[allow(missing_docs, private_interfaces)]
    #[project = CacheBodyProj]
    pub enum CacheBody<B> {
        /// The inner service's body, untouched.
        Inner { #[pin] body: B },
        /// The inner body, streamed while being collected.
        Tee { #[pin] body: B, collector: Collector },
        /// A body from the cache (or of the layer's own).
        Full { data: Option<Bytes> },
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheBody::Inner { .. } => f.write_str("CacheBody::Inner"),
            CacheBody::Tee { .. } => f.write_str("CacheBody::Tee"),
            CacheBody::Full { data } => {
                f.debug_struct("CacheBody::Full").field("len", &data.as_ref().map(|d| d.len())).finish()
            }
        }
    }
}

impl<B> CacheBody<B> {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        CacheBody::Full { data: (!data.is_empty()).then_some(data) }
    }

    /// An empty body.
    pub fn empty() -> Self {
        CacheBody::Full { data: None }
    }

    pub(crate) fn inner(body: B) -> Self {
        CacheBody::Inner { body }
    }
}

impl<B: Body<Data = Bytes>> CacheBody<B> {
    pub(crate) fn tee(body: B, collector: Collector) -> Self {
        if body.is_end_stream() {
            let mut collector = collector;
            collector.complete();
            return CacheBody::Inner { body };
        }
        CacheBody::Tee { body, collector }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            CacheBodyProj::Inner { body } => body.poll_frame(cx),
            CacheBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            CacheBodyProj::Tee { mut body, collector } => match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        collector.push(data);
                    }
                    if body.is_end_stream() || collector.has_all() {
                        collector.complete();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    collector.complete();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(done) = collector.done.take() {
                        done(Collected::Cut);
                    }
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CacheBody::Inner { body } | CacheBody::Tee { body, .. } => body.is_end_stream(),
            CacheBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CacheBody::Inner { body } | CacheBody::Tee { body, .. } => body.size_hint(),
            CacheBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
