//! Wiring: the only module that knows every other one. Loads the config,
//! starts workers, listeners and the admin server, reloads on SIGHUP or a
//! file change, and drains on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::access_log::AccessLogger;
use crate::active::Active;
use crate::admin::{self, AdminState};
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors};
use crate::listener::{start_workers, ConnTracker, ListenerSet, Shared};
use crate::stats::STATS;
use crate::upstream::PoolRegistry;
use crate::xds::XdsOptions;

pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

/// An xDS update waiting to be applied by the control loop, and where its
/// outcome goes (the ACK or the NACK's reasons).
type XdsApply = (Bootstrap, oneshot::Sender<Result<(), ConfigErrors>>);

/// What the command line says about xDS; it overrides the bootstrap's
/// `xds:` section field by field.
#[derive(Default)]
pub struct XdsFlags {
    pub server: Option<String>,
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    pub delta: bool,
    pub cache_dir: Option<PathBuf>,
}

pub struct Options {
    /// The config file; in xDS mode, the static part (may be absent).
    pub config: Option<PathBuf>,
    pub xds: XdsFlags,
    /// Where to stream load reports (the queue-proxy and activator roles).
    pub report: Option<crate::report::ReportOptions>,
    pub admin: Option<SocketAddr>,
    pub concurrency: usize,
    pub drain_timeout: Duration,
    pub access_log: Option<String>,
    pub watch_interval: Duration,
}

pub struct App {
    opts: Options,
    active: Arc<ArcSwap<Active>>,
    shared: Arc<Shared>,
    listeners: ListenerSet,
    registry: Arc<PoolRegistry>,
    filter_registry: ferry_filters::Registry,
    logger: Option<Arc<AccessLogger>>,
    admin: Arc<AdminState>,
    last_seen: Option<u64>,
    /// Updates from the xDS client (None without xDS).
    xds_updates: Option<mpsc::Receiver<XdsApply>>,
    /// Where a reloaded static part goes to be merged with the xDS
    /// resources (None without xDS).
    xds_static: Option<watch::Sender<Option<Bootstrap>>>,
}

fn file_hash(path: &std::path::Path) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|b| xxhash_rust::xxh64::xxh64(&b, 0))
}

impl App {
    /// Loads the config and opens everything. Errors are the config's, with
    /// field paths, or the reason a socket could not be opened.
    pub async fn start(opts: Options) -> Result<App, ConfigErrors> {
        let last_seen = opts.config.as_deref().and_then(file_hash);
        let boot = match &opts.config {
            Some(path) => config::load_file(path)?,
            None => Bootstrap::default(),
        };
        let xds = xds_options(&opts.xds, &boot)?;
        let registry = Arc::new(PoolRegistry::default());
        let filter_registry = ferry_filters::Registry::builtin();
        let logger = open_logger(&boot, opts.access_log.as_deref(), None)?;
        let active = Active::build(boot, None, &registry, &filter_registry, logger.clone()).await?;

        let admin_addr = match opts.admin {
            Some(a) => a,
            None => {
                let text = active
                    .config
                    .admin
                    .as_ref()
                    .map_or(DEFAULT_ADMIN, |a| a.address.as_str());
                text.parse().map_err(|e| {
                    ConfigError::new("admin.address", format!("invalid address {text:?}: {e}"))
                })?
            }
        };
        let admin_listener = admin::bind(admin_addr).await.map_err(|e| {
            ConfigError::new(
                "admin.address",
                format!("cannot listen on {admin_addr}: {e}"),
            )
        })?;

        let workers = start_workers(opts.concurrency.max(1))
            .map_err(|e| ConfigError::new("", format!("cannot start worker threads: {e}")))?;
        let active = Arc::new(ArcSwap::from_pointee(active));
        let shared = Arc::new(Shared {
            active: active.clone(),
            conns: ConnTracker::default(),
        });
        let mut listeners = ListenerSet::new(shared.clone(), workers);
        let prepared = listeners.prepare(&active.load())?;
        listeners.commit(prepared);

        let admin = Arc::new(AdminState {
            active: active.clone(),
            ready: false.into(),
            changed: tokio::sync::Notify::new(),
        });
        tokio::spawn(admin::serve(admin_listener, admin.clone()));
        if let Some(r) = opts.report.clone() {
            crate::report::spawn(r, crate::queue::registry().clone());
        }
        let (xds_updates, xds_static) = match xds {
            // Ready once the first dynamic config is applied, as Envoy waits
            // for its initial CDS/LDS.
            Some(x) => {
                let (updates, statics) = spawn_xds(x, active.load().config.as_ref().clone())
                    .map_err(|e| {
                        ConfigError::new("", format!("cannot start the xDS thread: {e}"))
                    })?;
                (Some(updates), Some(statics))
            }
            None => {
                admin.ready.store(true, Ordering::Release);
                (None, None)
            }
        };
        tracing::info!(admin = %admin_addr, workers = opts.concurrency, "ferry-proxy ready");

        Ok(App {
            opts,
            active,
            shared,
            listeners,
            registry,
            filter_registry,
            logger,
            admin,
            last_seen,
            xds_updates,
            xds_static,
        })
    }

