//! The serving form of a config: route tables compiled, clusters resolved
//! with their pools, TLS acceptors loaded. Built off the request path, then
//! published with one `ArcSwap::store`; requests load it once each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_filters::{FilterChain, Registry, RouteFilters};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLogger;
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors, ListenerProtocol};
use crate::listener::tls::acceptor;
use crate::queue::Role;
use crate::router::RouteTable;
use crate::stats::ListenerStats;
use crate::upstream::{self, Cluster, PoolRegistry};

pub struct Active {
    pub config: Arc<Bootstrap>,
    pub listeners: HashMap<Arc<str>, Arc<ListenerRt>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// Each cluster's serving role (queue-proxy or activator), by the same
    /// index as `clusters`; None for a plain cluster.
    pub roles: Vec<Option<Role>>,
    pub cluster_index: HashMap<String, usize>,
    pub access_log: Option<Arc<AccessLogger>>,
}

pub struct ListenerRt {
    pub name: Arc<str>,
    pub config: config::Listener,
    pub addr: SocketAddr,
    pub protocol: ListenerProtocol,
    /// HTTP listeners.
    pub routes: Option<Arc<RouteTable>>,
    /// TCP listeners: index into `Active::clusters`.
    pub cluster: Option<usize>,
    pub tls: Option<TlsAcceptor>,
    pub stats: ListenerStats,
    /// The HTTP connection builder with this listener's limits.
    pub http: auto::Builder<TokioExecutor>,
    /// Request heads above this get 431 (the framing guard follows heads
    /// past it, see `http::framing`).
    pub max_header_bytes: usize,
    /// None: connections may idle forever.
    pub idle_timeout: Option<Duration>,
    /// None when the listener has no HTTP filters: the pipeline skips the
    /// chain entirely.
    pub filters: Option<ListenerFilters>,
}

/// A listener's filter chain and, for each route of its route config, the
/// chain as that route (and its virtual host) overrides it. Kept on the
/// listener because one route table can serve listeners with different
/// chains.
pub struct ListenerFilters {
    pub chain: FilterChain,
    routes: Vec<Vec<RouteFilters>>,
}

impl ListenerFilters {
    pub fn for_route(&self, id: crate::router::RouteId) -> Option<&RouteFilters> {
        self.routes.get(id.virtual_host)?.get(id.route)
    }
}

pub(crate) fn build_filters(
    registry: &Registry,
    l: &config::Listener,
    path: &str,
    routes: Option<(usize, &config::RouteConfig)>,
) -> Result<Option<ListenerFilters>, Vec<ConfigError>> {
    if l.http_filters.is_empty() {
        return Ok(None);
    }
    let to_config = |e: ferry_filters::FilterConfigError| ConfigError::new(e.path, e.reason);
    let chain = registry
        .build_chain(&l.http_filters, &format!("{path}.http_filters"))
        .map_err(|e| e.into_iter().map(to_config).collect::<Vec<_>>())?;
    let mut errors = Vec::new();
    let mut per_route = Vec::new();
    if let Some((ri, rc)) = routes {
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vp = format!("routes[{ri}].virtual_hosts[{i}]");
            let vh_filters = match registry.build_route_filters(
                &chain,
                None,
                &vh.per_filter_config,
                &format!("{vp}.per_filter_config"),
            ) {
                Ok(f) => f,
                Err(e) => {
                    errors.extend(e.into_iter().map(to_config));
                    chain.default_route_filters()
                }
            };
            let mut row = Vec::with_capacity(vh.routes.len());
            for (j, r) in vh.routes.iter().enumerate() {
                match registry.build_route_filters(
                    &chain,
                    Some(&vh_filters),
                    &r.per_filter_config,
                    &format!("{vp}.routes[{j}].per_filter_config"),
                ) {
                    Ok(f) => row.push(f),
                    Err(e) => errors.extend(e.into_iter().map(to_config)),
                }
            }
            per_route.push(row);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(ListenerFilters {
        chain,
        routes: per_route,
    }))
}

const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_HEADERS_KB: u32 = 60;
const DEFAULT_MAX_HEADERS: u32 = 100;

