//! Eventing benchmarks, run by `bench/eventing.sh` (ignored in the normal
//! suite: they take time and want a release build).
//!
//! - `bench_ingress_throughput`: events/s answered 202 (each after its
//!   fsync), binary mode one event per request and batched mode, from many
//!   concurrent keep-alive connections.
//! - `bench_latency_10_triggers`: 1,000 events/s paced for 10 s into a
//!   broker with 10 triggers; per delivery, the time from the start of the
//!   producer's POST to the subscriber receiving it; p50/p99/max.
//!
//! Brokers and triggers are applied through the API (`ferry-control
//! apply`), as users create them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_integration_tests::{binary_path, free_addr, TestDir};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

struct Ferry {
    child: Child,
    _dir: TestDir,
    addr: SocketAddr,
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry-control serve`, then the Brokers and Triggers of `yaml` applied
/// through its API (`ferry-control apply`); returns once every trigger
/// reports Ready.
async fn start_ferry(yaml: &str) -> Ferry {
    let dir = TestDir::new("eventing-bench");
    let config = dir.write("brokers.yaml", yaml);
    let addr = free_addr();
    let api = free_addr();
    // bench/eventing.sh points this at the release build; the load
    // generator itself runs in the test profile (its dependencies are
    // optimised there).
    let bin = std::env::var_os("FERRY_CONTROL_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| binary_path("ferry-control"));
    let child = Command::new(&bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--broker-listen")
        .arg(addr.to_string())
        .arg("--xds-listen")
        .arg(free_addr().to_string())
        .arg("--api-listen")
        .arg(api.to_string())
        .arg("--gateway-listen")
        .arg(free_addr().to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry-control");
    let f = Ferry {
        child,
        _dir: dir,
        addr,
    };
    let client = client();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let req = Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("req");
            match client.request(req).await {
                Ok(r) if r.status() == StatusCode::OK => r
                    .into_body()
                    .collect()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.to_bytes()).ok())
                    .or(Some(serde_json::Value::Null)),
                _ => None,
            }
        }
    };
    let mut up = false;
    for _ in 0..500 {
        if get(format!("http://{api}/healthz")).await.is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the API did not come up");
    let out = Command::new(&bin)
        .args(["apply", "-f", &config, "--server", &format!("http://{api}")])
        .output()
        .expect("ferry-control apply");
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = yaml.matches("kind: Trigger").count();
    for _ in 0..500 {
        let triggers = get(format!("http://{api}/v1/triggers")).await;
        let ready = triggers
            .as_ref()
            .and_then(|v| v["items"].as_array())
            .map(|items| {
                items
                    .iter()
                    .filter(|t| t["status"]["conditions"][0]["status"] == "True")
                    .count()
            });
        let bound = get(format!("http://{addr}/healthz")).await.is_some();
        if bound && ready == Some(want) {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("broker or triggers not ready");
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(c)
}

fn yaml(triggers: &[String]) -> String {
    let mut y = String::from(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: bench}\n",
    );
    for (i, url) in triggers.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t{i}, namespace: bench}}\n\
             spec:\n  broker: default\n  subscriber: {{uri: \"{url}\"}}\n"
        ));
    }
    y
}

fn now_micros(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/eventing.sh"]
async fn bench_ingress_throughput() {
    // No triggers: this measures accepting (validate, append, fsync, 202).
    let ferry = start_ferry(&yaml(&[])).await;
    let url = format!("http://{}/bench/default", ferry.addr);
    let secs: u64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let conns: usize = std::env::var("FERRY_BENCH_CONNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    for (mode, per_req) in [("binary", 1usize), ("batch", 50usize)] {
        let accepted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..conns {
            let (url, accepted, failed) = (url.clone(), accepted.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut i = 0u64;
                let payload = Bytes::from(vec![b'x'; 256]);
                while Instant::now() < deadline {
                    i += 1;
                    let req = if per_req == 1 {
                        Request::post(&url)
                            .header("ce-specversion", "1.0")
                            .header("ce-id", format!("{c}-{i}"))
                            .header("ce-source", "/bench")
                            .header("ce-type", "bench")
                            .header("content-type", "application/octet-stream")
                            .body(Full::new(payload.clone()))
                            .expect("req")
                    } else {
                        let evs: Vec<String> = (0..per_req)
                            .map(|k| {
                                format!(
                                    r#"{{"specversion":"1.0","id":"{c}-{i}-{k}","source":"/bench","type":"bench","data":"{}"}}"#,
                                    "x".repeat(200)
                                )
                            })
                            .collect();
                        Request::post(&url)
                            .header("content-type", "application/cloudevents-batch+json")
                            .body(Full::new(Bytes::from(format!("[{}]", evs.join(",")))))
                            .expect("req")
                    };
                    match client.request(req).await {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => {
                            accepted.fetch_add(per_req as u64, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let n = accepted.load(Ordering::Relaxed);
        println!(
            "BENCH ingress mode={mode} events_per_request={per_req} connections={conns} seconds={secs} accepted={n} failed={} events_per_sec={:.0}",
            failed.load(Ordering::Relaxed),
            n as f64 / secs as f64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/eventing.sh"]
async fn bench_latency_10_triggers() {
    let origin = Instant::now();
    let lat: Arc<Mutex<Vec<u64>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sub = listener.local_addr().expect("addr");
    let l2 = lat.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let lat = l2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let lat = lat.clone();
                    async move {
                        let at = now_micros(origin);
                        let sent = req
                            .headers()
                            .get("ce-sentus")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        let _ = req.into_body().collect().await;
                        if let Some(s) = sent {
                            lat.lock().expect("lock").push(at.saturating_sub(s));
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let triggers: Vec<String> = (0..10).map(|i| format!("http://{sub}/t{i}")).collect();
    let ferry = start_ferry(&yaml(&triggers)).await;
    let url = format!("http://{}/bench/default", ferry.addr);
    let rate: u64 = 1000;
    let secs: u64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let total = rate * secs;
    let client = client();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let client = client.clone();
        let url = url.clone();
        inflight.push(tokio::spawn(async move {
            let sent = now_micros(origin);
            let req = Request::post(&url)
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("lat-{i}"))
                .header("ce-source", "/bench")
                .header("ce-type", "bench")
                .header("ce-sentus", sent.to_string())
                .body(Full::new(Bytes::from_static(b"hello")))
                .expect("req");
            matches!(client.request(req).await, Ok(r) if r.status() == StatusCode::ACCEPTED)
        }));
    }
    let mut ok = 0u64;
    for t in inflight {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    let want = ok as usize * 10;
    let start = Instant::now();
    while lat.lock().expect("lock").len() < want && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut v = lat.lock().expect("lock").clone();
    v.sort_unstable();
    let pct = |p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "BENCH latency rate={rate}/s seconds={secs} triggers=10 accepted={ok} deliveries={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        v.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        v.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    assert_eq!(
        v.len(),
        want,
        "every accepted event reaches all 10 triggers"
    );
}
