//! The Aggregated Discovery Service: Envoy v3 xDS over one gRPC stream per
//! client, state-of-the-world and delta, on the same port.
//!
//! ```text
//! snapshot file ──poll 1 s──▶ SnapshotFile ──validate──▶ translate ──▶ Resources
//!   (snapshot_file)            (field paths)             (translate)     │ debounce 10 ms
//!                                                                        ▼
//!   per node: watch<Arc<Resources>> ◀── SnapshotCache::set_default ◀────┘   (cache)
//!        │
//!        ▼ one task per stream (server): SotwStream / DeltaStream decide what to send
//!   DiscoveryResponse ──▶ client;  ACK / NACK / stale ──▶ NodeRegistry ──▶ logs, metrics, REST
//! ```
//!
//! - `snapshot_file`: the "static snapshot" YAML schema, its loading and validation.
//! - `translate`: the schema → Envoy Listener, RouteConfiguration, Cluster, ClusterLoadAssignment.
//! - `cache`: resources with their versions, the per-node snapshots, the per-stream protocol state
//!   machines (version, nonce, subscriptions, ACK/NACK/stale) and the record of every node.
//! - `server`: the tonic service that runs one state machine per stream.
//! - `metrics`: the `ferry_xds_*` Prometheus metrics.

use std::fmt;
use std::sync::Arc;

pub mod cache;
pub mod metrics;
pub mod server;
pub mod serving;
pub mod snapshot_file;
pub mod translate;

pub use cache::{NodeRegistry, Resources, Retention, SnapshotCache};
pub use metrics::XdsMetrics;
pub use server::AdsServer;
pub use snapshot_file::{SnapshotError, SnapshotFile};

/// The resource types the server knows, in the order a push sends them:
/// clusters before their endpoints and listeners before their routes, so a
/// client warming a new cluster or listener already has what it points at
/// on its way (Envoy's documented ordering for ADS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster = 0,
    Endpoint = 1,
    Listener = 2,
    Route = 3,
}

// === impl ResourceType ===

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The short name operators know (`cds`, `eds`, `lds`, `rds`), used in
    /// logs, metric labels and the REST API.
    pub const fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// In state-of-the-world, an empty name list means "everything" only
    /// for these types; for EDS and RDS it means "nothing".
    pub const fn wildcard_when_empty(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// A client as the server tells them apart: Envoy's `node.id` and
/// `node.cluster`. Two proxies sharing an id but not a cluster are two
/// nodes. The strings are shared, so the key is cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey {
    pub id: Arc<str>,
    pub cluster: Arc<str>,
}

// === impl NodeKey ===

impl NodeKey {
    pub fn new(id: &str, cluster: &str) -> NodeKey {
        NodeKey {
            id: Arc::from(id),
            cluster: Arc::from(cluster),
        }
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.id)
    }
}

/// Which flavour of the protocol a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `StreamAggregatedResources`: every response carries the full set.
    Sotw,
    /// `DeltaAggregatedResources`: responses carry changes and removals.
    Delta,
}

// === impl Mode ===

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Snapshots for the unit tests of every xds module.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use super::{snapshot_file::SnapshotFile, translate, Resources};

    /// A listener `web` routing `/` to clusters `a` and `b` split
    /// `weight_a`/`weight_b`, each cluster with one endpoint on `port_a` /
    /// 9002.
    pub fn yaml(weight_a: u32, weight_b: u32, port_a: u16) -> String {
        format!(
            r#"
listeners:
  - {{name: web, address: 127.0.0.1, port: 10000, route_config: web_routes}}
routes:
  - name: web_routes
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - prefix: ""
            weighted_clusters: [{{name: a, weight: {weight_a}}}, {{name: b, weight: {weight_b}}}]
            timeout: 5s
clusters:
  - {{name: a, endpoints: [{{address: 127.0.0.1, port: {port_a}}}]}}
  - {{name: b, lb_policy: least_request, connect_timeout: 250ms, endpoints: [{{address: 127.0.0.1, port: 9002, weight: 3}}]}}
"#
        )
    }

    pub fn resources(weight_a: u32, weight_b: u32, port_a: u16) -> Arc<Resources> {
        let file = SnapshotFile::from_yaml(&yaml(weight_a, weight_b, port_a))
            .unwrap_or_else(|e| panic!("fixture is valid: {e}"));
        Arc::new(translate::translate(&file))
    }
}
