//! The `ferry_xds_*` Prometheus metrics. Counters move as events happen;
//! the gauges that describe current state (nodes connected, nodes whose
//! latest response was NACKed) are computed from the node registry at
//! scrape time, so they cannot drift from what `/v1/xds/nodes` shows.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{Mode, ResourceType};

/// Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct XdsMetrics {
    registry: Registry,
    streams: IntGaugeVec,
    streams_total: IntCounterVec,
    responses: IntCounterVec,
    acks: IntCounterVec,
    nacks: IntCounterVec,
    stale: IntCounterVec,
    reloads: IntCounterVec,
    nodes_connected: IntGaugeVec,
    nodes_nacking: IntGaugeVec,
}

// === impl XdsMetrics ===

impl XdsMetrics {
    pub fn new() -> XdsMetrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            // Registration only fails on a duplicate name, which these
            // constant names cannot have.
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let m = XdsMetrics {
            streams: gauge(
                "ferry_xds_streams",
                "ADS streams open now, by protocol mode",
                &["mode"],
            ),
            streams_total: counter(
                "ferry_xds_streams_total",
                "ADS streams opened since start, by protocol mode",
                &["mode"],
            ),
            responses: counter(
                "ferry_xds_responses_total",
                "Discovery responses sent, by type and mode",
                &["type", "mode"],
            ),
            acks: counter("ferry_xds_acks_total", "ACKs received, by type", &["type"]),
            nacks: counter(
                "ferry_xds_nacks_total",
                "NACKs received, by type",
                &["type"],
            ),
            stale: counter(
                "ferry_xds_stale_requests_total",
                "Requests ignored because their nonce was not the latest, by type",
                &["type"],
            ),
            reloads: counter(
                "ferry_xds_snapshot_reloads_total",
                "Snapshot file loads, by result (ok, failed)",
                &["result"],
            ),
            nodes_connected: gauge(
                "ferry_xds_nodes_connected",
                "Nodes with at least one open stream",
                &[],
            ),
            nodes_nacking: gauge(
                "ferry_xds_nodes_nacking",
                "Connected nodes whose latest response of this type was NACKed",
                &["type"],
            ),
            registry,
        };
        // Pre-create the series so dashboards see zeros, not gaps.
        for mode in [Mode::Sotw, Mode::Delta] {
            m.streams.with_label_values(&[mode.as_str()]).set(0);
            m.streams_total.with_label_values(&[mode.as_str()]);
        }
        for ty in ResourceType::ALL {
            m.acks.with_label_values(&[ty.short()]);
            m.nacks.with_label_values(&[ty.short()]);
            m.stale.with_label_values(&[ty.short()]);
        }
        for result in ["ok", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn stream_opened(&self, mode: Mode) {
        self.streams.with_label_values(&[mode.as_str()]).inc();
        self.streams_total.with_label_values(&[mode.as_str()]).inc();
    }

    pub fn stream_closed(&self, mode: Mode) {
        self.streams.with_label_values(&[mode.as_str()]).dec();
    }

    pub fn response_sent(&self, ty: ResourceType, mode: Mode) {
        self.responses
            .with_label_values(&[ty.short(), mode.as_str()])
            .inc();
    }

    pub fn ack(&self, ty: ResourceType) {
        self.acks.with_label_values(&[ty.short()]).inc();
    }

    pub fn nack(&self, ty: ResourceType) {
        self.nacks.with_label_values(&[ty.short()]).inc();
    }

    pub fn stale(&self, ty: ResourceType) {
        self.stale.with_label_values(&[ty.short()]).inc();
    }

    pub fn reload_ok(&self) {
        self.reloads.with_label_values(&["ok"]).inc();
    }

    pub fn reload_failed(&self) {
        self.reloads.with_label_values(&["failed"]).inc();
    }

    /// Sets the state gauges right before a scrape.
    pub fn set_node_gauges(&self, connected: usize, nacking: impl Fn(ResourceType) -> usize) {
        self.nodes_connected
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
        for ty in ResourceType::ALL {
            self.nodes_nacking
                .with_label_values(&[ty.short()])
                .set(i64::try_from(nacking(ty)).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self::new()
    }
}