    /// Serves until SIGTERM/SIGINT, then drains. Returns whether every
    /// connection finished within the drain timeout.
    pub async fn run(mut self) -> bool {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return false;
        };
        let mut watch = tokio::time::interval(self.opts.watch_interval);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reap = tokio::time::interval(Duration::from_secs(5));
        let mut xds_updates = self.xds_updates.take();
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    self.reload().await;
                }
                _ = watch.tick(), if self.opts.config.is_some() => {
                    let seen = self.opts.config.as_deref().and_then(file_hash);
                    if seen.is_some() && seen != self.last_seen {
                        tracing::info!("config file changed: reloading");
                        self.reload().await;
                    }
                }
                Some((boot, reply)) = recv_update(&mut xds_updates) => {
                    let result = self.apply(boot).await;
                    match &result {
                        Ok(()) => {
                            STATS.config_reload_ok.inc();
                            self.admin.ready.store(true, Ordering::Release);
                            self.admin.changed.notify_waiters();
                        }
                        Err(_) => STATS.config_reload_failed.inc(),
                    }
                    let _ = reply.send(result);
                }
                _ = reap.tick() => self.registry.reap(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        self.drain().await
    }

    async fn reload(&mut self) {
        self.last_seen = self.opts.config.as_deref().and_then(file_hash);
        if let Some(statics) = &self.xds_static {
            // The running config is the file's static part merged with the
            // control plane's resources: the xDS side re-merges the new
            // static part and applies the result through `apply` like any
            // update (it logs what it rejects).
            let Some(path) = self.opts.config.clone() else {
                return;
            };
            match config::load_file(&path) {
                Ok(boot) => {
                    if boot.xds != self.active.load().config.xds {
                        tracing::warn!("xds section changes take effect on restart only");
                    }
                    tracing::info!("static config reloaded; merging with the xDS resources");
                    statics.send_replace(Some(boot));
                }
                Err(errors) => {
                    STATS.config_reload_failed.inc();
                    for e in &errors.0 {
                        tracing::error!("config rejected: {e}");
                    }
                    tracing::error!("reload failed; the previous config keeps serving");
                }
            }
            return;
        }
        match self.try_reload().await {
            Ok(()) => {
                STATS.config_reload_ok.inc();
                tracing::info!("config reloaded");
            }
            Err(errors) => {
                STATS.config_reload_failed.inc();
                for e in &errors.0 {
                    tracing::error!("config rejected: {e}");
                }
                tracing::error!("reload failed; the previous config keeps serving");
            }
        }
    }

    async fn try_reload(&mut self) -> Result<(), ConfigErrors> {
        let Some(path) = self.opts.config.clone() else {
            return Ok(());
        };
        let boot = config::load_file(&path)?;
        self.apply(boot).await
    }

    /// Builds, publishes and commits a validated config: the one apply path
    /// for file reloads and xDS updates.
    async fn apply(&mut self, boot: Bootstrap) -> Result<(), ConfigErrors> {
        if boot.admin != self.active.load().config.admin {
            tracing::warn!("admin address changes take effect on restart only");
        }
        let logger = open_logger(&boot, self.opts.access_log.as_deref(), self.logger.as_ref())?;
        // Wall-clock measurement for the log line, not logic.
        let started = std::time::Instant::now();
        let prev = self.active.load_full();
        let next = Active::build(
            boot,
            Some(&prev),
            &self.registry,
            &self.filter_registry,
            logger.clone(),
        )
        .await?;
        drop(prev);
        let built = started.elapsed();
        let prepared = self.listeners.prepare(&next)?;
        self.active.store(Arc::new(next));
        self.listeners.commit(prepared);
        self.admin.changed.notify_waiters();
        self.logger = logger;
        tracing::debug!(
            build_ms = built.as_secs_f64() * 1000.0,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            "config built and published"
        );
        Ok(())
    }

    async fn drain(mut self) -> bool {
        tracing::info!(timeout = ?self.opts.drain_timeout, "draining");
        self.admin.ready.store(false, Ordering::Release);
        self.listeners.drain_all();
        let clean = self.shared.conns.wait_idle(self.opts.drain_timeout).await;
        if clean {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                open = self.shared.conns.open(),
                "drain timeout: closing remaining connections"
            );
        }
        clean
    }
}

