//! The running broker: the ingress server, one log per Broker, one
//! dispatcher per Trigger, and each embedded log's retention sweep.
//!
//! [`Eventing`] holds what runs and offers the operations the controller
//! ([`super::controller`]) drives it with: open or remove a broker, start,
//! restart or remove a trigger, publish the ingress routes. It decides
//! nothing about *what* should run; it only makes it so and reports what
//! failed.
//!
//! The ingress port is bound when the first broker opens (so a control
//! plane without brokers holds no broker port) and stays bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{BrokerDef, Resolver, TriggerDef};
use super::delivery::{HyperSender, Sender, Sleeper, TokioSleeper};
use super::dispatcher::Dispatcher;
use super::ingress::{self, BrokerRoute, IngressState, Routes};
use super::log::{CursorState, EventLog, FileLog, FileLogOptions, JetStreamLog, JetStreamOptions};
use super::metrics::{EventingMetrics, TriggerStats};

#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// The ingress address.
    pub listen: SocketAddr,
    /// Where the embedded logs live: `<dir>/<namespace>/<broker>/`. The
    /// control plane passes `DATA_DIR/eventing`.
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
    /// How `ref` destinations reach Services (domain, mesh gateway).
    pub resolver: Resolver,
}

impl BrokerOptions {
    pub fn new(listen: SocketAddr, dir: PathBuf, resolver: Resolver) -> Self {
        BrokerOptions {
            listen,
            dir,
            log: FileLogOptions::default(),
            nats: None,
            max_body: 4 << 20,
            max_inflight: 64,
            persist_every: Duration::from_millis(100),
            retention_every: Duration::from_secs(30),
            resolver,
        }
    }
}

/// `(namespace, name)`.
pub type Key = (String, String);

