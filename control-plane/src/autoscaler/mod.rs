//! The autoscaler: Knative's KPA, as a clock-injected library.
//!
//! Layers, each usable on its own:
//! - [`aggregation`]: per-second buckets and their window averages;
//! - [`metrics`]: one revision's windows fed by sidecar [`Stat`]s;
//! - [`decider`]: the pure KPA formula ([`decide`]) over window averages;
//! - [`applier`]: min/max/initial scale and scale to zero ([`apply`]);
//! - [`config`]: Knative's annotation keys and cluster defaults;
//! - [`RevisionAutoscaler`]: the four above for one revision;
//! - [`Autoscaler`]: every revision, on one [`Clock`] — what the control
//!   loop drives;
//! - [`simulate`]: `ferry-control autoscale simulate`, the same code on a
//!   manual clock.
//!
//! The control loop's contract (`docs/autoscaling.md`):
//! - every load report: [`Autoscaler::record`]; when it returns a report,
//!   that is an immediate decision for a revision at zero (act on it);
//! - a proxy holding requests for a revision at zero:
//!   [`Autoscaler::demand`] — an immediate decision of at least
//!   max(1, activation-scale) instances;
//! - endpoint changes: [`Autoscaler::set_ready`];
//! - every [`TICK_INTERVAL`] (2 s): [`Autoscaler::tick`], then set each
//!   report's `scale` on the scaler where `scale_changed`;
//! - revision created/changed/deleted, route reachability changed:
//!   [`Autoscaler::upsert`] / [`Autoscaler::remove`].

pub mod aggregation;
pub mod applier;
pub mod config;
pub mod decider;
pub mod metrics;
pub mod simulate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;

pub use applier::{apply, Activity, Applied, ApplierState, SCALE_UNKNOWN};
pub use config::{
    Annotations, ConfigError, DeciderSpec, GlobalConfig, Metric, RevisionConfig, ScaleSpec,
    TICK_INTERVAL,
};
pub use decider::{decide, DeciderInput, DeciderState, Decision};
pub use metrics::{bucket_of, complete_second, Averages, MetricWindows, Stat};

/// The outcome of one decision for one revision: the decider's output and
/// the applier's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickReport {
    /// Clock time of the decision.
    pub at: Duration,
    pub ready: u32,
    /// The window averages the decision used (zeros without data).
    pub stable_avg: f64,
    pub panic_avg: f64,
    /// A new decision was made; false when no load report arrived for a
    /// whole stable window, and the previous decision stands.
    pub decided: bool,
    /// The decider's desired instances (-1 before any decision).
    pub desired: i32,
    pub panic: bool,
    pub excess_burst_capacity: i32,
    /// What the applier wants (-1 unknown); may lead `scale` while it waits
    /// out the grace period.
    pub want: i32,
    /// The instance count the scaler should have.
    pub scale: i32,
    /// `scale` changed with this decision.
    pub scale_changed: bool,
    pub activity: Activity,
}

/// One revision's autoscaler: windows, decider and applier.
#[derive(Debug, Clone)]
pub struct RevisionAutoscaler {
    config: RevisionConfig,
    windows: MetricWindows,
    decider: DeciderState,
    applier: ApplierState,
    /// The last valid decision (Knative's decider status).
    latest: Option<Decision>,
    ready: u32,
}

impl RevisionAutoscaler {
    /// A new revision at `now` with `ready` instances (0 for a revision
    /// just created; more after a control-plane restart, which starts the
    /// decider in panic mode so it does not scale down blind).
    pub fn new(config: RevisionConfig, now: Duration, ready: u32) -> Self {
        RevisionAutoscaler {
            windows: MetricWindows::new(&config.windows),
            decider: DeciderState::new(&config.decider, now, ready),
            applier: ApplierState::new(&config.scale, now),
            latest: None,
            ready,
            config,
        }
    }

    pub fn config(&self) -> &RevisionConfig {
        &self.config
    }

    /// Applies changed settings without losing history.
    pub fn update_config(&mut self, config: RevisionConfig, now: Duration) {
        if config.windows != self.config.windows {
            self.windows.update(&config.windows, now);
        }
        self.decider.update_spec(&config.decider);
        self.config = config;
    }

