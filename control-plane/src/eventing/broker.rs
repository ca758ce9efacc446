//! The running broker: one log per Broker, one dispatcher per Trigger, the
//! ingress server, and the retention sweep.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::EventingConfig;
use super::delivery::{HyperSender, Sender, Sleeper, TokioSleeper, TriggerStats};
use super::dispatcher::Dispatcher;
use super::ingress::{self, IngressState};
use super::log::{EventLog, FileLog, FileLogOptions, JetStreamLog, JetStreamOptions};

#[derive(Clone, Debug)]
pub struct BrokerOptions {
    pub listen: SocketAddr,
    pub config: EventingConfig,
    /// Where the logs live: `<dir>/<namespace>/<broker>/`. The control
    /// plane passes `DATA_DIR/eventing`.
    pub dir: PathBuf,
    pub log: FileLogOptions,
    /// When set, every broker's log is in NATS JetStream instead of the
    /// embedded log (`dir` is then unused).
    pub nats: Option<JetStreamOptions>,
    /// Largest ingress request body.
    pub max_body: usize,
    /// Deliveries in flight per trigger.
    pub max_inflight: usize,
    /// How often dispatchers save their cursor.
    pub persist_every: Duration,
    pub retention_every: Duration,
}

impl BrokerOptions {
    pub fn new(listen: SocketAddr, config: EventingConfig, dir: PathBuf) -> Self {
        BrokerOptions {
            listen,
            config,
            dir,
            log: FileLogOptions::default(),
            nats: None,
            max_body: 4 << 20,
            max_inflight: 64,
            persist_every: Duration::from_millis(100),
            retention_every: Duration::from_secs(30),
        }
    }
}

/// A started broker.
pub struct Broker {
    pub addr: SocketAddr,
    /// Per trigger (`namespace.name`).
    pub stats: HashMap<String, Arc<TriggerStats>>,
    tasks: JoinSet<()>,
}

impl Broker {
    /// Opens the logs (recovering them), binds the ingress port and starts
    /// every dispatcher. Returns once the port is bound.
    pub async fn start(
        opts: BrokerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Broker> {
        let mut logs: HashMap<(String, String), Arc<dyn EventLog>> = HashMap::new();
        // Embedded logs also get the retention sweep (JetStream applies its
        // own limits).
        let mut files: Vec<Arc<FileLog>> = Vec::new();
        for b in &opts.config.brokers {
            let key = (b.namespace.clone(), b.name.clone());
            let live: Vec<String> = opts
                .config
                .triggers
                .iter()
                .filter(|t| t.namespace == b.namespace && t.broker == b.name)
                .map(|t| t.cursor_name())
                .collect();
            if let Some(nats) = &opts.nats {
                let log = JetStreamLog::open(nats, &b.namespace, &b.name)
                    .await
                    .with_context(|| {
                        format!(
                            "opening the JetStream log of broker {}/{}",
                            b.namespace, b.name
                        )
                    })?;
                tracing::info!(broker = %format!("{}/{}", b.namespace, b.name), events = log.end(), url = %nats.url, "JetStream event log open");
                logs.insert(key, Arc::new(log));
                continue;
            }
            let dir = opts.dir.join(&b.namespace).join(&b.name);
            let log = {
                let d = dir.clone();
                let lo = opts.log.clone();
                tokio::task::spawn_blocking(move || FileLog::open(d, lo))
                    .await
                    .context("opening the log")?
                    .with_context(|| format!("opening the event log in {}", dir.display()))?
            };
            tracing::info!(broker = %format!("{}/{}", b.namespace, b.name), events = log.end(), dir = %dir.display(), "event log open");
            // Cursors of triggers that are gone would hold retention back
            // forever.
            for name in log.cursor_names() {
                if !live.contains(&name) {
                    tracing::info!(cursor = %name, "removing the cursor of a deleted trigger");
                    if let Err(e) = log.remove_cursor(&name).await {
                        tracing::warn!(cursor = %name, error = %e, "removing a stale cursor failed");
                    }
                }
            }
            let log = Arc::new(log);
            files.push(log.clone());
            logs.insert(key, log);
        }

        let listener = TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("binding the broker port {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(ingress::serve(
            listener,
            Arc::new(IngressState {
                brokers: logs.clone(),
                max_body: opts.max_body,
            }),
            shutdown.clone(),
        ));

        let sender: Arc<dyn Sender> = Arc::new(HyperSender::new());
        let sleeper: Arc<dyn Sleeper> = Arc::new(TokioSleeper);
        let mut stats = HashMap::new();
        for t in &opts.config.triggers {
            let Some(log) = logs.get(&(t.namespace.clone(), t.broker.clone())) else {
                continue;
            };
            let s = Arc::new(TriggerStats::default());
            stats.insert(t.cursor_name(), s.clone());
            let d = Dispatcher {
                trigger: Arc::new(t.clone()),
                log: log.clone(),
                sender: sender.clone(),
                sleeper: sleeper.clone(),
                stats: s,
                max_inflight: opts.max_inflight.max(1),
                persist_every: opts.persist_every,
            };
            tasks.spawn(d.run(shutdown.clone()));
        }

        let mut stop = shutdown.clone();
        let every = opts.retention_every;
        let all = files;
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                for log in &all {
                    let l = log.clone();
                    // Unlinks and a directory fsync: off the runtime.
                    let _ =
                        tokio::task::spawn_blocking(move || l.enforce_retention(SystemTime::now()))
                            .await;
                }
            }
        });
        tracing::info!(%addr, brokers = logs.len(), triggers = opts.config.triggers.len(), "broker ingress listening");
        Ok(Broker { addr, stats, tasks })
    }

    /// Waits for every task to end (after shutdown turned true).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// `ferry-control serve --broker-config FILE [--broker-nats URL]`: loads
/// the Broker and Trigger manifests in `config` and starts the broker with
/// its logs in `DATA_DIR/eventing/`, or in NATS JetStream at `nats_url`.
pub async fn start_from_file(
    config: &std::path::Path,
    listen: SocketAddr,
    data_dir: &std::path::Path,
    nats_url: Option<&str>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Broker> {
    let text = tokio::fs::read_to_string(config)
        .await
        .with_context(|| format!("reading the broker config {}", config.display()))?;
    let cfg = EventingConfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("broker config {}: {e}", config.display()))?;
    let mut opts = BrokerOptions::new(listen, cfg, data_dir.join("eventing"));
    opts.nats = nats_url.map(JetStreamOptions::new);
    Broker::start(opts, shutdown).await
}
