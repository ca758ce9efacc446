use super::*;

const LIMIT: usize = 1024;

/// Feeds `stream` in pieces cut at `cuts` (offsets, ascending); returns the
/// stream offset of the refused byte, if any.
fn refused_at(stream: &[u8], cuts: &[usize]) -> Option<usize> {
    let mut s = Scanner::new(LIMIT);
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        if let Verdict::Refuse { at } = s.feed(&stream[start..end]) {
            return Some(start + at);
        }
        start = end;
    }
    None
}

/// The same verdict whole, cut once at every offset, and byte by byte.
fn verdict(stream: &[u8]) -> Option<usize> {
    let whole = refused_at(stream, &[]);
    for cut in 1..stream.len() {
        assert_eq!(
            refused_at(stream, &[cut]),
            whole,
            "cut at {cut} of {:?}",
            String::from_utf8_lossy(stream)
        );
    }
    let every: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(refused_at(stream, &every), whole, "byte by byte");
    whole
}

/// The offset of the last byte of the first head in `stream` that
/// contains `marker`.
fn end_of_head_with(stream: &[u8], marker: &str) -> usize {
    let text = String::from_utf8_lossy(stream);
    let at = text.find(marker).expect("marker in stream");
    at + text[at..].find("\r\n\r\n").expect("head end") + 3
}

const CONFLICT: &str =
    "POST /evil HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";

#[test]
fn both_framing_headers_in_either_order_are_refused_at_the_end_of_the_head() {
    let cases = [
        CONFLICT.to_string(),
        "POST /evil HTTP/1.1\r\nTransfer-Encoding: chunked\r\nhost: x\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
            .to_string(),
        // An empty content-length is still one, and still invalid.
        "POST /evil HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length:\r\n\r\n0\r\n\r\n"
            .to_string(),
    ];
    for c in cases {
        assert_eq!(
            verdict(c.as_bytes()),
            Some(end_of_head_with(c.as_bytes(), "POST /evil")),
            "{c:?}"
        );
    }
}

#[test]
fn framing_hyper_would_refuse_is_refused_too() {
    let cases = [
        "POST /evil HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        "POST /evil HTTP/1.1\r\ntransfer-encoding: bogus\r\n\r\n",
        "POST /evil HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /evil HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "POST /evil HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\nhello",
        "POST /evil HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
        "POST /evil HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        // The last transfer-encoding line decides, as in hyper.
        "POST /evil HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
    ];
    for c in cases {
        assert_eq!(
            verdict(c.as_bytes()),
            Some(end_of_head_with(c.as_bytes(), "POST /evil")),
            "{c:?}"
        );
    }
}

#[test]
fn valid_framing_passes_and_keeps_the_scanner_on_the_next_head() {
    // Each case is followed by a conflicting request: the scanner finds it
    // only if it skipped the body exactly.
    let cases = [
        "GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nhost: x\r\nCONTENT-LENGTH:\t7 \r\n\r\nseven!!",
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip ,  Chunked \r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.0\r\nhost: x\r\n\r\n",
        // Bare LF line ends, which httparse accepts.
        "GET / HTTP/1.1\nhost: x\n\n",
        "POST / HTTP/1.1\nhost: x\ncontent-length: 2\n\nok",
        // Empty lines before a request line are skipped.
        "\r\n\r\n\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
        // Names that only look like the framing headers.
        "POST / HTTP/1.1\r\nx-content-length: 5\r\ncontent-lengthy: 5\r\ntransfer-encodings: x\r\n\r\n",
        "POST / HTTP/1.1\r\nx: content-length: 5\r\n\r\n",
        // An upgrade header on HTTP/1.0 is no upgrade to hyper.
        "GET / HTTP/1.0\r\nupgrade: websocket\r\n\r\n",
    ];
    for c in cases {
        let stream = format!("{c}{CONFLICT}");
        assert_eq!(
            verdict(stream.as_bytes()),
            Some(end_of_head_with(stream.as_bytes(), "POST /evil")),
            "{c:?}"
        );
    }
}

