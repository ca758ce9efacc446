//! The scaling loop (`docs/autoscaling.md`, "The control loop's API"):
//! model → autoscaler → scaler → runtime state (→ EDS).
//!
//! One task owns the decisions:
//! - revisions from the model (re-read on every store commit) are
//!   declared to the scaler and the autoscaler with their
//!   `autoscaling.knative.dev/*` annotations, `containerConcurrency` and
//!   reachability; deleted ones are removed and their runtime forgotten;
//! - every [`TICK_INTERVAL`] the autoscaler decides for every revision and
//!   the scale it wants is set on the scaler;
//! - load reports and activation demand ([`AutoscalerHandle`], fed by the
//!   report server) can decide at once; the loop is poked to act on it;
//! - the scaler's instance changes become the revision's ready endpoints
//!   ([`Runtime::set_endpoints`], which the xDS translation turns into the
//!   revision's ClusterLoadAssignment), its actual scale, and the
//!   autoscaler's ready count; its failures become the revision's
//!   `Ready=False` reason.
//!
//! The scale last set on the scaler is remembered per revision and
//! compared with what the autoscaler wants after every decision, rather
//! than trusting `scale_changed` alone: a poke that was coalesced or a
//! scaler call that failed is then retried at the next tick.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};

use crate::autoscaler::{Annotations, Autoscaler, ConfigError, GlobalConfig, Stat, TICK_INTERVAL};
use crate::clock::SystemClock;
use crate::model::serving::Revision;
use crate::scaler::{Scaler, ScalerEvent, Workload};
use crate::store::{Runtime, Serving, ServingSnapshot};

/// (namespace, revision name).
pub type RevisionKey = (String, String);

/// Bound on a single scaler call, so a stuck backend cannot stall every
/// other revision's decisions.
const SCALER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the loop runs.
pub struct ScalingConfig {
    pub scaler: Arc<dyn Scaler>,
    /// Cluster-wide autoscaler defaults (Knative's `config-autoscaler`).
    pub global: GlobalConfig,
    /// Decision period; Knative's 2 s.
    pub tick: Duration,
    /// Print a line per revision to stdout when its desired or ready
    /// count or its concurrency changes (`ferry-control up`).
    pub live: bool,
}

impl ScalingConfig {
    pub fn new(scaler: Arc<dyn Scaler>) -> Self {
        ScalingConfig {
            scaler,
            global: GlobalConfig::default(),
            tick: TICK_INTERVAL,
            live: false,
        }
    }
}

/// The autoscaler, shared between the report server (load, demand) and
/// the loop (ticks, reachability, ready counts). A plain mutex: every use
/// is a short computation, never held across an `.await`.
pub struct AutoscalerHandle {
    autoscaler: Mutex<Autoscaler<RevisionKey>>,
    /// Revisions with an immediate decision to act on.
    poke: mpsc::Sender<RevisionKey>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The autoscaler's state is updated in place by short, non-panicking
    // steps; a poisoned lock still guards usable state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AutoscalerHandle {
    /// One revision's load for the current second (Knative's `Stat`).
    pub fn record(&self, key: &RevisionKey, stat: &Stat) {
        let decided = lock(&self.autoscaler).record(key, stat).is_some();
        if decided {
            self.poke(key);
        }
    }

    /// A proxy holds requests for a revision: decide now (at least
    /// max(1, activation-scale) when the revision is at zero).
    pub fn demand(&self, key: &RevisionKey) {
        let decided = lock(&self.autoscaler).demand(key).is_some();
        if decided {
            self.poke(key);
        }
    }

    /// Ready instances the autoscaler knows of (0 for unknown revisions).
    pub fn ready(&self, key: &RevisionKey) -> u32 {
        lock(&self.autoscaler).get(key).map_or(0, |r| r.ready())
    }

    fn poke(&self, key: &RevisionKey) {
        // A full channel already holds pokes the loop has not read; the
        // next tick compares wanted and set scale for every revision, so
        // a dropped poke is only a delay.
        let _ = self.poke.try_send(key.clone());
    }
}

