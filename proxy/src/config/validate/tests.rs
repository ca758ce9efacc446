//! One valid config that uses every feature, then one mutation per rule,
//! each asserting the exact path and a part of the reason.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::*;
use crate::config::{parse_yaml, Dur, HashHeader, HeaderValueOption, Redirect, RouteAction};

// A throwaway self-signed P-256 certificate and key for 127.0.0.1 /
// localhost, made for these tests only: the validator reads PEM, it never
// trusts or serves these.
const CERT_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUdHrpVKdOByQdlMYfuYdumZjuxyYwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTAwMzMwNloYDzIxMjYxMTAx
MDAzMzA2WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASUp4/NMfGolKC0LcF7Y1+ICi4O13ZXk82vdln+Oh6roG/ADaf25BSW
sC90abNcnFdh5ISYIBsru25hTn2XrLcGo28wbTAdBgNVHQ4EFgQUPB45hzOKeD4s
YWI3rJpiSbxP0QkwHwYDVR0jBBgwFoAUPB45hzOKeD4sYWI3rJpiSbxP0QkwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSAAwRQIgZfW2ebFzNHjeOBtwu/ddJgZz+1xqOMjQIMlRrHG05okCIQCt
VOefjUHgPCh/LfxLpWZRkeO4fDwuTCARUD9oX9kGFA==
-----END CERTIFICATE-----
";
const KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgo0MnJBH+3ZfAkQsC
8imrSRpBB9uHgLbaNiy7xwixgEyhRANCAASUp4/NMfGolKC0LcF7Y1+ICi4O13ZX
k82vdln+Oh6roG/ADaf25BSWsC90abNcnFdh5ISYIBsru25hTn2XrLcG
-----END PRIVATE KEY-----
";

struct Files {
    cert: String,
    key: String,
    /// A PEM section with no end line.
    broken: String,
    missing: String,
}

/// PEM files under the temp dir, one directory per test process so that
/// parallel runs do not race on them.
fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let write = |name: &str, text: &str| -> String {
            let p: PathBuf = dir.join(name);
            std::fs::write(&p, text).expect("write temp file");
            p.to_str().expect("utf-8 temp path").to_string()
        };
        Files {
            cert: write("cert.pem", CERT_PEM),
            key: write("key.pem", KEY_PEM),
            broken: write("broken.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"),
            missing: dir.join("missing.pem").to_str().expect("utf-8").to_string(),
        }
    })
}

const VALID: &str = r#"
admin:
  address: 127.0.0.1:15000
access_log:
  path: stdout
listeners:
- name: http
  address: 127.0.0.1:10000
  route_config: main
  max_connections: 1000
- name: https
  address: 127.0.0.1:10443
  route_config: main
  tls:
    cert_chain: CERT
    private_key: KEY
    alpn: [h2, http/1.1]
- name: db
  address: "[::1]:15432"
  protocol: tcp
  cluster: db
- name: ephemeral-a
  address: 127.0.0.1:0
  route_config: main
- name: ephemeral-b
  address: 127.0.0.1:0
  route_config: main
routes:
- name: main
  virtual_hosts:
  - name: api
    domains: [api.example.com, "api.example.com:8080", "*.api.example.com"]
    request_headers_to_add:
    - {name: x-via, value: ferry}
    request_headers_to_remove: [x-internal, connection]
    response_headers_to_add:
    - {name: cache-control, value: no-store, append: false}
    response_headers_to_remove: [server]
    routes:
    - name: users
      match:
        prefix: /users
        case_sensitive: false
        headers:
        - {name: x-exact, exact: a}
        - {name: x-prefix, prefix: a}
        - {name: x-suffix, suffix: a}
        - {name: x-contains, contains: a}
        - {name: x-regex, regex: "^v[0-9]+$"}
        - {name: x-present, present: true, invert_match: true}
        - {name: ":method", exact: GET}
        - {name: x-any}
        query_parameters:
        - {name: debug, exact: "1"}
        - {name: v, regex: "[0-9]+"}
        - {name: trace, present: true}
        - {name: bare}
      route:
        cluster: users
        timeout: 0s
        prefix_rewrite: /
        host_rewrite: users.internal:8080
        hash_policy:
        - header: {header_name: x-user}
        - cookie: {name: session}
        - connection_properties: {source_ip: true}
        - query_parameter: {name: id}
          terminal: true
      request_headers_to_add:
      - {name: x-route, value: users}
      response_headers_to_remove: [x-debug]
    - match: {path: /split}
      route:
        weighted_clusters:
        - {name: users, weight: 90}
        - {name: canary, weight: 10}
    - match: {regex: "/items/[0-9]+"}
      route: {cluster: canary, timeout: 2.5s}
    - match: {prefix: /old}
      redirect:
        path_redirect: "/new?from=old"
        host_redirect: new.example.com
        port_redirect: 8443
        https_redirect: true
        strip_query: true
        response_code: 308
    - match: {prefix: /docs}
      redirect: {prefix_rewrite: /manual, scheme_redirect: http}
    - match: {prefix: ""}
      direct_response: {status: 404, body: not here}
  - name: catch-all
    domains: ["*", "web-*", "*-web.example.com"]
    routes:
    - match: {prefix: /}
      route: {cluster: users}
clusters:
- name: users
  endpoints:
  - {address: 127.0.0.1:18080}
  - {address: "[::1]:18080", weight: 3}
  lb_policy: ring_hash
  ring_hash: {minimum_ring_size: 1024, maximum_ring_size: 8388608}
  connect_timeout: 250ms
  idle_timeout: 0s
  max_idle_per_endpoint: 16
- name: canary
  type: strict_dns
  endpoints:
  - {address: "canary.svc.local:8080"}
  - {address: "10.0.0.1:80"}
  - {address: "my_host:1"}
  lb_policy: maglev
  maglev: {table_size: 65537}
  dns_refresh_rate: 30s
  protocol: http2
  tls: {sni: canary.example.com, ca_file: CERT}
- name: db
  lb_policy: least_request
  least_request: {choice_count: 2}
  endpoints: [{address: "127.0.0.1:5432"}]
- name: empty
"#;

