//! Request/response bodies for tests: empty, in-memory, and generated on
//! the fly (a GiB without holding more than one shared 64 KiB chunk).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// The body type every harness client and backend uses.
pub type Body = BoxBody<Bytes, Infallible>;

/// Size of one generated chunk.
pub const CHUNK: usize = 64 * 1024;

pub fn empty() -> Body {
    Empty::<Bytes>::new().boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// `len` bytes of a repeating pattern, produced chunk by chunk as the
/// receiver reads; the chunk is one shared allocation, sliced, never copied.
pub fn generated(len: u64) -> Body {
    Generated {
        remaining: len,
        chunk: pattern_chunk(),
    }
    .boxed()
}

pub(crate) fn pattern_chunk() -> Bytes {
    Bytes::from(
        (0..CHUNK)
            .map(|i| b"ferry-stream-0123456789abcdef\n"[i % 30])
            .collect::<Vec<u8>>(),
    )
}

struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        // n <= CHUNK, so the cast cannot truncate.
        let data = self.chunk.slice(..n as usize);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
