//! Per-revision request statistics with Knative's `Stat` semantics: the
//! time-weighted average concurrency over each second (requests in flight,
//! waiting ones included, integrated over the window and divided by its
//! length) and the count of requests that arrived in it; the same two for
//! "proxied" requests (held by activation).
//!
//! Knative keeps these under a mutex. Here the request path touches only
//! atomics: time is cut into 1-second windows from a fixed epoch, and an
//! event at time `t` in window `w` adds its contribution to the rest of
//! that window, `±(end(w) − t)`, to `w`'s area, plus ±1 to its net change
//! of concurrency. The reporter closes each window once it has ended:
//! `area(w) = concurrency(start of w) × 1s + Σ contributions`, and carries
//! the concurrency forward. Windows live in a small ring; the net changes
//! are summed exactly once whatever happens, so the carried concurrency
//! never drifts (an event that lands in a slot after its window was closed
//! only shifts its area into a later report).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(1);
const WINDOW_NS: u64 = 1_000_000_000;
/// Windows kept; the reporter must close a window before the ring comes
/// round to it again (it runs every second; this leaves it 6 s of slack).
const SLOTS: u64 = 8;

#[derive(Default)]
struct Slot {
    area_ns: AtomicI64,
    net: AtomicI64,
    count: AtomicU64,
    proxied_area_ns: AtomicI64,
    proxied_net: AtomicI64,
    proxied_count: AtomicU64,
}

/// What the reporter carries between windows; only it touches this.
#[derive(Default)]
struct Carry {
    /// The first window not yet reported.
    next: u64,
    concurrency: i64,
    proxied: i64,
}

/// One report: the averages over the windows closed since the last one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub average_concurrency: f64,
    pub average_proxied_concurrency: f64,
    pub request_count: f64,
    pub proxied_request_count: f64,
    /// What the averages cover (a multiple of a second).
    pub length: Duration,
    /// When the last covered window ended.
    pub end: Instant,
    /// Requests in flight at `end`.
    pub concurrency_at_end: i64,
}

pub struct RevisionStats {
    epoch: Instant,
    slots: [Slot; SLOTS as usize],
    carry: Mutex<Carry>,
}

/// Counts a request as in flight until dropped.
pub struct InFlight {
    stats: Arc<RevisionStats>,
    proxied: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.depart(Instant::now(), self.proxied);
    }
}

impl RevisionStats {
    /// Windows are `[epoch + k s, epoch + (k+1) s)`.
    pub fn new(epoch: Instant) -> Self {
        RevisionStats {
            epoch,
            slots: Default::default(),
            carry: Mutex::new(Carry::default()),
        }
    }

