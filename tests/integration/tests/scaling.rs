//! The scaling loop end to end, with real processes: `ferry-control up`
//! (control plane, process scaler, gateway `ferry-proxy`) running
//! `ferry-hello` instances, each behind its own `ferry-proxy` sidecar.
//!
//! - the split holds and the tag host reaches only its revision;
//! - `containerConcurrency: 1` never lets an instance's app see two
//!   requests at once, whatever the client concurrency;
//! - `ferry-control` restarts: services kept, instances back;
//! - with load reports: a steady concurrency C at target T scales to
//!   ⌈C / (T × 0.7)⌉ ± 1; idle goes to zero after the window + the
//!   revision's own grace period annotation; the first request at zero
//!   succeeds (cold start time printed); a 1 s panic window sees a burst;
//! - an app calls another service, at zero, through its sidecar's outbound
//!   listener, which activates it.
//!
//! Short stable windows (`autoscaling.knative.dev/window: 6s`) keep each
//! test under a minute. Every wait polls with a cap. The tests that need
//! load reports (`ferry-proxy --report-to`) say so and skip while the
//! proxy does not have that flag yet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_integration_tests::{binary_path, five_sigma, free_addr, Client, TestDir};
use http::StatusCode;
use serde_json::Value;

const DOMAIN: &str = "example.com";

