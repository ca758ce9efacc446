//! The applier: turns the decider's recommendation into the instance count
//! the scaler is asked for, as Knative's KPA reconciler does
//! (`pkg/reconciler/autoscaling/kpa/scaler.go` and `kpa.go`): min/max scale,
//! initial scale until first reached, the active → inactive → zero sequence
//! with the stable window and the scale-to-zero grace period, and the
//! activation timeout. Pure: the caller passes the time.
//!
//! The revision's activity follows Knative's PodAutoscaler `Active`
//! condition:
//! - *activating*: instances asked for, not yet ready (a new revision, or
//!   a cold start);
//! - *active*: enough instances ready;
//! - *inactive*: the decider wants zero and the revision has been active
//!   for a stable window; proxies hold its requests from here on, and after
//!   the grace period (and the pod retention period, if longer) its last
//!   instances are stopped.
//!
//! Knative also waits for the activator to be in the request path (the SKS
//! switching to proxy mode) before removing the last pod. In Ferry every
//! proxy holds requests for a revision with no endpoints, so the proxy path
//! exists from the moment the revision goes inactive and the grace period
//! runs from there.

use std::fmt;
use std::time::Duration;

use super::config::ScaleSpec;

/// The "unknown" desired scale: no recommendation yet.
pub const SCALE_UNKNOWN: i32 = -1;

/// Knative's PodAutoscaler `Active` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Activating,
    Active,
    Inactive,
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activity::Activating => "activating",
            Activity::Active => "active",
            Activity::Inactive => "inactive",
        })
    }
}

/// The applier's memory.
#[derive(Debug, Clone)]
pub struct ApplierState {
    activity: Activity,
    /// When `activity` last changed.
    since: Duration,
    /// Initial scale has been reached once (it no longer applies).
    initialized: bool,
    /// The instance count last set on the scaler.
    scale: i32,
    /// The last scale the applier wanted (Knative's PA desired scale);
    /// -1 while unknown.
    want: i32,
}

/// The applier's answer for one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The instance count the scaler should have now.
    pub scale: i32,
    /// `scale` differs from before this call: the scaler must act.
    pub changed: bool,
    /// What the applier wanted (may differ from `scale` while it waits,
    /// e.g. 0 during the grace period); -1 while unknown.
    pub want: i32,
    pub activity: Activity,
    pub initialized: bool,
}

impl ApplierState {
    /// A new revision: activating, with its initial scale already set on
    /// the scaler (Knative creates the Deployment with that many replicas).
    pub fn new(spec: &ScaleSpec, now: Duration) -> Self {
        ApplierState {
            activity: Activity::Activating,
            since: now,
            initialized: false,
            scale: spec.initial_scale.max(0),
            want: SCALE_UNKNOWN,
        }
    }

    pub fn scale(&self) -> i32 {
        self.scale
    }

    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// How long the revision has been in its current activity.
    pub fn activity_for(&self, now: Duration) -> Duration {
        now.saturating_sub(self.since)
    }

    pub fn want(&self) -> i32 {
        self.want
    }

    pub fn initialized(&self) -> bool {
        self.initialized
    }

    fn mark(&mut self, activity: Activity, now: Duration) {
        if self.activity != activity {
            self.activity = activity;
            self.since = now;
        }
    }
}

/// Knative's `applyBounds`: 0 as max means unbounded.
fn apply_bounds(min: i32, max: i32, x: i32) -> i32 {
    if x < min {
        min
    } else if max != 0 && x > max {
        max
    } else {
        x
    }
}

/// One pass of the applier with the decider's latest recommendation
/// (`desired`, -1 when there is none yet) and the ready count.
pub fn apply(
    spec: &ScaleSpec,
    st: &mut ApplierState,
    now: Duration,
    desired: i32,
    ready: u32,
) -> Applied {
    let before = st.scale;
    let want = if desired < 0 && st.activity != Activity::Activating {
        // No metrics yet and nothing in flight: leave the scale alone.
        desired
    } else {
        let mut min = spec.min_scale;
        // Until the initial scale has been reached once, it is a lower
        // bound (min-scale wins if larger); never for an unreachable
        // revision, which may go straight to zero.
        if spec.initial_scale > 1 && !st.initialized && spec.reachable {
            min = min.max(spec.initial_scale);
        }
        let bounded = apply_bounds(min, spec.max_scale, desired);
        let (want, apply_it) = scale_to_zero(spec, st, now, bounded);
        if apply_it {
            st.scale = want;
        }
        want
    };
    update_activity(spec, st, now, want, ready);
    // A restarted decider's "unknown" does not erase a known want.
    if !(want == SCALE_UNKNOWN && st.want >= 0) {
        st.want = want;
    }
    Applied {
        scale: st.scale,
        changed: st.scale != before,
        want,
        activity: st.activity,
        initialized: st.initialized,
    }
}

