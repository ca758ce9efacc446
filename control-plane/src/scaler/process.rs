//! The `process` scaler: every instance of a revision is two local
//! processes, no Kubernetes needed.
//!
//! - the app: the revision's `command`/`args`/`env`, with `PORT` set to a
//!   free loopback port and `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION` as
//!   Knative sets them;
//! - its sidecar: `ferry-proxy` in the inbound queue-proxy role, from a
//!   generated static config (one listener on another free loopback port,
//!   one cluster → `127.0.0.1:$PORT` with a `queue:` block), reporting load
//!   to the control plane with `--report-to`; with a [`Mesh`], also in the
//!   outbound role: its bootstrap points at the control plane's xDS (node
//!   id = the instance, node cluster = the mesh's), which serves it an
//!   outbound listener on a third loopback port, given to the app as
//!   `FERRY_OUTBOUND=http://127.0.0.1:PORT`.
//!
//! The instance's endpoint is the *sidecar's* listener; it is listed as
//! ready once the sidecar's admin `/ready` answers 200, which the sidecar
//! gates on the app's readiness probe. Each instance is watched by one
//! supervisor task: a crash (of either process) takes the instance out,
//! kills the survivor and starts both again after a capped exponential
//! backoff; repeated crashes mark the revision failed (Knative's
//! `ExitCode{n}` reason) until an instance becomes ready again. A stopped
//! instance is first taken out of the endpoints, then drained: SIGTERM to
//! the sidecar (it finishes in-flight requests), then SIGTERM to the app,
//! SIGKILL after the grace period.
//!
//! Children run in their own process groups so a terminal's Ctrl-C reaches
//! only `ferry-control`, which then stops them in order
//! ([`Scaler::shutdown`]); `kill_on_drop` is the backstop if the control
//! plane unwinds without a shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{BoxFuture, Instance, Mesh, RevisionKey, Scaler, ScalerError, ScalerEvent, Workload};

/// Until an instance is ready its sidecar's `/ready?wait=` is long-polled
/// (answered the moment it is ready), this long at a time; a sidecar that
/// answers sooner without being ready (one without `wait`, or still
/// binding its admin port) is asked again after `PROBE_FAST` (Knative's
/// aggressive interval), or `PROBE_CONNECT` while its admin port is not
/// bound yet. Once ready, it is checked every `PROBE_SLOW`.
const READY_WAIT: Duration = Duration::from_secs(2);
const PROBE_FAST: Duration = Duration::from_millis(50);
const PROBE_CONNECT: Duration = Duration::from_millis(2);
const PROBE_SLOW: Duration = Duration::from_secs(1);
/// One probe's limit (beyond the long-poll's own wait).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Restart backoff: 200 ms doubling per crash in a row, capped.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Crashes in a row (across a revision's instances) before the revision
/// is reported failed.
const CRASHES_FOR_FAILURE: u32 = 3;
/// Lines of the app's log quoted in a failure message.
const LOG_TAIL_LINES: usize = 5;

#[derive(Clone, Debug)]
pub struct ProcessScalerConfig {
    /// The `ferry-proxy` binary run as each instance's sidecar.
    pub proxy_bin: PathBuf,
    /// Where a bare command name (`ferry-hello`) is looked for before
    /// `PATH`: the directory of the running `ferry-control`, so the demo
    /// app built from this workspace is found without installing it.
    pub bin_dir: Option<PathBuf>,
    /// Sidecar configs and instance logs go to `work_dir/instances/`.
    pub work_dir: PathBuf,
    /// The control plane's load-report address for sidecars
    /// (`http://127.0.0.1:18000`); `None`: sidecars do not report.
    pub report_to: Option<String>,
    /// SIGTERM to SIGKILL for the app.
    pub grace: Duration,
    /// The sidecar's `--drain-timeout` (in-flight requests finishing).
    pub drain_timeout: Duration,
    /// How long a stopping instance keeps serving after it left the
    /// endpoints, so every proxy has the EDS update before it drains.
    pub deregister_delay: Duration,
    /// Where sidecars take their outbound role from; `None`: inbound only.
    pub mesh: Option<Arc<dyn Mesh>>,
}