#[test]
fn bodies_are_skipped_even_when_they_hold_fake_heads() {
    let fake = CONFLICT;
    let fixed = format!(
        "POST /a HTTP/1.1\r\ncontent-length: {}\r\n\r\n{fake}",
        fake.len()
    );
    // Chunks with extensions (quoted, with spaces), LWS after the size,
    // upper-case hex, a chunk holding a fake head, and trailers.
    let chunked = format!(
        "POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
         5;name=value;q=\"a b\"\r\nhello\r\n\
         A \t;x\r\n0123456789\r\n\
         {:X}\r\n{fake}\r\n\
         0;last\r\nx-trailer: 1\r\nx-other: \n2\r\n\r\n",
        fake.len()
    );
    // A chunked body without trailers, then a request with a body of its own.
    let plain = "POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                 POST /d HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody";
    let stream = format!("{fixed}{chunked}{plain}{CONFLICT}");
    let last = stream.rfind("POST /evil").expect("last request");
    assert_eq!(
        verdict(stream.as_bytes()),
        Some(end_of_head_with(&stream.as_bytes()[last..], "POST /evil") + last),
        "only the real conflicting request is refused"
    );
    // Without the final request, nothing in the bodies is refused.
    let clean = format!("{fixed}{chunked}{plain}");
    assert_eq!(verdict(clean.as_bytes()), None);
}

#[test]
fn after_an_upgrade_connect_or_another_protocol_hyper_decides() {
    let cases = [
        "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        "CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET / HTTP/3.0\r\n\r\n",
    ];
    for c in cases {
        let stream = format!("{c}{CONFLICT}");
        assert_eq!(verdict(stream.as_bytes()), None, "{c:?}");
    }
    // A conflict on the upgrade request itself is still refused.
    let c = "GET /ws HTTP/1.1\r\nupgrade: websocket\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(verdict(c.as_bytes()), Some(c.len() - 1));
}

#[test]
fn a_chunked_body_hyper_would_fail_stops_the_scan() {
    let cases = [
        "zz\r\n",                // no size digit
        "5\nhello\r\n",          // LF without CR after the size
        "5;ext\nhello\r\n",      // LF inside an extension
        "5 5\r\nhello\r\n",      // digits after whitespace
        "5\r\nhelloX\r\n",       // no CRLF after the data
        "11111111111111111\r\n", // size overflows u64
        "0\r\nx-t: 1\rX",        // CR without LF in a trailer
    ];
    for c in cases {
        let stream = format!("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{c}{CONFLICT}");
        assert_eq!(verdict(stream.as_bytes()), None, "{c:?}");
    }
}

#[test]
fn an_oversized_head_is_refused_and_buffers_stay_bounded() {
    // One line longer than the limit, trickled in small reads.
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(LIMIT * 2));
    let cuts: Vec<usize> = (1..long.len()).step_by(7).collect();
    let at = refused_at(long.as_bytes(), &cuts).expect("refused");
    assert!(at <= LIMIT + 7, "refused by the limit, at {at}");

    // Many short lines: nothing is kept between lines.
    let mut s = Scanner::new(LIMIT);
    let mut head = String::from("GET / HTTP/1.1\r\n");
    while head.len() < LIMIT / 2 {
        head.push_str("x-h: v\r\n");
    }
    for b in head.as_bytes() {
        assert_eq!(s.feed(std::slice::from_ref(b)), Verdict::Pass);
        assert!(s.partial.len() < 16, "only the current line is kept");
    }
    // Endless empty lines before a request are bounded too.
    let blank = "\r\n".repeat(LIMIT);
    assert!(refused_at(blank.as_bytes(), &[]).is_some());
}

#[test]
fn a_long_line_split_across_reads_is_read_whole() {
    // The framing header arrives in pieces; the value crosses reads.
    let stream = format!(
        "POST / HTTP/1.1\r\nx-pad: {}\r\ncontent-length: 12345\r\n\r\n",
        "p".repeat(300)
    );
    let mut s = Scanner::new(LIMIT);
    for piece in stream.as_bytes().chunks(5) {
        assert_eq!(s.feed(piece), Verdict::Pass);
    }
    assert_eq!(s.state, State::Fixed(12345));
    assert_eq!(s.head, Head::default());
    assert!(s.partial.is_empty());
}

#[test]
fn find_lf_finds_the_first_newline_at_every_offset() {
    for len in 0..40 {
        for lf in 0..len {
            // Bytes around the newline that differ from it by one bit or
            // borrow, the cases a word-at-a-time search can get wrong.
            let mut s: Vec<u8> = (0..len)
                .map(|i| [0x0b, 0x09, 0x8a, 0x0a ^ 0x80][i % 4])
                .collect();
            s[lf] = b'\n';
            if lf + 1 < len {
                s[lf + 1] = b'\n';
            }
            assert_eq!(find_lf(&s), Some(lf), "len {len}, newline at {lf}");
        }
        let none: Vec<u8> = (0..len).map(|i| [0x0b, 0x09, 0x8a, 0x00][i % 4]).collect();
        assert_eq!(find_lf(&none), None, "len {len}");
    }
}

