//! Least request by the power of `choice_count` choices: sample that many
//! endpoints (by weight, with replacement, as Envoy does) and keep the one
//! with the fewest requests in flight. Sampling rather than scanning keeps a
//! pick O(choices) and avoids every proxy herding onto the same idle
//! endpoint.

use super::random::WeightedRandom;

pub(super) const DEFAULT_CHOICE_COUNT: u32 = 2;

pub(super) struct LeastRequest {
    sampler: WeightedRandom,
    choices: u32,
}

impl LeastRequest {
    /// `choices` of 0 is treated as 1 (a plain weighted random pick).
    pub(super) fn new(weights: &[u32], choices: u32) -> Self {
        LeastRequest {
            sampler: WeightedRandom::new(weights),
            choices: choices.max(1),
        }
    }

    pub(super) fn pick(&self, active: &dyn Fn(usize) -> u32) -> usize {
        let mut best = self.sampler.pick();
        if self.choices == 1 {
            return best;
        }
        let mut best_load = active(best);
        for _ in 1..self.choices {
            let candidate = self.sampler.pick();
            let load = active(candidate);
            // Strictly less: on a tie the earlier sample stays.
            if load < best_load {
                best = candidate;
                best_load = load;
            }
        }
        best
    }
}