impl ProcessScalerConfig {
    /// Defaults, with the sidecar binary from `$FERRY_PROXY_BIN` or next to
    /// the running executable.
    pub fn new(work_dir: PathBuf, report_to: Option<String>) -> Self {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let proxy_bin = std::env::var_os("FERRY_PROXY_BIN")
            .map(PathBuf::from)
            .or_else(|| bin_dir.as_ref().map(|d| d.join("ferry-proxy")))
            .unwrap_or_else(|| PathBuf::from("ferry-proxy"));
        ProcessScalerConfig {
            proxy_bin,
            bin_dir,
            work_dir,
            report_to,
            grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            deregister_delay: Duration::from_millis(500),
            mesh: None,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct ProcessScaler {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ProcessScalerConfig,
    /// The sidecar binary takes `--report-to` / `--pod-name` (checked once:
    /// an older proxy would refuse to start with them).
    sidecar_reports: bool,
    state: Mutex<State>,
    events: broadcast::Sender<ScalerEvent>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
}

#[derive(Default)]
struct State {
    revisions: BTreeMap<RevisionKey, Rev>,
    /// Supervisors of instances being stopped (joined on shutdown).
    stopping: Vec<JoinHandle<()>>,
    /// Ports handed to running instances, so two never get the same one
    /// between "bind :0, read the port, close" and the child binding it.
    ports: BTreeSet<u16>,
}

struct Rev {
    workload: Arc<Workload>,
    slots: Vec<Slot>,
    /// Crashes in a row over all instances; reset when one gets ready.
    crashes: u32,
    failure: Option<(String, String)>,
}

struct Slot {
    name: String,
    status: Arc<Mutex<SlotStatus>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, Default)]
struct SlotStatus {
    endpoint: Option<SocketAddr>,
    ready: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments; data behind a poisoned
    // lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessScaler {
    /// Checks the sidecar binary and prepares the work directory.
    pub async fn start(cfg: ProcessScalerConfig) -> anyhow::Result<ProcessScaler> {
        use anyhow::Context as _;
        let dir = cfg.work_dir.join("instances");
        // A previous run that was killed (SIGKILL, OOM) could not stop its
        // children; they would hold ports and CPU forever.
        kill_orphans(&dir).await;
        // Leftovers of a previous run (configs, logs) are not state.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let help = Command::new(&cfg.proxy_bin)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| {
                format!(
                    "running the sidecar binary {} (build it with `cargo build`, or set \
                     FERRY_PROXY_BIN)",
                    cfg.proxy_bin.display()
                )
            })?;
        let sidecar_reports = String::from_utf8_lossy(&help.stdout).contains("--report-to");
        if cfg.report_to.is_some() && !sidecar_reports {
            tracing::warn!(
                proxy = %cfg.proxy_bin.display(),
                "this ferry-proxy has no --report-to: sidecars will not report load, so \
                 revisions scale only on demand and from their initial scale"
            );
        }
        let (events, _) = broadcast::channel(1024);
        Ok(ProcessScaler {
            inner: Arc::new(Inner {
                cfg,
                sidecar_reports,
                state: Mutex::new(State::default()),
                events,
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
            }),
        })
    }
}

impl Inner {
    fn emit(&self, e: ScalerEvent) {
        // No receiver is fine: nobody is interested yet.
        let _ = self.events.send(e);
    }

    fn instances_dir(&self) -> PathBuf {
        self.cfg.work_dir.join("instances")
    }

