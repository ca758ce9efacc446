//! The decider: Knative's KPA formula (`pkg/autoscaler/scaling/autoscaler.go`)
//! as a pure function of the window averages, the ready count, the spec, the
//! time, and its own small state (panic mode start, the panic high-water
//! mark, the scale-down delay window). No clock, no I/O: callers pass `now`.

use std::time::Duration;

use super::aggregation::MaxTimeWindow;
use super::config::{DeciderSpec, TICK_INTERVAL};

/// What the decider observed for one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeciderInput {
    /// Time of the decision (the control-plane clock).
    pub now: Duration,
    /// Ready instances right now.
    pub ready: u32,
    /// Revision-wide average of the scaling metric over the stable window.
    pub stable_avg: f64,
    /// The same over the panic window.
    pub panic_avg: f64,
}

/// One decision (Knative's `ScaleResult` plus what led to it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Instances the revision should have, before min/max/initial scale
    /// and scale-to-zero handling (those are the applier's).
    pub desired: i32,
    /// In panic mode after this decision.
    pub panic: bool,
    /// Spare capacity beyond the target burst capacity (negative: a burst
    /// would queue; -1 with an unlimited burst capacity; 0 when off).
    pub excess_burst_capacity: i32,
    pub stable_avg: f64,
    pub panic_avg: f64,
    /// ceil(stable / target) and ceil(panic / target), before rate limits.
    pub stable_pods: f64,
    pub panic_pods: f64,
}

/// The decider's memory between decisions.
#[derive(Debug, Clone)]
pub struct DeciderState {
    /// When panic mode was last (re-)entered; `None` when not panicking.
    panic_time: Option<Duration>,
    /// The most instances asked for during this panic.
    max_panic_pods: i32,
    /// Maximum recommendation over the scale-down delay, when one is set.
    delay_window: Option<MaxTimeWindow>,
    /// The delay the window was built for, to rebuild it on change.
    delay: Duration,
}

impl DeciderState {
    /// A fresh decider. As in Knative, one created while more than one
    /// instance is ready starts in panic mode with that many as its
    /// high-water mark: it has no metric history yet (a control-plane
    /// restart), and must not scale an existing revision down before it
    /// has seen a stable window of data.
    pub fn new(spec: &DeciderSpec, now: Duration, ready: u32) -> Self {
        let ready = i32::try_from(ready).unwrap_or(i32::MAX);
        DeciderState {
            panic_time: (ready > 1).then_some(now),
            max_panic_pods: ready,
            delay_window: delay_window(spec.scale_down_delay),
            delay: spec.scale_down_delay,
        }
    }

    pub fn in_panic(&self) -> bool {
        self.panic_time.is_some()
    }

    pub fn panic_since(&self) -> Option<Duration> {
        self.panic_time
    }

    pub fn max_panic_pods(&self) -> i32 {
        self.max_panic_pods
    }

    /// Picks up a changed scale-down delay. (Knative keeps the window it
    /// was created with until the autoscaler restarts; rebuilding it makes
    /// a config change take effect at once.)
    pub fn update_spec(&mut self, spec: &DeciderSpec) {
        if spec.scale_down_delay != self.delay {
            self.delay = spec.scale_down_delay;
            self.delay_window = delay_window(spec.scale_down_delay);
        }
    }

    /// Puts the decider in panic mode since `at` with a high-water mark, as
    /// a test or a restored state needs.
    pub fn set_panic(&mut self, at: Option<Duration>, max_panic_pods: i32) {
        self.panic_time = at;
        self.max_panic_pods = max_panic_pods;
    }
}

fn delay_window(delay: Duration) -> Option<MaxTimeWindow> {
    // No window at all for a zero delay: a one-slot window is not the same
    // (two decisions in one slot would keep the larger, not the newer).
    (!delay.is_zero()).then(|| MaxTimeWindow::new(delay.as_secs(), TICK_INTERVAL.as_secs()))
}

