//! A cluster at run time: its endpoints, their balancer and pools.
//!
//! The endpoint set lives behind its own `ArcSwap` because it changes
//! without a config change (DNS re-resolution now, EDS later); the request
//! path loads it once per pick.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls_pki_types::ServerName;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::breaker::{BreakerState, Breakers, Limits};
use super::health::{self, HcSettings, HostHealth};
use super::lb::{Balancer, LbEndpoint};
use super::outlier::{enforced, may_eject, OutlierConfig, TryOutcome};
use super::pool::{Pool, PoolSettings};
use super::tls::client_config;
use crate::config::{self, ClusterKind, ConfigError, ConfigErrors, LbPolicy, UpstreamProtocol};
use crate::stats::ClusterStats;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
const DEFAULT_MAX_IDLE: u32 = 256;
const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
/// Balancer picks tried before `pick_excluding` falls back to a scan.
const EXCLUDE_ATTEMPTS: u64 = 3;

/// One endpoint of a cluster build. Kept small: a mesh sidecar holds tens
/// of thousands of them and sends requests to few.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The name it was resolved from (strict_dns), for `/clusters`.
    pub hostname: Option<String>,
    pub weight: u32,
    /// In-flight requests, for least request.
    pub active: AtomicU32,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    /// The connection pool, made on first use ([`Endpoint::pool`]); set at
    /// build time when a live build of the cluster already has one, so an
    /// endpoint that stays across a reload keeps its connections.
    pool: OnceLock<Arc<Pool>>,
    /// How to make the pool: shared by the endpoints of one build.
    pools: Arc<PoolContext>,
    /// Active and passive health; shared with the same endpoint in the
    /// cluster's other builds (reloads, DNS changes). A cluster with neither
    /// health checks nor outlier detection has nothing to track per
    /// endpoint: its endpoints share one always-healthy state.
    pub health: Arc<HostHealth>,
    /// Copied here so that `record` needs no pointer chase on success.
    outlier: Option<Arc<OutlierConfig>>,
    /// Back to the owning cluster, for the (rare) ejection. Weak: the
    /// cluster owns its endpoints.
    cluster: Weak<Cluster>,
}

/// What an endpoint needs to make its pool, once per cluster build.
struct PoolContext {
    cluster: Arc<str>,
    settings: PoolSettings,
    /// The cluster's TLS connector and configured SNI.
    tls: Option<(TlsConnector, Option<String>)>,
    /// Hash of the cluster settings that shape a connection (see
    /// [`fingerprint`]): pools are shared across builds only while it holds.
    fingerprint: u64,
    stats: ClusterStats,
    breakers: Arc<BreakerState>,
    registry: Arc<PoolRegistry>,
}

impl PoolContext {
    fn key(&self, addr: SocketAddr, hostname: Option<&str>) -> PoolKey {
        // The TLS server name may come from the hostname, so a pool is
        // only shared between endpoints resolved from the same name.
        let fingerprint = match hostname {
            None => self.fingerprint,
            Some(h) => xxhash_rust::xxh64::xxh64(h.as_bytes(), self.fingerprint),
        };
        PoolKey {
            cluster: self.cluster.clone(),
            addr,
            fingerprint,
        }
    }

    /// The TLS server name for an endpoint: the configured SNI, else the
    /// name it was resolved from, else its IP.
    fn server_name(
        sni: Option<&str>,
        hostname: Option<&str>,
        addr: SocketAddr,
    ) -> Result<ServerName<'static>, String> {
        match sni.or(hostname) {
            Some(name) => ServerName::try_from(name.to_string())
                .map_err(|e| format!("invalid server name {name:?}: {e}")),
            None => Ok(ServerName::IpAddress(addr.ip().into())),
        }
    }

    fn make(&self, addr: SocketAddr, hostname: Option<&str>) -> Arc<Pool> {
        self.registry.get_or_make(self.key(addr, hostname), || {
            let mut settings = self.settings.clone();
            if let Some((connector, sni)) = &self.tls {
                // Checked when the cluster was built, so this fails only
                // for a name that was valid then; the IP is the safe
                // fallback (the handshake then fails visibly).
                let name = PoolContext::server_name(sni.as_deref(), hostname, addr)
                    .unwrap_or(ServerName::IpAddress(addr.ip().into()));
                settings.tls = Some((connector.clone(), name));
            }
            Pool::new(addr, settings, self.stats.clone(), self.breakers.clone())
        })
    }
}