fn valid() -> Bootstrap {
    let f = files();
    let yaml = VALID.replace("CERT", &f.cert).replace("KEY", &f.key);
    parse_yaml(&yaml).expect("VALID parses")
}

// Accessors into `valid()`, named after what the config holds there.

fn vhost(b: &mut Bootstrap, i: usize) -> &mut VirtualHost {
    Arc::make_mut(&mut Arc::make_mut(&mut b.routes[0]).virtual_hosts[i])
}

/// Route `r` of the `api` virtual host.
fn rt(b: &mut Bootstrap, r: usize) -> &mut Route {
    &mut vhost(b, 0).routes[r]
}

fn action(b: &mut Bootstrap, r: usize) -> &mut RouteAction {
    rt(b, r).route.as_mut().expect("a route action")
}

fn redirect(b: &mut Bootstrap, r: usize) -> &mut Redirect {
    rt(b, r).redirect.as_mut().expect("a redirect")
}

fn tls(b: &mut Bootstrap) -> &mut ListenerTls {
    b.listeners[1].tls.as_mut().expect("listener tls")
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        name: name.to_string(),
        value: value.to_string(),
        append: true,
    }
}

fn errors_of(b: &Bootstrap) -> Vec<ConfigError> {
    match validate(b) {
        Ok(()) => Vec::new(),
        Err(ConfigErrors(errs)) => errs,
    }
}

#[test]
fn valid_config_passes() {
    assert_eq!(errors_of(&valid()), Vec::new());
}

#[test]
fn empty_config_passes() {
    assert_eq!(validate(&Bootstrap::default()), Ok(()));
}

struct Case {
    path: &'static str,
    reason: &'static str,
    mutate: fn(&mut Bootstrap),
}

