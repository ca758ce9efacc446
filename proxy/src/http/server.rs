//! Serving one downstream connection with hyper: HTTP/1.1 and HTTP/2 (h2c
//! prior knowledge, or h2 after ALPN) on the same socket, upgrades allowed,
//! graceful shutdown on drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::listener::stopped;
use crate::pipeline::{self, ConnCtx};

/// The connection builder, made once and shared by every connection.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(60));
    b
}

pub async fn serve<I>(
    io: I,
    ctx: Arc<ConnCtx>,
    builder: &auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(req, ctx).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "downstream connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            // Finish the request in flight, answer it with
            // `Connection: close` (HTTP/1.1) or GOAWAY (HTTP/2), then close.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "downstream connection ended while draining");
            }
        }
    }
}
