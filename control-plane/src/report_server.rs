//! The load-report server (`ferry.report.v1.LoadReporter`,
//! `proto/load_report.proto`), served on the xDS gRPC port next to ADS:
//! every proxy already knows that address, and one port is one thing less
//! to configure.
//!
//! Each `LoadReport` carries one [`proto::Stat`] per revision the proxy
//! serves (sidecars, queue role) or holds requests for (any proxy,
//! activator role). A periodic report's stats feed the autoscaler's metric
//! windows ([`AutoscalerHandle::record`]); a stat marked
//! `activation_demand` (sent at once by a proxy that started holding
//! requests for a revision with no endpoints) asks for an immediate
//! decision ([`AutoscalerHandle::demand`]). The immediate report is not
//! recorded: the same requests are counted by the proxy's next periodic
//! report, and recording both would count them twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::autoscaler::Stat;
use crate::control_loop::{AutoscalerHandle, RevisionKey};

/// Generated from `proto/load_report.proto` by `build.rs`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("ferry.report.v1");
}

use proto::load_reporter_server::{LoadReporter, LoadReporterServer};
use proto::{LoadReport, ReportAck, Trigger};

/// Counters for logs and tests.
#[derive(Debug, Default)]
pub struct ReportCounters {
    pub streams: AtomicU64,
    pub reports: AtomicU64,
    pub demands: AtomicU64,
}

#[derive(Clone)]
pub struct ReportServer {
    handle: Arc<AutoscalerHandle>,
    counters: Arc<ReportCounters>,
    /// Ends every stream when set: a proxy's stream never ends on its own,
    /// and the gRPC server's graceful stop waits for open calls.
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

impl ReportServer {
    pub fn new(handle: Arc<AutoscalerHandle>) -> Self {
        ReportServer {
            handle,
            counters: Arc::new(ReportCounters::default()),
            shutdown: None,
        }
    }

    /// Ends open streams when `shutdown` turns true.
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    pub fn counters(&self) -> Arc<ReportCounters> {
        self.counters.clone()
    }

    pub fn into_service(self) -> LoadReporterServer<ReportServer> {
        LoadReporterServer::new(self)
    }

    /// Feeds one report to the autoscaler.
    pub fn ingest(&self, report: &LoadReport) {
        self.counters.reports.fetch_add(1, Ordering::Relaxed);
        let activation = report.trigger == Trigger::Activation as i32;
        for s in &report.stats {
            if s.revision.is_empty() {
                continue;
            }
            let namespace = if s.namespace.is_empty() {
                "default"
            } else {
                s.namespace.as_str()
            };
            let key: RevisionKey = (namespace.to_string(), s.revision.clone());
            if s.activation_demand {
                self.counters.demands.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(revision = %key.1, pod = %report.pod_name, "activation demand");
                self.handle.demand(&key);
                continue;
            }
            if activation {
                // The rest of an immediate report is a peek at the current
                // second, which the periodic report will cover.
                continue;
            }
            self.handle.record(&key, &to_stat(s));
            // Requests still held for a revision nobody serves: the first
            // demand may have been lost with a reconnecting stream, so ask
            // again (a no-op decision once instances are ready).
            if s.held_requests > 0 && self.handle.ready(&key) == 0 {
                self.handle.demand(&key);
            }
        }
    }
}

/// The wire `Stat` → the autoscaler's, clamping nonsense (negative or
/// non-finite values from a buggy reporter) to zero rather than letting it
/// poison a window.
pub fn to_stat(s: &proto::Stat) -> Stat {
    let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
    Stat {
        average_concurrency: clean(s.average_concurrency),
        average_proxied_concurrency: clean(s.average_proxied_concurrency),
        request_count: clean(s.request_count),
        proxied_request_count: clean(s.proxied_request_count),
    }
}

#[tonic::async_trait]
impl LoadReporter for ReportServer {
    async fn report(
        &self,
        req: tonic::Request<tonic::Streaming<LoadReport>>,
    ) -> Result<tonic::Response<ReportAck>, tonic::Status> {
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let peer = req.remote_addr();
        let mut stream = req.into_inner();
        let mut received = 0u64;
        let mut pod = String::new();
        let mut shutdown = self.shutdown.clone();
        loop {
            let next = match shutdown.as_mut() {
                Some(sd) => tokio::select! {
                    m = stream.message() => m,
                    _ = stopped(sd) => break,
                },
                None => stream.message().await,
            };
            let Some(report) = next? else {
                break;
            };
            received += 1;
            if pod.is_empty() {
                pod.clone_from(&report.pod_name);
                tracing::debug!(%pod, ?peer, "load reports started");
            }
            self.ingest(&report);
        }
        tracing::debug!(%pod, received, "load report stream ended");
        Ok(tonic::Response::new(ReportAck { received }))
    }
}

/// Waits until the flag is set or its sender is gone.
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_cleaned() {
        let s = proto::Stat {
            average_concurrency: f64::NAN,
            average_proxied_concurrency: -1.0,
            request_count: 3.0,
            proxied_request_count: f64::INFINITY,
            ..Default::default()
        };
        let out = to_stat(&s);
        assert_eq!(out.average_concurrency, 0.0);
        assert_eq!(out.average_proxied_concurrency, 0.0);
        assert_eq!(out.request_count, 3.0);
        assert_eq!(out.proxied_request_count, 0.0);
    }
}
