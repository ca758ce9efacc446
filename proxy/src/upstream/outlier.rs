//! Outlier detection (passive health), as Envoy's consecutive-5xx and
//! consecutive-gateway-failure detectors.
//!
//! The per-request part is two atomic counters per endpoint
//! ([`OutlierState::record`]); reaching a threshold returns a [`Triggers`]
//! and the cluster decides, under its membership lock, whether to eject
//! ([`may_eject`], [`OutlierState::eject`]). Everything that depends on time
//! takes `now` as an argument, so the arithmetic is tested exactly.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);

/// What a try's outcome tells outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// A response head arrived with this status.
    Status(u16),
    ConnectFailure,
    /// The upstream closed or reset before a response head.
    Reset,
    /// The try (per-try or route timeout) expired.
    Timeout,
}

impl TryOutcome {
    /// `(counts as 5xx, counts as a gateway failure)`. Local-origin failures
    /// count as both, as Envoy maps them to 503/504 when
    /// `split_external_local_origin_errors` is off.
    fn classify(self) -> (bool, bool) {
        match self {
            TryOutcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            TryOutcome::ConnectFailure | TryOutcome::Reset | TryOutcome::Timeout => (true, true),
        }
    }
}

/// A cluster's `outlier_detection`, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierConfig {
    pub fn from_config(c: &config::OutlierDetection) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: c.consecutive_5xx,
            consecutive_gateway_failure: c.consecutive_gateway_failure,
            enforcing_consecutive_5xx: c.enforcing_consecutive_5xx,
            enforcing_consecutive_gateway_failure: c.enforcing_consecutive_gateway_failure,
            interval: c.interval.map_or(DEFAULT_INTERVAL, |d| d.get()),
            base_ejection_time: c
                .base_ejection_time
                .map_or(DEFAULT_BASE_EJECTION, |d| d.get()),
            max_ejection_time: c
                .max_ejection_time
                .map_or(DEFAULT_MAX_EJECTION, |d| d.get()),
            max_ejection_percent: c.max_ejection_percent,
        }
    }

    /// Envoy: `base_ejection_time × times ejected`, capped at
    /// `max(max_ejection_time, base_ejection_time)`.
    pub fn ejection_time(&self, times_ejected: u32) -> Duration {
        let cap = self.max_ejection_time.max(self.base_ejection_time);
        self.base_ejection_time
            .checked_mul(times_ejected.max(1))
            .map_or(cap, |t| t.min(cap))
    }
}

/// Which detectors reached their threshold on one outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Triggers {
    pub consecutive_5xx: bool,
    pub gateway_failure: bool,
}

impl Triggers {
    pub fn any(self) -> bool {
        self.consecutive_5xx || self.gateway_failure
    }
}

/// One endpoint's passive-health state. Shared by the rebuilt cluster after
/// a reload (through the registry), so an ejected endpoint stays ejected.
#[derive(Default)]
pub struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Read on every host-set rebuild; the truth is `ejection`.
    ejected: AtomicBool,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Some while ejected.
    pub until: Option<Instant>,
    /// Drives the backoff; decays while the endpoint stays in.
    pub times_ejected: u32,
}

impl OutlierState {
    /// Counts one outcome. A success (status < 500) resets both counters; a
    /// 5xx that is not a gateway failure resets the gateway counter (Envoy).
    /// Only the write that *reaches* a threshold triggers, so concurrent
    /// failures past it do not trigger again.
    pub fn record(&self, outcome: TryOutcome, cfg: &OutlierConfig) -> Triggers {
        let (is_5xx, is_gateway) = outcome.classify();
        if !is_5xx {
            // Loads first: the common success path writes nothing, so the
            // counters' cache line is not bounced between workers.
            if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            return Triggers::default();
        }
        let mut t = Triggers::default();
        if is_gateway {
            let n = self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
            t.gateway_failure = n == cfg.consecutive_gateway_failure;
        } else if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        let n = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        t.consecutive_5xx = n == cfg.consecutive_5xx;
        t
    }