#[test]
fn an_off_scanner_passes_everything() {
    let mut s = Scanner::off();
    assert!(s.is_off());
    assert_eq!(s.feed(CONFLICT.as_bytes()), Verdict::Pass);
}

// === through the IO wrapper, with hyper on top ===

mod io {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::super::{FramingGuard, Scanner};

    /// A client that sends one scripted piece per read (so hyper sees
    /// exactly these partial reads), then waits; keeps what it is sent.
    struct Scripted {
        pieces: VecDeque<Vec<u8>>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            let Some(mut piece) = this.pieces.pop_front() else {
                // The client keeps the connection open.
                return Poll::Pending;
            };
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                this.pieces.push_front(piece.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if let Ok(mut out) = self.out.lock() {
                out.extend_from_slice(buf);
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Serves one connection as the proxy does (hyper-util's auto builder
    /// behind the guard) with `input` cut at `cuts`; each request is
    /// answered with its path and the body length hyper read. Returns what
    /// the client received, or None when hyper did not close within 5 s.
    async fn exchange(input: &[u8], cuts: &[usize]) -> Option<String> {
        let mut pieces = VecDeque::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            pieces.push_back(input[start..end].to_vec());
            start = end;
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let io = Scripted {
            pieces,
            out: out.clone(),
        };
        let io = FramingGuard::new(io, Scanner::new(64 * 1024));
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let path = req.uri().path().to_string();
            let len = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len().to_string(),
                Err(_) => "body error".to_string(),
            };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "{path} {len};"
            )))))
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        // hyper ends a connection it refused with an error; what it sent is
        // what counts.
        let _served = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .ok()?;
        let out = out.lock().map(|o| o.clone()).unwrap_or_default();
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    fn statuses(out: &str) -> Vec<&str> {
        out.match_indices("HTTP/1.1 ")
            .map(|(i, _)| &out[i..i + 12])
            .collect()
    }

    #[tokio::test]
    async fn hyper_answers_earlier_requests_then_400_and_closes_at_every_cut() {
        let input = format!(
            "GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
             POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
             {}\
             GET /never HTTP/1.1\r\nhost: x\r\n\r\n",
            super::CONFLICT
        );
        let input = input.as_bytes();
        let mut runs: Vec<Vec<usize>> = (0..input.len()).map(|c| vec![c]).collect();
        runs.push((1..input.len()).collect());
        for cuts in runs {
            let out = exchange(input, &cuts)
                .await
                .unwrap_or_else(|| panic!("hyper did not close; cuts {cuts:?}"));
            assert_eq!(
                statuses(&out),
                ["HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 400"],
                "cuts {cuts:?}: {out}"
            );
            let refusal = &out[out.find("HTTP/1.1 400").unwrap_or(0)..];
            assert!(refusal.contains("connection: close\r\n"), "{out}");
            assert!(out.contains("/one 0;") && out.contains("/two 3;"), "{out}");
            assert!(!out.contains("/evil") && !out.contains("/never"), "{out}");
        }
    }

    #[tokio::test]
    async fn a_refused_first_request_gets_400_at_every_cut() {
        let input = super::CONFLICT.as_bytes();
        let mut runs: Vec<Vec<usize>> = (0..input.len()).map(|c| vec![c]).collect();
        runs.push((1..input.len()).collect());
        for cuts in runs {
            let out = exchange(input, &cuts)
                .await
                .unwrap_or_else(|| panic!("hyper did not close; cuts {cuts:?}"));
            assert_eq!(statuses(&out), ["HTTP/1.1 400"], "cuts {cuts:?}: {out}");
        }
    }

    #[tokio::test]
    async fn hyper_still_serves_a_clean_pipeline() {
        let input = b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                     3;x=y\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
                     GET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        for cut in [0, 20, 60, 70, 90] {
            let out = exchange(input, &[cut]).await.expect("closed");
            assert!(out.contains("/a 3;") && out.contains("/b 0;"), "{out}");
            assert_eq!(statuses(&out), ["HTTP/1.1 200", "HTTP/1.1 200"], "{out}");
        }
    }
}
