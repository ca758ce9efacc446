//! The filters' body hooks on the wire: a request's filters shared with
//! the body streams that call their hooks, the body adapter that calls
//! them per frame, and the read of a whole request body for a filter that
//! buffers it.
//!
//! Only requests whose filters declare body hooks come here (see
//! `ferry_filters::HttpFilter::wants_request_body`); every other request
//! keeps its filters owned by the pipeline and streams its bodies as they
//! are.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use ferry_filters::{Flow, LocalReply, RequestFilters};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::http::body::{BodyError, ProxyBody};

/// One request's filters while body streams run their hooks, beside the
/// pipeline.
pub struct Exchange {
    filters: RequestFilters,
    /// A request-body hook answered: the reply to send instead of whatever
    /// the upstream does.
    reply: Option<LocalReply>,
}

/// Locked for one synchronous hook call at a time, never across an await.
pub type SharedFilters = Arc<Mutex<Exchange>>;

fn lock(ex: &SharedFilters) -> MutexGuard<'_, Exchange> {
    // A hook that panicked left the filters as they were; carry on.
    ex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The filters of one request: owned by the pipeline (no body hooks, or a
/// body already read whole), or shared with the body streams that call
/// their hooks.
pub enum Filters {
    Owned(RequestFilters),
    Shared(SharedFilters),
}

impl Filters {
    pub fn with<R>(&mut self, f: impl FnOnce(&mut RequestFilters) -> R) -> R {
        match self {
            Filters::Owned(filters) => f(filters),
            Filters::Shared(ex) => f(&mut lock(ex).filters),
        }
    }

    /// The filters as a shared handle.
    pub fn into_shared(self) -> SharedFilters {
        match self {
            Filters::Shared(ex) => ex,
            Filters::Owned(filters) => Arc::new(Mutex::new(Exchange {
                filters,
                reply: None,
            })),
        }
    }

    /// The reply a request-body hook gave, if any (once).
    pub fn take_reply(&mut self) -> Option<LocalReply> {
        match self {
            Filters::Owned(_) => None,
            Filters::Shared(ex) => lock(ex).reply.take(),
        }
    }
}

/// Whether a request-body hook has answered (the upstream try that failed
/// for it must not be retried).
pub fn answered(ex: &SharedFilters) -> bool {
    lock(ex).reply.is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The hooks have seen the end of the body.
    Ended,
    /// A request-body hook answered: the stream fails from here on.
    Answered,
}

/// A body whose data frames pass through the filters' body hooks: every
/// chunk once, the last one with `end` (an empty one when the body ends
/// without data or with trailers), then the trailers. The bytes may change
/// length, so it promises no size.
pub struct FilteredBody<B = ProxyBody> {
    inner: B,
    exchange: SharedFilters,
    side: Side,
    state: State,
    /// Trailers held back behind a chunk the end-of-body hook produced.
    pending: Option<HeaderMap>,
}

impl FilteredBody {
    /// A request body through `on_request_body`. Under a replaying body it
    /// runs once per chunk, not once per try.
    pub fn request(inner: ProxyBody, exchange: SharedFilters) -> ProxyBody {
        ProxyBody::Filtered(Box::new(FilteredBody::new(inner, exchange, Side::Request)))
    }

    /// A response body through `on_response_body` and
    /// `on_response_trailers`.
    pub fn response(inner: ProxyBody, exchange: SharedFilters) -> ProxyBody {
        ProxyBody::Filtered(Box::new(FilteredBody::new(inner, exchange, Side::Response)))
    }
}

impl<B> FilteredBody<B> {
    fn new(inner: B, exchange: SharedFilters, side: Side) -> Self {
        FilteredBody {
            inner,
            exchange,
            side,
            state: State::Streaming,
            pending: None,
        }
    }

    /// Runs the data hooks on one chunk. Err: a request-body hook answered.
    fn hook(&mut self, chunk: &mut Bytes, end: bool) -> Result<(), BodyError> {
        let mut ex = lock(&self.exchange);
        match self.side {
            Side::Request => {
                if let Flow::Respond(reply) = ex.filters.on_request_body(chunk, end) {
                    ex.reply = Some(reply);
                    self.state = State::Answered;
                    return Err(BodyError::Answered);
                }
            }
            Side::Response => ex.filters.on_response_body(chunk, end),
        }
        if end {
            self.state = State::Ended;
        }
        Ok(())
    }

    /// The end of the body: the last hook call, unless the hooks saw it.
    fn finish(&mut self) -> Result<Option<Bytes>, BodyError> {
        if self.state == State::Ended {
            return Ok(None);
        }
        let mut last = Bytes::new();
        self.hook(&mut last, true)?;
        Ok((!last.is_empty()).then_some(last))
    }
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.state == State::Answered {
            return Poll::Ready(Some(Err(BodyError::Answered)));
        }
        if let Some(t) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                return Poll::Ready(match this.finish() {
                    Ok(last) => last.map(|b| Ok(Frame::data(b))),
                    Err(e) => Some(Err(e)),
                })
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut chunk) => {
                let end = this.inner.is_end_stream();
                if let Err(e) = this.hook(&mut chunk, end) {
                    return Poll::Ready(Some(Err(e)));
                }
                Frame::data(chunk)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    let last = match this.finish() {
                        Ok(last) => last,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    if this.side == Side::Response {
                        lock(&this.exchange)
                            .filters
                            .on_response_trailers(&mut trailers);
                    }
                    match last {
                        Some(chunk) => {
                            this.pending = Some(trailers);
                            Frame::data(chunk)
                        }
                        None => Frame::trailers(trailers),
                    }
                }
                Err(other) => other,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ended && self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// How reading a whole request body for a buffering filter ended, when it
/// did not produce the body.
pub enum Unbuffered {
    /// A request-body hook answered.
    Answered(LocalReply),
    /// The client's body failed.
    Failed(BodyError),
}

/// Reads the whole request body, each chunk through the request-body hooks
/// as it arrives, and returns it as one body with its trailers. The filter
/// that asked bounds it (it answers when the body grows too large).
pub async fn read_whole<B>(
    f: &mut RequestFilters,
    mut body: B,
) -> Result<(ProxyBody, u64), Unbuffered>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut trailers = None;
    let mut ended = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Unbuffered::Failed)?;
        match frame.into_data() {
            Ok(mut chunk) => {
                let end = body.is_end_stream();
                if let Flow::Respond(reply) = f.on_request_body(&mut chunk, end) {
                    return Err(Unbuffered::Answered(reply));
                }
                ended |= end;
                chunks.push(chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok().or(trailers),
        }
    }
    if !ended {
        let mut last = Bytes::new();
        if let Flow::Respond(reply) = f.on_request_body(&mut last, true) {
            return Err(Unbuffered::Answered(reply));
        }
        chunks.push(last);
    }
    chunks.retain(|c| !c.is_empty());
    let len: usize = chunks.iter().map(Bytes::len).sum();
    let data = match chunks.len() {
        0 => None,
        1 => chunks.pop(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Some(all.freeze())
        }
    };
    let body = match (data, trailers) {
        (None, None) => ProxyBody::Empty,
        (Some(d), None) => ProxyBody::Full(Some(d)),
        (d, t) => ProxyBody::FullWithTrailers(Box::new((d, t))),
    };
    Ok((body, len as u64))
}

#[cfg(test)]
mod tests;
