//! Active health checking, as Envoy's HTTP and TCP health checkers, and the
//! per-endpoint health state that active and passive checks share.
//!
//! One task per (cluster, checker) on the control runtime, holding only a
//! `Weak<Cluster>`: it ends when a reload drops the cluster, or as soon as a
//! newer build of the same cluster name has started (so two builds never
//! both count checks against one endpoint's thresholds). Each round checks
//! every endpoint concurrently on a fresh connection (never the pool: a
//! pooled connection proves nothing about accepting new ones), then sleeps
//! `interval` plus a random jitter; the first round runs at once.
//!
//! Thresholds follow Envoy's `HealthCheckerImplBase`: an endpoint new to the
//! cluster starts unhealthy and its first passing check makes it healthy at
//! once; after that, `healthy_threshold` passes in a row bring it back and
//! `unhealthy_threshold` failures in a row take it out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;

use super::cluster::{Cluster, Endpoint};
use super::outlier::OutlierState;
use super::pool::Pool;
use crate::config::{self, UpstreamProtocol};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
const USER_AGENT: &str = "Ferry/HC";

/// One `health_checks[]` entry, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct HcSettings {
    pub timeout: Duration,
    pub interval: Duration,
    pub jitter: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub kind: HcKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HcKind {
    Tcp,
    Http {
        path: String,
        host: String,
        /// Half-open `[start, end)` ranges.
        expected: Vec<(u16, u16)>,
    },
}

impl HcSettings {
    pub fn from_config(hc: &config::HealthCheck, cluster: &str) -> HcSettings {
        let kind = match &hc.http_health_check {
            Some(h) => HcKind::Http {
                path: h.path.clone(),
                host: h.host.clone().unwrap_or_else(|| cluster.to_string()),
                expected: if h.expected_statuses.is_empty() {
                    vec![(200, 300)]
                } else {
                    h.expected_statuses
                        .iter()
                        .map(|r| (r.start, r.end))
                        .collect()
                },
            },
            // Validation requires exactly one kind; a TCP check is the
            // harmless reading of anything else.
            None => HcKind::Tcp,
        };
        HcSettings {
            timeout: hc.timeout.map_or(DEFAULT_TIMEOUT, |d| d.get()),
            interval: hc.interval.map_or(DEFAULT_INTERVAL, |d| d.get()),
            jitter: hc.interval_jitter.map_or(Duration::ZERO, |d| d.get()),
            unhealthy_threshold: hc
                .unhealthy_threshold
                .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD)
                .max(1),
            healthy_threshold: hc
                .healthy_threshold
                .unwrap_or(DEFAULT_HEALTHY_THRESHOLD)
                .max(1),
            kind,
        }
    }

    fn passes(&self, status: u16) -> bool {
        match &self.kind {
            HcKind::Tcp => true,
            HcKind::Http { expected, .. } => {
                expected.iter().any(|&(lo, hi)| status >= lo && status < hi)
            }
        }
    }
}

/// One checker's view of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckerState {
    pub healthy: bool,
    /// No result yet: the first pass makes the endpoint healthy at once.
    pub first_check: bool,
    pub consecutive_passes: u32,
    pub consecutive_failures: u32,
}

impl Default for CheckerState {
    fn default() -> Self {
        CheckerState {
            healthy: false,
            first_check: true,
            consecutive_passes: 0,
            consecutive_failures: 0,
        }
    }
}

impl CheckerState {
    /// Applies one result; true when `healthy` changed.
    pub fn apply(
        &mut self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> bool {
        let first = std::mem::replace(&mut self.first_check, false);
        if passed {
            self.consecutive_failures = 0;
            self.consecutive_passes = self.consecutive_passes.saturating_add(1);
            if !self.healthy && (first || self.consecutive_passes >= healthy_threshold) {
                self.healthy = true;
                return true;
            }
        } else {
            self.consecutive_passes = 0;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.healthy && self.consecutive_failures >= unhealthy_threshold {
                self.healthy = false;
                return true;
            }
        }
        false
    }
}

/// Everything known about one endpoint's health, active and passive. Kept
/// across reloads and DNS changes by the registry, keyed by (cluster,
/// address, health-check config): an endpoint keeps its state as long as
/// the checks that produced it are unchanged.
pub struct HostHealth {
    /// Envoy's `FAILED_ACTIVE_HC`: some checker holds it unhealthy.
    hc_failed: AtomicBool,
    checkers: Mutex<Vec<CheckerState>>,
    pub outlier: OutlierState,
}

impl HostHealth {
    /// `checkers`: how many health checks the cluster has; with none the
    /// endpoint is actively healthy for good.
    pub fn new(checkers: usize) -> HostHealth {
        HostHealth {
            hc_failed: AtomicBool::new(checkers > 0),
            checkers: Mutex::new(vec![CheckerState::default(); checkers]),
            outlier: OutlierState::default(),
        }
    }

    pub fn failed_active_hc(&self) -> bool {
        self.hc_failed.load(Ordering::Acquire)
    }

    /// Records checker `i`'s result; true when the endpoint's active health
    /// (all checkers together) changed.
    pub fn apply(&self, i: usize, passed: bool, s: &HcSettings) -> bool {
        let Ok(mut checkers) = self.checkers.lock() else {
            return false;
        };
        let Some(c) = checkers.get_mut(i) else {
            return false;
        };
        if !c.apply(passed, s.healthy_threshold, s.unhealthy_threshold) {
            return false;
        }
        let failed = checkers.iter().any(|c| !c.healthy);
        self.hc_failed.swap(failed, Ordering::AcqRel) != failed
    }

