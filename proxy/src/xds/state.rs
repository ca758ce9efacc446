//! The xDS side of the proxy's config: the translated resources of every
//! type, Envoy's warming rule, and the assembly of a complete [`Bootstrap`]
//! handed to the apply function.
//!
//! ```text
//! Update(type) ─▶ translate the changed resources ─▶ any rejected? ─▶ NACK
//!        │                                               no
//!        ▼
//!   candidate = state with the update ─▶ complete? ── no ─▶ keep it, ACK (warming)
//!                                            │ yes
//!                                            ▼
//!   assemble Bootstrap (static + xDS) ─▶ same as applied? ── yes ─▶ keep it, ACK
//!                                            │ no
//!                                            ▼
//!   validate what changed ─▶ apply ─▶ ACK, commit
//!          errors map back to resources ─▶ NACK
//! ```
//!
//! Warming: a new Bootstrap is produced only when every route config named
//! by a listener, every cluster named by a listener or route, and the
//! ClusterLoadAssignment of every EDS cluster have arrived. Until then the
//! last applied config keeps serving, so a listener never answers 503 for
//! a route or cluster that is merely late.
//!
//! Cost of an update: the client leaves out the resources that did not
//! change (`Update::unchanged`), so only changed ones are translated. Every
//! translated resource is held once, behind an `Arc` that the assembled
//! config and the running config share; assembling copies pointers, "did
//! anything change" compares pointers first, and validation and the build
//! skip what is pointer-equal (or equal) to the last applied config. A
//! mesh-sized update (one route of 10,000, or two endpoints of 20,000)
//! therefore costs in proportion to the change, plus one walk over names.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use ferry_xds_client::{Handler, Outcome, Rejected, Update, XdsResource};
use prost::Message;

use super::cluster::{translate_cla, translate_cluster, XdsCluster};
use super::listener::{translate_listener, XdsListener};
use super::route::{translate_rds_encoded, RdsHashes};
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors, Validated};

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

/// Translated xDS resources by name, each shared with the configs
/// assembled from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, Arc<XdsListener>>,
    pub routes: BTreeMap<String, XdsRoute>,
    pub clusters: BTreeMap<String, Arc<XdsCluster>>,
    /// ClusterLoadAssignment name → endpoints.
    pub endpoints: BTreeMap<String, Arc<Vec<config::Endpoint>>>,
}

/// A translated route configuration, the clusters its routes name (worked
/// out once: warming asks on every update, and a mesh's route config has
/// thousands of routes), and what the next version's translation needs to
/// take its unchanged virtual hosts over.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsRoute {
    pub config: Arc<config::RouteConfig>,
    pub clusters: Arc<BTreeSet<String>>,
    hashes: Arc<RdsHashes>,
}

/// An EDS cluster as assembled (its endpoints filled in), kept while
/// neither the cluster nor its endpoints change, so the assembled configs
/// share it.
#[derive(Debug)]
struct EdsAssembly {
    from: Arc<XdsCluster>,
    endpoints: Arc<Vec<config::Endpoint>>,
    cluster: Arc<config::Cluster>,
}

/// The proxy's [`Handler`]: translates, warms, assembles, applies.
pub struct XdsState<A> {
    static_base: Bootstrap,
    runtime_dir: PathBuf,
    resources: Resources,
    /// The last config applied; shares every part with the running config.
    applied: Option<Bootstrap>,
    /// What the last applied config passed, for `validate_changes`.
    validated: Validated,
    eds: BTreeMap<String, EdsAssembly>,
    apply: A,
}

// === impl XdsRoute ===

impl XdsRoute {
    fn new(config: config::RouteConfig, hashes: RdsHashes) -> XdsRoute {
        let clusters = Arc::new(route_clusters(&config));
        XdsRoute {
            config: Arc::new(config),
            clusters,
            hashes: Arc::new(hashes),
        }
    }
}

/// Every cluster a route config's routes name.
fn route_clusters(rc: &config::RouteConfig) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            if let Some(a) = &r.route {
                if let Some(c) = &a.cluster {
                    if !out.contains(c) {
                        out.insert(c.clone());
                    }
                }
                for w in a.weighted_clusters.iter().flatten() {
                    if !out.contains(&w.name) {
                        out.insert(w.name.clone());
                    }
                }
            }
        }
    }
    out
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
        let mut absent: BTreeSet<String> = BTreeSet::new();
        let mut want = |name: &str| {
            if !known(name) {
                absent.insert(name.to_string());
            }
        };
        for l in self.listeners.values() {
            if let Some(c) = &l.listener.cluster {
                want(c);
            }
        }
        let inline: Vec<BTreeSet<String>> = self
            .listeners
            .values()
            .filter_map(|l| l.inline_route.as_deref())
            .chain(static_base.routes.iter().map(|rc| &**rc))
            .map(route_clusters)
            .collect();
        for c in inline
            .iter()
            .chain(self.routes.values().map(|r| &*r.clusters))
            .flatten()
        {
            want(c);
        }
        missing.extend(absent.into_iter().map(|c| format!("cluster {c:?}")));
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

