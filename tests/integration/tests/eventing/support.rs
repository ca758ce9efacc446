//! What the eventing tests share: the `ferry-control serve` process
//! ([`Ferry`], on the embedded log or on a `nats-server` it starts), a
//! recording subscriber ([`Subscriber`]) and a small HTTP client.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_integration_tests::{binary_path, free_addr, TestDir};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

// ---- the broker process -----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded segmented log in the data directory.
    Embedded,
    /// NATS JetStream: a `nats-server -js` started for the test.
    JetStream,
}

/// `nats-server -js -sd DIR` on a free loopback port, killed on drop.
pub struct Nats {
    child: Child,
    url: String,
    _dir: TestDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = TestDir::new("nats");
        let addr = free_addr();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &addr.port().to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}): install it with `apt-get install nats-server` (bash .ci/run does)")
            });
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats {
            child,
            url: format!("nats://{addr}"),
            _dir: dir,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry-control serve` with its data in a scratch directory, on fixed
/// loopback ports that survive a restart; killed on drop.
pub struct Ferry {
    child: Option<Child>,
    dir: TestDir,
    pub broker: SocketAddr,
    pub api: SocketAddr,
    /// `--broker-config`, if any.
    config: Option<String>,
    nats: Option<Nats>,
    /// Processes started so far (each logs to `stderr-{n}.log`).
    runs: usize,
}

impl Ferry {
    /// Seeded with Brokers and Triggers by `--broker-config`; ready when
    /// the broker ingress answers.
    pub async fn start(backend: Backend, config_yaml: &str) -> Ferry {
        let dir = TestDir::new("eventing");
        let config = dir.write("brokers.yaml", config_yaml);
        Ferry::launch(backend, dir, Some(config)).await
    }

    /// Nothing seeded: Brokers and Triggers come through the API. Ready
    /// when the API answers.
    pub async fn start_empty(backend: Backend) -> Ferry {
        Ferry::launch(backend, TestDir::new("eventing"), None).await
    }

    async fn launch(backend: Backend, dir: TestDir, config: Option<String>) -> Ferry {
        let nats = (backend == Backend::JetStream).then(Nats::start);
        let mut f = Ferry {
            child: None,
            dir,
            broker: free_addr(),
            api: free_addr(),
            config,
            nats,
            runs: 0,
        };
        f.spawn();
        f.wait_ready().await;
        f
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let stderr =
            std::fs::File::create(self.dir.path().join(format!("stderr-{}.log", self.runs)))
                .expect("log");
        let mut cmd = Command::new(binary_path("ferry-control"));
        cmd.arg("serve");
        if let Some(n) = &self.nats {
            cmd.arg("--broker-nats").arg(&n.url);
        }
        if let Some(c) = &self.config {
            cmd.arg("--broker-config").arg(c);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--broker-listen")
            .arg(self.broker.to_string())
            .arg("--xds-listen")
            .arg(free_addr().to_string())
            .arg("--api-listen")
            .arg(self.api.to_string())
            .arg("--gateway-listen")
            .arg(free_addr().to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ferry-control");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let url = if self.config.is_some() {
            format!("http://{}/healthz", self.broker)
        } else {
            format!("http://{}/healthz", self.api)
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "ferry-control exited ({st}) before it was ready\n{}",
                    self.logs()
                );
            }
            if let Ok((200, _, _)) = http_post_or_get(Method::GET, &url, &[], Bytes::new()).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ferry-control not ready\n{}", self.logs());
    }

    /// SIGKILL, then start again on the same data directory and ports.
    pub async fn kill_9_and_restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// `serve --data-dir`.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A URL on the broker ingress.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.broker)
    }

    /// A URL on the REST API.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// Runs `ferry-control ARGS --server <this API>`: (success, stdout,
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(binary_path("ferry-control"))
            .args(args)
            .arg("--server")
            .arg(format!("http://{}", self.api))
            .stdin(Stdio::null())
            .output()
            .expect("run ferry-control");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Writes `yaml` into the scratch directory and applies it with the CLI.
    pub fn apply(&self, name: &str, yaml: &str) -> (bool, String, String) {
        let file = self.dir.write(name, yaml);
        self.cli(&["apply", "-f", &file])
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for run in 1..=self.runs {
            let p = self.dir.path().join(format!("stderr-{run}.log"));
            if let Ok(s) = std::fs::read_to_string(p) {
                out.push_str(&format!("--- ferry-control #{run} stderr ---\n{s}\n"));
            }
        }
        out
    }
}

impl Ferry {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// ---- a recording subscriber -------------------------------------------------

#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

#[derive(Default)]
struct SubState {
    got: Mutex<Vec<Got>>,
    /// Per path; absent = 200, empty body.
    answers: Mutex<HashMap<String, Answer>>,
}

#[derive(Clone)]
pub struct Subscriber {
    addr: SocketAddr,
    st: Arc<SubState>,
}

impl Subscriber {
    pub async fn start() -> Subscriber {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let st = Arc::new(SubState::default());
        let s2 = st.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            st.got.lock().expect("lock").push(Got {
                                path: path.clone(),
                                headers: parts.headers,
                                body,
                                at: Instant::now(),
                            });
                            let a = st.answers.lock().expect("lock").get(&path).cloned();
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            if let Some(a) = a {
                                *resp.status_mut() =
                                    StatusCode::from_u16(a.status).expect("status");
                                for (k, v) in &a.headers {
                                    resp.headers_mut().insert(
                                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                        http::HeaderValue::from_str(v).expect("value"),
                                    );
                                }
                                *resp.body_mut() = Full::new(a.body.clone());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Subscriber { addr, st }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer(&self, path: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.st.answers.lock().expect("lock").insert(
            path.to_owned(),
            Answer {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                body: Bytes::copy_from_slice(body),
            },
        );
    }

    pub fn got(&self, path: &str) -> Vec<Got> {
        self.st
            .got
            .lock()
            .expect("lock")
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    pub fn ids(&self, path: &str) -> HashSet<String> {
        self.got(path)
            .iter()
            .filter_map(|g| {
                g.headers
                    .get("ce-id")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            })
            .collect()
    }

    pub async fn wait_count(&self, path: &str, n: usize, cap: Duration) {
        let start = Instant::now();
        while start.elapsed() < cap {
            if self.got(path).len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{path}: got {} requests, wanted {n}", self.got(path).len());
    }
}

// ---- helpers ------------------------------------------------------------------

pub async fn http_post_or_get(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<(u16, HeaderMap, Bytes)> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(body))?),
    )
    .await??;
    let (parts, body) = resp.into_parts();
    Ok((
        parts.status.as_u16(),
        parts.headers,
        body.collect().await?.to_bytes(),
    ))
}

/// Defines two tests running `$body`, one on each storage backend (the
/// test file must import `Backend`).
macro_rules! both {
    ($embedded:ident, $jetstream:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $body(Backend::Embedded).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $jetstream() {
            $body(Backend::JetStream).await
        }
    };
}
