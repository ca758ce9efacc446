//! The serving model → the gateway's Envoy resources.
//!
//! - one Listener (`ferry-gateway`, on the configured address) whose HTTP
//!   connection manager fetches route configuration `ferry-gateway` over
//!   RDS;
//! - in it, one virtual host per Service, domains `{name}.{ns}.{domain}`
//!   (and the same with any port), splitting `/` over the revisions by
//!   the Route's resolved traffic percents; one virtual host per tag,
//!   `{tag}-{name}.{ns}.{domain}`, sending everything to that revision;
//! - one EDS Cluster per Revision, named `{ns}/{revision}`, whose
//!   ClusterLoadAssignment holds the revision's ready endpoints (empty at
//!   zero: a proxy holds requests for such a cluster while it activates).
//!
//! Built as the static-snapshot schema and translated by
//! [`super::translate`], so both modes share one translation and its
//! conventions (ADS config sources, explicit proto3 defaults).
//!
//! Nodes of cluster [`SIDECAR_NODE_CLUSTER`] (every instance's sidecar) get
//! the same revision clusters and virtual hosts, under route configuration
//! `ferry-outbound`, plus their own Listener `ferry-outbound` on the
//! loopback port their app calls out through ([`Sidecars`] pins each one's
//! snapshot before the sidecar starts); every other node gets the
//! gateway's.
//!
//! Every revision cluster also carries the proxy's activator role in its
//! `metadata.filter_metadata["ferry"]` (`activation: true`, `revision`,
//! `namespace`, `hold_timeout` = the revision's `timeoutSeconds`, as
//! Knative's activator holds for the revision timeout): a proxy that finds
//! the cluster without endpoints holds the request, reports the demand to
//! the control plane, and releases it when the first endpoint arrives
//! (docs/config.md, "Activator role").

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Any, Struct, Value};
use prost::{Message, Name};
use tokio::sync::watch;

use super::cache::{Resources, SnapshotCache};
use super::snapshot_file::{
    ClusterSpec, DurationSpec, EndpointSpec, LbPolicySpec, ListenerSpec, RouteConfigSpec,
    RouteSpec, SnapshotFile, VirtualHostSpec, WeightedClusterSpec,
};
use super::translate;
use super::{NodeKey, ResourceType};
use crate::model::serving::{self, Revision};
use crate::scaler::Mesh;
use crate::store::{Serving, ServingError, ServingSnapshot};

/// Name of the gateway's Listener and RouteConfiguration.
pub const GATEWAY: &str = "ferry-gateway";
/// Name of a sidecar's outbound Listener and RouteConfiguration.
pub const OUTBOUND: &str = "ferry-outbound";
/// The node cluster (`--node-cluster`, the bootstrap's `node_cluster`)
/// of every instance's sidecar: such nodes get the sidecar snapshot.
pub const SIDECAR_NODE_CLUSTER: &str = "ferry-sidecar";

/// Where the gateway listens and which domain hosts are under.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub domain: String,
}

/// The cluster serving one revision: `{namespace}/{revision}`.
pub fn cluster_name(namespace: &str, revision: &str) -> String {
    format!("{namespace}/{revision}")
}

/// The gateway's resources for `snap`; `endpoints` maps (namespace,
/// revision) to its ready `ip:port`s (absent = none).
pub fn gateway_resources(
    gw: &GatewayConfig,
    snap: &ServingSnapshot,
    endpoints: &BTreeMap<(String, String), Vec<SocketAddr>>,
) -> Resources {
    serving_resources(gw, snap, endpoints).gateway
}

/// The model's resources for both kinds of node.
pub struct ServingResources {
    /// Every node but sidecars: the gateway's listener, routes and the
    /// revision clusters.
    pub gateway: Resources,
    /// What every sidecar shares; each adds its own outbound listener.
    pub sidecar: Arc<SidecarBase>,
}

/// The sidecars' common resources: every revision cluster with its
/// endpoints, and route configuration `ferry-outbound` holding the
/// gateway's virtual hosts (the same hosts, splits and tags).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SidecarBase {
    items: Vec<(ResourceType, String, Any)>,
}

