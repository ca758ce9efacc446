//! Host selection under health: panic mode, exclusion of tried endpoints,
//! ejections and their limits, state carried across rebuilds. No sockets:
//! the endpoints are never connected to.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::config::{Dur, HealthCheck, OutlierDetection, TcpHealthCheck};
use crate::upstream::outlier::Triggers;

fn targets(n: u16) -> Vec<Target> {
    (1..=n)
        .map(|port| Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            hostname: None,
            weight: 1,
        })
        .collect()
}

fn base(name: &str, policy: LbPolicy) -> config::Cluster {
    config::Cluster {
        name: name.to_string(),
        lb_policy: policy,
        ..Default::default()
    }
}

fn tcp_hc() -> HealthCheck {
    HealthCheck {
        tcp_health_check: Some(TcpHealthCheck {}),
        ..Default::default()
    }
}

fn outlier(consecutive: u32, max_percent: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: consecutive,
        max_ejection_percent: max_percent,
        base_ejection_time: Some(Dur(Duration::from_secs(30))),
        max_ejection_time: Some(Dur(Duration::from_secs(100))),
        ..Default::default()
    }
}

fn build(cfg: &config::Cluster, n: u16, registry: &Arc<PoolRegistry>) -> Arc<Cluster> {
    match Cluster::build(cfg, "clusters[0]", targets(n), registry) {
        Ok(c) => c,
        Err(e) => panic!("build failed: {e}"),
    }
}

fn pickable(c: &Cluster) -> HashSet<SocketAddr> {
    c.hosts.load().pickable.iter().map(|e| e.addr).collect()
}

fn endpoint(c: &Cluster, i: usize) -> Arc<Endpoint> {
    c.hosts.load().endpoints[i].clone()
}

/// Marks endpoint `i` as passing its (only) health check.
fn pass_hc(c: &Cluster, i: usize) {
    let s = c.health_checks()[0].clone();
    let ep = endpoint(c, i);
    ep.health.apply(0, true, &s);
    c.refresh_membership();
}

#[test]
fn pick_is_pick_excluding_nothing() {
    let reg = Arc::new(PoolRegistry::default());
    let c = build(&base("p", LbPolicy::RingHash), 5, &reg);
    for h in [1u64, 99, u64::MAX / 3] {
        let a = c.pick(Some(h)).map(|e| e.addr);
        let b = c.pick_excluding(Some(h), &[]).map(|e| e.addr);
        assert_eq!(a, b);
    }
}

#[test]
fn pick_excluding_never_returns_an_excluded_endpoint_when_another_exists() {
    let reg = Arc::new(PoolRegistry::default());
    fastrand::seed(7);
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::Random,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
    ] {
        let c = build(&base(&format!("x-{policy:?}"), policy), 4, &reg);
        let all: Vec<SocketAddr> = targets(4).iter().map(|t| t.addr).collect();
        for round in 0..2000u64 {
            let k = 1 + (round % 3) as usize;
            let start = (round % 4) as usize;
            let exclude: Vec<SocketAddr> = (0..k).map(|j| all[(start + j) % 4]).collect();
            let hash = (round % 2 == 0).then(|| round.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let got = c.pick_excluding(hash, &exclude).map(|e| e.addr);
            let Some(got) = got else {
                panic!("{policy:?}: no endpoint")
            };
            assert!(
                !exclude.contains(&got),
                "{policy:?} picked excluded {got} (exclude {exclude:?})"
            );
        }
        // Everything excluded: still an endpoint (a retry beats a 503).
        assert!(c.pick_excluding(Some(3), &all).is_some());
        assert!(c.pick_excluding(None, &all).is_some());
    }
}

#[test]
fn empty_cluster_picks_nothing() {
    let reg = Arc::new(PoolRegistry::default());
    let c = build(&base("empty", LbPolicy::RoundRobin), 0, &reg);
    assert!(c.pick(None).is_none());
    assert!(c.pick_excluding(None, &[]).is_none());
}

