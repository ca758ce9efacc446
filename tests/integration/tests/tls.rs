//! TLS: termination on a listener (ALPN h2 and http/1.1 on one port) and
//! origination to TLS upstreams (SNI, a private CA, HTTP/1.1 and HTTP/2),
//! and a wrong CA failing closed with 503.

use ferry_integration_tests::{free_addr, Backend, Client, Pki, Proxy, TestDir, TlsClient};
use http::Version;

#[tokio::test]
async fn termination_serves_h2_and_http1_by_alpn() {
    let dir = TestDir::new("tls-term");
    let pki = Pki::new(&dir, "listener");
    let b = Backend::start("plain").await;
    let listen = free_addr();
    let yaml = format!(
        r#"
listeners:
  - name: https
    address: "{listen}"
    route_config: r
    tls:
      cert_chain: "{}"
      private_key: "{}"
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: plain}}
clusters:
  - name: plain
    endpoints: [{{address: "{}"}}]
"#,
        pki.cert_file, pki.key_file, b.addr
    );
    let _proxy = Proxy::start(&yaml).await;
    let cases: &[(&[&str], Option<&str>, Version)] = &[
        (&["h2"], Some("h2"), Version::HTTP_2),
        (&["http/1.1"], Some("http/1.1"), Version::HTTP_11),
        (&["h2", "http/1.1"], Some("h2"), Version::HTTP_2),
        (&[], None, Version::HTTP_11),
    ];
    for (offer, alpn, version) in cases {
        let r = TlsClient::new(pki.client_config(offer))
            .get(listen, "localhost", "/secure")
            .await
            .unwrap_or_else(|e| panic!("TLS GET with ALPN {offer:?}: {e:#}"));
        assert_eq!(r.alpn.as_deref(), *alpn, "negotiated ALPN for {offer:?}");
        assert_eq!(r.resp.version, *version, "ALPN {offer:?}");
        assert_eq!(r.resp.status, 200, "ALPN {offer:?}: {}", r.resp.text());
        let e = r.resp.echo();
        assert_eq!(e.path, "/secure");
        assert_eq!(e.header("x-forwarded-proto"), Some("https"));
        assert!(!e.tls, "the proxy terminated TLS; the backend is plaintext");
    }
    // Plaintext to a TLS listener does not reach the backend.
    let plain = Client::h1().get(&format!("http://{listen}/")).await;
    assert!(
        plain.map(|r| r.status != 200).unwrap_or(true),
        "plaintext HTTP must not be served on a TLS listener"
    );
}

async fn origination(protocol: &str, trust: &str) -> (Backend, ferry_integration_tests::Resp) {
    let dir = TestDir::new("tls-orig");
    let pki = Pki::new(&dir, "backend");
    let other = Pki::new(&dir, "other");
    let b = Backend::builder("tls")
        .tls(pki.server_config(&["h2", "http/1.1"]))
        .start()
        .await;
    let ca = if trust == "right" {
        &pki.ca_file
    } else {
        &other.ca_file
    };
    let listen = free_addr();
    let yaml = format!(
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
            route: {{cluster: tls, timeout: 10s}}
clusters:
  - name: tls
    protocol: {protocol}
    endpoints: [{{address: "{}"}}]
    tls: {{sni: localhost, ca_file: "{ca}"}}
"#,
        b.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let r = Client::h1()
        .get(&format!("http://{listen}/o"))
        .await
        .expect("request through the proxy");
    if r.status != 200 && trust == "right" {
        panic!(
            "TLS origination failed: {} {}\n{}",
            r.status,
            r.text(),
            proxy.logs()
        );
    }
    (b, r)
}

#[tokio::test]
async fn origination_http2_with_sni_and_private_ca() {
    let (_b, r) = origination("http2", "right").await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert!(e.tls, "the upstream hop must be TLS");
    assert_eq!(e.sni.as_deref(), Some("localhost"));
    assert_eq!(e.alpn.as_deref(), Some("h2"), "h2 over TLS needs ALPN h2");
    assert_eq!(e.version, "HTTP/2.0");
}

#[tokio::test]
async fn origination_http1_with_sni_and_private_ca() {
    let (_b, r) = origination("http1", "right").await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert!(e.tls);
    assert_eq!(e.sni.as_deref(), Some("localhost"));
    assert_ne!(e.alpn.as_deref(), Some("h2"));
    assert_eq!(e.version, "HTTP/1.1");
}

#[tokio::test]
async fn origination_with_wrong_ca_is_503() {
    for protocol in ["http1", "http2"] {
        let (b, r) = origination(protocol, "wrong").await;
        assert_eq!(r.status, 503, "{protocol}: {}", r.text());
        assert_eq!(b.requests(), 0, "no request may pass an unverified hop");
    }
}
