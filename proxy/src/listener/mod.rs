//! Listeners: worker runtimes, sockets, accept loops, connection limits and
//! draining.
//!
//! Thread per core, as Envoy: each worker is a single-threaded tokio
//! runtime with its own `SO_REUSEPORT` socket per listener, so a connection
//! lives and dies on one thread and the kernel spreads accepts. The
//! [`ListenerSet`] (driven from the control thread) diffs configs: new
//! listeners are bound before a config is published (a bind failure
//! rejects the config), removed ones stop accepting and drain after.

mod tcp;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};

use crate::active::{Active, ListenerRt};
use crate::config::{ConfigError, ConfigErrors, ListenerProtocol};
use crate::http::server;
use crate::pipeline::ConnCtx;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKLOG: i32 = 4096;

/// What every worker shares.
pub struct Shared {
    pub active: Arc<ArcSwap<Active>>,
    pub conns: ConnTracker,
}

/// Counts open downstream connections so a drain knows when it is done.
#[derive(Default)]
pub struct ConnTracker {
    open: AtomicUsize,
    idle: Notify,
}

impl ConnTracker {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, or `limit` passes. True: all
    /// closed.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.open() == 0;
            }
        }
    }
}

/// Held by each connection task; releases the connection's slots on drop.
struct ConnGuard {
    shared: Arc<Shared>,
    listener_count: Arc<AtomicU32>,
    listener: Arc<ListenerRt>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.listener_count.fetch_sub(1, Ordering::AcqRel);
        self.listener.stats.cx_active.dec();
        if self.shared.conns.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.conns.idle.notify_waiters();
        }
    }
}

/// Starts `n` worker threads, each running a current-thread runtime until
/// the process exits.
pub fn start_workers(n: usize) -> std::io::Result<Vec<Handle>> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("ferry-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>());
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("worker thread died at start"))??;
        handles.push(handle);
    }
    Ok(handles)
}

struct Open {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    count: Arc<AtomicU32>,
}

/// Sockets bound for a config that is about to be published.
pub struct Prepared {
    bind: Vec<(Arc<str>, SocketAddr, Vec<std::net::TcpListener>)>,
    remove: Vec<Arc<str>>,
}

pub struct ListenerSet {
    shared: Arc<Shared>,
    workers: Vec<Handle>,
    open: HashMap<Arc<str>, Open>,
}

impl ListenerSet {
    pub fn new(shared: Arc<Shared>, workers: Vec<Handle>) -> Self {
        ListenerSet {
            shared,
            workers,
            open: HashMap::new(),
        }
    }

    /// Binds the listeners `next` adds (or moves to a new address). Nothing
    /// is accepted on them until [`ListenerSet::commit`].
    pub fn prepare(&self, next: &Active) -> Result<Prepared, ConfigErrors> {
        let mut bind = Vec::new();
        let mut errors = Vec::new();
        for (i, l) in next.config.listeners.iter().enumerate() {
            let Some(rt) = next.listener(&l.name) else {
                continue;
            };
            if self.open.get(&rt.name).is_some_and(|o| o.addr == rt.addr) {
                continue;
            }
            match bind_all(rt.addr, self.workers.len()) {
                Ok(socks) => bind.push((rt.name.clone(), rt.addr, socks)),
                Err(e) => errors.push(ConfigError::new(
                    format!("listeners[{i}].address"),
                    format!("cannot listen on {}: {e}", rt.addr),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let remove = self
            .open
            .iter()
            .filter(|(name, o)| next.listener(name).is_none_or(|l| l.addr != o.addr))
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Prepared { bind, remove })
    }

    /// Starts accepting on the prepared sockets and drains the removed
    /// listeners. Call after the new config is published.
    pub fn commit(&mut self, p: Prepared) {
        for name in p.remove {
            if let Some(old) = self.open.remove(&name) {
                tracing::info!(listener = %name, address = %old.addr, "listener removed; draining");
                let _ = old.stop.send(true);
            }
        }
        for (name, addr, socks) in p.bind {
            let (stop, _) = watch::channel(false);
            let count = Arc::new(AtomicU32::new(0));
            for (sock, worker) in socks.into_iter().zip(&self.workers) {
                worker.spawn(accept_loop(
                    sock,
                    name.clone(),
                    self.shared.clone(),
                    stop.subscribe(),
                    count.clone(),
                ));
            }
            tracing::info!(listener = %name, address = %addr, "listening");
            self.open.insert(name, Open { addr, stop, count });
        }
    }

    /// Stops every listener and asks every connection to finish.
    pub fn drain_all(&mut self) {
        for (_, o) in self.open.drain() {
            let _ = o.stop.send(true);
        }
    }

    pub fn open_connections(&self) -> u32 {
        self.open
            .values()
            .map(|o| o.count.load(Ordering::Relaxed))
            .sum()
    }
}

/// One socket per worker, all on `addr` via SO_REUSEPORT. Port 0 picks one
/// port for all of them.
fn bind_all(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut out = vec![first];
    for _ in 1..workers {
        out.push(bind_one(addr)?);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

async fn accept_loop(
    sock: std::net::TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    count: Arc<AtomicU32>,
) {
    let listener = match TcpListener::from_std(sock) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register listener");
            return;
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead
                    // of spinning on a hot error.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(rt) = shared.active.load().listener(&name).cloned() else {
            continue;
        };
        let max = rt.config.max_connections;
        let n = count.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && n > max {
            count.fetch_sub(1, Ordering::AcqRel);
            rt.stats.cx_overflow.inc();
            continue;
        }
        rt.stats.cx_total.inc();
        rt.stats.cx_active.inc();
        shared.conns.open.fetch_add(1, Ordering::AcqRel);
        let guard = ConnGuard {
            shared: shared.clone(),
            listener_count: count.clone(),
            listener: rt.clone(),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(
            stream,
            peer,
            rt,
            shared.clone(),
            stop.clone(),
            guard,
        ));
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRt>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    match rt.protocol {
        ListenerProtocol::Tcp => tcp::proxy(stream, &rt, &shared, stop).await,
        ListenerProtocol::Http => {
            let ctx = Arc::new(ConnCtx::new(
                rt.name.clone(),
                peer,
                rt.tls.is_some(),
                shared.active.clone(),
            ));
            match &rt.tls {
                None => {
                    let scanner = server::request_scanner(&rt, false);
                    server::serve(stream, scanner, ctx, &rt, stop).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            let scanner = server::request_scanner(&rt, h2);
                            server::serve(tls, scanner, ctx, &rt, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone). The watch
/// guard is dropped inside, so callers' futures stay `Send`.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
