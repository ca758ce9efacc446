//! The xDS side of the proxy's config: the translated resources of every
//! type, Envoy's warming rule, and the assembly of a complete [`Bootstrap`]
//! handed to the apply function.
//!
//! ```text
//! Update(type) ─▶ translate each resource ─▶ any rejected? ─▶ NACK
//!        │                                         no
//!        ▼
//!   candidate = state with the update ─▶ complete? ── no ─▶ keep it, ACK (warming)
//!                                            │ yes
//!                                            ▼
//!        assemble Bootstrap (static + xDS) ─▶ validate ─▶ apply ─▶ ACK, commit
//!                                    errors map back to resources ─▶ NACK
//! ```
//!
//! Warming: a new Bootstrap is produced only when every route config named
//! by a listener, every cluster named by a listener or route, and the
//! ClusterLoadAssignment of every EDS cluster have arrived. Until then the
//! last applied config keeps serving, so a listener never answers 503 for
//! a route or cluster that is merely late.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use ferry_xds_client::{Handler, Outcome, Rejected, Update};

use super::cluster::{translate_cla, translate_cluster, XdsCluster};
use super::listener::{translate_listener, XdsListener};
use super::route::translate_rds;
use crate::config::{self, Bootstrap, ConfigErrors};

/// Where each entry of an assembled Bootstrap section came from, so a
/// validation error at `clusters[3]` can name the resource to NACK.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    Static,
    Listener(String),
    /// An inline route config, owned by this listener.
    InlineRoute(String),
    Route(String),
    Cluster(String),
}

/// The assembled config and where each entry came from.
#[derive(Debug)]
struct Assembled {
    boot: Bootstrap,
    listeners: Vec<Origin>,
    routes: Vec<Origin>,
    clusters: Vec<Origin>,
    /// Cluster name → its CLA name, for EDS clusters.
    eds: BTreeMap<String, String>,
}

/// Translated xDS resources by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, XdsListener>,
    pub routes: BTreeMap<String, config::RouteConfig>,
    pub clusters: BTreeMap<String, XdsCluster>,
    /// ClusterLoadAssignment name → endpoints.
    pub endpoints: BTreeMap<String, Vec<config::Endpoint>>,
}

/// The proxy's [`Handler`]: translates, warms, assembles, applies.
pub struct XdsState<A> {
    static_base: Bootstrap,
    runtime_dir: PathBuf,
    resources: Resources,
    last_applied: Option<Bootstrap>,
    apply: A,
}

// === impl Resources ===

