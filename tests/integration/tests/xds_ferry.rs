//! `ferry-proxy` configured by `ferry-control` over ADS, in state-of-the-
//! world and delta mode: the same resources Envoy gets (`xds_envoy.rs`) are
//! accepted and ACKed, traffic splits 80/20, a push to 0/100 takes effect, a
//! route regex that does not compile is NACKed (visible in
//! `GET /v1/xds/nodes`) while the previous config keeps serving, killing the
//! control plane under load fails no request, and a restarted control plane
//! is reconnected to and its next push applied. With `--xds-cache`, a proxy
//! restarted while the control plane is down serves from the cache. A
//! bootstrap with both a static part and an `xds:` section: a SIGHUP reload
//! of an edited static part applies while the xDS listener keeps serving,
//! and a reloaded file that fails validation is refused.
//!
//! The proxy runs with `--xds URL --node-id ID --node-cluster NAME
//! [--xds-delta] [--xds-cache DIR]`, its `--config` file holding the static
//! part of the bootstrap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_integration_tests::envoy::{snapshot, ControlPlane};
use ferry_integration_tests::{
    binary_path, five_sigma, free_addr, free_port, tally, wait_until, Backend, Client, Proxy,
    TestDir,
};

const N: usize = 1000;
/// File poll (1 s) + debounce + the proxy's apply, with room for slow CI.
const PUSH_CAP: Duration = Duration::from_secs(20);

/// `ferry-control serve` on fixed addresses, so a test can kill it and
/// start it again where the proxy keeps reconnecting.
struct Control {
    child: Option<Child>,
    xds: SocketAddr,
    api: SocketAddr,
    dir: TestDir,
    http: Client,
}

impl Control {
    async fn start(snapshot: &str) -> Control {
        let mut c = Control {
            child: None,
            xds: free_addr(),
            api: free_addr(),
            dir: TestDir::new("control"),
            http: Client::h1_no_pool(),
        };
        c.dir.write("snapshot.yaml", snapshot);
        c.restart().await;
        c
    }

    async fn restart(&mut self) {
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .expect("control log")
        };
        let child = Command::new(binary_path("ferry-control"))
            .arg("serve")
            .arg("--xds-snapshot")
            .arg(self.dir.path().join("snapshot.yaml"))
            .arg("--xds-listen")
            .arg(self.xds.to_string())
            .arg("--api-listen")
            .arg(self.api.to_string())
            .env("RUST_LOG", "info,ferry_control_plane=debug")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("spawn ferry-control");
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.api);
        wait_until(
            "ferry-control answers /healthz",
            Duration::from_secs(10),
            async || matches!(self.http.get(&url).await, Ok(r) if r.status == 200),
        )
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn write_snapshot(&self, yaml: &str) {
        self.dir.write("snapshot.yaml", yaml);
    }

    async fn node(&self, id: &str) -> Option<serde_json::Value> {
        let url = format!("http://{}/v1/xds/nodes", self.api);
        let r = self.http.get(&url).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        let list = v
            .as_array()
            .cloned()
            .or_else(|| v["nodes"].as_array().cloned())?;
        list.into_iter()
            .find(|n| n["id"] == id || n["node_id"] == id)
    }

    async fn wait_acked(&self, id: &str, ty: &str) {
        wait_until(&format!("{id} ACKs its {ty}"), PUSH_CAP, async || {
            let Some(n) = self.node(id).await else {
                return false;
            };
            let t = &n["types"][ty];
            t["state"] == "acked" && t["version_sent"] == t["version_acked"]
        })
        .await;
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let read =
                |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            eprintln!("--- ferry-control stderr ---\n{}", read("stderr.log"));
        }
    }
}

fn assert_share(counts: &BTreeMap<String, usize>, n: usize, name: &str, p: f64) {
    let got = counts.get(name).copied().unwrap_or(0) as f64;
    let want = n as f64 * p;
    let tol = five_sigma(n, p);
    assert!(
        (got - want).abs() <= tol,
        "{name}: {got} of {n} requests, expected {want} ± {tol:.0} (5σ); all: {counts:?}"
    );
}

