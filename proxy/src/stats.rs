//! The Prometheus registry and the metric handles the request path uses.
//!
//! Handles are resolved (label values bound) when a listener or cluster is
//! built from config, never per request: the hot path only does atomic adds
//! on handles it already holds.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Stats {
    pub registry: Registry,
    downstream_cx_total: IntCounterVec,
    downstream_cx_active: IntGaugeVec,
    downstream_cx_overflow: IntCounterVec,
    downstream_rq_total: IntCounterVec,
    downstream_rq_time: HistogramVec,
    upstream_rq_total: IntCounterVec,
    upstream_rq_time: HistogramVec,
    upstream_rq_timeout: IntCounterVec,
    upstream_rq_retry: IntCounterVec,
    upstream_cx_total: IntCounterVec,
    upstream_cx_connect_fail: IntCounterVec,
    upstream_cx_idle: IntGaugeVec,
    upstream_cx_active: IntGaugeVec,
    upstream_rq_overflow: IntCounterVec,
    upstream_ejections: IntCounterVec,
    upstream_health_check: IntCounterVec,
    upstream_endpoints_healthy: IntGaugeVec,
    upstream_endpoints_ejected: IntGaugeVec,
    pub config_reload_ok: IntCounter,
    pub config_reload_failed: IntCounter,
}

/// Latency buckets in seconds: 0.25 ms … 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

pub static STATS: LazyLock<Stats> = LazyLock::new(Stats::new);

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    // Registration fails only on a duplicate name, which is a programming error.
    reg.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    reg.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    g
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    reg.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    h
}

impl Stats {
    fn new() -> Stats {
        let r = Registry::new();
        let reload = counter(
            &r,
            "ferry_config_reload_total",
            "Config reloads by result",
            &["result"],
        );
        Stats {
            downstream_cx_total: counter(
                &r,
                "ferry_downstream_cx_total",
                "Downstream connections accepted",
                &["listener"],
            ),
            downstream_cx_active: gauge(
                &r,
                "ferry_downstream_cx_active",
                "Downstream connections open",
                &["listener"],
            ),
            downstream_cx_overflow: counter(
                &r,
                "ferry_downstream_cx_overflow_total",
                "Downstream connections closed because the listener was at max_connections",
                &["listener"],
            ),
            downstream_rq_total: counter(
                &r,
                "ferry_downstream_rq_total",
                "Downstream requests by response status class",
                &["listener", "class"],
            ),
            downstream_rq_time: histogram(
                &r,
                "ferry_downstream_rq_time_seconds",
                "Time from request head received to response head sent",
                &["listener"],
            ),
            upstream_rq_total: counter(
                &r,
                "ferry_upstream_rq_total",
                "Upstream requests by response status class",
                &["cluster", "class"],
            ),
            upstream_rq_time: histogram(
                &r,
                "ferry_upstream_rq_time_seconds",
                "Time from sending upstream to the upstream response head",
                &["cluster"],
            ),
            upstream_rq_retry: counter(
                &r,
                "ferry_upstream_rq_retry_total",
                "Upstream retries sent (each try after the first)",
                &["cluster"],
            ),
            upstream_rq_timeout: counter(
                &r,
                "ferry_upstream_rq_timeout_total",
                "Upstream requests that hit the route timeout",
                &["cluster"],
            ),
            upstream_cx_total: counter(
                &r,
                "ferry_upstream_cx_total",
                "Upstream connections opened",
                &["cluster"],
            ),
            upstream_cx_connect_fail: counter(
                &r,
                "ferry_upstream_cx_connect_fail_total",
                "Upstream connection attempts that failed or timed out",
                &["cluster"],
            ),
            upstream_cx_idle: gauge(
                &r,
                "ferry_upstream_cx_idle",
                "Idle pooled upstream connections",
                &["cluster"],
            ),
            upstream_cx_active: gauge(
                &r,
                "ferry_upstream_cx_active",
                "Open upstream connections",
                &["cluster"],
            ),
            upstream_rq_overflow: counter(
                &r,
                "ferry_upstream_rq_overflow_total",
                "Upstream requests refused by a circuit breaker, by breaker",
                &["cluster", "breaker"],
            ),
            upstream_ejections: counter(
                &r,
                "ferry_upstream_ejections_total",
                "Endpoints ejected by outlier detection",
                &["cluster"],
            ),
            upstream_health_check: counter(
                &r,
                "ferry_upstream_health_check_total",
                "Active health checks by result",
                &["cluster", "result"],
            ),
            upstream_endpoints_healthy: gauge(
                &r,
                "ferry_upstream_endpoints_healthy",
                "Endpoints that are routable: passing active health checks and not ejected",
                &["cluster"],
            ),
            upstream_endpoints_ejected: gauge(
                &r,
                "ferry_upstream_endpoints_ejected",
                "Endpoints ejected by outlier detection",
                &["cluster"],
            ),
            config_reload_ok: reload.with_label_values(&["ok"]),
            config_reload_failed: reload.with_label_values(&["failed"]),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut out) {
            out.push_str(&format!("# encoding failed: {e}\n"));
        }
        out
    }
}