impl Resources {
    /// The ClusterLoadAssignments the EDS clusters wait for.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds.clone())
            .collect()
    }

    /// The route configurations the listeners name over RDS.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|l| l.rds.clone())
            .collect()
    }

    /// What is still missing before a config can be assembled; empty when
    /// complete.
    pub fn missing(&self, static_base: &Bootstrap) -> Vec<String> {
        let mut missing = Vec::new();
        for l in self.listeners.values() {
            if let Some(r) = &l.rds {
                if !self.routes.contains_key(r) && !static_base.routes.iter().any(|s| &s.name == r)
                {
                    missing.push(format!(
                        "route config {r:?} (listener {:?})",
                        l.listener.name
                    ));
                }
            }
        }
        let known = |name: &str| {
            self.clusters.contains_key(name) || static_base.clusters.iter().any(|c| c.name == name)
        };
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for l in self.listeners.values() {
            if let Some(c) = &l.listener.cluster {
                wanted.insert(c);
            }
        }
        let routes = self
            .listeners
            .values()
            .filter_map(|l| l.inline_route.as_ref())
            .chain(self.routes.values())
            .chain(static_base.routes.iter());
        for rc in routes {
            for vh in &rc.virtual_hosts {
                for r in &vh.routes {
                    if let Some(a) = &r.route {
                        wanted.extend(a.cluster.as_deref());
                        for w in a.weighted_clusters.iter().flatten() {
                            wanted.insert(&w.name);
                        }
                    }
                }
            }
        }
        for c in wanted {
            if !known(c) {
                missing.push(format!("cluster {c:?}"));
            }
        }
        for c in self.clusters.values() {
            if let Some(e) = &c.eds {
                if !self.endpoints.contains_key(e) {
                    missing.push(format!("endpoints {e:?} (cluster {:?})", c.cluster.name));
                }
            }
        }
        missing
    }

    /// Drops route configs and endpoints nothing subscribes to any more.
    fn prune(&mut self) {
        let eds = self.eds_names();
        let rds = self.rds_names();
        self.endpoints.retain(|k, _| eds.contains(k));
        self.routes.retain(|k, _| rds.contains(k));
    }

    /// Static resources first (in file order), then xDS ones by name.
    fn assemble(&self, static_base: &Bootstrap) -> Assembled {
        // Start from the whole static bootstrap, so fields the file holds
        // besides the three resource lists (admin, access log, ...) carry
        // over unchanged.
        let mut boot = static_base.clone();
        let mut listeners = vec![Origin::Static; boot.listeners.len()];
        let mut routes = vec![Origin::Static; boot.routes.len()];
        let mut clusters = vec![Origin::Static; boot.clusters.len()];
        let mut eds = BTreeMap::new();
        for (name, l) in &self.listeners {
            boot.listeners.push(l.listener.clone());
            listeners.push(Origin::Listener(name.clone()));
            if let Some(rc) = &l.inline_route {
                boot.routes.push(rc.clone());
                routes.push(Origin::InlineRoute(name.clone()));
            }
        }
        for (name, rc) in &self.routes {
            boot.routes.push(rc.clone());
            routes.push(Origin::Route(name.clone()));
        }
        for (name, c) in &self.clusters {
            let mut cluster = c.cluster.clone();
            if let Some(e) = &c.eds {
                cluster.endpoints = self.endpoints.get(e).cloned().unwrap_or_default();
                eds.insert(name.clone(), e.clone());
            }
            boot.clusters.push(cluster);
            clusters.push(Origin::Cluster(name.clone()));
        }
        Assembled {
            boot,
            listeners,
            routes,
            clusters,
            eds,
        }
    }
}

// === impl Assembled ===

impl Assembled {
    /// Each config error as a rejection of the resource it came from: the
    /// path's first segment (`clusters[3]`) names the entry, the rest is
    /// reported relative to it.
    fn reject(&self, errors: &ConfigErrors) -> Vec<Rejected> {
        errors
            .0
            .iter()
            .map(|e| self.reject_one(&e.path, &e.reason))
            .collect()
    }

    fn reject_one(&self, path: &str, reason: &str) -> Rejected {
        let parsed = ["listeners", "routes", "clusters"]
            .iter()
            .find_map(|section| {
                let rest = path.strip_prefix(section)?.strip_prefix('[')?;
                let (index, tail) = rest.split_once(']')?;
                let index: usize = index.parse().ok()?;
                Some((*section, index, tail.trim_start_matches('.')))
            });
        let Some((section, index, tail)) = parsed else {
            return Rejected::new("", format!("{path}: {reason}"));
        };
        let origin = match section {
            "listeners" => self.listeners.get(index),
            "routes" => self.routes.get(index),
            _ => self.clusters.get(index),
        };
        let at = |tail: &str| {
            if tail.is_empty() {
                reason.to_string()
            } else {
                format!("{tail}: {reason}")
            }
        };
        match origin {
            Some(Origin::Listener(n)) => Rejected::new(n, format!("listener {n:?}: {}", at(tail))),
            Some(Origin::InlineRoute(n)) => Rejected::new(
                n,
                format!("listener {n:?}: (inline route_config) {}", at(tail)),
            ),
            Some(Origin::Route(n)) => {
                Rejected::new(n, format!("route_configuration {n:?}: {}", at(tail)))
            }
            Some(Origin::Cluster(n)) => match self.eds.get(n) {
                // An endpoint error is the ClusterLoadAssignment's fault.
                Some(cla) if tail.starts_with("endpoints") => Rejected::new(
                    cla,
                    format!(
                        "cluster_load_assignment {cla:?} (cluster {n:?}): {}",
                        at(tail)
                    ),
                ),
                _ => Rejected::new(n, format!("cluster {n:?}: {}", at(tail))),
            },
            Some(Origin::Static) | None => {
                Rejected::new("", format!("static bootstrap {path}: {reason}"))
            }
        }
    }
}