const fn case(path: &'static str, reason: &'static str, mutate: fn(&mut Bootstrap)) -> Case {
    Case {
        path,
        reason,
        mutate,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // === names and addresses ===
        case("listeners[0].name", "must not be empty", |b| b.listeners[0].name.clear()),
        case("listeners[1].name", "duplicate listener name \"http\" (first used by listeners[0])",
            |b| b.listeners[1].name = "http".into()),
        case("routes[1].name", "duplicate route config name \"main\"", |b| {
            let copy = b.routes[0].clone();
            b.routes.push(copy);
        }),
        case("routes[0].virtual_hosts[1].name", "duplicate virtual host name \"api\"",
            |b| vhost(b, 1).name = "api".into()),
        case("routes[0].virtual_hosts[1].name", "must not be empty",
            |b| vhost(b, 1).name.clear()),
        case("clusters[3].name", "duplicate cluster name \"db\"",
            |b| Arc::make_mut(&mut b.clusters[3]).name = "db".into()),
        case("clusters[3].name", "must not be empty", |b| Arc::make_mut(&mut b.clusters[3]).name.clear()),
        case("listeners[0].address", "expected ip:port",
            |b| b.listeners[0].address = "localhost:10000".into()),
        case("listeners[0].address", "expected ip:port",
            |b| b.listeners[0].address = "127.0.0.1".into()),
        case("admin.address", "invalid address \"15000\"",
            |b| b.admin.as_mut().expect("admin").address = "15000".into()),
        case("listeners[1].address", "address 127.0.0.1:10000 is already used by listeners[0].address",
            |b| b.listeners[1].address = "127.0.0.1:10000".into()),
        case("listeners[1].address", "already used by admin.address",
            |b| b.admin.as_mut().expect("admin").address = "127.0.0.1:10443".into()),
        case("access_log.path", "must not be empty",
            |b| b.access_log.as_mut().expect("access_log").path = " ".into()),

        // === listeners ===
        case("listeners[0].route_config", "an http listener needs route_config",
            |b| b.listeners[0].route_config = None),
        case("listeners[0].route_config", "unknown route config \"nope\"",
            |b| b.listeners[0].route_config = Some("nope".into())),
        case("listeners[0].cluster", "only tcp listeners take a cluster",
            |b| b.listeners[0].cluster = Some("users".into())),
        case("listeners[2].cluster", "a tcp listener needs cluster",
            |b| b.listeners[2].cluster = None),
        case("listeners[2].cluster", "unknown cluster \"nope\"",
            |b| b.listeners[2].cluster = Some("nope".into())),
        case("listeners[2].route_config", "only http listeners take route_config",
            |b| b.listeners[2].route_config = Some("main".into())),
        case("listeners[2].tls", "TLS on tcp listeners is not supported yet",
            |b| b.listeners[2].tls = b.listeners[1].tls.clone()),
        case("listeners[1].tls.cert_chain", "cannot read",
            |b| tls(b).cert_chain = files().missing.clone()),
        case("listeners[1].tls.cert_chain", "no certificate found in",
            |b| tls(b).cert_chain = files().key.clone()),
        case("listeners[1].tls.cert_chain", "invalid PEM in",
            |b| tls(b).cert_chain = files().broken.clone()),
        case("listeners[1].tls.cert_chain", "must not be empty", |b| tls(b).cert_chain.clear()),
        case("listeners[1].tls.private_key", "no private key found in",
            |b| tls(b).private_key = files().cert.clone()),
        case("listeners[1].tls.private_key", "cannot read",
            |b| tls(b).private_key = files().missing.clone()),
        case("listeners[1].tls.alpn[1]", "unsupported ALPN protocol \"h3\"",
            |b| tls(b).alpn = vec!["h2".into(), "h3".into()]),
        case("listeners[1].tls.alpn[0]", "unsupported ALPN protocol \"\"",
            |b| tls(b).alpn = vec!["".into()]),
        case("listeners[1].tls.alpn[1]", "duplicate ALPN protocol \"h2\"",
            |b| tls(b).alpn = vec!["h2".into(), "h2".into()]),
        case("listeners[1].tls.alpn", "must list at least one protocol",
            |b| tls(b).alpn.clear()),

        // === virtual hosts ===
        case("routes[0].virtual_hosts[1].domains", "at least one domain is required",
            |b| vhost(b, 1).domains.clear()),
        case("routes[0].virtual_hosts[1].domains[0]", "invalid wildcard",
            |b| vhost(b, 1).domains[0] = "a.*.com".into()),
        case("routes[0].virtual_hosts[1].domains[0]", "invalid wildcard",
            |b| vhost(b, 1).domains[0] = "*a*".into()),
        case("routes[0].virtual_hosts[1].domains[0]", "invalid wildcard",
            |b| vhost(b, 1).domains[0] = "**".into()),
        case("routes[0].virtual_hosts[1].domains[0]", "must not be empty",
            |b| vhost(b, 1).domains[0].clear()),
        case("routes[0].virtual_hosts[1].domains[0]", "invalid character ' '",
            |b| vhost(b, 1).domains[0] = "a .com".into()),
        case("routes[0].virtual_hosts[1].domains[3]",
            "duplicate domain \"API.example.com\" (also in routes[0].virtual_hosts[0].domains[0])",
            |b| vhost(b, 1).domains.push("API.example.com".into())),
        case("routes[0].virtual_hosts[0].domains[3]", "duplicate domain \"api.example.com:8080\"",
            |b| vhost(b, 0).domains.push("api.example.com:8080".into())),

        // === route match ===
        case("routes[0].virtual_hosts[0].routes[5].match",
            "exactly one of prefix, path, regex is required; none is set",
            |b| rt(b, 5).matcher.prefix = None),
        case("routes[0].virtual_hosts[0].routes[5].match",
            "exactly one of prefix, path, regex is allowed; found prefix and regex",
            |b| rt(b, 5).matcher.regex = Some("/x".into())),
        case("routes[0].virtual_hosts[0].routes[2].match.regex", "invalid regex: unclosed group",
            |b| rt(b, 2).matcher.regex = Some("/items/(a".into())),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[0]",
            "at most one of exact, prefix, suffix, contains, regex, present is allowed; \
             found exact and prefix",
            |b| rt(b, 0).matcher.headers[0].prefix = Some("a".into())),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[4].regex", "invalid regex: ",
            |b| rt(b, 0).matcher.headers[4].regex = Some("[".into())),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[0].name",
            "invalid header name \"x exact\"",
            |b| rt(b, 0).matcher.headers[0].name = "x exact".into()),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[0].name",
            "header name must not be empty",
            |b| rt(b, 0).matcher.headers[0].name.clear()),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[6].name",
            "unsupported pseudo-header \":status\"",
            |b| rt(b, 0).matcher.headers[6].name = ":status".into()),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[1].prefix",
            "must not be empty", |b| rt(b, 0).matcher.headers[1].prefix = Some(String::new())),
        case("routes[0].virtual_hosts[0].routes[0].match.headers[3].contains",
            "must not be empty", |b| rt(b, 0).matcher.headers[3].contains = Some(String::new())),
        case("routes[0].virtual_hosts[0].routes[0].match.query_parameters[0]",
            "at most one of exact, regex, present is allowed; found exact and present",
            |b| rt(b, 0).matcher.query_parameters[0].present = Some(false)),
        case("routes[0].virtual_hosts[0].routes[0].match.query_parameters[1].regex",
            "invalid regex: ",
            |b| rt(b, 0).matcher.query_parameters[1].regex = Some("(".into())),
        case("routes[0].virtual_hosts[0].routes[0].match.query_parameters[0].name",
            "must not be empty",
            |b| rt(b, 0).matcher.query_parameters[0].name.clear()),
        case("routes[0].virtual_hosts[0].routes[0].name", "must not be empty",
            |b| rt(b, 0).name = Some(String::new())),

        // === route actions ===
        case("routes[0].virtual_hosts[0].routes[5]",
            "exactly one of route, redirect, direct_response is required; none is set",
            |b| rt(b, 5).direct_response = None),
        case("routes[0].virtual_hosts[0].routes[5]", "found route and direct_response",
            |b| rt(b, 5).route = Some(RouteAction { cluster: Some("users".into()), ..Default::default() })),
        case("routes[0].virtual_hosts[0].routes[2].route",
            "exactly one of cluster, weighted_clusters is required; none is set",
            |b| action(b, 2).cluster = None),
        case("routes[0].virtual_hosts[0].routes[1].route", "found cluster and weighted_clusters",
            |b| action(b, 1).cluster = Some("users".into())),
        case("routes[0].virtual_hosts[0].routes[0].route.cluster", "unknown cluster \"nope\"",
            |b| action(b, 0).cluster = Some("nope".into())),
        case("routes[0].virtual_hosts[0].routes[0].route.cluster", "must not be empty",
            |b| action(b, 0).cluster = Some(String::new())),
        case("routes[0].virtual_hosts[0].routes[1].route.weighted_clusters",
            "at least one cluster is required",
            |b| action(b, 1).weighted_clusters = Some(Vec::new())),
        case("routes[0].virtual_hosts[0].routes[1].route.weighted_clusters",
            "total weight must be greater than 0", |b| {
                for w in action(b, 1).weighted_clusters.iter_mut().flatten() {
                    w.weight = 0;
                }
            }),
        case("routes[0].virtual_hosts[0].routes[1].route.weighted_clusters",
            "total weight 8589934590 exceeds 4294967295", |b| {
                for w in action(b, 1).weighted_clusters.iter_mut().flatten() {
                    w.weight = u32::MAX;
                }
            }),
        case("routes[0].virtual_hosts[0].routes[1].route.weighted_clusters[1].name",
            "unknown cluster \"v3\"", |b| {
                if let Some(w) = action(b, 1).weighted_clusters.as_mut() {
                    w[1].name = "v3".into();
                }
            }),
        case("routes[0].virtual_hosts[0].routes[0].route.host_rewrite", "invalid host \"a b\"",
            |b| action(b, 0).host_rewrite = Some("a b".into())),
        case("routes[0].virtual_hosts[0].routes[0].route.prefix_rewrite",
            "invalid character ' ' in path \"/a b\"",
            |b| action(b, 0).prefix_rewrite = Some("/a b".into())),
        case("routes[0].virtual_hosts[0].routes[0].route.prefix_rewrite",
            "invalid character '?'", |b| action(b, 0).prefix_rewrite = Some("/a?b".into())),
        case("routes[0].virtual_hosts[0].routes[0].route.hash_policy[0]",
            "exactly one of header, cookie, connection_properties, query_parameter is required",
            |b| action(b, 0).hash_policy[0].header = None),
        case("routes[0].virtual_hosts[0].routes[0].route.hash_policy[1]",
            "found header and cookie",
            |b| action(b, 0).hash_policy[1].header = Some(HashHeader { header_name: "x".into() })),
        case("routes[0].virtual_hosts[0].routes[0].route.hash_policy[0].header.header_name",
            "invalid header name",
            |b| action(b, 0).hash_policy[0].header = Some(HashHeader { header_name: "a:b".into() })),
        case("routes[0].virtual_hosts[0].routes[0].route.hash_policy[1].cookie.name",
            "must not be empty", |b| {
                if let Some(c) = action(b, 0).hash_policy[1].cookie.as_mut() {
                    c.name.clear();
                }
            }),
        case("routes[0].virtual_hosts[0].routes[3].redirect.response_code",
            "invalid redirect code 300", |b| redirect(b, 3).response_code = 300),
        case("routes[0].virtual_hosts[0].routes[3].redirect",
            "path_redirect and prefix_rewrite are exclusive",
            |b| redirect(b, 3).prefix_rewrite = Some("/p".into())),
        case("routes[0].virtual_hosts[0].routes[4].redirect",
            "scheme_redirect and https_redirect are exclusive",
            |b| redirect(b, 4).https_redirect = true),
        case("routes[0].virtual_hosts[0].routes[4].redirect.scheme_redirect", "invalid scheme",
            |b| redirect(b, 4).scheme_redirect = Some("1http".into())),
        case("routes[0].virtual_hosts[0].routes[3].redirect.port_redirect", "port must be 1..=65535",
            |b| redirect(b, 3).port_redirect = Some(0)),
        case("routes[0].virtual_hosts[0].routes[3].redirect.host_redirect", "invalid host",
            |b| redirect(b, 3).host_redirect = Some("a/b".into())),
        case("routes[0].virtual_hosts[0].routes[3].redirect.path_redirect",
            "invalid character '\\n'", |b| redirect(b, 3).path_redirect = Some("/a\nb".into())),
        case("routes[0].virtual_hosts[0].routes[3].redirect.path_redirect",
            "must start with \"/\"", |b| redirect(b, 3).path_redirect = Some("new".into())),
        case("routes[0].virtual_hosts[0].routes[4].redirect.prefix_rewrite",
            "invalid character '#'", |b| redirect(b, 4).prefix_rewrite = Some("/a#b".into())),
        case("routes[0].virtual_hosts[0].routes[5].direct_response.status",
            "invalid HTTP status 600", |b| {
                if let Some(d) = rt(b, 5).direct_response.as_mut() {
                    d.status = 600;
                }
            }),
        case("routes[0].virtual_hosts[0].routes[5].direct_response.status",
            "invalid HTTP status 199", |b| {
                if let Some(d) = rt(b, 5).direct_response.as_mut() {
                    d.status = 199;
                }
            }),

        // === header rewrites ===
        case("routes[0].virtual_hosts[0].request_headers_to_add[0].name",
            "invalid header name \"x via\"", |b| vhost(b, 0).request_headers_to_add[0].name = "x via".into()),
        case("routes[0].virtual_hosts[0].request_headers_to_add[0].value", "invalid header value",
            |b| vhost(b, 0).request_headers_to_add[0].value = "a\r\nb".into()),
        case("routes[0].virtual_hosts[0].request_headers_to_add[1].name",
            "pseudo-header \":authority\" may not be modified",
            |b| vhost(b, 0).request_headers_to_add.push(header(":authority", "a"))),
        case("routes[0].virtual_hosts[0].request_headers_to_add[1].name",
            "host may not be modified here; use route.host_rewrite",
            |b| vhost(b, 0).request_headers_to_add.push(header("Host", "a"))),
        case("routes[0].virtual_hosts[0].request_headers_to_add[1].name",
            "hop-by-hop header \"connection\" may not be added",
            |b| vhost(b, 0).request_headers_to_add.push(header("connection", "close"))),
        case("routes[0].virtual_hosts[0].response_headers_to_add[1].name",
            "hop-by-hop header \"Transfer-Encoding\" may not be added",
            |b| vhost(b, 0).response_headers_to_add.push(header("Transfer-Encoding", "chunked"))),
        case("routes[0].virtual_hosts[0].response_headers_to_add[1].name",
            "content-length may not be added",
            |b| vhost(b, 0).response_headers_to_add.push(header("content-length", "1"))),
        case("routes[0].virtual_hosts[0].request_headers_to_remove[2]", "host may not be removed",
            |b| vhost(b, 0).request_headers_to_remove.push("host".into())),
        case("routes[0].virtual_hosts[0].response_headers_to_remove[1]",
            "pseudo-header \":status\" may not be removed",
            |b| vhost(b, 0).response_headers_to_remove.push(":status".into())),
        case("routes[0].virtual_hosts[0].routes[0].request_headers_to_add[0].name",
            "pseudo-header \":path\" may not be modified",
            |b| rt(b, 0).request_headers_to_add[0].name = ":path".into()),
        case("routes[0].virtual_hosts[0].routes[0].response_headers_to_remove[0]",
            "invalid header name", |b| rt(b, 0).response_headers_to_remove[0] = "x(y)".into()),

        // === clusters ===
        case("clusters[0].endpoints[0].address", "a static cluster needs ip:port",
            |b| Arc::make_mut(&mut b.clusters[0]).endpoints[0].address = "localhost:18080".into()),
        case("clusters[0].endpoints[0].address", "port 0",
            |b| Arc::make_mut(&mut b.clusters[0]).endpoints[0].address = "127.0.0.1:0".into()),
        case("clusters[1].endpoints[0].address", "expected host:port",
            |b| Arc::make_mut(&mut b.clusters[1]).endpoints[0].address = "canary.svc.local".into()),
        case("clusters[1].endpoints[0].address", "invalid port \"99999\"",
            |b| Arc::make_mut(&mut b.clusters[1]).endpoints[0].address = "canary:99999".into()),
        case("clusters[1].endpoints[0].address", "invalid port \"0\"",
            |b| Arc::make_mut(&mut b.clusters[1]).endpoints[0].address = "canary:0".into()),
        case("clusters[1].endpoints[0].address", "invalid host \"\"",
            |b| Arc::make_mut(&mut b.clusters[1]).endpoints[0].address = ":80".into()),
        case("clusters[1].endpoints[0].address", "invalid host \"::1\"",
            |b| Arc::make_mut(&mut b.clusters[1]).endpoints[0].address = "::1:80".into()),
        case("clusters[0].endpoints[1].weight", "must be at least 1",
            |b| Arc::make_mut(&mut b.clusters[0]).endpoints[1].weight = 0),
        case("clusters[0].connect_timeout", "must be greater than 0",
            |b| Arc::make_mut(&mut b.clusters[0]).connect_timeout = Some(Dur(Duration::ZERO))),
        case("clusters[1].dns_refresh_rate", "must be greater than 0",
            |b| Arc::make_mut(&mut b.clusters[1]).dns_refresh_rate = Some(Dur(Duration::ZERO))),
        case("clusters[0].ring_hash.minimum_ring_size", "must not exceed maximum_ring_size (1000)", |b| {
            if let Some(r) = Arc::make_mut(&mut b.clusters[0]).ring_hash.as_mut() {
                r.maximum_ring_size = 1000;
            }
        }),
        case("clusters[0].ring_hash.minimum_ring_size", "must be at least 1", |b| {
            if let Some(r) = Arc::make_mut(&mut b.clusters[0]).ring_hash.as_mut() {
                r.minimum_ring_size = 0;
            }
        }),
        case("clusters[0].ring_hash.maximum_ring_size", "must not exceed 8388608", |b| {
            if let Some(r) = Arc::make_mut(&mut b.clusters[0]).ring_hash.as_mut() {
                r.maximum_ring_size = 8388609;
            }
        }),
        case("clusters[0].ring_hash", "ring_hash is set but lb_policy is round_robin",
            |b| Arc::make_mut(&mut b.clusters[0]).lb_policy = LbPolicy::RoundRobin),
        case("clusters[1].maglev.table_size", "65536 is not prime", |b| {
            if let Some(m) = Arc::make_mut(&mut b.clusters[1]).maglev.as_mut() {
                m.table_size = 65536;
            }
        }),
        case("clusters[1].maglev.table_size", "1 is not prime", |b| {
            if let Some(m) = Arc::make_mut(&mut b.clusters[1]).maglev.as_mut() {
                m.table_size = 1;
            }
        }),
        case("clusters[1].maglev.table_size", "must not exceed 5000011", |b| {
            if let Some(m) = Arc::make_mut(&mut b.clusters[1]).maglev.as_mut() {
                m.table_size = 5_000_077;
            }
        }),
        case("clusters[1].maglev", "maglev is set but lb_policy is random",
            |b| Arc::make_mut(&mut b.clusters[1]).lb_policy = LbPolicy::Random),
        case("clusters[2].least_request.choice_count", "must be at least 1", |b| {
            if let Some(l) = Arc::make_mut(&mut b.clusters[2]).least_request.as_mut() {
                l.choice_count = 0;
            }
        }),
        case("clusters[2].least_request", "least_request is set but lb_policy is maglev",
            |b| Arc::make_mut(&mut b.clusters[2]).lb_policy = LbPolicy::Maglev),
        case("clusters[1].tls.ca_file", "cannot read", |b| {
            if let Some(t) = Arc::make_mut(&mut b.clusters[1]).tls.as_mut() {
                t.ca_file = Some(files().missing.clone());
            }
        }),
        case("clusters[1].tls.ca_file", "no certificate found in", |b| {
            if let Some(t) = Arc::make_mut(&mut b.clusters[1]).tls.as_mut() {
                t.ca_file = Some(files().key.clone());
            }
        }),
        case("clusters[1].tls.sni", "invalid server name \"bad name\"", |b| {
            if let Some(t) = Arc::make_mut(&mut b.clusters[1]).tls.as_mut() {
                t.sni = Some("bad name".into());
            }
        }),
    ]
}