impl Endpoint {
    /// The endpoint's connection pool, made (or found in the registry) on
    /// first use.
    pub fn pool(&self) -> &Arc<Pool> {
        self.pool
            .get_or_init(|| self.pools.make(self.addr, self.hostname.as_deref()))
    }

    /// Idle connections in its pool; 0 (and no pool made) if it has none.
    pub fn idle_connections(&self) -> usize {
        self.pool.get().map_or(0, |p| p.idle_count())
    }

    /// Tells outlier detection how a try on this endpoint ended. Call once
    /// per try. A success costs two relaxed loads; a failure that reaches a
    /// threshold ejects (subject to the cluster's limits) and rebuilds the
    /// cluster's balancer.
    pub fn record(&self, outcome: TryOutcome) {
        let Some(cfg) = &self.outlier else {
            return;
        };
        let triggers = self.health.outlier.record(outcome, cfg);
        if !triggers.any() {
            return;
        }
        match self.cluster.upgrade() {
            Some(c) => c.on_outlier(self, triggers, Instant::now()),
            None => self.health.outlier.reset(triggers),
        }
    }

    /// Routable: passing active health checks and not ejected.
    fn routable(&self) -> bool {
        !self.health.failed_active_hc()
            && (self.outlier.is_none() || !self.health.outlier.is_ejected())
    }

    /// Envoy's `health_flags` for `/clusters`: `healthy`, or the reasons
    /// it is not, each after a `/`.
    pub fn health_flags(&self) -> String {
        let mut flags = String::new();
        if self.health.failed_active_hc() {
            flags.push_str("/failed_active_hc");
        }
        if self.outlier.is_some() && self.health.outlier.is_ejected() {
            flags.push_str("/failed_outlier_check");
        }
        if flags.is_empty() {
            flags.push_str("healthy");
        }
        flags
    }
}

/// Counts a request as in flight on an endpoint until dropped.
pub struct ActiveRequest(Arc<Endpoint>);