/// The gateway's and the sidecars' resources for `snap`, translated once.
pub fn serving_resources(
    gw: &GatewayConfig,
    snap: &ServingSnapshot,
    endpoints: &BTreeMap<(String, String), Vec<SocketAddr>>,
) -> ServingResources {
    let file = gateway_snapshot(gw, snap, endpoints);
    if let Err(errors) = file.validate() {
        // A bug, not bad input: the model was validated on apply. Logged
        // and served anyway; a client that disagrees NACKs, visibly.
        for e in errors {
            tracing::error!(error = %e, "generated gateway config is invalid");
        }
    }
    // The shared translation, except that revision clusters get the
    // activator metadata (the static-snapshot schema has no metadata).
    let mut shared = Vec::new();
    for c in &file.clusters {
        let mut cluster = pack(translate::cluster(c));
        if let Some(rev) = revision_of_cluster(snap, &c.name) {
            append_metadata(&mut cluster.value, &activation_fields(rev));
        }
        shared.push((ResourceType::Cluster, c.name.clone(), cluster));
        shared.push((
            ResourceType::Endpoint,
            c.name.clone(),
            pack(translate::load_assignment(c)),
        ));
    }
    let mut sidecar = shared.clone();
    for r in &file.routes {
        let outbound = RouteConfigSpec {
            name: OUTBOUND.to_string(),
            virtual_hosts: r.virtual_hosts.clone(),
        };
        sidecar.push((
            ResourceType::Route,
            OUTBOUND.to_string(),
            pack(translate::route_config(&outbound)),
        ));
    }
    let mut gateway = shared;
    for l in &file.listeners {
        gateway.push((
            ResourceType::Listener,
            l.name.clone(),
            pack(translate::listener(l)),
        ));
    }
    for r in &file.routes {
        gateway.push((
            ResourceType::Route,
            r.name.clone(),
            pack(translate::route_config(r)),
        ));
    }
    ServingResources {
        gateway: Resources::from_resources(gateway),
        sidecar: Arc::new(SidecarBase { items: sidecar }),
    }
}

/// One sidecar's resources: the common ones plus its outbound Listener on
/// `outbound`, whose routes are the mesh's.
pub fn sidecar_resources(base: &SidecarBase, outbound: SocketAddr) -> Resources {
    let listener = ListenerSpec {
        name: OUTBOUND.to_string(),
        address: outbound.ip().to_string(),
        port: outbound.port(),
        route_config: OUTBOUND.to_string(),
        stat_prefix: Some("outbound".to_string()),
    };
    let mut items = base.items.clone();
    items.push((
        ResourceType::Listener,
        OUTBOUND.to_string(),
        pack(translate::listener(&listener)),
    ));
    Resources::from_resources(items)
}

/// The xDS node of an instance's sidecar.
pub fn sidecar_node(id: &str) -> NodeKey {
    NodeKey::new(id, SIDECAR_NODE_CLUSTER)
}

/// Every running sidecar's snapshot in the cache: the latest
/// [`SidecarBase`] plus the node's own outbound listener. The process
/// scaler registers a sidecar (through [`Mesh`]) before starting it, so
/// its first request already finds its snapshot, never the gateway's.
pub struct Sidecars {
    cache: Arc<SnapshotCache>,
    xds_address: String,
    state: Mutex<SidecarState>,
}

struct SidecarState {
    base: Arc<SidecarBase>,
    /// Node id → outbound listener address.
    outbound: BTreeMap<String, SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments and cache calls; the
    // state behind a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sidecars {
    /// `xds_address` is what sidecars connect to (`http://host:port`).
    pub fn new(cache: Arc<SnapshotCache>, xds_address: String, base: Arc<SidecarBase>) -> Self {
        Sidecars {
            cache,
            xds_address,
            state: Mutex::new(SidecarState {
                base,
                outbound: BTreeMap::new(),
            }),
        }
    }

    /// The model changed: every sidecar gets the new common resources
    /// (nothing is pushed when they are the same).
    pub fn set_base(&self, base: Arc<SidecarBase>) {
        let mut st = lock(&self.state);
        if *st.base == *base {
            return;
        }
        st.base = base;
        for (node, outbound) in &st.outbound {
            self.cache.set_node(
                &sidecar_node(node),
                Arc::new(sidecar_resources(&st.base, *outbound)),
            );
        }
    }

    /// The sidecars registered now, with their outbound addresses.
    pub fn registered(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.state)
            .outbound
            .iter()
            .map(|(n, a)| (n.clone(), *a))
            .collect()
    }
}

impl Mesh for Sidecars {
    fn xds_address(&self) -> &str {
        &self.xds_address
    }

    fn node_cluster(&self) -> &str {
        SIDECAR_NODE_CLUSTER
    }

    fn register(&self, node: &str, outbound: SocketAddr) {
        let mut st = lock(&self.state);
        st.outbound.insert(node.to_string(), outbound);
        self.cache.set_node(
            &sidecar_node(node),
            Arc::new(sidecar_resources(&st.base, outbound)),
        );
    }

    fn unregister(&self, node: &str) {
        let mut st = lock(&self.state);
        if st.outbound.remove(node).is_some() {
            self.cache.clear_node(&sidecar_node(node));
        }
    }
}