#[test]
fn panic_mode_switches_to_all_endpoints() {
    assert!(panic_mode(1, 4, 50.0));
    assert!(
        !panic_mode(2, 4, 50.0),
        "exactly at the threshold is not panic"
    );
    assert!(!panic_mode(0, 4, 0.0), "0 disables panic mode");
    assert!(!panic_mode(0, 0, 50.0));
    assert!(panic_mode(99, 100, 100.0));
    assert!(!panic_mode(100, 100, 100.0));

    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("panic", LbPolicy::RoundRobin);
    cfg.health_checks = vec![tcp_hc()];
    let c = build(&cfg, 4, &reg);
    // New endpoints start failed: none routable, so all are pickable.
    let hosts = c.hosts.load();
    assert_eq!(
        (hosts.routable, hosts.panic, hosts.pickable.len()),
        (0, true, 4)
    );
    drop(hosts);
    pass_hc(&c, 0);
    // 1 of 4 = 25 % < 50 %: still panic, all four.
    assert_eq!(pickable(&c).len(), 4);
    assert!(c.hosts.load().panic);
    pass_hc(&c, 1);
    // 2 of 4 = 50 %: out of panic, only the two healthy ones.
    let hosts = c.hosts.load();
    assert_eq!((hosts.routable, hosts.panic), (2, false));
    let want: HashSet<SocketAddr> = [endpoint(&c, 0).addr, endpoint(&c, 1).addr].into();
    assert_eq!(pickable(&c), want);
    for _ in 0..100 {
        let got = c.pick(None).map(|e| e.addr);
        assert!(got.is_some_and(|a| want.contains(&a)));
    }
}

#[test]
fn panic_threshold_zero_means_no_host() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("nopanic", LbPolicy::RoundRobin);
    cfg.health_checks = vec![tcp_hc()];
    cfg.healthy_panic_threshold = Some(0.0);
    let c = build(&cfg, 3, &reg);
    assert!(
        c.pick(None).is_none(),
        "no routable endpoint, no panic mode"
    );
    pass_hc(&c, 2);
    for _ in 0..10 {
        assert_eq!(c.pick(None).map(|e| e.addr), Some(endpoint(&c, 2).addr));
    }
}

#[test]
fn consecutive_5xx_ejects_and_respects_max_percent() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("eject", LbPolicy::RoundRobin);
    cfg.outlier_detection = Some(outlier(3, 20));
    let c = build(&cfg, 10, &reg);
    let fail = |i: usize, n: u32| {
        let ep = endpoint(&c, i);
        for _ in 0..n {
            ep.record(TryOutcome::Status(500));
        }
    };
    fail(0, 2);
    assert_eq!(pickable(&c).len(), 10, "below the threshold");
    fail(0, 1);
    assert!(endpoint(&c, 0).health.outlier.is_ejected());
    assert!(!pickable(&c).contains(&endpoint(&c, 0).addr));
    assert_eq!(endpoint(&c, 0).health_flags(), "/failed_outlier_check");
    // 20 % of 10: a second ejection is allowed, a third is not.
    fail(1, 3);
    assert!(endpoint(&c, 1).health.outlier.is_ejected());
    fail(2, 3);
    assert!(!endpoint(&c, 2).health.outlier.is_ejected());
    assert_eq!(
        endpoint(&c, 2).health.outlier.counters().0,
        0,
        "re-accumulates"
    );
    assert_eq!(c.hosts.load().routable, 8);
    assert_eq!(c.stats.endpoints_ejected.get(), 2);
    // A success in between resets the run.
    fail(3, 2);
    endpoint(&c, 3).record(TryOutcome::Status(200));
    fail(3, 2);
    assert!(!endpoint(&c, 3).health.outlier.is_ejected());
}

#[test]
fn at_least_one_endpoint_can_always_be_ejected() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("one", LbPolicy::RoundRobin);
    cfg.outlier_detection = Some(outlier(1, 0));
    let c = build(&cfg, 3, &reg);
    endpoint(&c, 0).record(TryOutcome::Reset);
    assert!(endpoint(&c, 0).health.outlier.is_ejected());
    endpoint(&c, 1).record(TryOutcome::Reset);
    assert!(!endpoint(&c, 1).health.outlier.is_ejected());
}

#[test]
fn enforcing_percentages() {
    let reg = Arc::new(PoolRegistry::default());
    let mut od = outlier(2, 100);
    od.consecutive_gateway_failure = 2;
    od.enforcing_consecutive_5xx = 30;
    od.enforcing_consecutive_gateway_failure = 0;
    let mut cfg = base("enforce", LbPolicy::RoundRobin);
    cfg.outlier_detection = Some(od);
    let c = build(&cfg, 4, &reg);
    let now = Instant::now();
    let ep = endpoint(&c, 0);
    let fired_5xx = Triggers {
        consecutive_5xx: true,
        gateway_failure: false,
    };
    // The roll decides: 30 does not fire at 30 %, 29 does.
    c.on_outlier_with(&ep, fired_5xx, now, 30);
    assert!(!ep.health.outlier.is_ejected());
    c.on_outlier_with(&ep, fired_5xx, now, 29);
    assert!(ep.health.outlier.is_ejected());
    // Gateway failures at 0 % (Envoy's default) never eject.
    let ep1 = endpoint(&c, 1);
    let gw = Triggers {
        consecutive_5xx: false,
        gateway_failure: true,
    };
    c.on_outlier_with(&ep1, gw, now, 0);
    assert!(!ep1.health.outlier.is_ejected());
}

