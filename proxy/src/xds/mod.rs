//! xDS: Envoy v3 resources → the proxy's plain config model.
//!
//! Owns: translation of Listener, RouteConfiguration, Cluster and
//! ClusterLoadAssignment into [`crate::config`] types (a rejected resource
//! becomes a NACK naming its field path), Envoy's warming rule, and merging
//! the xDS resources with the static ones of a bootstrap file. Must not
//! touch: sockets, the active snapshot, the protocol (version, nonce,
//! reconnects belong to `ferry-xds-client`). Envoy protos stop here: nothing
//! outside this module sees one.
//!
//! - `convert`: field-path problems, well-known proto types, data sources.
//! - `listener`, `route`, `cluster`: one translator per resource type.
//! - `state`: the translated resources, warming, assembly, validation
//!   errors mapped back to the resource they came from.
//!
//! [`run`] connects it all: an ADS client whose handler produces complete
//! [`Bootstrap`]s and hands each to the caller's apply function (the same
//! path a file reload takes); an `Err` from apply NACKs the update. A new
//! static part (the bootstrap file reloaded) is merged with the xDS
//! resources on the same path.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use ferry_xds_client::{AdsClient, AdsConfig, Handler, Mode, Outcome, Update};
use tokio::sync::{watch, Mutex};

use crate::config::{Bootstrap, ConfigErrors};

mod cluster;
mod convert;
mod listener;
mod route;
mod state;

pub use cluster::{translate_cla, translate_cluster, XdsCluster};
pub use listener::{inline_route_name, translate_listener, XdsListener};
pub use route::{translate_rds, translate_rds_encoded, RdsHashes};
pub use state::{Resources, XdsRoute, XdsState};

#[cfg(test)]
mod tests;

/// How to reach the control plane (CLI `--xds`, `--node-id`,
/// `--node-cluster`, `--xds-delta`, `--xds-cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsOptions {
    /// `http://127.0.0.1:18000`.
    pub server: String,
    pub node_id: String,
    pub node_cluster: String,
    /// Incremental xDS (`DeltaAggregatedResources`) instead of state of the
    /// world.
    pub delta: bool,
    /// Persist the last accepted resources here and start from them when
    /// the control plane is unreachable at start.
    pub cache_dir: Option<PathBuf>,
    /// Where inline TLS material (`inline_bytes` / `inline_string` data
    /// sources) is written as files, since the model names certificates by
    /// path. Default: `<cache_dir>/tls`, else `$TMPDIR/ferry-xds-<pid>`.
    pub runtime_dir: Option<PathBuf>,
}

impl XdsOptions {
    pub fn new(
        server: impl Into<String>,
        node_id: impl Into<String>,
        node_cluster: impl Into<String>,
    ) -> Self {
        XdsOptions {
            server: server.into(),
            node_id: node_id.into(),
            node_cluster: node_cluster.into(),
            delta: false,
            cache_dir: None,
            runtime_dir: None,
        }
    }

    fn runtime_dir(&self) -> PathBuf {
        match (&self.runtime_dir, &self.cache_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(c)) => c.join("tls"),
            (None, None) => std::env::temp_dir().join(format!("ferry-xds-{}", std::process::id())),
        }
    }
}

/// Why [`run`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("xDS: {0}")]
    Client(#[from] ferry_xds_client::Error),
}

/// Runs the ADS client forever: every complete config (the static
/// resources of `static_base` plus the xDS ones) goes to `apply`, which
/// should build, publish and commit it exactly like a file reload and
/// return the config's errors if it cannot (the update is then NACKed with
/// them). While the control plane is unreachable the last applied config
/// keeps serving; the client reconnects with jittered, capped backoff.
///
/// A new static part sent on `statics` (the bootstrap file reloaded) is
/// merged with the xDS resources and applied the same way; if that fails
/// it is logged and the previous static part stays.
///
/// `apply` is async because building a config binds sockets and loads TLS;
/// wrap a synchronous one as `move |b| std::future::ready(f(b))`.
/// Returns only if the options are invalid. Must run inside a tokio
/// runtime (it spawns the task that follows `statics`).
pub async fn run<A, F>(
    opts: XdsOptions,
    static_base: Bootstrap,
    statics: watch::Receiver<Option<Bootstrap>>,
    apply: A,
) -> Result<Infallible, XdsError>
where
    A: FnMut(Bootstrap) -> F + Send + 'static,
    F: Future<Output = Result<(), ConfigErrors>> + Send + 'static,
{
    let mut config = AdsConfig::new(opts.server.clone(), &opts.node_id, &opts.node_cluster);
    config.mode = if opts.delta { Mode::Delta } else { Mode::Sotw };
    config.cache_dir = opts.cache_dir.clone();
    // Envoy's order (CDS, EDS, LDS, RDS). Resources arrive encoded: each is
    // decoded only when translated, and dropped right after (see `state`),
    // and a mesh's route configuration, one resource of thousands of
    // routes, only in its changed virtual hosts (see `route`).
    let client = AdsClient::new(config)?
        .watch_encoded::<Cluster>()
        .watch_encoded::<ClusterLoadAssignment>()
        .watch_encoded::<Listener>()
        .watch_encoded::<RouteConfiguration>();
    let state = Arc::new(Mutex::new(XdsState::new(
        static_base,
        opts.runtime_dir(),
        apply,
    )));
    tokio::spawn(follow_static(state.clone(), statics));
    tracing::info!(
        server = %opts.server, node = %opts.node_id, cluster = %opts.node_cluster,
        delta = opts.delta, "starting xDS"
    );
    Ok(client.run(SharedState(state)).await)
}

/// The state shared by the ADS client (updates) and [`follow_static`]
/// (file reloads); one at a time.
struct SharedState<A>(Arc<Mutex<XdsState<A>>>);

impl<A, F> Handler for SharedState<A>
where
    A: FnMut(Bootstrap) -> F + Send + 'static,
    F: Future<Output = Result<(), ConfigErrors>> + Send + 'static,
{
    fn apply(&mut self, update: Update) -> impl Future<Output = Outcome> + Send {
        let state = self.0.clone();
        async move { state.lock().await.handle(update).await }
    }
}

/// Applies each new static part until the sender goes away.
async fn follow_static<A, F>(
    state: Arc<Mutex<XdsState<A>>>,
    mut statics: watch::Receiver<Option<Bootstrap>>,
) where
    A: FnMut(Bootstrap) -> F + Send + 'static,
    F: Future<Output = Result<(), ConfigErrors>> + Send + 'static,
{
    while statics.changed().await.is_ok() {
        let Some(base) = statics.borrow_and_update().clone() else {
            continue;
        };
        // Errors are logged by `set_static`; the previous part stays.
        let _ = state.lock().await.set_static(base).await;
    }
}