impl fmt::Debug for Sidecars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sidecars")
            .field("xds_address", &self.xds_address)
            .field("registered", &lock(&self.state).outbound.len())
            .finish()
    }
}

/// The gateway's and the sidecars' resources for the model as stored now.
pub async fn model_resources(
    serving: &Serving,
    gateway: &GatewayConfig,
) -> Result<ServingResources, ServingError> {
    let snap = serving.snapshot(None).await?;
    let endpoints = serving.runtime().endpoints();
    Ok(serving_resources(gateway, &snap, &endpoints))
}

/// Publishes the model's resources on every store or runtime change: the
/// gateway's as the cache's default snapshot, and every registered
/// sidecar's. The first change after a quiet spell goes out at once (an
/// instance that just became ready has a held request waiting for it);
/// the changes that follow within `min_interval` of a publication are
/// coalesced into one at its end (an apply's commits, endpoints arriving
/// together), translated from the state of that moment, so nothing is
/// ever published stale. Returns when `shutdown` is set.
pub async fn publish_model(
    serving: Arc<Serving>,
    gateway: GatewayConfig,
    cache: Arc<SnapshotCache>,
    sidecars: Option<Arc<Sidecars>>,
    min_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut store_version, mut runtime_version) = serving.watch();
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            r = store_version.changed() => if r.is_err() { return },
            r = runtime_version.changed() => if r.is_err() { return },
        }
        if let Some(at) = last {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(at + min_interval) => {}
            }
        }
        if *shutdown.borrow() {
            return;
        }
        // What is translated now includes every change so far.
        store_version.borrow_and_update();
        runtime_version.borrow_and_update();
        match model_resources(&serving, &gateway).await {
            Ok(resources) => {
                if let Some(s) = &sidecars {
                    s.set_base(resources.sidecar);
                }
                tracing::debug!(
                    versions = %resources.gateway.versions_summary(),
                    "publishing the model's resources"
                );
                cache.set_default(Arc::new(resources.gateway));
            }
            // The previous resources keep serving; the next change retries.
            Err(e) => tracing::error!(error = %e, "translating the model failed"),
        }
        last = Some(tokio::time::Instant::now());
    }
}

/// Key under `filter_metadata` that Ferry's proxies read.
pub const FERRY_METADATA: &str = "ferry";

fn revision_of_cluster<'a>(snap: &'a ServingSnapshot, cluster: &str) -> Option<&'a Revision> {
    snap.revisions
        .iter()
        .find(|r| cluster_name(&r.metadata.namespace, &r.metadata.name) == cluster)
}

/// The activator role's fields for a revision's cluster, sorted by key.
pub fn activation_fields(rev: &Revision) -> Vec<(&'static str, Value)> {
    let string = |s: String| Value {
        kind: Some(ValueKind::StringValue(s)),
    };
    vec![
        (
            "activation",
            Value {
                kind: Some(ValueKind::BoolValue(true)),
            },
        ),
        (
            "hold_timeout",
            string(format!("{}s", rev.spec.timeout_seconds_or_default())),
        ),
        ("namespace", string(rev.metadata.namespace.clone())),
        ("revision", string(rev.metadata.name.clone())),
    ]
}

/// `Cluster.metadata` field number.
const CLUSTER_METADATA: u32 = 25;

/// Appends `metadata { filter_metadata { key: "ferry" value: Struct } }`
/// to an encoded Cluster (which has no metadata yet; a field may come
/// anywhere in a protobuf message).
///
/// Encoded by hand because prost keeps `Struct.fields` in a `HashMap`,
/// whose iteration order differs between instances: the same metadata
/// would encode differently on every translation, and since a resource's
/// version is the hash of its bytes, every model change would re-push
/// every cluster. Here the fields go out in the given (sorted) order; a
/// map is a repeated entry, so one-entry maps laid end to end are the
/// whole map.
pub fn append_metadata(cluster: &mut Vec<u8>, fields: &[(&str, Value)]) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut st = Vec::new();
    for (k, v) in fields {
        let one = Struct {
            fields: std::iter::once(((*k).to_string(), v.clone())).collect(),
        };
        one.encode(&mut st).unwrap_or_default();
    }
    let length_delimited = |field: u32, body: &[u8], out: &mut Vec<u8>| {
        encode_key(field, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    };
    // map<string, Struct> entry: key = 1, value = 2.
    let mut entry = Vec::new();
    length_delimited(1, FERRY_METADATA.as_bytes(), &mut entry);
    length_delimited(2, &st, &mut entry);
    // Metadata.filter_metadata = 1.
    let mut metadata = Vec::new();
    length_delimited(1, &entry, &mut metadata);
    length_delimited(CLUSTER_METADATA, &metadata, cluster);
}

