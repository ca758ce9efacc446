//! Route selection and route actions: virtual-host domains, path, header
//! and query matchers, redirects, direct responses, rewrites and header
//! mutation, and 404 when nothing matches.

use ferry_integration_tests::{clusters_yaml, free_addr, Backend, Client, Proxy, Resp};

async fn get(c: &Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    c.get_with(url, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
}

#[tokio::test]
async fn host_matching_prefers_exact_then_suffix_then_prefix_then_any() {
    let names = ["exact", "suffix", "longsuffix", "prefix", "any"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let listen = free_addr();
    // Listed from least to most specific: file order must not decide.
    let yaml = format!(
        r#"
listeners:
  - name: http
    address: "{listen}"
    route_config: r
routes:
  - name: r
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: any}}}}]
      - name: prefix
        domains: ["api.*"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: prefix}}}}]
      - name: suffix
        domains: ["*.example.com"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: suffix}}}}]
      - name: longsuffix
        domains: ["*.b.example.com"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: longsuffix}}}}]
      - name: exact
        domains: ["api.example.com", "other.test"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: exact}}}}]
{}"#,
        clusters_yaml(&refs)
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    let url = format!("http://{listen}/");
    for (host, want) in [
        ("api.example.com", "exact"),
        ("API.Example.COM", "exact"),
        ("other.test", "exact"),
        ("www.example.com", "suffix"),
        ("x.b.example.com", "longsuffix"),
        ("api.other.org", "prefix"),
        ("unknown.org", "any"),
        ("example.com", "any"),
    ] {
        let r = get(&c, &url, &[("host", host)]).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
        assert_eq!(r.backend(), Some(want), "Host {host}");
    }
}

#[tokio::test]
async fn path_matching_exact_regex_prefix_and_case() {
    let names = ["exact", "regex", "prefix", "ci", "fallback"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
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
          - match: {{path: /exact}}
            route: {{cluster: exact}}
          - match: {{regex: "/users/[0-9]+"}}
            route: {{cluster: regex}}
          - match: {{prefix: /api}}
            route: {{cluster: prefix}}
          - match: {{prefix: /CI/, case_sensitive: false}}
            route: {{cluster: ci}}
          - match: {{prefix: /}}
            route: {{cluster: fallback}}
{}"#,
        clusters_yaml(&refs)
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    for (path, want) in [
        ("/exact", "exact"),
        ("/exact?x=1", "exact"),
        ("/exact/more", "fallback"),
        ("/exactly", "fallback"),
        ("/Exact", "fallback"),
        ("/users/42", "regex"),
        ("/users/42?x=y", "regex"),
        ("/users/abc", "fallback"),
        ("/users/42/posts", "fallback"),
        ("/api", "prefix"),
        ("/api/v1/things", "prefix"),
        ("/API/v1", "fallback"),
        ("/ci/x", "ci"),
        ("/Ci/X", "ci"),
        ("/other", "fallback"),
    ] {
        let r = get(&c, &format!("http://{listen}{path}"), &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.backend(), Some(want), "{path}");
        assert_eq!(r.echo().path, path, "path must reach the backend unchanged");
    }
}

#[tokio::test]
async fn header_matching_exact_present_regex_inverted() {
    let names = ["canary", "debug", "regex", "inverted", "fallback"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
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
          - match: {{prefix: /, headers: [{{name: x-env, exact: canary}}]}}
            route: {{cluster: canary}}
          - match: {{prefix: /, headers: [{{name: x-debug, present: true}}]}}
            route: {{cluster: debug}}
          - match: {{prefix: /, headers: [{{name: x-ver, regex: "v[0-9]+"}}]}}
            route: {{cluster: regex}}
          - match:
              prefix: /
              headers:
                - {{name: x-tier, present: true}}
                - {{name: x-tier, exact: gold, invert_match: true}}
            route: {{cluster: inverted}}
          - match: {{prefix: /}}
            route: {{cluster: fallback}}
{}"#,
        clusters_yaml(&refs)
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    let url = format!("http://{listen}/h");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("x-env", "canary")], "canary"),
        (&[("x-env", "prod")], "fallback"),
        (&[("x-debug", "1")], "debug"),
        (&[("x-ver", "v12")], "regex"),
        (&[("x-ver", "12")], "fallback"),
        (&[("x-tier", "silver")], "inverted"),
        (&[("x-tier", "gold")], "fallback"),
        (&[], "fallback"),
        // Order decides between two matching routes.
        (&[("x-env", "canary"), ("x-debug", "1")], "canary"),
    ];
    for (headers, want) in cases {
        let r = get(&c, &url, headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        assert_eq!(r.backend(), Some(*want), "headers {headers:?}");
    }
}

