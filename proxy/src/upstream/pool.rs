//! Connection pools, one per (cluster, endpoint).
//!
//! HTTP/1.1: a LIFO stack of idle keep-alive connections (the most recently
//! used one is the warmest and least likely to have been closed by the
//! peer), capped, with an idle timeout. A connection goes back on the stack
//! only when its response body has been read to the end ([`Returner`]).
//! HTTP/2: one multiplexed connection, replaced when it closes.
//!
//! The std mutexes here guard a push or a pop and are never held across an
//! `.await`.
//!
//! Circuit breakers: every new connection takes a slot of the cluster's
//! `max_connections` (an HTTP/2 connection once, whatever its streams); a try
//! that needs one at the limit waits as a pending request (see
//! [`acquire_connection`]) and meanwhile takes over an HTTP/1.1 connection
//! returned to this pool, if one comes back first.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::breaker::{acquire_connection, Acquired, BreakerState, ConnSlot};
use super::io::UpstreamIo;
use crate::config::UpstreamProtocol;
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::ProxyBody;
use crate::stats::ClusterStats;

/// Everything that decides how connections to one endpoint are made; a
/// change of any of it means a new pool.
#[derive(Clone)]
pub struct PoolSettings {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

pub struct Pool {
    addr: SocketAddr,
    settings: PoolSettings,
    stats: ClusterStats,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// Serialises HTTP/2 connects so a burst opens one connection, not one
    /// per request. Only the connect path takes it.
    h2_connect: tokio::sync::Mutex<()>,
    /// The cluster's breaker counters (shared by every pool of the cluster).
    breakers: Arc<BreakerState>,
    /// Connections of this pool holding a slot, open or opening.
    open: Arc<AtomicU32>,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// Hands an HTTP/1.1 connection back to its pool when the response body it
/// carried has been fully read. Dropping it instead closes the connection.
pub struct Returner {
    sender: http1::SendRequest<ProxyBody>,
    pool: Arc<Pool>,
}

impl Returner {
    pub fn release(self) {
        let Returner { sender, pool } = self;
        if sender.is_closed() || pool.settings.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = pool.idle.lock() else {
            return;
        };
        if idle.len() < pool.settings.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
            pool.stats.cx_idle.inc();
            drop(idle);
            // A try waiting for a connection slot can take this one.
            pool.breakers.wake_pending();
        }
    }
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        settings: PoolSettings,
        stats: ClusterStats,
        breakers: Arc<BreakerState>,
    ) -> Self {
        Pool {
            addr,
            settings,
            stats,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connect: tokio::sync::Mutex::new(()),
            breakers,
            open: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Closes idle connections older than the idle timeout.
    pub fn reap(&self) {
        let timeout = self.settings.idle_timeout;
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let before = idle.len();
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
        let closed = before - idle.len();
        self.stats.cx_idle.sub(closed as i64);
    }

    /// Sends `req` on a pooled or new connection. For HTTP/1.1 the
    /// [`Returner`] must travel with the response body. `upgrade`: the
    /// connection will become a tunnel and is never pooled.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Returner>), ProxyError> {
        match self.settings.protocol {
            UpstreamProtocol::Http1 => self.send_h1(req, upgrade).await,
            UpstreamProtocol::Http2 => self.send_h2(req).await.map(|r| (r, None)),
        }
    }

    fn pop_idle(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            self.stats.cx_idle.dec();
            if !c.sender.is_closed() && c.since.elapsed() < self.settings.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Returner>), ProxyError> {
        // Pooled connections may have been closed by the peer since; a
        // request hyper reports as not sent is retried on the next one, and
        // finally on a fresh connection. Bounded: the idle stack is finite
        // and the fresh-connection attempt is the last.
        loop {
            let (mut sender, pooled) = match self.pop_idle() {
                Some(s) => (s, true),
                None => match self.slot(|| self.pop_idle()).await? {
                    Acquired::Reused(s) => (s, true),
                    Acquired::Slot(slot) => (self.connect_h1(slot).await?, false),
                },
            };
            if sender.ready().await.is_err() {
                if pooled {
                    continue;
                }
                return Err(ProxyError::new(ErrorKind::UpstreamReset));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let returner = (!upgrade).then(|| Returner {
                        sender,
                        pool: self.clone(),
                    });
                    return Ok((resp, returner));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if pooled => req = r,
                    _ => {
                        return Err(ProxyError::with_cause(
                            ErrorKind::UpstreamReset,
                            e.into_error(),
                        ))
                    }
                },
            }
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = match self.current_h2() {
            Some(s) => s,
            None => {
                let _connecting = self.h2_connect.lock().await;
                match self.current_h2() {
                    Some(s) => s,
                    None => {
                        // The connect lock is held, so nobody else can open
                        // this pool's connection meanwhile: nothing to reuse.
                        let s = self.connect_h2(self.new_slot().await?).await?;
                        if let Ok(mut slot) = self.h2.lock() {
                            *slot = Some(s.clone());
                        }
                        s
                    }
                }
            }
        };
        if sender.ready().await.is_err() {
            return Err(ProxyError::new(ErrorKind::UpstreamReset));
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::with_cause(ErrorKind::UpstreamReset, e))
    }

    fn current_h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let slot = self.h2.lock().ok()?;
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// A slot of the cluster's `max_connections`, waiting as a pending
    /// request (bounded by the connect timeout) when at the limit.
    async fn slot<T>(&self, reuse: impl FnMut() -> Option<T>) -> Result<Acquired<T>, ProxyError> {
        acquire_connection(
            &self.breakers,
            &self.open,
            self.settings.connect_timeout,
            reuse,
        )
        .await
    }

    /// A new connection for the TCP proxy: TCP connect (and TLS handshake)
    /// within the connect timeout, counted against the cluster's
    /// `max_connections` until the returned stream is dropped.
    pub async fn connect_io(&self) -> Result<UpstreamIo, ProxyError> {
        let slot = self.new_slot().await?;
        self.connect_with(Some(slot)).await
    }

    /// A slot for a connection nothing else could stand in for.
    async fn new_slot(&self) -> Result<ConnSlot, ProxyError> {
        match self.slot(|| None::<ConnSlot>).await? {
            Acquired::Slot(slot) | Acquired::Reused(slot) => Ok(slot),
        }
    }

    /// A connection outside the circuit breakers and the connection stats,
    /// for active health checks (Envoy counts those apart too).
    pub async fn connect_unlimited(&self) -> Result<UpstreamIo, ProxyError> {
        self.connect_raw(None).await
    }

    async fn connect_with(&self, slot: Option<ConnSlot>) -> Result<UpstreamIo, ProxyError> {
        let res = self.connect_raw(slot).await;
        match &res {
            Ok(_) => self.stats.cx_total.inc(),
            Err(_) => self.stats.cx_connect_fail.inc(),
        }
        res
    }

    /// TCP connect (and TLS handshake) within the connect timeout.
    async fn connect_raw(&self, slot: Option<ConnSlot>) -> Result<UpstreamIo, ProxyError> {
        let fut = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| ProxyError::with_cause(ErrorKind::ConnectFailed, e))?;
            let _ = tcp.set_nodelay(true);
            match &self.settings.tls {
                None => Ok(UpstreamIo::plain(tcp, slot)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|s| UpstreamIo::tls(s, slot))
                    .map_err(|e| ProxyError::with_cause(ErrorKind::ConnectFailed, e)),
            }
        };
        match tokio::time::timeout(self.settings.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::new(ErrorKind::ConnectTimeout)),
        }
    }

    async fn connect_h1(
        &self,
        slot: ConnSlot,
    ) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
        let io = self.connect_with(Some(slot)).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::with_cause(ErrorKind::ConnectFailed, e))?;
        let active = self.stats.cx_active.clone();
        active.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream http1 connection ended");
            }
            active.dec();
        });
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        slot: ConnSlot,
    ) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
        let io = self.connect_with(Some(slot)).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::with_cause(ErrorKind::ConnectFailed, e))?;
        let active = self.stats.cx_active.clone();
        active.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream http2 connection ended");
            }
            active.dec();
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests;