    /// Starts one supervisor for `key` (state lock held by the caller).
    fn add_slot(self: &Arc<Self>, key: &RevisionKey, rev: &mut Rev) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{id}", key.1);
        let status = Arc::new(Mutex::new(SlotStatus::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            self.clone(),
            key.clone(),
            name.clone(),
            status.clone(),
            stop_rx,
        ));
        rev.slots.push(Slot {
            name,
            status,
            stop,
            task,
        });
    }

    fn workload(&self, key: &RevisionKey) -> Option<Arc<Workload>> {
        lock(&self.state)
            .revisions
            .get(key)
            .map(|r| r.workload.clone())
    }

    fn reserve_ports(&self, n: usize) -> std::io::Result<Vec<u16>> {
        let mut st = lock(&self.state);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut tries = 0;
            loop {
                let l = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
                let port = l.local_addr()?.port();
                if st.ports.insert(port) {
                    out.push(port);
                    break;
                }
                tries += 1;
                if tries > 50 {
                    return Err(std::io::Error::other("no free loopback port"));
                }
            }
        }
        Ok(out)
    }

    fn release_ports(&self, ports: &[u16]) {
        let mut st = lock(&self.state);
        for p in ports {
            st.ports.remove(p);
        }
    }

    /// An instance of `key` crashed: count it, and report the revision
    /// failed after enough crashes in a row.
    fn record_crash(&self, key: &RevisionKey, reason: String, message: String) {
        let failure = {
            let mut st = lock(&self.state);
            let Some(rev) = st.revisions.get_mut(key) else {
                return;
            };
            rev.crashes += 1;
            if rev.crashes >= CRASHES_FOR_FAILURE && rev.failure.is_none() {
                rev.failure = Some((reason, message));
                rev.failure.clone()
            } else {
                None
            }
        };
        if let Some(f) = failure {
            self.emit(ScalerEvent::Failure(key.clone(), Some(f)));
        }
    }

    /// An instance of `key` got ready: the revision runs.
    fn record_ready(&self, key: &RevisionKey) {
        let recovered = {
            let mut st = lock(&self.state);
            let Some(rev) = st.revisions.get_mut(key) else {
                return;
            };
            rev.crashes = 0;
            rev.failure.take().is_some()
        };
        if recovered {
            self.emit(ScalerEvent::Failure(key.clone(), None));
        }
    }
}

impl Scaler for ProcessScaler {
    fn name(&self) -> &'static str {
        "process"
    }

    fn upsert(&self, workload: Workload) -> BoxFuture<'_, Result<(), ScalerError>> {
        Box::pin(async move {
            let key = workload.key();
            let mut st = lock(&self.inner.state);
            match st.revisions.get_mut(&key) {
                // Instances started from now on use the new workload; the
                // running ones keep theirs (revisions are immutable, so this
                // is a control-plane config change, not a rollout).
                Some(rev) => rev.workload = Arc::new(workload),
                None => {
                    let failure = if workload.command.is_empty() {
                        Some((
                            "NoCommand".to_string(),
                            "the process scaler runs a container's command; this one has only \
                             an image"
                                .to_string(),
                        ))
                    } else {
                        None
                    };
                    st.revisions.insert(
                        key.clone(),
                        Rev {
                            workload: Arc::new(workload),
                            slots: Vec::new(),
                            crashes: 0,
                            failure: failure.clone(),
                        },
                    );
                    drop(st);
                    if failure.is_some() {
                        self.inner.emit(ScalerEvent::Failure(key, failure));
                    }
                }
            }
            Ok(())
        })
    }

    fn scale(&self, key: RevisionKey, n: u32) -> BoxFuture<'_, Result<(), ScalerError>> {
        Box::pin(async move {
            if self.inner.shutting_down.load(Ordering::Acquire) {
                return Ok(());
            }
            let want = usize::try_from(n).unwrap_or(usize::MAX);
            let changed = {
                let mut st = lock(&self.inner.state);
                let st = &mut *st;
                let Some(rev) = st.revisions.get_mut(&key) else {
                    return Err(ScalerError::Unknown(key.0, key.1));
                };
                if rev.workload.command.is_empty() {
                    // Nothing to run; the failure was reported on upsert.
                    return Ok(());
                }
                let before = rev.slots.len();
                while rev.slots.len() < want {
                    self.inner.add_slot(&key, rev);
                }
                if rev.slots.len() > want {
                    // Stop the instances that serve nothing first (not ready),
                    // then the newest: the oldest have warm caches.
                    rev.slots.sort_by_key(|s| !lock(&s.status).ready);
                    let victims = rev.slots.split_off(want);
                    for v in victims {
                        let _ = v.stop.send(true);
                        tracing::info!(instance = %v.name, "stopping instance");
                        st.stopping.push(v.task);
                    }
                    st.stopping.retain(|h| !h.is_finished());
                }
                before != rev.slots.len()
            };
            if changed {
                // Victims left the list: their endpoints go now, before
                // they drain.
                self.inner.emit(ScalerEvent::Instances(key));
            }
            Ok(())
        })
    }

    fn instances(&self, key: RevisionKey) -> BoxFuture<'_, Vec<Instance>> {
        Box::pin(async move {
            let st = lock(&self.inner.state);
            let Some(rev) = st.revisions.get(&key) else {
                return Vec::new();
            };
            rev.slots
                .iter()
                .filter_map(|s| {
                    let status = *lock(&s.status);
                    status.endpoint.map(|endpoint| Instance {
                        name: s.name.clone(),
                        endpoint,
                        ready: status.ready,
                    })
                })
                .collect()
        })
    }

    fn remove(&self, key: RevisionKey) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            {
                let mut st = lock(&self.inner.state);
                if let Some(rev) = st.revisions.remove(&key) {
                    for s in rev.slots {
                        let _ = s.stop.send(true);
                        st.stopping.push(s.task);
                    }
                }
            }
            self.inner.emit(ScalerEvent::Instances(key));
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<ScalerEvent> {
        self.inner.events.subscribe()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.shutting_down.store(true, Ordering::Release);
            let handles: Vec<JoinHandle<()>> = {
                let mut st = lock(&self.inner.state);
                let mut handles = std::mem::take(&mut st.stopping);
                for rev in st.revisions.values_mut() {
                    for s in rev.slots.drain(..) {
                        let _ = s.stop.send(true);
                        handles.push(s.task);
                    }
                }
                handles
            };
            let bound =
                self.inner.cfg.drain_timeout + self.inner.cfg.grace + Duration::from_secs(5);
            let all = futures_util::future::join_all(handles);
            if tokio::time::timeout(bound, all).await.is_err() {
                tracing::warn!("instances still stopping after {bound:?}; leaving them");
            }
        })
    }
}