/// Knative's `Scale`: the desired instance count for the observed averages.
pub fn decide(spec: &DeciderSpec, state: &mut DeciderState, input: DeciderInput) -> Decision {
    let now = input.now;
    let original_ready = f64::from(input.ready);
    // Rates and the panic threshold are relative to at least one instance,
    // so a revision at zero can still scale up.
    let ready = original_ready.max(1.0);

    // Rate limits. Ceil lets a slow up-rate still add one instance
    // (rate 1.1 × 2 ready → 3, not 2.2 → 2).
    let max_scale_up = (spec.max_scale_up_rate * ready).ceil();
    // An unreachable revision may drop to anything at once.
    let max_scale_down = if spec.reachable {
        (ready / spec.max_scale_down_rate).floor()
    } else {
        0.0
    };

    let stable_pods = (input.stable_avg / spec.target_value).ceil();
    let panic_pods = (input.panic_avg / spec.target_value).ceil();

    let clamp = |pods: f64| pods.max(max_scale_down).min(max_scale_up) as i32;
    let mut desired_stable = clamp(stable_pods);
    let mut desired_panic = clamp(panic_pods);

    // Activation scale: any non-zero recommendation is at least this.
    if spec.activation_scale > 1 {
        if stable_pods > 0.0 && spec.activation_scale > desired_stable {
            desired_stable = spec.activation_scale;
        }
        if panic_pods > 0.0 && spec.activation_scale > desired_panic {
            desired_panic = spec.activation_scale;
        }
    }

    // The threshold compares the unclamped panic need with what is ready.
    let over_threshold = panic_pods / ready >= spec.panic_threshold;
    if over_threshold {
        // Enter panic, or extend it while the surge lasts.
        state.panic_time = Some(now);
    } else if let Some(since) = state.panic_time {
        // Leave panic once a whole stable window has passed since the last
        // over-threshold decision: by then the surge is in the stable
        // average.
        if since + spec.stable_window < now {
            state.panic_time = None;
            state.max_panic_pods = 0;
        }
    }

    let mut desired = desired_stable;
    if state.panic_time.is_some() {
        // Provision for the larger of the two windows, and never scale down
        // while panicking.
        desired = desired.max(desired_panic);
        if desired > state.max_panic_pods {
            state.max_panic_pods = desired;
        }
        desired = state.max_panic_pods;
    }

    // Scale-down delay: the maximum recommendation over the delay window.
    // Unreachable revisions are not held up.
    if spec.reachable {
        if let Some(w) = state.delay_window.as_mut() {
            let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            w.record(secs, desired);
            desired = w.current();
        }
    }

    // Excess burst capacity, from the panic average so that a burst is
    // noticed quickly: total capacity − requests in flight − the burst to
    // absorb.
    let ebc = if spec.target_burst_capacity == 0.0 {
        0.0
    } else if spec.target_burst_capacity > 0.0 {
        let total_capacity = original_ready * spec.total_value;
        (total_capacity - spec.target_burst_capacity - input.panic_avg).floor()
    } else {
        -1.0
    };

    Decision {
        desired,
        panic: state.panic_time.is_some(),
        excess_burst_capacity: ebc as i32,
        stable_avg: input.stable_avg,
        panic_avg: input.panic_avg,
        stable_pods,
        panic_pods,
    }
}

#[cfg(test)]
mod tests {
    //! Knative's worked cases from `pkg/autoscaler/scaling/autoscaler_test.go`,
    //! numbers re-derived by hand. Knative's test spec: total = target / 0.75,
    //! panic threshold 2 (200 %), up and down rates 10, stable window 60 s,
    //! reachable, no scale-down delay, created with 1 ready instance.

    use super::*;
    use crate::autoscaler::config::Metric;

    const SW: Duration = Duration::from_secs(60);

    fn spec(target: f64, tbc: f64) -> DeciderSpec {
        DeciderSpec {
            metric: Metric::Concurrency,
            target_value: target,
            total_value: target / 0.75,
            target_burst_capacity: tbc,
            activator_capacity: 150.0,
            panic_threshold: 2.0,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 10.0,
            stable_window: SW,
            scale_down_delay: Duration::ZERO,
            initial_scale: 1,
            reachable: true,
            activation_scale: 0,
        }
    }

    /// Knative's `expectedEBC`: floor(total × ready − tbc − panic).
    fn ebc(target: f64, tbc: f64, panic: f64, ready: f64) -> i32 {
        (target / 0.75 * ready - tbc - panic).floor() as i32
    }

    struct Harness {
        spec: DeciderSpec,
        state: DeciderState,
    }

