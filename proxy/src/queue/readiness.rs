//! Readiness probing of a revision's local app, as Knative's queue-proxy
//! does it: aggressively (every 50 ms, 100 ms timeout) until the first
//! success, so a cold start is noticed within one interval; then every
//! period; `failure_threshold` failures in a row make it unready, and
//! probing is aggressive again until it recovers. The proxy's `/ready`
//! follows it, and that gates the instance's endpoint in the control plane;
//! every flip wakes [`changes`], so a `/ready?wait=` long-poll answers the
//! moment the app is ready rather than at its caller's next probe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::ReadinessProbe;

const INITIAL_INTERVAL: Duration = Duration::from_millis(50);
const AGGRESSIVE_TIMEOUT: Duration = Duration::from_millis(100);
const PERIOD: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(1);
const FAILURE_THRESHOLD: u32 = 3;
/// Enough of a response to read its status line.
const STATUS_LINE_MAX: usize = 256;

/// The probe as run: defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    /// HTTP GET of this path; None: TCP connect.
    pub path: Option<String>,
    pub initial_interval: Duration,
    pub period: Duration,
    /// None: 100 ms while aggressive, 1 s after.
    pub timeout: Option<Duration>,
    pub failure_threshold: u32,
}

impl ProbeSettings {
    pub fn from_config(p: Option<&ReadinessProbe>) -> Self {
        ProbeSettings {
            path: p.and_then(|p| p.path.clone()),
            initial_interval: p
                .and_then(|p| p.initial_interval)
                .map_or(INITIAL_INTERVAL, |d| d.get()),
            period: p.and_then(|p| p.period).map_or(PERIOD, |d| d.get()),
            timeout: p.and_then(|p| p.timeout).map(|d| d.get()),
            failure_threshold: p
                .and_then(|p| p.failure_threshold)
                .unwrap_or(FAILURE_THRESHOLD)
                .max(1),
        }
    }
}

/// Woken (every waiter) whenever any app's readiness in this process flips.
/// Process-wide, like the revision registry: `/ready` covers every queue
/// cluster of the running config.
pub fn changes() -> &'static Notify {
    static CHANGES: OnceLock<Notify> = OnceLock::new();
    CHANGES.get_or_init(Notify::new)
}

/// The app's readiness, kept up to date by a probing task that runs while
/// this is alive.
pub struct Readiness {
    ready: AtomicBool,
    settings: ProbeSettings,
    targets: Vec<SocketAddr>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether this prober already probes exactly this.
    pub fn probes(&self, settings: &ProbeSettings, targets: &[SocketAddr]) -> bool {
        self.settings == *settings && self.targets == targets
    }

    /// Starts probing `targets` (all must pass) on the calling runtime. The
    /// task ends when the returned `Arc` (and its clones) are dropped.
    pub fn spawn(settings: ProbeSettings, targets: Vec<SocketAddr>, name: &str) -> Arc<Readiness> {
        let r = Arc::new(Readiness {
            ready: AtomicBool::new(false),
            settings,
            targets,
        });
        let weak = Arc::downgrade(&r);
        let name = name.to_string();
        tokio::spawn(run(weak, name));
        r
    }
}

async fn run(weak: Weak<Readiness>, name: String) {
    let mut failures = 0u32;
    loop {
        let Some(r) = weak.upgrade() else {
            return;
        };
        let ready = r.is_ready();
        let s = &r.settings;
        let timeout = s
            .timeout
            .unwrap_or(if ready { TIMEOUT } else { AGGRESSIVE_TIMEOUT });
        let mut pass = !r.targets.is_empty();
        for t in &r.targets {
            if let Err(e) = probe(*t, s.path.as_deref(), timeout).await {
                tracing::debug!(cluster = %name, target = %t, error = %e, "readiness probe failed");
                pass = false;
                break;
            }
        }
        let wait = if pass {
            failures = 0;
            if !ready {
                tracing::info!(cluster = %name, "local app ready");
                r.ready.store(true, Ordering::Release);
                changes().notify_waiters();
            }
            s.period
        } else if ready {
            failures += 1;
            if failures >= s.failure_threshold {
                tracing::warn!(cluster = %name, failures, "local app unready");
                r.ready.store(false, Ordering::Release);
                changes().notify_waiters();
                failures = 0;
                s.initial_interval
            } else {
                s.period
            }
        } else {
            s.initial_interval
        };
        // Do not keep the prober alive across the sleep.
        drop(r);
        tokio::time::sleep(wait).await;
    }
}

/// One probe: a TCP connect, or an HTTP/1.1 GET whose status must be 2xx.
pub async fn probe(addr: SocketAddr, path: Option<&str>, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(path) = path else {
        return Ok(());
    };
    // Knative marks its probes (`K-Network-Probe: queue`) so apps and
    // metrics can tell them from traffic; so do we.
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ferry-queue-probe\r\n\
         x-ferry-probe: queue\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; STATUS_LINE_MAX];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') {
        if len == buf.len() {
            return Err("status line too long".into());
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", line.lines().next().unwrap_or("")))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn http_server(status: u16) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_only() {
        let ok = http_server(204).await;
        let bad = http_server(503).await;
        let t = Duration::from_secs(2);
        assert_eq!(probe(ok, Some("/healthz"), t).await, Ok(()));
        assert_eq!(
            probe(bad, Some("/healthz"), t).await,
            Err("status 503".into())
        );
        assert!(probe(ok, None, t).await.is_ok(), "tcp probe");
    }

    #[tokio::test]
    async fn becomes_ready_soon_after_the_app_listens() {
        // Find a free port, then start listening on it later.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let r = Readiness::spawn(ProbeSettings::from_config(None), vec![addr], "t");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!r.is_ready());
        let _l = TcpListener::bind(addr).await.expect("bind later");
        let started = std::time::Instant::now();
        while !r.is_ready() {
            assert!(started.elapsed() < Duration::from_secs(2), "never ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    /// A waiter on [`changes`] is woken by the flip to ready, not by a
    /// later probe of its own.
    #[tokio::test]
    async fn becoming_ready_wakes_waiters() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let woken = changes().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let r = Readiness::spawn(ProbeSettings::from_config(None), vec![addr], "w");
        tokio::time::timeout(Duration::from_secs(2), woken)
            .await
            .expect("woken by the flip to ready");
        // Other tests' probers may flip too; this one must be ready soon.
        let started = std::time::Instant::now();
        while !r.is_ready() {
            assert!(started.elapsed() < Duration::from_secs(2), "never ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
