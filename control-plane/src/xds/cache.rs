//! What the server serves and what it knows about each client.
//!
//! - [`Resources`]: one immutable set of resources per type, each resource
//!   with a version (a hash of its serialized bytes) and each type with a
//!   version (a hash of its names and resource versions). Versions are
//!   content hashes so "did this type change?" is a string compare, and a
//!   restarted control plane hands out the same versions for the same file.
//! - [`SnapshotCache`]: the resources each node sees, one `watch` channel
//!   per node. Nodes follow the default snapshot unless given their own.
//! - [`debounce`]: coalesces bursts of new snapshots into one push.
//! - [`SotwStream`] / [`DeltaStream`]: the per-stream protocol state
//!   machines (version, nonce, subscriptions, ACK/NACK/stale). Pure: they
//!   take requests and snapshots and return responses plus [`Event`]s, so
//!   every protocol rule is tested without a socket.
//! - [`NodeRegistry`]: the record of every node (streams, per-type versions
//!   sent and ACKed, last NACK), fed by those events, read by the REST API
//!   and the metrics. A node that disconnects stays listed, marked
//!   disconnected, for [`Retention::keep`] (so its last NACK can still be
//!   read), then is dropped; at most [`Retention::max_disconnected`] such
//!   records are kept, the oldest dropped first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::metrics::XdsMetrics;
use super::{Mode, NodeKey, ResourceType};
use crate::clock::{Clock, SystemClock};

mod delta;
mod sotw;

pub use delta::DeltaStream;
pub use sotw::SotwStream;

/// One resource, serialized once and shared by every response carrying it.
#[derive(Debug)]
pub struct Resource {
    pub name: String,
    /// Hash of `body.value`: the per-resource version delta xDS needs.
    pub version: String,
    pub body: Any,
}

/// All resources of one type and the type's version.
#[derive(Debug, Default)]
pub struct TypeResources {
    pub version: String,
    pub resources: BTreeMap<String, Arc<Resource>>,
}

/// A complete, immutable snapshot: every type's resources.
#[derive(Debug, Default)]
pub struct Resources {
    types: [TypeResources; 4],
}

/// Per-node snapshots. Each node has its own `watch` channel, created on
/// first use; it follows the default snapshot unless pinned with
/// [`SnapshotCache::set_node`] (the serving model will give every sidecar
/// its own).
pub struct SnapshotCache {
    inner: Mutex<CacheInner>,
}

struct CacheInner {
    default: Arc<Resources>,
    nodes: HashMap<NodeKey, NodeSnapshot>,
}

struct NodeSnapshot {
    tx: watch::Sender<Arc<Resources>>,
    pinned: bool,
}

/// Which resources of one type a stream wants: everything (`wildcard`),
/// these names, or both (an explicit `*` next to names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

/// What a protocol step did, for the record, the logs and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Sent {
        ty: ResourceType,
        version: String,
        nonce: String,
        resources: usize,
        removed: usize,
    },
    Ack {
        ty: ResourceType,
        version: String,
        nonce: String,
    },
    /// `version` is the one rejected (sent with the NACKed nonce);
    /// `kept` is the one the client says it still runs.
    Nack {
        ty: ResourceType,
        version: String,
        kept: String,
        nonce: String,
        message: String,
    },
    /// A request answering a response that is no longer the latest of its
    /// type: its ACK/NACK is ignored.
    Stale {
        ty: ResourceType,
        nonce: String,
    },
    Subscribed {
        ty: ResourceType,
        sub: Subscription,
    },
    UnknownType {
        type_url: String,
    },
}

/// The responses to send (in order) and what happened.
#[derive(Debug)]
pub struct Step<R> {
    pub responses: Vec<R>,
    pub events: Vec<Event>,
}

/// Every connected node, and the recently disconnected ones, with their
/// latest state.
pub struct NodeRegistry {
    nodes: Mutex<BTreeMap<NodeKey, NodeRecord>>,
    metrics: XdsMetrics,
    clock: Arc<dyn Clock>,
    retention: Retention,
}