/// The xDS settings in force: the bootstrap's `xds:` section with the
/// command line's flags over it. None: no xDS.
fn xds_options(flags: &XdsFlags, boot: &Bootstrap) -> Result<Option<XdsOptions>, ConfigErrors> {
    let file = boot.xds.as_ref();
    let Some(server) = flags
        .server
        .clone()
        .or_else(|| file.map(|x| x.server.clone()))
    else {
        return Ok(None);
    };
    let node_id = flags
        .node_id
        .clone()
        .or_else(|| file.map(|x| x.node_id.clone()))
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| ConfigError::new("xds.node_id", "xDS needs a node id (--node-id)"))?;
    let node_cluster = flags
        .node_cluster
        .clone()
        .or_else(|| file.map(|x| x.node_cluster.clone()))
        .unwrap_or_default();
    let mut opts = XdsOptions::new(server, node_id, node_cluster);
    opts.delta = flags.delta || file.is_some_and(|x| x.delta);
    opts.cache_dir = flags
        .cache_dir
        .clone()
        .or_else(|| file.and_then(|x| x.cache_dir.as_ref().map(PathBuf::from)));
    Ok(Some(opts))
}

/// Starts the xDS client on its own thread; every complete config it
/// assembles is sent to the control loop, which applies it and answers with
/// the outcome. Returns that queue and the sender for reloaded static parts.
///
/// Its own thread (and runtime) so that the ADS stream's HTTP/2 connection
/// never waits for the control loop: while a config is built there, the
/// stream still answers the server's keepalive PINGs, and decoding and
/// translating the next update does not stall the admin server or health
/// checks.
fn spawn_xds(
    opts: XdsOptions,
    static_base: Bootstrap,
) -> std::io::Result<(mpsc::Receiver<XdsApply>, watch::Sender<Option<Bootstrap>>)> {
    let (tx, rx) = mpsc::channel::<XdsApply>(1);
    let (statics_tx, statics_rx) = watch::channel(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ferry-xds".into())
        .spawn(move || {
            rt.block_on(async move {
                let apply = move |boot: Bootstrap| {
                    let tx = tx.clone();
                    async move {
                        let (reply, outcome) = oneshot::channel();
                        let stopped =
                            || ConfigErrors::from(ConfigError::new("", "proxy is shutting down"));
                        tx.send((boot, reply)).await.map_err(|_| stopped())?;
                        outcome.await.unwrap_or_else(|_| Err(stopped()))
                    }
                };
                // `run` only returns when the client cannot start at all.
                let Err(e) = crate::xds::run(opts, static_base, statics_rx, apply).await;
                tracing::error!(error = %e, "xDS client stopped");
            })
        })?;
    Ok((rx, statics_tx))
}

async fn recv_update(rx: &mut Option<mpsc::Receiver<XdsApply>>) -> Option<XdsApply> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The access logger for `boot`: the CLI path wins over the file's; the
/// current logger is reused when the path did not change.
fn open_logger(
    boot: &Bootstrap,
    cli: Option<&str>,
    current: Option<&Arc<AccessLogger>>,
) -> Result<Option<Arc<AccessLogger>>, ConfigErrors> {
    let Some(path) = cli.or(boot.access_log.as_ref().map(|a| a.path.as_str())) else {
        return Ok(None);
    };
    if let Some(c) = current.filter(|c| c.path() == path) {
        return Ok(Some(c.clone()));
    }
    AccessLogger::open(path).map(Some).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "access_log.path",
            format!("cannot open {path}: {e}"),
        )])
    })
}