/// Knative's `handleScaleToZero`: `(scale, apply it now)`.
fn scale_to_zero(spec: &ScaleSpec, st: &ApplierState, now: Duration, desired: i32) -> (i32, bool) {
    if desired != 0 {
        return (desired, true);
    }
    if !spec.enable_scale_to_zero {
        return (1, true);
    }
    let for_ = st.activity_for(now);
    match st.activity {
        Activity::Activating => {
            if for_ > spec.activation_timeout {
                // Stuck activating past the progress deadline: give up.
                (desired, true)
            } else {
                (SCALE_UNKNOWN, false)
            }
        }
        Activity::Active => {
            if for_ >= spec.stable_window {
                // Idle after a full stable window of activity: go inactive
                // (the caller marks it), keep the instances for now.
                (desired, false)
            } else {
                // Recently activated: keep one instance for the rest of the
                // stable window.
                (1, true)
            }
        }
        Activity::Inactive => {
            let retention = if spec.reachable {
                spec.scale_to_zero_pod_retention_period
            } else {
                Duration::ZERO
            };
            let wait = spec.scale_to_zero_grace_period.max(retention);
            (desired, for_ >= wait)
        }
    }
}

/// Knative's `computeActiveCondition`.
fn update_activity(spec: &ScaleSpec, st: &mut ApplierState, now: Duration, want: i32, ready: u32) {
    let ready = i64::from(ready);
    let min_ready = i64::from(if st.initialized {
        spec.min_scale.max(1)
    } else {
        spec.min_scale.max(spec.initial_scale)
    });
    if ready >= min_ready {
        st.initialized = true;
    }
    let inactive = st.activity == Activity::Inactive;
    if want == 0 || min_ready == 0 {
        st.mark(Activity::Inactive, now);
    } else if ready < min_ready {
        if want > 0 || !inactive {
            st.mark(Activity::Activating, now);
        }
    } else if want > 0 || !inactive {
        st.mark(Activity::Active, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::config::RevisionConfig;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn spec() -> ScaleSpec {
        RevisionConfig::defaults().scale
    }

    /// Runs the applier every 2 s from `from` to `to` (inclusive) with a
    /// fixed recommendation and ready count; returns the last answer.
    fn run(
        spec: &ScaleSpec,
        st: &mut ApplierState,
        from: u64,
        to: u64,
        desired: i32,
        ready: u32,
    ) -> Applied {
        let mut last = None;
        let mut t = from;
        while t <= to {
            last = Some(apply(spec, st, secs(t), desired, ready));
            t += 2;
        }
        last.unwrap_or_else(|| apply(spec, st, secs(from), desired, ready))
    }

    // A new revision without metrics stays at its initial scale while
    // activating, then becomes active once ready.
    #[test]
    fn new_revision_waits_for_metrics() {
        let s = spec();
        let mut st = ApplierState::new(&s, secs(0));
        let a = apply(&s, &mut st, secs(0), SCALE_UNKNOWN, 0);
        assert_eq!(
            (a.scale, a.want, a.activity),
            (1, SCALE_UNKNOWN, Activity::Activating)
        );
        let a = apply(&s, &mut st, secs(2), SCALE_UNKNOWN, 1);
        assert_eq!((a.scale, a.activity), (1, Activity::Active));
    }

    // Scale to zero: the decider says 0 from t=100 (the stable window has
    // gone idle). The revision was active since t=2, so at t=100 it goes
    // inactive at once, keeps its instance through the 30 s grace period,
    // and is scaled to 0 at t=130.
    #[test]
    fn scale_to_zero_after_grace_period() {
        let s = spec();
        let mut st = ApplierState::new(&s, secs(0));
        run(&s, &mut st, 0, 98, 1, 1);
        assert_eq!(st.activity(), Activity::Active);
        let a = apply(&s, &mut st, secs(100), 0, 1);
        assert_eq!((a.scale, a.want, a.activity), (1, 0, Activity::Inactive));
        let a = run(&s, &mut st, 102, 128, 0, 1);
        assert_eq!(a.scale, 1, "grace period not over at 128");
        let a = apply(&s, &mut st, secs(130), 0, 1);
        assert_eq!((a.scale, a.changed), (0, true));
    }

    // Active for less than a stable window: held at 1 until the window is
    // over (Knative's "sleeping additionally before can scale to 0").
    #[test]
    fn recently_active_keeps_one_for_the_stable_window() {
        let s = spec();
        let mut st = ApplierState::new(&s, secs(0));
        let a = apply(&s, &mut st, secs(0), 3, 3);
        assert_eq!((a.scale, a.activity), (3, Activity::Active));
        let a = run(&s, &mut st, 2, 58, 0, 3);
        assert_eq!((a.scale, a.activity), (1, Activity::Active));
        let a = apply(&s, &mut st, secs(60), 0, 1);
        assert_eq!((a.scale, a.activity), (1, Activity::Inactive));
        let a = apply(&s, &mut st, secs(90), 0, 1);
        assert_eq!(a.scale, 0);
    }

    // The pod retention period, when longer than the grace period, is the
    // wait; an unreachable revision ignores it.
    #[test]
    fn pod_retention_period() {
        let mut s = spec();
        s.scale_to_zero_pod_retention_period = secs(50);
        let mut st = ApplierState::new(&s, secs(0));
        run(&s, &mut st, 0, 60, 1, 1);
        apply(&s, &mut st, secs(62), 0, 1);
        assert_eq!(apply(&s, &mut st, secs(110), 0, 1).scale, 1);
        assert_eq!(apply(&s, &mut st, secs(112), 0, 1).scale, 0);
        s.reachable = false;
        let mut st = ApplierState::new(&s, secs(0));
        run(&s, &mut st, 0, 60, 1, 1);
        apply(&s, &mut st, secs(62), 0, 1);
        assert_eq!(apply(&s, &mut st, secs(92), 0, 1).scale, 0);
    }

    // From zero: any recommendation above 0 is applied at once and the
    // revision is activating until an instance is ready.
    #[test]
    fn scale_from_zero() {
        let s = spec();
        let mut st = ApplierState::new(&s, secs(0));
        run(&s, &mut st, 0, 60, 1, 1);
        run(&s, &mut st, 62, 92, 0, 1);
        assert_eq!(st.scale(), 0);
        let a = apply(&s, &mut st, secs(200), 2, 0);
        assert_eq!(
            (a.scale, a.changed, a.activity),
            (2, true, Activity::Activating)
        );
        let a = apply(&s, &mut st, secs(202), 2, 2);
        assert_eq!(a.activity, Activity::Active);
    }

    // min-scale and max-scale bound every recommendation; min-scale keeps
    // a revision from going to zero.
    #[test]
    fn min_and_max_scale() {
        let mut s = spec();
        s.min_scale = 2;
        s.max_scale = 5;
        let mut st = ApplierState::new(&s, secs(0));
        assert_eq!(apply(&s, &mut st, secs(0), SCALE_UNKNOWN, 0).scale, 2);
        assert_eq!(apply(&s, &mut st, secs(2), 9, 2).scale, 5);
        assert_eq!(apply(&s, &mut st, secs(4), 1, 5).scale, 2);
        let a = run(&s, &mut st, 6, 200, 0, 2);
        assert_eq!((a.scale, a.activity), (2, Activity::Active));
    }

    // initial-scale 3 holds until 3 instances were ready once, then the
    // recommendation (1) applies.
    #[test]
    fn initial_scale_until_reached() {
        let mut s = spec();
        s.initial_scale = 3;
        let mut st = ApplierState::new(&s, secs(0));
        assert_eq!(st.scale(), 3);
        let a = apply(&s, &mut st, secs(2), 1, 1);
        assert_eq!(
            (a.scale, a.activity, a.initialized),
            (3, Activity::Activating, false)
        );
        let a = apply(&s, &mut st, secs(4), 1, 3);
        assert_eq!(
            (a.scale, a.activity, a.initialized),
            (3, Activity::Active, true)
        );
        assert_eq!(apply(&s, &mut st, secs(6), 1, 3).scale, 1);
    }

    // enable-scale-to-zero off: 0 becomes 1.
    #[test]
    fn scale_to_zero_disabled() {
        let mut s = spec();
        s.enable_scale_to_zero = false;
        let mut st = ApplierState::new(&s, secs(0));
        let a = run(&s, &mut st, 0, 300, 0, 1);
        assert_eq!(a.scale, 1);
    }

    // Stuck activating past the progress deadline (600 s + 30 s): zero.
    #[test]
    fn activation_timeout() {
        let s = spec();
        let mut st = ApplierState::new(&s, secs(0));
        let a = run(&s, &mut st, 0, 630, 0, 0);
        assert_eq!(a.scale, 1);
        let a = apply(&s, &mut st, secs(632), 0, 0);
        assert_eq!((a.scale, a.activity), (0, Activity::Inactive));
    }
}
