use std::net::SocketAddr;
use std::sync::Mutex;

use futures_util::StreamExt as _;

use super::proto::load_reporter_server::{LoadReporter, LoadReporterServer};
use super::*;
use crate::queue::RevisionKey;

#[derive(Clone, Default)]
struct Fake {
    got: Arc<Mutex<Vec<LoadReport>>>,
    streams: Arc<AtomicU64>,
    /// The first stream fails after this many reports (a control plane
    /// restarting), so the reporter must reconnect.
    fail_first_after: Option<u64>,
}

#[tonic::async_trait]
impl LoadReporter for Fake {
    async fn report(
        &self,
        req: tonic::Request<tonic::Streaming<LoadReport>>,
    ) -> Result<tonic::Response<proto::ReportAck>, tonic::Status> {
        let mut stream = req.into_inner();
        let nth = self.streams.fetch_add(1, Ordering::AcqRel);
        let mut received = 0;
        while let Some(r) = stream.next().await {
            let r = r?;
            received += 1;
            if nth == 0 && Some(received) > self.fail_first_after {
                return Err(tonic::Status::unavailable("restarting"));
            }
            if let Ok(mut got) = self.got.lock() {
                got.push(r);
            }
        }
        Ok(tonic::Response::new(proto::ReportAck { received }))
    }
}

async fn serve(fake: Fake, addr: SocketAddr) -> JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(LoadReporterServer::new(fake))
            .serve_with_incoming(incoming)
            .await;
    })
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn key(rev: &str) -> RevisionKey {
    RevisionKey {
        namespace: "default".into(),
        revision: rev.into(),
    }
}

fn reports(fake: &Fake) -> Vec<LoadReport> {
    fake.got.lock().map(|g| g.clone()).unwrap_or_default()
}

/// A known load: one request always in flight plus one in flight half of
/// every second → average concurrency 1.5 in each full window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_second_reports_with_the_average_and_reconnects() {
    let registry = Arc::new(Registry::new());
    let rev = registry.revision(key("load-00001"));
    let addr = free_addr();
    // The server starts late: the reporter must retry, dropping reports
    // meanwhile rather than buffering them.
    let reporter = spawn(
        ReportOptions {
            target: format!("http://{addr}"),
            pod: "pod-a".into(),
        },
        registry.clone(),
    );
    let always = rev.stats.enter(false);
    let load = {
        let rev = rev.clone();
        tokio::spawn(async move {
            loop {
                let g = rev.stats.enter(false);
                tokio::time::sleep(Duration::from_millis(500)).await;
                drop(g);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fake = Fake {
        fail_first_after: Some(2),
        ..Fake::default()
    };
    let server = serve(fake.clone(), addr).await;
    // The backoff while the server was down is at most a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reports(&fake).len() < 4 {
        assert!(Instant::now() < deadline, "got {:?}", reports(&fake));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = reports(&fake);
    for r in got.iter().skip(1) {
        assert_eq!(r.pod_name, "pod-a");
        assert_eq!(r.trigger, Trigger::Periodic as i32);
        let s = r
            .stats
            .iter()
            .find(|s| s.revision == "load-00001")
            .expect("a stat for the revision");
        assert_eq!(s.namespace, "default");
        assert_eq!(s.window_ms, 1000);
        assert!(
            (s.average_concurrency - 1.5).abs() < 0.1,
            "average {} (want 1.5 ± 0.1)",
            s.average_concurrency
        );
        assert!(s.request_count <= 2.0, "{s:?}");
    }

    // The first stream failed after two reports; the reporter reopened it.
    assert!(
        fake.streams.load(Ordering::Acquire) >= 2,
        "the reporter did not reconnect"
    );
    server.abort();
    drop(always);
    load.abort();
    reporter.abort();
}

#[tokio::test]
async fn demand_report_names_only_revisions_with_new_demand() {
    let registry = Registry::new();
    let a = registry.revision(key("a"));
    let _b = registry.revision(key("b"));
    assert!(demand(&registry, "p").is_none());
    a.held.fetch_add(2, Ordering::AcqRel);
    a.demand.store(true, Ordering::Release);
    let r = demand(&registry, "p").expect("a demand report");
    assert_eq!(r.trigger, Trigger::Activation as i32);
    assert_eq!(r.stats.len(), 1);
    let s = &r.stats[0];
    assert_eq!(s.revision, "a");
    assert!(s.activation_demand);
    assert_eq!(s.held_requests, 2);
    assert_eq!(s.average_concurrency, 2.0);
    assert!(demand(&registry, "p").is_none(), "demand is reported once");
}

#[test]
fn periodic_report_covers_every_live_revision() {
    let registry = Registry::new();
    let a = registry.revision(key("a"));
    let b = registry.revision(key("b"));
    a.stats
        .arrive(registry.epoch + Duration::from_millis(500), false);
    let r = periodic(&registry, "p", registry.epoch + Duration::from_millis(1020));
    let names: Vec<&str> = r.stats.iter().map(|s| s.revision.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!((r.stats[0].average_concurrency - 0.5).abs() < 1e-9);
    assert_eq!(r.stats[0].request_count, 1.0);
    drop(b);
    let r = periodic(&registry, "p", registry.epoch + Duration::from_millis(2020));
    assert_eq!(r.stats.len(), 1, "a dropped revision is no longer reported");
}