#[test]
fn each_rule_reports_its_path() {
    let mut failures = Vec::new();
    for (i, c) in cases().into_iter().enumerate() {
        let mut b = valid();
        (c.mutate)(&mut b);
        let errs = errors_of(&b);
        let ok = errs.len() == 1 && errs[0].path == c.path && errs[0].reason.contains(c.reason);
        if !ok {
            failures.push(format!(
                "case {i} (expected `{}: ...{}...`): got {errs:#?}",
                c.path, c.reason
            ));
        }
        for e in &errs {
            assert!(!e.reason.contains('\n'), "multi-line reason: {e:?}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn boundary_values_pass() {
    let mut b = valid();
    // The largest prime Envoy accepts as a Maglev table size.
    if let Some(m) = Arc::make_mut(&mut b.clusters[1]).maglev.as_mut() {
        m.table_size = 5_000_011;
    }
    if let Some(r) = Arc::make_mut(&mut b.clusters[0]).ring_hash.as_mut() {
        r.minimum_ring_size = 1;
        r.maximum_ring_size = 1;
    }
    if let Some(l) = Arc::make_mut(&mut b.clusters[2]).least_request.as_mut() {
        l.choice_count = 1;
    }
    if let Some(d) = rt(&mut b, 5).direct_response.as_mut() {
        d.status = 599;
    }
    redirect(&mut b, 3).response_code = 307;
    // An empty static cluster is valid: its requests get 503.
    Arc::make_mut(&mut b.clusters[0]).endpoints.clear();
    Arc::make_mut(&mut b.clusters[0]).idle_timeout = Some(Dur(Duration::ZERO));
    action(&mut b, 0).timeout = Some(Dur(Duration::ZERO));
    vhost(&mut b, 1).domains = vec!["*".into(), "*.a.com".into(), "*-a.com".into(), "a.*".into()];
    // Duplicate domains only clash within one route config.
    let mut other = (*b.routes[0]).clone();
    other.name = "other".into();
    b.routes.push(Arc::new(other));
    assert_eq!(errors_of(&b), Vec::new());
}

#[test]
fn all_errors_are_collected_in_document_order() {
    let mut b = valid();
    b.listeners[0].address = "nowhere".into();
    rt(&mut b, 2).matcher.regex = Some("(".into());
    Arc::make_mut(&mut b.clusters[0]).endpoints[0].weight = 0;
    let paths: Vec<String> = errors_of(&b).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].address".to_string(),
            "routes[0].virtual_hosts[0].routes[2].match.regex".to_string(),
            "clusters[0].endpoints[0].weight".to_string(),
        ]
    );
}

