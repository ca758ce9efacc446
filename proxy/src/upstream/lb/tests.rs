//! Distribution tests through the public [`Balancer`] API.

use std::collections::HashSet;

use super::*;
use crate::config::{LeastRequestConfig, MaglevConfig, RingHashConfig};

fn cluster(policy: LbPolicy) -> Cluster {
    Cluster {
        name: "c".to_string(),
        lb_policy: policy,
        ..Default::default()
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect()
}

fn endpoints<'a>(keys: &'a [String], weights: &[u32]) -> Vec<LbEndpoint<'a>> {
    keys.iter()
        .zip(weights.iter().copied().chain(std::iter::repeat(1)))
        .map(|(k, w)| LbEndpoint { key: k, weight: w })
        .collect()
}

fn idle(_: usize) -> u32 {
    0
}

fn counts(b: &Balancer, picks: usize, mut hash: impl FnMut(usize) -> Option<u64>) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    for i in 0..picks {
        let Some(e) = b.pick(hash(i), &idle) else {
            panic!("no pick from {} endpoints", b.len());
        };
        counts[e] += 1;
    }
    counts
}

fn request_hash(i: usize) -> u64 {
    xxhash_rust::xxh64::xxh64(format!("request-{i}").as_bytes(), 0)
}

const ALL: [LbPolicy; 5] = [
    LbPolicy::RoundRobin,
    LbPolicy::LeastRequest,
    LbPolicy::Random,
    LbPolicy::RingHash,
    LbPolicy::Maglev,
];

#[test]
fn balancers_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Balancer>();
}

#[test]
fn no_endpoints_no_pick() {
    for policy in ALL {
        let b = Balancer::new(&cluster(policy), &[]);
        assert!(b.is_empty());
        assert_eq!(b.pick(None, &idle), None, "{policy:?}");
        assert_eq!(b.pick(Some(42), &idle), None, "{policy:?}");
    }
}

#[test]
fn single_endpoint_always_picked() {
    let k = keys(1);
    for policy in ALL {
        let b = Balancer::new(&cluster(policy), &endpoints(&k, &[5]));
        for h in [None, Some(0), Some(u64::MAX)] {
            assert_eq!(b.pick(h, &idle), Some(0), "{policy:?}");
        }
    }
}

#[test]
fn zero_weight_is_treated_as_one() {
    let k = keys(2);
    for policy in ALL {
        let b = Balancer::new(&cluster(policy), &endpoints(&k, &[0, 0]));
        fastrand::seed(7);
        let c = counts(&b, 10_000, |i| Some(request_hash(i)));
        assert!(c.iter().all(|&n| n > 3_000), "{policy:?}: {c:?}");
    }
}

// === round robin ===

#[test]
fn round_robin_equal_weights_rotate_strictly() {
    let k = keys(4);
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &endpoints(&k, &[]));
    let picks: Vec<usize> = (0..12).filter_map(|_| b.pick(None, &idle)).collect();
    let first = picks[0];
    for (n, &p) in picks.iter().enumerate() {
        assert_eq!(p, (first + n) % 4, "{picks:?}");
    }
}

#[test]
fn round_robin_exact_counts_over_a_schedule() {
    let k = keys(3);
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &endpoints(&k, &[5, 3, 2]));
    let Inner::RoundRobin(rr) = &b.inner else {
        panic!("not round robin");
    };
    assert_eq!(rr.schedule_len(), 10);
    // Any window of a whole number of schedules, wherever it starts.
    assert_eq!(counts(&b, 10, |_| None), [5, 3, 2]);
    assert_eq!(counts(&b, 1_000, |_| None), [500, 300, 200]);
}

#[test]
fn round_robin_three_to_one_interleaves() {
    let k = keys(2);
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &endpoints(&k, &[3, 1]));
    assert_eq!(counts(&b, 400, |_| None), [300, 100]);
    let picks: Vec<usize> = (0..8).filter_map(|_| b.pick(None, &idle)).collect();
    // Endpoint 1 never has two turns in a row and endpoint 0 never four.
    for w in picks.windows(2) {
        assert!(!(w[0] == 1 && w[1] == 1), "{picks:?}");
    }
    for w in picks.windows(4) {
        assert!(w.contains(&1), "{picks:?}");
    }
}

#[test]
fn round_robin_is_shared_across_threads() {
    let k = keys(3);
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &endpoints(&k, &[2, 1, 1]));
    let per_thread: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| counts(&b, 1_000, |_| None)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let total: Vec<usize> = (0..3)
        .map(|i| per_thread.iter().map(|c| c[i]).sum())
        .collect();
    assert_eq!(total, [2_000, 1_000, 1_000]);
}

// === random ===

fn assert_share(counts: &[usize], weights: &[u32], tolerance: f64) {
    let n: usize = counts.iter().sum();
    let w: u32 = weights.iter().sum();
    for (i, (&c, &wi)) in counts.iter().zip(weights).enumerate() {
        let expected = n as f64 * f64::from(wi) / f64::from(w);
        let err = (c as f64 - expected).abs() / expected;
        assert!(
            err <= tolerance,
            "endpoint {i}: {c} vs {expected:.0} ({counts:?})"
        );
    }
}

