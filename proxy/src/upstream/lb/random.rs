//! Weighted random choice, shared by the `random` and `least_request`
//! policies.

/// A cumulative weight table searched with a binary search; when every
/// weight is equal the table is skipped and the choice is uniform.
pub(super) struct WeightedRandom {
    len: usize,
    /// `cumulative[i]` is the sum of weights `0..=i`; empty when uniform.
    cumulative: Vec<u64>,
}

impl WeightedRandom {
    pub(super) fn new(weights: &[u32]) -> Self {
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let cumulative = if uniform {
            Vec::new()
        } else {
            weights
                .iter()
                .scan(0u64, |sum, &w| {
                    *sum += u64::from(w);
                    Some(*sum)
                })
                .collect()
        };
        WeightedRandom {
            len: weights.len(),
            cumulative,
        }
    }

    pub(super) fn pick(&self) -> usize {
        match self.cumulative.last() {
            None => fastrand::usize(..self.len.max(1)),
            Some(&total) => self.index_of(fastrand::u64(..total.max(1))),
        }
    }

    /// The endpoint owning point `x` of `0..total`.
    fn index_of(&self, x: u64) -> usize {
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.len.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_maps_to_its_owner() {
        let table = WeightedRandom::new(&[2, 1, 3]);
        let owners: Vec<usize> = (0..6).map(|x| table.index_of(x)).collect();
        assert_eq!(owners, [0, 0, 1, 2, 2, 2]);
    }

    #[test]
    fn equal_weights_skip_the_table() {
        let table = WeightedRandom::new(&[5, 5, 5]);
        assert!(table.cumulative.is_empty());
    }
}
