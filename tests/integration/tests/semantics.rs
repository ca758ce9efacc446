//! HTTP semantics a proxy owes both sides: forwarding headers, request
//! ids, hop-by-hop stripping in both directions, the errors it answers
//! itself (503 connect failure, 504 route timeout, 400 malformed input),
//! and name resolution for `strict_dns` clusters.

use std::time::Duration;

use ferry_integration_tests::{
    closed_port, free_addr, is_uuid_v4, raw_exchange, Backend, Client, Proxy,
};

/// Listener → `/` → cluster `up` (`endpoint`, `protocol`), route timeout.
fn one_cluster(listen: &str, endpoint: &str, protocol: &str, timeout: &str) -> String {
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
            route: {{cluster: up, timeout: {timeout}}}
clusters:
  - name: up
    protocol: {protocol}
    connect_timeout: 2s
    endpoints: [{{address: "{endpoint}"}}]
"#
    )
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).collect()
}

#[tokio::test]
async fn x_forwarded_for_and_proto() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http1", "5s")).await;
    for c in [Client::h1(), Client::h2c()] {
        let e = c
            .get(&format!("http://{listen}/"))
            .await
            .expect("GET")
            .echo();
        let xff = e.header_all("x-forwarded-for").join(",");
        assert_eq!(split_list(&xff), vec!["127.0.0.1"], "x-forwarded-for");
        assert_eq!(e.header("x-forwarded-proto"), Some("http"));

        let e = c
            .get_with(
                &format!("http://{listen}/"),
                &[("x-forwarded-for", "192.0.2.1")],
            )
            .await
            .expect("GET")
            .echo();
        let xff = e.header_all("x-forwarded-for").join(",");
        assert_eq!(
            split_list(&xff),
            vec!["192.0.2.1", "127.0.0.1"],
            "the client address is appended"
        );
    }
}

#[tokio::test]
async fn x_request_id_generated_or_kept() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http1", "5s")).await;
    let c = Client::h1();
    let url = format!("http://{listen}/");
    let first = c.get(&url).await.expect("GET").echo();
    let second = c.get(&url).await.expect("GET").echo();
    let id1 = first
        .header("x-request-id")
        .expect("x-request-id generated");
    let id2 = second
        .header("x-request-id")
        .expect("x-request-id generated");
    assert!(is_uuid_v4(id1), "not a UUID v4: {id1:?}");
    assert!(is_uuid_v4(id2), "not a UUID v4: {id2:?}");
    assert_ne!(id1, id2, "every request gets its own id");

    let kept = c
        .get_with(&url, &[("x-request-id", "client-chosen-42")])
        .await
        .expect("GET")
        .echo();
    assert_eq!(kept.header_all("x-request-id"), vec!["client-chosen-42"]);
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http1", "5s")).await;
    let r = Client::h1()
        .get_with(
            &format!("http://{listen}/"),
            &[
                ("connection", "keep-alive, X-Custom-Hop"),
                ("x-custom-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "gzip"),
                ("x-end-to-end", "1"),
            ],
        )
        .await
        .expect("GET");
    assert_eq!(r.status, 200);
    let e = r.echo();
    for h in ["x-custom-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!e.has_header(h), "{h} reached the backend: {:?}", e.headers);
    }
    let conn = e.header_all("connection").join(",").to_ascii_lowercase();
    assert!(
        !conn.contains("x-custom-hop"),
        "the client's Connection header was forwarded: {conn:?}"
    );
    assert_eq!(e.header("x-end-to-end"), Some("1"));
}

