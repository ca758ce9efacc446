//! Wiring for `ferry-control serve`: the only module that knows every
//! other one. Binds the xDS (gRPC) and API (HTTP) ports, loads the
//! snapshot file, and runs the file watcher → debouncer → cache → streams
//! pipeline until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api::{self, ApiState};
use crate::xds::cache::{self, NodeRegistry, SnapshotCache};
use crate::xds::snapshot_file::FileWatcher;
use crate::xds::{AdsServer, XdsMetrics};

/// How long streams and connections get to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub xds_snapshot: PathBuf,
    pub xds_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// How often the snapshot file is checked for changes.
    pub poll_interval: Duration,
    /// Quiet time before a changed snapshot is pushed.
    pub debounce: Duration,
    /// Upper bound on how long a push waits for the quiet time.
    pub debounce_max: Duration,
}

impl ServeConfig {
    pub fn new(xds_snapshot: PathBuf, xds_listen: SocketAddr, api_listen: SocketAddr) -> Self {
        ServeConfig {
            xds_snapshot,
            xds_listen,
            api_listen,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
        }
    }
}

/// Runs until `stop` completes, then drains for at most [`GRACE`].
pub async fn serve(cfg: ServeConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = XdsMetrics::new();
    let mut watcher =
        FileWatcher::new(cfg.xds_snapshot.clone(), cfg.poll_interval, metrics.clone());
    let initial = watcher
        .load_initial()
        .with_context(|| format!("loading snapshot {}", cfg.xds_snapshot.display()))?;
    tracing::info!(
        path = %cfg.xds_snapshot.display(),
        versions = %initial.versions_summary(),
        "snapshot loaded"
    );

    let xds_listener = TcpListener::bind(cfg.xds_listen)
        .await
        .with_context(|| format!("binding the xDS port {}", cfg.xds_listen))?;
    let api_listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("binding the API port {}", cfg.api_listen))?;
    let xds_addr = xds_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    let cache = Arc::new(SnapshotCache::new(initial));
    let registry = Arc::new(NodeRegistry::new(metrics.clone()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (updates_tx, updates_rx) = mpsc::channel(4);
    let watch_task = tokio::spawn(watcher.run(updates_tx, shutdown_rx.clone()));
    let debounce_task = tokio::spawn(cache::debounce(
        updates_rx,
        cache.clone(),
        cfg.debounce,
        cfg.debounce_max,
    ));

    let ads = AdsServer::new(cache.clone(), registry.clone(), shutdown_rx.clone());
    let mut grpc_shutdown = shutdown_rx.clone();
    let grpc = tonic::transport::Server::builder()
        // Finds clients that vanished without closing their stream (a
        // killed node, a dropped NAT mapping), so their records close too.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(xds_listener).with_nodelay(Some(true)),
            async move {
                let _ = grpc_shutdown.wait_for(|s| *s).await;
            },
        );
    let mut grpc_task = tokio::spawn(grpc);

    let api_state = Arc::new(ApiState {
        registry,
        cache,
        metrics,
    });
    let api_task = tokio::spawn(api::serve(api_listener, api_state, shutdown_rx.clone()));

    tracing::info!(xds = %xds_addr, api = %api_addr, "ferry-control serving");

    tokio::select! {
        _ = stop => {}
        ended = &mut grpc_task => {
            let _ = shutdown_tx.send(true);
            return match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("the xDS server stopped on its own")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("xDS server")),
                Err(join) => Err(anyhow::anyhow!("xDS server task failed: {join}")),
            };
        }
    }
    tracing::info!("stopping: closing xDS streams and the API");
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(GRACE, async {
        let grpc_result = grpc_task.await;
        let _ = api_task.await;
        let _ = watch_task.await;
        // The watcher owned the sender, so the debouncer ends too.
        let _ = debounce_task.await;
        grpc_result
    })
    .await;
    match drained {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("xDS server")),
        Ok(Err(join)) => Err(anyhow::anyhow!("xDS server task failed: {join}")),
        Err(_) => {
            tracing::warn!("tasks still running after {GRACE:?}; exiting anyway");
            Ok(())
        }
    }
}
