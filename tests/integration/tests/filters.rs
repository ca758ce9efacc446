//! The built-in HTTP filters end to end through the proxy (issue 3,
//! filters/README.md): fault (abort, delay, header gate, client control,
//! max_active_faults), local_ratelimit (429 + `x-ratelimit-*`, per-route
//! override and disable, keyed buckets, refill), header_mutation (with its
//! variables), cors (preflight and actual requests, per virtual host),
//! rbac (allow/deny by CIDR, path, method, header → 403) and buffer (413
//! over the limit with nothing sent upstream; a buffered body goes upstream
//! whole, with content-length).

use std::net::SocketAddr;
use std::time::Duration;

use ferry_integration_tests::{
    eventually, five_sigma, free_addr, raw_read_head, Backend, Client, Proxy, Resp,
};
use http::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A listener with `filters` (YAML list items at 6 spaces, or empty) and
/// one virtual host `*` whose `routes` (YAML at 10 spaces) go to cluster
/// `up` = `b`. `vhost_extra` adds lines to the virtual host (8 spaces).
fn config(listen: &str, b: &Backend, filters: &str, vhost_extra: &str, routes: &str) -> String {
    format!(
        r#"
listeners:
  - name: http
    address: "{listen}"
    route_config: r
    http_filters:
{filters}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
{vhost_extra}
        routes:
{routes}
clusters:
  - name: up
    endpoints: [{{address: "{addr}"}}]
"#,
        addr = b.address()
    )
}

const DEFAULT_ROUTE: &str = "          - match: {prefix: /}\n            route: {cluster: up}";

async fn start(b: &Backend, filters: &str, vhost_extra: &str, routes: &str) -> (Proxy, String) {
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&config(&listen, b, filters, vhost_extra, routes)).await;
    (proxy, format!("http://{listen}"))
}

