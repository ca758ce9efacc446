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

/// The last second whose reports are all in at `now`: the one before the
/// current. Proxies report each second at their own second boundary, so
/// the current second's bucket fills over the whole second; a window read
/// at `now` would count a half-filled bucket as the newest second (and a
/// 1 s panic window would read 0 whenever a decision comes before the
/// reports do). Knative gets the same effect from bucketing reports by
/// their time at a one-second granularity and scraping once a second.
pub fn complete_second(now: Duration) -> i64 {
    bucket_of(now).saturating_sub(1)
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

    /// The stable and panic averages of `metric` over the windows ending
    /// at second `at` (see [`complete_second`]), or `None` when no report
    /// arrived for a whole stable window (Knative's "no data": the decider
    /// then keeps its last recommendation rather than reading silence as
    /// zero load).
    pub fn averages(&self, metric: Metric, at: i64) -> Option<Averages> {
        let (stable, panic) = self.windows(metric);
        if stable.is_empty(at) {
            return None;
        }
        Some(Averages {
            stable: stable.window_average(at),
            panic: panic.window_average(at),
        })
    }

    /// The averages whether or not there is data (zeros without), for
    /// display.
    pub fn averages_or_zero(&self, metric: Metric, at: i64) -> Averages {
        let (stable, panic) = self.windows(metric);
        Averages {
            stable: stable.window_average(at),
            panic: panic.window_average(at),
        }
    }

    fn windows(&self, metric: Metric) -> (&WindowAverager, &WindowAverager) {
        match metric {
            Metric::Concurrency => (&self.concurrency_stable, &self.concurrency_panic),
            Metric::Rps => (&self.rps_stable, &self.rps_panic),
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
        let a = w.averages(Metric::Concurrency, 10);
        assert_eq!(
            a,
            Some(Averages {
                stable: 42.0,
                panic: 42.0
            })
        );
        let a = w.averages(Metric::Rps, 10);
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
        let a = w.averages(Metric::Concurrency, 59);
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
        assert_eq!(w.averages(Metric::Concurrency, 0), None);
        w.record(
            Duration::from_secs(5),
            &Stat {
                average_concurrency: 1.0,
                ..Stat::default()
            },
        );
        // Read as of a second before the first report: nothing yet.
        assert_eq!(w.averages(Metric::Concurrency, 4), None);
        assert!(w.averages(Metric::Concurrency, 65).is_some());
        assert_eq!(w.averages(Metric::Concurrency, 66), None);
    }

    /// A report for the second in progress does not change the windows
    /// read as of the second before: the newest complete second is the
    /// newest bucket, and a whole window of complete seconds is kept.
    #[test]
    fn the_second_in_progress_is_left_out_of_the_complete_window() {
        let mut w = MetricWindows::new(&spec());
        for s in 0..=60 {
            w.record(
                Duration::from_millis(s * 1000 + 700),
                &Stat {
                    average_concurrency: s as f64,
                    ..Stat::default()
                },
            );
        }
        // At 61.2 s second 61 has no report yet; 60 is complete.
        let at = complete_second(Duration::from_millis(61_200));
        assert_eq!(at, 60);
        let before = w.averages(Metric::Concurrency, at);
        // Seconds 1..=60 (mean 30.5) and 55..=60 (mean 57.5).
        assert_eq!(
            before,
            Some(Averages {
                stable: 30.5,
                panic: 57.5
            })
        );
        w.record(
            Duration::from_millis(61_300),
            &Stat {
                average_concurrency: 1000.0,
                ..Stat::default()
            },
        );
        assert_eq!(w.averages(Metric::Concurrency, at), before);
        // Once 61 is complete it is in, and second 1 is out.
        let after = w.averages(Metric::Concurrency, 61);
        assert_eq!(
            after.map(|a| (a.stable, a.panic)),
            Some((
                (1830.0 - 1.0 + 1000.0) / 60.0,
                (57.5 * 6.0 - 55.0 + 1000.0) / 6.0
            ))
        );
    }
}
