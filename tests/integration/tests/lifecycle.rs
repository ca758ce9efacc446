//! Process lifecycle: graceful drain on SIGTERM (in-flight requests finish,
//! new connections are refused, exit code 0), the drain timeout, and
//! running with several workers.

use std::time::Duration;

use ferry_integration_tests::{eventually, free_addr, tally, Backend, Client, Proxy};
use tokio::net::TcpStream;

fn yaml(listen: &str, b: &Backend) -> String {
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
            route: {{cluster: b, timeout: 30s}}
clusters:
  - name: b
    endpoints: [{{address: "{}"}}]
"#,
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let b = Backend::builder("slow")
        .delay(Duration::from_millis(2500))
        .start()
        .await;
    let listen = free_addr().to_string();
    let mut proxy = Proxy::start_with(&yaml(&listen, &b), &["--drain-timeout", "10s"]).await;

    let url = format!("http://{listen}/slow");
    let in_flight = tokio::spawn(async move { Client::h1().get(&url).await });
    eventually!(Duration::from_secs(5), "the backend holds the request", {
        b.in_flight() == 1
    });
    proxy.sigterm();

    // While the slow request is still running, the listener is closed.
    let listen2 = listen.clone();
    eventually!(
        Duration::from_millis(1500),
        "new connections are refused during the drain",
        TcpStream::connect(&listen2).await.is_err()
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request should still be in flight"
    );

    let r = in_flight
        .await
        .expect("request task")
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), Some("slow"));

    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after a drain: {status}"
    );
}

#[tokio::test]
async fn sigterm_when_idle_exits_promptly() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut proxy = Proxy::start_with(&yaml(&listen, &b), &["--drain-timeout", "20s"]).await;
    let r = Client::h1_no_pool()
        .get(&format!("http://{listen}/"))
        .await
        .expect("GET");
    assert_eq!(r.status, 200);
    let start = tokio::time::Instant::now();
    proxy.sigterm();
    // Nothing is in flight: no reason to wait for the drain timeout.
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    let b = Backend::builder("stuck")
        .delay(Duration::from_secs(20))
        .start()
        .await;
    let listen = free_addr().to_string();
    let mut proxy = Proxy::start_with(&yaml(&listen, &b), &["--drain-timeout", "1s"]).await;
    let url = format!("http://{listen}/stuck");
    let stuck = tokio::spawn(async move { Client::h1().get(&url).await });
    eventually!(Duration::from_secs(5), "the backend holds the request", {
        b.in_flight() == 1
    });
    let start = tokio::time::Instant::now();
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(8)).await;
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM with --drain-timeout 1s"
    );
    // The cut request fails or gets an error status, but returns.
    let r = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the cut request returns");
    if let Ok(Ok(r)) = r {
        assert_ne!(r.status, 200, "a request cut by the drain cannot succeed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_two_serves_in_parallel() {
    let b = Backend::builder("b")
        .delay(Duration::from_millis(50))
        .start()
        .await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start_with(&yaml(&listen, &b), &["--concurrency", "2"]).await;
    let start = tokio::time::Instant::now();
    let counts = tally(&Client::h1_no_pool(), &format!("http://{listen}/"), 80, 8).await;
    assert_eq!(counts.get("b"), Some(&80));
    let counts = tally(&Client::h2c(), &format!("http://{listen}/"), 40, 8).await;
    assert_eq!(counts.get("b"), Some(&40));
    // 120 requests of 50 ms from 8 clients: serial handling would take 6 s.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "requests were not served concurrently: {:?}",
        start.elapsed()
    );
}