/// How long, and how many, disconnected nodes stay in the registry. A
/// control plane serving a churning fleet (pods come and go, each a new
/// node id) would otherwise grow its registry, and every `GET
/// /v1/xds/nodes`, without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// A disconnected node is dropped this long after its last stream
    /// closed (unless it reconnects first).
    pub keep: Duration,
    /// At most this many disconnected nodes are kept; beyond it the ones
    /// disconnected longest ago go first.
    pub max_disconnected: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Duration::from_secs(600),
            max_disconnected: 1000,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct NodeRecord {
    mode: Option<Mode>,
    streams: u32,
    types: [TypeRecord; 4],
    last_nack: Option<NackRecord>,
    last_seen_unix_ms: u64,
    /// When the last stream closed (registry clock); None while connected.
    disconnected_at: Option<Duration>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeRecord {
    pub version_sent: Option<String>,
    pub nonce: Option<String>,
    pub version_acked: Option<String>,
    /// `pending` (sent, not answered), `acked` or `nacked`: the client's
    /// answer to the latest response of this type.
    pub state: Option<&'static str>,
    pub resources_sent: usize,
    pub subscription: Option<Subscription>,
    pub last_nack: Option<NackRecord>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NackRecord {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub version: String,
    pub message: String,
    /// Wall-clock time, for people reading the API; no logic reads it.
    pub at_unix_ms: u64,
}

/// One node as the REST API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub cluster: String,
    pub mode: Option<&'static str>,
    /// False for a node whose streams all closed (kept for a while, see
    /// [`Retention`]).
    pub connected: bool,
    pub connected_streams: u32,
    pub last_seen_unix_ms: u64,
    pub last_nack: Option<NackRecord>,
    /// Keyed by short type name (`cds`, `eds`, `lds`, `rds`).
    pub types: BTreeMap<&'static str, TypeView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TypeView {
    pub type_url: &'static str,
    #[serde(flatten)]
    pub record: TypeRecord,
}

/// Keeps a node's stream count right however the stream ends.
pub struct StreamGuard {
    registry: Arc<NodeRegistry>,
    node: NodeKey,
    mode: Mode,
}

/// Nonces are unique in the process, not just per stream, so a log line
/// naming one is unambiguous.
static NEXT_NONCE: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_nonce() -> String {
    NEXT_NONCE.fetch_add(1, Ordering::Relaxed).to_string()
}

fn hash_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(bytes, 0))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data
    // (every update is a single assignment), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// === impl Resources ===

impl Resources {
    /// Builds a snapshot; prost encodes fields in tag order and the
    /// translated resources hold no maps, so equal resources have equal
    /// bytes and therefore equal versions.
    pub fn from_resources(items: Vec<(ResourceType, String, Any)>) -> Resources {
        let mut types: [TypeResources; 4] = Default::default();
        for (ty, name, body) in items {
            let version = hash_hex(&body.value);
            let r = Resource {
                name: name.clone(),
                version,
                body,
            };
            types[ty.index()].resources.insert(name, Arc::new(r));
        }
        for t in &mut types {
            let mut buf = Vec::new();
            for (name, r) in &t.resources {
                buf.extend_from_slice(name.as_bytes());
                buf.push(0);
                buf.extend_from_slice(r.version.as_bytes());
                buf.push(0);
            }
            t.version = hash_hex(&buf);
        }
        Resources { types }
    }

    pub fn get(&self, ty: ResourceType) -> &TypeResources {
        &self.types[ty.index()]
    }

    /// `cds=… eds=… lds=… rds=…`, for log lines.
    pub fn versions_summary(&self) -> String {
        let parts: Vec<String> = ResourceType::ALL
            .iter()
            .map(|t| {
                let tr = self.get(*t);
                format!("{t}={} ({})", tr.version, tr.resources.len())
            })
            .collect();
        parts.join(" ")
    }
}

// === impl SnapshotCache ===

impl SnapshotCache {
    pub fn new(initial: Arc<Resources>) -> SnapshotCache {
        SnapshotCache {
            inner: Mutex::new(CacheInner {
                default: initial,
                nodes: HashMap::new(),
            }),
        }
    }

    /// The snapshot `node` sees, as a channel that changes when it does.
    pub fn watch(&self, node: &NodeKey) -> watch::Receiver<Arc<Resources>> {
        let mut inner = lock(&self.inner);
        let default = inner.default.clone();
        inner
            .nodes
            .entry(node.clone())
            .or_insert_with(|| NodeSnapshot {
                tx: watch::Sender::new(default),
                pinned: false,
            })
            .tx
            .subscribe()
    }

    /// Replaces the default snapshot, and with it the snapshot of every
    /// node that is not pinned. Channels nobody listens to are dropped.
    pub fn set_default(&self, resources: Arc<Resources>) {
        let mut inner = lock(&self.inner);
        inner.default = resources.clone();
        inner
            .nodes
            .retain(|_, n| n.pinned || n.tx.receiver_count() > 0);
        for n in inner.nodes.values() {
            if !n.pinned {
                n.tx.send_replace(resources.clone());
            }
        }
    }

    /// Gives `node` its own snapshot, which default updates no longer touch.
    pub fn set_node(&self, node: &NodeKey, resources: Arc<Resources>) {
        let mut inner = lock(&self.inner);
        match inner.nodes.get_mut(node) {
            Some(n) => {
                n.pinned = true;
                n.tx.send_replace(resources);
            }
            None => {
                inner.nodes.insert(
                    node.clone(),
                    NodeSnapshot {
                        tx: watch::Sender::new(resources),
                        pinned: true,
                    },
                );
            }
        }
    }

