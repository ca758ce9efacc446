//! Serving one downstream connection with hyper: HTTP/1.1 and HTTP/2 (h2c
//! prior knowledge, or h2 after ALPN) on the same socket, upgrades allowed,
//! graceful shutdown on drain or when the connection has idled too long.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::active::ListenerRt;
use crate::http::framing::{FramingGuard, Scanner};
use crate::listener::stopped;
use crate::pipeline::{self, ConnCtx};

/// A listener's limits on what a client may send.
pub struct Limits {
    /// The request head must be complete within this (slowloris).
    pub headers_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    /// More header fields than this get 431.
    pub max_headers: usize,
}

/// hyper's read buffer bounds the head; it refuses anything under 8 KiB.
fn read_buf_size(max_header_bytes: usize) -> usize {
    max_header_bytes.max(8192)
}

/// The framing guard for a new downstream connection. `h2`: ALPN chose
/// HTTP/2, which has no HTTP/1 framing to follow.
pub fn request_scanner(rt: &ListenerRt, h2: bool) -> Scanner {
    if h2 {
        return Scanner::off();
    }
    // hyper answers 431 once a partial head fills its read buffer, but one
    // read can carry a head past it (the buffer grows by up to twice its
    // size); the guard follows any head hyper could accept.
    Scanner::new(read_buf_size(rt.max_header_bytes) * 4)
}

/// The connection builder for one listener, made once per config.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.headers_timeout)
        .max_buf_size(read_buf_size(limits.max_header_bytes))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(60));
    b
}

/// What the idle timer needs to know: requests in progress, and whether
/// bytes moved since it last looked.
#[derive(Default)]
struct Activity {
    inflight: AtomicU32,
    io_events: AtomicU64,
}

struct InflightGuard(Arc<Activity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn serve<I>(
    io: I,
    scanner: Scanner,
    ctx: Arc<ConnCtx>,
    rt: &ListenerRt,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let svc_activity = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        svc_activity.inflight.fetch_add(1, Ordering::Relaxed);
        let guard = InflightGuard(svc_activity.clone());
        async move {
            let resp = pipeline::handle(req, ctx).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TrackedIo {
        inner: FramingGuard::new(io, scanner),
        activity: rt.idle_timeout.map(|_| activity.clone()),
    };
    let conn = rt
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = idle_watch(rt.idle_timeout, &activity);
    tokio::pin!(idle);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "downstream connection ended with an error");
            }
            return;
        }
        _ = stopped(&mut stop) => {}
        _ = &mut idle => {
            tracing::debug!(listener = %rt.name, "closing idle downstream connection");
        }
    }
    // Finish the request in flight, answer it with `Connection: close`
    // (HTTP/1.1) or GOAWAY (HTTP/2), then close.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "downstream connection ended while closing");
    }
}

/// Resolves once the connection had no request in flight and moved no
/// bytes for `timeout` (checked in quarters, so it fires between 1× and
/// 1.25× the timeout). Never resolves without a timeout.
async fn idle_watch(timeout: Option<Duration>, activity: &Activity) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let step = timeout / 4;
    let mut quiet = Duration::ZERO;
    let mut seen = activity.io_events.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(step).await;
        let now = activity.io_events.load(Ordering::Relaxed);
        if now != seen || activity.inflight.load(Ordering::Relaxed) > 0 {
            seen = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += step;
        if quiet >= timeout {
            return;
        }
    }
}

/// Counts reads and writes so the idle timer can tell a quiet connection
/// from a busy one without reading the clock per I/O.
struct TrackedIo<I> {
    inner: I,
    activity: Option<Arc<Activity>>,
}

impl<I> TrackedIo<I> {
    #[inline]
    fn touch(&self) {
        if let Some(a) = &self.activity {
            a.io_events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if poll.is_ready() {
            this.touch();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if poll.is_ready() {
            this.touch();
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            this.touch();
        }
        poll
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
