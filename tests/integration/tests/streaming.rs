//! Bodies are streamed, never buffered: a GiB up and a GiB down through
//! the proxy while its resident memory stays within a fixed budget. The
//! test generates and counts the bytes on the fly, so it holds no GiB
//! either.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_integration_tests::{empty, free_addr, generated, Backend, Client, Proxy};
use http::Request;
use http_body_util::BodyExt;

const GIB: u64 = 1024 * 1024 * 1024;
/// RSS growth allowed during a transfer.
const BUDGET_KIB: u64 = 64 * 1024;

fn yaml(listen: &str, backend: &Backend, protocol: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: b, timeout: 120s}}
clusters:
  - name: b
    protocol: {protocol}
    endpoints: [{{address: "{}"}}]
"#,
        backend.addr
    )
}

/// Samples the proxy's RSS every 10 ms until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(proxy: &Proxy) -> RssSampler {
        let pid = proxy.pid();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            // Bounded: at most ~10 minutes of samples.
            for _ in 0..60_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(kib) = rss_of(pid) {
                    p.fetch_max(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        RssSampler { stop, peak, task }
    }

    /// Stops sampling, takes one last sample, and returns the peak.
    async fn finish(self, proxy: &Proxy) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.peak.fetch_max(proxy.rss_kib(), Ordering::SeqCst);
        self.peak.load(Ordering::SeqCst)
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Starts the proxy and warms it up (one small request each way), so the
/// baseline RSS includes pools, buffers and the first connection.
async fn setup(protocol: &str, c: Client) -> (Backend, Proxy, String, Client, u64) {
    let b = Backend::start("sink").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&yaml(&listen, &b, protocol)).await;
    let warm = Request::post(format!("http://{listen}/warm"))
        .body(generated(4 * 1024 * 1024))
        .expect("request");
    assert_eq!(c.send(warm).await.expect("warm-up").status, 200);
    let warm = c
        .get(&format!("http://{listen}/warm?bytes=4194304"))
        .await
        .expect("warm-up download");
    assert_eq!(warm.body.len(), 4 * 1024 * 1024);
    let base = proxy.rss_kib();
    (b, proxy, listen, c, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_one_gib_in_constant_memory() {
    upload("http1", Client::h1()).await;
}

/// HTTP/2 on both hops: flow control, not buffering, must pace the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_one_gib_over_http2_in_constant_memory() {
    upload("http2", Client::h2c()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_one_gib_in_constant_memory() {
    download("http1", Client::h1()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_one_gib_over_http2_in_constant_memory() {
    download("http2", Client::h2c()).await;
}

async fn upload(protocol: &str, client: Client) {
    let (_b, proxy, listen, c, base) = setup(protocol, client).await;
    let sampler = RssSampler::start(&proxy);
    let start = tokio::time::Instant::now();
    let req = Request::post(format!("http://{listen}/upload"))
        .body(generated(GIB))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(300), c.send(req))
        .await
        .expect("upload finished within 300s")
        .expect("upload");
    let took = start.elapsed();
    let peak = sampler.finish(&proxy).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.echo().body_len, GIB, "the backend counted every byte");
    eprintln!("1 GiB upload ({protocol}): {took:?}, RSS {base} KiB -> peak {peak} KiB");
    assert!(
        peak <= base + BUDGET_KIB,
        "proxy RSS grew from {base} KiB to {peak} KiB during a 1 GiB upload (budget {BUDGET_KIB} KiB)"
    );
}

async fn download(protocol: &str, client: Client) {
    let (_b, proxy, listen, c, base) = setup(protocol, client).await;
    let sampler = RssSampler::start(&proxy);
    let start = tokio::time::Instant::now();
    let req = Request::get(format!("http://{listen}/download?bytes={GIB}"))
        .body(empty())
        .expect("request");
    let count = async {
        let resp = c.send_streaming(req).await.expect("download head");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("body frame").data_ref() {
                n += d.len() as u64;
            }
        }
        n
    };
    let n = tokio::time::timeout(Duration::from_secs(300), count)
        .await
        .expect("download finished within 300s");
    let took = start.elapsed();
    let peak = sampler.finish(&proxy).await;
    assert_eq!(n, GIB, "every byte arrived");
    eprintln!("1 GiB download ({protocol}): {took:?}, RSS {base} KiB -> peak {peak} KiB");
    assert!(
        peak <= base + BUDGET_KIB,
        "proxy RSS grew from {base} KiB to {peak} KiB during a 1 GiB download (budget {BUDGET_KIB} KiB)"
    );
}