    /// After a detector fired (ejected or not), its count starts again, as
    /// Envoy's: the next ejection needs a new run of failures.
    pub fn reset(&self, t: Triggers) {
        if t.consecutive_5xx {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
        if t.gateway_failure {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
    }

    pub fn counters(&self) -> (u32, u32) {
        (
            self.consecutive_5xx.load(Ordering::Relaxed),
            self.consecutive_gateway.load(Ordering::Relaxed),
        )
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn ejection(&self) -> Ejection {
        self.ejection.lock().map(|e| *e).unwrap_or_default()
    }

    /// Ejects until `now + ejection_time(times + 1)`. False when already
    /// ejected.
    pub fn eject(&self, now: Instant, cfg: &OutlierConfig) -> bool {
        let Ok(mut e) = self.ejection.lock() else {
            return false;
        };
        if e.until.is_some() {
            return false;
        }
        e.times_ejected = e.times_ejected.saturating_add(1);
        e.until = Some(now + cfg.ejection_time(e.times_ejected));
        self.ejected.store(true, Ordering::Release);
        true
    }

    /// Returns the endpoint when its time is up. True when it came back.
    pub fn maybe_return(&self, now: Instant) -> bool {
        let Ok(mut e) = self.ejection.lock() else {
            return false;
        };
        match e.until {
            Some(until) if now >= until => {
                e.until = None;
                self.ejected.store(false, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// One interval passed with the endpoint in: the backoff shrinks by one
    /// ejection (Envoy).
    pub fn decay(&self) {
        if let Ok(mut e) = self.ejection.lock() {
            if e.until.is_none() && e.times_ejected > 0 {
                e.times_ejected -= 1;
            }
        }
    }

    pub fn until(&self) -> Option<Instant> {
        self.ejection.lock().ok().and_then(|e| e.until)
    }
}

/// Envoy's max-ejection-percent rule: one more ejection is allowed while
/// the ejected share stays at most `max_percent`, and the first ejection is
/// always allowed.
pub fn may_eject(ejected_now: usize, total: usize, max_percent: u32) -> bool {
    ejected_now == 0 || (ejected_now + 1) * 100 <= max_percent as usize * total
}

/// Whether an ejection fires under its enforcing percentage; `roll` is
/// uniform in `0..100`.
pub fn enforced(enforcing_percent: u32, roll: u32) -> bool {
    roll < enforcing_percent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 2,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            max_ejection_percent: 10,
        }
    }

    #[test]
    fn consecutive_5xx_triggers_once_at_the_threshold() {
        let s = OutlierState::default();
        let c = cfg();
        assert!(!s.record(TryOutcome::Status(500), &c).any());
        assert!(!s.record(TryOutcome::Status(500), &c).any());
        let t = s.record(TryOutcome::Status(500), &c);
        assert!(t.consecutive_5xx && !t.gateway_failure);
        // Past the threshold without a reset: no second trigger.
        assert!(!s.record(TryOutcome::Status(500), &c).consecutive_5xx);
    }

    #[test]
    fn success_resets_and_4xx_is_success() {
        let s = OutlierState::default();
        let c = cfg();
        s.record(TryOutcome::Status(503), &c);
        s.record(TryOutcome::Status(500), &c);
        assert_eq!(s.counters(), (2, 0), "a 500 resets the gateway run");
        s.record(TryOutcome::Status(404), &c);
        assert_eq!(s.counters(), (0, 0));
        s.record(TryOutcome::Status(499), &c);
        assert_eq!(s.counters(), (0, 0));
    }

    #[test]
    fn gateway_failures_and_local_errors() {
        let c = cfg();
        for first in [
            TryOutcome::Status(502),
            TryOutcome::Status(503),
            TryOutcome::Status(504),
            TryOutcome::ConnectFailure,
            TryOutcome::Reset,
            TryOutcome::Timeout,
        ] {
            let s = OutlierState::default();
            assert!(!s.record(first, &c).any());
            let t = s.record(TryOutcome::Timeout, &c);
            assert!(
                t.gateway_failure,
                "{first:?} then a timeout: 2 gateway failures"
            );
            assert_eq!(s.counters(), (2, 2));
            s.reset(t);
            assert_eq!(s.counters(), (2, 0));
        }
    }

    #[test]
    fn ejection_time_backs_off_and_is_capped() {
        let c = cfg();
        assert_eq!(c.ejection_time(1), Duration::from_secs(30));
        assert_eq!(c.ejection_time(2), Duration::from_secs(60));
        assert_eq!(c.ejection_time(3), Duration::from_secs(90));
        assert_eq!(c.ejection_time(4), Duration::from_secs(100), "capped");
        assert_eq!(c.ejection_time(u32::MAX), Duration::from_secs(100));
        let mut small_cap = c.clone();
        small_cap.max_ejection_time = Duration::from_secs(5);
        assert_eq!(
            small_cap.ejection_time(3),
            Duration::from_secs(30),
            "the cap is at least the base time"
        );
    }

    #[test]
    fn eject_return_and_decay() {
        let c = cfg();
        let s = OutlierState::default();
        let t0 = Instant::now();
        assert!(s.eject(t0, &c));
        assert!(!s.eject(t0, &c), "already ejected");
        assert!(s.is_ejected());
        assert_eq!(s.until(), Some(t0 + Duration::from_secs(30)));
        assert!(!s.maybe_return(t0 + Duration::from_millis(29_999)));
        s.decay();
        assert_eq!(s.ejection().times_ejected, 1, "no decay while ejected");
        assert!(s.maybe_return(t0 + Duration::from_secs(30)));
        assert!(!s.is_ejected());

        // Second ejection: twice as long.
        let t1 = t0 + Duration::from_secs(40);
        assert!(s.eject(t1, &c));
        assert_eq!(s.until(), Some(t1 + Duration::from_secs(60)));
        assert!(s.maybe_return(t1 + Duration::from_secs(60)));
        // Two intervals in: back to no history.
        s.decay();
        assert_eq!(s.ejection().times_ejected, 1);
        s.decay();
        s.decay();
        assert_eq!(s.ejection().times_ejected, 0);
        let t2 = t1 + Duration::from_secs(200);
        assert!(s.eject(t2, &c));
        assert_eq!(s.until(), Some(t2 + Duration::from_secs(30)));
    }

    #[test]
    fn max_ejection_percent() {
        // 10 % of 10 endpoints: one at a time.
        assert!(may_eject(0, 10, 10));
        assert!(!may_eject(1, 10, 10));
        // 10 % of 3: the first is always allowed, no second.
        assert!(may_eject(0, 3, 10));
        assert!(!may_eject(1, 3, 10));
        // 0 %: still the first.
        assert!(may_eject(0, 5, 0));
        assert!(!may_eject(1, 5, 0));
        // 50 % of 4: two.
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        // 100 %: all of them.
        assert!(may_eject(3, 4, 100));
    }

    #[test]
    fn enforcing_percentage() {
        assert!(!enforced(0, 0));
        assert!(enforced(100, 99));
        assert!(enforced(30, 29));
        assert!(!enforced(30, 30));
        let fired = (0..100).filter(|&r| enforced(30, r)).count();
        assert_eq!(fired, 30);
    }
}