    impl Harness {
        fn new(spec: DeciderSpec) -> Self {
            let state = DeciderState::new(&spec, Duration::ZERO, 1);
            Harness { spec, state }
        }
        fn at(&mut self, now: Duration, ready: u32, stable: f64, panic: f64) -> Decision {
            decide(
                &self.spec,
                &mut self.state,
                DeciderInput {
                    now,
                    ready,
                    stable_avg: stable,
                    panic_avg: panic,
                },
            )
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    // TestAutoscalerStableModeIncreaseWithConcurrencyDefault: stable mode,
    // 1 ready, target 10: 50 → 5 instances, 100 → 10 (the up-rate cap
    // ceil(10 × 1) = 10 just allows it). Panic 10 → 1 pod, 1/1 < 2.
    #[test]
    fn stable_mode_increase() {
        let mut h = Harness::new(spec(10.0, 101.0));
        let d = h.at(secs(1), 1, 50.0, 10.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity, d.panic),
            (5, ebc(10.0, 101.0, 10.0, 1.0), false)
        );
        let d = h.at(secs(3), 1, 100.0, 10.0);
        assert_eq!((d.desired, d.excess_burst_capacity), (10, -98));
    }

    // TestAutoscalerStableModeIncreaseWithRPS: the same numbers on rps.
    #[test]
    fn stable_mode_increase_rps() {
        let mut s = spec(10.0, 101.0);
        s.metric = Metric::Rps;
        let mut h = Harness::new(s);
        assert_eq!(h.at(secs(1), 1, 50.0, 50.0).desired, 5);
        let d = h.at(secs(3), 1, 100.0, 99.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (10, ebc(10.0, 101.0, 99.0, 1.0))
        );
    }

    // TestAutoscalerUnpanicAfterSlowIncrease: 10 ready, panic 25 at target 1
    // → 25/10 ≥ 2 panics, desired 25. Half a window later (40 ready, panic
    // 41: 41/40 < 2) still in panic, desired max(30, 41) = 41 and the panic
    // start unchanged. A window + a tick after the start (55 ready, stable
    // 50, panic 56) panic ends and the stable 50 is used.
    #[test]
    fn unpanic_after_slow_increase() {
        let mut h = Harness::new(spec(1.0, 98.0));
        let t0 = secs(100);
        let d = h.at(t0, 10, 11.0, 25.0);
        assert_eq!(
            (d.desired, d.panic, d.excess_burst_capacity),
            (25, true, ebc(1.0, 98.0, 25.0, 10.0))
        );
        assert_eq!(h.state.panic_since(), Some(t0));
        let t1 = t0 + SW / 2;
        let d = h.at(t1, 40, 30.0, 41.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (41, ebc(1.0, 98.0, 41.0, 40.0))
        );
        assert_eq!(h.state.panic_since(), Some(t0), "panic start must not move");
        let t2 = t1 + SW / 2 + secs(2);
        let d = h.at(t2, 55, 50.0, 56.0);
        assert_eq!((d.desired, d.panic), (50, false));
        assert_eq!(h.state.panic_since(), None);
    }

    // TestAutoscalerExtendPanicWindow: still surging (80/40 ≥ 2) half a
    // window later moves the panic start to now.
    #[test]
    fn extend_panic_window() {
        let mut h = Harness::new(spec(1.0, 98.0));
        let t0 = secs(100);
        assert_eq!(h.at(t0, 10, 11.0, 25.0).desired, 25);
        let t1 = t0 + SW / 2;
        let d = h.at(t1, 40, 30.0, 80.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (80, ebc(1.0, 98.0, 80.0, 40.0))
        );
        assert_eq!(h.state.panic_since(), Some(t1));
    }

    // TestAutoscalerStableModeDecrease: 8 ready, target 10: 100 → 10
    // (100/10 = 10 pods, 10/8 < 2 no panic), then 50 → 5 (down-rate floor
    // 8/10 = 0 does not bind).
    #[test]
    fn stable_mode_decrease() {
        let mut h = Harness::new(spec(10.0, 98.0));
        let d = h.at(secs(1), 8, 100.0, 100.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (10, ebc(10.0, 98.0, 100.0, 8.0))
        );
        assert_eq!(h.at(secs(3), 8, 50.0, 50.0).desired, 5);
    }

    // TestAutoscalerStableModeNoTrafficScaleToZero: stable 1 → 1, then 0 → 0.
    #[test]
    fn stable_mode_no_traffic_scale_to_zero() {
        let mut h = Harness::new(spec(10.0, 75.0));
        let d = h.at(secs(1), 1, 1.0, 0.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (1, ebc(10.0, 75.0, 0.0, 1.0))
        );
        assert_eq!(h.at(secs(3), 1, 0.0, 0.0).desired, 0);
    }

