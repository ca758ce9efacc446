//! Wiring for `ferry-control serve`: the only module that knows every
//! other one. Opens the store in the data directory, binds the xDS (gRPC)
//! and API (HTTP) ports, and runs the source → debouncer → cache → streams
//! pipeline until told to stop. The source is the serving model (every
//! store or runtime change re-translates the gateway's resources), or,
//! with `--xds-snapshot`, the static snapshot file.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api::{self, ApiState};
use crate::control_loop::{ControlLoop, ScalingConfig};
use crate::eventing::config::Resolver;
use crate::eventing::log::JetStreamOptions;
use crate::eventing::{BrokerOptions, Controller, Eventing, EventingMetrics};
use crate::report_server::ReportServer;
use crate::scaler::{ProcessScaler, ProcessScalerConfig, ScalerKind};
use crate::store::{FileStore, Runtime, Serving};
use crate::xds::cache::{self, NodeRegistry, SnapshotCache};
use crate::xds::serving::{model_resources, publish_model, GatewayConfig, Sidecars};
use crate::xds::snapshot_file::FileWatcher;
use crate::xds::{AdsServer, XdsMetrics};

/// How long streams and connections get to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Serve this static snapshot file instead of the model's resources.
    pub xds_snapshot: Option<PathBuf>,
    /// Where the store keeps its log and snapshot (`DIR/store/`).
    pub data_dir: PathBuf,
    /// Keep the model in memory only, touching nothing in `data_dir`
    /// (static-snapshot mode without `--data-dir`).
    pub memory_store: bool,
    /// Hosts are `{name}.{namespace}.{domain}`.
    pub domain: String,
    /// The address the gateway Listener (served over xDS) binds.
    pub gateway_listen: SocketAddr,
    pub xds_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// Broker and Trigger manifests applied to the store at start, as
    /// `apply -f` would (docs/eventing.md); Brokers and Triggers applied
    /// through the API run whether or not this is set.
    pub broker_config: Option<PathBuf>,
    /// The broker's ingress address (bound once a Broker exists).
    pub broker_listen: SocketAddr,
    /// NATS URL: keep the broker's logs in JetStream instead of the data
    /// directory.
    pub broker_nats: Option<String>,
    /// Where triggers deliver to `ref` subscribers (a gateway proxy serving
    /// this control plane's routes); `None`: `gateway_listen`.
    pub broker_gateway: Option<SocketAddr>,
    /// How often the snapshot file is checked for changes.
    pub poll_interval: Duration,
    /// Quiet time before a changed snapshot is pushed.
    pub debounce: Duration,
    /// Upper bound on how long a push waits for the quiet time.
    pub debounce_max: Duration,
    /// Run revisions' instances with this scaler, driven by the
    /// autoscaler; load reports are then served on the xDS port
    /// (`crate::control_loop`, `crate::report_server`).
    pub scaler: ScalerKind,
    /// Print a line per revision when its scale changes (`up`).
    pub live_scaling: bool,
    /// Cluster-wide autoscaler settings (Knative's `config-autoscaler`
    /// keys, `docs/autoscaling.md`); absent keys take Knative's defaults.
    pub autoscaler: std::collections::BTreeMap<String, String>,
}

/// The defaults of `serve`'s flags that are not addresses.
pub const DEFAULT_DATA_DIR: &str = "./ferry-data";
pub const DEFAULT_DOMAIN: &str = "example.com";
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8080";

impl ServeConfig {
    /// Static-snapshot mode; the model's API works, in memory only.
    pub fn new(xds_snapshot: PathBuf, xds_listen: SocketAddr, api_listen: SocketAddr) -> Self {
        let mut cfg = ServeConfig::model(PathBuf::from(DEFAULT_DATA_DIR), xds_listen, api_listen);
        cfg.memory_store = true;
        cfg.xds_snapshot = Some(xds_snapshot);
        cfg
    }

    /// Model mode: xDS is generated from the store in `data_dir`.
    pub fn model(data_dir: PathBuf, xds_listen: SocketAddr, api_listen: SocketAddr) -> Self {
        ServeConfig {
            xds_snapshot: None,
            data_dir,
            memory_store: false,
            domain: DEFAULT_DOMAIN.to_string(),
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            xds_listen,
            api_listen,
            broker_config: None,
            broker_listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            broker_nats: None,
            broker_gateway: None,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(10),
            debounce_max: Duration::from_secs(1),
            scaler: ScalerKind::None,
            live_scaling: false,
            autoscaler: std::collections::BTreeMap::new(),
        }
    }
}