#[test]
fn regex_errors_stay_on_one_line() {
    // Built at run time: clippy rejects an invalid regex literal.
    let pattern = String::from("a(b");
    let e = regex::Regex::new(&pattern).expect_err("invalid");
    assert!(
        e.to_string().contains('\n'),
        "the regex crate's own text spans lines"
    );
    let one = regex_error(&e.to_string());
    assert!(!one.contains('\n'), "{one}");
    assert_eq!(one, "unclosed group");
}

#[test]
fn primes() {
    let primes: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(65537));
    assert!(is_prime(5_000_011));
    assert!(!is_prime(65537 * 3));
}

fn example(name: &str) -> Bootstrap {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/static")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_yaml(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

#[test]
fn static_examples_parse_and_validate() {
    for name in ["basic.yaml", "split.yaml"] {
        let b = example(name);
        if let Err(e) = validate(&b) {
            panic!("{name}:\n{e}");
        }
    }
    // Its certificate is made locally (see the file's header), never
    // committed, so only the schema is checked here.
    let tls = example("tls.yaml");
    assert_eq!(tls.listeners.len(), 1);
    assert!(tls.listeners[0].tls.is_some());
}

#[test]
fn every_static_example_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/static");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/static")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    // Every example must at least parse, including ones added later.
    for name in &names {
        example(name);
    }
    for expected in ["basic.yaml", "split.yaml", "tls.yaml"] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
}