/// The two processes of a running instance.
struct Running {
    app: Child,
    sidecar: Child,
    endpoint: SocketAddr,
    admin: SocketAddr,
    app_addr: SocketAddr,
    ports: Vec<u16>,
    app_log: PathBuf,
    /// `{pid} {start time}` of both children, for [`kill_orphans`].
    pids: PathBuf,
}

impl Running {
    /// Frees what the instance held once both processes are gone: its
    /// ports, its pid record, its sidecar's registration in the mesh.
    async fn release(&self, inner: &Inner, name: &str) {
        inner.release_ports(&self.ports);
        let _ = tokio::fs::remove_file(&self.pids).await;
        if let Some(mesh) = &inner.cfg.mesh {
            mesh.unregister(name);
        }
    }
}

/// Why an instance could not start.
struct StartError {
    reason: &'static str,
    message: String,
}

/// Runs one instance slot until told to stop: start, probe, restart on a
/// crash with backoff, drain on stop.
async fn supervise(
    inner: Arc<Inner>,
    key: RevisionKey,
    name: String,
    status: Arc<Mutex<SlotStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let set_status = |s: SlotStatus| {
        let changed = {
            let mut cur = lock(&status);
            let changed = cur.endpoint != s.endpoint || cur.ready != s.ready;
            *cur = s;
            changed
        };
        if changed {
            inner.emit(ScalerEvent::Instances(key.clone()));
        }
    };
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(workload) = inner.workload(&key) else {
            return;
        };
        let mut run = match start_instance(&inner, &workload, &name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(instance = %name, reason = e.reason, "{}", e.message);
                inner.record_crash(&key, e.reason.to_string(), e.message);
                failures += 1;
                if backoff_or_stop(failures, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(
            instance = %name,
            endpoint = %run.endpoint,
            app = %run.app_addr,
            "instance started"
        );
        set_status(SlotStatus {
            endpoint: Some(run.endpoint),
            ready: false,
        });
        let started = Instant::now();
        let mut ready = false;
        let mut probe: BoxFuture<'static, bool> = Box::pin(until_ready(run.admin, run.app_addr));
        let crashed: (&'static str, std::io::Result<ExitStatus>) = loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    set_status(SlotStatus { endpoint: None, ready: false });
                    stop_instance(&inner, &name, &mut run).await;
                    run.release(&inner, &name).await;
                    return;
                }
                st = run.app.wait() => break ("app", st),
                st = run.sidecar.wait() => break ("sidecar", st),
                now_ready = &mut probe => {
                    if now_ready != ready {
                        ready = now_ready;
                        if ready {
                            tracing::info!(
                                instance = %name,
                                after_ms = started.elapsed().as_millis() as u64,
                                "instance ready"
                            );
                            failures = 0;
                            inner.record_ready(&key);
                        } else {
                            tracing::warn!(instance = %name, "instance no longer ready");
                        }
                        set_status(SlotStatus { endpoint: Some(run.endpoint), ready });
                    }
                    probe = if ready {
                        Box::pin(still_ready(run.admin))
                    } else {
                        Box::pin(until_ready(run.admin, run.app_addr))
                    };
                }
            }
        };
        // One of the two died: the instance is out until both run again.
        set_status(SlotStatus::default());
        let _ = run.app.start_kill();
        let _ = run.sidecar.start_kill();
        let _ = run.app.wait().await;
        let _ = run.sidecar.wait().await;
        run.release(&inner, &name).await;
        let (which, exit) = crashed;
        let reason = match &exit {
            Ok(s) => match s.code() {
                Some(c) => format!("ExitCode{c}"),
                None => "Signaled".to_string(),
            },
            Err(_) => "Unknown".to_string(),
        };
        let tail = log_tail(&run.app_log).await;
        let message = format!(
            "{which} of {name} exited ({}) after {:.1}s{}",
            exit.map_or_else(|e| e.to_string(), |s| s.to_string()),
            started.elapsed().as_secs_f64(),
            if tail.is_empty() {
                String::new()
            } else {
                format!("; last log lines: {tail}")
            }
        );
        tracing::warn!(instance = %name, "{message}");
        inner.record_crash(&key, reason, message);
        failures += 1;
        if backoff_or_stop(failures, &mut stop).await {
            return;
        }
    }
}

