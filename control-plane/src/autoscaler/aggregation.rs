//! Windowed aggregation of per-second metric samples, with Knative's exact
//! semantics (`pkg/autoscaler/aggregation`):
//!
//! - [`TimedBuckets`]: a ring of 1-second buckets; the window average divides
//!   by the number of seconds since the first write when the window is not yet
//!   full (so a revision's first second of load is not diluted by 59 empty
//!   seconds), and by the seconds up to the last write when reports stopped
//!   arriving (missing trailing seconds are not counted as zeros). Gaps between
//!   writes count as zeros. The result is rounded to 6 digits, as Knative does,
//!   so decisions do not flip on float noise.
//! - [`WeightedBuckets`]: the `weighted-exponential` algorithm: the same ring,
//!   averaged with exponentially decaying weights (newest heaviest).
//! - [`MaxTimeWindow`]: the running maximum over a time window, used for
//!   `scale-down-delay` (a descending-minima deque, O(1) amortised).
//!
//! Time is whole seconds since the control-plane clock's origin: the bucket
//! granularity is one second (Knative's `BucketSize`), so a sample at 12.7 s
//! lands in the bucket of second 12.

use std::collections::VecDeque;

/// Digits kept by [`TimedBuckets::window_average`] (Knative's `precision`).
const PRECISION_DIGITS: i32 = 6;
/// The weighted average's smallest decay multiplier (Knative's `minExponent`).
const MIN_EXPONENT: f64 = 0.2;
/// The weights of a weighted window add up to at least this much.
const WEIGHT_PRECISION: f64 = 0.9999;

