//! Protocol translation and tunnelling: HTTP/1.1 ↔ HTTP/2 in both
//! directions, gRPC (trailers), WebSocket upgrades, `Expect:
//! 100-continue`, and plain TCP proxying.

use std::time::Duration;

use ferry_integration_tests::free_addr;
use ferry_integration_tests::{
    full, grpc_health_client, raw_read_head, within, Backend, Client, GrpcHealth, Proxy, TcpEcho,
};
use http::{Request, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Listener → `/` → cluster `up` (one endpoint, `protocol`).
fn one_cluster(listen: &str, endpoint: &str, protocol: &str) -> String {
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
            route: {{cluster: up, timeout: 10s}}
clusters:
  - name: up
    protocol: {protocol}
    endpoints: [{{address: "{endpoint}"}}]
"#
    )
}

async fn post(c: &Client, url: &str, body: &'static str) -> ferry_integration_tests::Resp {
    let req = Request::post(url).body(full(body)).expect("request");
    c.send(req)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:#}"))
}

#[tokio::test]
async fn http1_client_to_http2_upstream() {
    let b = Backend::builder("h2only").http2().start().await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http2")).await;
    let c = Client::h1();
    let r = post(&c, &format!("http://{listen}/p?x=1"), "payload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_11);
    let e = r.echo();
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, "/p?x=1");
    assert_eq!(e.body, "payload");
    // Several requests share one multiplexed upstream connection at most
    // a handful of times; they must all work.
    for _ in 0..5 {
        let r = c.get(&format!("http://{listen}/again")).await.expect("GET");
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn http2_client_to_http1_upstream() {
    let b = Backend::builder("h1only").http1().start().await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http1")).await;
    let c = Client::h2c();
    let r = post(&c, &format!("http://{listen}/p"), "h2 body").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2);
    let e = r.echo();
    assert_eq!(e.version, "HTTP/1.1");
    assert_eq!(e.body, "h2 body");
    // HTTP/1.1 needs a Host: it comes from :authority.
    assert_eq!(e.header("host"), Some(listen.as_str()));
}

#[tokio::test]
async fn http2_client_to_http2_upstream() {
    let b = Backend::builder("h2only").http2().start().await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http2")).await;
    let c = Client::h2c();
    // Concurrent streams on one downstream connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = format!("http://{listen}/s/{i}");
        tasks.push(tokio::spawn(async move { c.get(&url).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("task").expect("GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.version, Version::HTTP_2);
        let e = r.echo();
        assert_eq!(e.version, "HTTP/2.0");
        assert_eq!(e.path, format!("/s/{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_and_trailers_pass_through() {
    let g = GrpcHealth::start().await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_cluster(
        &listen.to_string(),
        &g.addr.to_string(),
        "http2",
    ))
    .await;
    let mut client = grpc_health_client(listen).await.expect("connect via proxy");
    for service in ["", "ferry.Test"] {
        let resp = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("Check({service:?}) failed: {s:?}"));
        assert_eq!(
            resp.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    // An error status only exists in the trailers (grpc-status: 5).
    let err = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service must fail");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(!err.message().is_empty(), "grpc-message lost: {err:?}");
}

#[tokio::test]
async fn websocket_upgrade_tunnels_bytes_both_ways() {
    let b = Backend::builder("ws").http1().start().await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_cluster(&listen.to_string(), &b.address(), "http1")).await;
    let mut s = TcpStream::connect(listen).await.expect("connect");
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write upgrade request");
    let (head, rest) = raw_read_head(&mut s).await.expect("response head");
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "expected 101, got:\n{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("x-backend: ws"), "{head}");
    assert!(rest.is_empty(), "no bytes before the client spoke");

    within(Duration::from_secs(10), "websocket echo", async {
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("read echo");
        assert_eq!(&buf, b"ping");

        // A bigger payload, written and read concurrently.
        let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let (mut rd, mut wr) = s.split();
        let expected = payload.clone();
        let write = async move {
            wr.write_all(&payload).await.expect("write payload");
            wr.shutdown().await.expect("half-close");
        };
        let read = async move {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.expect("read until close");
            got
        };
        let ((), got) = tokio::join!(write, read);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "tunnelled bytes differ");
    })
    .await;
}

#[tokio::test]
async fn expect_100_continue() {
    let b = Backend::builder("b").http1().start().await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_cluster(&listen.to_string(), &b.address(), "http1")).await;
    let mut s = TcpStream::connect(listen).await.expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write head");
    let (head, rest) = raw_read_head(&mut s).await.expect("interim response");
    assert!(
        head.starts_with("HTTP/1.1 100"),
        "expected 100 Continue before sending the body, got:\n{head}"
    );
    assert!(rest.is_empty());
    s.write_all(b"hello").await.expect("write body");
    let (head, mut rest) = raw_read_head(&mut s).await.expect("final response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .expect("content-length on the echo");
    within(Duration::from_secs(10), "reading the body", async {
        let mut buf = [0u8; 4096];
        while rest.len() < len {
            let n = s.read(&mut buf).await.expect("read body");
            assert!(n > 0, "closed before the body ended");
            rest.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let echo: serde_json::Value = serde_json::from_slice(&rest[..len]).expect("echo JSON");
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["body_len"], 5);
}

#[tokio::test]
async fn tcp_listener_proxies_raw_bytes() {
    let echo = TcpEcho::start().await;
    let listen = free_addr();
    let yaml = format!(
        r#"
listeners:
  - {{name: tcp, address: "{listen}", protocol: tcp, cluster: echo}}
clusters:
  - name: echo
    endpoints: [{{address: "{}"}}]
"#,
        echo.addr
    );
    let _proxy = Proxy::start(&yaml).await;
    within(Duration::from_secs(20), "tcp proxying", async {
        let mut conns = Vec::new();
        for c in 0..3u8 {
            conns.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(listen).await.expect("connect");
                // Not HTTP: bytes a HTTP parser would reject.
                let payload: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 256) as u8 ^ c).collect();
                let (mut rd, mut wr) = s.split();
                let expected = payload.clone();
                let write = async move {
                    wr.write_all(&payload).await.expect("write");
                    wr.shutdown().await.expect("half-close");
                };
                let read = async move {
                    let mut got = Vec::new();
                    rd.read_to_end(&mut got).await.expect("read to EOF");
                    got
                };
                let ((), got) = tokio::join!(write, read);
                assert_eq!(got.len(), expected.len(), "connection {c}");
                assert!(got == expected, "connection {c}: bytes differ");
            }));
        }
        for c in conns {
            c.await.expect("connection task");
        }
    })
    .await;
    assert_eq!(echo.connections(), 3);
}