/// What the loop knows of a revision.
struct Known {
    workload: Workload,
    annotations: Annotations,
    /// The scale last set on the scaler.
    set_scale: Option<u32>,
    /// The autoscaler's latest wanted scale and observed concurrency.
    desired: u32,
    /// The panic-window average of the last decision.
    concurrency: f64,
    panic: bool,
    ready: u32,
    /// What the last live line showed.
    shown: Option<(u32, u32, f64)>,
}

pub struct ControlLoop {
    serving: Arc<Serving>,
    scaler: Arc<dyn Scaler>,
    handle: Arc<AutoscalerHandle>,
    pokes: mpsc::Receiver<RevisionKey>,
    known: BTreeMap<RevisionKey, Known>,
    tick: Duration,
    live: bool,
    started: Instant,
}

impl ControlLoop {
    /// The loop and the handle the report server feeds.
    pub fn new(serving: Arc<Serving>, cfg: ScalingConfig) -> (ControlLoop, Arc<AutoscalerHandle>) {
        let (poke, pokes) = mpsc::channel(1024);
        let handle = Arc::new(AutoscalerHandle {
            autoscaler: Mutex::new(Autoscaler::new(Arc::new(SystemClock::new()), cfg.global)),
            poke,
        });
        let lp = ControlLoop {
            serving,
            scaler: cfg.scaler,
            handle: handle.clone(),
            pokes,
            known: BTreeMap::new(),
            tick: cfg.tick,
            live: cfg.live,
            started: Instant::now(),
        };
        (lp, handle)
    }

    fn runtime(&self) -> &Arc<Runtime> {
        self.serving.runtime()
    }

    /// Runs until `shutdown` turns true (or its sender is gone), then stops
    /// every instance through the scaler.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (mut store_version, _) = self.serving.watch();
        let mut events = self.scaler.subscribe();
        self.sync_revisions().await;
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                r = store_version.changed() => {
                    if r.is_err() {
                        break;
                    }
                    self.sync_revisions().await;
                }
                Some(key) = self.pokes.recv() => self.act_now(&key).await,
                ev = events.recv() => match ev {
                    Ok(ScalerEvent::Instances(key)) => self.refresh_instances(&key).await,
                    Ok(ScalerEvent::Failure(key, failure)) => {
                        if let Some((reason, message)) = &failure {
                            tracing::warn!(revision = %key.1, %reason, "{message}");
                        }
                        self.runtime().set_failure(&key.0, &key.1, failure);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some changes: read every revision again.
                        let keys: Vec<RevisionKey> = self.known.keys().cloned().collect();
                        for key in keys {
                            self.refresh_instances(&key).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => self.tick().await,
            }
        }
        tracing::info!(scaler = self.scaler.name(), "stopping every instance");
        self.scaler.shutdown().await;
    }

