//! Traffic splits: `weighted_clusters` compiled to a cumulative weight table.

use super::table::Errors;
use crate::config::WeightedCluster;

#[derive(Debug, Clone)]
pub struct WeightedClusters {
    /// (cluster index, cumulative weight up to and including it); entries of
    /// weight 0 are left out so they can never be picked.
    table: Vec<(usize, u64)>,
    total: u64,
}

impl WeightedClusters {
    /// The chosen cluster index for a uniformly random `r`.
    pub fn pick(&self, r: u64) -> usize {
        let x = r % self.total.max(1);
        let i = self.table.partition_point(|&(_, end)| end <= x);
        // Build guarantees a non-empty table and `x < total`; the fallbacks
        // only keep this total.
        self.table
            .get(i)
            .or_else(|| self.table.last())
            .map_or(0, |&(cluster, _)| cluster)
    }

    /// Sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// (cluster index, weight) of every target with a non-zero weight.
    pub fn targets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let mut prev = 0;
        self.table.iter().map(move |&(cluster, end)| {
            let weight = end - prev;
            prev = end;
            (cluster, weight)
        })
    }

    /// The same split over the clusters' new indices (see
    /// `RouteTable::rebuild`); None when one of them is gone.
    pub(super) fn renumbered(
        &self,
        renumber: &dyn Fn(usize) -> Option<usize>,
    ) -> Option<WeightedClusters> {
        let table = self
            .table
            .iter()
            .map(|&(cluster, end)| Some((renumber(cluster)?, end)))
            .collect::<Option<Vec<_>>>()?;
        Some(WeightedClusters {
            table,
            total: self.total,
        })
    }

    /// Compiles `clusters` at config path `p` (`...route.weighted_clusters`).
    pub(super) fn build(
        clusters: &[WeightedCluster],
        p: &str,
        cluster_index: &dyn Fn(&str) -> Option<usize>,
        errs: &mut Errors,
    ) -> Option<WeightedClusters> {
        if clusters.is_empty() {
            errs.push(p, "at least one cluster is required");
            return None;
        }
        let mut table = Vec::with_capacity(clusters.len());
        let mut total = 0u64;
        let mut ok = true;
        for (i, wc) in clusters.iter().enumerate() {
            let Some(index) = cluster_index(&wc.name) else {
                errs.push(
                    format!("{p}[{i}].name"),
                    format!("unknown cluster {:?}", wc.name),
                );
                ok = false;
                continue;
            };
            if wc.weight > 0 {
                total += u64::from(wc.weight);
                table.push((index, total));
            }
        }
        if clusters.iter().all(|wc| wc.weight == 0) {
            errs.push(p, "total weight must be greater than 0");
            return None;
        }
        ok.then_some(WeightedClusters { table, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wc(name: &str, weight: u32) -> WeightedCluster {
        WeightedCluster {
            name: name.to_string(),
            weight,
        }
    }

    fn index(name: &str) -> Option<usize> {
        ["a", "b", "c", "d"].iter().position(|&n| n == name)
    }

    fn build(clusters: &[WeightedCluster]) -> Result<WeightedClusters, Vec<String>> {
        let mut errs = Errors::default();
        WeightedClusters::build(clusters, "w", &index, &mut errs)
            .ok_or_else(|| errs.list.iter().map(|e| e.to_string()).collect())
    }

    fn sweep(w: &WeightedClusters) -> Vec<u64> {
        let mut counts = vec![0u64; 4];
        for r in 0..w.total_weight() {
            counts[w.pick(r)] += 1;
        }
        counts
    }

    #[test]
    fn picks_in_proportion() {
        let cases: [(&[WeightedCluster], [u64; 4]); 4] = [
            (&[wc("a", 1)], [1, 0, 0, 0]),
            (&[wc("a", 90), wc("b", 10)], [90, 10, 0, 0]),
            (
                &[wc("a", 1), wc("b", 2), wc("c", 3), wc("d", 4)],
                [1, 2, 3, 4],
            ),
            (
                &[wc("a", 0), wc("b", 5), wc("c", 0), wc("d", 5)],
                [0, 5, 0, 5],
            ),
        ];
        for (clusters, want) in cases {
            let Ok(w) = build(clusters) else {
                panic!("{clusters:?} rejected");
            };
            assert_eq!(sweep(&w), want, "{clusters:?}");
        }
    }

    #[test]
    fn pick_wraps_any_u64() {
        let Ok(w) = build(&[wc("a", 1), wc("b", 3)]) else {
            panic!("rejected");
        };
        assert_eq!(w.pick(4), 0);
        assert_eq!(w.pick(5), 1);
        assert_eq!(w.pick(u64::MAX), 1, "u64::MAX % 4 == 3");
        assert_eq!(w.targets().collect::<Vec<_>>(), [(0, 1), (1, 3)]);
    }

    #[test]
    fn same_cluster_twice_adds_up() {
        let Ok(w) = build(&[wc("a", 1), wc("b", 1), wc("a", 2)]) else {
            panic!("rejected");
        };
        assert_eq!(sweep(&w), [3, 1, 0, 0]);
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let Ok(w) = build(&[wc("a", u32::MAX), wc("b", u32::MAX)]) else {
            panic!("rejected");
        };
        assert_eq!(w.total_weight(), 2 * u64::from(u32::MAX));
        assert_eq!(w.pick(u64::from(u32::MAX) - 1), 0);
        assert_eq!(w.pick(u64::from(u32::MAX)), 1);
    }

    #[test]
    fn errors() {
        assert_eq!(
            build(&[]).err(),
            Some(vec!["w: at least one cluster is required".to_string()])
        );
        assert_eq!(
            build(&[wc("a", 0), wc("b", 0)]).err(),
            Some(vec!["w: total weight must be greater than 0".to_string()])
        );
        assert_eq!(
            build(&[wc("a", 1), wc("x", 1), wc("y", 0)]).err(),
            Some(vec![
                "w[1].name: unknown cluster \"x\"".to_string(),
                "w[2].name: unknown cluster \"y\"".to_string(),
            ])
        );
    }
}