fn round_to_digits(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// Per-second buckets over a window, averaged linearly.
///
/// The ring holds one second more than the window: the second whose
/// reports are still arriving, next to a whole window of complete ones, so
/// a window can be read as of the last complete second
/// ([`window_average`](Self::window_average) at `now - 1`) while this
/// second's reports land.
#[derive(Debug, Clone)]
pub struct TimedBuckets {
    /// Ring indexed by `second % (window + 1)`.
    buckets: Vec<f64>,
    /// The window length in seconds (at least one).
    window: i64,
    /// Second of the first write since the buckets were last empty for a
    /// whole window; `None` before any write.
    first_write: Option<i64>,
    /// Second of the newest write; `None` before any write.
    last_write: Option<i64>,
    /// Sum of every bucket in the ring. Buckets of seconds before
    /// `first_write` are zero, so this is the sum over
    /// `first_write..=last_write` within the ring.
    total: f64,
}

impl TimedBuckets {
    /// A window of `window_secs` one-second buckets (at least one).
    pub fn new(window_secs: u64) -> Self {
        let window = i64::try_from(window_secs.max(1)).unwrap_or(i64::MAX / 2);
        TimedBuckets {
            buckets: vec![0.0; usize::try_from(window + 1).unwrap_or(usize::MAX)],
            window,
            first_write: None,
            last_write: None,
            total: 0.0,
        }
    }

    fn ring_len(&self) -> i64 {
        self.window + 1
    }

    fn idx(&self, sec: i64) -> usize {
        // rem_euclid keeps the index in range even for negative seconds.
        usize::try_from(sec.rem_euclid(self.ring_len())).unwrap_or(0)
    }

    /// The window length in seconds.
    pub fn window_secs(&self) -> u64 {
        u64::try_from(self.window).unwrap_or(0)
    }

    /// No write within the window ending at second `at` (more than a
    /// window since the last write, or every write is newer than `at`):
    /// Knative's "no data" condition.
    pub fn is_empty(&self, at: i64) -> bool {
        match (self.last_write, self.first_write) {
            (Some(lw), Some(fw)) => at - lw > self.window || fw > at,
            _ => true,
        }
    }

    /// Adds `value` to the bucket of second `now`. Several writes to one
    /// second add up (several pods reporting for the same second). A write
    /// older than a window before the newest one is ignored; a write after a
    /// whole idle window restarts the partial-window accounting.
    pub fn record(&mut self, now: i64, value: f64) {
        let n = self.window;
        if self.last_write != Some(now) {
            // "Within a window of the newest write" (Go's zero time for the
            // unset case is infinitely old, so a first write always passes).
            let within = match self.last_write {
                None => true,
                Some(lw) => now + n > lw,
            };
            if !within {
                return;
            }
            if self.first_write.is_none_or(|fw| fw > now) {
                self.first_write = Some(now);
            }
            let newer = self.last_write.is_none_or(|lw| now > lw);
            if newer {
                match self.last_write {
                    Some(lw) if now - lw < n => {
                        // Zero the seconds skipped since the last write: they
                        // hold data from a ring ago.
                        for s in (lw + 1)..=now {
                            let i = self.idx(s);
                            self.total -= self.buckets[i];
                            self.buckets[i] = 0.0;
                        }
                    }
                    _ => {
                        // A whole window without writes: start over.
                        self.first_write = Some(now);
                        self.buckets.iter_mut().for_each(|b| *b = 0.0);
                        self.total = 0.0;
                    }
                }
                self.last_write = Some(now);
            }
        }
        let i = self.idx(now);
        self.buckets[i] += value;
        self.total += value;
    }

    /// Sum of the buckets of seconds `from..=to` (empty when `to < from`).
    fn sum(&self, from: i64, to: i64) -> f64 {
        (from..=to).map(|s| self.buckets[self.idx(s)]).sum()
    }

    /// The average over the window ending at second `at` (`at - window`
    /// exclusive to `at` inclusive), reading only buckets up to `at`: a
    /// window not yet full is averaged over the seconds since the first
    /// write, seconds after the last write are left out, gaps count as
    /// zeros; 0 without a write in the window. `at` may be the newest
    /// write's second or one before it (the last complete second while the
    /// newest one fills), or any later second.
    pub fn window_average(&self, at: i64) -> f64 {
        let (Some(lw), Some(fw)) = (self.last_write, self.first_write) else {
            return 0.0;
        };
        let oldest_held = lw - self.window;
        let hi = lw.min(at);
        let lo = fw.max(at - self.window + 1).max(oldest_held);
        if hi < lo {
            return 0.0;
        }
        // `total` covers fw..=lw (within the ring); take off what lies
        // outside lo..=hi.
        let sum = self.total - self.sum(fw.max(oldest_held), lo - 1) - self.sum(hi + 1, lw);
        let num = (hi - lo + 1) as f64;
        round_to_digits(sum / num, PRECISION_DIGITS)
    }

    /// Changes the window length, keeping the newest buckets that fit
    /// (Knative's `ResizeWindow`): used when a revision's window changes.
    pub fn resize(&mut self, window_secs: u64, now: i64) {
        let window = i64::try_from(window_secs.max(1)).unwrap_or(i64::MAX / 2);
        if window == self.window {
            return;
        }
        let mut fresh = TimedBuckets::new(window_secs);
        fresh.last_write = self.last_write;
        match self.last_write {
            Some(lw) if now - lw <= self.window => {
                // The old window's seconds (not the extra one before it),
                // as many as the new ring holds.
                let keep = fresh.ring_len().min(self.window);
                for s in (lw - keep + 1)..=lw {
                    let v = self.buckets[self.idx(s)];
                    let ni = fresh.idx(s);
                    fresh.buckets[ni] = v;
                    fresh.total += v;
                }
                // The earliest second that may hold data, as Knative resets it.
                fresh.first_write = Some(lw - (self.window - 1));
            }
            // No data within the old window: nothing worth keeping.
            _ => fresh.last_write = None,
        }
        *self = fresh;
    }
}

/// Per-second buckets averaged with exponentially decaying weights
/// (`metric-aggregation-algorithm: weighted-exponential`).
#[derive(Debug, Clone)]
pub struct WeightedBuckets {
    inner: TimedBuckets,
    smoothing: f64,
}

/// Knative's `computeSmoothingCoeff`: the decay that gives the window's
/// weights a sum of at least 0.9999, but never below 0.2.
pub fn smoothing_coeff(num_buckets: f64) -> f64 {
    (1.0 - (1.0 - WEIGHT_PRECISION).powf(1.0 / num_buckets)).max(MIN_EXPONENT)
}

impl WeightedBuckets {
    pub fn new(window_secs: u64) -> Self {
        let inner = TimedBuckets::new(window_secs);
        let smoothing = smoothing_coeff(inner.window as f64);
        WeightedBuckets { inner, smoothing }
    }

    pub fn record(&mut self, now: i64, value: f64) {
        self.inner.record(now, value);
    }

    pub fn is_empty(&self, now: i64) -> bool {
        self.inner.is_empty(now)
    }

    /// Newest bucket (up to second `at`) weighted `m`, the one before
    /// `m(1-m)`, …; seconds from the last write to `at` count as zeros.
    pub fn window_average(&self, at: i64) -> f64 {
        if self.inner.is_empty(at) {
            return 0.0;
        }
        let Some(lw) = self.inner.last_write else {
            return 0.0;
        };
        let newest = lw.min(at);
        let oldest_held = lw - self.inner.window;
        let zeros = at - newest;
        let num_b = self.inner.window - zeros;
        let mut multiplier = self.smoothing * (1.0 - self.smoothing).powf(zeros as f64);
        let mut ret = 0.0;
        for i in 0..num_b.max(0) {
            let s = newest - i;
            if s < oldest_held {
                break;
            }
            ret += self.inner.buckets[self.inner.idx(s)] * multiplier;
            multiplier *= 1.0 - self.smoothing;
        }
        ret
    }

    pub fn resize(&mut self, window_secs: u64, now: i64) {
        self.inner.resize(window_secs, now);
        self.smoothing = smoothing_coeff(self.inner.window as f64);
    }

    pub fn smoothing(&self) -> f64 {
        self.smoothing
    }
}

/// Either averaging algorithm behind one type, chosen per revision.
#[derive(Debug, Clone)]
pub enum WindowAverager {
    Linear(TimedBuckets),
    Weighted(WeightedBuckets),
}

impl WindowAverager {
    pub fn new(window_secs: u64, weighted: bool) -> Self {
        if weighted {
            WindowAverager::Weighted(WeightedBuckets::new(window_secs))
        } else {
            WindowAverager::Linear(TimedBuckets::new(window_secs))
        }
    }

    pub fn record(&mut self, now: i64, value: f64) {
        match self {
            WindowAverager::Linear(b) => b.record(now, value),
            WindowAverager::Weighted(b) => b.record(now, value),
        }
    }

    pub fn window_average(&self, now: i64) -> f64 {
        match self {
            WindowAverager::Linear(b) => b.window_average(now),
            WindowAverager::Weighted(b) => b.window_average(now),
        }
    }

    pub fn is_empty(&self, now: i64) -> bool {
        match self {
            WindowAverager::Linear(b) => b.is_empty(now),
            WindowAverager::Weighted(b) => b.is_empty(now),
        }
    }

    pub fn resize(&mut self, window_secs: u64, now: i64) {
        match self {
            WindowAverager::Linear(b) => b.resize(window_secs, now),
            WindowAverager::Weighted(b) => b.resize(window_secs, now),
        }
    }

    pub fn window_secs(&self) -> u64 {
        match self {
            WindowAverager::Linear(b) => b.window_secs(),
            WindowAverager::Weighted(b) => b.inner.window_secs(),
        }
    }

    pub fn is_weighted(&self) -> bool {
        matches!(self, WindowAverager::Weighted(_))
    }
}

/// The maximum value recorded over the last `buckets` time slots (Knative's
/// `max.TimeWindow`): the scale-down delay keeps the largest recommendation
/// of the delay window.
#[derive(Debug, Clone)]
pub struct MaxTimeWindow {
    /// Slots the window spans: ceil(duration / granularity).
    size: i64,
    granularity_secs: i64,
    /// (slot, value), slots ascending and values strictly descending: a
    /// value smaller than a later one can never be the maximum again.
    maxima: VecDeque<(i64, i32)>,
}

impl MaxTimeWindow {
    /// A window of `duration_secs` in slots of `granularity_secs` (the
    /// decision tick, 2 s).
    pub fn new(duration_secs: u64, granularity_secs: u64) -> Self {
        let g = granularity_secs.max(1);
        let size = duration_secs.div_ceil(g).max(1);
        MaxTimeWindow {
            size: i64::try_from(size).unwrap_or(i64::MAX),
            granularity_secs: i64::try_from(g).unwrap_or(i64::MAX),
            maxima: VecDeque::new(),
        }
    }

    /// Records `value` for the slot of second `now`.
    pub fn record(&mut self, now: i64, mut value: i32) {
        let index = now.div_euclid(self.granularity_secs);
        while let Some(&(_, v)) = self.maxima.back() {
            if value < v {
                break;
            }
            self.maxima.pop_back();
        }
        while let Some(&(i, _)) = self.maxima.front() {
            if index - i < self.size {
                break;
            }
            self.maxima.pop_front();
        }
        // Two records in one slot: keep the larger.
        if let Some(&(i, v)) = self.maxima.back() {
            if i == index {
                value = value.max(v);
                self.maxima.pop_back();
            }
        }
        self.maxima.push_back((index, value));
    }

    /// The maximum over the window (0 before any record).
    pub fn current(&self) -> i32 {
        self.maxima.front().map_or(0, |&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Mirrors Knative's TestComputeDecayMultiplier.
    #[test]
    fn smoothing_coefficients() {
        assert_eq!(smoothing_coeff(100.0), MIN_EXPONENT);
        assert_eq!(smoothing_coeff(60.0), MIN_EXPONENT);
        assert!((smoothing_coeff(40.0) - 0.20567).abs() < 1e-4);
        assert!((smoothing_coeff(6.0) - 0.78456).abs() < 1e-4);
    }

    // Mirrors Knative's TestTimedFloat64BucketsWindowAverage step by step
    // (window 5 s, starting at second 100).
    #[test]
    fn linear_window_average_like_knative() {
        let now = 100;
        let mut b = TimedBuckets::new(5);
        assert!(b.is_empty(now));
        // One write: averaged over one second, not five.
        b.record(now, 1.0);
        assert_eq!(b.window_average(now), 1.0);
        for i in 1..5 {
            b.record(now + i, (i + 1) as f64);
        }
        assert_eq!(b.window_average(now + 4), 15.0 / 5.0);
        // A short hole: seconds 105 and 106 drop buckets 100 and 101, and the
        // average is over the 3 seconds that remain.
        assert_eq!(b.window_average(now + 6), (15.0 - 1.0 - 2.0) / 3.0);
        // A hole as long as the window: nothing.
        assert_eq!(b.window_average(now + 10), 0.0);
        // A write after the hole zeroes the skipped seconds.
        b.record(now + 6, 91.0);
        assert_eq!(b.window_average(now + 6), (15.0 - 1.0 - 2.0 + 91.0) / 5.0);
        // Far later: start over.
        let now = now + 60;
        b.record(now, 1984.0);
        assert_eq!(b.window_average(now), 1984.0);
        // An earlier second within the window moves the first write back.
        b.record(now - 3, 4.0);
        assert_eq!(b.window_average(now), (4.0 + 1984.0) / 4.0);
        let now = now + 1;
        b.record(now, 5.0);
        assert_eq!(b.window_average(now), (4.0 + 1984.0 + 5.0) / 5.0);
        b.record(now - 3, 10.0);
        assert_eq!(b.window_average(now), (4.0 + 10.0 + 1984.0 + 5.0) / 5.0);
        // Too old (a window or more before the newest write): ignored.
        b.record(now - 6, 10.0);
        b.record(now - 5, 10.0);
        assert_eq!(b.window_average(now), (4.0 + 10.0 + 1984.0 + 5.0) / 5.0);
        // Exactly a window without writes clears everything.
        b.record(now + 5, 10.0);
        assert_eq!(b.window_average(now + 5), 10.0);
    }

    // Mirrors Knative's TestTimedFloat64BucketsSimple/ManyReps: several
    // reports for one second add up.
    #[test]
    fn same_second_reports_add_up() {
        let mut b = TimedBuckets::new(60);
        for p in 0..5 {
            for t in 0..5 {
                b.record(10 + p, (p + t) as f64);
            }
        }
        // Buckets 10, 15, 20, 25, 30 over 5 seconds.
        assert_eq!(b.window_average(14), 100.0 / 5.0);
    }

    // Mirrors Knative's TestTimedFloat64BucketsWeightedAverage.
    #[test]
    fn weighted_window_average_like_knative() {
        let now = 1000;
        let mut b = WeightedBuckets::new(5);
        let m = b.smoothing();
        b.record(now, 2.0);
        let mut want = 2.0 * m;
        assert_eq!(b.window_average(now), want);
        want *= 1.0 - m;
        assert_eq!(b.window_average(now + 1), want);
        b.record(now + 1, 2.0);
        want += 2.0 * m;
        assert_eq!(b.window_average(now + 1), want);
        for i in 0..5 {
            b.record(now + 2 + i, (i + 2) as f64);
        }
        let want = 6.0 * m
            + 5.0 * m * (1.0 - m)
            + 4.0 * m * (1.0 - m).powi(2)
            + 3.0 * m * (1.0 - m).powi(3)
            + 2.0 * m * (1.0 - m).powi(4);
        assert!((b.window_average(now + 6) - want).abs() < 1e-12);
        assert_eq!(b.window_average(now + 16), 0.0);
    }

    #[test]
    fn resize_keeps_newest_buckets() {
        let mut b = TimedBuckets::new(10);
        for s in 0..10 {
            b.record(s, 1.0);
        }
        b.resize(5, 9);
        assert_eq!(b.window_secs(), 5);
        assert_eq!(b.window_average(9), 1.0);
        // Growing: the first write moves back to the oldest second the old
        // ring could hold, so the average stays over those 5 seconds.
        b.resize(20, 9);
        assert_eq!(b.window_average(9), 1.0);
    }

    // Mirrors Knative's max window tests: the maximum of the last `size`
    // slots, and two values in one slot keep the larger.
    #[test]
    fn max_time_window() {
        let mut w = MaxTimeWindow::new(10, 2); // 5 slots of 2 s
        w.record(0, 5);
        assert_eq!(w.current(), 5);
        w.record(2, 3);
        assert_eq!(w.current(), 5);
        w.record(3, 4); // same slot as second 2
        assert_eq!(w.current(), 5);
        w.record(8, 1); // slot 4: slot 0 still inside
        assert_eq!(w.current(), 5);
        w.record(10, 1); // slot 5: slot 0 falls out
        assert_eq!(w.current(), 4);
        w.record(12, 0); // slot 6: slot 1 falls out
        assert_eq!(w.current(), 1);
        w.record(14, 9);
        assert_eq!(w.current(), 9);
    }
}