fn pack<T: Message + Name>(m: T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The same, in the static snapshot's schema (readable in tests and
/// dumps).
pub fn gateway_snapshot(
    gw: &GatewayConfig,
    snap: &ServingSnapshot,
    endpoints: &BTreeMap<(String, String), Vec<SocketAddr>>,
) -> SnapshotFile {
    let revision = |ns: &str, name: &str| -> Option<&Revision> {
        snap.revisions
            .iter()
            .find(|r| r.metadata.namespace == ns && r.metadata.name == name)
    };
    let timeout_of = |ns: &str, names: &[&str]| -> DurationSpec {
        let secs = names
            .iter()
            .filter_map(|n| revision(ns, n))
            .map(|r| r.spec.timeout_seconds_or_default())
            .max()
            .unwrap_or(serving::DEFAULT_TIMEOUT_SECONDS);
        DurationSpec(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    };

    let mut virtual_hosts = Vec::new();
    for route in &snap.routes {
        let ns = &route.metadata.namespace;
        let name = &route.metadata.name;
        // Several entries may name one revision (a tagged 0 % entry next
        // to the main one): their percents add up.
        let mut weights: BTreeMap<&str, u32> = BTreeMap::new();
        for t in &route.status.traffic {
            let (Some(rev), Some(pct)) = (t.revision_name.as_deref(), t.percent) else {
                continue;
            };
            let pct = u32::try_from(pct).unwrap_or(0);
            if pct > 0 && revision(ns, rev).is_some() {
                *weights.entry(rev).or_default() += pct;
            }
        }
        if !weights.is_empty() {
            let names: Vec<&str> = weights.keys().copied().collect();
            let host = serving::host(name, ns, &gw.domain);
            virtual_hosts.push(VirtualHostSpec {
                name: format!("{ns}/{name}"),
                domains: vec![host.clone(), format!("{host}:*")],
                routes: vec![split_route(ns, &weights, timeout_of(ns, &names))],
            });
        }
        for t in &route.status.traffic {
            let (Some(tag), Some(rev)) = (t.tag.as_deref(), t.revision_name.as_deref()) else {
                continue;
            };
            if revision(ns, rev).is_none() {
                continue;
            }
            let host = serving::tag_host(tag, name, ns, &gw.domain);
            virtual_hosts.push(VirtualHostSpec {
                name: format!("{ns}/{name}/{tag}"),
                domains: vec![host.clone(), format!("{host}:*")],
                routes: vec![RouteSpec {
                    prefix: Some(String::new()),
                    cluster: Some(cluster_name(ns, rev)),
                    timeout: Some(timeout_of(ns, &[rev])),
                    ..Default::default()
                }],
            });
        }
    }

    let clusters = snap
        .revisions
        .iter()
        .map(|r| {
            let ns = &r.metadata.namespace;
            let rev = &r.metadata.name;
            let eps = endpoints
                .get(&(ns.clone(), rev.clone()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            ClusterSpec {
                name: cluster_name(ns, rev),
                // Least-request suits concurrency-bounded instances: it
                // steers away from the one with a full queue.
                lb_policy: LbPolicySpec::LeastRequest,
                connect_timeout: DurationSpec(Duration::from_secs(5)),
                endpoints: eps
                    .iter()
                    .map(|a| EndpointSpec {
                        address: a.ip().to_string(),
                        port: a.port(),
                        weight: 1,
                    })
                    .collect(),
            }
        })
        .collect();

    SnapshotFile {
        listeners: vec![ListenerSpec {
            name: GATEWAY.to_string(),
            address: gw.listen.ip().to_string(),
            port: gw.listen.port(),
            route_config: GATEWAY.to_string(),
            stat_prefix: None,
        }],
        routes: vec![RouteConfigSpec {
            name: GATEWAY.to_string(),
            virtual_hosts,
        }],
        clusters,
    }
}

fn split_route(ns: &str, weights: &BTreeMap<&str, u32>, timeout: DurationSpec) -> RouteSpec {
    let mut route = RouteSpec {
        prefix: Some(String::new()),
        timeout: Some(timeout),
        ..Default::default()
    };
    if weights.len() == 1 {
        route.cluster = weights.keys().next().map(|rev| cluster_name(ns, rev));
    } else {
        route.weighted_clusters = Some(
            weights
                .iter()
                .map(|(rev, w)| WeightedClusterSpec {
                    name: cluster_name(ns, rev),
                    weight: *w,
                })
                .collect(),
        );
    }
    route
}

#[cfg(test)]
mod tests;