#[tokio::test]
async fn query_parameter_matching() {
    let names = ["qexact", "qregex", "qpresent", "fallback"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
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
          - match: {{prefix: /q, query_parameters: [{{name: debug, exact: "1"}}]}}
            route: {{cluster: qexact}}
          - match: {{prefix: /q, query_parameters: [{{name: user, regex: "[a-z]+"}}]}}
            route: {{cluster: qregex}}
          - match: {{prefix: /q, query_parameters: [{{name: flag, present: true}}]}}
            route: {{cluster: qpresent}}
          - match: {{prefix: /}}
            route: {{cluster: fallback}}
{}"#,
        clusters_yaml(&refs)
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    for (pq, want) in [
        ("/q?debug=1", "qexact"),
        ("/q?a=b&debug=1", "qexact"),
        ("/q?debug=2", "fallback"),
        ("/q?user=alice", "qregex"),
        ("/q?user=Alice1", "fallback"),
        ("/q?flag=x", "qpresent"),
        ("/q?flagx=1", "fallback"),
        ("/q", "fallback"),
        ("/other?debug=1", "fallback"),
    ] {
        let r = get(&c, &format!("http://{listen}{pq}"), &[]).await;
        assert_eq!(r.status, 200, "{pq}: {}", r.text());
        assert_eq!(r.backend(), Some(want), "{pq}");
    }
}

#[tokio::test]
async fn redirects() {
    let b = Backend::start("b").await;
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
          - match: {{path: /old}}
            redirect: {{path_redirect: /new, response_code: 302}}
          - match: {{prefix: /secure}}
            redirect: {{https_redirect: true}}
          - match: {{prefix: /docs/}}
            redirect: {{prefix_rewrite: /documentation/}}
          - match: {{prefix: /move}}
            redirect: {{host_redirect: new.example.com, strip_query: true, response_code: 308}}
          - match: {{prefix: /}}
            route: {{cluster: b}}
{}"#,
        clusters_yaml(&[&b])
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    for (pq, status, location) in [
        ("/old", 302, "http://example.com/new"),
        ("/secure/x?y=1", 301, "https://example.com/secure/x?y=1"),
        (
            "/docs/a/b?x=1",
            301,
            "http://example.com/documentation/a/b?x=1",
        ),
        ("/move/p?q=1", 308, "http://new.example.com/move/p"),
    ] {
        let r = get(
            &c,
            &format!("http://{listen}{pq}"),
            &[("host", "example.com")],
        )
        .await;
        assert_eq!(r.status.as_u16(), status, "{pq}: {}", r.text());
        assert_eq!(r.header("location"), Some(location), "{pq}");
    }
    assert_eq!(b.requests(), 0, "redirects must not reach the backend");
    // The catch-all still forwards.
    let r = get(&c, &format!("http://{listen}/plain"), &[]).await;
    assert_eq!(r.backend(), Some("b"));
}

#[tokio::test]
async fn direct_responses() {
    let b = Backend::start("b").await;
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
          - match: {{path: /hello}}
            direct_response: {{status: 200, body: "hello from ferry"}}
          - match: {{prefix: /gone}}
            direct_response: {{status: 410}}
          - match: {{prefix: /}}
            route: {{cluster: b}}
{}"#,
        clusters_yaml(&[&b])
    );
    let _proxy = Proxy::start(&yaml).await;
    for c in [Client::h1(), Client::h2c()] {
        let r = get(&c, &format!("http://{listen}/hello"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello from ferry");
        let r = get(&c, &format!("http://{listen}/gone/x"), &[]).await;
        assert_eq!(r.status, 410);
        assert!(r.body.is_empty(), "no body configured: {:?}", r.text());
    }
    assert_eq!(
        b.requests(),
        0,
        "direct responses must not reach the backend"
    );
}

#[tokio::test]
async fn prefix_rewrite() {
    let b = Backend::start("b").await;
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
          - match: {{prefix: /api/}}
            route: {{cluster: b, prefix_rewrite: /v2/}}
          - match: {{path: /exact}}
            route: {{cluster: b, prefix_rewrite: /replaced}}
          - match: {{regex: "/re/[a-z]+"}}
            route: {{cluster: b, prefix_rewrite: /regex-target}}
          - match: {{prefix: /strip/}}
            route: {{cluster: b, prefix_rewrite: /}}
          - match: {{prefix: /}}
            route: {{cluster: b}}
{}"#,
        clusters_yaml(&[&b])
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    for (sent, seen) in [
        ("/api/users?x=1", "/v2/users?x=1"),
        ("/api/", "/v2/"),
        ("/exact", "/replaced"),
        ("/exact?q=2", "/replaced?q=2"),
        ("/re/abc", "/regex-target"),
        ("/strip/a/b", "/a/b"),
        ("/plain/x", "/plain/x"),
    ] {
        let r = get(&c, &format!("http://{listen}{sent}"), &[]).await;
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        assert_eq!(r.echo().path, seen, "{sent} rewritten");
    }
}

#[tokio::test]
async fn host_rewrite_and_host_kept_otherwise() {
    let b = Backend::start("b").await;
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
          - match: {{prefix: /rw}}
            route: {{cluster: b, host_rewrite: internal.svc}}
          - match: {{prefix: /}}
            route: {{cluster: b}}
{}"#,
        clusters_yaml(&[&b])
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    let r = get(
        &c,
        &format!("http://{listen}/rw/x"),
        &[("host", "example.com")],
    )
    .await;
    assert_eq!(r.echo().header("host"), Some("internal.svc"));
    let r = get(
        &c,
        &format!("http://{listen}/x"),
        &[("host", "example.com")],
    )
    .await;
    assert_eq!(r.echo().header("host"), Some("example.com"));
}

#[tokio::test]
async fn request_and_response_header_mutation() {
    let b = Backend::start("b").await;
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
        request_headers_to_add: [{{name: x-vh, value: vh}}]
        response_headers_to_add: [{{name: x-vh-resp, value: vh}}]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: b}}
            request_headers_to_add:
              - {{name: x-route, value: r}}
              - {{name: x-replace, value: new, append: false}}
              - {{name: x-append, value: b}}
            request_headers_to_remove: [x-secret]
            response_headers_to_add:
              - {{name: x-resp, value: r}}
              - {{name: x-resp-replace, value: new, append: false}}
            response_headers_to_remove: [x-internal]
{}"#,
        clusters_yaml(&[&b])
    );
    let _proxy = Proxy::start(&yaml).await;
    let c = Client::h1();
    let r = get(
        &c,
        &format!("http://{listen}/m?set=x-internal:1&set=x-resp-replace:old&set=x-keep:1"),
        &[("x-replace", "old"), ("x-append", "a"), ("x-secret", "s")],
    )
    .await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert_eq!(e.header("x-vh"), Some("vh"));
    assert_eq!(e.header("x-route"), Some("r"));
    assert_eq!(e.header_all("x-replace"), vec!["new"]);
    let appended: String = e.header_all("x-append").join(",").replace(' ', "");
    assert_eq!(appended, "a,b", "append keeps the client's value");
    assert!(!e.has_header("x-secret"), "x-secret must be removed");

    assert_eq!(r.header("x-resp"), Some("r"));
    assert_eq!(r.header("x-vh-resp"), Some("vh"));
    assert_eq!(r.header_all("x-resp-replace"), vec!["new"]);
    assert!(!r.headers.contains_key("x-internal"), "x-internal removed");
    assert_eq!(r.header("x-keep"), Some("1"));
}

#[tokio::test]
async fn no_route_is_404() {
    let b = Backend::start("b").await;
    let listen = free_addr();
    let yaml = format!(
        r#"
listeners:
  - {{name: http, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: only
        domains: ["only.example.com"]
        routes:
          - match: {{prefix: /api}}
            route: {{cluster: b}}
{}"#,
        clusters_yaml(&[&b])
    );
    let _proxy = Proxy::start(&yaml).await;
    for c in [Client::h1(), Client::h2c()] {
        let r = get(
            &c,
            &format!("http://{listen}/api"),
            &[("host", "other.example.com")],
        )
        .await;
        assert_eq!(r.status, 404, "unknown host");
        let r = get(
            &c,
            &format!("http://{listen}/nope"),
            &[("host", "only.example.com")],
        )
        .await;
        assert_eq!(r.status, 404, "unknown path");
    }
    assert_eq!(b.requests(), 0);
    let r = get(
        &Client::h1(),
        &format!("http://{listen}/api/x"),
        &[("host", "only.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
}