/// The update's resources of type `T`, each decoded only when the loop gets
/// to it and dropped after it: a decoded resource is several times the size
/// of its translation (a ClusterLoadAssignment of 20 endpoints is ~10 KiB of
/// protos), and a mesh's first EDS update holds a thousand of them.
/// Resources arrive encoded, as the proxy subscribes; an update made by
/// hand carries them decoded. `Err` is the NACK sentence.
fn one_by_one<'u, T: XdsResource + Clone>(
    update: &'u Update,
) -> impl Iterator<Item = (&'u str, Result<Cow<'u, T>, String>)> + 'u {
    let kind = T::NAME;
    let encoded = update.encoded().into_iter().map(move |(name, bytes)| {
        let decoded = T::decode(bytes)
            .map(Cow::Owned)
            .map_err(|e| format!("{kind} {name:?}: cannot decode: {e}"));
        (name, decoded)
    });
    let typed = update
        .typed::<T>()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, t)| (name, Ok(Cow::Borrowed(t))));
    encoded.chain(typed)
}

/// Whether two assembled configs are the same: shared parts compare by
/// pointer, the rest (listeners, a few) by value.
fn same_config(a: &Bootstrap, b: &Bootstrap) -> bool {
    fn same<T: PartialEq>(x: &[Arc<T>], y: &[Arc<T>]) -> bool {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(p, q)| Arc::ptr_eq(p, q) || **p == **q)
    }
    a.admin == b.admin
        && a.access_log == b.access_log
        && a.xds == b.xds
        && a.listeners == b.listeners
        && same(&a.routes, &b.routes)
        && same(&a.clusters, &b.clusters)
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
            applied: None,
            validated: Validated::default(),
            eds: BTreeMap::new(),
            apply,
        }
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The update applied to a copy of the current resources (a copy of
    /// pointers), or the rejections of the resources that do not translate.
    /// Resources the update names as unchanged keep their translation.
    fn candidate(&self, update: &Update) -> Result<Resources, Vec<Rejected>> {
        let mut next = self.resources.clone();
        let mut rejected = Vec::new();
        if update.is::<Listener>() {
            for (name, l) in one_by_one::<Listener>(update) {
                match l.and_then(|l| translate_listener(&l, &self.runtime_dir)) {
                    Ok(t) => {
                        next.listeners.insert(name.to_string(), Arc::new(t));
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.listeners.remove(name);
            }
        } else if update.is::<RouteConfiguration>() {
            // Encoded, as the proxy subscribes to RDS; or decoded, as an
            // update made by hand carries it.
            let typed = update.typed::<RouteConfiguration>().unwrap_or_default();
            let list = update
                .encoded()
                .into_iter()
                .map(|(name, b)| (name, Cow::Borrowed(b)))
                .chain(
                    typed
                        .into_iter()
                        .map(|(name, rc)| (name, Cow::Owned(rc.encode_to_vec()))),
                );
            for (name, bytes) in list {
                let prev = self
                    .resources
                    .routes
                    .get(name)
                    .map(|r| (&*r.config, &*r.hashes));
                match translate_rds_encoded(&bytes, prev) {
                    Ok((config, hashes)) => {
                        next.routes
                            .insert(name.to_string(), XdsRoute::new(config, hashes));
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.routes.remove(name);
            }
        } else if update.is::<Cluster>() {
            for (name, c) in one_by_one::<Cluster>(update) {
                match c.and_then(|c| translate_cluster(&c, &self.runtime_dir)) {
                    Ok(t) => {
                        next.clusters.insert(name.to_string(), Arc::new(t));
                    }
                    Err(reason) => rejected.push(Rejected::new(name, reason)),
                }
            }
            for name in &update.removed {
                next.clusters.remove(name);
            }
        } else if update.is::<ClusterLoadAssignment>() {
            for (name, cla) in one_by_one::<ClusterLoadAssignment>(update) {
                match cla.and_then(|cla| translate_cla(&cla)) {
                    Ok(t) => {
                        next.endpoints.insert(name.to_string(), Arc::new(t));
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

    /// Static resources first (in file order), then xDS ones by name. EDS
    /// clusters whose cluster and endpoints did not change since the last
    /// assembly are the same `Arc` as then.
    fn assemble(&mut self, res: &Resources) -> Assembled {
        // Start from the whole static bootstrap, so fields the file holds
        // besides the three resource lists (admin, access log, ...) carry
        // over unchanged.
        let mut boot = self.static_base.clone();
        let mut listeners = vec![Origin::Static; boot.listeners.len()];
        let mut routes = vec![Origin::Static; boot.routes.len()];
        let mut clusters = vec![Origin::Static; boot.clusters.len()];
        let mut eds = BTreeMap::new();
        for (name, l) in &res.listeners {
            boot.listeners.push(l.listener.clone());
            listeners.push(Origin::Listener(name.clone()));
            if let Some(rc) = &l.inline_route {
                boot.routes.push(rc.clone());
                routes.push(Origin::InlineRoute(name.clone()));
            }
        }
        for (name, rc) in &res.routes {
            boot.routes.push(rc.config.clone());
            routes.push(Origin::Route(name.clone()));
        }
        let mut assemblies = BTreeMap::new();
        for (name, c) in &res.clusters {
            let cluster = match &c.eds {
                None => c.cluster.clone(),
                Some(e) => {
                    eds.insert(name.clone(), e.clone());
                    let endpoints = res.endpoints.get(e).cloned().unwrap_or_default();
                    let assembly = match self.eds.remove(name) {
                        Some(a)
                            if Arc::ptr_eq(&a.from, c) && Arc::ptr_eq(&a.endpoints, &endpoints) =>
                        {
                            a
                        }
                        _ => {
                            let mut cluster = (*c.cluster).clone();
                            cluster.endpoints = (*endpoints).clone();
                            EdsAssembly {
                                from: c.clone(),
                                endpoints,
                                cluster: Arc::new(cluster),
                            }
                        }
                    };
                    let cluster = assembly.cluster.clone();
                    assemblies.insert(name.clone(), assembly);
                    cluster
                }
            };
            boot.clusters.push(cluster);
            clusters.push(Origin::Cluster(name.clone()));
        }
        self.eds = assemblies;
        Assembled {
            boot,
            listeners,
            routes,
            clusters,
            eds,
        }
    }

    /// Handles one update; see the module docs for the flow.
    pub async fn handle(&mut self, update: Update) -> Outcome {
        let kind = update.type_url.rsplit('.').next().unwrap_or("").to_string();
        let version = update.version.clone();
        // Wall-clock measurements for the log line, not logic.
        let started = std::time::Instant::now();
        let changed = update.resources.len();
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
        let assembled = self.assemble(&next);
        if self
            .applied
            .as_ref()
            .is_some_and(|a| same_config(a, &assembled.boot))
        {
            self.resources = next;
            return self.outcome(Vec::new());
        }
        let prepared = started.elapsed();
        match self.try_apply(&assembled).await {
            Ok(validating) => {
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                tracing::info!(
                    %kind, %version, changed,
                    translate_ms = ms(prepared),
                    validate_ms = ms(validating),
                    apply_ms = ms(started.elapsed().saturating_sub(prepared + validating)),
                    "xDS config applied"
                );
                self.resources = next;
                self.outcome(Vec::new())
            }
            Err(errors) => self.outcome(assembled.reject(&errors)),
        }
    }

    /// Validates what changed since the last applied config, applies, and
    /// on success makes it the last applied. Returns how long validation
    /// took, for the log line.
    async fn try_apply(
        &mut self,
        assembled: &Assembled,
    ) -> Result<std::time::Duration, ConfigErrors> {
        let started = std::time::Instant::now();
        config::validate_changes(&assembled.boot, &self.validated)?;
        let validated = started.elapsed();
        // A copy of pointers (and of the few listeners).
        (self.apply)(assembled.boot.clone()).await?;
        self.validated = Validated::remember(&assembled.boot);
        self.applied = Some(assembled.boot.clone());
        Ok(validated)
    }

    /// Replaces the static part (the bootstrap file was reloaded) and
    /// applies it merged with the xDS resources, if they are complete. A
    /// new static part that takes away what the xDS resources need (a
    /// cluster their routes name), or whose merge does not validate or
    /// apply, is refused: logged, and the previous static part stays, so
    /// the control plane's updates keep applying meanwhile.
    pub async fn set_static(&mut self, base: Bootstrap) -> Result<(), ConfigErrors> {
        let before: BTreeSet<String> = self
            .resources
            .missing(&self.static_base)
            .into_iter()
            .collect();
        let previous = std::mem::replace(&mut self.static_base, base);
        let missing = self.resources.missing(&self.static_base);
        let taken: Vec<&String> = missing.iter().filter(|m| !before.contains(*m)).collect();
        if !taken.is_empty() {
            let errors = ConfigErrors(
                taken
                    .iter()
                    .map(|m| {
                        ConfigError::new(
                            "",
                            format!("the xDS resources need {m}, which the new static part drops"),
                        )
                    })
                    .collect(),
            );
            for e in &errors.0 {
                tracing::error!("static config rejected: {e}");
            }
            self.static_base = previous;
            return Err(errors);
        }
        if !missing.is_empty() {
            tracing::info!(
                waiting_for = %missing.join(", "),
                "static config reloaded; applied once the xDS resources are complete"
            );
            return Ok(());
        }
        let resources = self.resources.clone();
        let assembled = self.assemble(&resources);
        if self
            .applied
            .as_ref()
            .is_some_and(|a| same_config(a, &assembled.boot))
        {
            return Ok(());
        }
        match self.try_apply(&assembled).await {
            Ok(_) => {
                tracing::info!("static config reloaded and merged with the xDS resources");
                Ok(())
            }
            Err(errors) => {
                for r in assembled.reject(&errors) {
                    tracing::error!("static config rejected: {r}");
                }
                self.static_base = previous;
                Err(errors)
            }
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