    /// A load report for the second containing `now`.
    pub fn record(&mut self, now: Duration, stat: &Stat) {
        self.windows.record(now, stat);
    }

    pub fn set_ready(&mut self, ready: u32) {
        self.ready = ready;
    }

    pub fn ready(&self) -> u32 {
        self.ready
    }

    /// The instance count last set.
    pub fn scale(&self) -> i32 {
        self.applier.scale()
    }

    pub fn activity(&self) -> Activity {
        self.applier.activity()
    }

    /// The last valid decision.
    pub fn latest(&self) -> Option<&Decision> {
        self.latest.as_ref()
    }

    /// Knative's poke rule: a report of load for a revision whose latest
    /// recommendation is zero warrants a decision now, not at the next tick.
    pub fn wants_poke(&self, stat: &Stat) -> bool {
        self.latest.is_some_and(|d| d.desired == 0) && stat.average_concurrency != 0.0
    }

    /// The periodic decision at `now`, from the windows ending at the last
    /// complete second ([`complete_second`]): the current second's reports
    /// are still arriving.
    pub fn tick(&mut self, now: Duration) -> TickReport {
        self.decide_from_windows(now, complete_second(now))
    }

    /// An immediate decision at `now` on the windows ending at the current
    /// second, whose reports so far (the one that asked for the decision
    /// among them) are the news.
    pub fn decide_now(&mut self, now: Duration) -> TickReport {
        self.decide_from_windows(now, bucket_of(now))
    }

    fn decide_from_windows(&mut self, now: Duration, at: i64) -> TickReport {
        let metric = self.config.decider.metric;
        match self.windows.averages(metric, at) {
            Some(a) => self.decide_and_apply(now, Some((a.stable, a.panic)), None),
            None => {
                let a = self.windows.averages_or_zero(metric, at);
                let mut r = self.decide_and_apply(now, None, None);
                r.stable_avg = a.stable;
                r.panic_avg = a.panic;
                r
            }
        }
    }

    /// One decision from given averages (replaying exported gauges).
    pub fn tick_with_averages(
        &mut self,
        now: Duration,
        ready: u32,
        stable: f64,
        panic: f64,
    ) -> TickReport {
        self.ready = ready;
        self.decide_and_apply(now, Some((stable, panic)), None)
    }

    /// An immediate decision because a proxy holds requests for this
    /// revision. When the revision is at zero the recommendation is at
    /// least max(1, activation-scale): the held request proves demand even
    /// if its report has not reached the windows yet.
    pub fn demand(&mut self, now: Duration) -> TickReport {
        let floor = if self.applier.scale() == 0 || self.ready == 0 {
            Some(self.config.decider.activation_scale.max(1))
        } else {
            None
        };
        let metric = self.config.decider.metric;
        let a = self.windows.averages_or_zero(metric, bucket_of(now));
        self.decide_and_apply(now, Some((a.stable, a.panic)), floor)
    }

    fn decide_and_apply(
        &mut self,
        now: Duration,
        averages: Option<(f64, f64)>,
        floor: Option<i32>,
    ) -> TickReport {
        let decided = averages.is_some();
        if let Some((stable, panic)) = averages {
            let input = DeciderInput {
                now,
                ready: self.ready,
                stable_avg: stable,
                panic_avg: panic,
            };
            let mut d = decide(&self.config.decider, &mut self.decider, input);
            if let Some(f) = floor {
                d.desired = d.desired.max(f);
            }
            self.latest = Some(d);
        }
        let desired = self.latest.map_or(SCALE_UNKNOWN, |d| d.desired);
        let applied = apply(
            &self.config.scale,
            &mut self.applier,
            now,
            desired,
            self.ready,
        );
        let (stable_avg, panic_avg) = averages.unwrap_or((0.0, 0.0));
        TickReport {
            at: now,
            ready: self.ready,
            stable_avg,
            panic_avg,
            decided,
            desired,
            panic: self.decider.in_panic(),
            excess_burst_capacity: self
                .latest
                .map_or_else(|| initial_ebc(&self.config), |d| d.excess_burst_capacity),
            want: applied.want,
            scale: applied.scale,
            scale_changed: applied.changed,
            activity: applied.activity,
        }
    }
}

