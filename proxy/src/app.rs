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

use crate::access_log::AccessLogger;
use crate::active::Active;
use crate::admin::{self, AdminState};
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors};
use crate::listener::{start_workers, ConnTracker, ListenerSet, Shared};
use crate::stats::STATS;
use crate::upstream::PoolRegistry;

pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

pub struct Options {
    pub config: PathBuf,
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
        let last_seen = file_hash(&opts.config);
        let boot = config::load_file(&opts.config)?;
        let registry = Arc::new(PoolRegistry::default());
        let filter_registry = ferry_filters::Registry::builtin();
        let logger = open_logger(&boot, opts.access_log.as_deref(), None)?;
        let active = Active::build(boot, &registry, &filter_registry, logger.clone()).await?;

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
        });
        tokio::spawn(admin::serve(admin_listener, admin.clone()));
        admin.ready.store(true, Ordering::Release);
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
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    self.reload().await;
                }
                _ = watch.tick() => {
                    let seen = file_hash(&self.opts.config);
                    if seen.is_some() && seen != self.last_seen {
                        tracing::info!(file = %self.opts.config.display(), "config file changed: reloading");
                        self.reload().await;
                    }
                }
                _ = reap.tick() => self.registry.reap(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        self.drain().await
    }

    async fn reload(&mut self) {
        self.last_seen = file_hash(&self.opts.config);
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
        let boot = config::load_file(&self.opts.config)?;
        if boot.admin != self.active.load().config.admin {
            tracing::warn!("admin address changes take effect on restart only");
        }
        let logger = open_logger(&boot, self.opts.access_log.as_deref(), self.logger.as_ref())?;
        let next =
            Active::build(boot, &self.registry, &self.filter_registry, logger.clone()).await?;
        let prepared = self.listeners.prepare(&next)?;
        self.active.store(Arc::new(next));
        self.listeners.commit(prepared);
        self.logger = logger;
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
