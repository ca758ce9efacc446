//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Envoy's
//! `MAGLEV`: a lookup table of prime size filled by each endpoint's own
//! permutation of the slots, taking turns. Weights follow Envoy: an endpoint
//! takes a turn in round `r` only while `r · weight >= turns_taken ·
//! max_weight`, so turns are proportional to weight.

use xxhash_rust::xxh64::xxh64;

use super::LbEndpoint;

pub(super) const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// Envoy's upper bound on `table_size`.
pub(super) const MAX_TABLE_SIZE: u64 = 5_000_011;

pub(super) struct Maglev {
    table: Vec<u32>,
}

struct Builder {
    index: u32,
    offset: u64,
    skip: u64,
    next: u64,
    weight: u64,
    target: u64,
}

impl Maglev {
    /// `table_size` is clamped to `2..=MAX_TABLE_SIZE` and rounded up to a
    /// prime: with a composite size a permutation may not visit every slot
    /// and the fill loop would never end.
    pub(super) fn new(endpoints: &[LbEndpoint<'_>], table_size: u64) -> Self {
        let m = next_prime(table_size.clamp(2, MAX_TABLE_SIZE));
        if endpoints.is_empty() {
            return Maglev { table: Vec::new() };
        }
        // Visit endpoints in key order so the table does not depend on the
        // order endpoints were listed in.
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        order.sort_by(|&a, &b| endpoints[a].key.cmp(endpoints[b].key));
        let mut builders: Vec<Builder> = order
            .iter()
            .map(|&i| {
                let key = endpoints[i].key.as_bytes();
                Builder {
                    index: i as u32,
                    offset: xxh64(key, 0) % m,
                    skip: xxh64(key, 1) % (m - 1) + 1,
                    next: 0,
                    weight: u64::from(endpoints[i].effective_weight()),
                    target: 0,
                }
            })
            .collect();
        let max_weight = builders.iter().map(|b| b.weight).max().unwrap_or(1);

        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut round = 1u64;
        while filled < m {
            for b in builders.iter_mut() {
                if filled == m {
                    break;
                }
                if round * b.weight < b.target {
                    continue;
                }
                b.target += max_weight;
                let mut slot = (b.offset + b.skip * b.next) % m;
                while table[slot as usize] != EMPTY {
                    b.next += 1;
                    slot = (b.offset + b.skip * (b.next % m)) % m;
                }
                table[slot as usize] = b.index;
                b.next += 1;
                filled += 1;
            }
            round += 1;
        }
        Maglev { table }
    }

    pub(super) fn pick(&self, hash: u64) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    #[cfg(test)]
    pub(super) fn table(&self) -> &[u32] {
        &self.table
    }
}

fn next_prime(n: u64) -> u64 {
    (n.max(2)..).find(|&c| is_prime(c)).unwrap_or(n)
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(100), 101);
    }

    #[test]
    fn tiny_tables_fill() {
        let eps = [
            LbEndpoint {
                key: "a",
                weight: 1,
            },
            LbEndpoint {
                key: "b",
                weight: 1,
            },
            LbEndpoint {
                key: "c",
                weight: 1,
            },
        ];
        for size in [0, 1, 2, 3, 4, 7] {
            let m = Maglev::new(&eps, size);
            assert!(m.table().iter().all(|&i| i < 3), "size {size}");
        }
    }
}