/// `validate` is the gate before the router compiles a config: what it
/// accepts, the router must build (the router may repeat checks, never add
/// any).
#[test]
fn router_builds_what_validate_accepts() {
    let b = valid();
    assert_eq!(errors_of(&b), Vec::new());
    let index = |name: &str| b.clusters.iter().position(|c| c.name == name);
    for (i, rc) in b.routes.iter().enumerate() {
        if let Err(e) = crate::router::RouteTable::build(rc, &format!("routes[{i}]"), &index) {
            panic!("validate accepts what the router rejects:\n{e}");
        }
    }
}

// === Cluster resilience: breakers, health checks, outlier detection ===

/// `valid()` with every resilience field set on `clusters[0]` (`users`),
/// from YAML so the field names are checked too.
fn resilient() -> Bootstrap {
    let mut b = valid();
    let yaml = r#"
clusters:
- name: users
  circuit_breakers:
    max_connections: 1
    max_pending_requests: 1
    max_requests: 1
    max_retries: 1
    retry_budget: {budget_percent: 100, min_retry_concurrency: 0}
  health_checks:
  - timeout: 1ms
    interval: 1ms
    interval_jitter: 0s
    unhealthy_threshold: 1
    healthy_threshold: 1
    http_health_check:
      path: "/healthz?full=1"
      host: users.internal:8080
      expected_statuses: [{start: 100, end: 600}, {start: 200, end: 201}]
  - tcp_health_check: {}
  outlier_detection:
    consecutive_5xx: 1
    consecutive_gateway_failure: 1
    enforcing_consecutive_5xx: 0
    enforcing_consecutive_gateway_failure: 100
    interval: 1ms
    base_ejection_time: 1ms
    max_ejection_time: 1ms
    max_ejection_percent: 100
  healthy_panic_threshold: 0
"#;
    let extra = parse_yaml(yaml).expect("resilience YAML parses");
    let from = &extra.clusters[0];
    let c = &mut Arc::make_mut(&mut b.clusters[0]);
    c.circuit_breakers = from.circuit_breakers.clone();
    c.health_checks = from.health_checks.clone();
    c.outlier_detection = from.outlier_detection.clone();
    c.healthy_panic_threshold = from.healthy_panic_threshold;
    b
}

fn breakers(b: &mut Bootstrap) -> &mut crate::config::CircuitBreakers {
    Arc::make_mut(&mut b.clusters[0])
        .circuit_breakers
        .as_mut()
        .expect("circuit_breakers")
}

fn hc(b: &mut Bootstrap, i: usize) -> &mut crate::config::HealthCheck {
    &mut Arc::make_mut(&mut b.clusters[0]).health_checks[i]
}

fn http_hc(b: &mut Bootstrap) -> &mut crate::config::HttpHealthCheck {
    hc(b, 0)
        .http_health_check
        .as_mut()
        .expect("http_health_check")
}

fn od(b: &mut Bootstrap) -> &mut crate::config::OutlierDetection {
    Arc::make_mut(&mut b.clusters[0])
        .outlier_detection
        .as_mut()
        .expect("outlier_detection")
}

#[test]
fn resilience_boundaries_pass() {
    assert_eq!(errors_of(&resilient()), Vec::new());
    let mut b = resilient();
    Arc::make_mut(&mut b.clusters[0]).healthy_panic_threshold = Some(100.0);
    if let Some(r) = breakers(&mut b).retry_budget.as_mut() {
        r.budget_percent = 0.0;
    }
    od(&mut b).max_ejection_percent = 0;
    // The default Host is the cluster name, a valid host here.
    http_hc(&mut b).host = None;
    http_hc(&mut b).expected_statuses.clear();
    assert_eq!(errors_of(&b), Vec::new());
}