/// Waits for the stop flag (or its sender going away). The watch `Ref`
/// is dropped here, never held across the caller's awaits.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps the restart backoff for the `failures`-th crash in a row; true
/// when told to stop meanwhile.
async fn backoff_or_stop(failures: u32, stop: &mut watch::Receiver<bool>) -> bool {
    let exp = failures.saturating_sub(1).min(16);
    let delay = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    tokio::select! {
        _ = stopped(stop) => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Starts the app and its sidecar on fresh loopback ports.
async fn start_instance(inner: &Inner, w: &Workload, name: &str) -> Result<Running, StartError> {
    let io = |reason: &'static str| {
        move |e: std::io::Error| StartError {
            reason,
            message: e.to_string(),
        }
    };
    let Some(program) = w.command.first() else {
        return Err(StartError {
            reason: "NoCommand",
            message: "the container has no command".to_string(),
        });
    };
    let mesh = inner.cfg.mesh.as_deref();
    // app, inbound listener, admin, and with a mesh the outbound listener.
    let ports = inner
        .reserve_ports(if mesh.is_some() { 4 } else { 3 })
        .map_err(io("NoPort"))?;
    let [app_port, listen_port, admin_port] = [ports[0], ports[1], ports[2]];
    let loopback = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let outbound = ports.get(3).map(|p| loopback(*p));
    let dir = inner.instances_dir();
    let config_path = dir.join(format!("{name}.proxy.json"));
    let app_log = dir.join(format!("{name}.log"));
    let proxy_log = dir.join(format!("{name}.proxy.log"));
    let mut registered = false;
    let result = async {
        let xds = mesh.map(|m| SidecarXds {
            server: m.xds_address(),
            node_id: name,
            node_cluster: m.node_cluster(),
        });
        let config = sidecar_config(
            w,
            loopback(listen_port),
            loopback(admin_port),
            app_port,
            xds.as_ref(),
        );
        tokio::fs::write(&config_path, config)
            .await
            .map_err(io("ConfigWrite"))?;

        let resolved = resolve_command(program, inner.cfg.bin_dir.as_deref());
        let mut app = Command::new(&resolved);
        app.args(&w.command[1..])
            .args(&w.args)
            .envs(w.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", app_port.to_string())
            .env("K_SERVICE", &w.service)
            .env("K_CONFIGURATION", &w.configuration)
            .env("K_REVISION", &w.revision)
            .stdin(Stdio::null())
            .stdout(log_file(&app_log).map_err(io("LogOpen"))?)
            .stderr(log_file(&app_log).map_err(io("LogOpen"))?)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(o) = outbound {
            app.env("FERRY_OUTBOUND", format!("http://{o}"));
        }
        if let Some(d) = &w.working_dir {
            app.current_dir(d);
        }
        // The spawn time, first line of the app's log: cold-start overhead
        // is measured against the app's own start (bench/coldstart.sh).
        note_spawn(&app_log, name).await;
        let app = app.spawn().map_err(|e| StartError {
            reason: "ExecFailed",
            message: format!("starting {}: {e}", resolved.display()),
        })?;

        // The sidecar's snapshot is in place before it asks for it.
        if let (Some(m), Some(o)) = (mesh, outbound) {
            m.register(name, o);
            registered = true;
        }
        let mut sidecar = Command::new(&inner.cfg.proxy_bin);
        sidecar
            .arg("--config")
            .arg(&config_path)
            .arg("--concurrency")
            .arg("1")
            .arg("--drain-timeout")
            .arg(format!("{}ms", inner.cfg.drain_timeout.as_millis()))
            .arg("--log-level")
            .arg("warn");
        if let (Some(to), true) = (&inner.cfg.report_to, inner.sidecar_reports) {
            sidecar
                .arg("--report-to")
                .arg(to)
                .arg("--pod-name")
                .arg(name);
        }
        sidecar
            .stdin(Stdio::null())
            .stdout(log_file(&proxy_log).map_err(io("LogOpen"))?)
            .stderr(log_file(&proxy_log).map_err(io("LogOpen"))?)
            .process_group(0)
            .kill_on_drop(true);
        let sidecar = sidecar.spawn().map_err(|e| StartError {
            reason: "SidecarFailed",
            message: format!("starting {}: {e}", inner.cfg.proxy_bin.display()),
        })?;
        let pids = dir.join(format!("{name}.pids"));
        record_pids(&pids, &[app.id(), sidecar.id()]).await;
        Ok(Running {
            pids,
            app,
            sidecar,
            endpoint: loopback(listen_port),
            admin: loopback(admin_port),
            app_addr: loopback(app_port),
            ports: ports.clone(),
            app_log: app_log.clone(),
        })
    }
    .await;
    if result.is_err() {
        inner.release_ports(&ports);
        if let (Some(m), true) = (mesh, registered) {
            m.unregister(name);
        }
    }
    result
}

/// Appends `ferry-control: spawning NAME at unix_us=T` to the app's log.
/// Best effort: only the cold-start bench reads it.
async fn note_spawn(app_log: &Path, name: &str) {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let line = format!("ferry-control: spawning {name} at unix_us={us}\n");
    if let Ok(mut f) = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app_log)
        .await
    {
        let _ = f.write_all(line.as_bytes()).await;
    }
}

fn log_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// A process's start time (clock ticks since boot, `/proc/PID/stat`
/// field 22): with the pid, it names one process, never a later one that
/// reused the pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records children for [`kill_orphans`]. Best effort: without the record
/// only the orphan cleanup is lost.
pub(crate) async fn record_pids(path: &Path, pids: &[Option<u32>]) {
    let record: String = pids
        .iter()
        .flatten()
        .filter_map(|pid| start_time(*pid).map(|t| format!("{pid} {t}\n")))
        .collect();
    let _ = tokio::fs::write(path, record).await;
}

/// Kills the children recorded by a previous run that are still alive
/// (same pid *and* start time).
pub(crate) async fn kill_orphans(dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        if e.path().extension().is_none_or(|x| x != "pids") {
            continue;
        }
        let Ok(text) = tokio::fs::read_to_string(e.path()).await else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(Ok(pid)), Some(Ok(t))) = (
                parts.next().map(str::parse::<u32>),
                parts.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if start_time(pid) == Some(t) {
                tracing::warn!(pid, "killing an instance process left by a previous run");
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .stdin(Stdio::null())
                    .status()
                    .await;
            }
        }
    }
}