#[test]
fn random_uniform_within_tolerance() {
    fastrand::seed(1);
    let k = keys(4);
    let b = Balancer::new(&cluster(LbPolicy::Random), &endpoints(&k, &[]));
    assert_share(&counts(&b, 100_000, |_| None), &[1, 1, 1, 1], 0.03);
}

#[test]
fn random_weighted_within_tolerance() {
    fastrand::seed(2);
    let k = keys(3);
    let weights = [1, 3, 6];
    let b = Balancer::new(&cluster(LbPolicy::Random), &endpoints(&k, &weights));
    assert_share(&counts(&b, 100_000, |_| None), &weights, 0.03);
}

// === least request ===

#[test]
fn least_request_prefers_lower_load() {
    fastrand::seed(3);
    let k = keys(4);
    let b = Balancer::new(&cluster(LbPolicy::LeastRequest), &endpoints(&k, &[]));
    let load = |i: usize| [10, 0, 10, 10][i];
    let mut c = [0usize; 4];
    for _ in 0..10_000 {
        c[b.pick(None, &load).unwrap_or(9)] += 1;
    }
    // P2C picks the idle endpoint unless both samples miss it: 1 - (3/4)^2.
    let share = c[1] as f64 / 10_000.0;
    assert!((share - 0.4375).abs() < 0.03, "{c:?}");
}

#[test]
fn least_request_with_many_choices_finds_the_idle_endpoint() {
    fastrand::seed(4);
    let k = keys(4);
    let mut cfg = cluster(LbPolicy::LeastRequest);
    cfg.least_request = Some(LeastRequestConfig { choice_count: 64 });
    let b = Balancer::new(&cfg, &endpoints(&k, &[]));
    let load = |i: usize| if i == 2 { 1 } else { 5 };
    for _ in 0..1_000 {
        assert_eq!(b.pick(None, &load), Some(2));
    }
}

#[test]
fn least_request_one_choice_is_random() {
    fastrand::seed(5);
    let k = keys(4);
    let mut cfg = cluster(LbPolicy::LeastRequest);
    cfg.least_request = Some(LeastRequestConfig { choice_count: 1 });
    let b = Balancer::new(&cfg, &endpoints(&k, &[]));
    let load = |i: usize| if i == 0 { 0 } else { 100 };
    let mut c = [0usize; 4];
    for _ in 0..100_000 {
        c[b.pick(None, &load).unwrap_or(9)] += 1;
    }
    assert_share(&c, &[1, 1, 1, 1], 0.03);
}

#[test]
fn least_request_equal_load_follows_weights() {
    fastrand::seed(6);
    let k = keys(2);
    let weights = [1, 4];
    let b = Balancer::new(&cluster(LbPolicy::LeastRequest), &endpoints(&k, &weights));
    assert_share(&counts(&b, 100_000, |_| None), &weights, 0.03);
}

#[test]
fn least_request_ties_keep_the_first_sample() {
    let k = keys(2);
    let b = Balancer::new(&cluster(LbPolicy::LeastRequest), &endpoints(&k, &[]));
    for seed in 0..50 {
        fastrand::seed(seed);
        let expected = fastrand::usize(..2);
        fastrand::seed(seed);
        assert_eq!(b.pick(None, &|_| 3), Some(expected));
    }
}

// === consistent hashing: ring hash and Maglev ===

fn assignments(b: &Balancer, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| b.pick(Some(request_hash(i)), &idle).unwrap_or(usize::MAX))
        .collect()
}

fn hashed_cluster(policy: LbPolicy) -> Cluster {
    let mut c = cluster(policy);
    c.ring_hash = Some(RingHashConfig {
        minimum_ring_size: 1024,
        maximum_ring_size: 8 * 1024 * 1024,
    });
    c.maglev = Some(MaglevConfig { table_size: 65_537 });
    c
}

/// Keys stay put across rebuilds, and adding an endpoint to `n` moves about
/// 1/(n+1) of them. Returns the share of keys that moved between two old
/// endpoints (ring hash: none; Maglev: a little).
fn check_consistency(policy: LbPolicy, n: usize) -> f64 {
    const KEYS: usize = 10_000;
    let all = keys(n + 1);
    let before = Balancer::new(&hashed_cluster(policy), &endpoints(&all[..n], &[]));
    let rebuilt = Balancer::new(&hashed_cluster(policy), &endpoints(&all[..n], &[]));
    let a = assignments(&before, KEYS);
    assert_eq!(
        a,
        assignments(&rebuilt, KEYS),
        "{policy:?}: rebuild moved keys"
    );

    // The same endpoints listed in another order: same endpoint per key.
    let mut reversed: Vec<String> = all[..n].to_vec();
    reversed.reverse();
    let shuffled = Balancer::new(&hashed_cluster(policy), &endpoints(&reversed, &[]));
    let by_key: Vec<&str> = assignments(&shuffled, KEYS)
        .iter()
        .map(|&i| reversed[i].as_str())
        .collect();
    let original: Vec<&str> = a.iter().map(|&i| all[i].as_str()).collect();
    assert_eq!(by_key, original, "{policy:?}: order changed assignments");

    let after = Balancer::new(&hashed_cluster(policy), &endpoints(&all, &[]));
    let b = assignments(&after, KEYS);
    let moved: Vec<usize> = (0..KEYS).filter(|&i| a[i] != b[i]).collect();
    let to_new = moved.iter().filter(|&&i| b[i] == n).count();
    let fair = KEYS as f64 / (n + 1) as f64;
    assert!(
        (0.5 * fair..=1.5 * fair).contains(&(moved.len() as f64)),
        "{policy:?}: {} of {KEYS} keys moved, fair {fair:.0}",
        moved.len()
    );
    (moved.len() - to_new) as f64 / KEYS as f64
}