#[rustfmt::skip]
fn resilience_cases() -> Vec<Case> {
    vec![
        case("clusters[0].circuit_breakers.max_connections", "must be at least 1",
            |b| breakers(b).max_connections = 0),
        case("clusters[0].circuit_breakers.max_pending_requests", "must be at least 1",
            |b| breakers(b).max_pending_requests = 0),
        case("clusters[0].circuit_breakers.max_requests", "must be at least 1",
            |b| breakers(b).max_requests = 0),
        case("clusters[0].circuit_breakers.max_retries", "must be at least 1",
            |b| breakers(b).max_retries = 0),
        case("clusters[0].circuit_breakers.retry_budget.budget_percent",
            "must be a percentage (0 to 100), not 100.5", |b| {
            if let Some(r) = breakers(b).retry_budget.as_mut() {
                r.budget_percent = 100.5;
            }
        }),
        case("clusters[0].circuit_breakers.retry_budget.budget_percent",
            "must be a percentage", |b| {
            if let Some(r) = breakers(b).retry_budget.as_mut() {
                r.budget_percent = -1.0;
            }
        }),
        case("clusters[0].health_checks[0].timeout", "must be greater than 0",
            |b| hc(b, 0).timeout = Some(Dur(Duration::ZERO))),
        case("clusters[0].health_checks[1].interval", "must be greater than 0",
            |b| hc(b, 1).interval = Some(Dur(Duration::ZERO))),
        case("clusters[0].health_checks[0].unhealthy_threshold", "must be at least 1",
            |b| hc(b, 0).unhealthy_threshold = Some(0)),
        case("clusters[0].health_checks[1].healthy_threshold", "must be at least 1",
            |b| hc(b, 1).healthy_threshold = Some(0)),
        case("clusters[0].health_checks[1]",
            "exactly one of http_health_check, tcp_health_check is required; none is set",
            |b| hc(b, 1).tcp_health_check = None),
        case("clusters[0].health_checks[1]",
            "found http_health_check and tcp_health_check", |b| {
            let http = http_hc(b).clone();
            hc(b, 1).http_health_check = Some(http);
        }),
        case("clusters[0].health_checks[0].http_health_check.path", "must start with '/'",
            |b| http_hc(b).path = "healthz".into()),
        case("clusters[0].health_checks[0].http_health_check.path", "must start with '/'",
            |b| http_hc(b).path = String::new()),
        case("clusters[0].health_checks[0].http_health_check.path", "invalid character ' '",
            |b| http_hc(b).path = "/a b".into()),
        case("clusters[0].health_checks[0].http_health_check.host", "invalid host",
            |b| http_hc(b).host = Some("a b".into())),
        case("clusters[3].health_checks[0].http_health_check.host",
            "the cluster name \"no host\", is not a valid host", |b| {
            // `empty` is referenced by nothing, so it may take any name.
            let mut check = Arc::make_mut(&mut b.clusters[0]).health_checks[0].clone();
            if let Some(h) = check.http_health_check.as_mut() {
                h.host = None;
            }
            Arc::make_mut(&mut b.clusters[3]).name = "no host".into();
            Arc::make_mut(&mut b.clusters[3]).health_checks = vec![check];
        }),
        case("clusters[0].health_checks[0].http_health_check.expected_statuses[1]",
            "invalid range [200, 200)",
            |b| http_hc(b).expected_statuses[1].end = 200),
        case("clusters[0].health_checks[0].http_health_check.expected_statuses[0]",
            "need 100 <= start < end <= 600",
            |b| http_hc(b).expected_statuses[0].start = 99),
        case("clusters[0].health_checks[0].http_health_check.expected_statuses[0]",
            "invalid range [100, 601)",
            |b| http_hc(b).expected_statuses[0].end = 601),
        case("clusters[0].outlier_detection.consecutive_5xx", "must be at least 1",
            |b| od(b).consecutive_5xx = 0),
        case("clusters[0].outlier_detection.consecutive_gateway_failure", "must be at least 1",
            |b| od(b).consecutive_gateway_failure = 0),
        case("clusters[0].outlier_detection.enforcing_consecutive_5xx",
            "must be a percentage (0 to 100), not 101", |b| od(b).enforcing_consecutive_5xx = 101),
        case("clusters[0].outlier_detection.enforcing_consecutive_gateway_failure",
            "must be a percentage", |b| od(b).enforcing_consecutive_gateway_failure = 200),
        case("clusters[0].outlier_detection.max_ejection_percent", "must be a percentage",
            |b| od(b).max_ejection_percent = 101),
        case("clusters[0].outlier_detection.interval", "must be greater than 0",
            |b| od(b).interval = Some(Dur(Duration::ZERO))),
        case("clusters[0].outlier_detection.base_ejection_time", "must be greater than 0",
            |b| od(b).base_ejection_time = Some(Dur(Duration::ZERO))),
        case("clusters[0].outlier_detection.max_ejection_time", "must be greater than 0",
            |b| od(b).max_ejection_time = Some(Dur(Duration::ZERO))),
        case("clusters[0].healthy_panic_threshold", "must be a percentage (0 to 100), not 100.1",
            |b| Arc::make_mut(&mut b.clusters[0]).healthy_panic_threshold = Some(100.1)),
        case("clusters[0].healthy_panic_threshold", "must be a percentage",
            |b| Arc::make_mut(&mut b.clusters[0]).healthy_panic_threshold = Some(f64::NAN)),
    ]
}