impl Active {
    /// Compiles a validated config. Every error is reported; nothing is
    /// published unless all of it builds.
    ///
    /// `prev`, the config being replaced, lends what did not change: a
    /// cluster whose config is identical keeps its runtime object (endpoints,
    /// balancer, health, background tasks), a route table whose config and
    /// cluster numbering are identical is shared, and a changed route config
    /// under the same numbering recompiles only its changed virtual hosts.
    /// An EDS update of two clusters in a mesh of a thousand then rebuilds
    /// two, not a thousand; a one-route change recompiles one virtual host;
    /// a cluster added or removed (which moves other clusters' indices)
    /// copies compiled routes with the new indices instead of compiling them.
    /// Identity is checked first (an xDS config shares unchanged parts with
    /// the one it replaces), equality only when that fails.
    pub async fn build(
        boot: Bootstrap,
        prev: Option<&Active>,
        registry: &Arc<PoolRegistry>,
        filter_registry: &Registry,
        access_log: Option<Arc<AccessLogger>>,
    ) -> Result<Active, ConfigErrors> {
        let mut errors = Vec::new();

        let mut clusters = Vec::with_capacity(boot.clusters.len());
        let mut cluster_index = HashMap::new();
        let mut fresh = vec![false; boot.clusters.len()];
        for (i, c) in boot.clusters.iter().enumerate() {
            // Not with TLS: its files may have changed on disk under an
            // unchanged config, and a reload is how an operator rotates them.
            let same = prev
                .and_then(|p| {
                    p.cluster_index
                        .get(&c.name)
                        .and_then(|&j| p.clusters.get(j))
                })
                .filter(|old| {
                    c.tls.is_none() && (Arc::ptr_eq(&old.config, c) || *old.config == **c)
                });
            if let Some(old) = same {
                cluster_index.insert(c.name.clone(), clusters.len());
                clusters.push(old.clone());
                continue;
            }
            let path = format!("clusters[{i}]");
            let targets = match upstream::resolve(c, &path).await {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match Cluster::build_shared(c.clone(), &path, targets, registry) {
                Ok(cluster) => {
                    cluster_index.insert(c.name.clone(), clusters.len());
                    if let Some(f) = fresh.get_mut(clusters.len()) {
                        *f = true;
                    }
                    clusters.push(cluster);
                }
                Err(e) => errors.extend(e.0),
            }
        }

        // Tables hold cluster indices: a previous table is shared whole only
        // under the same numbering; otherwise its virtual hosts are taken
        // over with their indices mapped to the new ones.
        let same_numbering = prev.is_some_and(|p| p.cluster_index == cluster_index);
        let renumbered: Vec<Option<usize>> = match prev {
            Some(p) if !same_numbering => p
                .clusters
                .iter()
                .map(|c| cluster_index.get(&*c.name).copied())
                .collect(),
            _ => Vec::new(),
        };
        let renumber = |old: usize| -> Option<usize> {
            if same_numbering {
                Some(old)
            } else {
                renumbered.get(old).copied().flatten()
            }
        };
        let prev_tables: HashMap<&str, (&Arc<crate::config::RouteConfig>, &Arc<RouteTable>)> = prev
            .map(|p| {
                p.listeners
                    .values()
                    .filter_map(|l| {
                        let name = l.config.route_config.as_deref()?;
                        let rc = p.config.routes.iter().find(|rc| rc.name == name)?;
                        Some((rc.name.as_str(), (rc, l.routes.as_ref()?)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut tables: HashMap<&str, Arc<RouteTable>> = HashMap::new();
        for (i, rc) in boot.routes.iter().enumerate() {
            let old = prev_tables.get(rc.name.as_str());
            let unchanged =
                old.filter(|(o, _)| same_numbering && (Arc::ptr_eq(o, rc) || **o == *rc));
            if let Some((_, table)) = unchanged {
                tables.insert(rc.name.as_str(), (*table).clone());
                continue;
            }
            let lookup = |name: &str| cluster_index.get(name).copied();
            let path = format!("routes[{i}]");
            let built = match old {
                Some((old_rc, old_table)) => {
                    RouteTable::rebuild(rc, &path, &lookup, old_rc, old_table, &renumber)
                }
                None => RouteTable::build(rc, &path, &lookup),
            };
            match built {
                Ok(t) => {
                    tables.insert(rc.name.as_str(), Arc::new(t));
                }
                Err(e) => errors.extend(e.0),
            }
        }

        let mut listeners = HashMap::new();
        for (i, l) in boot.listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            let addr: SocketAddr = match l.address.parse() {
                Ok(a) => a,
                Err(e) => {
                    errors.push(ConfigError::new(
                        format!("{path}.address"),
                        format!("invalid address {:?}: {e}", l.address),
                    ));
                    continue;
                }
            };
            let tls = match &l.tls {
                None => None,
                Some(t) => match acceptor(t, &format!("{path}.tls")) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            let (routes, cluster) = match l.protocol {
                ListenerProtocol::Http => {
                    let name = l.route_config.as_deref().unwrap_or_default();
                    match tables.get(name) {
                        Some(t) => (Some(t.clone()), None),
                        None => {
                            errors.push(ConfigError::new(
                                format!("{path}.route_config"),
                                format!("unknown route config {name:?}"),
                            ));
                            continue;
                        }
                    }
                }
                ListenerProtocol::Tcp => {
                    let name = l.cluster.as_deref().unwrap_or_default();
                    match cluster_index.get(name) {
                        Some(&c) => (None, Some(c)),
                        None => {
                            errors.push(ConfigError::new(
                                format!("{path}.cluster"),
                                format!("unknown cluster {name:?}"),
                            ));
                            continue;
                        }
                    }
                }
            };
            let route_cfg = l.route_config.as_deref().and_then(|name| {
                boot.routes
                    .iter()
                    .enumerate()
                    .find(|(_, rc)| rc.name == name)
                    .map(|(i, rc)| (i, &**rc))
            });
            let filters = match build_filters(filter_registry, l, &path, route_cfg) {
                Ok(f) => f,
                Err(e) => {
                    errors.extend(e);
                    continue;
                }
            };
            let name: Arc<str> = Arc::from(l.name.as_str());
            let limits = crate::http::server::Limits {
                headers_timeout: l
                    .request_headers_timeout
                    .map_or(DEFAULT_HEADERS_TIMEOUT, |d| d.get()),
                max_header_bytes: l.max_request_headers_kb.unwrap_or(DEFAULT_MAX_HEADERS_KB)
                    as usize
                    * 1024,
                max_headers: l.max_request_headers_count.unwrap_or(DEFAULT_MAX_HEADERS) as usize,
            };
            let idle_timeout = match l.idle_timeout.map(|d| d.get()) {
                Some(Duration::ZERO) => None,
                Some(d) => Some(d),
                None => Some(DEFAULT_IDLE_TIMEOUT),
            };
            listeners.insert(
                name.clone(),
                Arc::new(ListenerRt {
                    stats: ListenerStats::new(&l.name),
                    name,
                    config: l.clone(),
                    addr,
                    protocol: l.protocol,
                    routes,
                    cluster,
                    tls,
                    http: crate::http::server::builder(&limits),
                    max_header_bytes: limits.max_header_bytes,
                    idle_timeout,
                    filters,
                }),
            );
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Reused clusters are running already; starting one again would
        // restart its health checks and DNS refresh.
        for (c, _) in clusters.iter().zip(&fresh).filter(|(_, f)| **f) {
            upstream::start(c);
        }
        // After the clusters started: a role publishes its cluster to
        // requests held for the revision, and starts probing the app.
        let serving = crate::queue::registry();
        let roles = clusters
            .iter()
            .map(|c| Role::build(&c.config, c, serving))
            .collect();
        Ok(Active {
            config: Arc::new(boot),
            listeners,
            clusters,
            roles,
            cluster_index,
            access_log,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRt>> {
        self.listeners.get(name)
    }

    /// Whether every queue cluster's local app passes its readiness probe
    /// (true when there is none): what `/ready` reports, and so what gates
    /// this instance's endpoint.
    pub fn serving_ready(&self) -> bool {
        self.roles.iter().flatten().all(Role::ready)
    }

    /// Queue clusters whose app is not ready yet, for `/ready`'s body.
    pub fn unready_apps(&self) -> Vec<&str> {
        self.clusters
            .iter()
            .zip(&self.roles)
            .filter(|(_, r)| r.as_ref().is_some_and(|r| !r.ready()))
            .map(|(c, _)| &*c.name)
            .collect()
    }
}
