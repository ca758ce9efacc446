//! The admin server (loopback by default): readiness, liveness, metrics,
//! the running config and the cluster table. Runs on the control runtime,
//! never on a worker.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::active::Active;
use crate::stats::STATS;

pub struct AdminState {
    pub active: Arc<ArcSwap<Active>>,
    /// Listeners bound and not draining.
    pub ready: AtomicBool,
    /// Woken when `ready` or the active config changes (`/ready?wait=`).
    pub changed: Notify,
}

/// The longest `/ready?wait=` holds a request.
const READY_WAIT_MAX: Duration = Duration::from_secs(30);

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    if let Some(wait) = ready_wait(&req) {
                        return Ok::<_, Infallible>(wait_ready(&state, wait).await);
                    }
                    Ok::<_, Infallible>(route(req, &state))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// `GET /ready?wait=DURATION` (`500ms`, `2s`; at most 30 s): a long-poll
/// that answers 200 the moment this proxy is ready, or 503 when the wait
/// ends first, so a supervisor learns of readiness without probing on an
/// interval.
fn ready_wait(req: &Request<Incoming>) -> Option<Duration> {
    if req.uri().path() != "/ready" || req.method() != Method::GET {
        return None;
    }
    let value = req
        .uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))?;
    crate::config::duration::parse_duration(value)
        .ok()
        .map(|d| d.min(READY_WAIT_MAX))
}

fn is_ready(state: &AdminState) -> bool {
    state.ready.load(Ordering::Acquire) && state.active.load().serving_ready()
}

async fn wait_ready(state: &AdminState, wait: Duration) -> Response<Full<Bytes>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a change between the look and the
        // wait is not missed.
        let changed = state.changed.notified();
        let app = crate::queue::readiness::changes().notified();
        tokio::pin!(changed, app);
        changed.as_mut().enable();
        app.as_mut().enable();
        if is_ready(state) {
            return text(StatusCode::OK, "LIVE\n", "text/plain");
        }
        tokio::select! {
            _ = changed => {}
            _ = app => {}
            _ = tokio::time::sleep_until(deadline) => {
                return text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n", "text/plain");
            }
        }
    }
}

fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", "text/plain");
    }
    let json = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
    match req.uri().path() {
        "/ready" => {
            if !state.ready.load(Ordering::Acquire) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n", "text/plain");
            }
            // The queue-proxy role: not ready until the local app is (this
            // is what gates the instance's endpoint in the control plane).
            let active = state.active.load();
            if active.serving_ready() {
                text(StatusCode::OK, "LIVE\n", "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("NOT READY: app not ready: {}\n", active.unready_apps().join(", ")),
                    "text/plain",
                )
            }
        }
        "/healthz" => text(StatusCode::OK, "OK\n", "text/plain"),
        "/stats/prometheus" | "/metrics" => text(
            StatusCode::OK,
            STATS.render(),
            "text/plain; version=0.0.4",
        ),
        "/config_dump" => {
            let active = state.active.load();
            match serde_json::to_vec_pretty(&*active.config) {
                Ok(b) => text(StatusCode::OK, b, "application/json"),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode config: {e}\n"),
                    "text/plain",
                ),
            }
        }
        "/clusters" => clusters(&state.active.load(), json),
        "/" => text(
            StatusCode::OK,
            "ferry-proxy admin: /ready[?wait=DURATION] /healthz /stats/prometheus /config_dump /clusters[?format=json]\n",
            "text/plain",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

#[derive(Serialize)]
struct ClusterView<'a> {
    name: &'a str,
    lb_policy: crate::config::LbPolicy,
    protocol: crate::config::UpstreamProtocol,
    /// Routable endpoints (passing active health checks, not ejected).
    healthy_endpoints: usize,
    /// Fewer routable than `healthy_panic_threshold` %: balancing over all.
    panic_mode: bool,
    circuit_breakers: crate::upstream::BreakerView,
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
struct EndpointView {
    address: String,
    hostname: Option<String>,
    weight: u32,
    /// Envoy's health flags: `healthy`, or `/failed_active_hc`,
    /// `/failed_outlier_check`, both.
    health: String,
    /// Unix time in milliseconds when an ejection ends; absent when in.
    ejected_until_unix_ms: Option<u64>,
    times_ejected: u32,
    consecutive_5xx: u32,
    consecutive_gateway_failure: u32,
    /// Per health check: its own view of the endpoint.
    health_checks: Vec<crate::upstream::health::CheckerState>,
    rq_active: u32,
    rq_total: u64,
    rq_error: u64,
    cx_idle: usize,
}

/// An `Instant` in the future as wall-clock Unix milliseconds.
fn unix_ms(at: std::time::Instant) -> u64 {
    let wall =
        std::time::SystemTime::now() + at.saturating_duration_since(std::time::Instant::now());
    wall.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn clusters(active: &Active, json: bool) -> Response<Full<Bytes>> {
    let views: Vec<ClusterView<'_>> = active
        .clusters
        .iter()
        .map(|c| {
            let hosts = c.hosts.load();
            ClusterView {
                name: &c.name,
                lb_policy: c.config.lb_policy,
                protocol: c.protocol,
                healthy_endpoints: hosts.routable,
                panic_mode: hosts.panic,
                circuit_breakers: c.breakers().snapshot(),
                endpoints: hosts
                    .endpoints
                    .iter()
                    .map(|e| {
                        let ejection = e.health.outlier.ejection();
                        let (c5xx, cgw) = e.health.outlier.counters();
                        EndpointView {
                            address: e.addr.to_string(),
                            hostname: e.hostname.clone(),
                            weight: e.weight,
                            health: e.health_flags(),
                            ejected_until_unix_ms: ejection.until.map(unix_ms),
                            times_ejected: ejection.times_ejected,
                            consecutive_5xx: c5xx,
                            consecutive_gateway_failure: cgw,
                            health_checks: e.health.checkers(),
                            rq_active: e.active.load(Ordering::Relaxed),
                            rq_total: e.rq_total.load(Ordering::Relaxed),
                            rq_error: e.rq_error.load(Ordering::Relaxed),
                            cx_idle: e.idle_connections(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    if json {
        return match serde_json::to_vec_pretty(&serde_json::json!({ "clusters": views })) {
            Ok(b) => text(StatusCode::OK, b, "application/json"),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode clusters: {e}\n"),
                "text/plain",
            ),
        };
    }
    // Envoy's text layout: cluster::field::value for the cluster,
    // cluster::endpoint::field::value for each endpoint.
    let mut out = String::new();
    for c in &views {
        let b = &c.circuit_breakers;
        let l = &b.limits;
        let n = c.name;
        let _ = writeln!(
            out,
            "{n}::default_priority::max_connections::{}",
            l.max_connections
        );
        let _ = writeln!(
            out,
            "{n}::default_priority::max_pending_requests::{}",
            l.max_pending_requests
        );
        let _ = writeln!(
            out,
            "{n}::default_priority::max_requests::{}",
            l.max_requests
        );
        let _ = writeln!(out, "{n}::default_priority::max_retries::{}", l.max_retries);
        if let Some(budget) = &l.retry_budget {
            let _ = writeln!(
                out,
                "{n}::default_priority::retry_budget::budget_percent::{}",
                budget.budget_percent
            );
            let _ = writeln!(
                out,
                "{n}::default_priority::retry_budget::min_retry_concurrency::{}",
                budget.min_retry_concurrency
            );
        }
        let _ = writeln!(
            out,
            "{n}::circuit_breakers::rq_retry_limit::{}",
            b.retry_limit_now
        );
        let _ = writeln!(out, "{n}::circuit_breakers::cx_open::{}", b.connections);
        let _ = writeln!(out, "{n}::circuit_breakers::rq_pending_open::{}", b.pending);
        let _ = writeln!(out, "{n}::circuit_breakers::rq_open::{}", b.requests);
        let _ = writeln!(out, "{n}::circuit_breakers::rq_retry_open::{}", b.retries);
        let _ = writeln!(out, "{n}::healthy_endpoints::{}", c.healthy_endpoints);
        let _ = writeln!(out, "{n}::panic_mode::{}", c.panic_mode);
        for e in &c.endpoints {
            let p = format!("{n}::{}", e.address);
            let _ = writeln!(out, "{p}::weight::{}", e.weight);
            let _ = writeln!(out, "{p}::health_flags::{}", e.health);
            if let Some(until) = e.ejected_until_unix_ms {
                let _ = writeln!(out, "{p}::ejected_until_unix_ms::{until}");
            }
            let _ = writeln!(out, "{p}::times_ejected::{}", e.times_ejected);
            let _ = writeln!(out, "{p}::consecutive_5xx::{}", e.consecutive_5xx);
            let _ = writeln!(
                out,
                "{p}::consecutive_gateway_failure::{}",
                e.consecutive_gateway_failure
            );
            for (i, hc) in e.health_checks.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{p}::health_check[{i}]::{}::passes::{}::failures::{}",
                    if hc.healthy { "healthy" } else { "unhealthy" },
                    hc.consecutive_passes,
                    hc.consecutive_failures
                );
            }
            let _ = writeln!(out, "{p}::rq_active::{}", e.rq_active);
            let _ = writeln!(out, "{p}::rq_total::{}", e.rq_total);
            let _ = writeln!(out, "{p}::rq_error::{}", e.rq_error);
            let _ = writeln!(out, "{p}::cx_idle::{}", e.cx_idle);
            if let Some(h) = &e.hostname {
                let _ = writeln!(out, "{p}::hostname::{h}");
            }
        }
    }
    text(StatusCode::OK, out, "text/plain")
}