// === impl XdsState ===

impl<A, F> XdsState<A>
where
    A: FnMut(Bootstrap) -> F + Send,
    F: Future<Output = Result<(), ConfigErrors>> + Send,
{
    pub fn new(static_base: Bootstrap, runtime_dir: PathBuf, apply: A) -> Self {
        XdsState {
            static_base,
            runtime_dir,
            resources: Resources::default(),
            last_applied: None,
            apply,
        }
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The update applied to a copy of the current resources, or the
    /// rejections of the resources that do not translate.
    fn candidate(&self, update: &Update) -> Result<Resources, Vec<Rejected>> {
        let mut next = self.resources.clone();
        let mut rejected = Vec::new();
        if let Some(list) = update.typed::<Listener>() {
            for (name, l) in list {
                match translate_listener(l, &self.runtime_dir) {
                    Ok(t) => {
                        next.listeners.insert(name.to_string(), t);
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.listeners.remove(name);
            }
        } else if let Some(list) = update.typed::<RouteConfiguration>() {
            for (name, rc) in list {
                match translate_rds(rc) {
                    Ok(t) => {
                        next.routes.insert(name.to_string(), t);
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.routes.remove(name);
            }
        } else if let Some(list) = update.typed::<Cluster>() {
            for (name, c) in list {
                match translate_cluster(c, &self.runtime_dir) {
                    Ok(t) => {
                        next.clusters.insert(name.to_string(), t);
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.clusters.remove(name);
            }
        } else if let Some(list) = update.typed::<ClusterLoadAssignment>() {
            for (name, cla) in list {
                match translate_cla(cla) {
                    Ok(t) => {
                        next.endpoints.insert(name.to_string(), t);
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.endpoints.remove(name);
            }
        } else {
            tracing::warn!(type_url = %update.type_url, "xDS type the proxy does not translate; ignored");
        }
        if rejected.is_empty() {
            next.prune();
            Ok(next)
        } else {
            Err(rejected)
        }
    }

    /// Handles one update; see the module docs for the flow.
    pub async fn handle(&mut self, update: Update) -> Outcome {
        let kind = update.type_url.rsplit('.').next().unwrap_or("").to_string();
        let version = update.version.clone();
        let next = match self.candidate(&update) {
            Ok(next) => next,
            Err(rejected) => return self.outcome(rejected),
        };
        let missing = next.missing(&self.static_base);
        if !missing.is_empty() {
            tracing::info!(
                %kind, %version, waiting_for = %missing.join(", "),
                "xDS update accepted; warming (the previous config keeps serving)"
            );
            self.resources = next;
            return self.outcome(Vec::new());
        }
        let assembled = next.assemble(&self.static_base);
        if self.last_applied.as_ref() == Some(&assembled.boot) {
            self.resources = next;
            return self.outcome(Vec::new());
        }
        if let Err(errors) = config::validate(&assembled.boot) {
            return self.outcome(assembled.reject(&errors));
        }
        match (self.apply)(assembled.boot.clone()).await {
            Ok(()) => {
                tracing::info!(%kind, %version, "xDS config applied");
                self.resources = next;
                self.last_applied = Some(assembled.boot);
                self.outcome(Vec::new())
            }
            Err(errors) => self.outcome(assembled.reject(&errors)),
        }
    }

    /// The outcome with the subscriptions of the (possibly unchanged)
    /// current state: EDS for its EDS clusters, RDS for its listeners.
    fn outcome(&self, rejected: Vec<Rejected>) -> Outcome {
        Outcome {
            rejected,
            subscriptions: Vec::new(),
        }
        .subscribe::<ClusterLoadAssignment>(self.resources.eds_names())
        .subscribe::<RouteConfiguration>(self.resources.rds_names())
    }
}

impl<A, F> Handler for XdsState<A>
where
    A: FnMut(Bootstrap) -> F + Send,
    F: Future<Output = Result<(), ConfigErrors>> + Send,
{
    fn apply(&mut self, update: Update) -> impl Future<Output = Outcome> + Send {
        self.handle(update)
    }
}