/// A running `ferry-control up`, stopped (SIGTERM, then SIGKILL) on drop.
struct Up {
    child: Option<Child>,
    gateway: SocketAddr,
    api: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Up {
    /// Starts `up` on `manifests` with its state in `data_dir`, and waits
    /// for the API and the gateway.
    async fn start(manifests: &Path, data_dir: &Path, logs: &TestDir, run: usize) -> Up {
        Up::start_with(manifests, data_dir, logs, run, &[]).await
    }

    /// The same with extra `up` arguments.
    async fn start_with(
        manifests: &Path,
        data_dir: &Path,
        logs: &TestDir,
        run: usize,
        extra: &[&str],
    ) -> Up {
        let gateway = free_addr();
        let api = free_addr();
        let stdout = logs.path().join(format!("up-{run}.out"));
        let stderr = logs.path().join(format!("up-{run}.err"));
        let child = Command::new(binary_path("ferry-control"))
            .arg("up")
            .arg(manifests)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--gateway-listen", &gateway.to_string()])
            .args(["--gateway-admin", &free_addr().to_string()])
            .args(["--xds-listen", &free_addr().to_string()])
            .args(["--api-listen", &api.to_string()])
            .args(["--log", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn ferry-control up");
        let mut up = Up {
            child: Some(child),
            gateway,
            api,
            stdout,
            stderr,
            started: Instant::now(),
        };
        // `up` prints its hints once it applied everything and the gateway
        // is ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = up.child.as_mut().map(|c| c.try_wait()) {
                panic!("ferry-control up exited ({status})\n{}", up.logs());
            }
            if up.output().contains("Ferry is up") {
                return up;
            }
            assert!(
                Instant::now() < deadline,
                "ferry-control up not ready within 30s\n{}",
                up.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr (tail)\n{}",
            self.output(),
            tail(
                &std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                60
            )
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    async fn revision(&self, name: &str) -> Value {
        let url = format!("http://{}/v1/namespaces/default/revisions/{name}", self.api);
        match Client::h1_no_pool().get(&url).await {
            Ok(r) if r.status == StatusCode::OK => {
                serde_json::from_slice(&r.body).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        }
    }

    /// (actualReplicas, desiredReplicas) of a revision.
    async fn replicas(&self, name: &str) -> (u64, u64) {
        let r = self.revision(name).await;
        (
            r["status"]["actualReplicas"].as_u64().unwrap_or(0),
            r["status"]["desiredReplicas"].as_u64().unwrap_or(0),
        )
    }

    /// Polls until `revision` has exactly `want` ready instances.
    async fn wait_ready(&self, revision: &str, want: u64, cap: Duration) {
        let deadline = Instant::now() + cap;
        let mut last = (0, 0);
        while Instant::now() < deadline {
            last = self.replicas(revision).await;
            if last.0 == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{revision}: {want} ready instances not reached within {cap:?} (actual, desired) = \
             {last:?}\n{}",
            self.logs()
        );
    }

    /// Polls until the gateway has a route for `host` (xDS reaches the
    /// gateway a little after the apply) and it answers 200.
    async fn wait_routed(&self, host: &str) {
        let client = Client::h1_no_pool();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            match client.get_with(&self.url("/"), &[("host", host)]).await {
                Ok(r) if r.status == StatusCode::OK => return,
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{host} not routed within 10s (last: {last})\n{}",
            self.logs()
        );
    }

    /// SIGTERM and wait (bounded) for `up` to stop everything.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..1500 {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn host(name: &str) -> String {
    format!("{name}.default.{DOMAIN}")
}

/// Whether this build's `ferry-proxy` streams load reports: the tests of
/// autoscaling on load need it; they skip (saying so) until it does.
fn proxy_reports() -> bool {
    let out = Command::new(binary_path("ferry-proxy"))
        .arg("--help")
        .output()
        .expect("run ferry-proxy --help");
    let yes = String::from_utf8_lossy(&out.stdout).contains("--report-to");
    if !yes {
        eprintln!("SKIPPED: this ferry-proxy has no --report-to (load reports), needed here");
    }
    yes
}

/// One Service document (`name-v1` revision) with annotations and
/// containerConcurrency.
fn service(name: &str, cc: u32, annotations: &[(&str, &str)]) -> String {
    let mut anns = String::new();
    for (k, v) in annotations {
        anns.push_str(&format!("        autoscaling.knative.dev/{k}: \"{v}\"\n"));
    }
    format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    metadata:
      name: {name}-v1
      annotations:
{anns}        ferry.dev/test: \"yes\"
    spec:
      containerConcurrency: {cc}
      timeoutSeconds: 60
      containers:
        - command: [ferry-hello]
          readinessProbe:
            httpGet: {{path: /healthz}}
"
    )
}

/// `clients` concurrent loops of GET `path` on `host` until `until`;
/// returns (status, x-in-flight, x-max-in-flight, x-revision) of every
/// answer.
async fn load(
    up: &Up,
    host: &str,
    path: &str,
    clients: usize,
    until: Instant,
) -> Vec<(StatusCode, u64, u64, String)> {
    let url = up.url(path);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let client = Client::h1();
            let mut out = Vec::new();
            // Bounded: the deadline, and a request count cap.
            for _ in 0..100_000 {
                if Instant::now() >= until {
                    break;
                }
                match client.get_with(&url, &[("host", &host)]).await {
                    Ok(r) => {
                        let num =
                            |h: &str| r.header(h).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                        out.push((
                            r.status,
                            num("x-in-flight"),
                            num("x-max-in-flight"),
                            r.header("x-revision").unwrap_or_default().to_string(),
                        ));
                        if r.status != StatusCode::OK {
                            // Overflow answers at once; do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

/// The hello example's split: 90/10 on the main host, the tag host only
/// to hello-v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_holds_and_the_tag_reaches_only_its_revision() {
    let dir = TestDir::new("scaling-split");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("hello-v1", 1, Duration::from_secs(20)).await;
    up.wait_ready("hello-v2", 1, Duration::from_secs(20)).await;
    up.wait_routed(&host("hello")).await;
    up.wait_routed(&format!("candidate-hello.default.{DOMAIN}"))
        .await;

    let client = Client::h1();
    let main = host("hello");
    let n = 400;
    let mut v2 = 0usize;
    for _ in 0..n {
        let r = client
            .get_with(&up.url("/"), &[("host", &main)])
            .await
            .expect("GET main host");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        match r.header("x-revision") {
            Some("hello-v2") => v2 += 1,
            Some("hello-v1") => {}
            other => panic!("unexpected revision {other:?}: {}", r.text()),
        }
    }
    let expected = n as f64 * 0.1;
    let tolerance = five_sigma(n, 0.1);
    assert!(
        (v2 as f64 - expected).abs() <= tolerance,
        "hello-v2 got {v2} of {n}, want {expected} ± {tolerance:.1}"
    );

    let tag = format!("candidate-hello.default.{DOMAIN}");
    for _ in 0..50 {
        let r = client
            .get_with(&up.url("/"), &[("host", &tag)])
            .await
            .expect("GET tag host");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("x-revision"), Some("hello-v2"));
        assert_eq!(r.text(), "Hello from hello-v2\n");
    }
}

/// `containerConcurrency: 1`: 20 concurrent clients, and no app instance
/// ever has two requests in flight (overflow is the sidecar's 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_is_never_exceeded() {
    let dir = TestDir::new("scaling-cc1");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("one.yaml"),
        service("one", 1, &[("min-scale", "2"), ("max-scale", "4")]),
    )
    .expect("write manifest");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("one-v1", 2, Duration::from_secs(20)).await;
    up.wait_routed(&host("one")).await;

    let answers = load(
        &up,
        &host("one"),
        "/?sleep=20",
        20,
        Instant::now() + Duration::from_secs(8),
    )
    .await;
    let ok: Vec<_> = answers.iter().filter(|a| a.0 == StatusCode::OK).collect();
    assert!(ok.len() >= 50, "only {} answers were 200", ok.len());
    let worst = ok.iter().map(|a| a.1.max(a.2)).max().unwrap_or(0);
    assert_eq!(
        worst, 1,
        "an instance's app saw {worst} requests at once with containerConcurrency 1"
    );
    let others: Vec<_> = answers
        .iter()
        .filter(|a| a.0 != StatusCode::OK && a.0 != StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(others.is_empty(), "unexpected answers: {others:?}");
}

/// Steady concurrency C = 6 at target T = 2 (70 % → 1.4 per instance):
/// ⌈6 / 1.4⌉ = 5 instances, ± 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_concurrency_scales_to_the_target() {
    if !proxy_reports() {
        return;
    }
    let dir = TestDir::new("scaling-steady");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("steady.yaml"),
        service(
            "steady",
            0,
            &[("target", "2"), ("window", "6s"), ("max-scale", "8")],
        ),
    )
    .expect("write manifest");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("steady-v1", 1, Duration::from_secs(20)).await;
    up.wait_routed(&host("steady")).await;

    let c = 6usize;
    let want = (c as f64 / (2.0 * 0.7)).ceil() as u64;
    let stop = Instant::now() + Duration::from_secs(20);
    let load_task = {
        let url = up.url("/?sleep=250");
        let host = host("steady");
        tokio::spawn(async move {
            let served = Arc::new(AtomicU64::new(0));
            let mut ts = Vec::new();
            for _ in 0..c {
                let (url, host, served) = (url.clone(), host.clone(), served.clone());
                ts.push(tokio::spawn(async move {
                    let client = Client::h1();
                    while Instant::now() < stop {
                        if let Ok(r) = client.get_with(&url, &[("host", &host)]).await {
                            if r.status == StatusCode::OK {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in ts {
                let _ = t.await;
            }
            served.load(Ordering::Relaxed)
        })
    };
    // Within the stable window (6 s) plus start-up, the desired count is
    // in range; it must stay there while the load lasts.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut seen = Vec::new();
    while Instant::now() + Duration::from_secs(1) < stop {
        let (actual, desired) = up.replicas("steady-v1").await;
        seen.push((actual, desired));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let served = load_task.await.unwrap_or(0);
    assert!(served > 0, "no request succeeded");
    for (actual, desired) in &seen {
        assert!(
            desired.abs_diff(want) <= 1,
            "desired {desired} (actual {actual}) for concurrency {c} at target 2: want \
             {want} ± 1; samples {seen:?}\n{}",
            up.logs()
        );
    }
    let last_actual = seen.last().map_or(0, |s| s.0);
    assert!(
        last_actual.abs_diff(want) <= 1,
        "ready instances {last_actual}, want {want} ± 1; samples {seen:?}"
    );
}

/// Idle goes to zero after the stable window + grace; the first request
/// at zero is held by the gateway, activates the revision and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_scales_to_zero_and_the_first_request_cold_starts() {
    if !proxy_reports() {
        return;
    }
    let dir = TestDir::new("scaling-zero");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    // The grace period as the revision's own annotation: with the
    // cluster's 30 s it would not reach zero within the wait below.
    std::fs::write(
        manifests.join("idle.yaml"),
        service(
            "idle",
            0,
            &[("window", "6s"), ("scale-to-zero-grace-period", "2s")],
        ),
    )
    .expect("write manifest");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("idle-v1", 1, Duration::from_secs(20)).await;
    up.wait_routed(&host("idle")).await;
    let client = Client::h1_no_pool();
    let r = client
        .get_with(&up.url("/"), &[("host", &host("idle"))])
        .await
        .expect("first request");
    assert_eq!(r.status, StatusCode::OK);

    // Stable window 6 s without load, active for a window, then 2 s grace.
    let idle_since = Instant::now();
    up.wait_ready("idle-v1", 0, Duration::from_secs(25)).await;
    let to_zero = idle_since.elapsed();
    assert!(
        to_zero >= Duration::from_secs(6),
        "went to zero after {to_zero:?}, before the stable window"
    );
    assert_eq!(up.replicas("idle-v1").await.1, 0, "desired is not 0");
    // Out of the endpoints first, the instance then drains and stops; the
    // cold start is measured once it is really gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&up.stderr)
        .unwrap_or_default()
        .contains("instance stopped")
    {
        assert!(
            Instant::now() < deadline,
            "the instance did not stop\n{}",
            up.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t = Instant::now();
    let r = client
        .get_with(&up.url("/"), &[("host", &host("idle"))])
        .await
        .expect("request at zero");
    let cold = t.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "Hello from idle-v1\n");
    println!("cold start: first response at zero after {cold:?} (to zero took {to_zero:?})");
    assert!(cold < Duration::from_secs(10), "cold start took {cold:?}");
    assert_eq!(up.replicas("idle-v1").await.0, 1);
}

/// `ferry-control` stops everything on SIGTERM and, started again on the
/// same data directory, finds its services and brings instances back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_services_and_instances_come_back() {
    let dir = TestDir::new("scaling-restart");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(manifests.join("again.yaml"), service("again", 0, &[])).expect("write");
    let data = dir.path().join("data");

    let mut first = Up::start(&manifests, &data, &dir, 0).await;
    first
        .wait_ready("again-v1", 1, Duration::from_secs(20))
        .await;
    let gateway = first.gateway;
    let status = first.stop().expect("ferry-control up exited");
    assert!(status.success(), "exit status {status}\n{}", first.logs());
    // Everything it started is gone: nothing answers on the gateway.
    assert!(
        tokio::net::TcpStream::connect(gateway).await.is_err(),
        "the gateway still listens after ferry-control stopped"
    );
    let instance_logs = data.join("instances");
    assert!(first.output().contains("stopping"), "{}", first.logs());

    let second = Up::start(&manifests, &data, &dir, 1).await;
    // Applied again, the stored service is unchanged: it was kept.
    assert!(
        second
            .output()
            .contains("service.serving.knative.dev/again unchanged"),
        "{}",
        second.logs()
    );
    second
        .wait_ready("again-v1", 1, Duration::from_secs(20))
        .await;
    second.wait_routed(&host("again")).await;
    let r = Client::h1()
        .get_with(&second.url("/"), &[("host", &host("again"))])
        .await
        .expect("GET after restart");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "Hello from again-v1\n");
    assert!(instance_logs.is_dir());
    println!(
        "restart: instances back {:?} after the second start",
        second.started.elapsed()
    );
}

/// A new revision takes all the traffic while clients keep sending: the
/// gateway holds requests for it until its first instance is ready, the
/// old one drains after leaving the endpoints; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_fails_no_request() {
    let dir = TestDir::new("scaling-rollout");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    let v1 = service("roll", 0, &[]);
    std::fs::write(manifests.join("roll.yaml"), &v1).expect("write manifest");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("roll-v1", 1, Duration::from_secs(20)).await;
    up.wait_routed(&host("roll")).await;

    let until = Instant::now() + Duration::from_secs(10);
    let load_task = {
        let url = up.url("/?sleep=20");
        let host = host("roll");
        tokio::spawn(async move {
            let mut ts = Vec::new();
            for _ in 0..4 {
                let (url, host) = (url.clone(), host.clone());
                ts.push(tokio::spawn(async move {
                    let client = Client::h1();
                    let mut out = Vec::new();
                    while Instant::now() < until {
                        match client.get_with(&url, &[("host", &host)]).await {
                            Ok(r) => out.push((
                                r.status,
                                r.header("x-revision").unwrap_or_default().to_string(),
                                r.text(),
                            )),
                            Err(e) => {
                                out.push((StatusCode::BAD_GATEWAY, String::new(), e.to_string()))
                            }
                        }
                    }
                    out
                }));
            }
            let mut all = Vec::new();
            for t in ts {
                all.extend(t.await.unwrap_or_default());
            }
            all
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The template changes: revision roll-v2, all traffic to the latest.
    let v2 = v1.replace("roll-v1", "roll-v2").replace("yes", "v2");
    let out = Command::new(binary_path("ferry-control"))
        .args([
            "apply",
            "-f",
            "-",
            "--server",
            &format!("http://{}", up.api),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(v2.as_bytes())?;
            }
            c.wait_with_output()
        })
        .expect("ferry-control apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers = load_task.await.unwrap_or_default();
    let failed: Vec<_> = answers.iter().filter(|a| a.0 != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rollout: {:?}\n{}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)],
        up.logs()
    );
    let on_v2 = answers.iter().filter(|a| a.1 == "roll-v2").count();
    assert!(on_v2 > 0, "no request reached roll-v2");
    assert_eq!(
        answers.last().map(|a| a.1.as_str()),
        Some("roll-v2"),
        "traffic did not move to roll-v2"
    );
    println!(
        "rollout: {} requests, {} on roll-v2, none failed",
        answers.len(),
        on_v2
    );
}

/// A 4× burst over a steady load puts the revision in panic mode: the
/// panic window (10 % of 10 s = 1 s) sees it within a tick or two and the
/// desired count jumps to the panic window's need. The proxies report at
/// their own second boundaries, so a 1 s window is only right when the
/// autoscaler reads it at the last complete second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4x_burst_panics() {
    if !proxy_reports() {
        return;
    }
    let dir = TestDir::new("scaling-panic");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("burst.yaml"),
        service(
            "burst",
            0,
            // Two instances from the start: the steady load (2) is then
            // 100 % of what they take, well below the panic threshold.
            &[
                ("target", "2"),
                ("window", "10s"),
                ("min-scale", "2"),
                ("max-scale", "10"),
            ],
        ),
    )
    .expect("write manifest");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("burst-v1", 2, Duration::from_secs(20)).await;
    up.wait_routed(&host("burst")).await;

    // Steady 2, then 8 (4×) for the rest of the test.
    let url = up.url("/?sleep=250");
    let steady_until = Instant::now() + Duration::from_secs(8);
    let burst_until = steady_until + Duration::from_secs(8);
    let spawn_clients = |n: usize, from: Instant, to: Instant| {
        (0..n)
            .map(|_| {
                let (url, host) = (url.clone(), host("burst"));
                tokio::spawn(async move {
                    tokio::time::sleep_until(from.into()).await;
                    let client = Client::h1();
                    while Instant::now() < to {
                        let _ = client.get_with(&url, &[("host", &host)]).await;
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let mut clients = spawn_clients(2, Instant::now(), burst_until);
    clients.extend(spawn_clients(6, steady_until, burst_until));

    let panic_lines = |up: &Up| {
        up.output()
            .lines()
            .filter(|l| l.contains("default/burst-v1") && l.contains("(panic)"))
            .count()
    };
    tokio::time::sleep_until(steady_until.into()).await;
    let before = up.replicas("burst-v1").await.1;
    assert_eq!(
        panic_lines(&up),
        0,
        "panic before the burst (steady load on {before})\n{}",
        up.logs()
    );
    let burst = Instant::now();
    let deadline = burst + Duration::from_secs(7);
    let (mut panicked, mut after) = (None, 0);
    while Instant::now() < deadline {
        if panicked.is_none() && panic_lines(&up) > 0 {
            panicked = Some(burst.elapsed());
        }
        after = up.replicas("burst-v1").await.1;
        if panicked.is_some() && after >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        let _ = c.await;
    }
    let Some(took) = panicked else {
        panic!("no panic within 7 s of a 4x burst\n{}", up.logs());
    };
    // ⌈8 / 1.4⌉ = 6 wanted in panic, within ± 1.
    assert!(
        after >= 5,
        "desired {before} before the burst, {after} after\n{}",
        up.logs()
    );
    println!("panic: {took:?} after a 4x burst; desired {before} -> {after}");
}

/// An instance whose app dies is restarted (its endpoint leaves and comes
/// back); a revision whose app cannot stay up is reported failed with
/// Knative's `ExitCode{n}` reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_are_restarted_and_a_crash_loop_fails_the_revision() {
    let dir = TestDir::new("scaling-crash");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(manifests.join("a.yaml"), service("crashy", 0, &[])).expect("write");
    std::fs::write(
        manifests.join("b.yaml"),
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: broken
spec:
  template:
    metadata:
      name: broken-v1
    spec:
      containers:
        - command: [sh, -c, 'echo cannot start >&2; exit 3']
",
    )
    .expect("write");
    let up = Up::start(&manifests, &dir.path().join("data"), &dir, 0).await;
    up.wait_ready("crashy-v1", 1, Duration::from_secs(20)).await;
    up.wait_routed(&host("crashy")).await;
    let client = Client::h1_no_pool();
    let first = client
        .get_with(&up.url("/"), &[("host", &host("crashy"))])
        .await
        .expect("GET");
    let port = first.header("x-instance").unwrap_or_default().to_string();
    let _ = client
        .get_with(&up.url("/crash"), &[("host", &host("crashy"))])
        .await;
    // Back on a new app process (new port), within the first backoff.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client
            .get_with(&up.url("/"), &[("host", &host("crashy"))])
            .await
        {
            if r.status == StatusCode::OK && r.header("x-instance") != Some(port.as_str()) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "crashy-v1 did not come back\n{}",
            up.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Three crashes in a row (backoff 0.2 s, 0.4 s): Ready False.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rev = up.revision("broken-v1").await;
        let ready = rev["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or(Value::Null);
        if ready["status"] == "False" {
            assert_eq!(ready["reason"], "ExitCode3", "{ready}");
            assert!(
                ready["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("cannot start"),
                "{ready}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broken-v1 not failed: {rev}\n{}",
            up.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Service A's app calls service B, at zero, through its own sidecar's
/// outbound listener (`$FERRY_OUTBOUND`): the sidecar routes by `Host`
/// with the mesh routes, holds the request, reports the demand itself, B
/// scales from zero, and A gets B's answer — no gateway on that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_calls_a_service_at_zero_through_its_sidecar() {
    if !proxy_reports() {
        return;
    }
    let dir = TestDir::new("scaling-outbound");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(manifests.join("a.yaml"), service("caller", 0, &[])).expect("write");
    std::fs::write(
        manifests.join("b.yaml"),
        service("callee", 0, &[("initial-scale", "0")]),
    )
    .expect("write");
    let up = Up::start_with(
        &manifests,
        &dir.path().join("data"),
        &dir,
        0,
        &["--autoscaler", "allow-zero-initial-scale=true"],
    )
    .await;
    up.wait_ready("caller-v1", 1, Duration::from_secs(20)).await;
    up.wait_routed(&host("caller")).await;
    assert_eq!(
        up.replicas("callee-v1").await,
        (0, 0),
        "callee-v1 should start at zero\n{}",
        up.logs()
    );

    let client = Client::h1_no_pool();
    let path = format!("/call?host={}", host("callee"));
    let t = Instant::now();
    let r = client
        .get_with(&up.url(&path), &[("host", &host("caller"))])
        .await
        .expect("GET /call through the caller");
    let took = t.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), up.logs());
    assert_eq!(r.header("x-revision"), Some("caller-v1"));
    assert_eq!(r.header("x-called-revision"), Some("callee-v1"));
    assert_eq!(r.text(), "Hello from callee-v1\n");
    // The callee runs now, activated by the caller's sidecar.
    up.wait_ready("callee-v1", 1, Duration::from_secs(5)).await;
    // And with an instance up, the call goes straight through.
    let again = client
        .get_with(&up.url(&path), &[("host", &host("caller"))])
        .await
        .expect("second call");
    assert_eq!(again.text(), "Hello from callee-v1\n");
    println!("outbound: a call to a service at zero answered after {took:?}");
}