    // TestAutoscalerActivationScale: activation-scale 2 leaves 0 at 0 but
    // lifts any non-zero recommendation (stable 1 → 1 pod) to 2.
    #[test]
    fn activation_scale() {
        let mut s = spec(10.0, 75.0);
        s.activation_scale = 2;
        let mut h = Harness::new(s);
        assert_eq!(h.at(secs(1), 1, 0.0, 0.0).desired, 0);
        assert_eq!(h.at(secs(3), 1, 1.0, 0.0).desired, 2);
    }

    // TestAutoscalerPanicModeExponentialTrackAndStabilize: target 1, load
    // ×6 each step with ready following: 6, 36, 216, 1296, each step in
    // panic (6/1, 36/6, 216/36 ≥ 2) and within the up-rate (×10), then
    // stable at 1296.
    #[test]
    fn panic_exponential_track_and_stabilize() {
        let mut h = Harness::new(spec(1.0, 101.0));
        assert_eq!(h.at(secs(10), 1, 6.0, 6.0).desired, 6);
        let d = h.at(secs(10), 6, 36.0, 36.0);
        assert_eq!((d.desired, d.panic), (36, true));
        assert_eq!(h.at(secs(11), 36, 216.0, 216.0).desired, 216);
        assert_eq!(h.at(secs(11), 216, 1296.0, 1296.0).desired, 1296);
        let d = h.at(secs(12), 1296, 1296.0, 1296.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (1296, ebc(1.0, 101.0, 1296.0, 1296.0))
        );
    }

    // TestAutoscalerScale's table, one case per entry.
    #[test]
    fn knative_scale_table() {
        struct Case {
            label: &'static str,
            target: f64,
            tbc: f64,
            stable: f64,
            panic: f64,
            ready: u32,
            prep: fn(&mut DeciderSpec, &mut DeciderState),
            want: i32,
            want_ebc: i32,
        }
        fn none(_: &mut DeciderSpec, _: &mut DeciderState) {}
        fn in_panic_at_5(_: &mut DeciderSpec, st: &mut DeciderState) {
            st.set_panic(Some(Duration::from_secs(95)), 5);
        }
        let cases = [
            // No data at all reads as zeros: desired 0.
            Case {
                label: "no data at zero",
                target: 10.0,
                tbc: 100.0,
                stable: 0.0,
                panic: 0.0,
                ready: 1,
                prep: none,
                want: 0,
                want_ebc: ebc(10.0, 100.0, 0.0, 1.0),
            },
            // Unlimited burst capacity: EBC is -1 whatever the load.
            Case {
                label: "unlimited TBC",
                target: 181.0,
                tbc: -1.0,
                stable: 21.0,
                panic: 26.0,
                ready: 1,
                prep: none,
                want: 1,
                want_ebc: -1,
            },
            // TBC 0: EBC is 0.
            Case {
                label: "TBC 0",
                target: 10.0,
                tbc: 0.0,
                stable: 50.0,
                panic: 49.0,
                ready: 1,
                prep: none,
                want: 5,
                want_ebc: 0,
            },
            Case {
                label: "stable, no change",
                target: 10.0,
                tbc: 100.0,
                stable: 50.0,
                panic: 50.0,
                ready: 1,
                prep: none,
                want: 5,
                want_ebc: ebc(10.0, 100.0, 50.0, 1.0),
            },
            // In panic with stable > panic: the stable need (50) wins.
            Case {
                label: "panic, stable larger",
                target: 1.0,
                tbc: 100.0,
                stable: 50.0,
                panic: 30.0,
                ready: 5,
                prep: in_panic_at_5,
                want: 50,
                want_ebc: ebc(1.0, 100.0, 30.0, 5.0),
            },
            Case {
                label: "panic, stable smaller",
                target: 1.0,
                tbc: 100.0,
                stable: 20.0,
                panic: 30.0,
                ready: 5,
                prep: in_panic_at_5,
                want: 30,
                want_ebc: ebc(1.0, 100.0, 30.0, 5.0),
            },
            Case {
                label: "stable, already scaled",
                target: 10.0,
                tbc: 100.0,
                stable: 50.0,
                panic: 50.0,
                ready: 5,
                prep: none,
                want: 5,
                want_ebc: ebc(10.0, 100.0, 50.0, 5.0),
            },
            // Up-rate 1.1 from 2 ready: ceil(2.2) = 3 still allows +1.
            Case {
                label: "small scale-up rate",
                target: 1.0,
                tbc: 1982.0,
                stable: 3.0,
                panic: 3.1,
                ready: 2,
                prep: |s, _| s.max_scale_up_rate = 1.1,
                want: 3,
                want_ebc: ebc(1.0, 1982.0, 3.1, 2.0),
            },
            // Down-rate 1.1 from 100 ready: floor(100 / 1.1) = 90.
            Case {
                label: "small scale-down rate",
                target: 10.0,
                tbc: 1982.0,
                stable: 1.0,
                panic: 1.0,
                ready: 100,
                prep: |s, _| s.max_scale_down_rate = 1.1,
                want: 90,
                want_ebc: ebc(10.0, 1982.0, 1.0, 100.0),
            },
            // Unreachable: no down-rate limit, straight to 1.
            Case {
                label: "decrease, unreachable",
                target: 10.0,
                tbc: 1982.0,
                stable: 1.0,
                panic: 1.0,
                ready: 100,
                prep: |s, _| {
                    s.max_scale_down_rate = 1.1;
                    s.reachable = false;
                },
                want: 1,
                want_ebc: ebc(10.0, 1982.0, 1.0, 100.0),
            },
            // Panic 100 at target 10 on 1 ready: 10/1 ≥ 2, panic wins over stable 5.
            Case {
                label: "panic doubles",
                target: 10.0,
                tbc: 84.0,
                stable: 50.0,
                panic: 100.0,
                ready: 1,
                prep: none,
                want: 10,
                want_ebc: ebc(10.0, 84.0, 100.0, 1.0),
            },
        ];
        for c in cases {
            let mut s = spec(c.target, c.tbc);
            let mut st = DeciderState::new(&s, Duration::ZERO, 1);
            (c.prep)(&mut s, &mut st);
            let d = decide(
                &s,
                &mut st,
                DeciderInput {
                    now: secs(100),
                    ready: c.ready,
                    stable_avg: c.stable,
                    panic_avg: c.panic,
                },
            );
            assert_eq!(
                (d.desired, d.excess_burst_capacity),
                (c.want, c.want_ebc),
                "{}",
                c.label
            );
        }
    }