impl ActiveRequest {
    pub fn new(ep: Arc<Endpoint>) -> Self {
        ep.active.fetch_add(1, Ordering::Relaxed);
        ep.rq_total.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(ep)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One published view of a cluster's endpoints. Rebuilt (off the request
/// path's hot loop) when endpoints change or one becomes routable or not;
/// a request only loads it and picks.
pub struct HostSet {
    /// Every endpoint, routable or not (what `/clusters` lists).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// What the balancer picks from: the routable endpoints, or all of them
    /// in panic mode.
    pub pickable: Vec<Arc<Endpoint>>,
    /// Built over `pickable`.
    pub balancer: Balancer,
    /// Routable endpoints (passing active health checks, not ejected).
    pub routable: usize,
    /// Fewer than `healthy_panic_threshold` % routable: all are pickable.
    pub panic: bool,
    /// The earliest end of an ejection, so a pick can return an ejected
    /// endpoint on time without waiting for the next outlier interval.
    next_return: Option<Instant>,
    /// `routable()` of each endpoint when this set was built, to tell
    /// whether a rebuild would change anything.
    mask: Vec<bool>,
}

pub struct Cluster {
    pub name: Arc<str>,
    /// Shared with the running config (`Active::config`).
    pub config: Arc<config::Cluster>,
    pub hosts: ArcSwap<HostSet>,
    /// Woken (`notify_waiters`) after every store to `hosts` once the
    /// cluster runs: requests held by the activator (`queue::activator`)
    /// wait on it for an endpoint to appear.
    pub hosts_changed: Notify,
    pub stats: ClusterStats,
    pub protocol: UpstreamProtocol,
    /// Ring hash and Maglev want the route's hash; others don't, so the
    /// router skips computing it.
    pub uses_hash: bool,
    registry: Arc<PoolRegistry>,
    /// How its endpoints make their pools.
    pools: Arc<PoolContext>,
    /// The one health state of every endpoint when the cluster has neither
    /// health checks nor outlier detection (nothing per endpoint to track).
    shared_health: Option<Arc<HostHealth>>,
    /// Tells this build from other builds of the same cluster name.
    id: u64,
    limits: Limits,
    breakers: Breakers,
    outlier: Option<Arc<OutlierConfig>>,
    health_checks: Vec<Arc<HcSettings>>,
    /// Registry key part: endpoints keep their health state only while the
    /// checks that produced it are unchanged.
    hc_fingerprint: String,
    panic_threshold: f64,
    /// Serialises host-set rebuilds and ejection decisions (so the max
    /// ejection percentage holds under concurrent failures). Never held
    /// across an `.await`.
    membership: Mutex<()>,
    /// Wakes the health checkers early (new endpoints from DNS).
    hc_kick: Arc<Notify>,
}

/// Pools, breaker counters and endpoint health outlive config reloads: a
/// cluster rebuilt with the same endpoint and connection settings gets the
/// same pool back, idle connections and all; the same name gets the same
/// breaker counters; the same endpoint under unchanged health checks keeps
/// its health.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<HashMap<PoolKey, Weak<Pool>>>,
    breakers: Mutex<HashMap<Arc<str>, Weak<BreakerState>>>,
    health: Mutex<HashMap<HealthKey, Weak<HostHealth>>>,
    /// The id of the newest *started* build of each cluster name; its
    /// background tasks are the only ones that act.
    current: Mutex<HashMap<Arc<str>, u64>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster: Arc<str>,
    addr: SocketAddr,
    /// Everything in the cluster config that shapes a connection, hashed.
    fingerprint: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct HealthKey {
    cluster: Arc<str>,
    addr: SocketAddr,
    health_checks: String,
}

fn get_or_make<K: std::hash::Hash + Eq, V>(
    map: &Mutex<HashMap<K, Weak<V>>>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let Ok(mut map) = map.lock() else {
        return Arc::new(make());
    };
    if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
        return v;
    }
    let v = Arc::new(make());
    map.insert(key, Arc::downgrade(&v));
    v
}

impl PoolRegistry {
    fn get_or_make(&self, key: PoolKey, make: impl FnOnce() -> Pool) -> Arc<Pool> {
        get_or_make(&self.pools, key, make)
    }

    /// The live pool for `key`, if any build still holds one.
    fn live_pool(&self, key: &PoolKey) -> Option<Arc<Pool>> {
        self.pools.lock().ok()?.get(key).and_then(Weak::upgrade)
    }

    /// Closes expired idle connections everywhere and forgets dead pools
    /// and states.
    pub fn reap(&self) {
        let live: Vec<Arc<Pool>> = match self.pools.lock() {
            Ok(mut pools) => {
                pools.retain(|_, w| w.strong_count() > 0);
                pools.values().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        for p in live {
            p.reap();
        }
        if let Ok(mut b) = self.breakers.lock() {
            b.retain(|_, w| w.strong_count() > 0);
        }
        if let Ok(mut h) = self.health.lock() {
            h.retain(|_, w| w.strong_count() > 0);
        }
        if let Ok(mut cur) = self.current.lock() {
            let names: std::collections::HashSet<Arc<str>> = match self.breakers.lock() {
                Ok(b) => b.keys().cloned().collect(),
                Err(_) => return,
            };
            // A cluster name with no live build left has no breakers left.
            cur.retain(|name, _| names.contains(name));
        }
    }

    fn make_current(&self, name: &Arc<str>, id: u64) {
        if let Ok(mut cur) = self.current.lock() {
            cur.insert(name.clone(), id);
        }
    }

    fn is_current(&self, name: &str, id: u64) -> bool {
        self.current
            .lock()
            .map(|cur| cur.get(name) == Some(&id))
            .unwrap_or(false)
    }
}

fn fingerprint(c: &config::Cluster) -> u64 {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        c.protocol, c.connect_timeout, c.idle_timeout, c.max_idle_per_endpoint, c.tls
    );
    xxhash_rust::xxh64::xxh64(text.as_bytes(), 0)
}

/// A resolved endpoint before it has a pool.
pub struct Target {
    pub addr: SocketAddr,
    pub hostname: Option<String>,
    pub weight: u32,
}

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

impl Cluster {
    /// Builds a cluster. `targets`: its endpoints, already resolved (see
    /// [`resolve`]). `path`: the config path, for errors. Nothing shared
    /// with a running build changes until [`start`].
    pub fn build(
        cfg: &config::Cluster,
        path: &str,
        targets: Vec<Target>,
        registry: &Arc<PoolRegistry>,
    ) -> Result<Arc<Cluster>, ConfigErrors> {
        Cluster::build_shared(Arc::new(cfg.clone()), path, targets, registry)
    }

