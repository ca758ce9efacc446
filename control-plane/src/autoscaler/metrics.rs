//! One revision's metric windows (Knative's `collection` in
//! `pkg/autoscaler/metrics/collector.go`): concurrency and request rate,
//! each over the stable and the panic window.

use std::time::Duration;

use super::aggregation::WindowAverager;
use super::config::{Aggregation, Metric, WindowSpec};

/// One sidecar's report for one second, with Knative's `Stat` semantics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stat {
    /// In-flight requests integrated over the second (waiting ones
    /// included), divided by the second: the time-weighted average.
    pub average_concurrency: f64,
    /// The part of `average_concurrency` that came through a proxy that was
    /// holding it while the revision activated, and which that proxy
    /// reports itself; subtracted so it is not counted twice.
    pub average_proxied_concurrency: f64,
    /// Requests received in the second.
    pub request_count: f64,
    /// The part of `request_count` also reported by an activating proxy.
    pub proxied_request_count: f64,
}

/// The stable and panic averages of one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Averages {
    pub stable: f64,
    pub panic: f64,
}

/// A revision's four windows.
#[derive(Debug, Clone)]
pub struct MetricWindows {
    concurrency_stable: WindowAverager,
    concurrency_panic: WindowAverager,
    rps_stable: WindowAverager,
    rps_panic: WindowAverager,
}

/// Whole seconds of a clock reading: the bucket the time falls in.
pub fn bucket_of(now: Duration) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

impl MetricWindows {
    pub fn new(spec: &WindowSpec) -> Self {
        let weighted = spec.aggregation == Aggregation::WeightedExponential;
        let stable = spec.stable.as_secs();
        let panic = spec.panic.as_secs();
        MetricWindows {
            concurrency_stable: WindowAverager::new(stable, weighted),
            concurrency_panic: WindowAverager::new(panic, weighted),
            rps_stable: WindowAverager::new(stable, weighted),
            rps_panic: WindowAverager::new(panic, weighted),
        }
    }

    /// Follows a changed window length (keeping recent data) or algorithm
    /// (starting over, as Knative builds new buckets for a new metric).
    pub fn update(&mut self, spec: &WindowSpec, now: Duration) {
        let weighted = spec.aggregation == Aggregation::WeightedExponential;
        if weighted != self.concurrency_stable.is_weighted() {
            *self = MetricWindows::new(spec);
            return;
        }
        let now = bucket_of(now);
        let (stable, panic) = (spec.stable.as_secs(), spec.panic.as_secs());
        self.concurrency_stable.resize(stable, now);
        self.rps_stable.resize(stable, now);
        self.concurrency_panic.resize(panic, now);
        self.rps_panic.resize(panic, now);
    }

    /// Adds one report to the second it was taken in. Reports from several
    /// instances for the same second add up to the revision's total.
    pub fn record(&mut self, now: Duration, stat: &Stat) {
        let s = bucket_of(now);
        let concurrency = stat.average_concurrency - stat.average_proxied_concurrency;
        let rps = stat.request_count - stat.proxied_request_count;
        self.concurrency_stable.record(s, concurrency);
        self.concurrency_panic.record(s, concurrency);
        self.rps_stable.record(s, rps);
        self.rps_panic.record(s, rps);
    }

    /// The stable and panic averages of `metric` at `now`, or `None` when
    /// no report arrived for a whole stable window (Knative's "no data":
    /// the decider then keeps its last recommendation rather than reading
    /// silence as zero load).
    pub fn averages(&self, metric: Metric, now: Duration) -> Option<Averages> {
        let s = bucket_of(now);
        let (stable, panic) = match metric {
            Metric::Concurrency => (&self.concurrency_stable, &self.concurrency_panic),
            Metric::Rps => (&self.rps_stable, &self.rps_panic),
        };
        if stable.is_empty(s) {
            return None;
        }
        Some(Averages {
            stable: stable.window_average(s),
            panic: panic.window_average(s),
        })
    }

    /// The averages whether or not there is data (zeros without), for
    /// display.
    pub fn averages_or_zero(&self, metric: Metric, now: Duration) -> Averages {
        let s = bucket_of(now);
        let (stable, panic) = match metric {
            Metric::Concurrency => (&self.concurrency_stable, &self.concurrency_panic),
            Metric::Rps => (&self.rps_stable, &self.rps_panic),
        };
        Averages {
            stable: stable.window_average(s),
            panic: panic.window_average(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WindowSpec {
        WindowSpec {
            stable: Duration::from_secs(60),
            panic: Duration::from_secs(6),
            aggregation: Aggregation::Linear,
        }
    }

    #[test]
    fn pods_add_up_and_proxied_requests_are_not_counted_twice() {
        let mut w = MetricWindows::new(&spec());
        let t = Duration::from_millis(10_300);
        // Two instances report for second 10; one of them also saw 2
        // requests an activating proxy reports itself.
        w.record(
            t,
            &Stat {
                average_concurrency: 30.0,
                request_count: 100.0,
                ..Stat::default()
            },
        );
        w.record(
            t,
            &Stat {
                average_concurrency: 12.0,
                average_proxied_concurrency: 2.0,
                request_count: 50.0,
                proxied_request_count: 5.0,
            },
        );
        // The proxy's own report.
        w.record(
            t,
            &Stat {
                average_concurrency: 2.0,
                request_count: 5.0,
                ..Stat::default()
            },
        );
        let a = w.averages(Metric::Concurrency, t);
        assert_eq!(
            a,
            Some(Averages {
                stable: 42.0,
                panic: 42.0
            })
        );
        let a = w.averages(Metric::Rps, t);
        assert_eq!(
            a,
            Some(Averages {
                stable: 150.0,
                panic: 150.0
            })
        );
    }

    #[test]
    fn panic_window_reacts_first() {
        let mut w = MetricWindows::new(&spec());
        for s in 0..60 {
            let c = if s < 54 { 10.0 } else { 100.0 };
            w.record(
                Duration::from_secs(s),
                &Stat {
                    average_concurrency: c,
                    ..Stat::default()
                },
            );
        }
        let a = w.averages(Metric::Concurrency, Duration::from_secs(59));
        assert_eq!(
            a,
            Some(Averages {
                stable: (54.0 * 10.0 + 6.0 * 100.0) / 60.0,
                panic: 100.0
            })
        );
    }

    #[test]
    fn no_data_for_a_window_is_none() {
        let mut w = MetricWindows::new(&spec());
        assert_eq!(w.averages(Metric::Concurrency, Duration::ZERO), None);
        w.record(
            Duration::from_secs(5),
            &Stat {
                average_concurrency: 1.0,
                ..Stat::default()
            },
        );
        assert!(w
            .averages(Metric::Concurrency, Duration::from_secs(65))
            .is_some());
        assert_eq!(
            w.averages(Metric::Concurrency, Duration::from_secs(66)),
            None
        );
    }
}
