//! The serving form of a config: route tables compiled, clusters resolved
//! with their pools, TLS acceptors loaded. Built off the request path, then
//! published with one `ArcSwap::store`; requests load it once each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLogger;
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors, ListenerProtocol};
use crate::listener::tls::acceptor;
use crate::router::RouteTable;
use crate::stats::ListenerStats;
use crate::upstream::{self, Cluster, PoolRegistry};

pub struct Active {
    pub config: Arc<Bootstrap>,
    pub listeners: HashMap<Arc<str>, Arc<ListenerRt>>,
    pub clusters: Vec<Arc<Cluster>>,
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
}

impl Active {
    /// Compiles a validated config. Every error is reported; nothing is
    /// published unless all of it builds.
    pub async fn build(
        boot: Bootstrap,
        registry: &Arc<PoolRegistry>,
        access_log: Option<Arc<AccessLogger>>,
    ) -> Result<Active, ConfigErrors> {
        let mut errors = Vec::new();

        let mut clusters = Vec::with_capacity(boot.clusters.len());
        let mut cluster_index = HashMap::new();
        for (i, c) in boot.clusters.iter().enumerate() {
            let path = format!("clusters[{i}]");
            let targets = match upstream::resolve(c, &path).await {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match Cluster::build(c, &path, targets, registry) {
                Ok(cluster) => {
                    cluster_index.insert(c.name.clone(), clusters.len());
                    clusters.push(cluster);
                }
                Err(e) => errors.extend(e.0),
            }
        }

        let mut tables: HashMap<&str, Arc<RouteTable>> = HashMap::new();
        for (i, rc) in boot.routes.iter().enumerate() {
            let lookup = |name: &str| cluster_index.get(name).copied();
            match RouteTable::build(rc, &format!("routes[{i}]"), &lookup) {
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
            let name: Arc<str> = Arc::from(l.name.as_str());
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
                }),
            );
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        for c in &clusters {
            upstream::spawn_dns_refresh(c);
        }
        Ok(Active {
            config: Arc::new(boot),
            listeners,
            clusters,
            cluster_index,
            access_log,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRt>> {
        self.listeners.get(name)
    }
}
