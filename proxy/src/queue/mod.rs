//! The serving roles of a cluster (Knative's queue-proxy and activator,
//! folded into every proxy):
//!
//! - **queue** (`queue:` on a cluster — the revision's local app seen from
//!   its sidecar): a concurrency cap with a bounded FIFO queue
//!   ([`limiter`]), readiness probing of the app ([`readiness`]), and
//!   per-second statistics ([`stats`]).
//! - **activation** (`activation:` on a cluster — a revision that can be at
//!   zero): a request that finds no endpoint is held until one arrives, and
//!   the demand is reported at once ([`activator`]).
//!
//! State that must outlive a config reload — execution slots in use, the
//! stats windows, the prober, held requests — lives per revision in the
//! process-wide [`Registry`]; each build of a cluster takes its
//! [`Revision`] from there (the same way `upstream::PoolRegistry` keeps
//! pools across reloads). The `report` module reads the registry once a
//! second.

pub mod activator;
pub mod limiter;
pub mod readiness;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::HeaderName;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::config;
use crate::error::{ErrorKind, ProxyError};
use crate::upstream::Cluster;

pub use activator::Activation;
pub use limiter::{Limiter, Rejected};
pub use readiness::{ProbeSettings, Readiness};
pub use stats::{InFlight, RevisionStats};

/// Set by the activator on a request it held, so the queue-proxy of the
/// instance that serves it counts it as proxied (Knative's activator marks
/// its requests the same way).
pub const X_FERRY_PROXIED: HeaderName = HeaderName::from_static("x-ferry-proxied");
/// Knative's default queue depth per unit of container concurrency.
const QUEUE_DEPTH_PER_SLOT: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionKey {
    pub namespace: String,
    pub revision: String,
}

/// One revision's run-time state in this process.
pub struct Revision {
    pub key: RevisionKey,
    pub stats: Arc<RevisionStats>,
    /// Requests held by the activator now.
    pub held: AtomicU32,
    /// Demand appeared while the revision had no endpoint; cleared by the
    /// reporter when it sends the immediate report.
    pub demand: AtomicBool,
    /// A new build of this revision's activation cluster started: held
    /// requests look at it (a reload or an EDS update builds a new cluster).
    published: Notify,
    latest: Mutex<Weak<Cluster>>,
    /// Kept while the settings stay the same, so the slots in use survive a
    /// reload.
    limiter: Mutex<Option<Arc<Limiter>>>,
    readiness: Mutex<Option<Arc<Readiness>>>,
}

impl Revision {
    fn new(key: RevisionKey, epoch: Instant) -> Self {
        Revision {
            key,
            stats: Arc::new(RevisionStats::new(epoch)),
            held: AtomicU32::new(0),
            demand: AtomicBool::new(false),
            published: Notify::new(),
            latest: Mutex::new(Weak::new()),
            limiter: Mutex::new(None),
            readiness: Mutex::new(None),
        }
    }

    fn limiter(&self, concurrency: u32, depth: u32) -> Arc<Limiter> {
        let Ok(mut slot) = self.limiter.lock() else {
            return Arc::new(Limiter::new(concurrency, depth));
        };
        match &*slot {
            Some(l) if l.concurrency() == concurrency && l.depth() == depth => l.clone(),
            // New settings: a new limiter. Requests admitted by the old one
            // finish under it, so for one request time the app can see the
            // old and the new cap together (Knative resizes in place; a
            // resize is rare and this keeps the fast path free of it).
            _ => {
                let l = Arc::new(Limiter::new(concurrency, depth));
                *slot = Some(l.clone());
                l
            }
        }
    }

    fn readiness(
        &self,
        settings: ProbeSettings,
        targets: Vec<SocketAddr>,
        name: &str,
    ) -> Arc<Readiness> {
        let Ok(mut slot) = self.readiness.lock() else {
            return Readiness::spawn(settings, targets, name);
        };
        match &*slot {
            // Same probe, same app: keep its state, or every reload would
            // make the instance unready for a moment.
            Some(r) if r.probes(&settings, &targets) => r.clone(),
            _ => {
                let r = Readiness::spawn(settings, targets, name);
                *slot = Some(r.clone());
                r
            }
        }
    }

    /// The newest started build of this revision's activation cluster.
    fn latest(&self) -> Option<Arc<Cluster>> {
        self.latest.lock().ok().and_then(|w| w.upgrade())
    }

    fn publish(&self, cluster: &Arc<Cluster>) {
        if let Ok(mut w) = self.latest.lock() {
            *w = Arc::downgrade(cluster);
        }
        self.published.notify_waiters();
    }
}