#[test]
fn each_resilience_rule_reports_its_path() {
    let mut failures = Vec::new();
    for (i, c) in resilience_cases().into_iter().enumerate() {
        let mut b = resilient();
        (c.mutate)(&mut b);
        let errs = errors_of(&b);
        let ok = errs.len() == 1 && errs[0].path == c.path && errs[0].reason.contains(c.reason);
        if !ok {
            failures.push(format!(
                "case {i} (expected `{}: ...{}...`): got {errs:#?}",
                c.path, c.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// === Serving roles: queue and activation ===

/// A config with one queue cluster (index 0) and one activation cluster
/// (index 1).
fn serving() -> Bootstrap {
    parse_yaml(
        r#"
clusters:
- name: app
  endpoints: [{address: "127.0.0.1:8081"}]
  queue:
    revision: hello-00001
    container_concurrency: 1
    max_queue_depth: 5
    queue_timeout: 2s
    readiness_probe: {path: /healthz, initial_interval: 50ms, period: 1s, timeout: 1s, failure_threshold: 3}
- name: hello-00002
  activation: {namespace: prod, hold_timeout: 30s, max_held: 100}
"#,
    )
    .expect("serving parses")
}

fn queue_of(b: &mut Bootstrap) -> &mut crate::config::QueueConfig {
    Arc::make_mut(&mut b.clusters[0])
        .queue
        .as_mut()
        .expect("a queue block")
}

fn probe_of(b: &mut Bootstrap) -> &mut crate::config::ReadinessProbe {
    queue_of(b)
        .readiness_probe
        .as_mut()
        .expect("a readiness probe")
}

fn activation_of(b: &mut Bootstrap) -> &mut crate::config::ActivationConfig {
    Arc::make_mut(&mut b.clusters[1])
        .activation
        .as_mut()
        .expect("an activation block")
}

#[rustfmt::skip]
fn serving_cases() -> Vec<Case> {
    vec![
        case("clusters[0].activation", "not both",
            |b| Arc::make_mut(&mut b.clusters[0]).activation = Some(Default::default())),
        case("clusters[0].endpoints", "at least one endpoint",
            |b| Arc::make_mut(&mut b.clusters[0]).endpoints.clear()),
        case("clusters[0].queue.namespace", "must not be empty", |b| queue_of(b).namespace.clear()),
        case("clusters[0].queue.max_queue_depth", "needs container_concurrency > 0",
            |b| queue_of(b).container_concurrency = 0),
        case("clusters[0].queue.queue_timeout", "must be greater than 0",
            |b| queue_of(b).queue_timeout = Some(Dur(Duration::ZERO))),
        case("clusters[0].queue.readiness_probe.path", "must start with '/'",
            |b| probe_of(b).path = Some("healthz".into())),
        case("clusters[0].queue.readiness_probe.path", "must start with '/'",
            |b| probe_of(b).path = Some("/a b".into())),
        case("clusters[0].queue.readiness_probe.initial_interval", "must be greater than 0",
            |b| probe_of(b).initial_interval = Some(Dur(Duration::ZERO))),
        case("clusters[0].queue.readiness_probe.period", "must be greater than 0",
            |b| probe_of(b).period = Some(Dur(Duration::ZERO))),
        case("clusters[0].queue.readiness_probe.timeout", "must be greater than 0",
            |b| probe_of(b).timeout = Some(Dur(Duration::ZERO))),
        case("clusters[0].queue.readiness_probe.failure_threshold", "must be at least 1",
            |b| probe_of(b).failure_threshold = Some(0)),
        case("clusters[1].activation.namespace", "must not be empty",
            |b| activation_of(b).namespace.clear()),
        case("clusters[1].activation.hold_timeout", "must be greater than 0",
            |b| activation_of(b).hold_timeout = Some(Dur(Duration::ZERO))),
        case("clusters[1].activation.max_held", "must be at least 1",
            |b| activation_of(b).max_held = Some(0)),
    ]
}

#[test]
fn serving_config_passes_and_defaults_apply() {
    let b = serving();
    assert_eq!(errors_of(&b), Vec::new());
    let a = b.clusters[1].activation.as_ref().expect("activation");
    assert_eq!(a.namespace, "prod");
    let minimal = parse_yaml(
        "clusters:\n- name: app\n  endpoints: [{address: \"127.0.0.1:1\"}]\n  queue: {}\n",
    )
    .expect("a minimal queue block parses");
    let q = minimal.clusters[0].queue.as_ref().expect("queue");
    assert_eq!(q.namespace, "default");
    assert_eq!(q.container_concurrency, 0);
    assert_eq!(errors_of(&minimal), Vec::new());
}

#[test]
fn unknown_serving_fields_are_rejected() {
    let err = parse_yaml(
        "clusters:\n- name: app\n  endpoints: [{address: \"127.0.0.1:1\"}]\n  queue: {concurrency: 1}\n",
    )
    .expect_err("a misspelt field is an error");
    assert!(err.to_string().contains("clusters[0].queue"), "{err}");
}

#[test]
fn each_serving_rule_reports_its_path() {
    let mut failures = Vec::new();
    for (i, c) in serving_cases().into_iter().enumerate() {
        let mut b = serving();
        (c.mutate)(&mut b);
        let errs = errors_of(&b);
        let ok = errs.len() == 1 && errs[0].path == c.path && errs[0].reason.contains(c.reason);
        if !ok {
            failures.push(format!(
                "case {i} (expected `{}: ...{}...`): got {errs:#?}",
                c.path, c.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// === validate_changes ===

fn change_errors(b: &Bootstrap, prev: &Validated) -> Vec<ConfigError> {
    match validate_changes(b, prev) {
        Ok(()) => Vec::new(),
        Err(ConfigErrors(errs)) => errs,
    }
}

/// Every case of the table, checked against the valid config it was made
/// from: skipping the unchanged parts finds exactly what checking all of
/// them finds.
#[test]
fn changes_are_checked_like_a_whole_config() {
    let prev = Validated::remember(&valid());
    let mut found = 0;
    for (i, c) in cases().into_iter().enumerate() {
        let mut b = valid();
        (c.mutate)(&mut b);
        let all = change_errors(&b, &Validated::default());
        assert_eq!(change_errors(&b, &prev), all, "case {i} ({})", c.path);
        found += usize::from(!all.is_empty());
    }
    assert!(found > 50, "the table's errors are the validator's own");
}

#[test]
fn an_unchanged_virtual_host_still_names_only_existing_clusters() {
    let before = valid();
    let prev = Validated::remember(&before);
    let mut b = before.clone();
    b.clusters.retain(|c| c.name != "canary");
    let errors = change_errors(&b, &prev);
    assert_eq!(errors, change_errors(&b, &Validated::default()));
    assert_eq!(
        errors,
        vec![
            ConfigError::new(
                "routes[0].virtual_hosts[0].routes[1].route.weighted_clusters[1].name",
                "unknown cluster \"canary\""
            ),
            ConfigError::new(
                "routes[0].virtual_hosts[0].routes[2].route.cluster",
                "unknown cluster \"canary\""
            ),
        ]
    );
    // The route tables are the build's to compile, not this check's.
    assert_eq!(change_errors(&before, &prev), Vec::new());
}