/// Counters split by status class, index = status / 100 - 1.
#[derive(Clone)]
pub struct ByClass([IntCounter; 5]);

impl ByClass {
    fn new(vec: &IntCounterVec, name: &str) -> Self {
        ByClass(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| vec.with_label_values(&[name, c])))
    }

    #[inline]
    pub fn inc(&self, status: u16) {
        let idx = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[idx].inc();
    }
}

#[derive(Clone)]
pub struct ListenerStats {
    pub cx_total: IntCounter,
    pub cx_active: IntGauge,
    pub cx_overflow: IntCounter,
    pub rq: ByClass,
    pub rq_time: Histogram,
}

impl ListenerStats {
    pub fn new(listener: &str) -> Self {
        let s = &*STATS;
        ListenerStats {
            cx_total: s.downstream_cx_total.with_label_values(&[listener]),
            cx_active: s.downstream_cx_active.with_label_values(&[listener]),
            cx_overflow: s.downstream_cx_overflow.with_label_values(&[listener]),
            rq: ByClass::new(&s.downstream_rq_total, listener),
            rq_time: s.downstream_rq_time.with_label_values(&[listener]),
        }
    }
}

#[derive(Clone)]
pub struct ClusterStats {
    pub rq: ByClass,
    pub rq_time: Histogram,
    pub rq_timeout: IntCounter,
    pub rq_retry: IntCounter,
    pub cx_total: IntCounter,
    pub cx_connect_fail: IntCounter,
    pub cx_idle: IntGauge,
    pub cx_active: IntGauge,
    /// Indexed by `upstream::breaker::Breaker`: requests, pending,
    /// connections, retries.
    pub rq_overflow: [IntCounter; 4],
    pub ejections: IntCounter,
    pub hc_success: IntCounter,
    pub hc_failure: IntCounter,
    pub endpoints_healthy: IntGauge,
    pub endpoints_ejected: IntGauge,
}

impl ClusterStats {
    pub fn new(cluster: &str) -> Self {
        let s = &*STATS;
        ClusterStats {
            rq: ByClass::new(&s.upstream_rq_total, cluster),
            rq_time: s.upstream_rq_time.with_label_values(&[cluster]),
            rq_timeout: s.upstream_rq_timeout.with_label_values(&[cluster]),
            rq_retry: s.upstream_rq_retry.with_label_values(&[cluster]),
            cx_total: s.upstream_cx_total.with_label_values(&[cluster]),
            cx_connect_fail: s.upstream_cx_connect_fail.with_label_values(&[cluster]),
            cx_idle: s.upstream_cx_idle.with_label_values(&[cluster]),
            cx_active: s.upstream_cx_active.with_label_values(&[cluster]),
            rq_overflow: ["requests", "pending", "connections", "retries"]
                .map(|b| s.upstream_rq_overflow.with_label_values(&[cluster, b])),
            ejections: s.upstream_ejections.with_label_values(&[cluster]),
            hc_success: s
                .upstream_health_check
                .with_label_values(&[cluster, "success"]),
            hc_failure: s
                .upstream_health_check
                .with_label_values(&[cluster, "failure"]),
            endpoints_healthy: s.upstream_endpoints_healthy.with_label_values(&[cluster]),
            endpoints_ejected: s.upstream_endpoints_ejected.with_label_values(&[cluster]),
        }
    }
}
