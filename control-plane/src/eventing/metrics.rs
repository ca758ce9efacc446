//! The broker's Prometheus metrics, on the control plane's `/metrics`.
//!
//! | family | labels | what |
//! | --- | --- | --- |
//! | `ferry_broker_events_accepted_total` | namespace, broker | events answered 202 (durably in the log) |
//! | `ferry_broker_events_rejected_total` | namespace, broker, reason | requests refused: `invalid` (400), `method` (405), `too_large` (413), `unavailable` (503) |
//! | `ferry_broker_append_seconds` | namespace, broker | one ingress request's append, until durable (fsync or JetStream ack) |
//! | `ferry_trigger_events_delivered_total` | namespace, broker, trigger | events the subscriber accepted |
//! | `ferry_trigger_delivery_failures_total` | … | failed attempts (subscriber or dead-letter sink) |
//! | `ferry_trigger_retries_total` | … | attempts after the first |
//! | `ferry_trigger_events_dead_lettered_total` | … | events the dead-letter sink accepted |
//! | `ferry_trigger_events_dropped_total` | … | events given up with no dead-letter sink |
//! | `ferry_trigger_events_parked_total` | … | events whose dead-letter sink failed too (kept, retried) |
//! | `ferry_trigger_replies_total` | … | reply events appended back to the broker |
//! | `ferry_trigger_bad_replies_total` | … | 2xx answers whose reply was not one valid event |
//! | `ferry_trigger_delivery_seconds` | … | dispatch → subscriber accepted, retries and backoff included |
//! | `ferry_trigger_cursor_lag_events` | … | events in the log the trigger has not finished |
//!
//! Label sets are resolved once, when a broker or trigger starts; the hot
//! paths only touch pre-resolved handles (an atomic add each). A deleted
//! broker or trigger takes its series with it.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Seconds; from a page-cache write to a slow disk's fsync.
const APPEND_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Seconds; from a local subscriber to a cold start plus retries.
const DELIVERY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const BROKER_LABELS: [&str; 2] = ["namespace", "broker"];
const TRIGGER_LABELS: [&str; 3] = ["namespace", "broker", "trigger"];
const REJECT_REASONS: [&str; 4] = ["invalid", "method", "too_large", "unavailable"];

/// The metric families, registered once. Cheap to clone.
#[derive(Clone)]
pub struct EventingMetrics {
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    append: HistogramVec,
    delivered: IntCounterVec,
    failed_attempts: IntCounterVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    dropped: IntCounterVec,
    parked: IntCounterVec,
    replies: IntCounterVec,
    bad_replies: IntCounterVec,
    latency: HistogramVec,
    lag: IntGaugeVec,
}

/// One broker's ingress handles.
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    pub accepted: IntCounter,
    pub rejected_invalid: IntCounter,
    pub rejected_method: IntCounter,
    pub rejected_too_large: IntCounter,
    pub rejected_unavailable: IntCounter,
    pub append_seconds: Histogram,
}

/// One trigger's handles; they survive changes of the trigger's spec.
#[derive(Clone, Debug)]
pub struct TriggerStats {
    pub delivered: IntCounter,
    pub failed_attempts: IntCounter,
    pub retries: IntCounter,
    pub dead_lettered: IntCounter,
    pub dropped: IntCounter,
    pub parked: IntCounter,
    pub replies: IntCounter,
    pub bad_replies: IntCounter,
    pub delivery_seconds: Histogram,
    pub cursor_lag: IntGauge,
}

// === impl EventingMetrics ===