    /// [`Cluster::build`] for a config the running config shares.
    pub fn build_shared(
        cfg: Arc<config::Cluster>,
        path: &str,
        targets: Vec<Target>,
        registry: &Arc<PoolRegistry>,
    ) -> Result<Arc<Cluster>, ConfigErrors> {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let stats = ClusterStats::new(&cfg.name);
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let client = client_config(t, cfg.protocol, &format!("{path}.tls"))?;
                Some((TlsConnector::from(client), t.sni.clone()))
            }
        };
        if let Some((_, sni)) = &tls {
            for t in &targets {
                PoolContext::server_name(sni.as_deref(), t.hostname.as_deref(), t.addr)
                    .map_err(|reason| ConfigError::new(format!("{path}.tls.sni"), reason))?;
            }
        }
        let base = PoolSettings {
            protocol: cfg.protocol,
            connect_timeout: cfg
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get()),
            idle_timeout: cfg.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.get()),
            max_idle: cfg.max_idle_per_endpoint.unwrap_or(DEFAULT_MAX_IDLE) as usize,
            tls: None,
        };
        let limits = Limits::from_config(cfg.circuit_breakers.as_ref());
        let breaker_state = get_or_make(&registry.breakers, name.clone(), || {
            BreakerState::new(limits, &stats)
        });
        let health_checks: Vec<Arc<HcSettings>> = cfg
            .health_checks
            .iter()
            .map(|h| Arc::new(HcSettings::from_config(h, &cfg.name)))
            .collect();
        let outlier = cfg
            .outlier_detection
            .as_ref()
            .map(|o| Arc::new(OutlierConfig::from_config(o)));
        let shared_health =
            (health_checks.is_empty() && outlier.is_none()).then(|| Arc::new(HostHealth::new(0)));
        let pools = Arc::new(PoolContext {
            cluster: name.clone(),
            settings: base,
            tls,
            fingerprint: fingerprint(&cfg),
            stats: stats.clone(),
            breakers: breaker_state.clone(),
            registry: registry.clone(),
        });
        let cluster = Arc::new(Cluster {
            name,
            hosts: ArcSwap::from_pointee(HostSet {
                endpoints: Vec::new(),
                pickable: Vec::new(),
                balancer: Balancer::new(&cfg, &[]),
                routable: 0,
                panic: false,
                next_return: None,
                mask: Vec::new(),
            }),
            hosts_changed: Notify::new(),
            stats,
            protocol: cfg.protocol,
            uses_hash: matches!(cfg.lb_policy, LbPolicy::RingHash | LbPolicy::Maglev),
            registry: registry.clone(),
            pools,
            shared_health,
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            limits,
            breakers: Breakers::new(breaker_state),
            outlier,
            hc_fingerprint: format!("{:?}", cfg.health_checks),
            health_checks,
            panic_threshold: cfg
                .healthy_panic_threshold
                .unwrap_or(DEFAULT_PANIC_THRESHOLD),
            membership: Mutex::new(()),
            hc_kick: Arc::new(Notify::new()),
            config: cfg,
        });
        let endpoints = cluster.endpoints(targets);
        cluster.hosts.store(Arc::new(cluster.host_set(endpoints)));
        Ok(cluster)
    }

    fn endpoints(self: &Arc<Self>, targets: Vec<Target>) -> Vec<Arc<Endpoint>> {
        let mut endpoints = Vec::with_capacity(targets.len());
        for t in targets {
            let pool = OnceLock::new();
            let key = self.pools.key(t.addr, t.hostname.as_deref());
            if let Some(live) = self.registry.live_pool(&key) {
                let _ = pool.set(live);
            }
            let health = match &self.shared_health {
                Some(h) => h.clone(),
                None => {
                    let checkers = self.health_checks.len();
                    get_or_make(
                        &self.registry.health,
                        HealthKey {
                            cluster: self.name.clone(),
                            addr: t.addr,
                            health_checks: self.hc_fingerprint.clone(),
                        },
                        || HostHealth::new(checkers),
                    )
                }
            };
            endpoints.push(Arc::new(Endpoint {
                addr: t.addr,
                hostname: t.hostname,
                weight: t.weight.max(1),
                active: AtomicU32::new(0),
                rq_total: AtomicU64::new(0),
                rq_error: AtomicU64::new(0),
                pool,
                pools: self.pools.clone(),
                health,
                outlier: self.outlier.clone(),
                cluster: Arc::downgrade(self),
            }));
        }
        endpoints
    }

    /// The host set for `endpoints` given their health now: the routable
    /// ones, or all of them when fewer than the panic threshold are (Envoy's
    /// panic mode; a threshold of 0 turns it off). The balancer keys are the
    /// endpoint addresses, so ring hash and Maglev keep the keys of
    /// endpoints that stay routable where they were.
    fn host_set(&self, endpoints: Vec<Arc<Endpoint>>) -> HostSet {
        let mask: Vec<bool> = endpoints.iter().map(|e| e.routable()).collect();
        let routable = mask.iter().filter(|&&r| r).count();
        let panic = panic_mode(routable, endpoints.len(), self.panic_threshold);
        let pickable: Vec<Arc<Endpoint>> = if panic {
            endpoints.clone()
        } else {
            endpoints
                .iter()
                .zip(&mask)
                .filter(|(_, &r)| r)
                .map(|(e, _)| e.clone())
                .collect()
        };
        // Only the hash policies read the keys (`ip:port`); the others are
        // spared a string per endpoint.
        let keys: Vec<String> = if self.uses_hash {
            pickable.iter().map(|e| e.addr.to_string()).collect()
        } else {
            Vec::new()
        };
        let lb: Vec<LbEndpoint<'_>> = pickable
            .iter()
            .enumerate()
            .map(|(i, e)| LbEndpoint {
                key: keys.get(i).map_or("", String::as_str),
                weight: e.weight,
            })
            .collect();
        let balancer = Balancer::new(&self.config, &lb);
        let next_return = match self.outlier {
            None => None,
            Some(_) => endpoints
                .iter()
                .filter_map(|e| e.health.outlier.until())
                .min(),
        };
        let ejected = match self.outlier {
            None => 0,
            Some(_) => endpoints
                .iter()
                .filter(|e| e.health.outlier.is_ejected())
                .count(),
        };
        self.stats.endpoints_healthy.set(routable as i64);
        self.stats.endpoints_ejected.set(ejected as i64);
        HostSet {
            endpoints,
            pickable,
            balancer,
            routable,
            panic,
            next_return,
            mask,
        }
    }

    /// Picks an endpoint for one request: `pick_excluding(hash, &[])`.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        self.pick_excluding(hash, &[])
    }

    /// Endpoint for a try: among routable endpoints (healthy by active HC
    /// and not ejected; if the routable share < healthy_panic_threshold %,
    /// all endpoints — Envoy's panic mode), avoiding `exclude` (addresses of
    /// endpoints already tried by this request) when any other pickable
    /// endpoint exists. None when the cluster has no endpoints, or when none
    /// is routable and panic mode is off (threshold 0).
    pub fn pick_excluding(
        &self,
        hash: Option<u64>,
        exclude: &[SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        let mut hosts = self.hosts.load();
        if let Some(at) = hosts.next_return {
            let now = Instant::now();
            if now >= at && self.return_ejected(now, false) {
                hosts = self.hosts.load();
            }
        }
        let set = &hosts.pickable;
        let active = |i: usize| set.get(i).map_or(0, |e| e.active.load(Ordering::Relaxed));
        let first = set.get(hosts.balancer.pick(hash, &active)?)?;
        if exclude.is_empty() || !exclude.contains(&first.addr) {
            return Some(first.clone());
        }
        // Ask the balancer again first, so the policy (weights, least
        // request, hash affinity) still decides where it can; hashing
        // policies get a different but deterministic hash per attempt.
        for attempt in 1..=EXCLUDE_ATTEMPTS {
            let h = hash.map(|h| h.wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            if let Some(e) = hosts.balancer.pick(h, &active).and_then(|i| set.get(i)) {
                if !exclude.contains(&e.addr) {
                    return Some(e.clone());
                }
            }
        }
        // Then guarantee it: any other pickable endpoint.
        let others: Vec<&Arc<Endpoint>> =
            set.iter().filter(|e| !exclude.contains(&e.addr)).collect();
        if others.is_empty() {
            return Some(first.clone());
        }
        let i = match hash {
            Some(h) => (h % others.len() as u64) as usize,
            None => fastrand::usize(..others.len()),
        };
        others.get(i).map(|e| (*e).clone())
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    pub fn health_checks(&self) -> &[Arc<HcSettings>] {
        &self.health_checks
    }

    pub(super) fn hc_kick(&self) -> Arc<Notify> {
        self.hc_kick.clone()
    }

    /// Whether this is the newest started build of its name.
    pub(super) fn is_current(&self) -> bool {
        self.registry.is_current(&self.name, self.id)
    }

    /// Rebuilds the host set when some endpoint's routability changed since
    /// it was built (health check results, ejections by another build of
    /// this cluster during a reload).
    pub(super) fn refresh_membership(&self) {
        let Ok(_guard) = self.membership.lock() else {
            return;
        };
        self.refresh_locked(false);
    }

    /// With the membership lock held. `force`: rebuild even if nothing
    /// changed (an ejection deadline moved).
    fn refresh_locked(&self, force: bool) -> bool {
        let hosts = self.hosts.load();
        let changed = hosts
            .endpoints
            .iter()
            .zip(&hosts.mask)
            .any(|(e, &was)| e.routable() != was);
        let next_return = match self.outlier {
            None => None,
            Some(_) => hosts
                .endpoints
                .iter()
                .filter_map(|e| e.health.outlier.until())
                .min(),
        };
        if !force && !changed && next_return == hosts.next_return {
            return false;
        }
        self.hosts
            .store(Arc::new(self.host_set(hosts.endpoints.clone())));
        self.hosts_changed.notify_waiters();
        true
    }

    /// Returns ejected endpoints whose time is up. From a pick (`blocking`
    /// false) it only tries the lock: one request rebuilds, the others go
    /// on with the set they loaded. True when the host set was replaced.
    fn return_ejected(&self, now: Instant, blocking: bool) -> bool {
        let guard = if blocking {
            self.membership.lock().ok()
        } else {
            self.membership.try_lock().ok()
        };
        let Some(_guard) = guard else {
            return false;
        };
        let hosts = self.hosts.load();
        for e in hosts.endpoints.iter() {
            if e.health.outlier.maybe_return(now) {
                tracing::info!(cluster = %self.name, endpoint = %e.addr, "endpoint returned from ejection");
            }
        }
        self.refresh_locked(false)
    }

    /// A detector reached its threshold on `ep`: eject it when the enforcing
    /// percentage fires and the max ejection percentage allows.
    fn on_outlier(&self, ep: &Endpoint, t: super::outlier::Triggers, now: Instant) {
        self.on_outlier_with(ep, t, now, fastrand::u32(0..100));
    }

    /// `roll`: uniform in 0..100, for the enforcing percentages.
    fn on_outlier_with(&self, ep: &Endpoint, t: super::outlier::Triggers, now: Instant, roll: u32) {
        let Some(cfg) = &self.outlier else {
            return;
        };
        ep.health.outlier.reset(t);
        let Ok(_guard) = self.membership.lock() else {
            return;
        };
        if ep.health.outlier.is_ejected() {
            return;
        }
        let enforcing = [
            (t.consecutive_5xx, cfg.enforcing_consecutive_5xx),
            (t.gateway_failure, cfg.enforcing_consecutive_gateway_failure),
        ];
        if !enforcing
            .iter()
            .any(|&(fired, pct)| fired && enforced(pct, roll))
        {
            return;
        }
        let hosts = self.hosts.load();
        let ejected_now = hosts
            .endpoints
            .iter()
            .filter(|e| e.health.outlier.is_ejected())
            .count();
        if !may_eject(ejected_now, hosts.endpoints.len(), cfg.max_ejection_percent) {
            tracing::debug!(cluster = %self.name, endpoint = %ep.addr, "ejection skipped: max_ejection_percent reached");
            return;
        }
        if ep.health.outlier.eject(now, cfg) {
            self.stats.ejections.inc();
            tracing::info!(
                cluster = %self.name,
                endpoint = %ep.addr,
                times = ep.health.outlier.ejection().times_ejected,
                "endpoint ejected by outlier detection"
            );
            self.refresh_locked(true);
        }
    }

    /// One outlier-detection interval: ejections whose time is up end, and
    /// endpoints that stayed in shed one step of backoff.
    fn outlier_tick(&self, now: Instant) {
        let Ok(_guard) = self.membership.lock() else {
            return;
        };
        let hosts = self.hosts.load();
        for e in hosts.endpoints.iter() {
            if e.health.outlier.is_ejected() {
                if e.health.outlier.maybe_return(now) {
                    tracing::info!(cluster = %self.name, endpoint = %e.addr, "endpoint returned from ejection");
                }
            } else {
                e.health.outlier.decay();
            }
        }
        self.refresh_locked(false);
    }

    /// Replaces the endpoints after a DNS change; unchanged endpoints keep
    /// their pools and health through the registry.
    fn update_targets(self: &Arc<Self>, targets: Vec<Target>) -> Result<(), ConfigError> {
        if let Some((_, sni)) = &self.pools.tls {
            for t in &targets {
                PoolContext::server_name(sni.as_deref(), t.hostname.as_deref(), t.addr)
                    .map_err(|reason| ConfigError::new(format!("{}.tls.sni", self.name), reason))?;
            }
        }
        let endpoints = self.endpoints(targets);
        {
            let Ok(_guard) = self.membership.lock() else {
                return Ok(());
            };
            self.hosts.store(Arc::new(self.host_set(endpoints)));
        }
        self.hosts_changed.notify_waiters();
        self.hc_kick.notify_waiters();
        Ok(())
    }

    pub fn dns_refresh(&self) -> Option<Duration> {
        (self.config.kind == ClusterKind::StrictDns).then(|| {
            self.config
                .dns_refresh_rate
                .map_or(DEFAULT_DNS_REFRESH, |d| d.get())
        })
    }
}

/// Envoy's panic mode: fewer than `threshold` % of the endpoints routable.
/// A threshold of 0 (or below) disables it; an empty cluster is not in
/// panic (there is nothing to pick either way).
pub fn panic_mode(routable: usize, total: usize, threshold: f64) -> bool {
    total > 0 && threshold > 0.0 && (routable as f64) * 100.0 < threshold * total as f64
}

/// Puts a built cluster to work, once its config was accepted: applies its
/// breaker limits, makes it the acting build of its name (the previous
/// build's checkers stop), and starts its background tasks — DNS refresh,
/// active health checks, outlier-detection intervals — on the calling
/// runtime (the control runtime). Each task holds a `Weak<Cluster>` and
/// ends when a reload drops the cluster.
pub fn start(cluster: &Arc<Cluster>) {
    cluster.breakers.state().set_limits(cluster.limits);
    cluster.registry.make_current(&cluster.name, cluster.id);
    spawn_dns(cluster);
    health::spawn(cluster);
    spawn_outlier(cluster);
}

/// Kept for `Active::build`, which calls it for every cluster of an
/// accepted config: it starts everything (see [`start`]), not only DNS.
pub fn spawn_dns_refresh(cluster: &Arc<Cluster>) {
    start(cluster);
}

fn spawn_outlier(cluster: &Arc<Cluster>) {
    let Some(cfg) = &cluster.outlier else {
        return;
    };
    let period = cfg.interval;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            if !cluster.is_current() {
                return;
            }
            cluster.outlier_tick(Instant::now());
        }
    });
}