    pub fn checkers(&self) -> Vec<CheckerState> {
        self.checkers.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Starts one task per health check of the cluster.
pub fn spawn(cluster: &Arc<Cluster>) {
    for (i, settings) in cluster.health_checks().iter().enumerate() {
        let weak = Arc::downgrade(cluster);
        let settings = settings.clone();
        let kick = cluster.hc_kick();
        tokio::spawn(run(weak, i, settings, kick));
    }
}

async fn run(
    weak: Weak<Cluster>,
    index: usize,
    settings: Arc<HcSettings>,
    kick: Arc<tokio::sync::Notify>,
) {
    loop {
        // Hold the cluster only to read its endpoints and to apply results,
        // never across the checks: a reload must be able to drop it.
        let (endpoints, protocol, tls) = {
            let Some(c) = weak.upgrade() else { return };
            if !c.is_current() {
                return;
            }
            (
                c.hosts.load().endpoints.clone(),
                c.protocol,
                c.config.tls.is_some(),
            )
        };
        let checks = endpoints
            .iter()
            .map(|ep| check(ep.pool(), &settings, protocol, tls));
        let results = futures_util::future::join_all(checks).await;
        {
            let Some(c) = weak.upgrade() else { return };
            if !c.is_current() {
                return;
            }
            let mut changed = false;
            for (ep, result) in endpoints.iter().zip(&results) {
                changed |= apply_result(&c, ep, index, &settings, result);
            }
            if changed {
                c.refresh_membership();
            }
        }
        let jitter = if settings.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(settings.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(fastrand::u64(0..=nanos))
        };
        // A DNS change kicks the checkers so new endpoints get their first
        // check at once instead of an interval later.
        tokio::select! {
            _ = tokio::time::sleep(settings.interval + jitter) => {}
            _ = kick.notified() => {}
        }
    }
}

fn apply_result(
    c: &Cluster,
    ep: &Endpoint,
    index: usize,
    settings: &HcSettings,
    result: &Result<(), String>,
) -> bool {
    match result {
        Ok(()) => c.stats.hc_success.inc(),
        Err(reason) => {
            c.stats.hc_failure.inc();
            tracing::debug!(cluster = %c.name, endpoint = %ep.addr, %reason, "health check failed");
        }
    }
    let changed = ep.health.apply(index, result.is_ok(), settings);
    if changed {
        let healthy = !ep.health.failed_active_hc();
        tracing::info!(cluster = %c.name, endpoint = %ep.addr, healthy, "active health changed");
    }
    changed
}

/// One check of one endpoint: Ok when it passed, else why not.
pub async fn check(
    pool: &Pool,
    s: &HcSettings,
    protocol: UpstreamProtocol,
    tls: bool,
) -> Result<(), String> {
    let fut = async {
        let io = pool.connect_unlimited().await.map_err(|e| e.to_string())?;
        match &s.kind {
            HcKind::Tcp => Ok(()),
            HcKind::Http { path, host, .. } => {
                let status = http_status(io, protocol, tls, path, host, pool.addr()).await?;
                if s.passes(status) {
                    Ok(())
                } else {
                    Err(format!("unexpected status {status}"))
                }
            }
        }
    };
    match tokio::time::timeout(s.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", s.timeout)),
    }
}

/// GET `path` on a fresh connection; the status of the answer.
async fn http_status(
    io: super::UpstreamIo,
    protocol: UpstreamProtocol,
    tls: bool,
    path: &str,
    host: &str,
    addr: SocketAddr,
) -> Result<u16, String> {
    let host_value =
        HeaderValue::from_str(host).map_err(|e| format!("invalid host {host:?}: {e}"))?;
    let io = TokioIo::new(io);
    match protocol {
        UpstreamProtocol::Http1 => {
            let req = Request::get(path)
                .header(header::HOST, host_value)
                .header(header::USER_AGENT, USER_AGENT)
                .header(header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("cannot build the check request: {e}"))?;
            let (mut sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
            drive(sender.send_request(req), conn).await
        }
        UpstreamProtocol::Http2 => {
            let uri = Uri::builder()
                .scheme(if tls { "https" } else { "http" })
                .authority(host)
                .path_and_query(path)
                .build()
                .map_err(|e| format!("cannot build the check URI: {e}"))?;
            let req = Request::get(uri)
                .header(header::USER_AGENT, USER_AGENT)
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("cannot build the check request: {e}"))?;
            let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
            drive(sender.send_request(req), conn).await
        }
    }
}

/// Drives a connection and its one request together, without a spawned
/// task that could outlive the check. The connection may finish first (the
/// peer honoured `connection: close` right after answering): the response
/// was handed over by then, so the request is still awaited.
async fn drive<R, C>(send: R, conn: C) -> Result<u16, String>
where
    R: std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
    C: std::future::Future<Output = hyper::Result<()>>,
{
    let mut send = std::pin::pin!(send);
    let mut conn = std::pin::pin!(conn);
    let resp = tokio::select! {
        biased;
        r = &mut send => r,
        c = &mut conn => match c {
            Ok(()) => send.await,
            Err(e) => return Err(format!("connection failed: {e}")),
        },
    };
    resp.map(|r| r.status().as_u16())
        .map_err(|e| format!("request failed: {e}"))
}

#[cfg(test)]
mod tests;
