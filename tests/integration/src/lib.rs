//! Test harness for Ferry's end-to-end tests: the real `ferry-proxy` binary
//! under test ([`Proxy`]), in-process fake backends ([`Backend`],
//! [`TcpEcho`], [`GrpcHealth`]), clients ([`Client`], [`TlsClient`], raw
//! sockets), certificates ([`Pki`]) and bounded waiting ([`wait_until`]).
//!
//! Rules every test follows: ports come from [`free_port`] on 127.0.0.1 only;
//! nothing sleeps to wait for readiness, it polls with a cap; every loop is
//! bounded in count and time.

use std::future::Future;
use std::time::Duration;

mod backend;
mod body;
mod client;
mod dir;
pub mod envoy;
mod pki;
mod ports;
mod proxy;
mod stats;

pub use backend::{Backend, BackendBuilder, Behavior, GrpcHealth, TcpEcho, BEHAVIOR_HEADER};
pub use body::{empty, full, generated, Body, CHUNK};
pub use client::{
    grpc_health_client, is_uuid_v4, raw_exchange, raw_read_head, Client, Echo, Resp, TlsClient,
    TlsResp,
};
pub use dir::TestDir;
pub use pki::Pki;
pub use ports::{closed_port, free_addr, free_port};
pub use proxy::{binary_path, Proxy};
pub use stats::Stats;

/// Polls `check` every 20 ms until it returns true; panics naming `what`
/// when `cap` has passed. The number of tries is bounded too, so a check
/// that itself takes long cannot make this loop run forever.
pub async fn wait_until<F>(what: &str, cap: Duration, mut check: F)
where
    F: AsyncFnMut() -> bool,
{
    let step = Duration::from_millis(20);
    let max_tries = cap.as_millis() / step.as_millis() + 2;
    let start = tokio::time::Instant::now();
    for _ in 0..max_tries {
        if check().await {
            return;
        }
        if start.elapsed() >= cap {
            break;
        }
        tokio::time::sleep(step).await;
    }
    panic!("timed out after {cap:?} waiting until {what}");
}

/// `eventually!(cap, "what", async { bool })`: [`wait_until`] with an async
/// block re-evaluated on every try.
#[macro_export]
macro_rules! eventually {
    ($cap:expr, $what:expr, $check:expr) => {
        $crate::wait_until($what, $cap, async || $check).await
    };
}

/// Wraps a future in a timeout that panics with `what`, so no test can
/// hang on a stuck connection.
pub async fn within<T>(cap: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(cap, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {cap:?}"),
    }
}

/// Five standard deviations of a binomial count: the tolerance the
/// statistical tests use (a false failure is a 1-in-1.7-million event).
pub fn five_sigma(n: usize, p: f64) -> f64 {
    5.0 * (n as f64 * p * (1.0 - p)).sqrt()
}

/// A `clusters:` YAML section with one static HTTP/1.1 cluster per backend,
/// named after it.
pub fn clusters_yaml(backends: &[&Backend]) -> String {
    let mut out = String::from("clusters:\n");
    for b in backends {
        out.push_str(&format!(
            "  - name: {}\n    endpoints: [{{address: \"{}\"}}]\n",
            b.name, b.addr
        ));
    }
    out
}

/// Sends `n` GETs to `url` from `concurrency` tasks sharing `client` and
/// counts the answering backends (`x-backend`). Panics on any error or
/// non-200 answer.
pub async fn tally(
    client: &Client,
    url: &str,
    n: usize,
    concurrency: usize,
) -> std::collections::BTreeMap<String, usize> {
    let concurrency = concurrency.max(1);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        let share = n / concurrency + usize::from(t < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(share);
            for i in 0..share {
                let r = client
                    .get(&url)
                    .await
                    .unwrap_or_else(|e| panic!("request {i} to {url}: {e:#}"));
                assert_eq!(r.status, 200, "request {i} to {url}: {}", r.text());
                seen.push(r.backend().unwrap_or("<none>").to_string());
            }
            seen
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        for name in t.await.expect("tally task") {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}