    // TestAutoscalerPanicThenUnPanicScaleDown: panic to 100 (1000/10 = 100
    // pods on 10 ready), traffic gone 30 s later still 100 (no scale down in
    // panic), 61 s after the panic started back to 1 (down-rate floor
    // 10/10 = 1).
    #[test]
    fn panic_then_unpanic_scale_down() {
        let mut h = Harness::new(spec(10.0, 93.0));
        let d = h.at(secs(100), 1, 100.0, 100.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (10, ebc(10.0, 93.0, 100.0, 1.0))
        );
        let t = secs(100);
        let d = h.at(t, 10, 100.0, 1000.0);
        assert_eq!((d.desired, d.panic), (100, true));
        let d = h.at(t + secs(30), 10, 1.0, 1.0);
        assert_eq!((d.desired, d.panic), (100, true));
        let d = h.at(t + secs(61), 10, 1.0, 1.0);
        assert_eq!(
            (d.desired, d.panic, d.excess_burst_capacity),
            (1, false, ebc(10.0, 93.0, 1.0, 10.0))
        );
    }

    // TestAutoscalerRateLimitScaleUp: 100 needed, ×10 per decision: 10, 100.
    #[test]
    fn rate_limit_scale_up() {
        let mut h = Harness::new(spec(10.0, 61.0));
        assert_eq!(h.at(secs(1), 1, 1000.0, 1001.0).desired, 10);
        assert_eq!(h.at(secs(3), 10, 1000.0, 1001.0).desired, 100);
    }

    // TestAutoscalerRateLimitScaleDown: 1 needed, ÷10 per decision: 10, 1.
    #[test]
    fn rate_limit_scale_down() {
        let mut h = Harness::new(spec(10.0, 61.0));
        let d = h.at(secs(1), 100, 1.0, 1.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (10, ebc(10.0, 61.0, 1.0, 100.0))
        );
        assert_eq!(h.at(secs(3), 10, 1.0, 1.0).desired, 1);
    }

    // TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound: 0 ready counts
    // as 1 for rates (up to 10), but EBC uses the real 0.
    #[test]
    fn zero_ready_counts_as_one() {
        let mut h = Harness::new(spec(10.0, 81.0));
        let d = h.at(secs(1), 0, 1000.0, 888.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (10, ebc(10.0, 81.0, 888.0, 0.0))
        );
    }