    /// The window of `at`, and the nanoseconds from `at` to its end.
    fn locate(&self, at: Instant) -> (u64, i64) {
        let ns = u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX / 2);
        let w = ns / WINDOW_NS;
        (w, ((w + 1) * WINDOW_NS - ns) as i64)
    }

    fn slot(&self, w: u64) -> &Slot {
        &self.slots[(w % SLOTS) as usize]
    }

    /// A request arrived at `at`. `proxied`: it was held by activation (it
    /// counts in both the total and the proxied figures, as in Knative).
    pub fn arrive(&self, at: Instant, proxied: bool) {
        let (w, rest) = self.locate(at);
        let s = self.slot(w);
        s.area_ns.fetch_add(rest, Ordering::Relaxed);
        s.net.fetch_add(1, Ordering::Relaxed);
        s.count.fetch_add(1, Ordering::Relaxed);
        if proxied {
            s.proxied_area_ns.fetch_add(rest, Ordering::Relaxed);
            s.proxied_net.fetch_add(1, Ordering::Relaxed);
            s.proxied_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request that arrived with the same `proxied` left at `at`.
    pub fn depart(&self, at: Instant, proxied: bool) {
        let (w, rest) = self.locate(at);
        let s = self.slot(w);
        s.area_ns.fetch_sub(rest, Ordering::Relaxed);
        s.net.fetch_sub(1, Ordering::Relaxed);
        if proxied {
            s.proxied_area_ns.fetch_sub(rest, Ordering::Relaxed);
            s.proxied_net.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a request from now until the guard drops.
    pub fn enter(self: &Arc<Self>, proxied: bool) -> InFlight {
        self.arrive(Instant::now(), proxied);
        InFlight {
            stats: self.clone(),
            proxied,
        }
    }

    /// Closes every window that ended at or before `now` and reports their
    /// averages; None when none ended since the last call. The reporter
    /// calls this a little after each second boundary (see `report`).
    pub fn collect(&self, now: Instant) -> Option<Report> {
        let (current, _) = self.locate(now);
        let Ok(mut carry) = self.carry.lock() else {
            return None;
        };
        if current <= carry.next {
            return None;
        }
        let windows = current - carry.next;
        let mut area: i128 = 0;
        let mut proxied_area: i128 = 0;
        let mut count = 0u64;
        let mut proxied_count = 0u64;
        if windows >= SLOTS {
            // The reporter fell behind by a whole ring: the slots mix
            // windows. Keep the counts and the concurrency exact and take
            // the concurrency now as the average.
            for s in &self.slots {
                carry.concurrency += s.net.swap(0, Ordering::Relaxed);
                carry.proxied += s.proxied_net.swap(0, Ordering::Relaxed);
                s.area_ns.swap(0, Ordering::Relaxed);
                s.proxied_area_ns.swap(0, Ordering::Relaxed);
                count += s.count.swap(0, Ordering::Relaxed);
                proxied_count += s.proxied_count.swap(0, Ordering::Relaxed);
            }
            area = i128::from(carry.concurrency.max(0)) * i128::from(windows * WINDOW_NS);
            proxied_area = i128::from(carry.proxied.max(0)) * i128::from(windows * WINDOW_NS);
        } else {
            for w in carry.next..current {
                let s = self.slot(w);
                area += i128::from(carry.concurrency) * i128::from(WINDOW_NS)
                    + i128::from(s.area_ns.swap(0, Ordering::Relaxed));
                proxied_area += i128::from(carry.proxied) * i128::from(WINDOW_NS)
                    + i128::from(s.proxied_area_ns.swap(0, Ordering::Relaxed));
                carry.concurrency += s.net.swap(0, Ordering::Relaxed);
                carry.proxied += s.proxied_net.swap(0, Ordering::Relaxed);
                count += s.count.swap(0, Ordering::Relaxed);
                proxied_count += s.proxied_count.swap(0, Ordering::Relaxed);
            }
        }
        carry.next = current;
        let span = (windows * WINDOW_NS) as f64;
        Some(Report {
            average_concurrency: (area as f64 / span).max(0.0),
            average_proxied_concurrency: (proxied_area as f64 / span).max(0.0),
            request_count: count as f64,
            proxied_request_count: proxied_count as f64,
            length: Duration::from_nanos(windows * WINDOW_NS),
            end: self.epoch + Duration::from_nanos(current * WINDOW_NS),
            concurrency_at_end: carry.concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn time_weighted_average_matches_hand_computation() {
        let t0 = Instant::now();
        let s = RevisionStats::new(t0);
        // Window 0: A in at 200ms, B in at 500ms, A out at 700ms; B stays.
        // Concurrency: 0 on [0,200), 1 on [200,500), 2 on [500,700), 1 on
        // [700,1000): 0.3 + 0.4 + 0.3 = 1.0.
        s.arrive(t0 + ms(200), false);
        s.arrive(t0 + ms(500), false);
        s.depart(t0 + ms(700), false);
        assert_eq!(s.collect(t0 + ms(999)), None, "window 0 has not ended");
        let r = s.collect(t0 + ms(1000)).expect("window 0 closed");
        assert!(close(r.average_concurrency, 1.0), "{r:?}");
        assert_eq!(r.request_count, 2.0);
        assert_eq!(r.concurrency_at_end, 1);
        assert_eq!(r.length, WINDOW);

        // Window 1: B (carried, 1) leaves at 1250ms; a proxied C arrives at
        // 1500ms and is still there. Total: 0.25 + 0.5 = 0.75; proxied 0.5.
        s.depart(t0 + ms(1250), false);
        s.arrive(t0 + ms(1500), true);
        let r = s.collect(t0 + ms(2010)).expect("window 1 closed");
        assert!(close(r.average_concurrency, 0.75), "{r:?}");
        assert!(close(r.average_proxied_concurrency, 0.5), "{r:?}");
        assert_eq!(r.request_count, 1.0);
        assert_eq!(r.proxied_request_count, 1.0);

        // Windows 2 and 3 reported together: C stays 1 throughout → 1.0,
        // over 2 s; no arrivals.
        let r = s.collect(t0 + ms(4000)).expect("windows 2-3 closed");
        assert!(close(r.average_concurrency, 1.0), "{r:?}");
        assert!(close(r.average_proxied_concurrency, 1.0), "{r:?}");
        assert_eq!(r.length, 2 * WINDOW);
        assert_eq!(r.request_count, 0.0);
    }

    #[test]
    fn two_half_second_requests_average_one() {
        // Knative's own example: 2 requests of 500ms each in a 1s window
        // give an average concurrency of 1.
        let t0 = Instant::now();
        let s = RevisionStats::new(t0);
        s.arrive(t0, false);
        s.depart(t0 + ms(500), false);
        s.arrive(t0 + ms(500), false);
        s.depart(t0 + ms(1000), false);
        let r = s.collect(t0 + ms(1000)).expect("closed");
        assert!(close(r.average_concurrency, 1.0), "{r:?}");
        assert_eq!(r.request_count, 2.0);
        // The departure at exactly 1000ms belongs to window 1 and leaves it
        // empty: 1 × 0 ns of window 1 at concurrency 1.
        let r = s.collect(t0 + ms(2000)).expect("closed");
        assert!(close(r.average_concurrency, 0.0), "{r:?}");
        assert_eq!(r.concurrency_at_end, 0);
    }

    #[test]
    fn a_reporter_a_whole_ring_behind_keeps_counts_and_concurrency() {
        let t0 = Instant::now();
        let s = RevisionStats::new(t0);
        s.arrive(t0 + ms(100), false);
        s.arrive(t0 + ms(3100), false);
        s.depart(t0 + ms(5100), false);
        let r = s.collect(t0 + ms(20_000)).expect("closed");
        assert_eq!(r.request_count, 2.0);
        assert_eq!(r.concurrency_at_end, 1);
        assert!(close(r.average_concurrency, 1.0), "{r:?}");
        // And the next window is exact again.
        let r = s.collect(t0 + ms(21_000)).expect("closed");
        assert!(close(r.average_concurrency, 1.0), "{r:?}");
    }

    #[test]
    fn in_flight_guard_departs_on_drop() {
        let t0 = Instant::now();
        let s = Arc::new(RevisionStats::new(t0));
        let g = s.enter(false);
        drop(g);
        let r = s.collect(Instant::now() + WINDOW).expect("closed");
        assert_eq!(r.concurrency_at_end, 0);
        assert_eq!(r.request_count, 1.0);
    }
}