/// Runs until `stop` completes, then drains for at most [`GRACE`].
pub async fn serve(cfg: ServeConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = XdsMetrics::new();
    let store = match (cfg.memory_store, cfg.data_dir.clone()) {
        (false, dir) => tokio::task::spawn_blocking(move || {
            FileStore::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))
        })
        .await
        .context("opening the store")??,
        (true, _) => {
            tracing::warn!("no --data-dir: the model's objects are kept in memory only");
            FileStore::memory()
        }
    };
    let autoscaler = crate::autoscaler::GlobalConfig::from_map(&cfg.autoscaler)
        .context("the autoscaler settings")?;
    let serving = Arc::new(
        Serving::new(
            Arc::new(store),
            Arc::new(Runtime::new()),
            cfg.domain.clone(),
        )
        .with_autoscaler(autoscaler),
    );
    let gateway = GatewayConfig {
        listen: cfg.gateway_listen,
        domain: cfg.domain.clone(),
    };

    let mut watcher = match &cfg.xds_snapshot {
        Some(path) => Some(FileWatcher::new(
            path.clone(),
            cfg.poll_interval,
            metrics.clone(),
        )),
        None => None,
    };
    let mut sidecar_base = None;
    let initial = match (&mut watcher, &cfg.xds_snapshot) {
        (Some(w), Some(path)) => {
            let initial = w
                .load_initial()
                .with_context(|| format!("loading snapshot {}", path.display()))?;
            tracing::info!(
                path = %path.display(),
                versions = %initial.versions_summary(),
                "snapshot loaded"
            );
            initial
        }
        _ => {
            let resources = model_resources(&serving, &gateway)
                .await
                .context("translating the model")?;
            let initial = Arc::new(resources.gateway);
            sidecar_base = Some(resources.sidecar);
            tracing::info!(
                data_dir = %cfg.data_dir.display(),
                versions = %initial.versions_summary(),
                "serving the model's resources"
            );
            initial
        }
    };

    let xds_listener = TcpListener::bind(cfg.xds_listen)
        .await
        .with_context(|| format!("binding the xDS port {}", cfg.xds_listen))?;
    let api_listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("binding the API port {}", cfg.api_listen))?;
    let xds_addr = xds_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    let cache = Arc::new(SnapshotCache::new(initial));
    // Instances' sidecars (node cluster `ferry-sidecar`) get their own
    // snapshots: the mesh routes and an outbound listener each.
    let sidecars = sidecar_base.map(|base| {
        Arc::new(Sidecars::new(
            cache.clone(),
            format!("http://{xds_addr}"),
            base,
        ))
    });
    let registry = Arc::new(NodeRegistry::new(metrics.clone()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (updates_tx, updates_rx) = mpsc::channel(4);
    let watch_task = match watcher {
        Some(w) => tokio::spawn(w.run(updates_tx, shutdown_rx.clone())),
        // The model's publisher writes the cache itself (rate-limited,
        // first change at once); the debouncer is for the snapshot file,
        // and ends at once without a sender.
        None => {
            drop(updates_tx);
            tokio::spawn(publish_model(
                serving.clone(),
                gateway.clone(),
                cache.clone(),
                sidecars.clone(),
                cfg.debounce,
                shutdown_rx.clone(),
            ))
        }
    };
    let debounce_task = tokio::spawn(cache::debounce(
        updates_rx,
        cache.clone(),
        cfg.debounce,
        cfg.debounce_max,
    ));

    let mesh = sidecars.map(|s| s as Arc<dyn crate::scaler::Mesh>);
    let (scaling_task, reports) = match start_scaling(&cfg, &serving, xds_addr, mesh).await? {
        Some((control_loop, reports)) => (
            Some(tokio::spawn(control_loop.run(shutdown_rx.clone()))),
            Some(reports.with_shutdown(shutdown_rx.clone()).into_service()),
        ),
        None => (None, None),
    };

    let ads = AdsServer::new(cache.clone(), registry.clone(), shutdown_rx.clone());
    let mut grpc_shutdown = shutdown_rx.clone();
    let grpc = tonic::transport::Server::builder()
        // Finds clients that vanished without closing their stream (a
        // killed node, a dropped NAT mapping), so their records close too.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.into_service())
        .add_optional_service(reports)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(xds_listener).with_nodelay(Some(true)),
            async move {
                let _ = grpc_shutdown.wait_for(|s| *s).await;
            },
        );
    let mut grpc_task = tokio::spawn(grpc);

    let eventing_metrics = EventingMetrics::new(metrics.registry());
    let api_state = Arc::new(ApiState {
        registry,
        cache,
        metrics,
        serving: serving.clone(),
    });
    let eventing_task = start_eventing(&cfg, &serving, eventing_metrics, shutdown_rx.clone())
        .await
        .context("starting the eventing broker")?;
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
    if let Some(t) = scaling_task {
        // Instances drain first (bounded by the scaler's own grace), while
        // the xDS streams close in parallel.
        let _ = t.await;
    }
    let drained = tokio::time::timeout(GRACE, async {
        let grpc_result = grpc_task.await;
        let _ = api_task.await;
        // Dispatchers save their cursors on the way out.
        let _ = eventing_task.await;
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

/// The eventing controller, after `--broker-config`'s objects are applied
/// and its first pass ran: the brokers and triggers stored now run (their
/// cursors exist, the ingress answers) before `serve` reports ready.
async fn start_eventing(
    cfg: &ServeConfig,
    serving: &Arc<Serving>,
    metrics: EventingMetrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(path) = &cfg.broker_config {
        let n = crate::eventing::seed::apply_file(serving, path).await?;
        tracing::info!(path = %path.display(), objects = n, "broker config applied");
    }
    let mut gateway = cfg.broker_gateway.unwrap_or(cfg.gateway_listen);
    if gateway.ip().is_unspecified() {
        // A wildcard listener is reached on loopback.
        gateway.set_ip(match gateway.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let resolver = Resolver {
        domain: cfg.domain.clone(),
        gateway: gateway.to_string(),
    };
    let mut opts = BrokerOptions::new(cfg.broker_listen, cfg.data_dir.join("eventing"), resolver);
    opts.nats = cfg.broker_nats.as_deref().map(JetStreamOptions::new);
    let mut controller = Controller::new(
        serving.clone(),
        Eventing::new(opts, metrics, shutdown.clone()),
    );
    match controller.converge().await {
        Ok(false) => {}
        Ok(true) => tracing::warn!(
            "eventing: some brokers or triggers are not ready yet (see their status); retrying"
        ),
        Err(e) => tracing::error!(error = %e, "eventing: reading the store failed; retrying"),
    }
    Ok(tokio::spawn(controller.run(shutdown)))
}

/// The scaler and the control loop, when `cfg.scaler` asks for them.
async fn start_scaling(
    cfg: &ServeConfig,
    serving: &Arc<Serving>,
    xds_addr: SocketAddr,
    mesh: Option<Arc<dyn crate::scaler::Mesh>>,
) -> anyhow::Result<Option<(ControlLoop, ReportServer)>> {
    let scaler: Arc<dyn crate::scaler::Scaler> = match cfg.scaler {
        ScalerKind::None => return Ok(None),
        ScalerKind::Process => {
            // Sidecars report to the xDS port, which serves both.
            let report_to = format!("http://{xds_addr}");
            let mut pcfg = ProcessScalerConfig::new(cfg.data_dir.clone(), Some(report_to));
            pcfg.mesh = mesh;
            Arc::new(
                ProcessScaler::start(pcfg)
                    .await
                    .context("starting the process scaler")?,
            )
        }
    };
    let mut scfg = ScalingConfig::new(scaler);
    scfg.live = cfg.live_scaling;
    scfg.global = serving.autoscaler().clone();
    let (control_loop, handle) = ControlLoop::new(serving.clone(), scfg);
    Ok(Some((control_loop, ReportServer::new(handle))))
}

/// What `serve` and `up` do first: logs to stderr under `log` (or
/// `RUST_LOG`), then the multi-threaded runtime. Err: the exit code, after
/// saying why on stderr.
pub fn process_runtime(log: &str) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log))
        .map_err(|e| {
            eprintln!("ferry-control: bad --log filter {log:?}: {e}");
            std::process::ExitCode::from(2)
        })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-control")
        .build()
        .map_err(|e| {
            eprintln!("ferry-control: starting the runtime: {e}");
            std::process::ExitCode::FAILURE
        })
}