/// Knative's excess burst capacity before the first decision: whether the
/// initial scale covers the burst capacity.
fn initial_ebc(c: &RevisionConfig) -> i32 {
    let tbc = c.decider.target_burst_capacity;
    if tbc == -1.0 || tbc == 0.0 {
        tbc as i32
    } else {
        (f64::from(c.decider.initial_scale) * c.decider.total_value - tbc) as i32
    }
}

/// Every revision's autoscaler, on one clock. Not internally locked: the
/// control loop owns it (behind its own mutex if shared).
pub struct Autoscaler<K: Ord + Clone> {
    clock: Arc<dyn Clock>,
    global: GlobalConfig,
    revisions: BTreeMap<K, Entry>,
}

struct Entry {
    annotations: Annotations,
    scaler: RevisionAutoscaler,
}

impl<K: Ord + Clone> Autoscaler<K> {
    pub fn new(clock: Arc<dyn Clock>, global: GlobalConfig) -> Self {
        Autoscaler {
            clock,
            global,
            revisions: BTreeMap::new(),
        }
    }

    pub fn global(&self) -> &GlobalConfig {
        &self.global
    }

    /// New cluster defaults; every revision is re-resolved. On an error
    /// (a revision's annotations clash with the new defaults) nothing
    /// changes and the error names the key.
    pub fn set_global(&mut self, global: GlobalConfig) -> Result<(), ConfigError> {
        let mut resolved = Vec::with_capacity(self.revisions.len());
        for (k, e) in &self.revisions {
            resolved.push((k.clone(), RevisionConfig::resolve(&global, &e.annotations)?));
        }
        let now = self.clock.now();
        for (k, c) in resolved {
            if let Some(e) = self.revisions.get_mut(&k) {
                e.scaler.update_config(c, now);
            }
        }
        self.global = global;
        Ok(())
    }

