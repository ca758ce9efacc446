//! The queue-proxy and activator roles end to end: the concurrency cap and
//! its bounded queue in front of a slow app, readiness gated on the app,
//! per-second load reports to a (fake) control plane, and a request held
//! for a revision at zero released by a reload that adds an endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_integration_tests::{free_addr, Backend, Client, Proxy};
use ferry_proxy::report::proto::load_reporter_server::{LoadReporter, LoadReporterServer};
use ferry_proxy::report::proto::{LoadReport, ReportAck};
use futures_util::StreamExt as _;
use tokio::net::TcpListener;

fn queue_config(listen: &str, app: &str, queue: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: inbound, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: app}}
clusters:
  - name: app
    endpoints: [{{address: "{app}"}}]
    queue: {queue}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_never_sends_the_app_two_requests() {
    let app = Backend::builder("app")
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&queue_config(
        &listen,
        &app.address(),
        "{revision: hello-00001, container_concurrency: 1}",
    ))
    .await;

    // 20 at once: 1 executes, 10 wait (10 × container_concurrency), the
    // rest are refused at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = format!("http://{listen}/c/{i}");
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = Client::h1_no_pool().get(&url).await.expect("request");
            (
                r.status.as_u16(),
                r.header("x-ferry-queue").map(str::to_string),
                started.elapsed(),
            )
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        let (status, reason, took) = t.await.expect("join");
        match (status, reason.as_deref()) {
            (200, _) => ok += 1,
            (503, Some("full")) => {
                full += 1;
                assert!(
                    took < Duration::from_millis(250),
                    "a full queue answers at once ({took:?})"
                );
            }
            other => panic!("unexpected answer {other:?}\n{}", proxy.logs()),
        }
    }
    assert_eq!(app.peak_in_flight(), 1, "the app saw concurrent requests");
    assert_eq!(ok + full, 20);
    assert!(
        ok >= 11,
        "1 executing + 10 queued must succeed (ok {ok}, full {full})"
    );
    assert!(
        full >= 1,
        "the excess beyond the queue depth must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_timeout_answers_503_with_the_reason() {
    let app = Backend::builder("app")
        .delay(Duration::from_millis(800))
        .start()
        .await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&queue_config(
        &listen,
        &app.address(),
        "{container_concurrency: 1, queue_timeout: 200ms}",
    ))
    .await;
    let first = {
        let url = format!("http://{listen}/slow");
        tokio::spawn(async move { Client::h1_no_pool().get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = Client::h1_no_pool()
        .get(&format!("http://{listen}/queued"))
        .await
        .expect("request");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-ferry-queue"), Some("timeout"));
    assert_eq!(first.await.expect("join").expect("first").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_the_app_listens() {
    let app_addr = free_addr();
    let listen = free_addr().to_string();
    let mut proxy = Proxy::spawn(
        &queue_config(&listen, &app_addr.to_string(), "{container_concurrency: 1}"),
        &[],
    );
    // The admin server is up but the app is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = Client::h1_no_pool();
    let ready_url = format!("http://{}/ready", proxy.admin);
    loop {
        // Connection refused until the admin server is up.
        if let Ok(r) = admin.get(&ready_url).await {
            if r.status == 503 && r.text().contains("app") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "admin never came up\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.admin_get("/ready").await.status, 503);

    let _app = TcpListener::bind(app_addr).await.expect("bind the app");
    let listening = Instant::now();
    loop {
        if proxy.admin_get("/ready").await.status == 200 {
            break;
        }
        assert!(
            listening.elapsed() < Duration::from_secs(2),
            "never ready\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = listening.elapsed();
    assert!(
        took < Duration::from_millis(150),
        "ready {took:?} after the app listened (aggressive probing is every 50ms)"
    );
    proxy.wait_ready().await;
}

/// `/ready?wait=` is a long-poll: held while the app is down (503 when the
/// wait runs out), answered 200 as soon as the app passes its probe, not
/// at the caller's next probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_wait_answers_when_the_app_becomes_ready() {
    let app_addr = free_addr();
    let listen = free_addr().to_string();
    let proxy = Proxy::spawn(
        &queue_config(&listen, &app_addr.to_string(), "{container_concurrency: 1}"),
        &[],
    );
    let admin = Client::h1_no_pool();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .get(&format!("http://{}/healthz", proxy.admin))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "admin never came up\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Nothing listens for the app: the wait runs out.
    let asked = Instant::now();
    let r = proxy.admin_get("/ready?wait=300ms").await;
    let waited = asked.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "a 300ms wait answered after {waited:?}"
    );

    // A long wait is answered once the app listens.
    let url = format!("http://{}/ready?wait=20s", proxy.admin);
    let waiting = tokio::spawn(async move {
        let r = Client::h1_no_pool().get(&url).await.expect("long-poll");
        (r.status, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered before the app listened");
    let _app = TcpListener::bind(app_addr).await.expect("bind the app");
    let listening = Instant::now();
    let (status, answered) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long-poll was answered")
        .expect("join");
    assert_eq!(status, 200);
    let took = answered.saturating_duration_since(listening);
    assert!(
        took < Duration::from_millis(150),
        "answered {took:?} after the app listened (its probe runs every 50 ms)"
    );
}

#[derive(Clone, Default)]
struct FakeControlPlane {
    reports: Arc<Mutex<Vec<LoadReport>>>,
}

#[tonic::async_trait]
impl LoadReporter for FakeControlPlane {
    async fn report(
        &self,
        req: tonic::Request<tonic::Streaming<LoadReport>>,
    ) -> Result<tonic::Response<ReportAck>, tonic::Status> {
        let mut stream = req.into_inner();
        let mut received = 0;
        while let Some(r) = stream.next().await {
            let r = r?;
            received += 1;
            if let Ok(mut v) = self.reports.lock() {
                v.push(r);
            }
        }
        Ok(tonic::Response::new(ReportAck { received }))
    }
}

/// Two clients in a loop against an app that takes 500 ms: the revision's
/// concurrency is ~2 all the time, and that is what reaches the control
/// plane every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_average_concurrency_every_second() {
    let cp_addr = free_addr();
    let fake = FakeControlPlane::default();
    let listener = TcpListener::bind(cp_addr)
        .await
        .expect("bind control plane");
    let server = {
        let fake = fake.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(LoadReporterServer::new(fake))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        })
    };
    let app = Backend::builder("app")
        .delay(Duration::from_millis(500))
        .start()
        .await;
    let listen = free_addr().to_string();
    let target = format!("http://{cp_addr}");
    let proxy = Proxy::start_with(
        &queue_config(
            &listen,
            &app.address(),
            "{revision: load-00001, namespace: ns}",
        ),
        &["--report-to", &target, "--pod-name", "pod-q"],
    )
    .await;

    let mut clients = Vec::new();
    for _ in 0..2 {
        let url = format!("http://{listen}/");
        clients.push(tokio::spawn(async move {
            let c = Client::h1();
            loop {
                let _ = c.get(&url).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    for c in &clients {
        c.abort();
    }
    let reports = fake.reports.lock().map(|r| r.clone()).unwrap_or_default();
    let stats: Vec<_> = reports
        .iter()
        .flat_map(|r| r.stats.iter())
        .filter(|s| s.revision == "load-00001")
        .collect();
    assert!(stats.len() >= 4, "{reports:#?}\n{}", proxy.logs());
    // The first window may have started before the load did.
    for s in stats.iter().skip(1).take(3) {
        assert_eq!(s.namespace, "ns");
        assert_eq!(s.pod_name, "pod-q");
        assert!(
            (s.average_concurrency - 2.0).abs() < 0.3,
            "average {} (want 2 ± 0.3): {s:?}",
            s.average_concurrency
        );
        assert!((3.0..=5.0).contains(&s.request_count), "{s:?}");
    }
    server.abort();
}

fn activation_config(listen: &str, endpoints: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: gateway, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: hello-00001}}
clusters:
  - name: hello-00001
    endpoints: [{endpoints}]
    activation: {{hold_timeout: 20s}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_succeeds_when_a_reload_adds_an_endpoint() {
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&activation_config(&listen, "")).await;
    let held = {
        let url = format!("http://{listen}/cold");
        tokio::spawn(async move {
            let started = Instant::now();
            (Client::h1_no_pool().get(&url).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "the request must be held, not refused");

    let app = Backend::start("app").await;
    proxy
        .reload(&activation_config(
            &listen,
            &format!("{{address: \"{}\"}}", app.address()),
        ))
        .await;
    let (resp, took) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released after the reload")
        .expect("join");
    let resp = resp.expect("response");
    assert_eq!(resp.status, 200, "{}", proxy.logs());
    assert_eq!(resp.backend(), Some("app"));
    assert!(took >= Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_timeout_answers_503_with_the_reason() {
    let listen = free_addr().to_string();
    let yaml = activation_config(&listen, "").replace("hold_timeout: 20s", "hold_timeout: 200ms");
    let _proxy = Proxy::start(&yaml).await;
    let started = Instant::now();
    let r = Client::h1_no_pool()
        .get(&format!("http://{listen}/cold"))
        .await
        .expect("request");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-ferry-activation"), Some("timeout"));
    assert!(started.elapsed() >= Duration::from_millis(200));
}
