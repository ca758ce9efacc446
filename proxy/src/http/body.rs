//! One body type for both directions, as an enum so the common cases (an
//! upstream or downstream stream, a local reply) cost no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::Completion;
use crate::http::filtered::FilteredBody;
use crate::http::replay::ReplayBody;
use crate::upstream::pool::Returner;

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// A request body read whole (for a filter) that came with trailers;
    /// boxed so the common variants stay small.
    FullWithTrailers(Box<(Option<Bytes>, Option<HeaderMap>)>),
    /// A body streamed from the other side, untouched.
    Incoming(Incoming),
    /// A downstream request body whose size the access log wants.
    Counted(Incoming, Arc<AtomicU64>),
    /// An upstream response body: hands its HTTP/1.1 connection back to the
    /// pool once fully read, and finishes the access-log record when done.
    Upstream(UpstreamBody),
    /// One try's view of a request body kept for retries.
    Replay(ReplayBody<ProxyBody>),
    /// A body whose frames pass through the filters' body hooks; only for
    /// requests whose filters have such hooks.
    Filtered(Box<FilteredBody>),
}

/// Why a body stream failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading it from the other side failed.
    Hyper(hyper::Error),
    /// A filter answered the request from a request-body hook: the upstream
    /// request is abandoned.
    Answered,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Hyper(e) => e.fmt(f),
            BodyError::Answered => f.write_str("a filter answered the request from its body"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Hyper(e) => Some(e),
            BodyError::Answered => None,
        }
    }
}

pub struct UpstreamBody {
    inner: Incoming,
    returner: Option<Returner>,
    completion: Option<Box<Completion>>,
    /// The queue-proxy's slot and in-flight count: held until the body
    /// ends, so the app's concurrency covers the whole response.
    admission: Option<crate::queue::Admission>,
    bytes: u64,
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(b))
        }
    }

    pub fn upstream(
        inner: Incoming,
        returner: Option<Returner>,
        completion: Option<Box<Completion>>,
    ) -> Self {
        let mut body = UpstreamBody {
            inner,
            returner,
            completion,
            admission: None,
            bytes: 0,
        };
        // A body-less response (204, HEAD, Content-Length: 0) may never be
        // polled: release the connection now.
        if body.inner.is_end_stream() {
            body.release();
        }
        ProxyBody::Upstream(body)
    }
}

impl UpstreamBody {
    pub fn set_completion(&mut self, c: Box<Completion>) {
        self.completion = Some(c);
    }

    /// Keeps the queue admission until the body ends (or is dropped). A
    /// body that already ended releases it at once.
    pub fn set_admission(&mut self, a: crate::queue::Admission) {
        if !self.inner.is_end_stream() {
            self.admission = Some(a);
        }
    }

    fn release(&mut self) {
        if let Some(r) = self.returner.take() {
            r.release();
        }
        self.admission = None;
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response:
        // the returner is dropped with it, which closes the connection.
        if let Some(c) = self.completion.take() {
            c.finish(self.bytes);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::FullWithTrailers(bt) => Poll::Ready(match bt.0.take() {
                Some(b) => Some(Ok(Frame::data(b))),
                None => bt.1.take().map(|t| Ok(Frame::trailers(t))),
            }),
            ProxyBody::Incoming(inner) => Pin::new(inner).poll_frame(cx).map_err(BodyError::Hyper),
            ProxyBody::Counted(inner, counter) => {
                let poll = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &poll {
                    if let Some(d) = frame.data_ref() {
                        counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                poll.map_err(BodyError::Hyper)
            }
            ProxyBody::Upstream(up) => {
                let poll = Pin::new(&mut up.inner).poll_frame(cx);
                match &poll {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            up.bytes += d.len() as u64;
                        }
                        if up.inner.is_end_stream() {
                            up.release();
                        }
                    }
                    Poll::Ready(None) => up.release(),
                    _ => {}
                }
                poll.map_err(BodyError::Hyper)
            }
            ProxyBody::Replay(r) => Pin::new(r).poll_frame(cx),
            ProxyBody::Filtered(f) => Pin::new(&mut **f).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::FullWithTrailers(bt) => bt.0.is_none() && bt.1.is_none(),
            ProxyBody::Incoming(i) | ProxyBody::Counted(i, _) => i.is_end_stream(),
            ProxyBody::Upstream(u) => u.inner.is_end_stream(),
            ProxyBody::Replay(r) => r.is_end_stream(),
            ProxyBody::Filtered(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::FullWithTrailers(bt) => {
                SizeHint::with_exact(bt.0.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Incoming(i) | ProxyBody::Counted(i, _) => i.size_hint(),
            ProxyBody::Upstream(u) => u.inner.size_hint(),
            ProxyBody::Replay(r) => r.size_hint(),
            ProxyBody::Filtered(f) => f.size_hint(),
        }
    }
}
