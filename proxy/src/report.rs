//! The load-report stream to the control plane: every second one
//! `LoadReport` with a `Stat` per revision this proxy serves (queue role)
//! or holds requests for (activator role), and one at once when a request
//! for a revision at zero is held (activation demand).
//!
//! One client-streaming gRPC call (`ferry.report.v1.LoadReporter/Report`,
//! `proto/load_report.proto`) carries the reports; when it fails the
//! reporter reconnects with jittered exponential backoff. The stats windows
//! are closed every second whatever the link's state; a report that cannot
//! be sent at once (link down, or the small send buffer full) is dropped
//! and counted, never queued: the autoscaler wants the present second, and
//! an unbounded backlog would only grow while the control plane is away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_xds_client::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::queue::{Registry, Revision};

/// Generated from `proto/load_report.proto` by `build.rs`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("ferry.report.v1");
}

use proto::load_reporter_client::LoadReporterClient;
use proto::{LoadReport, Stat, Trigger};

const INTERVAL: Duration = Duration::from_secs(1);
/// Reports are made this long after each second boundary, so requests that
/// read the clock just before it have landed in the window being closed.
const GRACE: Duration = Duration::from_millis(20);
/// Reports waiting for the stream; beyond this they are dropped.
const SEND_BUFFER: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// What the lead's CLI provides: `--report-to URL --pod-name NAME`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The control plane's gRPC address, e.g. `http://127.0.0.1:18000`.
    pub target: String,
    /// This proxy's name in reports (the instance's pod name; a gateway's
    /// own name).
    pub pod: String,
}

/// Reports made, sent and dropped (link down or buffer full), for the
/// operator and the tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub made: AtomicU64,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    made: AtomicU64::new(0),
    sent: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

/// Starts the reporter on the calling runtime (the control runtime). It
/// runs until the returned task is aborted.
pub fn spawn(opts: ReportOptions, registry: Arc<Registry>) -> JoinHandle<()> {
    tokio::spawn(run(opts, registry))
}

/// The link to the control plane.
enum Link {
    Down {
        retry_at: tokio::time::Instant,
    },
    Up {
        tx: mpsc::Sender<LoadReport>,
        call: JoinHandle<Result<tonic::Response<proto::ReportAck>, tonic::Status>>,
    },
}

async fn run(opts: ReportOptions, registry: Arc<Registry>) {
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut link = Link::Down {
        retry_at: tokio::time::Instant::now(),
    };
    // Tick just after each window of the registry's clock ends.
    let since = registry.epoch.elapsed();
    let next_boundary = registry.epoch
        + INTERVAL * (u32::try_from(since.as_secs()).unwrap_or(u32::MAX - 1) + 1)
        + GRACE;
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::from_std(next_boundary), INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retry_at = match &link {
            Link::Down { retry_at } => Some(*retry_at),
            Link::Up { .. } => None,
        };
        tokio::select! {
            _ = ticker.tick() => {
                let report = periodic(&registry, &opts.pod, Instant::now());
                send(&mut link, report, &mut backoff);
            }
            _ = registry.demand.notified() => {
                if let Some(report) = demand(&registry, &opts.pod) {
                    send(&mut link, report, &mut backoff);
                }
            }
            ended = wait_call(&mut link) => {
                match ended {
                    Ok(ack) => tracing::info!(received = ack.received, "load-report stream closed by the server"),
                    Err(e) => tracing::warn!(error = %e, "load-report stream failed"),
                }
                link = Link::Down { retry_at: tokio::time::Instant::now() + backoff.next_delay() };
            }
            _ = sleep_until(retry_at) => {
                link = match connect(&opts.target).await {
                    Ok(up) => {
                        tracing::info!(target = %opts.target, "load-report stream open");
                        backoff.reset();
                        up
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::debug!(target = %opts.target, error = %e, retry_in = ?delay, "load-report connect failed");
                        Link::Down { retry_at: tokio::time::Instant::now() + delay }
                    }
                };
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the call of an up link ends.
async fn wait_call(
    link: &mut Link,
) -> Result<proto::ReportAck, Box<dyn std::error::Error + Send + Sync>> {
    match link {
        Link::Up { call, .. } => match call.await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(Box::new(status)),
            Err(join) => Err(Box::new(join)),
        },
        Link::Down { .. } => std::future::pending().await,
    }
}

async fn connect(target: &str) -> Result<Link, Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = LoadReporterClient::new(channel);
    let (tx, rx) = mpsc::channel(SEND_BUFFER);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let call = tokio::spawn(async move { client.report(stream).await });
    Ok(Link::Up { tx, call })
}

fn send(link: &mut Link, report: LoadReport, backoff: &mut Backoff) {
    COUNTERS.made.fetch_add(1, Ordering::Relaxed);
    let Link::Up { tx, .. } = link else {
        COUNTERS.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match tx.try_send(report) {
        Ok(()) => {
            COUNTERS.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            COUNTERS.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("load-report stream backed up: report dropped");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            COUNTERS.dropped.fetch_add(1, Ordering::Relaxed);
            *link = Link::Down {
                retry_at: tokio::time::Instant::now() + backoff.next_delay(),
            };
        }
    }
}

fn unix_ms(at: Instant, now: Instant) -> i64 {
    let wall = SystemTime::now()
        .checked_sub(now.saturating_duration_since(at))
        .unwrap_or(UNIX_EPOCH);
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn stat(rev: &Revision, pod: &str) -> Stat {
    Stat {
        namespace: rev.key.namespace.clone(),
        revision: rev.key.revision.clone(),
        pod_name: pod.to_string(),
        held_requests: rev.held.load(Ordering::Acquire),
        ..Default::default()
    }
}

/// The once-a-second report: every live revision's closed windows.
pub fn periodic(registry: &Registry, pod: &str, now: Instant) -> LoadReport {
    let stats = registry
        .live()
        .iter()
        .filter_map(|rev| {
            let w = rev.stats.collect(now)?;
            Some(Stat {
                average_concurrency: w.average_concurrency,
                average_proxied_concurrency: w.average_proxied_concurrency,
                request_count: w.request_count,
                proxied_request_count: w.proxied_request_count,
                timestamp_unix_ms: unix_ms(w.end, now),
                window_ms: u32::try_from(w.length.as_millis()).unwrap_or(u32::MAX),
                ..stat(rev, pod)
            })
        })
        .collect();
    LoadReport {
        pod_name: pod.to_string(),
        timestamp_unix_ms: unix_ms(now, now),
        stats,
        trigger: Trigger::Periodic as i32,
    }
}

/// The immediate report for revisions with new activation demand: the held
/// requests as the concurrency right now (the next periodic report has the
/// time-weighted figures and the counts). None when no demand is pending.
pub fn demand(registry: &Registry, pod: &str) -> Option<LoadReport> {
    let now = Instant::now();
    let stats: Vec<Stat> = registry
        .live()
        .iter()
        .filter(|rev| rev.demand.swap(false, Ordering::AcqRel))
        .map(|rev| {
            let s = stat(rev, pod);
            let held = f64::from(s.held_requests.max(1));
            Stat {
                average_concurrency: held,
                average_proxied_concurrency: held,
                timestamp_unix_ms: unix_ms(now, now),
                activation_demand: true,
                ..s
            }
        })
        .collect();
    (!stats.is_empty()).then(|| LoadReport {
        pod_name: pod.to_string(),
        timestamp_unix_ms: unix_ms(now, now),
        stats,
        trigger: Trigger::Activation as i32,
    })
}

#[cfg(test)]
mod tests;