#[test]
fn ejection_returns_on_time_with_backoff_and_cap() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("backoff", LbPolicy::RoundRobin);
    cfg.outlier_detection = Some(outlier(1, 100));
    let c = build(&cfg, 2, &reg);
    let ep = endpoint(&c, 0);
    let fired = Triggers {
        consecutive_5xx: true,
        gateway_failure: false,
    };
    let t0 = Instant::now();
    let mut at = t0;
    for (n, secs) in [(1, 30), (2, 60), (3, 90), (4, 100), (5, 100)] {
        c.on_outlier_with(&ep, fired, at, 0);
        assert_eq!(ep.health.outlier.ejection().times_ejected, n);
        let until = at + Duration::from_secs(secs);
        assert_eq!(ep.health.outlier.until(), Some(until), "ejection {n}");
        assert_eq!(pickable(&c).len(), 1);
        // One tick before the end: still out.
        c.outlier_tick(until - Duration::from_millis(1));
        assert_eq!(pickable(&c).len(), 1);
        c.outlier_tick(until);
        assert_eq!(pickable(&c).len(), 2, "back after {secs}s");
        at = until;
    }
    // Each interval in without an ejection sheds one step.
    for left in (0..5).rev() {
        c.outlier_tick(at);
        assert_eq!(ep.health.outlier.ejection().times_ejected, left);
    }
    c.on_outlier_with(&ep, fired, at, 0);
    assert_eq!(
        ep.health.outlier.until(),
        Some(at + Duration::from_secs(30))
    );
}

#[test]
fn a_pick_returns_an_ejected_endpoint_when_its_time_is_up() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("lazy", LbPolicy::RoundRobin);
    cfg.outlier_detection = Some(outlier(1, 100));
    let c = build(&cfg, 2, &reg);
    let ep = endpoint(&c, 0);
    let fired = Triggers {
        consecutive_5xx: true,
        gateway_failure: false,
    };
    // Ejected 31 s ago for 30 s: due back, but no interval has run.
    let Some(past) = Instant::now().checked_sub(Duration::from_secs(31)) else {
        return; // the clock is too young to go back; nothing to test
    };
    c.on_outlier_with(&ep, fired, past, 0);
    assert!(ep.health.outlier.is_ejected());
    let seen: HashSet<SocketAddr> = (0..10)
        .filter_map(|_| c.pick(None))
        .map(|e| e.addr)
        .collect();
    assert!(seen.contains(&ep.addr), "returned by the pick itself");
    assert!(!ep.health.outlier.is_ejected());
}

#[test]
fn ring_hash_keeps_keys_of_routable_endpoints() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("ring", LbPolicy::RingHash);
    cfg.outlier_detection = Some(outlier(1, 100));
    let c = build(&cfg, 5, &reg);
    let hashes: Vec<u64> = (0..2000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let before: Vec<SocketAddr> = hashes
        .iter()
        .filter_map(|&h| c.pick(Some(h)).map(|e| e.addr))
        .collect();
    let gone = endpoint(&c, 2);
    gone.record(TryOutcome::ConnectFailure);
    assert!(gone.health.outlier.is_ejected());
    let mut moved = 0;
    for (&h, &was) in hashes.iter().zip(&before) {
        let now = c.pick(Some(h)).map(|e| e.addr);
        if was == gone.addr {
            moved += 1;
            assert_ne!(now, Some(gone.addr));
        } else {
            assert_eq!(now, Some(was), "a key of a routable endpoint moved");
        }
    }
    assert!(moved > 0);
}

#[test]
fn health_state_survives_a_rebuild_unless_the_checks_change() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("carry", LbPolicy::RoundRobin);
    cfg.health_checks = vec![tcp_hc()];
    let old = build(&cfg, 2, &reg);
    pass_hc(&old, 0);
    pass_hc(&old, 1);
    let new = build(&cfg, 2, &reg);
    assert!(Arc::ptr_eq(
        &endpoint(&old, 0).health,
        &endpoint(&new, 0).health
    ));
    assert_eq!(
        new.hosts.load().routable,
        2,
        "healthy at once after a reload"
    );
    // Same pools and breakers too.
    assert!(Arc::ptr_eq(
        endpoint(&old, 1).pool(),
        endpoint(&new, 1).pool()
    ));
    assert!(Arc::ptr_eq(old.breakers().state(), new.breakers().state()));

    let mut changed = cfg.clone();
    changed.health_checks[0].interval = Some(Dur(Duration::from_secs(1)));
    let other = build(&changed, 2, &reg);
    assert!(!Arc::ptr_eq(
        &endpoint(&old, 0).health,
        &endpoint(&other, 0).health
    ));
    assert_eq!(other.hosts.load().routable, 0, "new checks start over");
}

