//! HTTP/1 request framing guard: follows the message framing of a downstream
//! HTTP/1 connection, below hyper, and refuses requests whose framing is
//! ambiguous before hyper can normalise them.
//!
//! hyper's server drops `Content-Length` when `Transfer-Encoding` is present
//! (RFC 9112 §6.3) and forwards the request; a request carrying both is the
//! classic smuggling shape, and Envoy answers it with 400. The guard sees
//! every byte hyper reads: it finds each request head, reads the three
//! headers that decide framing, and skips the body exactly as hyper's
//! decoder does (`Content-Length` bytes, or chunks with extensions and
//! trailers) so it stays on the next head of a keep-alive or pipelined
//! connection.
//!
//! A refused head never reaches hyper intact: the guard turns its last byte
//! into a NUL, follows it with an empty line and ends the stream there. A
//! NUL is invalid anywhere in a request head, so hyper answers that head
//! with its own `400 Bad Request` and `connection: close`, after the
//! responses to any earlier pipelined requests (it parses a head only once
//! the previous exchange is done). The empty line matters: after a partial
//! read hyper parses again only once it sees the end of a head.
//!
//! Where the guard cannot follow (an upgrade or CONNECT, a version that is
//! not HTTP/1.x such as the h2c preface, a malformed chunk that hyper
//! itself will refuse) it stops looking and hyper stays the authority.
//! Complete lines are looked at once, in place; only a line split across
//! reads is copied, into one buffer the connection keeps.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What to do with the bytes just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// All of them go to hyper.
    Pass,
    /// The request whose head contains byte `at` is refused: bytes before
    /// `at` go to hyper, byte `at` becomes a NUL, nothing after it is read.
    Refuse { at: usize },
}

/// The framing of one connection's request stream, fed with every byte
/// read, in order.
pub struct Scanner {
    state: State,
    /// The head being read while `state` is [`State::Head`].
    head: Head,
    /// Longest head followed; longer ones are refused. Above hyper's own
    /// limit, which answers 431 first.
    limit: usize,
    /// The start of a head line that a read split; reused.
    partial: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head, or between messages.
    Head,
    /// A `Content-Length` body: this many bytes left.
    Fixed(u64),
    Chunked(Chunk),
    /// No longer following: hyper alone decides.
    Off,
}

/// A request head being read, line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Head {
    /// Bytes of the head so far, leading empty lines included.
    len: usize,
    /// The request line has been read.
    started: bool,
    http11: bool,
    /// The version is neither HTTP/1.0 nor HTTP/1.1.
    other_version: bool,
    /// hyper's `wants_upgrade`: CONNECT, or an `upgrade` header on HTTP/1.1.
    upgrade: bool,
    transfer_encoding: bool,
    /// The last `transfer-encoding` line ends in `chunked`.
    chunked: bool,
    content_length: ContentLength,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ContentLength {
    #[default]
    Absent,
    Len(u64),
    /// Not a number, or two different numbers: hyper refuses it too.
    Invalid,
}

/// hyper's chunked decoder states (`proto/h1/decode.rs`), mirrored byte for
/// byte so both agree where the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const UPGRADE: &[u8] = b"upgrade";

impl Scanner {
    /// `limit`: the longest request head to follow; longer ones are refused.
    pub fn new(limit: usize) -> Scanner {
        Scanner {
            state: State::Head,
            head: Head::default(),
            limit,
            partial: Vec::new(),
        }
    }

    /// A scanner that never looks (an HTTP/2 connection).
    pub fn off() -> Scanner {
        Scanner {
            state: State::Off,
            head: Head::default(),
            limit: 0,
            partial: Vec::new(),
        }
    }

