//! Weighted round robin over a precomputed schedule.
//!
//! The schedule is built by stride scheduling: endpoint i's k-th turn falls at
//! virtual time (2k+1)/(2·w_i), and turns are laid out in time order. That
//! interleaves endpoints (3:1 gives A A B A, not A A A B) the way smooth
//! weighted round robin does, but in O(T log n) rather than O(T·n). Picking
//! is one atomic increment, so concurrent requests never contend on a lock.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use super::gcd;

/// Longest schedule built; heavier weight sets are scaled down to fit,
/// which keeps the proportions to within one turn in `MAX_SCHEDULE`.
pub(super) const MAX_SCHEDULE: u64 = 65_536;

pub(super) struct RoundRobin {
    len: usize,
    /// Endpoint indices in turn order; empty means equal weights, where the
    /// counter itself is the rotation.
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn new(weights: &[u32]) -> Self {
        // A random start keeps a fleet of proxies that were configured at the
        // same moment from all sending their first request to endpoint 0.
        let start = fastrand::usize(..);
        RoundRobin {
            len: weights.len(),
            schedule: schedule(weights),
            next: AtomicUsize::new(start),
        }
    }

    pub(super) fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        if self.schedule.is_empty() {
            n % self.len.max(1)
        } else {
            self.schedule[n % self.schedule.len()] as usize
        }
    }

    #[cfg(test)]
    pub(super) fn schedule_len(&self) -> usize {
        if self.schedule.is_empty() {
            self.len
        } else {
            self.schedule.len()
        }
    }
}

/// One endpoint's next turn, at virtual time `num / den`.
#[derive(PartialEq, Eq)]
struct Turn {
    num: u64,
    den: u64,
    index: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        let lhs = u128::from(self.num) * u128::from(other.den);
        let rhs = u128::from(other.num) * u128::from(self.den);
        lhs.cmp(&rhs).then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The turn order for `weights`, or empty when a plain rotation is exact.
pub(super) fn schedule(weights: &[u32]) -> Vec<u32> {
    let mut reduced = reduce(weights.iter().map(|&w| u64::from(w.max(1))).collect());
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        // Every endpoint keeps at least one turn, so with more endpoints than
        // MAX_SCHEDULE the schedule is as long as the endpoint list.
        let scaled = reduced
            .iter()
            .map(|&w| (u128::from(w) * u128::from(MAX_SCHEDULE) / u128::from(total)) as u64)
            .map(|w| w.max(1))
            .collect();
        reduced = reduce(scaled);
    }
    if reduced.iter().all(|&w| w == 1) {
        return Vec::new();
    }
    let total: u64 = reduced.iter().sum();
    let mut heap: BinaryHeap<Reverse<Turn>> = reduced
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Reverse(Turn {
                num: 1,
                den: 2 * w,
                index: i as u32,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let Some(Reverse(turn)) = heap.pop() else {
            break;
        };
        out.push(turn.index);
        heap.push(Reverse(Turn {
            num: turn.num + 2,
            ..turn
        }));
    }
    out
}

fn reduce(weights: Vec<u64>) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    weights.into_iter().map(|w| w / g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_to_one_interleaves() {
        assert_eq!(schedule(&[3, 1]), [0, 0, 1, 0]);
    }

    #[test]
    fn weights_are_reduced_by_their_gcd() {
        assert_eq!(schedule(&[300, 100]), [0, 0, 1, 0]);
        assert!(schedule(&[7, 7, 7]).is_empty());
    }

    #[test]
    fn heavy_weights_are_scaled_to_the_cap() {
        let s = schedule(&[u32::MAX, u32::MAX / 2, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3, "len {}", s.len());
        let count = |i: u32| s.iter().filter(|&&x| x == i).count() as f64;
        assert!((count(0) / count(1) - 2.0).abs() < 0.01);
        assert_eq!(count(2), 1.0, "the light endpoint keeps one turn");
    }
}