    // TestAutoscalerUpdateTarget: a new target (1, TBC 71) applies at the
    // next decision: 101 → 100 (up-rate ×10 of 10 ready).
    #[test]
    fn update_target() {
        let mut h = Harness::new(spec(10.0, 77.0));
        assert_eq!(h.at(secs(1), 1, 100.0, 101.0).desired, 10);
        h.spec = spec(1.0, 71.0);
        h.state.update_spec(&h.spec);
        let d = h.at(secs(3), 10, 100.0, 101.0);
        assert_eq!(
            (d.desired, d.excess_burst_capacity),
            (100, ebc(1.0, 71.0, 101.0, 10.0))
        );
    }

    fn delay_spec(delay: Duration) -> DeciderSpec {
        DeciderSpec {
            target_value: 10.0,
            max_scale_down_rate: 10.0,
            max_scale_up_rate: 10.0,
            panic_threshold: 100.0,
            scale_down_delay: delay,
            ..spec(10.0, 0.0)
        }
    }

    // TestAutoscalerScaleDownDelay (simple, then gradual): 5 min delay, 0
    // ready. 40 → 4; 0 for 5 min holds 4; 2 s later (the 4 slides out of
    // the 150-slot window) → 0. Then 4 at 9 min, 3 at 10, 0 at 11 hold 4;
    // at 14 min the 4 has slid out → 3; at 15 min → 0.
    #[test]
    fn scale_down_delay() {
        let s = delay_spec(Duration::from_secs(300));
        let mut st = DeciderState::new(&s, Duration::ZERO, 0);
        let mut at = |t: u64, c: f64| {
            decide(
                &s,
                &mut st,
                DeciderInput {
                    now: secs(t),
                    ready: 0,
                    stable_avg: c,
                    panic_avg: c,
                },
            )
            .desired
        };
        assert_eq!(at(2, 40.0), 4);
        assert_eq!(at(300, 0.0), 4);
        assert_eq!(at(302, 0.0), 0);
        assert_eq!(at(540, 40.0), 4);
        assert_eq!(at(600, 30.0), 4);
        assert_eq!(at(660, 0.0), 4);
        assert_eq!(at(840, 0.0), 3);
        assert_eq!(at(900, 0.0), 0);
    }

    // TestAutoscalerScaleDownDelayNotReachable: once unreachable, the delay
    // no longer holds the revision up.
    #[test]
    fn scale_down_delay_not_reachable() {
        let mut s = delay_spec(Duration::from_secs(300));
        let mut st = DeciderState::new(&s, Duration::ZERO, 0);
        let input = |t: u64, c: f64| DeciderInput {
            now: secs(t),
            ready: 0,
            stable_avg: c,
            panic_avg: c,
        };
        assert_eq!(decide(&s, &mut st, input(2, 40.0)).desired, 4);
        assert_eq!(decide(&s, &mut st, input(60, 0.0)).desired, 4);
        s.reachable = false;
        assert_eq!(decide(&s, &mut st, input(62, 0.0)).desired, 0);
    }

    // TestAutoscalerScaleDownDelayZero: no delay scales down at once, even
    // within one tick slot.
    #[test]
    fn scale_down_delay_zero() {
        let s = delay_spec(Duration::ZERO);
        let mut st = DeciderState::new(&s, Duration::ZERO, 0);
        let input = |ms: u64, c: f64| DeciderInput {
            now: Duration::from_millis(ms),
            ready: 0,
            stable_avg: c,
            panic_avg: c,
        };
        assert_eq!(decide(&s, &mut st, input(0, 40.0)).desired, 4);
        assert_eq!(decide(&s, &mut st, input(500, 20.0)).desired, 2);
    }

    // TestStartInPanicMode: created with 0 or 1 ready → not panicking, mark
    // = ready; with 2 → panicking, mark 2.
    #[test]
    fn start_in_panic_mode() {
        let s = spec(100.0, 11.0);
        for r in 0..2 {
            let st = DeciderState::new(&s, Duration::ZERO, r);
            assert!(!st.in_panic());
            assert_eq!(st.max_panic_pods(), r as i32);
        }
        let st = DeciderState::new(&s, Duration::ZERO, 2);
        assert!(st.in_panic());
        assert_eq!(st.max_panic_pods(), 2);
    }
}