#[test]
fn ring_hash_is_consistent() {
    for n in 1..=9 {
        let stray = check_consistency(LbPolicy::RingHash, n);
        assert_eq!(stray, 0.0, "n={n}: keys moved between old endpoints");
    }
}

#[test]
fn maglev_is_consistent() {
    for n in [2, 4, 9] {
        let stray = check_consistency(LbPolicy::Maglev, n);
        // Maglev trades a little disruption for its even spread.
        assert!(
            stray < 0.02,
            "n={n}: {stray} of keys moved between old endpoints"
        );
    }
}

#[test]
fn ring_hash_spreads_by_weight() {
    let k = keys(3);
    let weights = [1, 2, 1];
    let b = Balancer::new(
        &hashed_cluster(LbPolicy::RingHash),
        &endpoints(&k, &weights),
    );
    let c = counts(&b, 100_000, |i| Some(request_hash(i)));
    // Ketama with ~1k points is only roughly even.
    assert_share(&c, &weights, 0.15);
}

#[test]
fn hash_policies_without_a_hash_pick_randomly() {
    fastrand::seed(8);
    let k = keys(4);
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let b = Balancer::new(&hashed_cluster(policy), &endpoints(&k, &[]));
        let c = counts(&b, 40_000, |_| None);
        assert!(c.iter().all(|&n| n > 7_000), "{policy:?}: {c:?}");
    }
}

#[test]
fn ring_size_respects_bounds() {
    let k = keys(3);
    for (min, max) in [(1024, 8 << 20), (10, 100), (5000, 3000), (0, 0), (64, 2)] {
        let mut cfg = cluster(LbPolicy::RingHash);
        cfg.ring_hash = Some(RingHashConfig {
            minimum_ring_size: min,
            maximum_ring_size: max,
        });
        let b = Balancer::new(&cfg, &endpoints(&k, &[2, 1, 1]));
        let Inner::RingHash(ring) = &b.inner else {
            panic!("not a ring");
        };
        let hi = max.max(1) as usize;
        let lo = min.clamp(1, hi as u64) as usize;
        // Whole points per unit of weight (total 4) may fall short of `min`
        // by less than the total weight when `max` leaves no room.
        assert!(ring.len() <= hi, "min {min} max {max}: {}", ring.len());
        assert!(ring.len() + 4 > lo, "min {min} max {max}: {}", ring.len());
        assert!(b.pick(Some(1), &idle).is_some());
    }
}

#[test]
fn maglev_spreads_evenly() {
    let k = keys(7);
    let b = Balancer::new(&hashed_cluster(LbPolicy::Maglev), &endpoints(&k, &[]));
    let Inner::Maglev(m) = &b.inner else {
        panic!("not maglev");
    };
    let fair = m.table().len() as f64 / 7.0;
    for i in 0..7u32 {
        let share = m.table().iter().filter(|&&e| e == i).count() as f64;
        assert!(
            (share - fair).abs() <= 0.05 * fair,
            "endpoint {i}: {share} vs {fair}"
        );
    }
}

#[test]
fn maglev_spreads_by_weight() {
    let k = keys(3);
    let weights = [1, 2, 5];
    let b = Balancer::new(&hashed_cluster(LbPolicy::Maglev), &endpoints(&k, &weights));
    let Inner::Maglev(m) = &b.inner else {
        panic!("not maglev");
    };
    let c: Vec<usize> = (0..3u32)
        .map(|i| m.table().iter().filter(|&&e| e == i).count())
        .collect();
    assert_share(&c, &weights, 0.05);
    assert_eq!(m.table().len(), 65_537);
}

#[test]
fn maglev_table_size_is_prime() {
    let k = keys(3);
    let mut cfg = cluster(LbPolicy::Maglev);
    cfg.maglev = Some(MaglevConfig { table_size: 1000 });
    let b = Balancer::new(&cfg, &endpoints(&k, &[]));
    let Inner::Maglev(m) = &b.inner else {
        panic!("not maglev");
    };
    assert_eq!(m.table().len(), 1009);
    let distinct: HashSet<u32> = m.table().iter().copied().collect();
    assert_eq!(distinct.len(), 3);
}