async fn get(c: &Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    c.get_with(url, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
}

async fn send(c: &Client, method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(ferry_integration_tests::empty())
        .expect("build request");
    c.send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:#}"))
}

// === fault ===

#[tokio::test]
async fn fault_abort_answers_locally() {
    let b = Backend::start("b").await;
    let filters =
        "      - name: fault\n        config: {abort: {http_status: 418, percentage: 100}}";
    let routes =
        "          - match: {prefix: /spared}\n            route: {cluster: up}\n            \
                  per_filter_config: {fault: {disabled: true}}\n"
            .to_string()
            + DEFAULT_ROUTE;
    let (_p, base) = start(&b, filters, "", &routes).await;
    let c = Client::h1();
    for _ in 0..5 {
        let r = get(&c, &format!("{base}/"), &[]).await;
        assert_eq!(r.status, 418);
        assert_eq!(r.text(), "fault filter abort");
    }
    assert_eq!(
        b.requests(),
        0,
        "an aborted request never reaches the upstream"
    );
    let r = get(&c, &format!("{base}/spared"), &[]).await;
    assert_eq!(r.status, 200, "fault disabled on this route");
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn fault_abort_percentage_is_honoured() {
    let b = Backend::start("b").await;
    let filters =
        "      - name: fault\n        config: {abort: {http_status: 503, percentage: 30}}";
    let (_p, base) = start(&b, filters, "", DEFAULT_ROUTE).await;
    let c = Client::h1();
    let n = 600;
    let mut aborted = 0usize;
    for _ in 0..n {
        let r = get(&c, &format!("{base}/"), &[]).await;
        match r.status.as_u16() {
            503 => {
                assert_eq!(r.text(), "fault filter abort");
                aborted += 1;
            }
            200 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    let expect = n as f64 * 0.3;
    assert!(
        (aborted as f64 - expect).abs() <= five_sigma(n, 0.3),
        "30% of {n}: aborted {aborted}"
    );
    assert_eq!(b.requests() as usize, n - aborted);
}

#[tokio::test]
async fn fault_delay_holds_the_request() {
    let b = Backend::start("b").await;
    let filters =
        "      - name: fault\n        config: {delay: {fixed_delay: 300ms, percentage: 100}}";
    let (_p, base) = start(&b, filters, "", DEFAULT_ROUTE).await;
    let c = Client::h1();
    let t = Instant::now();
    let r = get(&c, &format!("{base}/"), &[]).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "a delayed request is still served");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "fixed_delay 300ms took {took:?}"
    );
}

#[tokio::test]
async fn fault_header_gate_and_client_control() {
    let b = Backend::start("b").await;
    let filters = r#"      - name: fault
        config:
          abort: {http_status: 503, percentage: 100}
          headers: [{name: x-fault, exact: "on"}]
          allow_header_control: true"#;
    let (_p, base) = start(&b, filters, "", DEFAULT_ROUTE).await;
    let c = Client::h1();
    let url = format!("{base}/");
    assert_eq!(get(&c, &url, &[]).await.status, 200, "no header: no fault");
    assert_eq!(get(&c, &url, &[("x-fault", "off")]).await.status, 200);
    let r = get(&c, &url, &[("x-fault", "on")]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (503, "fault filter abort")
    );

    // The client picks the status (and a delay) when allowed.
    let r = get(
        &c,
        &url,
        &[("x-fault", "on"), ("x-envoy-fault-abort-request", "429")],
    )
    .await;
    assert_eq!(
        r.status, 429,
        "x-envoy-fault-abort-request replaces the status"
    );
    let t = Instant::now();
    let r = get(
        &c,
        &url,
        &[
            ("x-fault", "on"),
            ("x-envoy-fault-abort-request", "abc"),
            ("x-envoy-fault-delay-request", "250"),
        ],
    )
    .await;
    let took = t.elapsed();
    assert_eq!(r.status, 503, "an invalid client status is ignored");
    assert!(took >= Duration::from_millis(240), "client delay: {took:?}");
    assert_eq!(b.requests(), 2, "only the ungated requests reached it");
}

#[tokio::test]
async fn fault_max_active_faults_caps_concurrent_faults() {
    let b = Backend::start("b").await;
    let filters =
        "      - name: fault\n        config: {delay: {fixed_delay: 600ms, percentage: 100}, \
                   max_active_faults: 1}";
    let (_p, base) = start(&b, filters, "", DEFAULT_ROUTE).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = format!("{base}/");
        tasks.push(tokio::spawn(async move {
            let c = Client::h1_no_pool();
            let t = Instant::now();
            let r = get(&c, &url, &[]).await;
            (r.status.as_u16(), t.elapsed())
        }));
    }
    let mut delayed = 0;
    for t in tasks {
        let (status, took) = t.await.expect("task");
        assert_eq!(status, 200);
        if took >= Duration::from_millis(550) {
            delayed += 1;
        }
    }
    assert_eq!(
        delayed, 1,
        "max_active_faults 1: one of 3 concurrent delayed"
    );
}

// === local_ratelimit ===

#[tokio::test]
async fn local_ratelimit_answers_429_with_ratelimit_headers() {
    let b = Backend::start("b").await;
    let filters = "      - name: local_ratelimit\n        config: {token_bucket: {max_tokens: 3, \
                   tokens_per_fill: 3, fill_interval: 60s}, enable_x_ratelimit_headers: true}";
    let (_p, base) = start(&b, filters, "", DEFAULT_ROUTE).await;
    let c = Client::h1();
    let url = format!("{base}/");
    for left in ["2", "1", "0"] {
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left));
    }
    let r = get(&c, &url, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "local_rate_limited");
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = r
        .header("x-ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("x-ratelimit-reset: {:?}", r.headers));
    assert!((1..=60).contains(&reset), "reset {reset}");
    assert_eq!(b.requests(), 3, "limited requests never reach the upstream");
}