/// Every revision this process serves or activates.
pub struct Registry {
    revisions: Mutex<HashMap<RevisionKey, Weak<Revision>>>,
    /// Wakes the reporter for an immediate report (activation demand).
    pub demand: Notify,
    /// Stats windows of every revision start on the same second boundary,
    /// so one report covers the same second for all of them.
    pub epoch: Instant,
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            revisions: Mutex::new(HashMap::new()),
            demand: Notify::new(),
            epoch: Instant::now(),
        }
    }

    /// The revision's state, created on first use.
    pub fn revision(&self, key: RevisionKey) -> Arc<Revision> {
        let Ok(mut map) = self.revisions.lock() else {
            return Arc::new(Revision::new(key, self.epoch));
        };
        if let Some(r) = map.get(&key).and_then(Weak::upgrade) {
            return r;
        }
        let r = Arc::new(Revision::new(key.clone(), self.epoch));
        map.insert(key, Arc::downgrade(&r));
        r
    }

    /// The revisions some running config still uses, by key.
    pub fn live(&self) -> Vec<Arc<Revision>> {
        let Ok(mut map) = self.revisions.lock() else {
            return Vec::new();
        };
        map.retain(|_, w| w.strong_count() > 0);
        let mut v: Vec<Arc<Revision>> = map.values().filter_map(Weak::upgrade).collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// The process's registry: one per process, like the stats registry, since
/// a revision is reported once per process whatever config is running.
pub fn registry() -> &'static Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::new()))
}

/// A cluster's serving role in one build of the config.
pub enum Role {
    Queue(Inbound),
    Activation(Activation),
}

impl Role {
    /// The role `cfg` asks for, with its state taken from `registry`.
    /// Starts the readiness prober (on the calling runtime) and publishes
    /// an activation cluster to requests held for it. Call only for a config
    /// that was accepted.
    pub fn build(
        cfg: &config::Cluster,
        cluster: &Arc<Cluster>,
        registry: &Arc<Registry>,
    ) -> Option<Role> {
        let key_of = |revision: &str, namespace: &str| RevisionKey {
            namespace: namespace.to_string(),
            revision: if revision.is_empty() {
                cfg.name.clone()
            } else {
                revision.to_string()
            },
        };
        if let Some(q) = &cfg.queue {
            let revision = registry.revision(key_of(&q.revision, &q.namespace));
            let limiter = (q.container_concurrency > 0).then(|| {
                let depth = q
                    .max_queue_depth
                    .unwrap_or(q.container_concurrency.saturating_mul(QUEUE_DEPTH_PER_SLOT));
                revision.limiter(q.container_concurrency, depth)
            });
            let targets: Vec<SocketAddr> = cluster
                .hosts
                .load()
                .endpoints
                .iter()
                .map(|e| e.addr)
                .collect();
            let readiness = revision.readiness(
                ProbeSettings::from_config(q.readiness_probe.as_ref()),
                targets,
                &cfg.name,
            );
            return Some(Role::Queue(Inbound {
                revision,
                limiter,
                queue_timeout: q.queue_timeout.map(|d| d.get()),
                readiness,
            }));
        }
        if let Some(a) = &cfg.activation {
            let revision = registry.revision(key_of(&a.revision, &a.namespace));
            revision.publish(cluster);
            return Some(Role::Activation(Activation::new(
                revision,
                registry.clone(),
                a,
            )));
        }
        None
    }

    pub fn revision(&self) -> &Arc<Revision> {
        match self {
            Role::Queue(q) => &q.revision,
            Role::Activation(a) => a.revision(),
        }
    }

    /// Queue role: whether the local app passes its readiness probe. Other
    /// roles do not gate readiness.
    pub fn ready(&self) -> bool {
        match self {
            Role::Queue(q) => q.readiness.is_ready(),
            Role::Activation(_) => true,
        }
    }
}

/// The queue-proxy role of a cluster.
pub struct Inbound {
    pub revision: Arc<Revision>,
    /// None: container_concurrency 0 (unlimited, no queue).
    pub limiter: Option<Arc<Limiter>>,
    queue_timeout: Option<Duration>,
    pub readiness: Arc<Readiness>,
}

/// A request admitted by the queue: counted in flight and holding its
/// execution slot until dropped (with the response body, so the slot
/// covers the whole exchange, as Knative's does).
pub struct Admission {
    _in_flight: InFlight,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Inbound {
    /// Admits, queues or refuses a request. `route_timeout`: the wait's
    /// bound when `queue_timeout` is not set (the revision timeout bounds
    /// the queue wait, as in Knative).
    pub async fn admit(
        &self,
        headers: &http::HeaderMap,
        route_timeout: Option<Duration>,
    ) -> Result<Admission, ProxyError> {
        let proxied = headers.contains_key(&X_FERRY_PROXIED);
        // Counted from arrival: waiting requests are part of the
        // concurrency the autoscaler sees.
        let in_flight = self.revision.stats.enter(proxied);
        let slot = match &self.limiter {
            None => None,
            Some(l) => Some(
                l.acquire(self.queue_timeout.or(route_timeout))
                    .await
                    .map_err(|r| match r {
                        Rejected::Full => ProxyError::new(ErrorKind::QueueFull),
                        Rejected::Timeout => ProxyError::new(ErrorKind::QueueTimeout),
                    })?,
            ),
        };
        Ok(Admission {
            _in_flight: in_flight,
            _slot: slot,
        })
    }
}