struct RunningBroker {
    log: Arc<dyn EventLog>,
    route: Arc<BrokerRoute>,
    /// Stops the retention sweep (embedded logs only).
    retention: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

struct RunningTrigger {
    def: Arc<TriggerDef>,
    stats: Arc<TriggerStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What runs, and the means to change it.
pub struct Eventing {
    opts: BrokerOptions,
    metrics: EventingMetrics,
    sender: Arc<dyn Sender>,
    sleeper: Arc<dyn Sleeper>,
    shutdown: watch::Receiver<bool>,
    routes: watch::Sender<Arc<Routes>>,
    ingress: Option<(SocketAddr, JoinHandle<()>)>,
    brokers: BTreeMap<Key, RunningBroker>,
    triggers: BTreeMap<Key, RunningTrigger>,
}

// === impl Eventing ===

impl Eventing {
    /// Nothing runs yet; `shutdown` ends the ingress server and the sweeps
    /// ([`Eventing::stop`] stops the dispatchers, saving their cursors).
    pub fn new(
        opts: BrokerOptions,
        metrics: EventingMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Eventing {
        Eventing::with_io(
            opts,
            metrics,
            Arc::new(HyperSender::new()),
            Arc::new(TokioSleeper),
            shutdown,
        )
    }

    /// The same with the delivery edges injected (tests).
    pub fn with_io(
        opts: BrokerOptions,
        metrics: EventingMetrics,
        sender: Arc<dyn Sender>,
        sleeper: Arc<dyn Sleeper>,
        shutdown: watch::Receiver<bool>,
    ) -> Eventing {
        Eventing {
            opts,
            metrics,
            sender,
            sleeper,
            shutdown,
            routes: watch::channel(Arc::new(Routes::new())).0,
            ingress: None,
            brokers: BTreeMap::new(),
            triggers: BTreeMap::new(),
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.opts.resolver
    }

    /// The bound ingress address, once a broker opened.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress.as_ref().map(|(a, _)| *a)
    }

    /// Binds the ingress port if it is not bound yet.
    pub async fn bind_ingress(&mut self) -> Result<SocketAddr, String> {
        if let Some((addr, _)) = &self.ingress {
            return Ok(*addr);
        }
        let listener = TcpListener::bind(self.opts.listen)
            .await
            .map_err(|e| format!("binding the broker ingress {}: {e}", self.opts.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("the broker ingress address: {e}"))?;
        let state = Arc::new(IngressState {
            routes: self.routes.subscribe(),
            max_body: self.opts.max_body,
        });
        let task = tokio::spawn(ingress::serve(listener, state, self.shutdown.clone()));
        tracing::info!(%addr, "broker ingress listening");
        self.ingress = Some((addr, task));
        Ok(addr)
    }

    pub fn broker_keys(&self) -> Vec<Key> {
        self.brokers.keys().cloned().collect()
    }

    pub fn has_broker(&self, key: &Key) -> bool {
        self.brokers.contains_key(key)
    }

    /// Opens (recovering) a broker's log. `live_cursors` are the cursor
    /// names of every trigger of this broker in the store: any other saved
    /// cursor belongs to a trigger deleted while the broker was not running
    /// and is removed, or it would hold retention back forever.
    pub async fn open_broker(
        &mut self,
        def: &BrokerDef,
        live_cursors: &[String],
    ) -> Result<(), String> {
        let key = (def.namespace.clone(), def.name.clone());
        if self.brokers.contains_key(&key) {
            return Ok(());
        }
        let what = format!("{}/{}", def.namespace, def.name);
        let (log, file): (Arc<dyn EventLog>, Option<Arc<FileLog>>) = match &self.opts.nats {
            Some(nats) => {
                let log = JetStreamLog::open(nats, &def.namespace, &def.name)
                    .await
                    .map_err(|e| format!("opening the JetStream log of {what}: {e}"))?;
                tracing::info!(broker = %what, events = log.end(), url = %nats.url, "JetStream event log open");
                (Arc::new(log), None)
            }
            None => {
                let dir = self.opts.dir.join(&def.namespace).join(&def.name);
                let (d, lo) = (dir.clone(), self.opts.log.clone());
                let log = tokio::task::spawn_blocking(move || FileLog::open(d, lo))
                    .await
                    .map_err(|e| format!("opening the event log of {what}: {e}"))?
                    .map_err(|e| {
                        format!("opening the event log of {what} in {}: {e}", dir.display())
                    })?;
                tracing::info!(broker = %what, events = log.end(), dir = %dir.display(), "event log open");
                for name in log.cursor_names() {
                    if !live_cursors.contains(&name) {
                        tracing::info!(cursor = %name, "removing the cursor of a deleted trigger");
                        if let Err(e) = log.remove_cursor(&name).await {
                            tracing::warn!(cursor = %name, error = %e, "removing a stale cursor failed");
                        }
                    }
                }
                let log = Arc::new(log);
                (log.clone(), Some(log))
            }
        };
        let retention = file.map(|f| self.spawn_retention(f));
        let route = Arc::new(BrokerRoute {
            log: log.clone(),
            metrics: self.metrics.broker(&def.namespace, &def.name),
        });
        self.brokers.insert(
            key,
            RunningBroker {
                log,
                route,
                retention,
            },
        );
        Ok(())
    }

    fn spawn_retention(&self, log: Arc<FileLog>) -> (watch::Sender<bool>, JoinHandle<()>) {
        let (tx, mut stop) = watch::channel(false);
        let mut shutdown = self.shutdown.clone();
        let every = self.opts.retention_every;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                    _ = shutdown.changed() => return,
                }
                let l = log.clone();
                // Unlinks and a directory fsync: off the runtime.
                let _ = tokio::task::spawn_blocking(move || l.enforce_retention(SystemTime::now()))
                    .await;
            }
        });
        (tx, task)
    }

    /// Makes ingress serve exactly the open brokers.
    pub fn publish_routes(&self) {
        let routes: Routes = self
            .brokers
            .iter()
            .map(|((ns, name), b)| (ingress::route_key(ns, name), b.route.clone()))
            .collect();
        self.routes.send_replace(Arc::new(routes));
    }