fn xds_args<'a>(cp: &'a str, node: &'a str, delta: bool) -> Vec<&'a str> {
    let mut args = vec!["--xds", cp, "--node-id", node, "--node-cluster", "test"];
    if delta {
        args.push("--xds-delta");
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_over_sotw_ads() {
    scenario(false, "sotw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_over_delta_ads() {
    scenario(true, "delta").await;
}

async fn scenario(delta: bool, mode: &str) {
    let a = Backend::start("first").await;
    let b = Backend::start("second").await;
    let port = free_port();
    let mut cp = Control::start(&snapshot(port, &a, &b, (80, 20), false)).await;
    let node = format!("ferry-{mode}");
    let server = format!("http://{}", cp.xds);
    // The static part of the bootstrap: nothing but the defaults.
    let _proxy = Proxy::start_with("{}\n", &xds_args(&server, &node, delta)).await;

    for ty in ["cds", "eds", "lds", "rds"] {
        cp.wait_acked(&node, ty).await;
    }
    let n = cp.node(&node).await.unwrap_or_default();
    assert_eq!(n["mode"], mode, "{n:#}");
    assert!(n["last_nack"].is_null(), "{n:#}");

    let url = format!("http://127.0.0.1:{port}/");
    let client = Client::h1();
    wait_until(
        "the xDS listener answers 200",
        PUSH_CAP,
        async || matches!(client.get(&url).await, Ok(r) if r.status == 200),
    )
    .await;
    let counts = tally(&client, &url, N, 8).await;
    assert_share(&counts, N, "first", 0.8);
    assert_share(&counts, N, "second", 0.2);

    // A push to 0/100 takes effect.
    cp.write_snapshot(&snapshot(port, &a, &b, (0, 100), false));
    wait_until("every request goes to second", PUSH_CAP, async || {
        tally(&client, &url, 20, 4).await.get("second") == Some(&20)
    })
    .await;

    // A regex that does not compile: NACKed, named, and the previous config
    // keeps serving.
    cp.write_snapshot(&snapshot(port, &a, &b, (0, 100), true));
    wait_until("the NACK shows in /v1/xds/nodes", PUSH_CAP, async || {
        cp.node(&node)
            .await
            .is_some_and(|n| n["last_nack"]["type"] == "rds")
    })
    .await;
    let n = cp.node(&node).await.unwrap_or_default();
    let message = n["last_nack"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("web_routes") && message.contains("regex"),
        "NACK message: {n:#}"
    );
    let counts = tally(&client, &url, 100, 4).await;
    assert_eq!(counts.get("second"), Some(&100), "{counts:?}");

    // Kill the control plane under load: nothing fails.
    cp.write_snapshot(&snapshot(port, &a, &b, (0, 100), false));
    cp.wait_acked(&node, "rds").await;
    let load = {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move { tally(&client, &url, 2000, 8).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    cp.kill();
    let counts = load.await.expect("load");
    assert_eq!(counts.values().sum::<usize>(), 2000, "{counts:?}");

    // Restart it with a new split: the proxy reconnects and applies it.
    cp.write_snapshot(&snapshot(port, &a, &b, (100, 0), false));
    cp.restart().await;
    wait_until(
        "every request goes to first after the restart",
        PUSH_CAP,
        async || tally(&client, &url, 20, 4).await.get("first") == Some(&20),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_serves_when_the_control_plane_is_down_at_start() {
    let a = Backend::start("first").await;
    let b = Backend::start("second").await;
    let port = free_port();
    let mut cp = Control::start(&snapshot(port, &a, &b, (100, 0), false)).await;
    let cache = TestDir::new("xds-cache");
    let cache_dir = cache.path().display().to_string();
    let server = format!("http://{}", cp.xds);
    let mut args = xds_args(&server, "ferry-cache", false);
    args.extend(["--xds-cache", cache_dir.as_str()]);

    let url = format!("http://127.0.0.1:{port}/");
    let client = Client::h1();
    {
        let _proxy = Proxy::start_with("{}\n", &args).await;
        wait_until(
            "the xDS listener answers 200",
            PUSH_CAP,
            async || matches!(client.get(&url).await, Ok(r) if r.status == 200),
        )
        .await;
        cp.wait_acked("ferry-cache", "rds").await;
    }
    cp.kill();
    // A fresh proxy with the control plane gone serves the cached config.
    let _proxy = Proxy::start_with("{}\n", &args).await;
    wait_until(
        "the cached listener answers 200",
        PUSH_CAP,
        async || matches!(client.get(&url).await, Ok(r) if r.status == 200),
    )
    .await;
    let counts = tally(&client, &url, 50, 4).await;
    assert_eq!(counts.get("first"), Some(&50), "{counts:?}");
}

/// A bootstrap with an `xds:` section pointing at `server` and a static
/// part: listener `static` on `listen` whose only route goes to
/// `route_to`, beside static clusters `static_b` (backend `b`) and
/// `static_c` (backend `c`).
fn mixed_bootstrap(
    server: &str,
    node: &str,
    listen: &str,
    route_to: &str,
    b: &Backend,
    c: &Backend,
) -> String {
    format!(
        r#"xds:
  server: "{server}"
  node_id: "{node}"
  node_cluster: test
listeners:
  - {{name: static, address: "{listen}", route_config: static_routes}}
routes:
  - name: static_routes
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: {route_to}}}
clusters:
  - {{name: static_b, endpoints: [{{address: "{b}"}}]}}
  - {{name: static_c, endpoints: [{{address: "{c}"}}]}}
"#,
        b = b.addr,
        c = c.addr,
    )
}

/// The backend that answered one GET, or why there was none.
async fn answered_by(client: &Client, url: &str) -> Result<String, String> {
    match client.get(url).await {
        Ok(r) if r.status == 200 => Ok(r.backend().unwrap_or("<none>").to_string()),
        Ok(r) => Err(format!("status {}: {}", r.status, r.text())),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_part_reloads_beside_xds_and_a_bad_file_is_refused() {
    let a = Backend::start("xds-a").await;
    let b = Backend::start("static-b").await;
    let c = Backend::start("static-c").await;
    let xds_port = free_port();
    // Every xDS request goes to `a` (cluster `second` gets weight 0).
    let cp = ControlPlane::start(&snapshot(xds_port, &a, &a, (100, 0), false)).await;
    let server = format!("http://{}", cp.xds);
    let node = "ferry-mixed";
    let listen = free_addr().to_string();
    let bootstrap = |route_to: &str| mixed_bootstrap(&server, node, &listen, route_to, &b, &c);
    // Reloads come from SIGHUP only, so each one is counted exactly once.
    let proxy = Proxy::start_with(&bootstrap("static_b"), &["--watch-interval", "1h"]).await;
    for ty in ["cds", "eds", "lds", "rds"] {
        cp.wait_acked(node, ty, PUSH_CAP).await;
    }

    let client = Client::h1();
    let xds_url = format!("http://127.0.0.1:{xds_port}/xds");
    let static_url = format!("http://{listen}/static");
    wait_until(
        "the xDS listener answers from xds-a",
        PUSH_CAP,
        async || answered_by(&client, &xds_url).await.as_deref() == Ok("xds-a"),
    )
    .await;
    assert_eq!(
        answered_by(&client, &static_url).await.as_deref(),
        Ok("static-b"),
        "the static listener before any reload"
    );

    // The xDS listener is watched throughout both reloads: every answer
    // must be a 200 from `xds-a`.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, url, stop) = (client.clone(), xds_url.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut bad) = (0u32, Vec::new());
            let start = tokio::time::Instant::now();
            for i in 0..100_000 {
                if stop.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                match answered_by(&client, &url).await {
                    Ok(name) if name == "xds-a" => ok += 1,
                    Ok(name) => bad.push(format!("#{i}: answered by {name}")),
                    Err(e) => bad.push(format!("#{i}: {e}")),
                }
            }
            (ok, bad)
        })
    };

    // Edit the static part: its route now goes to `static_c`.
    proxy.reload(&bootstrap("static_c")).await;
    wait_until(
        "the static listener answers from static-c",
        PUSH_CAP,
        async || answered_by(&client, &static_url).await.as_deref() == Ok("static-c"),
    )
    .await;
    let counts = tally(&client, &static_url, 20, 4).await;
    assert_eq!(counts.get("static-c"), Some(&20), "{counts:?}");

    // A file that fails validation (a route to an unknown cluster) is
    // refused, counted and logged; the previous static part stays.
    proxy
        .reload_expect_failure(&bootstrap("no_such_cluster"))
        .await;
    wait_until("the rejection is logged", PUSH_CAP, async || {
        proxy
            .logs()
            .contains(r#"route.cluster: unknown cluster "no_such_cluster""#)
    })
    .await;
    let counts = tally(&client, &static_url, 20, 4).await;
    assert_eq!(counts.get("static-c"), Some(&20), "{counts:?}");
    let counts = tally(&client, &xds_url, 20, 4).await;
    assert_eq!(counts.get("xds-a"), Some(&20), "{counts:?}");

    stop.store(true, Ordering::SeqCst);
    let (ok, bad) = watcher.await.expect("xDS watcher task");
    assert!(
        bad.is_empty(),
        "the xDS listener failed during the reloads ({ok} ok): {bad:?}"
    );
    assert!(
        ok > 0,
        "the xDS listener was never checked during the reloads"
    );
    let n = cp.node(node).await.expect("the node is listed");
    assert!(n["last_nack"].is_null(), "{n:#}");
}