    /// Returns `node` to the default snapshot.
    pub fn clear_node(&self, node: &NodeKey) {
        let mut inner = lock(&self.inner);
        let default = inner.default.clone();
        if let Some(n) = inner.nodes.get_mut(node) {
            n.pinned = false;
            n.tx.send_replace(default);
        }
    }

    pub fn default_snapshot(&self) -> Arc<Resources> {
        lock(&self.inner).default.clone()
    }
}

/// Applies the snapshots arriving on `updates` to `cache.set_default`,
/// coalesced: a snapshot is published once `quiet` has passed without a
/// newer one, and at the latest `max_delay` after the first of a burst (so
/// a source that never stops changing still gets through). Only the latest
/// snapshot of a burst is published. Returns when `updates` closes, after
/// publishing what is pending.
pub async fn debounce(
    mut updates: mpsc::Receiver<Arc<Resources>>,
    cache: Arc<SnapshotCache>,
    quiet: Duration,
    max_delay: Duration,
) {
    while let Some(first) = updates.recv().await {
        let mut latest = first;
        let deadline = tokio::time::Instant::now() + max_delay;
        loop {
            let wake = (tokio::time::Instant::now() + quiet).min(deadline);
            tokio::select! {
                next = updates.recv() => match next {
                    Some(r) => latest = r,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => break,
            }
        }
        tracing::debug!(versions = %latest.versions_summary(), "publishing snapshot");
        cache.set_default(latest);
    }
}

// === impl Subscription ===

impl Subscription {
    pub fn wildcard() -> Subscription {
        Subscription {
            wildcard: true,
            names: BTreeSet::new(),
        }
    }

    /// A state-of-the-world request's names: the complete new subscription.
    /// Empty means everything for LDS and CDS and nothing for EDS and RDS;
    /// `*` asks for everything explicitly.
    pub fn from_sotw(ty: ResourceType, names: &[String]) -> Subscription {
        if names.is_empty() {
            return Subscription {
                wildcard: ty.wildcard_when_empty(),
                names: BTreeSet::new(),
            };
        }
        let mut sub = Subscription::default();
        for n in names {
            if n == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(n.clone());
            }
        }
        sub
    }

    pub fn contains(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

// === impl NodeRegistry ===

impl NodeRegistry {
    /// A registry on the system clock with the default [`Retention`].
    pub fn new(metrics: XdsMetrics) -> NodeRegistry {
        NodeRegistry::with_clock(metrics, Arc::new(SystemClock::new()), Retention::default())
    }

    pub fn with_clock(
        metrics: XdsMetrics,
        clock: Arc<dyn Clock>,
        retention: Retention,
    ) -> NodeRegistry {
        NodeRegistry {
            nodes: Mutex::new(BTreeMap::new()),
            metrics,
            clock,
            retention,
        }
    }

    /// Counts a new stream of `node`; the guard uncounts it when dropped.
    pub fn connect(self: &Arc<Self>, node: &NodeKey, mode: Mode) -> StreamGuard {
        {
            let mut nodes = lock(&self.nodes);
            let rec = nodes.entry(node.clone()).or_default();
            rec.streams += 1;
            rec.mode = Some(mode);
            rec.last_seen_unix_ms = unix_ms();
            rec.disconnected_at = None;
            self.prune(&mut nodes);
        }
        self.metrics.stream_opened(mode);
        tracing::info!(node = %node, %mode, "xDS stream opened");
        StreamGuard {
            registry: self.clone(),
            node: node.clone(),
            mode,
        }
    }

    /// Records `events` of one of `node`'s streams; logs them and counts
    /// them in the metrics.
    pub fn record(&self, node: &NodeKey, mode: Mode, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let now = unix_ms();
        let mut nodes = lock(&self.nodes);
        let rec = nodes.entry(node.clone()).or_default();
        rec.last_seen_unix_ms = now;
        if rec.streams == 0 && rec.disconnected_at.is_none() {
            // Events of a stream already counted out: age it like one.
            rec.disconnected_at = Some(self.clock.now());
        }
        for ev in events {
            match ev {
                Event::Sent {
                    ty,
                    version,
                    nonce,
                    resources,
                    removed,
                } => {
                    let t = &mut rec.types[ty.index()];
                    t.version_sent = Some(version.clone());
                    t.nonce = Some(nonce.clone());
                    t.state = Some("pending");
                    t.resources_sent = *resources;
                    self.metrics.response_sent(*ty, mode);
                    tracing::debug!(
                        node = %node, %mode, r#type = %ty, %version, %nonce,
                        resources, removed, "sent"
                    );
                }
                Event::Ack { ty, version, nonce } => {
                    let t = &mut rec.types[ty.index()];
                    t.version_acked = Some(version.clone());
                    t.state = Some("acked");
                    self.metrics.ack(*ty);
                    tracing::info!(node = %node, %mode, r#type = %ty, %version, %nonce, "ACK");
                }
                Event::Nack {
                    ty,
                    version,
                    kept,
                    nonce,
                    message,
                } => {
                    let nack = NackRecord {
                        ty: ty.short(),
                        version: version.clone(),
                        message: message.clone(),
                        at_unix_ms: now,
                    };
                    let t = &mut rec.types[ty.index()];
                    t.state = Some("nacked");
                    t.last_nack = Some(nack.clone());
                    rec.last_nack = Some(nack);
                    self.metrics.nack(*ty);
                    tracing::warn!(
                        node = %node, %mode, r#type = %ty, rejected_version = %version,
                        kept_version = %kept, %nonce, error = %message, "NACK"
                    );
                }
                Event::Stale { ty, nonce } => {
                    self.metrics.stale(*ty);
                    tracing::debug!(node = %node, %mode, r#type = %ty, %nonce, "stale request ignored");
                }
                Event::Subscribed { ty, sub } => {
                    rec.types[ty.index()].subscription = Some(sub.clone());
                }
                Event::UnknownType { type_url } => {
                    tracing::warn!(node = %node, %mode, %type_url, "request for a type this server does not serve; ignored");
                }
            }
        }
    }

    fn disconnect(&self, node: &NodeKey, mode: Mode) {
        {
            let mut nodes = lock(&self.nodes);
            if let Some(rec) = nodes.get_mut(node) {
                rec.streams = rec.streams.saturating_sub(1);
                rec.last_seen_unix_ms = unix_ms();
                if rec.streams == 0 {
                    rec.disconnected_at = Some(self.clock.now());
                }
            }
            self.prune(&mut nodes);
        }
        self.metrics.stream_closed(mode);
        tracing::info!(node = %node, %mode, "xDS stream closed");
    }

    /// Drops the disconnected nodes past [`Retention`]: those
    /// disconnected longer than `keep`, then the oldest beyond
    /// `max_disconnected`. Runs on every connect, disconnect and listing,
    /// so the registry stays bounded without a task of its own.
    fn prune(&self, nodes: &mut BTreeMap<NodeKey, NodeRecord>) {
        let now = self.clock.now();
        let keep = self.retention.keep;
        nodes.retain(|_, rec| {
            rec.disconnected_at
                .is_none_or(|at| now.saturating_sub(at) < keep)
        });
        let mut gone: Vec<(Duration, NodeKey)> = nodes
            .iter()
            .filter_map(|(k, rec)| Some((rec.disconnected_at?, k.clone())))
            .collect();
        if gone.len() > self.retention.max_disconnected {
            gone.sort();
            let excess = gone.len() - self.retention.max_disconnected;
            for (_, k) in gone.into_iter().take(excess) {
                nodes.remove(&k);
            }
        }
    }

    /// Every node, sorted by cluster then id. Disconnected nodes stay
    /// listed for a while (`connected: false`, 0 streams) so their last
    /// NACK can still be read; see [`Retention`].
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut nodes = lock(&self.nodes);
        self.prune(&mut nodes);
        let mut out: Vec<NodeView> = nodes
            .iter()
            .map(|(k, rec)| NodeView {
                id: k.id.to_string(),
                cluster: k.cluster.to_string(),
                mode: rec.mode.map(Mode::as_str),
                connected: rec.streams > 0,
                connected_streams: rec.streams,
                last_seen_unix_ms: rec.last_seen_unix_ms,
                last_nack: rec.last_nack.clone(),
                types: ResourceType::ALL
                    .iter()
                    .filter(|t| {
                        let r = &rec.types[t.index()];
                        r.subscription.is_some() || r.version_sent.is_some()
                    })
                    .map(|t| {
                        (
                            t.short(),
                            TypeView {
                                type_url: t.type_url(),
                                record: rec.types[t.index()].clone(),
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (&a.cluster, &a.id).cmp(&(&b.cluster, &b.id)));
        out
    }

    /// Nodes whose latest response of `ty` was NACKed (for the metrics).
    pub fn nacking(&self, ty: ResourceType) -> usize {
        lock(&self.nodes)
            .values()
            .filter(|r| r.streams > 0 && r.types[ty.index()].state == Some("nacked"))
            .count()
    }

    pub fn connected_nodes(&self) -> usize {
        lock(&self.nodes).values().filter(|r| r.streams > 0).count()
    }
}

// === impl StreamGuard ===

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.registry.disconnect(&self.node, self.mode);
    }
}

#[cfg(test)]
mod tests;