#[tokio::test]
async fn start_makes_a_build_current_and_applies_its_limits() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("cur", LbPolicy::RoundRobin);
    let old = build(&cfg, 1, &reg);
    start(&old);
    assert!(old.is_current());
    cfg.circuit_breakers = Some(config::CircuitBreakers {
        max_requests: 1,
        ..Default::default()
    });
    let new = build(&cfg, 1, &reg);
    // Built but not started (a reload that fails later): nothing changes.
    assert!(old.is_current() && !new.is_current());
    assert_eq!(old.breakers().snapshot().limits.max_requests, 1024);
    start(&new);
    assert!(!old.is_current() && new.is_current());
    let held = new.breakers().try_request();
    assert!(held.is_some());
    assert!(old.breakers().try_request().is_none(), "shared counters");
}

/// A strict_dns re-resolution that answers differently replaces the
/// endpoints, keeps the pool of an address that stayed, and a failed
/// lookup changes nothing.
#[test]
fn dns_refresh_applies_a_changed_answer_and_keeps_it_on_failure() {
    let reg = Arc::new(PoolRegistry::default());
    let mut cfg = base("dns", LbPolicy::RoundRobin);
    cfg.kind = ClusterKind::StrictDns;
    let c = build(&cfg, 2, &reg);
    let kept_pool = endpoint(&c, 1).pool().clone();
    let addrs = |c: &Arc<Cluster>| -> Vec<SocketAddr> {
        c.hosts.load().endpoints.iter().map(|e| e.addr).collect()
    };
    assert_eq!(addrs(&c), [targets(2)[0].addr, targets(2)[1].addr]);

    // The name now resolves to ports 2 and 3.
    let answer: Vec<Target> = targets(3).into_iter().skip(1).collect();
    let mut last = None;
    apply_resolved(&c, Ok(answer), &mut last);
    let now = addrs(&c);
    assert_eq!(now, [targets(3)[1].addr, targets(3)[2].addr]);
    assert!(
        Arc::ptr_eq(endpoint(&c, 0).pool(), &kept_pool),
        "an address that stayed keeps its pool"
    );
    assert!(pickable(&c).contains(&targets(3)[2].addr));

    // A failed lookup keeps what is serving.
    apply_resolved(&c, Err(ConfigError::new("x", "lookup failed")), &mut last);
    assert_eq!(addrs(&c), now);
}

fn live_pools(reg: &PoolRegistry) -> usize {
    reg.pools
        .lock()
        .map(|p| p.values().filter(|w| w.strong_count() > 0).count())
        .unwrap_or(0)
}

/// A sidecar holds every endpoint of the mesh and talks to few: pools are
/// made on first use, and a rebuild takes over the live ones.
#[test]
fn pools_are_made_on_first_use_and_survive_a_rebuild() {
    let reg = Arc::new(PoolRegistry::default());
    let cfg = base("lazy", LbPolicy::RoundRobin);
    let old = build(&cfg, 3, &reg);
    assert_eq!(live_pools(&reg), 0);
    assert_eq!(endpoint(&old, 1).idle_connections(), 0);
    assert_eq!(
        live_pools(&reg),
        0,
        "counting idle connections makes no pool"
    );

    let used = Arc::downgrade(endpoint(&old, 1).pool());
    assert_eq!(live_pools(&reg), 1);
    // The new build holds the live pool itself, so dropping the old build
    // (the config swap) does not close its connections.
    let new = build(&cfg, 3, &reg);
    drop(old);
    let kept = used.upgrade().expect("the pool outlives the old build");
    assert!(Arc::ptr_eq(endpoint(&new, 1).pool(), &kept));
    assert_eq!(live_pools(&reg), 1, "endpoints never used still have none");

    // A change of connection settings is a new pool.
    let mut other = cfg.clone();
    other.connect_timeout = Some(Dur(Duration::from_millis(250)));
    let changed = build(&other, 3, &reg);
    assert!(!Arc::ptr_eq(endpoint(&changed, 1).pool(), &kept));
}

#[test]
fn endpoints_share_one_health_state_when_nothing_tracks_health() {
    let reg = Arc::new(PoolRegistry::default());
    let plain = build(&base("plain", LbPolicy::RoundRobin), 3, &reg);
    assert!(Arc::ptr_eq(
        &endpoint(&plain, 0).health,
        &endpoint(&plain, 2).health
    ));
    assert_eq!(plain.hosts.load().routable, 3);

    let mut checked = base("checked", LbPolicy::RoundRobin);
    checked.outlier_detection = Some(outlier(5, 100));
    let checked = build(&checked, 3, &reg);
    assert!(!Arc::ptr_eq(
        &endpoint(&checked, 0).health,
        &endpoint(&checked, 2).health
    ));
}