impl EventingMetrics {
    /// Registers the families in `registry` (the control plane's, served
    /// on `/metrics`).
    pub fn new(registry: &Registry) -> EventingMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            // Registration fails only on a duplicate name: a second
            // EventingMetrics on one registry, which then shares nothing.
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let lag = IntGaugeVec::new(
            Opts::new(
                "ferry_trigger_cursor_lag_events",
                "Events in the broker's log this trigger has not finished yet",
            ),
            &TRIGGER_LABELS,
        )
        .unwrap_or_else(|e| unreachable!("metric ferry_trigger_cursor_lag_events: {e}"));
        let _ = registry.register(Box::new(lag.clone()));
        let mut reject_labels = BROKER_LABELS.to_vec();
        reject_labels.push("reason");
        let t = &TRIGGER_LABELS;
        EventingMetrics {
            accepted: counter(
                "ferry_broker_events_accepted_total",
                "Events accepted (202) by the broker ingress, durably in the log",
                &BROKER_LABELS,
            ),
            rejected: counter(
                "ferry_broker_events_rejected_total",
                "Ingress requests refused, by reason (invalid, method, too_large, unavailable)",
                &reject_labels,
            ),
            append: histogram(
                "ferry_broker_append_seconds",
                "Time for an ingress request's events to become durable in the log",
                &BROKER_LABELS,
                &APPEND_BUCKETS,
            ),
            delivered: counter(
                "ferry_trigger_events_delivered_total",
                "Events the trigger's subscriber accepted",
                t,
            ),
            failed_attempts: counter(
                "ferry_trigger_delivery_failures_total",
                "Failed delivery attempts (subscriber or dead-letter sink)",
                t,
            ),
            retries: counter(
                "ferry_trigger_retries_total",
                "Delivery attempts after the first one",
                t,
            ),
            dead_lettered: counter(
                "ferry_trigger_events_dead_lettered_total",
                "Events the dead-letter sink accepted after the subscriber failed",
                t,
            ),
            dropped: counter(
                "ferry_trigger_events_dropped_total",
                "Events given up after their retries, with no dead-letter sink",
                t,
            ),
            parked: counter(
                "ferry_trigger_events_parked_total",
                "Events whose dead-letter sink failed too (kept and retried)",
                t,
            ),
            replies: counter(
                "ferry_trigger_replies_total",
                "Reply events from the subscriber, appended back to the broker",
                t,
            ),
            bad_replies: counter(
                "ferry_trigger_bad_replies_total",
                "2xx answers carrying something other than one valid event",
                t,
            ),
            latency: histogram(
                "ferry_trigger_delivery_seconds",
                "From dispatch to the subscriber accepting the event, retries included",
                t,
                &DELIVERY_BUCKETS,
            ),
            lag,
        }
    }

    /// The handles of one broker (created now, zero if new).
    pub fn broker(&self, namespace: &str, broker: &str) -> BrokerMetrics {
        let l = [namespace, broker];
        let reject = |reason: &str| {
            self.rejected
                .with_label_values(&[namespace, broker, reason])
        };
        BrokerMetrics {
            accepted: self.accepted.with_label_values(&l),
            rejected_invalid: reject(REJECT_REASONS[0]),
            rejected_method: reject(REJECT_REASONS[1]),
            rejected_too_large: reject(REJECT_REASONS[2]),
            rejected_unavailable: reject(REJECT_REASONS[3]),
            append_seconds: self.append.with_label_values(&l),
        }
    }

    /// The handles of one trigger.
    pub fn trigger(&self, namespace: &str, broker: &str, trigger: &str) -> TriggerStats {
        let l = [namespace, broker, trigger];
        TriggerStats {
            delivered: self.delivered.with_label_values(&l),
            failed_attempts: self.failed_attempts.with_label_values(&l),
            retries: self.retries.with_label_values(&l),
            dead_lettered: self.dead_lettered.with_label_values(&l),
            dropped: self.dropped.with_label_values(&l),
            parked: self.parked.with_label_values(&l),
            replies: self.replies.with_label_values(&l),
            bad_replies: self.bad_replies.with_label_values(&l),
            delivery_seconds: self.latency.with_label_values(&l),
            cursor_lag: self.lag.with_label_values(&l),
        }
    }

    /// Forgets a deleted broker's series.
    pub fn remove_broker(&self, namespace: &str, broker: &str) {
        let l = [namespace, broker];
        let _ = self.accepted.remove_label_values(&l);
        let _ = self.append.remove_label_values(&l);
        for reason in REJECT_REASONS {
            let _ = self
                .rejected
                .remove_label_values(&[namespace, broker, reason]);
        }
    }

    /// Forgets a deleted trigger's series.
    pub fn remove_trigger(&self, namespace: &str, broker: &str, trigger: &str) {
        let l = [namespace, broker, trigger];
        for c in [
            &self.delivered,
            &self.failed_attempts,
            &self.retries,
            &self.dead_lettered,
            &self.dropped,
            &self.parked,
            &self.replies,
            &self.bad_replies,
        ] {
            let _ = c.remove_label_values(&l);
        }
        let _ = self.latency.remove_label_values(&l);
        let _ = self.lag.remove_label_values(&l);
    }
}

// === impl TriggerStats ===

impl TriggerStats {
    /// Handles registered nowhere: for tests and tools that run a
    /// dispatcher without a control plane.
    pub fn detached() -> TriggerStats {
        EventingMetrics::new(&Registry::new()).trigger("", "", "")
    }

    /// Sets the cursor-lag gauge: `end` is the log's end, `committed` the
    /// trigger's first unfinished offset.
    pub fn set_lag(&self, end: u64, committed: u64) {
        self.cursor_lag
            .set(i64::try_from(end.saturating_sub(committed)).unwrap_or(i64::MAX));
    }
}

impl Default for TriggerStats {
    fn default() -> Self {
        TriggerStats::detached()
    }
}

impl BrokerMetrics {
    /// Handles registered nowhere (tests).
    pub fn detached() -> BrokerMetrics {
        EventingMetrics::new(&Registry::new()).broker("", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_per_trigger_and_go_with_it() {
        let registry = Registry::new();
        let m = EventingMetrics::new(&registry);
        let t = m.trigger("shop", "default", "orders");
        t.delivered.inc();
        t.delivery_seconds.observe(0.003);
        t.set_lag(10, 4);
        let b = m.broker("shop", "default");
        b.accepted.inc_by(3);
        let text = render(&registry);
        assert!(
            text.contains(
                "ferry_trigger_events_delivered_total{broker=\"default\",namespace=\"shop\",trigger=\"orders\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "ferry_trigger_cursor_lag_events{broker=\"default\",namespace=\"shop\",trigger=\"orders\"} 6"
        ));
        assert!(text.contains(
            "ferry_broker_events_accepted_total{broker=\"default\",namespace=\"shop\"} 3"
        ));
        assert!(text.contains(
            "ferry_broker_events_rejected_total{broker=\"default\",namespace=\"shop\",reason=\"too_large\"} 0"
        ));
        // The same label set again shares the counter.
        assert_eq!(m.trigger("shop", "default", "orders").delivered.get(), 1);
        m.remove_trigger("shop", "default", "orders");
        m.remove_broker("shop", "default");
        let text = render(&registry);
        assert!(!text.contains("orders"), "{text}");
        assert!(!text.contains("namespace=\"shop\""), "{text}");
    }

    fn render(r: &Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap_or_default()
    }
}