    /// Follows the model: new, changed and deleted revisions, and every
    /// revision's reachability.
    async fn sync_revisions(&mut self) {
        let snap = match self.serving.snapshot(None).await {
            Ok(s) => s,
            Err(e) => {
                // The next commit retries; the current revisions keep
                // their settings meanwhile.
                tracing::error!(error = %e, "reading the model for the scaler failed");
                return;
            }
        };
        let reachable = reachable_revisions(&snap);
        let mut seen = BTreeSet::new();
        let mut added = false;
        for rev in &snap.revisions {
            let key = (rev.metadata.namespace.clone(), rev.metadata.name.clone());
            seen.insert(key.clone());
            let workload = Workload::from_revision(rev);
            let annotations = match revision_annotations(rev, reachable.contains(&key)) {
                Ok(a) => a,
                Err(e) => {
                    // Validated on apply; only a store written by another
                    // version could get here. Knative's defaults then.
                    tracing::error!(revision = %key.1, error = %e, "bad autoscaling annotations");
                    Annotations {
                        container_concurrency: Some(workload.container_concurrency),
                        reachable: Some(reachable.contains(&key)),
                        ..Annotations::default()
                    }
                }
            };

            let (workload_changed, annotations_changed) = match self.known.get(&key) {
                Some(k) => (k.workload != workload, k.annotations != annotations),
                None => (true, true),
            };
            if workload_changed {
                if let Err(e) = self.scaler.upsert(workload.clone()).await {
                    tracing::error!(revision = %key.1, error = %e, "declaring the revision failed");
                    continue;
                }
            }
            if annotations_changed {
                let r = lock(&self.handle.autoscaler).upsert(key.clone(), annotations.clone());
                if let Err(e) = r {
                    tracing::error!(revision = %key.1, error = %e, "autoscaler settings refused");
                    continue;
                }
            }
            match self.known.get_mut(&key) {
                Some(k) => {
                    k.workload = workload;
                    k.annotations = annotations;
                }
                None => {
                    added = true;
                    tracing::info!(
                        revision = %key.1,
                        namespace = %key.0,
                        reachable = annotations.reachable.unwrap_or(true),
                        "revision added to the autoscaler"
                    );
                    self.known.insert(
                        key,
                        Known {
                            workload,
                            annotations,
                            set_scale: None,
                            desired: 0,
                            concurrency: 0.0,
                            panic: false,
                            ready: 0,
                            shown: None,
                        },
                    );
                }
            }
        }
        let gone: Vec<RevisionKey> = self
            .known
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            tracing::info!(revision = %key.1, namespace = %key.0, "revision deleted");
            self.known.remove(&key);
            lock(&self.handle.autoscaler).remove(&key);
            self.scaler.remove(key.clone()).await;
            self.runtime().forget(&key.0, &key.1);
        }
        if added {
            // A new revision starts at its initial scale now, not at the
            // next tick.
            self.tick().await;
        }
    }

    /// The periodic decision for every revision.
    async fn tick(&mut self) {
        let reports = lock(&self.handle.autoscaler).tick();
        for (key, r) in reports {
            if let Some(k) = self.known.get_mut(&key) {
                k.concurrency = r.panic_avg;
                k.panic = r.panic;
            }
            self.set_scale(&key, r.scale).await;
        }
    }

    /// An immediate decision was made for `key` (load or demand at zero).
    async fn act_now(&mut self, key: &RevisionKey) {
        let scale = lock(&self.handle.autoscaler).get(key).map(|r| r.scale());
        if let Some(scale) = scale {
            tracing::info!(revision = %key.1, scale, "activating");
            self.set_scale(key, scale).await;
        }
    }

    /// Records the wanted scale and sets it on the scaler if it differs
    /// from what was last set. `scale < 0` is "unknown yet": nothing to do.
    async fn set_scale(&mut self, key: &RevisionKey, scale: i32) {
        let Ok(scale) = u32::try_from(scale) else {
            return;
        };
        self.runtime().set_desired_scale(&key.0, &key.1, scale);
        let Some(k) = self.known.get_mut(key) else {
            return;
        };
        k.desired = scale;
        if k.set_scale != Some(scale) {
            let call = self.scaler.scale(key.clone(), scale);
            match tokio::time::timeout(SCALER_CALL_TIMEOUT, call).await {
                Ok(Ok(())) => {
                    tracing::info!(revision = %key.1, from = ?k.set_scale, to = scale, "scaled");
                    k.set_scale = Some(scale);
                }
                Ok(Err(e)) => tracing::error!(revision = %key.1, error = %e, "scaling failed"),
                Err(_) => tracing::error!(revision = %key.1, "scaling timed out"),
            }
        }
        self.show(key);
    }

    /// The scaler says `key`'s instances changed: publish its ready
    /// endpoints.
    async fn refresh_instances(&mut self, key: &RevisionKey) {
        let instances = self.scaler.instances(key.clone()).await;
        let ready: Vec<SocketAddr> = instances
            .iter()
            .filter(|i| i.ready)
            .map(|i| i.endpoint)
            .collect();
        let n = u32::try_from(ready.len()).unwrap_or(u32::MAX);
        let rt = self.runtime().clone();
        if !self.known.contains_key(key) {
            // A deleted revision's last instances going away.
            rt.forget(&key.0, &key.1);
            return;
        }
        rt.set_endpoints(&key.0, &key.1, ready);
        rt.set_actual_scale(&key.0, &key.1, n);
        lock(&self.handle.autoscaler).set_ready(key, n);
        if let Some(k) = self.known.get_mut(key) {
            k.ready = n;
        }
        self.show(key);
    }

    /// Prints the revision's live line when something visible changed.
    fn show(&mut self, key: &RevisionKey) {
        if !self.live {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let Some(k) = self.known.get_mut(key) else {
            return;
        };
        // The panic window's average is the live one (the last complete
        // seconds' load).
        let concurrency = k.concurrency;
        let now = (k.desired, k.ready, concurrency);
        let changed = match k.shown {
            None => true,
            Some((d, r, c)) => {
                d != now.0 || r != now.1 || (c - now.2).abs() >= 1.0_f64.max(c * 0.2)
            }
        };
        if changed {
            k.shown = Some(now);
            println!(
                "[{elapsed:7.1}s] {:<24} desired {:>3}  ready {:>3}  concurrency {:>7.1}{}",
                format!("{}/{}", key.0, key.1),
                now.0,
                now.1,
                now.2,
                if k.panic { "  (panic)" } else { "" }
            );
        }
    }
}

