//! Scalers: what turns "revision R should run N instances" into running
//! instances, and reports which of them are ready to take traffic.
//!
//! The control loop ([`crate::control_loop`]) is the only caller. It
//! declares every revision's workload ([`Scaler::upsert`]), sets the
//! instance count the autoscaler decided ([`Scaler::scale`]), and reads
//! the instances back ([`Scaler::instances`]) whenever the scaler says
//! they changed ([`Scaler::subscribe`]); their ready endpoints go to EDS.
//!
//! The trait is shaped after what Kubernetes offers, so that backend (a
//! later issue) slots in without touching the autoscaler or the loop:
//! `upsert` ↔ create/patch a Deployment at its current scale, `scale` ↔
//! the scale subresource, `instances` ↔ the revision's EndpointSlices
//! (ready conditions included), `subscribe` ↔ an EndpointSlice watch,
//! `remove` ↔ delete the Deployment. The process backend ([`process`])
//! runs everything on this machine.

pub mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::model::serving::{Revision, CONFIGURATION_LABEL, SERVICE_LABEL};

pub use process::{ProcessScaler, ProcessScalerConfig};

/// (namespace, revision name), as in [`crate::store::runtime::RevisionKey`].
pub type RevisionKey = (String, String);

/// A boxed future, so [`Scaler`] stays object-safe (`Arc<dyn Scaler>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a scaler needs to run one revision, taken from the model's
/// Revision (immutable, so a workload rarely changes after creation).
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub namespace: String,
    pub revision: String,
    /// `K_SERVICE` and `K_CONFIGURATION`, as Knative sets them.
    pub service: String,
    pub configuration: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// The container's env, in manifest order (`PORT` and `K_*` are
    /// reserved by validation and set by the scaler).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// For image-based backends; the process backend ignores it.
    pub image: Option<String>,
    /// `containerConcurrency` (0 = unlimited).
    pub container_concurrency: u32,
    /// `timeoutSeconds`: bounds the queue wait and the request.
    pub timeout: Duration,
    /// `readinessProbe.httpGet.path` of the serving container, if any;
    /// absent: a TCP connect is the probe (Knative's default).
    pub readiness_path: Option<String>,
}

impl Workload {
    pub fn key(&self) -> RevisionKey {
        (self.namespace.clone(), self.revision.clone())
    }

    /// The workload of a stored revision.
    pub fn from_revision(rev: &Revision) -> Workload {
        let labels = &rev.metadata.labels;
        let container = rev.spec.serving_container();
        let readiness_path = container
            .and_then(|c| c.extra.get("readinessProbe"))
            .and_then(|p| p.get("httpGet"))
            .and_then(|g| g.get("path"))
            .and_then(|p| p.as_str())
            .map(str::to_string);
        Workload {
            namespace: rev.metadata.namespace.clone(),
            revision: rev.metadata.name.clone(),
            service: labels.get(SERVICE_LABEL).cloned().unwrap_or_default(),
            configuration: labels.get(CONFIGURATION_LABEL).cloned().unwrap_or_default(),
            command: container.map(|c| c.command.clone()).unwrap_or_default(),
            args: container.map(|c| c.args.clone()).unwrap_or_default(),
            env: container
                .map(|c| {
                    c.env
                        .iter()
                        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
            working_dir: container.and_then(|c| c.working_dir.clone()),
            image: container.and_then(|c| c.image.clone()),
            container_concurrency: rev
                .spec
                .container_concurrency
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            timeout: Duration::from_secs(
                u64::try_from(rev.spec.timeout_seconds_or_default()).unwrap_or(300),
            ),
            readiness_path,
        }
    }
}

/// One instance of a revision as the scaler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Unique among the revision's instances (the pod name).
    pub name: String,
    /// Where traffic for this instance goes: its inbound sidecar.
    pub endpoint: SocketAddr,
    /// The sidecar answers `/ready` (so the app passed its probe).
    pub ready: bool,
}

/// What changed in a scaler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScalerEvent {
    /// A revision's instances changed (started, became ready or unready,
    /// stopped): read them again with [`Scaler::instances`].
    Instances(RevisionKey),
    /// The revision cannot run (`Some((reason, message))`: no command, a
    /// crash loop) or runs again (`None`).
    Failure(RevisionKey, Option<(String, String)>),
}

#[derive(Debug, thiserror::Error)]
pub enum ScalerError {
    #[error("revision {0}/{1} is not known to the scaler")]
    Unknown(String, String),
    #[error("{0}")]
    Other(String),
}

/// A backend that runs revisions' instances.
pub trait Scaler: Send + Sync {
    /// A short name for logs (`process`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Declares a revision (or updates its workload). Runs nothing by
    /// itself: the scale stays what it was (0 for a new revision).
    fn upsert(&self, workload: Workload) -> BoxFuture<'_, Result<(), ScalerError>>;

    /// Sets the number of instances. Returns once the change is under
    /// way; instances report readiness later through events.
    fn scale(&self, key: RevisionKey, n: u32) -> BoxFuture<'_, Result<(), ScalerError>>;

    /// The revision's instances now (empty for an unknown revision).
    fn instances(&self, key: RevisionKey) -> BoxFuture<'_, Vec<Instance>>;

    /// Forgets a deleted revision, stopping its instances.
    fn remove(&self, key: RevisionKey) -> BoxFuture<'_, ()>;

    /// Instance and failure changes. A receiver that lags should re-read
    /// every revision's instances.
    fn subscribe(&self) -> broadcast::Receiver<ScalerEvent>;

    /// Stops everything this scaler started (gracefully, bounded in time).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// The mesh side of instances: where their sidecars take the outbound
/// (Envoy/Istio-style) config from. The control plane's xDS server serves
/// each registered sidecar node an outbound listener on its loopback port,
/// routing to every revision (and activating one at zero); a scaler
/// registers a sidecar before starting it and unregisters it once gone.
pub trait Mesh: Send + Sync + std::fmt::Debug {
    /// The ADS server sidecars connect to (`http://host:port`).
    fn xds_address(&self) -> &str;
    /// The node cluster sidecars present.
    fn node_cluster(&self) -> &str;
    /// The sidecar with node id `node` listens for its app's outbound calls
    /// on `outbound`.
    fn register(&self, node: &str, outbound: SocketAddr);
    /// The sidecar `node` is gone.
    fn unregister(&self, node: &str);
}

/// Which scaler `ferry-control serve` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalerKind {
    /// No scaler and no autoscaling loop: the model is served over xDS,
    /// nothing runs its revisions (revisions stay at zero).
    #[default]
    None,
    /// Local processes, each app with its own `ferry-proxy` sidecar.
    Process,
}