    pub fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    /// Follows `data`, the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Verdict {
        let mut pos = 0;
        while pos < data.len() {
            match self.state {
                State::Off => return Verdict::Pass,
                State::Fixed(left) => {
                    let take = left.min((data.len() - pos) as u64);
                    // `take` is at most the slice's length, so it fits.
                    pos += take as usize;
                    self.state = match left - take {
                        0 => State::Head,
                        n => State::Fixed(n),
                    };
                }
                State::Chunked(c) => pos = self.chunked(c, data, pos),
                State::Head => match self.read_head(data, pos) {
                    Ok(next) => pos = next,
                    Err(at) => {
                        self.state = State::Off;
                        self.partial = Vec::new();
                        return Verdict::Refuse { at };
                    }
                },
            }
        }
        Verdict::Pass
    }

    /// Reads head lines from `data[pos..]`; returns where it stopped, or
    /// `Err(at)` to refuse the request at byte `at`.
    fn read_head(&mut self, data: &[u8], mut pos: usize) -> Result<usize, usize> {
        let h = &mut self.head;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(nl) = find_lf(rest) else {
                h.len += rest.len();
                if h.len > self.limit {
                    return Err(data.len() - 1);
                }
                self.partial.extend_from_slice(rest);
                return Ok(data.len());
            };
            h.len += nl + 1;
            if h.len > self.limit {
                return Err(pos + nl);
            }
            let lf = pos + nl;
            pos = lf + 1;
            let line: &[u8] = if self.partial.is_empty() {
                &rest[..nl]
            } else {
                self.partial.extend_from_slice(&rest[..nl]);
                &self.partial
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let end = line.is_empty() && h.started;
            if !line.is_empty() {
                if h.started {
                    header_line(h, line);
                } else {
                    request_line(h, line);
                }
            }
            // Empty lines before the request line are skipped, as hyper
            // (httparse) does.
            self.partial.clear();
            if end {
                return self.head_done(lf).map(|()| pos);
            }
        }
        Ok(pos)
    }

    /// Decides what follows a complete head whose last byte is at `lf`.
    fn head_done(&mut self, lf: usize) -> Result<(), usize> {
        let h = std::mem::take(&mut self.head);
        // A long line leaves a large buffer behind; keep a small one.
        if self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
        if h.other_version {
            // The h2c preface, or a version hyper refuses.
            self.state = State::Off;
            return Ok(());
        }
        if h.transfer_encoding {
            // Both framings at once (in either order), or one hyper cannot
            // honour either: RFC 9112 §6.1 and §6.3 make these 400s.
            if h.content_length != ContentLength::Absent || !h.chunked || !h.http11 {
                return Err(lf);
            }
        }
        if h.content_length == ContentLength::Invalid {
            return Err(lf);
        }
        self.state = if h.upgrade {
            // After a 101 the bytes are a tunnel's; hyper knows whether it
            // switched.
            State::Off
        } else if h.transfer_encoding {
            State::Chunked(Chunk::Start)
        } else {
            match h.content_length {
                ContentLength::Len(n) if n > 0 => State::Fixed(n),
                _ => State::Head,
            }
        };
        Ok(())
    }

    /// Follows a chunked body from `data[pos..]`; returns where it stopped.
    fn chunked(&mut self, mut c: Chunk, data: &[u8], mut pos: usize) -> usize {
        while pos < data.len() {
            if let Chunk::Data(left) = c {
                let take = left.min((data.len() - pos) as u64);
                pos += take as usize;
                c = match left - take {
                    0 => Chunk::DataCr,
                    n => Chunk::Data(n),
                };
                continue;
            }
            let b = data[pos];
            pos += 1;
            match chunk_step(c, b) {
                Some(Step::Next(n)) => c = n,
                Some(Step::End) => {
                    self.state = State::Head;
                    return pos;
                }
                // hyper fails the body here and closes the connection.
                None => {
                    self.state = State::Off;
                    return pos;
                }
            }
        }
        self.state = State::Chunked(c);
        pos
    }
}

enum Step {
    Next(Chunk),
    End,
}

/// One byte of a chunked body outside chunk data; None where hyper's
/// decoder fails.
fn chunk_step(c: Chunk, b: u8) -> Option<Step> {
    let next = match c {
        Chunk::Start => Chunk::Size(hex(0, b)?),
        Chunk::Size(n) => match b {
            b'\t' | b' ' => Chunk::SizeLws(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => Chunk::Size(hex(n, b)?),
        },
        Chunk::SizeLws(n) => match b {
            b'\t' | b' ' => Chunk::SizeLws(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => return None,
        },
        Chunk::Extension(n) => match b {
            b'\r' => Chunk::SizeLf(n),
            b'\n' => return None,
            _ => Chunk::Extension(n),
        },
        Chunk::SizeLf(n) => match (b, n) {
            (b'\n', 0) => Chunk::EndCr,
            (b'\n', n) => Chunk::Data(n),
            _ => return None,
        },
        Chunk::Data(n) if n > 1 => Chunk::Data(n - 1),
        Chunk::Data(_) => Chunk::DataCr,
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            _ => return None,
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Start,
            _ => return None,
        },
        Chunk::Trailer => match b {
            b'\r' => Chunk::TrailerLf,
            _ => Chunk::Trailer,
        },
        Chunk::TrailerLf => match b {
            b'\n' => Chunk::EndCr,
            _ => return None,
        },
        Chunk::EndCr => match b {
            b'\r' => Chunk::EndLf,
            _ => Chunk::Trailer,
        },
        Chunk::EndLf => match b {
            b'\n' => return Some(Step::End),
            _ => return None,
        },
    };
    Some(Step::Next(next))
}

/// The first `\n` in `s`, eight bytes at a time. Head lines are short, so
/// this beats a call into a vectorised search, whose set-up is paid per
/// line.
fn find_lf(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LFS: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b) ^ LFS;
        // The lowest set high bit marks the first zero byte of `x` (a
        // borrow only ever marks bytes above a real zero).
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| at + i)
}