/// A bare command name is looked for next to `ferry-control` first, then
/// on `PATH` (by exec itself); a path is used as given.
fn resolve_command(program: &str, bin_dir: Option<&Path>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    if let Some(dir) = bin_dir {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// The outbound role's part of a sidecar's bootstrap.
#[derive(Clone, Copy, Debug)]
pub struct SidecarXds<'a> {
    /// The control plane's ADS address (`http://host:port`).
    pub server: &'a str,
    /// The instance's name.
    pub node_id: &'a str,
    pub node_cluster: &'a str,
}

/// The sidecar's bootstrap (JSON, which the proxy's YAML loader reads):
/// the static inbound listener → the local app, in the queue-proxy role;
/// with `xds`, the control plane's ADS too, for the outbound role.
pub fn sidecar_config(
    w: &Workload,
    listen: SocketAddr,
    admin: SocketAddr,
    app_port: u16,
    xds: Option<&SidecarXds<'_>>,
) -> String {
    let timeout = format!("{}s", w.timeout.as_secs());
    let mut queue = serde_json::json!({
        "revision": w.revision,
        "namespace": w.namespace,
        "container_concurrency": w.container_concurrency,
        "queue_timeout": timeout,
    });
    if let Some(path) = &w.readiness_path {
        queue["readiness_probe"] = serde_json::json!({ "path": path });
    }
    let mut config = serde_json::json!({
        "admin": { "address": admin.to_string() },
        "listeners": [{
            "name": "inbound",
            "address": listen.to_string(),
            "route_config": "inbound",
        }],
        "routes": [{
            "name": "inbound",
            "virtual_hosts": [{
                "name": "app",
                "domains": ["*"],
                "routes": [{
                    "match": { "prefix": "/" },
                    "route": { "cluster": "app", "timeout": timeout },
                }],
            }],
        }],
        "clusters": [{
            "name": "app",
            "endpoints": [{ "address": format!("127.0.0.1:{app_port}") }],
            "queue": queue,
        }],
    });
    if let Some(x) = xds {
        config["xds"] = serde_json::json!({
            "server": x.server,
            "node_id": x.node_id,
            "node_cluster": x.node_cluster,
        });
    }
    // Serializing a json! value cannot fail.
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// Drains an instance: out of the endpoints already; wait for proxies to
/// see that, SIGTERM the sidecar and wait for its drain, then SIGTERM the
/// app and SIGKILL it after the grace period.
async fn stop_instance(inner: &Inner, name: &str, run: &mut Running) {
    if !inner.shutting_down.load(Ordering::Acquire) {
        tokio::time::sleep(inner.cfg.deregister_delay).await;
    }
    terminate(
        &mut run.sidecar,
        inner.cfg.drain_timeout + Duration::from_secs(2),
    )
    .await;
    terminate(&mut run.app, inner.cfg.grace).await;
    tracing::info!(instance = %name, "instance stopped");
}

/// SIGTERM, then SIGKILL if the child is still there after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        // `kill` rather than libc: the workspace forbids unsafe code.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Resolves (true) once the sidecar says the instance is ready and the
/// app's port accepts connections, which the scaler checks itself so an
/// endpoint never joins before the app can answer even if the sidecar's
/// probe is lenient.
async fn until_ready(admin: SocketAddr, app: SocketAddr) -> bool {
    loop {
        let asked = tokio::time::Instant::now();
        match sidecar_ready_within(admin, READY_WAIT).await {
            Probe::Ready if tcp_connects(app).await => return true,
            Probe::NoAdmin => tokio::time::sleep(PROBE_CONNECT).await,
            // A wait that ended early did not wait: do not spin.
            _ => tokio::time::sleep_until(asked + PROBE_FAST).await,
        }
    }
}

/// The periodic check of a ready instance: whether it still is.
async fn still_ready(admin: SocketAddr) -> bool {
    tokio::time::sleep(PROBE_SLOW).await;
    matches!(
        sidecar_ready_within(admin, Duration::ZERO).await,
        Probe::Ready
    )
}

async fn tcp_connects(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// What the sidecar's admin said.
enum Probe {
    Ready,
    NotReady,
    /// Nothing listens on the admin port (yet).
    NoAdmin,
}

/// `GET /ready?wait=WAIT` on the sidecar's admin server: 200 as soon as it
/// is ready within `wait` (a long-poll; `wait` 0 asks once).
async fn sidecar_ready_within(admin: SocketAddr, wait: Duration) -> Probe {
    let Ok(Ok(mut s)) = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(admin)).await else {
        return Probe::NoAdmin;
    };
    let probe = async {
        let req = format!(
            "GET /ready?wait={}ms HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n",
            wait.as_millis()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let m = s.read(&mut buf[n..]).await?;
            if m == 0 {
                break;
            }
            n += m;
        }
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(wait + PROBE_TIMEOUT, probe).await {
        Ok(Ok(true)) => Probe::Ready,
        _ => Probe::NotReady,
    }
}

/// The last lines of a log, joined with " | " (empty if unreadable).
async fn log_tail(path: &Path) -> String {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            namespace: "default".into(),
            revision: "hello-v1".into(),
            service: "hello".into(),
            configuration: "hello".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![],
            env: vec![],
            working_dir: None,
            image: None,
            container_concurrency: 1,
            timeout: Duration::from_secs(30),
            readiness_path: Some("/healthz".into()),
        }
    }

    #[test]
    fn sidecar_config_is_a_queue_proxy() {
        let cfg = sidecar_config(
            &workload(),
            "127.0.0.1:2000".parse().unwrap_or_else(|_| unreachable!()),
            "127.0.0.1:2001".parse().unwrap_or_else(|_| unreachable!()),
            2002,
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&cfg).unwrap_or_default();
        assert_eq!(v["listeners"][0]["address"], "127.0.0.1:2000");
        assert_eq!(v["admin"]["address"], "127.0.0.1:2001");
        let c = &v["clusters"][0];
        assert_eq!(c["endpoints"][0]["address"], "127.0.0.1:2002");
        assert_eq!(c["queue"]["revision"], "hello-v1");
        assert_eq!(c["queue"]["container_concurrency"], 1);
        assert_eq!(c["queue"]["readiness_probe"]["path"], "/healthz");
        assert_eq!(
            v["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
            "30s"
        );
        assert!(v.get("xds").is_none(), "inbound only without a mesh");
    }

    /// With a mesh, the bootstrap keeps its static inbound side and adds
    /// the control plane's ADS with the instance as its node.
    #[test]
    fn sidecar_config_with_a_mesh_points_at_xds() {
        let xds = SidecarXds {
            server: "http://127.0.0.1:18000",
            node_id: "hello-v1-7",
            node_cluster: "ferry-sidecar",
        };
        let cfg = sidecar_config(
            &workload(),
            "127.0.0.1:2000".parse().unwrap_or_else(|_| unreachable!()),
            "127.0.0.1:2001".parse().unwrap_or_else(|_| unreachable!()),
            2002,
            Some(&xds),
        );
        let v: serde_json::Value = serde_json::from_str(&cfg).unwrap_or_default();
        assert_eq!(v["listeners"][0]["name"], "inbound");
        assert_eq!(v["clusters"][0]["queue"]["revision"], "hello-v1");
        assert_eq!(v["xds"]["server"], "http://127.0.0.1:18000");
        assert_eq!(v["xds"]["node_id"], "hello-v1-7");
        assert_eq!(v["xds"]["node_cluster"], "ferry-sidecar");
    }

    #[test]
    fn start_time_identifies_this_process() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn bare_commands_are_found_next_to_the_binary() {
        let dir = std::env::temp_dir().join(format!("ferry-resolve-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("ferry-hello"), b"");
        assert_eq!(
            resolve_command("ferry-hello", Some(&dir)),
            dir.join("ferry-hello")
        );
        assert_eq!(resolve_command("sh", Some(&dir)), PathBuf::from("sh"));
        assert_eq!(resolve_command("./x", Some(&dir)), PathBuf::from("./x"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
