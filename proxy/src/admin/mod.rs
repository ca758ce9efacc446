//! The admin server (loopback by default): readiness, liveness, metrics,
//! the running config and the cluster table. Runs on the control runtime,
//! never on a worker.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::active::Active;
use crate::stats::STATS;

pub struct AdminState {
    pub active: Arc<ArcSwap<Active>>,
    /// Listeners bound and not draining.
    pub ready: AtomicBool,
}

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
                async move { Ok::<_, Infallible>(route(req, &state)) }
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
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "LIVE\n", "text/plain")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n", "text/plain")
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
            "ferry-proxy admin: /ready /healthz /stats/prometheus /config_dump /clusters[?format=json]\n",
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
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
struct EndpointView {
    address: String,
    hostname: Option<String>,
    weight: u32,
    health: &'static str,
    rq_active: u32,
    rq_total: u64,
    rq_error: u64,
    cx_idle: usize,
}

fn clusters(active: &Active, json: bool) -> Response<Full<Bytes>> {
    let views: Vec<ClusterView<'_>> = active
        .clusters
        .iter()
        .map(|c| ClusterView {
            name: &c.name,
            lb_policy: c.config.lb_policy,
            protocol: c.protocol,
            endpoints: c
                .hosts
                .load()
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    address: e.addr.to_string(),
                    hostname: e.hostname.clone(),
                    weight: e.weight,
                    health: "healthy",
                    rq_active: e.active.load(Ordering::Relaxed),
                    rq_total: e.rq_total.load(Ordering::Relaxed),
                    rq_error: e.rq_error.load(Ordering::Relaxed),
                    cx_idle: e.pool.idle_count(),
                })
                .collect(),
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
    // Envoy's text layout: cluster::endpoint::field::value.
    let mut out = String::new();
    for c in &views {
        for e in &c.endpoints {
            let p = format!("{}::{}", c.name, e.address);
            let _ = writeln!(out, "{p}::weight::{}", e.weight);
            let _ = writeln!(out, "{p}::health_flags::{}", e.health);
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