    /// Removes a deleted broker: ingress answers 404 for it at once, its
    /// triggers stop, and its log (events and cursors) is deleted.
    pub async fn remove_broker(&mut self, key: &Key) {
        let Some(b) = self.brokers.remove(key) else {
            return;
        };
        self.publish_routes();
        let doomed: Vec<Key> = self
            .triggers
            .iter()
            .filter(|((ns, _), t)| *ns == key.0 && t.def.broker == key.1)
            .map(|(k, _)| k.clone())
            .collect();
        for t in doomed {
            self.stop_trigger(&t).await;
            self.metrics.remove_trigger(&t.0, &key.1, &t.1);
        }
        if let Some((stop, task)) = b.retention {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Err(e) = b.log.delete_all().await {
            tracing::warn!(broker = %format!("{}/{}", key.0, key.1), error = %e, "deleting the event log failed");
        }
        self.metrics.remove_broker(&key.0, &key.1);
        tracing::info!(broker = %format!("{}/{}", key.0, key.1), "broker removed, its events deleted");
    }

    pub fn trigger_keys(&self) -> Vec<Key> {
        self.triggers.keys().cloned().collect()
    }

    /// A running trigger's metric handles.
    pub fn trigger_stats(&self, key: &Key) -> Option<Arc<TriggerStats>> {
        self.triggers.get(key).map(|t| t.stats.clone())
    }

    /// The definition a trigger runs with, if it runs.
    pub fn running_trigger(&self, key: &Key) -> Option<&Arc<TriggerDef>> {
        self.triggers.get(key).map(|t| &t.def)
    }

    /// Starts a trigger's dispatcher, or restarts it when its definition
    /// changed; a restart keeps the cursor (the old dispatcher saves it on
    /// the way out, the new one resumes from it). A new trigger's cursor is
    /// created before this returns, at the log's end: it sees the events
    /// appended from now on, as in Knative.
    pub async fn start_trigger(&mut self, def: TriggerDef) -> Result<(), String> {
        let key = (def.namespace.clone(), def.name.clone());
        let stats = match self.triggers.get(&key) {
            Some(t) if t.def.source == def.source => return Ok(()),
            Some(t) => {
                let stats = t.stats.clone();
                self.stop_trigger(&key).await;
                tracing::info!(trigger = %def.cursor_name(), "trigger changed: dispatcher restarts from its cursor");
                stats
            }
            None => Arc::new(self.metrics.trigger(&def.namespace, &def.broker, &def.name)),
        };
        let Some(broker) = self
            .brokers
            .get(&(def.namespace.clone(), def.broker.clone()))
        else {
            return Err(format!(
                "broker {}/{} is not running",
                def.namespace, def.broker
            ));
        };
        let log = broker.log.clone();
        let name = def.cursor_name();
        match log.load_cursor(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let c = CursorState {
                    committed: log.end(),
                    parked: Vec::new(),
                };
                log.store_cursor(&name, &c)
                    .await
                    .map_err(|e| format!("creating the cursor of trigger {name}: {e}"))?;
            }
            Err(e) => return Err(format!("reading the cursor of trigger {name}: {e}")),
        }
        let def = Arc::new(def);
        let (stop, stop_rx) = watch::channel(false);
        let d = Dispatcher {
            trigger: def.clone(),
            log,
            sender: self.sender.clone(),
            sleeper: self.sleeper.clone(),
            stats: stats.clone(),
            max_inflight: self.opts.max_inflight.max(1),
            persist_every: self.opts.persist_every,
        };
        let task = tokio::spawn(d.run(stop_rx));
        self.triggers.insert(
            key,
            RunningTrigger {
                def,
                stats,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// Stops a trigger's dispatcher and waits until it saved its cursor;
    /// the cursor stays (the trigger still exists but cannot run now).
    pub async fn pause_trigger(&mut self, key: &Key) {
        self.stop_trigger(key).await;
    }

    async fn stop_trigger(&mut self, key: &Key) {
        if let Some(t) = self.triggers.remove(key) {
            let _ = t.stop.send(true);
            if let Err(e) = t.task.await {
                tracing::error!(trigger = %format!("{}.{}", key.0, key.1), error = %e, "dispatcher task failed");
            }
        }
    }

    /// Stops a deleted trigger and drops its cursor (so retention no longer
    /// waits for it) and its metrics.
    pub async fn remove_trigger(&mut self, key: &Key) {
        let Some(def) = self.triggers.get(key).map(|t| t.def.clone()) else {
            return;
        };
        self.stop_trigger(key).await;
        if let Some(b) = self
            .brokers
            .get(&(def.namespace.clone(), def.broker.clone()))
        {
            if let Err(e) = b.log.remove_cursor(&def.cursor_name()).await {
                tracing::warn!(trigger = %def.cursor_name(), error = %e, "removing the cursor failed");
            }
        }
        self.metrics
            .remove_trigger(&def.namespace, &def.broker, &def.name);
        tracing::info!(trigger = %def.cursor_name(), "trigger removed");
    }

    /// Stops every dispatcher (each saves its cursor) and waits for the
    /// ingress server and the sweeps, which end on the shutdown signal.
    pub async fn stop(mut self) {
        for key in self.trigger_keys() {
            self.stop_trigger(&key).await;
        }
        for (_, b) in std::mem::take(&mut self.brokers) {
            if let Some((stop, task)) = b.retention {
                let _ = stop.send(true);
                let _ = task.await;
            }
        }
        if let Some((_, task)) = self.ingress.take() {
            let _ = task.await;
        }
    }
}
