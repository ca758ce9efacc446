//! A request body that can be sent more than once, for retries.
//!
//! The first try streams the body as it arrives (nothing waits for the
//! whole body) while every chunk is also kept, up to a limit. A retry gets a
//! new handle that replays the kept chunks and then carries on reading from
//! the source where the previous try stopped. Past the limit the copies are
//! dropped and [`Replay::can_replay`] turns false: the request is streamed
//! once and not retried, as Envoy does past `per_request_buffer_limit_bytes`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

struct State<B> {
    source: B,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    limit: usize,
    overflowed: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    hint: SizeHint,
}

/// Hands out one body per try; all share the source and the kept chunks.
pub struct Replay<B> {
    state: Arc<Mutex<State<B>>>,
}

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Replay {
            state: self.state.clone(),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Replay<B> {
    pub fn new(source: B, limit: usize) -> Self {
        let hint = source.size_hint();
        Replay {
            state: Arc::new(Mutex::new(State {
                source,
                kept: Vec::new(),
                kept_bytes: 0,
                limit,
                overflowed: false,
                trailers: None,
                ended: false,
                hint,
            })),
        }
    }

    /// Whether another try can still be given the whole body.
    pub fn can_replay(&self) -> bool {
        self.state.lock().map(|s| !s.overflowed).unwrap_or(false)
    }

    /// A body for the next try, starting from the first byte.
    pub fn body(&self) -> ReplayBody<B> {
        ReplayBody {
            state: self.state.clone(),
            pos: 0,
            trailers_sent: false,
        }
    }
}

pub struct ReplayBody<B> {
    state: Arc<Mutex<State<B>>>,
    /// Index of the next kept chunk this try sends.
    pos: usize,
    trailers_sent: bool,
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        // The lock is held for one synchronous poll of the source, never
        // across an await.
        let Ok(mut st) = this.state.lock() else {
            return Poll::Ready(None);
        };
        if this.pos < st.kept.len() {
            let chunk = st.kept[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if st.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = st.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let st = &mut *st;
        match Pin::new(&mut st.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !st.overflowed {
                        st.kept_bytes += data.len();
                        if st.kept_bytes > st.limit {
                            st.overflowed = true;
                            st.kept = Vec::new();
                        } else {
                            st.kept.push(data.clone());
                            this.pos += 1;
                        }
                    }
                    if st.source.is_end_stream() {
                        st.ended = true;
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    st.ended = true;
                    this.trailers_sent = true;
                    if let Ok(t) = frame.into_trailers() {
                        st.trailers = Some(t.clone());
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.lock().map_or(true, |st| {
            st.ended && self.pos >= st.kept.len() && (self.trailers_sent || st.trailers.is_none())
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.state
            .lock()
            .map_or_else(|_| SizeHint::default(), |st| st.hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body yielding fixed chunks, one per poll, then optional trailers.
    struct Chunks(VecDeque<Frame<Bytes>>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn source(parts: &[&'static str], trailers: bool) -> Chunks {
        let mut q: VecDeque<Frame<Bytes>> = parts
            .iter()
            .map(|p| Frame::data(Bytes::from_static(p.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            q.push_back(Frame::trailers(t));
        }
        Chunks(q)
    }

    /// Reads `n` frames (or all when None) synchronously.
    fn read<B: Body<Data = Bytes> + Unpin>(b: &mut B, n: Option<usize>) -> (Vec<u8>, bool)
    where
        B::Error: std::fmt::Debug,
    {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let mut trailers = false;
        let mut frames = 0;
        while n.is_none_or(|n| frames < n) {
            match Pin::new(&mut *b).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => {
                    frames += 1;
                    if f.is_trailers() {
                        trailers = true;
                    }
                    if let Ok(d) = f.into_data() {
                        out.extend_from_slice(&d);
                    }
                }
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(e))) => panic!("{e:?}"),
                Poll::Pending => panic!("test sources never pend"),
            }
        }
        (out, trailers)
    }

    #[test]
    fn a_retry_replays_what_the_first_try_read_then_continues() {
        let r = Replay::new(source(&["ab", "cd", "ef"], true), 1024);
        let mut first = r.body();
        assert_eq!(read(&mut first, Some(2)).0, b"abcd");
        drop(first); // the try failed mid-body
        assert!(r.can_replay());
        let mut second = r.body();
        assert_eq!(read(&mut second, None), (b"abcdef".to_vec(), true));
        assert!(second.is_end_stream());
        // A third try after a complete send gets everything, trailers too.
        let mut third = r.body();
        assert_eq!(read(&mut third, None), (b"abcdef".to_vec(), true));
    }

    #[test]
    fn past_the_limit_the_body_streams_once_and_cannot_replay() {
        let r = Replay::new(source(&["aaaa", "bbbb", "cccc"], false), 6);
        let mut first = r.body();
        assert_eq!(read(&mut first, None).0, b"aaaabbbbcccc");
        assert!(!r.can_replay());
    }

    #[test]
    fn an_empty_body_is_at_its_end() {
        let r = Replay::new(source(&[], false), 16);
        let mut b = r.body();
        assert_eq!(read(&mut b, None).0, b"");
        assert!(b.is_end_stream());
        assert!(r.can_replay());
    }
}