#[tokio::test]
async fn local_ratelimit_per_route_override_and_disable() {
    let b = Backend::start("b").await;
    let filters = "      - name: local_ratelimit\n        config: {token_bucket: {max_tokens: 2, \
                   tokens_per_fill: 2, fill_interval: 60s}}";
    let routes = r#"          - match: {prefix: /free}
            route: {cluster: up}
            per_filter_config: {local_ratelimit: {disabled: true}}
          - match: {prefix: /tight}
            route: {cluster: up}
            per_filter_config:
              local_ratelimit: {config: {token_bucket: {max_tokens: 1, fill_interval: 60s}}}
          - match: {prefix: /}
            route: {cluster: up}"#;
    let (_p, base) = start(&b, filters, "", routes).await;
    let c = Client::h1();
    for i in 0..10 {
        let r = get(&c, &format!("{base}/free"), &[]).await;
        assert_eq!(r.status, 200, "/free request {i}: the filter is off there");
    }
    assert_eq!(get(&c, &format!("{base}/tight"), &[]).await.status, 200);
    assert_eq!(get(&c, &format!("{base}/tight"), &[]).await.status, 429);
    // The route's own bucket did not take the listener's tokens.
    assert_eq!(get(&c, &format!("{base}/"), &[]).await.status, 200);
    assert_eq!(get(&c, &format!("{base}/"), &[]).await.status, 200);
    assert_eq!(get(&c, &format!("{base}/"), &[]).await.status, 429);
    assert_eq!(get(&c, &format!("{base}/tight"), &[]).await.status, 429);
}

#[tokio::test]
async fn local_ratelimit_keyed_by_header_and_refilled() {
    let b = Backend::start("b").await;
    let filters = "      - name: local_ratelimit\n        config: {token_bucket: {max_tokens: 1, \
                   tokens_per_fill: 1, fill_interval: 60s}, key: {request_header: x-user}}";
    // /refill: its own unkeyed bucket refilled every 300 ms.
    let routes =
        "          - match: {prefix: /refill}\n            route: {cluster: up}\n            \
                  per_filter_config: {local_ratelimit: {config: {token_bucket: \
                  {max_tokens: 1, tokens_per_fill: 1, fill_interval: 300ms}}}}\n"
            .to_string()
            + DEFAULT_ROUTE;
    let (_p, base) = start(&b, filters, "", &routes).await;
    let c = Client::h1();
    let url = format!("{base}/");
    // One bucket per user; requests without the header share one more.
    let alice = [("x-user", "alice")];
    let bob = [("x-user", "bob")];
    let mut statuses = Vec::new();
    for h in [&alice[..], &alice, &bob, &bob, &[], &[]] {
        statuses.push(get(&c, &url, h).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 429, 200, 429, 200, 429],
        "a bucket per x-user value (alice, alice, bob, bob, none, none)"
    );

    // The bucket refills at the next fill interval.
    let refill_url = format!("{base}/refill");
    eventually!(Duration::from_secs(2), "the /refill bucket runs dry", {
        get(&c, &refill_url, &[]).await.status == 429
    });
    let dry = Instant::now();
    eventually!(Duration::from_secs(2), "the /refill bucket refills", {
        get(&c, &refill_url, &[]).await.status == 200
    });
    assert!(
        dry.elapsed() < Duration::from_millis(700),
        "fill_interval 300ms, refilled after {:?}",
        dry.elapsed()
    );
}

// === header_mutation ===

