//! A cluster at run time: its endpoints, their balancer and pools.
//!
//! The endpoint set lives behind its own `ArcSwap` because it changes
//! without a config change (DNS re-resolution now, EDS later); the request
//! path loads it once per pick.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::lb::{Balancer, LbEndpoint};
use super::pool::{Pool, PoolSettings};
use super::tls::client_config;
use crate::config::{self, ClusterKind, ConfigError, ConfigErrors, LbPolicy, UpstreamProtocol};
use crate::stats::ClusterStats;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
const DEFAULT_MAX_IDLE: u32 = 256;

pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, what ring hash and Maglev hash.
    pub key: String,
    /// The name it was resolved from (strict_dns), for `/clusters`.
    pub hostname: Option<String>,
    pub weight: u32,
    pub pool: Arc<Pool>,
    /// In-flight requests, for least request.
    pub active: AtomicU32,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
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

pub struct HostSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
}

pub struct Cluster {
    pub name: Arc<str>,
    pub config: config::Cluster,
    pub hosts: ArcSwap<HostSet>,
    pub stats: ClusterStats,
    pub protocol: UpstreamProtocol,
    /// Ring hash and Maglev want the route's hash; others don't, so the
    /// router skips computing it.
    pub uses_hash: bool,
    settings: PoolSettings,
    registry: Arc<PoolRegistry>,
}

/// Pools outlive config reloads: a cluster rebuilt with the same endpoint
/// and connection settings gets the same pool back, idle connections and
/// all.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<HashMap<PoolKey, Weak<Pool>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster: Arc<str>,
    addr: SocketAddr,
    /// Everything in the cluster config that shapes a connection.
    fingerprint: String,
}

impl PoolRegistry {
    fn get_or_make(&self, key: PoolKey, make: impl FnOnce() -> Pool) -> Arc<Pool> {
        let Ok(mut pools) = self.pools.lock() else {
            return Arc::new(make());
        };
        if let Some(p) = pools.get(&key).and_then(Weak::upgrade) {
            return p;
        }
        let p = Arc::new(make());
        pools.insert(key, Arc::downgrade(&p));
        p
    }

    /// Closes expired idle connections everywhere and forgets dead pools.
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
    }
}

fn fingerprint(c: &config::Cluster) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        c.protocol, c.connect_timeout, c.idle_timeout, c.max_idle_per_endpoint, c.tls
    )
}

/// A resolved endpoint before it has a pool.
pub struct Target {
    pub addr: SocketAddr,
    pub hostname: Option<String>,
    pub weight: u32,
}

impl Cluster {
    /// Builds a cluster. `targets`: its endpoints, already resolved (see
    /// [`resolve`]). `path`: the config path, for errors.
    pub fn build(
        cfg: &config::Cluster,
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
        let base = PoolSettings {
            protocol: cfg.protocol,
            connect_timeout: cfg
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get()),
            idle_timeout: cfg.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.get()),
            max_idle: cfg.max_idle_per_endpoint.unwrap_or(DEFAULT_MAX_IDLE) as usize,
            tls: None,
        };
        let cluster = Arc::new(Cluster {
            name,
            config: cfg.clone(),
            hosts: ArcSwap::from_pointee(HostSet {
                endpoints: Vec::new(),
                balancer: Balancer::new(cfg, &[]),
            }),
            stats,
            protocol: cfg.protocol,
            uses_hash: matches!(cfg.lb_policy, LbPolicy::RingHash | LbPolicy::Maglev),
            settings: base,
            registry: registry.clone(),
        });
        let hosts = cluster.host_set(targets, tls.as_ref(), path)?;
        cluster.hosts.store(Arc::new(hosts));
        Ok(cluster)
    }

    fn host_set(
        &self,
        targets: Vec<Target>,
        tls: Option<&(TlsConnector, Option<String>)>,
        path: &str,
    ) -> Result<HostSet, ConfigError> {
        let fp = fingerprint(&self.config);
        let mut endpoints = Vec::with_capacity(targets.len());
        for t in targets {
            let mut settings = self.settings.clone();
            if let Some((connector, sni)) = tls {
                let server_name = match sni.as_deref().or(t.hostname.as_deref()) {
                    Some(name) => ServerName::try_from(name.to_string()).map_err(|e| {
                        ConfigError::new(
                            format!("{path}.tls.sni"),
                            format!("invalid server name {name:?}: {e}"),
                        )
                    })?,
                    None => ServerName::IpAddress(t.addr.ip().into()),
                };
                settings.tls = Some((connector.clone(), server_name));
            }
            let key = PoolKey {
                cluster: self.name.clone(),
                addr: t.addr,
                fingerprint: format!("{fp}|{:?}", t.hostname),
            };
            let stats = self.stats.clone();
            let pool = self
                .registry
                .get_or_make(key, || Pool::new(t.addr, settings, stats));
            endpoints.push(Arc::new(Endpoint {
                addr: t.addr,
                key: t.addr.to_string(),
                hostname: t.hostname,
                weight: t.weight.max(1),
                pool,
                active: AtomicU32::new(0),
                rq_total: AtomicU64::new(0),
                rq_error: AtomicU64::new(0),
            }));
        }
        let lb: Vec<LbEndpoint<'_>> = endpoints
            .iter()
            .map(|e| LbEndpoint {
                key: &e.key,
                weight: e.weight,
            })
            .collect();
        let balancer = Balancer::new(&self.config, &lb);
        Ok(HostSet {
            endpoints,
            balancer,
        })
    }

    /// Picks an endpoint for one request.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        let hosts = self.hosts.load();
        let i = hosts.balancer.pick(hash, &|i| {
            hosts
                .endpoints
                .get(i)
                .map_or(0, |e| e.active.load(Ordering::Relaxed))
        })?;
        hosts.endpoints.get(i).cloned()
    }

    /// Replaces the endpoints after a DNS change; unchanged endpoints keep
    /// their pools through the registry.
    fn update_targets(&self, targets: Vec<Target>) -> Result<(), ConfigError> {
        let tls = match &self.config.tls {
            None => None,
            Some(t) => Some((
                TlsConnector::from(client_config(t, self.protocol, &self.name)?),
                t.sni.clone(),
            )),
        };
        let hosts = self.host_set(targets, tls.as_ref(), &self.name)?;
        self.hosts.store(Arc::new(hosts));
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
pub fn spawn_dns_refresh(cluster: &Arc<Cluster>) {
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
            match resolve(&cluster.config, &cluster.name).await {
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
                    last = Some(addrs);
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, error = %e, "DNS refresh failed; keeping endpoints")
                }
            }
        }
    });
}
