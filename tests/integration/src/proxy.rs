//! The `ferry-proxy` binary under test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::client::{Client, Resp};
use crate::{free_addr, wait_until, Stats, TestDir};

/// Where `cargo build` put binary `name`: next to the test executable's
/// `deps/` directory (`target/<profile>/NAME`). `FERRY_PROXY_BIN` overrides
/// the path of `ferry-proxy`.
pub fn binary_path(name: &str) -> PathBuf {
    if name == "ferry-proxy" {
        if let Ok(p) = std::env::var("FERRY_PROXY_BIN") {
            return PathBuf::from(p);
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a parent")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` before the integration tests",
        path.display()
    );
    path
}

/// A running `ferry-proxy --config FILE --admin ADDR`, killed on drop. Its
/// stdout and stderr go to files that are printed if the test panics.
pub struct Proxy {
    child: Child,
    pid: u32,
    /// The admin server's address.
    pub admin: SocketAddr,
    dir: TestDir,
    config_path: String,
    exit: Option<ExitStatus>,
    http: Client,
}

impl Proxy {
    /// Starts the proxy with `yaml` and waits until `/ready` answers 200.
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, &[]).await
    }

    /// Like [`Proxy::start`] with extra command-line arguments.
    pub async fn start_with(yaml: &str, args: &[&str]) -> Proxy {
        let mut proxy = Proxy::spawn(yaml, args);
        proxy.wait_ready().await;
        proxy
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(yaml: &str, args: &[&str]) -> Proxy {
        let dir = TestDir::new("proxy");
        let config_path = dir.write("ferry.yaml", yaml);
        let admin = free_addr();
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let child = Command::new(binary_path("ferry-proxy"))
            .arg("--config")
            .arg(&config_path)
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn ferry-proxy");
        let pid = child.id();
        Proxy {
            child,
            pid,
            admin,
            dir,
            config_path,
            exit: None,
            http: Client::h1_no_pool(),
        }
    }

    /// Polls `/ready` every 20 ms for up to 10 s.
    pub async fn wait_ready(&mut self) {
        let start = tokio::time::Instant::now();
        for _ in 0..500 {
            if let Some(status) = self.try_exit() {
                panic!(
                    "ferry-proxy exited ({status}) before it was ready\n{}",
                    self.logs()
                );
            }
            let url = format!("http://{}/ready", self.admin);
            let probe = tokio::time::timeout(Duration::from_secs(1), self.http.get(&url)).await;
            if let Ok(Ok(resp)) = probe {
                if resp.status == 200 {
                    return;
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ferry-proxy not ready within 10s\n{}", self.logs());
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> &str {
        &self.config_path
    }

    /// The scratch directory holding the config and the logs.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// GET an admin path (`/ready`, `/stats/prometheus`, ...).
    pub async fn admin_get(&self, path: &str) -> Resp {
        let url = format!("http://{}{path}", self.admin);
        match self.http.get(&url).await {
            Ok(r) => r,
            Err(e) => panic!("admin GET {path} failed: {e:#}\n{}", self.logs()),
        }
    }

    pub async fn stats(&self) -> Stats {
        let resp = self.admin_get("/stats/prometheus").await;
        assert_eq!(resp.status, 200, "/stats/prometheus: {}", resp.text());
        Stats::parse(&resp.text())
    }

    pub async fn config_dump(&self) -> serde_json::Value {
        let resp = self.admin_get("/config_dump").await;
        assert_eq!(resp.status, 200, "/config_dump: {}", resp.text());
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("/config_dump is not JSON ({e}): {}", resp.text()))
    }

    /// `/clusters?format=json`.
    pub async fn clusters_json(&self) -> serde_json::Value {
        let resp = self.admin_get("/clusters?format=json").await;
        assert_eq!(resp.status, 200, "/clusters: {}", resp.text());
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("/clusters?format=json is not JSON ({e}): {}", resp.text()))
    }

    /// One cluster's entry in `/clusters?format=json`; panics when absent.
    pub async fn cluster_view(&self, cluster: &str) -> serde_json::Value {
        let all = self.clusters_json().await;
        all["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == cluster))
            .cloned()
            .unwrap_or_else(|| panic!("cluster {cluster:?} not in /clusters: {all}"))
    }

    /// One endpoint's entry in `/clusters?format=json` (fields `health`,
    /// `ejected_until_unix_ms`, `times_ejected`, `consecutive_5xx`,
    /// `rq_total`, ...); panics when absent.
    pub async fn endpoint_view(&self, cluster: &str, addr: SocketAddr) -> serde_json::Value {
        let c = self.cluster_view(cluster).await;
        let want = addr.to_string();
        c["endpoints"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["address"] == want.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("endpoint {want} not in cluster {cluster}: {c}"))
    }

    /// An endpoint's health flags: `healthy`, `/failed_active_hc`,
    /// `/failed_outlier_check`, or both.
    pub async fn endpoint_health(&self, cluster: &str, addr: SocketAddr) -> String {
        let e = self.endpoint_view(cluster, addr).await;
        e["health"]
            .as_str()
            .unwrap_or_else(|| panic!("endpoint {addr} has no string `health`: {e}"))
            .to_string()
    }

    /// `(ok, failed)` of `ferry_config_reload_total`.
    pub async fn reload_counts(&self) -> (f64, f64) {
        let s = self.stats().await;
        (
            s.get("ferry_config_reload_total", &[("result", "ok")]),
            s.get("ferry_config_reload_total", &[("result", "failed")]),
        )
    }

    /// Replaces the config file (atomically) without signalling.
    pub fn write_config(&self, yaml: &str) {
        self.dir.write("ferry.yaml", yaml);
    }

    /// Writes `yaml`, sends SIGHUP and waits until the reload is counted;
    /// panics if it was rejected.
    pub async fn reload(&self, yaml: &str) {
        let (ok, failed) = self.reload_and_wait(yaml).await;
        let (ok2, failed2) = self.reload_counts().await;
        assert!(
            failed2 == failed && ok2 > ok,
            "reload was rejected (ok {ok}->{ok2}, failed {failed}->{failed2})\n{}",
            self.logs()
        );
    }

    /// Writes `yaml`, sends SIGHUP and waits until the failed-reload
    /// counter moves; panics if it was accepted instead.
    pub async fn reload_expect_failure(&self, yaml: &str) {
        let (ok, failed) = self.reload_and_wait(yaml).await;
        let (ok2, failed2) = self.reload_counts().await;
        assert!(
            failed2 > failed && ok2 == ok,
            "bad config was not rejected (ok {ok}->{ok2}, failed {failed}->{failed2})\n{}",
            self.logs()
        );
    }

    async fn reload_and_wait(&self, yaml: &str) -> (f64, f64) {
        let (ok, failed) = self.reload_counts().await;
        self.write_config(yaml);
        self.signal("HUP");
        wait_until(
            "the reload is counted",
            Duration::from_secs(10),
            async || {
                let (ok2, failed2) = self.reload_counts().await;
                ok2 + failed2 > ok + failed
            },
        )
        .await;
        (ok, failed)
    }

    pub fn sighup(&self) {
        self.signal("HUP");
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal with the shell's `kill` builtin (no unsafe, no extra
    /// crate, present on every machine).
    fn signal(&self, sig: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s {sig} {}", self.pid))
            .status()
            .expect("run sh -c kill");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid);
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `cap` for the process to exit.
    pub async fn wait_exit(&mut self, cap: Duration) -> ExitStatus {
        let start = tokio::time::Instant::now();
        let tries = cap.as_millis() / 20 + 2;
        for _ in 0..tries {
            if let Some(s) = self.try_exit() {
                return s;
            }
            if start.elapsed() > cap {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ferry-proxy did not exit within {cap:?}\n{}", self.logs());
    }

    /// Resident set size in KiB (VmRSS from /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The proxy's stdout and stderr so far (the last 32 KiB of each).
    pub fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read(self.dir.path().join(name)).unwrap_or_default();
            let start = text.len().saturating_sub(32 * 1024);
            String::from_utf8_lossy(&text[start..]).into_owned()
        };
        format!(
            "----- ferry-proxy stdout -----\n{}\n----- ferry-proxy stderr -----\n{}\n-----",
            tail("stdout.log"),
            tail("stderr.log")
        )
    }

    /// Runs `ferry-proxy --validate FILE`: (exit code, stdout + stderr).
    pub async fn validate(path: &str) -> (i32, String) {
        let out = tokio::process::Command::new(binary_path("ferry-proxy"))
            .arg("--validate")
            .arg(path)
            .stdin(Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("--validate finished within 30s")
            .expect("run ferry-proxy --validate");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