/// Resolves a cluster's endpoints: static ones parse, strict_dns ones go
/// through the system resolver (every address of a name becomes an
/// endpoint, as Envoy's STRICT_DNS does).
pub async fn resolve(cfg: &config::Cluster, path: &str) -> Result<Vec<Target>, ConfigError> {
    let mut out = Vec::new();
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        match cfg.kind {
            ClusterKind::Static => {
                let addr: SocketAddr = ep.address.parse().map_err(|e| {
                    ConfigError::new(
                        format!("{path}.endpoints[{i}].address"),
                        format!("invalid address {:?}: {e}", ep.address),
                    )
                })?;
                out.push(Target {
                    addr,
                    hostname: None,
                    weight: ep.weight,
                });
            }
            ClusterKind::StrictDns => {
                let host = ep
                    .address
                    .rsplit_once(':')
                    .map_or(ep.address.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let addrs = tokio::net::lookup_host(ep.address.as_str())
                    .await
                    .map_err(|e| {
                        ConfigError::new(
                            format!("{path}.endpoints[{i}].address"),
                            format!("cannot resolve {:?}: {e}", ep.address),
                        )
                    })?;
                let mut seen: Vec<SocketAddr> = addrs.collect();
                seen.sort();
                seen.dedup();
                let is_ip = host.parse::<std::net::IpAddr>().is_ok();
                for addr in seen {
                    out.push(Target {
                        addr,
                        hostname: (!is_ip).then(|| host.clone()),
                        weight: ep.weight,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Re-resolves a strict_dns cluster every refresh period until the
/// cluster is dropped (replaced by a reload or removed). A failed lookup
/// keeps the previous endpoints, as Envoy does.
fn spawn_dns(cluster: &Arc<Cluster>) {
    let Some(period) = cluster.dns_refresh() else {
        return;
    };
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut last: Option<Vec<SocketAddr>> = None;
        loop {
            tokio::time::sleep(period).await;
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            let resolved = resolve(&cluster.config, &cluster.name).await;
            apply_resolved(&cluster, resolved, &mut last);
        }
    });
}

/// One DNS refresh: a new answer that differs from the last one and from
/// what is serving replaces the endpoints (those that stayed keep their
/// pools through the registry); a failed lookup keeps the endpoints.
fn apply_resolved(
    cluster: &Arc<Cluster>,
    resolved: Result<Vec<Target>, ConfigError>,
    last: &mut Option<Vec<SocketAddr>>,
) {
    match resolved {
        Ok(targets) => {
            let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
            let current: Vec<SocketAddr> = cluster
                .hosts
                .load()
                .endpoints
                .iter()
                .map(|e| e.addr)
                .collect();
            if last.as_ref() != Some(&addrs) && addrs != current {
                tracing::info!(cluster = %cluster.name, endpoints = ?addrs, "DNS endpoints changed");
                if let Err(e) = cluster.update_targets(targets) {
                    tracing::warn!(cluster = %cluster.name, error = %e, "DNS update rejected");
                }
            }
            *last = Some(addrs);
        }
        Err(e) => {
            tracing::warn!(cluster = %cluster.name, error = %e, "DNS refresh failed; keeping endpoints")
        }
    }
}

#[cfg(test)]
mod tests;