/// `n * 16 + digit(b)`; None for a non-hex byte or an overflow.
fn hex(n: u64, b: u8) -> Option<u64> {
    let d = match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => return None,
    };
    n.checked_mul(16)?.checked_add(u64::from(d))
}

/// `METHOD SP target SP HTTP/1.x`: only the version and a CONNECT matter.
fn request_line(h: &mut Head, line: &[u8]) {
    h.started = true;
    let version = line
        .len()
        .checked_sub(9)
        .and_then(|i| line[i..].strip_prefix(b" "));
    h.http11 = version == Some(b"HTTP/1.1");
    h.other_version = !h.http11 && version != Some(b"HTTP/1.0");
    h.upgrade = line.starts_with(b"CONNECT ");
}

/// Notes the framing headers. httparse wants the colon right after the
/// name, so a name is matched by length and then by its bytes.
fn header_line(h: &mut Head, line: &[u8]) {
    let is = |name: &[u8]| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
    };
    let value = |name: &[u8]| trim(&line[name.len() + 1..]);
    match line.first().map(u8::to_ascii_lowercase) {
        Some(b'c') if is(CONTENT_LENGTH) => {
            // As hyper: each line one number, every line the same number.
            h.content_length = match (digits(value(CONTENT_LENGTH)), h.content_length) {
                (Some(n), ContentLength::Absent) => ContentLength::Len(n),
                (Some(n), ContentLength::Len(m)) if n == m => ContentLength::Len(n),
                _ => ContentLength::Invalid,
            };
        }
        Some(b't') if is(TRANSFER_ENCODING) => {
            h.transfer_encoding = true;
            h.chunked = ends_in_chunked(value(TRANSFER_ENCODING));
        }
        // hyper lets the last `upgrade` line decide, even over CONNECT.
        Some(b'u') if is(UPGRADE) => h.upgrade = h.http11,
        _ => {}
    }
}

/// httparse's value: without the whitespace around it.
fn trim(v: &[u8]) -> &[u8] {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// hyper's `from_digits`: ASCII digits only, no sign, no overflow.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// hyper's `is_chunked_`: the value is visible ASCII and its last
/// comma-separated coding is `chunked`.
fn ends_in_chunked(v: &[u8]) -> bool {
    if !v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return false;
    }
    let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
    trim(last).eq_ignore_ascii_case(b"chunked")
}

/// What hyper reads after the NUL of a refused head, before the end of the
/// stream.
const REFUSED_TAIL: &[u8] = b"\r\n\r\n";

/// The downstream IO with a [`Scanner`] on its read side.
pub struct FramingGuard<I> {
    inner: I,
    scanner: Scanner,
    /// A request was refused: what is left of [`REFUSED_TAIL`] to hand
    /// hyper, then the end of the stream.
    refused: Option<&'static [u8]>,
}

impl<I> FramingGuard<I> {
    pub fn new(inner: I, scanner: Scanner) -> Self {
        FramingGuard {
            inner,
            scanner,
            refused: None,
        }
    }

    /// Hands hyper as much of the refusal's tail as `buf` takes.
    fn put_tail(&mut self, buf: &mut ReadBuf<'_>) {
        if let Some(tail) = self.refused {
            let n = tail.len().min(buf.remaining());
            buf.put_slice(&tail[..n]);
            self.refused = Some(&tail[n..]);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refused.is_some() {
            this.put_tail(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.scanner.is_off() || !matches!(poll, Poll::Ready(Ok(()))) {
            return poll;
        }
        let new = &mut buf.filled_mut()[before..];
        if let Verdict::Refuse { at } = this.scanner.feed(new) {
            new[at] = 0;
            buf.set_filled(before + at + 1);
            this.refused = Some(REFUSED_TAIL);
            this.put_tail(buf);
            tracing::debug!("refusing a request with conflicting or invalid framing headers");
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