/// Waits until the shutdown flag is set or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A revision's autoscaler settings: its template's
/// `autoscaling.knative.dev/*` annotations, its `containerConcurrency`, and
/// whether a route can send it traffic.
pub fn revision_annotations(rev: &Revision, reachable: bool) -> Result<Annotations, ConfigError> {
    let mut a = Annotations::from_annotations(
        rev.metadata
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    a.container_concurrency = Some(Workload::from_revision(rev).container_concurrency);
    a.reachable = Some(reachable);
    Ok(a)
}

/// Revisions a route can send traffic to: named in a route's resolved
/// traffic with a percent or a tag, or the latest created revision of a
/// configuration (Knative's "pending" routing state: not routed yet, but
/// about to be, so it must start at its initial scale to become ready).
pub fn reachable_revisions(snap: &ServingSnapshot) -> BTreeSet<RevisionKey> {
    let mut out = BTreeSet::new();
    for route in &snap.routes {
        for t in &route.status.traffic {
            let Some(rev) = &t.revision_name else {
                continue;
            };
            if t.percent.unwrap_or(0) > 0 || t.tag.is_some() {
                out.insert((route.metadata.namespace.clone(), rev.clone()));
            }
        }
    }
    for c in &snap.configurations {
        let latest = &c.status.latest_created_revision_name;
        if !latest.is_empty() {
            out.insert((c.metadata.namespace.clone(), latest.clone()));
        }
    }
    out
}

#[cfg(test)]
mod annotation_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::{broadcast, watch};

    use super::*;
    use crate::model::manifest;
    use crate::report_server::{proto, ReportServer};
    use crate::scaler::{BoxFuture, Instance, ScalerError};
    use crate::store::FileStore;

    const HELLO: &str = include_str!("../../examples/hello/service.yaml");

    /// A scaler whose instances are ready the moment they are asked for,
    /// each with a made-up endpoint.
    struct FakeScaler {
        scales: Mutex<BTreeMap<RevisionKey, u32>>,
        calls: Mutex<Vec<(String, u32)>>,
        events: broadcast::Sender<ScalerEvent>,
    }

    impl FakeScaler {
        fn new() -> Arc<FakeScaler> {
            Arc::new(FakeScaler {
                scales: Mutex::new(BTreeMap::new()),
                calls: Mutex::new(Vec::new()),
                events: broadcast::channel(64).0,
            })
        }

        fn calls(&self) -> Vec<(String, u32)> {
            lock(&self.calls).clone()
        }
    }

    impl Scaler for FakeScaler {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn upsert(&self, w: Workload) -> BoxFuture<'_, Result<(), ScalerError>> {
            lock(&self.scales).entry(w.key()).or_insert(0);
            Box::pin(async { Ok(()) })
        }
        fn scale(&self, key: RevisionKey, n: u32) -> BoxFuture<'_, Result<(), ScalerError>> {
            lock(&self.scales).insert(key.clone(), n);
            lock(&self.calls).push((key.1.clone(), n));
            let _ = self.events.send(ScalerEvent::Instances(key));
            Box::pin(async { Ok(()) })
        }
        fn instances(&self, key: RevisionKey) -> BoxFuture<'_, Vec<Instance>> {
            let n = lock(&self.scales).get(&key).copied().unwrap_or(0);
            let base: u16 = if key.1 == "hello-v1" { 41000 } else { 42000 };
            let out = (0..n)
                .map(|i| Instance {
                    name: format!("{}-{i}", key.1),
                    endpoint: SocketAddr::from(([127, 0, 0, 1], base + i as u16)),
                    ready: true,
                })
                .collect();
            Box::pin(async move { out })
        }
        fn remove(&self, key: RevisionKey) -> BoxFuture<'_, ()> {
            lock(&self.scales).remove(&key);
            Box::pin(async {})
        }
        fn subscribe(&self) -> broadcast::Receiver<ScalerEvent> {
            self.events.subscribe()
        }
        fn shutdown(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// Applied revisions start at their initial scale; the scaler's ready
    /// instances become the runtime's endpoints and actual scale; the
    /// autoscaler's decision is the desired scale; a deleted service's
    /// revisions are removed and forgotten.
    #[tokio::test]
    async fn revisions_are_scaled_and_their_endpoints_published() {
        let serving = Arc::new(Serving::new(
            Arc::new(FileStore::memory()),
            Arc::new(Runtime::new()),
            "example.com",
        ));
        let fake = FakeScaler::new();
        let mut cfg = ScalingConfig::new(fake.clone());
        cfg.tick = Duration::from_millis(50);
        let (lp, handle) = ControlLoop::new(serving.clone(), cfg);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(lp.run(stop_rx));

        for m in manifest::parse(HELLO).unwrap_or_else(|e| panic!("{e}")) {
            serving.apply(m).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let rt = serving.runtime().clone();
        until("both revisions have an endpoint", || {
            rt.endpoints_of("default", "hello-v1").len() == 1
                && rt.endpoints_of("default", "hello-v2").len() == 1
        })
        .await;
        let v1 = rt.get("default", "hello-v1");
        assert_eq!((v1.actual_replicas, v1.desired_replicas), (1, 1));
        assert_eq!(
            rt.endpoints_of("default", "hello-v1"),
            [SocketAddr::from(([127, 0, 0, 1], 41000))]
        );
        assert!(fake.calls().contains(&("hello-v1".to_string(), 1)));
        assert_eq!(handle.ready(&("default".into(), "hello-v1".into())), 1);

        // A load report through the report server reaches the autoscaler:
        // a concurrency of 30 at target 10 × 70 % wants ⌈30 / 7⌉ = 5
        // instances. (One report: reports of the same second add up.)
        let server = ReportServer::new(handle.clone());
        {
            server.ingest(&proto::LoadReport {
                pod_name: "hello-v1-0".into(),
                stats: vec![proto::Stat {
                    namespace: "default".into(),
                    revision: "hello-v1".into(),
                    average_concurrency: 30.0,
                    request_count: 30.0,
                    ..Default::default()
                }],
                trigger: proto::Trigger::Periodic as i32,
                ..Default::default()
            });
        }
        until("hello-v1 scales to 5", || {
            rt.get("default", "hello-v1").actual_replicas == 5
        })
        .await;
        assert_eq!(rt.endpoints_of("default", "hello-v1").len(), 5);

        serving
            .delete(crate::model::Kind::Service, "default", "hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        until("the revisions are forgotten", || {
            rt.endpoints().is_empty() && lock(&fake.scales).is_empty()
        })
        .await;

        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    #[test]
    fn reachability_follows_traffic_tags_and_the_latest_revision() {
        let mut snap = ServingSnapshot::default();
        let route: crate::model::serving::Route = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {},
            "status": {"traffic": [
                {"revisionName": "a", "percent": 100},
                {"revisionName": "b", "percent": 0, "tag": "next"},
                {"revisionName": "c", "percent": 0}
            ]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        snap.routes.push(route);
        let cfg: crate::model::serving::Configuration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"command": ["x"]}]}}},
            "status": {"latestCreatedRevisionName": "d"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        snap.configurations.push(cfg);
        let r = reachable_revisions(&snap);
        let names: Vec<&str> = r.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
    }
}