    /// Creates or updates a revision's autoscaler from its settings
    /// (annotations plus `container-concurrency` and `reachable`).
    pub fn upsert(&mut self, key: K, annotations: Annotations) -> Result<(), ConfigError> {
        let config = RevisionConfig::resolve(&self.global, &annotations)?;
        let now = self.clock.now();
        match self.revisions.get_mut(&key) {
            Some(e) => {
                e.scaler.update_config(config, now);
                e.annotations = annotations;
            }
            None => {
                let scaler = RevisionAutoscaler::new(config, now, 0);
                self.revisions.insert(
                    key,
                    Entry {
                        annotations,
                        scaler,
                    },
                );
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, key: &K) -> bool {
        self.revisions.remove(key).is_some()
    }

    pub fn get(&self, key: &K) -> Option<&RevisionAutoscaler> {
        self.revisions.get(key).map(|e| &e.scaler)
    }

    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// Ready instances of a revision, from the scaler's endpoints.
    pub fn set_ready(&mut self, key: &K, ready: u32) {
        if let Some(e) = self.revisions.get_mut(key) {
            e.scaler.set_ready(ready);
        }
    }

    /// A load report. Returns an immediate decision when the report shows
    /// load for a revision whose latest recommendation is zero (Knative's
    /// poke); unknown revisions are ignored.
    pub fn record(&mut self, key: &K, stat: &Stat) -> Option<TickReport> {
        let now = self.clock.now();
        let e = self.revisions.get_mut(key)?;
        e.scaler.record(now, stat);
        e.scaler.wants_poke(stat).then(|| e.scaler.decide_now(now))
    }

    /// A proxy holds requests for the revision: decide now.
    pub fn demand(&mut self, key: &K) -> Option<TickReport> {
        let now = self.clock.now();
        self.revisions.get_mut(key).map(|e| e.scaler.demand(now))
    }

    /// One decision for a revision from given window averages instead of
    /// its windows (replaying exported stable/panic gauges).
    pub fn tick_with_averages(
        &mut self,
        key: &K,
        ready: u32,
        stable: f64,
        panic: f64,
    ) -> Option<TickReport> {
        let now = self.clock.now();
        let e = self.revisions.get_mut(key)?;
        Some(e.scaler.tick_with_averages(now, ready, stable, panic))
    }

    /// The periodic decision for every revision, in key order.
    pub fn tick(&mut self) -> Vec<(K, TickReport)> {
        let now = self.clock.now();
        self.revisions
            .iter_mut()
            .map(|(k, e)| (k.clone(), e.scaler.tick(now)))
            .collect()
    }

    /// Like [`tick`](Self::tick) without collecting reports: returns how
    /// many revisions' scale changed (for the bench and callers that read
    /// state afterwards).
    pub fn tick_count_changes(&mut self) -> usize {
        let now = self.clock.now();
        self.revisions
            .values_mut()
            .map(|e| e.scaler.tick(now).scale_changed)
            .filter(|c| *c)
            .count()
    }
}

/// Result of [`bench_tick`].
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub revisions: usize,
    pub ticks: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Measures [`Autoscaler::tick`] over `revisions` revisions with full
/// windows (every revision gets a report per second from 3 instances, with
/// varying load so some panic and some scale), `ticks` times, on a manual
/// clock. Only the tick is timed, not the recording.
pub fn bench_tick(revisions: usize, ticks: usize) -> BenchResult {
    use crate::clock::ManualClock;
    let clock = ManualClock::new();
    let mut a: Autoscaler<usize> =
        Autoscaler::new(Arc::new(clock.clone()), GlobalConfig::default());
    for r in 0..revisions {
        // Every built-in default is valid, so this cannot fail.
        let _ = a.upsert(r, Annotations::default());
        a.set_ready(&r, 3);
    }
    let mut samples = Vec::with_capacity(ticks);
    let mut second: u64 = 0;
    let report = |a: &mut Autoscaler<usize>, second: u64| {
        for r in 0..revisions {
            for pod in 0..3u64 {
                let load = ((r as u64 * 7 + second * 3 + pod) % 100) as f64;
                // One revision in five bursts ×4 for 30 s in turn.
                let burst = match (second / 30 + r as u64) % 5 {
                    0 => 4.0,
                    _ => 1.0,
                };
                let stat = Stat {
                    average_concurrency: load * burst,
                    request_count: load * 10.0,
                    ..Stat::default()
                };
                let _ = a.record(&r, &stat);
            }
        }
    };
    // Fill the stable window first.
    for _ in 0..60 {
        clock.set(Duration::from_secs(second));
        report(&mut a, second);
        second += 1;
    }
    for _ in 0..ticks {
        for _ in 0..2 {
            clock.set(Duration::from_secs(second));
            report(&mut a, second);
            second += 1;
        }
        let start = Instant::now();
        let reports = a.tick();
        samples.push(start.elapsed());
        std::hint::black_box(reports);
    }
    samples.sort();
    let n = samples.len().max(1);
    let total: Duration = samples.iter().sum();
    let pick = |q: f64| {
        samples
            .get(((n as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    BenchResult {
        revisions,
        ticks,
        mean: total / u32::try_from(n).unwrap_or(u32::MAX),
        p50: pick(0.5),
        p99: pick(0.99),
        max: samples.last().copied().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn load(c: f64) -> Stat {
        Stat {
            average_concurrency: c,
            request_count: c,
            ..Stat::default()
        }
    }

    /// Steady load of 140 on the defaults (target 70): 2 instances.
    #[test]
    fn steady_load_through_the_whole_stack() {
        let clock = ManualClock::new();
        let mut a: Autoscaler<&str> =
            Autoscaler::new(Arc::new(clock.clone()), GlobalConfig::default());
        assert!(a.upsert("rev", Annotations::default()).is_ok());
        a.set_ready(&"rev", 1);
        let mut last = None;
        for s in 0..30 {
            clock.set(secs(s));
            a.record(&"rev", &load(140.0));
            if s % 2 == 0 {
                last = a.tick().pop();
            }
        }
        let (_, r) = last.unwrap_or_else(|| panic!("no tick"));
        assert_eq!((r.desired, r.scale, r.stable_avg), (2, 2, 140.0));
    }

    /// Idle to zero, then demand: an immediate decision ≥ 1, here the
    /// activation scale 3.
    #[test]
    fn demand_at_zero_decides_at_once() {
        let clock = ManualClock::new();
        let mut a: Autoscaler<u32> =
            Autoscaler::new(Arc::new(clock.clone()), GlobalConfig::default());
        let anns = Annotations {
            activation_scale: Some(3),
            ..Annotations::default()
        };
        assert!(a.upsert(7, anns).is_ok());
        a.set_ready(&7, 1);
        for s in 0..200 {
            clock.set(secs(s));
            a.record(&7, &load(if s < 10 { 5.0 } else { 0.0 }));
            if s % 2 == 0 {
                a.tick();
            }
        }
        assert_eq!(a.get(&7).map(|r| r.scale()), Some(0));
        a.set_ready(&7, 0);
        clock.set(secs(300));
        let r = a.demand(&7);
        assert_eq!(
            r.map(|r| (r.desired, r.scale, r.scale_changed)),
            Some((3, 3, true))
        );
    }

    /// A report of load for a revision whose recommendation is 0 pokes an
    /// immediate decision.
    #[test]
    fn load_report_at_zero_pokes() {
        let clock = ManualClock::new();
        let mut a: Autoscaler<u32> =
            Autoscaler::new(Arc::new(clock.clone()), GlobalConfig::default());
        assert!(a.upsert(1, Annotations::default()).is_ok());
        clock.set(secs(1));
        assert!(a.record(&1, &load(0.0)).is_none());
        // Second 1 is complete at 2 s: no load, desired 0.
        clock.set(secs(2));
        let r = a.tick().pop().map(|(_, r)| r.desired);
        assert_eq!(r, Some(0));
        // The poke decides on the current second, which holds the report.
        let r = a.record(&1, &load(1.0));
        assert_eq!(r.map(|r| r.desired), Some(1));
    }

    /// Proxies report each second at their own second boundary, here
    /// 0.7 s into the control plane's second; decisions come at 0.2 s. A
    /// 6 s window has a 1 s panic window, whose newest bucket is empty at
    /// every decision: read at the current second it reads 0 and a burst
    /// never panics. Read at the last complete second it sees the load.
    #[test]
    fn a_decision_before_this_seconds_reports_reads_the_last_complete_second() {
        let clock = ManualClock::new();
        let mut a: Autoscaler<&str> =
            Autoscaler::new(Arc::new(clock.clone()), GlobalConfig::default());
        let anns = Annotations {
            window: Some(secs(6)),
            ..Annotations::default()
        };
        assert!(a.upsert("rev", anns).is_ok());
        assert_eq!(
            a.get(&"rev").map(|r| r.config().windows.panic),
            Some(secs(1))
        );
        a.set_ready(&"rev", 1);
        let mut reports = Vec::new();
        for s in 0..20u64 {
            // 70 per second (1 instance at target 70), 4× from second 12.
            let c = if s < 12 { 70.0 } else { 280.0 };
            clock.set(Duration::from_millis(s * 1000 + 700));
            a.record(&"rev", &load(c));
            if s % 2 == 1 {
                clock.set(Duration::from_millis((s + 1) * 1000 + 200));
                if let Some((_, r)) = a.tick().pop() {
                    reports.push((s, r));
                }
            }
        }
        for (s, r) in &reports {
            let want = if *s < 12 { 70.0 } else { 280.0 };
            assert_eq!(r.panic_avg, want, "panic window after second {s}: {r:?}");
            assert!(r.decided, "after second {s}");
        }
        let (s, burst) = reports
            .iter()
            .find(|(s, _)| *s >= 12)
            .copied()
            .unwrap_or_else(|| panic!("no decision after the burst"));
        assert!(burst.panic, "no panic after second {s}: {burst:?}");
        assert_eq!(burst.desired, 4, "⌈280 / 70⌉");
    }

    #[test]
    fn bench_smoke() {
        let r = bench_tick(20, 5);
        assert_eq!((r.revisions, r.ticks), (20, 5));
    }
}
