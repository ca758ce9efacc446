//! The harness checked against itself, without the proxy: each behaviour
//! the proxy tests rely on (hop-by-hop headers, upgrades, streaming,
//! gRPC, TLS) really happens when a client talks to a backend directly.
//! If one of these fails, a proxy test passing would prove nothing.

use std::time::Duration;

use ferry_integration_tests::{
    empty, generated, grpc_health_client, raw_read_head, Backend, Client, GrpcHealth, Pki, TcpEcho,
    TestDir, TlsClient,
};
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn backend_echoes_request() {
    let b = Backend::start("a").await;
    let c = Client::h1();
    let r = c
        .get_with(
            &format!("http://{}/x/y?z=1", b.addr),
            &[("x-test", "1"), ("host", "example.com")],
        )
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), Some("a"));
    let e = r.echo();
    assert_eq!(e.path, "/x/y?z=1");
    assert_eq!(e.method, "GET");
    assert_eq!(e.version, "HTTP/1.1");
    assert_eq!(e.header("x-test"), Some("1"));
    assert_eq!(e.header("host"), Some("example.com"));
    assert_eq!(b.requests(), 1);

    let h2 = Client::h2c()
        .get(&format!("http://{}/", b.addr))
        .await
        .expect("h2c request");
    assert_eq!(h2.echo().version, "HTTP/2.0");
}

#[tokio::test]
async fn backend_status_set_and_hop_headers() {
    let b = Backend::start("a").await;
    let r = Client::h1()
        .get(&format!(
            "http://{}/?status=418&set=x-one:1&set=x-two:2&hop=1",
            b.addr
        ))
        .await
        .expect("request");
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-one"), Some("1"));
    assert_eq!(r.header("x-two"), Some("2"));
    for h in [
        "connection",
        "x-resp-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(r.headers.contains_key(h), "{h} missing: {:?}", r.headers);
    }
}

#[tokio::test]
async fn backend_counts_upload_and_streams_download() {
    let b = Backend::start("a").await;
    let c = Client::h1();
    let req = Request::post(format!("http://{}/up", b.addr))
        .body(generated(10 * 1024 * 1024 + 7))
        .expect("request");
    let r = c.send(req).await.expect("upload");
    assert_eq!(r.echo().body_len, 10 * 1024 * 1024 + 7);

    let req = Request::get(format!("http://{}/?bytes=5000001", b.addr))
        .body(empty())
        .expect("request");
    let resp = c.send_streaming(req).await.expect("download");
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.expect("frame").data_ref() {
            n += d.len();
        }
    }
    assert_eq!(n, 5_000_001);
}

#[tokio::test]
async fn backend_upgrade_echo_and_expect_continue() {
    let b = Backend::start("ws").await;
    let mut s = TcpStream::connect(b.addr).await.expect("connect");
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let (head, rest) = raw_read_head(&mut s).await.expect("101 head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty());
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");

    let mut s = TcpStream::connect(b.addr).await.expect("connect");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let (head, _) = raw_read_head(&mut s).await.expect("100 head");
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").await.expect("write body");
    let (head, _) = raw_read_head(&mut s).await.expect("final head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn tls_backend_and_client() {
    let dir = TestDir::new("harness-tls");
    let pki = Pki::new(&dir, "t");
    let b = Backend::builder("tls")
        .tls(pki.server_config(&["h2", "http/1.1"]))
        .start()
        .await;
    for (alpn, version) in [("h2", "HTTP/2.0"), ("http/1.1", "HTTP/1.1")] {
        let r = TlsClient::new(pki.client_config(&[alpn]))
            .get(b.addr, "localhost", "/")
            .await
            .expect("TLS request");
        assert_eq!(r.alpn.as_deref(), Some(alpn));
        let e = r.resp.echo();
        assert_eq!(e.version, version);
        assert!(e.tls);
        assert_eq!(e.sni.as_deref(), Some("localhost"));
    }
    let other = Pki::new(&dir, "other");
    let err = TlsClient::new(other.client_config(&["h2"]))
        .get(b.addr, "localhost", "/")
        .await;
    assert!(err.is_err(), "a client with the wrong CA must fail");
}

#[tokio::test]
async fn grpc_health_direct() {
    let g = GrpcHealth::start().await;
    let mut client = grpc_health_client(g.addr).await.expect("connect");
    let ok = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ferry.Test".into(),
        })
        .await
        .expect("check");
    assert_eq!(ok.into_inner().status, 1);
    let err = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn tcp_echo_direct() {
    let e = TcpEcho::start().await;
    let mut s = TcpStream::connect(e.addr).await.expect("connect");
    s.write_all(b"hello").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(out, b"hello");
}