#[tokio::test]
async fn te_trailers_reaches_http2_upstreams() {
    let b = Backend::builder("h2").http2().start().await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http2", "5s")).await;
    let e = Client::h1()
        .get_with(&format!("http://{listen}/"), &[("te", "trailers")])
        .await
        .expect("GET")
        .echo();
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.header("te"), Some("trailers"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let b = Backend::builder("b").http1().start().await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http1", "5s")).await;
    let url = format!("http://{listen}/?hop=1&set=x-end-to-end:1");
    let r = Client::h1().get(&url).await.expect("GET over HTTP/1.1");
    assert_eq!(r.status, 200);
    for h in ["x-resp-hop", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            !r.headers.contains_key(h),
            "{h} reached the client: {:?}",
            r.headers
        );
    }
    let conn = r.header_all("connection").join(",").to_ascii_lowercase();
    assert!(
        !conn.contains("x-resp-hop"),
        "Connection forwarded: {conn:?}"
    );
    assert_eq!(r.header("x-end-to-end"), Some("1"));
    // HTTP/2 forbids connection-specific headers: an h2 client rejects a
    // response carrying one, so this only succeeds if they were stripped.
    let r = Client::h2c().get(&url).await.expect("GET over h2c");
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn upstream_connect_failure_is_503() {
    let listen = free_addr().to_string();
    let dead = format!("127.0.0.1:{}", closed_port());
    let _proxy = Proxy::start(&one_cluster(&listen, &dead, "http1", "5s")).await;
    for c in [Client::h1(), Client::h2c()] {
        let r = c.get(&format!("http://{listen}/")).await.expect("GET");
        assert_eq!(r.status, 503, "{}", r.text());
    }
}

#[tokio::test]
async fn route_timeout_is_504() {
    let b = Backend::builder("slow")
        .delay(Duration::from_secs(3))
        .start()
        .await;
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&one_cluster(&listen, &b.address(), "http1", "500ms")).await;
    let start = tokio::time::Instant::now();
    let r = Client::h1()
        .get(&format!("http://{listen}/"))
        .await
        .expect("GET");
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_millis(2500),
        "504 after {took:?}, timeout is 500ms"
    );
    // A fast request on the same route is unaffected.
    b.set_delay(Duration::ZERO);
    let r = Client::h1()
        .get(&format!("http://{listen}/"))
        .await
        .expect("GET");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn malformed_requests_are_400_and_never_forwarded() {
    let b = Backend::start("b").await;
    let listen = free_addr();
    let _proxy = Proxy::start(&one_cluster(
        &listen.to_string(),
        &b.address(),
        "http1",
        "5s",
    ))
    .await;
    let cases: &[(&str, &[u8])] = &[
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("bad method token", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "control byte in target",
            b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "space in header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
        ),
        (
            "control byte in header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX\x01Y: v\r\n\r\n",
        ),
        (
            "NUL in header value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        ),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        ),
        (
            "non-numeric content-length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "conflicting content-lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
    ];
    for (what, bytes) in cases {
        let out = raw_exchange(listen, bytes, Duration::from_secs(5)).await;
        let status_line = out.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with("HTTP/1.1 400") || status_line.starts_with("HTTP/1.0 400"),
            "{what}: expected 400, got {status_line:?}"
        );
    }
    assert_eq!(b.requests(), 0, "a malformed request reached the backend");
    // The listener still serves well-formed requests.
    let r = Client::h1()
        .get(&format!("http://{listen}/"))
        .await
        .expect("GET");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn strict_dns_resolves_localhost() {
    let b = Backend::start("dns").await;
    let listen = free_addr().to_string();
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
            route: {{cluster: named}}
clusters:
  - name: named
    type: strict_dns
    endpoints: [{{address: "localhost:{}"}}]
"#,
        b.addr.port()
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1_no_pool();
    // Resolution may complete just after readiness: allow it to settle,
    // then every request must succeed.
    ferry_integration_tests::eventually!(Duration::from_secs(10), "localhost resolves", {
        c.get(&format!("http://{listen}/"))
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
    for i in 0..10 {
        let r = c.get(&format!("http://{listen}/{i}")).await.expect("GET");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.backend(), Some("dns"));
    }
}