#[tokio::test]
async fn header_mutation_with_variables() {
    let b = Backend::start("b").await;
    let filters = r#"      - name: header_mutation
        config:
          request:
            remove: [x-secret]
            set:
              - {name: x-req-id, value: "%REQ_ID%"}
              - {name: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}
              - {name: x-client-ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
              - {name: x-proto, value: "%PROTOCOL%"}
            append: [{name: x-multi, value: two}]
            add: [{name: x-added, value: proxy}]
          response:
            remove: [x-drop]
            set: [{name: x-upstream, value: "%UPSTREAM_HOST%"}, {name: x-pct, value: "100%%"}]"#;
    let routes =
        "          - match: {path: /local}\n            direct_response: {status: 200, body: hi}\n"
            .to_string()
            + DEFAULT_ROUTE;
    let (_p, base) = start(&b, filters, "", &routes).await;
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("listen addr");

    // Raw HTTP/1.1, so the client's own address is known.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let me = s.local_addr().expect("local_addr");
    s.write_all(
        b"GET /?set=x-drop:1 HTTP/1.1\r\nhost: x\r\nx-request-id: rid-42\r\nx-secret: s\r\n\
          x-multi: one\r\nx-added: client\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let (head, rest) = raw_read_head(&mut s).await.expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("x-upstream: {}\r\n", b.addr)),
        "%UPSTREAM_HOST% on the response: {head}"
    );
    assert!(
        lower.contains("x-pct: 100%\r\n"),
        "%% is a literal %: {head}"
    );
    assert!(!lower.contains("x-drop:"), "response remove: {head}");
    let mut body = rest;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let e: ferry_integration_tests::Echo = serde_json::from_slice(&body)
        .unwrap_or_else(|err| panic!("not an echo ({err}): {}", String::from_utf8_lossy(&body)));
    assert_eq!(e.header("x-req-id"), Some("rid-42"), "%REQ_ID%");
    assert_eq!(
        e.header("x-client"),
        Some(me.to_string().as_str()),
        "client ip:port"
    );
    assert_eq!(e.header("x-client-ip"), Some("127.0.0.1"));
    assert_eq!(e.header("x-proto"), Some("HTTP/1.1"));
    assert!(!e.has_header("x-secret"), "request remove");
    assert_eq!(e.header_all("x-multi"), vec!["one", "two"], "append");
    assert_eq!(
        e.header_all("x-added"),
        vec!["client"],
        "add only when absent"
    );

    // A generated request id is the one forwarded; HTTP/2 is named as such.
    let r = get(&Client::h2c(), &format!("{base}/"), &[]).await;
    let e = r.echo();
    assert_eq!(e.header("x-req-id"), e.header("x-request-id"));
    assert!(e.header("x-req-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(e.header("x-proto"), Some("HTTP/2"));
    assert_eq!(e.header_all("x-added"), vec!["proxy"]);

    // On a local reply there is no upstream: the header is not added.
    let r = get(&Client::h1(), &format!("{base}/local"), &[]).await;
    assert_eq!(r.text(), "hi");
    assert!(r.header("x-upstream").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("x-pct"), Some("100%"));
}

// === cors ===

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn cors_preflight_and_actual_requests_per_virtual_host() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let yaml = format!(
        r#"
listeners:
  - name: http
    address: "{listen}"
    route_config: r
    http_filters:
      - name: cors
        disabled: true
        config:
          allow_origin_string_match: [{{exact: "{APP}"}}]
          allow_methods: "GET, POST"
          allow_headers: "x-custom"
          expose_headers: "x-backend"
          max_age: "600"
          allow_credentials: true
      - name: local_ratelimit
        config: {{token_bucket: {{max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}}}}
routes:
  - name: r
    virtual_hosts:
      - name: plain
        domains: ["plain.test"]
        per_filter_config: {{local_ratelimit: {{disabled: true}}}}
        routes:
          - match: {{prefix: /}}
            route: {{cluster: up}}
      - name: app
        domains: ["*"]
        per_filter_config: {{cors: {{}}}}
        routes:
          - match: {{prefix: /}}
            route: {{cluster: up}}
clusters:
  - name: up
    endpoints: [{{address: "{addr}"}}]
"#,
        addr = b.address()
    );
    let _p = Proxy::start(&yaml).await;
    let url = format!("http://{listen}/api");
    let c = Client::h1();
    let preflight = [
        ("origin", APP),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-custom"),
    ];

    // Preflight from the allowed origin: answered by the proxy.
    let r = send(&c, "OPTIONS", &url, &preflight).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-custom"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(b.requests(), 0, "a preflight is answered by the proxy");

    // From another origin: forwarded (forward_not_matching_preflights).
    let r = send(
        &c,
        "OPTIONS",
        &url,
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(r.backend(), Some("b"), "forwarded upstream");
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(b.requests(), 1);

    // An actual request from the allowed origin.
    let r = get(&c, &url, &[("origin", APP)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-backend"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // No Origin, or another one: no CORS headers.
    let r = get(&c, &url, &[]).await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = get(&c, &url, &[("origin", "https://evil.example")]).await;
    assert!(r.header("access-control-allow-origin").is_none());

    // A local reply of a later filter (429) still gets the CORS headers.
    let r = get(&c, &url, &[("origin", APP)]).await;
    assert_eq!(r.status, 429, "the 4-token bucket is empty now");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(APP),
        "CORS applies to a 429 as to any response"
    );

    // The virtual host without cors: preflights go upstream, untouched.
    let before = b.requests();
    let r = send(
        &c,
        "OPTIONS",
        &url,
        &[
            ("host", "plain.test"),
            ("origin", APP),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(r.backend(), Some("b"));
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(b.requests(), before + 1);
}

// === rbac ===

/// (method, path, request headers, expected status).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);

#[tokio::test]
async fn rbac_allow_policies_by_path_method_header_and_cidr() {
    let b = Backend::start("b").await;
    let filters = r#"      - name: rbac
        config:
          action: ALLOW
          policies:
            public:
              permissions: [{url_path: {path: {prefix: /public/}}}]
              principals: [{any: true}]
            token-get:
              permissions:
                - and_rules:
                    rules:
                      - method: GET
                      - header: {name: x-token, exact: let-me-in}
              principals: [{source_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
            far-away:
              permissions: [{url_path: {path: {prefix: /intranet}}}]
              principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]"#;
    let routes =
        "          - match: {prefix: /open}\n            route: {cluster: up}\n            \
                  per_filter_config: {rbac: {disabled: true}}\n"
            .to_string()
            + DEFAULT_ROUTE;
    let (_p, base) = start(&b, filters, "", &routes).await;
    let c = Client::h1();
    let token = [("x-token", "let-me-in")];
    let cases: &[Case] = &[
        ("GET", "/public/x", &[], 200),
        ("POST", "/public/x", &[], 200),
        ("GET", "/private", &[], 403),
        ("GET", "/private", &token, 200),
        ("POST", "/private", &token, 403),
        ("GET", "/private", &[("x-token", "wrong")], 403),
        // 127.0.0.1 is not in 10.0.0.0/8.
        ("GET", "/intranet", &[], 403),
        ("DELETE", "/open/anything", &[], 200),
    ];
    let mut allowed = 0;
    for (method, path, headers, want) in cases {
        let r = send(&c, method, &format!("{base}{path}"), headers).await;
        assert_eq!(r.status, *want, "{method} {path} {headers:?}: {}", r.text());
        if *want == 403 {
            assert_eq!(r.text(), "RBAC: access denied");
        } else {
            allowed += 1;
        }
    }
    assert_eq!(
        b.requests(),
        allowed,
        "denied requests never reach the upstream"
    );
}

#[tokio::test]
async fn rbac_deny_policy() {
    let b = Backend::start("b").await;
    let filters = r#"      - name: rbac
        config:
          action: DENY
          policies:
            no-local-admin:
              permissions: [{url_path: {path: {prefix: /admin}}}]
              principals: [{source_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]
            no-deletes-from-10:
              permissions: [{method: DELETE}]
              principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
            no-debug-header:
              permissions: [{header: {name: x-debug, present: true}}]
              principals: [{any: true}]"#;
    let (_p, base) = start(&b, filters, "", DEFAULT_ROUTE).await;
    let c = Client::h1();
    let cases: &[Case] = &[
        ("GET", "/admin/users", &[], 403),
        ("GET", "/users", &[], 200),
        // The DELETE rule is for 10/8 only.
        ("DELETE", "/users", &[], 200),
        ("GET", "/users", &[("x-debug", "1")], 403),
    ];
    for (method, path, headers, want) in cases {
        let r = send(&c, method, &format!("{base}{path}"), headers).await;
        assert_eq!(r.status, *want, "{method} {path} {headers:?}: {}", r.text());
    }
    assert_eq!(b.requests(), 2);
}

// === buffer ===

/// Sends `raw` (which asks for `connection: close`) on a new connection;
/// returns the response head and body.
async fn raw_request(base: &str, raw: &[u8]) -> (String, Vec<u8>) {
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("listen addr");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let (head, mut body) = raw_read_head(&mut s).await.expect("response head");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (head, body)
}

const BUFFER: &str = "      - name: buffer\n        config: {max_request_bytes: 16}";

/// A chunked POST with one chunk per item of `chunks`.
fn chunked_post(path: &str, chunks: &[&str]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for c in chunks {
        raw.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    raw.push_str("0\r\n\r\n");
    raw.into_bytes()
}

fn echo_of(body: &[u8]) -> ferry_integration_tests::Echo {
    serde_json::from_slice(body)
        .unwrap_or_else(|err| panic!("not an echo ({err}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn buffer_over_the_limit_gets_413_and_the_upstream_sees_nothing() {
    let b = Backend::start("b").await;
    let (_p, base) = start(&b, BUFFER, "", DEFAULT_ROUTE).await;

    // Chunked: refused once the body crosses 16 bytes.
    let raw = chunked_post("/big", &["0123456789", "0123456789", "0123456789"]);
    let (head, body) = raw_request(&base, &raw).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(body, b"Payload Too Large");

    // A declared length over the limit, over HTTP/1.1 and HTTP/2.
    for c in [Client::h1(), Client::h2c()] {
        let req = Request::post(format!("{base}/big"))
            .body(ferry_integration_tests::full("x".repeat(17)))
            .expect("request");
        let r = c.send(req).await.expect("POST");
        assert_eq!(r.status, 413, "{:?}", r.version);
    }
    assert_eq!(b.requests(), 0, "no request reached the upstream");

    // Exactly the limit passes.
    let req = Request::post(format!("{base}/ok"))
        .body(ferry_integration_tests::full("y".repeat(16)))
        .expect("request");
    let r = Client::h1().send(req).await.expect("POST");
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().body_len, 16);
}

#[tokio::test]
async fn buffer_sends_a_chunked_body_upstream_whole_with_content_length() {
    let b = Backend::start("b").await;
    let routes =
        "          - match: {prefix: /stream}\n            route: {cluster: up}\n            \
                  per_filter_config: {buffer: {disabled: true}}\n"
            .to_string()
            + DEFAULT_ROUTE;
    let (_p, base) = start(&b, BUFFER, "", &routes).await;

    let raw = chunked_post("/buffered", &["hello ", "there ", "you"]);
    let (head, body) = raw_request(&base, &raw).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let e = echo_of(&body);
    assert_eq!(e.body, "hello there you");
    assert_eq!(e.header("content-length"), Some("15"));
    assert!(!e.has_header("transfer-encoding"), "{:?}", e.headers);

    // Where a route turns the filter off, the body streams through as it
    // came, even over the limit.
    let raw = chunked_post("/stream", &["0123456789", "0123456789"]);
    let (head, body) = raw_request(&base, &raw).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let e = echo_of(&body);
    assert_eq!(e.body_len, 20);
    assert_eq!(e.header("transfer-encoding"), Some("chunked"));
    assert!(!e.has_header("content-length"));
    assert_eq!(b.requests(), 2);
}
