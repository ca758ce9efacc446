//! Router tests through the public API, with route configs written as YAML.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;

const CLUSTERS: [&str; 4] = ["a", "b", "c", "d"];

fn cluster_index(name: &str) -> Option<usize> {
    CLUSTERS.iter().position(|&c| c == name)
}

fn config(yaml: &str) -> RouteConfig {
    match serde_norway::from_str(yaml) {
        Ok(cfg) => cfg,
        Err(e) => panic!("bad test yaml: {e}\n{yaml}"),
    }
}

fn table(yaml: &str) -> RouteTable {
    match RouteTable::build(&config(yaml), "routes[0]", &cluster_index) {
        Ok(t) => t,
        Err(e) => panic!("build failed:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match RouteTable::build(&config(yaml), "routes[0]", &cluster_index) {
        Ok(_) => panic!("build succeeded:\n{yaml}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// A request for tests: `url` is `authority/path?query`.
struct Req {
    authority: String,
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    peer_ip: IpAddr,
}

impl Req {
    fn new(url: &str) -> Req {
        let (authority, rest) = match url.find('/') {
            Some(i) => url.split_at(i),
            None => (url, "/"),
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (rest, None),
        };
        Req {
            authority: authority.to_string(),
            method: Method::GET,
            path: path.to_string(),
            query,
            headers: HeaderMap::new(),
            peer_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Req {
        let value = HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("?"));
        self.headers.append(name, value);
        self
    }

    fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }

    fn peer(mut self, ip: IpAddr) -> Req {
        self.peer_ip = ip;
        self
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            authority: &self.authority,
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            peer_ip: self.peer_ip,
        }
    }
}

/// The name of the route `req` reaches, "" for an unnamed one, None for no
/// route.
fn route_name<'t>(t: &'t RouteTable, req: &Req) -> Option<&'t str> {
    t.find(&req.view()).map(|r| r.name().unwrap_or(""))
}

fn vhost_of(t: &RouteTable, url: &str) -> Option<String> {
    t.find(&Req::new(url).view())
        .map(|r| r.virtual_host().to_string())
}

fn only_route<'t>(t: &'t RouteTable, url: &str) -> &'t Route {
    match t.find(&Req::new(url).view()) {
        Some(r) => r,
        None => panic!("no route for {url}"),
    }
}

#[test]
fn tables_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<RouteTable>();
}

// === Virtual host selection ===

const DOMAINS: &str = r#"
name: r
virtual_hosts:
- {name: exact, domains: [example.com, "Mixed.Case.com"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: port, domains: ["example.com:8080", "[::1]:9000"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: ipv6, domains: ["[::1]"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: star-dot, domains: ["*.example.com"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: star-bar, domains: ["*-bar.example.com"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: star-deep, domains: ["*.api.example.com"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: api-star, domains: ["api.*"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: api-v2-star, domains: ["api.v2.*"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: ""}, route: {cluster: a}}]}
"#;

#[test]
fn virtual_host_precedence() {
    let t = table(DOMAINS);
    let cases = [
        ("example.com", "exact"),
        ("EXAMPLE.COM", "exact"),
        ("mixed.case.com", "exact"),
        ("www.example.com", "star-dot"),
        ("foo-bar.example.com", "star-bar"),
        ("x.api.example.com", "star-deep"),
        // Suffix wildcards beat prefix wildcards.
        ("api.example.com", "star-dot"),
        ("api.other.org", "api-star"),
        ("api.v2.other.org", "api-v2-star"),
        // A wildcard must cover at least one character.
        (".example.com", "default"),
        ("-bar.example.com", "star-dot"),
        ("api.", "default"),
        ("other.org", "default"),
        ("", "default"),
    ];
    for (authority, want) in cases {
        assert_eq!(
            vhost_of(&t, authority).as_deref(),
            Some(want),
            "{authority}"
        );
    }
}

#[test]
fn virtual_host_ports() {
    let t = table(DOMAINS);
    let cases = [
        ("example.com:8080", "port"),
        ("Example.Com:8080", "port"),
        // No domain carries this port: tried again without it.
        ("example.com:9090", "exact"),
        ("www.example.com:443", "star-dot"),
        ("api.other.org:80", "api-star"),
        ("[::1]:9000", "port"),
        ("[::1]:9001", "ipv6"),
        ("[::1]", "ipv6"),
        ("other.org:8080", "default"),
    ];
    for (authority, want) in cases {
        assert_eq!(
            vhost_of(&t, authority).as_deref(),
            Some(want),
            "{authority}"
        );
    }
}

#[test]
fn no_default_host_means_no_route() {
    let t = table(
        r#"
name: r
virtual_hosts:
- {name: only, domains: [example.com], routes: [{match: {prefix: /}, route: {cluster: a}}]}
"#,
    );
    assert!(vhost_of(&t, "example.com").is_some());
    assert!(vhost_of(&t, "example.org").is_none());
    assert!(vhost_of(&t, "example.com:80").is_some());
    assert!(table("name: empty").find(&Req::new("x/").view()).is_none());
}

// === Path matching ===

#[test]
fn path_matchers() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: exact, match: {path: /exact}, route: {cluster: a}}
  - {name: exact-ci, match: {path: /Exact-CI, case_sensitive: false}, route: {cluster: a}}
  - {name: regex, match: {regex: "/items/[0-9]+"}, route: {cluster: a}}
  - {name: regex-ci, match: {regex: "/ci/[a-z]+", case_sensitive: false}, route: {cluster: a}}
  - {name: prefix, match: {prefix: /api/}, route: {cluster: a}}
  - {name: prefix-ci, match: {prefix: /Docs, case_sensitive: false}, route: {cluster: a}}
  - {name: alternation, match: {regex: "/a|/ab"}, route: {cluster: a}}
  - {name: all, match: {prefix: ""}, route: {cluster: a}}
"#,
    );
    let cases = [
        ("h/exact", "exact"),
        ("h/exact?x=1", "exact"),
        ("h/exact/", "all"),
        ("h/EXACT", "all"),
        ("h/exact-ci", "exact-ci"),
        ("h/EXACT-ci", "exact-ci"),
        ("h/items/42", "regex"),
        ("h/items/42?page=2", "regex"),
        // Full match only, not a search.
        ("h/items/42/x", "all"),
        ("h/x/items/42", "all"),
        ("h/ci/ABC", "regex-ci"),
        ("h/api/v1", "prefix"),
        ("h/api", "all"),
        ("h/API/v1", "all"),
        ("h/docs/x", "prefix-ci"),
        ("h/DOCS", "prefix-ci"),
        // Anchoring wraps the whole alternation.
        ("h/ab", "alternation"),
        ("h/abc", "all"),
        ("h/", "all"),
    ];
    for (url, want) in cases {
        assert_eq!(route_name(&t, &Req::new(url)), Some(want), "{url}");
    }
}

#[test]
fn first_match_wins() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: first, match: {prefix: /a}, route: {cluster: a}}
  - {name: second, match: {prefix: /a/b}, route: {cluster: b}}
  - {name: third, match: {path: /a/b}, route: {cluster: c}}
"#,
    );
    assert_eq!(route_name(&t, &Req::new("h/a/b")), Some("first"));
    let Action::Cluster(c) = only_route(&t, "h/a/b").action else {
        panic!("not a cluster action");
    };
    assert_eq!(c, 0);
}

#[test]
fn no_matching_route() {
    let t = table(
        r#"
name: r
virtual_hosts:
- {name: vh, domains: ["*"], routes: [{match: {prefix: /a}, route: {cluster: a}}]}
"#,
    );
    assert!(t.find(&Req::new("h/b").view()).is_none());
}

// === Header matching ===

const HEADERS: &str = r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: exact, match: {prefix: /exact, headers: [{name: x-a, exact: "1"}]}, route: {cluster: a}}
  - {name: exact-empty, match: {prefix: /exact-empty, headers: [{name: x-a, exact: ""}]}, route: {cluster: a}}
  - {name: prefix, match: {prefix: /prefix, headers: [{name: X-A, prefix: ab}]}, route: {cluster: a}}
  - {name: suffix, match: {prefix: /suffix, headers: [{name: x-a, suffix: yz}]}, route: {cluster: a}}
  - {name: contains, match: {prefix: /contains, headers: [{name: x-a, contains: mid}]}, route: {cluster: a}}
  - {name: regex, match: {prefix: /regex, headers: [{name: x-a, regex: "v[0-9]"}]}, route: {cluster: a}}
  - {name: present, match: {prefix: /present, headers: [{name: x-a, present: true}]}, route: {cluster: a}}
  - {name: absent, match: {prefix: /absent, headers: [{name: x-a, present: false}]}, route: {cluster: a}}
  - {name: bare, match: {prefix: /bare, headers: [{name: x-a}]}, route: {cluster: a}}
  - {name: not-exact, match: {prefix: /not-exact, headers: [{name: x-a, exact: "1", invert_match: true}]}, route: {cluster: a}}
  - {name: not-present, match: {prefix: /not-present, headers: [{name: x-a, present: true, invert_match: true}]}, route: {cluster: a}}
  - {name: not-absent, match: {prefix: /not-absent, headers: [{name: x-a, present: false, invert_match: true}]}, route: {cluster: a}}
  - {name: both, match: {prefix: /both, headers: [{name: x-a, exact: "1"}, {name: x-b, exact: "2"}]}, route: {cluster: a}}
  - {name: method, match: {prefix: /method, headers: [{name: ":method", exact: POST}]}, route: {cluster: a}}
  - {name: authority, match: {prefix: /authority, headers: [{name: ":authority", suffix: ".org"}]}, route: {cluster: a}}
  - {name: host, match: {prefix: /host, headers: [{name: host, exact: "h.org"}]}, route: {cluster: a}}
  - {name: path, match: {prefix: /path, headers: [{name: ":path", exact: "/path?q=1"}]}, route: {cluster: a}}
"#;

/// (path, request headers, whether the route named after the path matches)
type HeaderCase = (&'static str, &'static [(&'static str, &'static str)], bool);

#[test]
fn header_matchers() {
    let t = table(HEADERS);
    let none: &[(&str, &str)] = &[];
    let cases: Vec<HeaderCase> = vec![
        ("/exact", &[("x-a", "1")], true),
        ("/exact", &[("x-a", "10")], false),
        ("/exact", none, false),
        ("/exact-empty", &[("x-a", "")], true),
        ("/exact-empty", none, false),
        ("/prefix", &[("x-a", "abc")], true),
        ("/prefix", &[("x-a", "xab")], false),
        ("/suffix", &[("x-a", "xyz")], true),
        ("/suffix", &[("x-a", "yzx")], false),
        ("/contains", &[("x-a", "amidst")], true),
        ("/contains", &[("x-a", "mi-d")], false),
        ("/regex", &[("x-a", "v2")], true),
        // Full match: a search would accept these.
        ("/regex", &[("x-a", "v22")], false),
        ("/regex", &[("x-a", "xv2")], false),
        ("/present", &[("x-a", "")], true),
        ("/present", none, false),
        ("/absent", none, true),
        ("/absent", &[("x-a", "1")], false),
        ("/bare", &[("x-a", "anything")], true),
        ("/bare", none, false),
        ("/not-exact", &[("x-a", "2")], true),
        ("/not-exact", &[("x-a", "1")], false),
        // Envoy: a missing header fails every value matcher, inverted too.
        ("/not-exact", none, false),
        ("/not-present", none, true),
        ("/not-present", &[("x-a", "1")], false),
        ("/not-absent", &[("x-a", "1")], true),
        ("/not-absent", none, false),
        ("/both", &[("x-a", "1"), ("x-b", "2")], true),
        ("/both", &[("x-a", "1")], false),
        // Several values are joined with "," before matching.
        ("/exact", &[("x-a", "1"), ("x-a", "2")], false),
        ("/prefix", &[("x-a", "ab"), ("x-a", "zz")], true),
        ("/suffix", &[("x-a", "x"), ("x-a", "yz")], true),
        ("/contains", &[("x-a", "m"), ("x-a", "id")], false),
        ("/regex", &[("x-a", "v1"), ("x-a", "v2")], false),
    ];
    for (path, headers, want) in cases {
        let mut req = Req::new(&format!("h{path}"));
        for &(n, v) in headers {
            req = req.header(n, v);
        }
        let got = route_name(&t, &req) == Some(&path[1..]);
        assert_eq!(got, want, "{path} with {headers:?}");
    }
}

#[test]
fn pseudo_header_matchers() {
    let t = table(HEADERS);
    let post = Req::new("h/method").method(Method::POST);
    assert_eq!(route_name(&t, &post), Some("method"));
    assert_eq!(route_name(&t, &Req::new("h/method")), None);
    assert_eq!(
        route_name(&t, &Req::new("h.org/authority")),
        Some("authority")
    );
    assert_eq!(route_name(&t, &Req::new("h.com/authority")), None);
    assert_eq!(route_name(&t, &Req::new("h.org/host")), Some("host"));
    assert_eq!(route_name(&t, &Req::new("h/path?q=1")), Some("path"));
    assert_eq!(route_name(&t, &Req::new("h/path?q=2")), None);
}

// === Query parameters ===

#[test]
fn query_matchers() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: exact, match: {prefix: /exact, query_parameters: [{name: debug, exact: "1"}]}, route: {cluster: a}}
  - {name: regex, match: {prefix: /regex, query_parameters: [{name: id, regex: "[0-9]+"}]}, route: {cluster: a}}
  - {name: present, match: {prefix: /present, query_parameters: [{name: flag, present: true}]}, route: {cluster: a}}
  - {name: absent, match: {prefix: /absent, query_parameters: [{name: flag, present: false}]}, route: {cluster: a}}
  - {name: bare, match: {prefix: /bare, query_parameters: [{name: flag}]}, route: {cluster: a}}
  - {name: raw, match: {prefix: /raw, query_parameters: [{name: q, exact: "a%20b"}]}, route: {cluster: a}}
  - {name: two, match: {prefix: /two, query_parameters: [{name: a, exact: "1"}, {name: b, exact: "2"}]}, route: {cluster: a}}
"#,
    );
    let cases = [
        ("/exact?debug=1", true),
        ("/exact?x=2&debug=1", true),
        ("/exact?debug=10", false),
        ("/exact?debug", false),
        ("/exact", false),
        // The first occurrence decides.
        ("/exact?debug=0&debug=1", false),
        ("/regex?id=123", true),
        ("/regex?id=12a", false),
        ("/regex?id=", false),
        ("/present?flag", true),
        ("/present?flag=", true),
        ("/present?a=1&flag=x", true),
        ("/present?flags=1", false),
        ("/present?", false),
        ("/absent", true),
        ("/absent?other=1", true),
        ("/absent?flag=1", false),
        ("/bare?flag=0", true),
        ("/bare", false),
        // Raw, not percent-decoded.
        ("/raw?q=a%20b", true),
        ("/raw?q=a b", false),
        ("/two?b=2&a=1", true),
        ("/two?a=1", false),
        ("/two?a=1&&b=2", true),
    ];
    for (url, want) in cases {
        let req = Req::new(&format!("h{url}"));
        let name = url[1..].split('?').next().unwrap_or("");
        assert_eq!(route_name(&t, &req) == Some(name), want, "{url}");
    }
}

// === Actions ===

#[test]
fn weighted_clusters_split() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: {prefix: ""}
    route:
      weighted_clusters: [{name: a, weight: 75}, {name: d, weight: 0}, {name: c, weight: 25}]
"#,
    );
    let Action::Weighted(w) = &only_route(&t, "h/").action else {
        panic!("not weighted");
    };
    assert_eq!(w.total_weight(), 100);
    let mut counts = [0u32; 4];
    for r in 0..1_000 {
        counts[w.pick(r)] += 1;
    }
    assert_eq!(counts, [750, 0, 250, 0]);
}

#[test]
fn direct_response() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {path: /health}, direct_response: {status: 200, body: ok}}
  - {match: {prefix: ""}, direct_response: {status: 503}}
"#,
    );
    let Action::Direct(d) = &only_route(&t, "h/health").action else {
        panic!("not direct");
    };
    assert_eq!((d.status, &d.body[..]), (StatusCode::OK, &b"ok"[..]));
    let Action::Direct(d) = &only_route(&t, "h/x").action else {
        panic!("not direct");
    };
    assert_eq!(
        (d.status, d.body.len()),
        (StatusCode::SERVICE_UNAVAILABLE, 0)
    );
    assert_eq!(only_route(&t, "h/x").timeout, None);
}

#[test]
fn timeouts() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {path: /default}, route: {cluster: a}}
  - {match: {path: /off}, route: {cluster: a, timeout: 0s}}
  - {match: {path: /short}, route: {cluster: a, timeout: 250ms}}
"#,
    );
    assert_eq!(
        only_route(&t, "h/default").timeout,
        Some(Duration::from_secs(15))
    );
    assert_eq!(only_route(&t, "h/off").timeout, None);
    assert_eq!(
        only_route(&t, "h/short").timeout,
        Some(Duration::from_millis(250))
    );
}

#[test]
fn host_rewrite() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {path: /a}, route: {cluster: a, host_rewrite: "backend.internal:8443"}}
  - {match: {path: /b}, route: {cluster: a}}
"#,
    );
    assert_eq!(
        only_route(&t, "h/a").host_rewrite,
        Some(HeaderValue::from_static("backend.internal:8443"))
    );
    assert_eq!(only_route(&t, "h/b").host_rewrite, None);
}

// === Path rewrite ===

#[test]
fn rewrite_path() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {prefix: /api/v1/}, route: {cluster: a, prefix_rewrite: /v1/}}
  - {match: {prefix: /API/, case_sensitive: false}, route: {cluster: a, prefix_rewrite: /}}
  - {match: {path: /old}, route: {cluster: a, prefix_rewrite: /new}}
  - {match: {regex: "/r/[0-9]+"}, route: {cluster: a, prefix_rewrite: /numbers}}
  - {match: {prefix: /strip}, route: {cluster: a, prefix_rewrite: ""}}
  - {match: {prefix: /}, route: {cluster: a}}
"#,
    );
    let cases = [
        ("/api/v1/users", Some("/v1/users")),
        ("/api/v1/users?id=7&x", Some("/v1/users?id=7&x")),
        ("/Api/things", Some("/things")),
        ("/old", Some("/new")),
        ("/old?keep=1", Some("/new?keep=1")),
        ("/r/123?a=b", Some("/numbers?a=b")),
        ("/strip/me", Some("/me")),
        ("/strip", Some("/")),
        ("/other", None),
    ];
    for (url, want) in cases {
        let req = Req::new(&format!("h{url}"));
        let route = match t.find(&req.view()) {
            Some(r) => r,
            None => panic!("no route for {url}"),
        };
        assert_eq!(route.rewrite_path(&req.view()).as_deref(), want, "{url}");
    }
}

// === Redirects ===

fn redirect_table(redirect: &str) -> RouteTable {
    table(&format!(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {{match: {{prefix: /old/}}, redirect: {redirect}}}
"#
    ))
}

fn location(t: &RouteTable, url: &str, scheme: &str) -> (u16, String) {
    let req = Req::new(url);
    let route = match t.find(&req.view()) {
        Some(r) => r,
        None => panic!("no route for {url}"),
    };
    let Action::Redirect(r) = &route.action else {
        panic!("not a redirect");
    };
    let (status, value) = r.respond(&req.view(), scheme);
    (
        status.as_u16(),
        value.to_str().unwrap_or("<opaque>").to_string(),
    )
}

#[test]
fn redirect_locations() {
    let cases = [
        // (redirect config, request, request scheme, status, Location)
        ("{}", "h.com/old/x?a=1", "http", 301, "http://h.com/old/x?a=1"),
        ("{https_redirect: true}", "h.com/old/x?a=1", "http", 301, "https://h.com/old/x?a=1"),
        ("{https_redirect: true}", "h.com:80/old/x", "http", 301, "https://h.com/old/x"),
        ("{https_redirect: true}", "h.com:8080/old/x", "http", 301, "https://h.com:8080/old/x"),
        ("{scheme_redirect: HTTP}", "h.com:443/old/x", "https", 301, "http://h.com/old/x"),
        ("{scheme_redirect: http}", "h.com:80/old/x", "http", 301, "http://h.com:80/old/x"),
        ("{scheme_redirect: https}", "[::1]:80/old/x", "http", 301, "https://[::1]/old/x"),
        ("{host_redirect: new.org}", "h.com:8080/old/x", "http", 301, "http://new.org/old/x"),
        ("{host_redirect: \"new.org:81\"}", "h.com/old/x", "http", 301, "http://new.org:81/old/x"),
        ("{port_redirect: 8443}", "h.com:8080/old/x", "https", 301, "https://h.com:8443/old/x"),
        ("{port_redirect: 8443}", "h.com/old/x", "https", 301, "https://h.com:8443/old/x"),
        ("{port_redirect: 9, host_redirect: \"n.org:81\"}", "h.com/old/x", "http", 301, "http://n.org:9/old/x"),
        ("{https_redirect: true, port_redirect: 8443}", "h.com:8080/old/", "http", 301, "https://h.com:8443/old/"),
        ("{path_redirect: /new}", "h.com/old/x?a=1", "http", 301, "http://h.com/new?a=1"),
        ("{path_redirect: \"/new?b=2\"}", "h.com/old/x?a=1", "http", 301, "http://h.com/new?b=2"),
        ("{path_redirect: \"/new?b=2\", strip_query: true}", "h.com/old/x?a=1", "http", 301, "http://h.com/new?b=2"),
        ("{prefix_rewrite: /new/}", "h.com/old/x/y?a=1", "http", 301, "http://h.com/new/x/y?a=1"),
        ("{prefix_rewrite: /}", "h.com/old/", "http", 301, "http://h.com/"),
        ("{strip_query: true}", "h.com/old/x?a=1", "http", 301, "http://h.com/old/x"),
        ("{response_code: 302}", "h.com/old/x", "http", 302, "http://h.com/old/x"),
        ("{response_code: 303}", "h.com/old/x", "http", 303, "http://h.com/old/x"),
        ("{response_code: 307}", "h.com/old/x", "http", 307, "http://h.com/old/x"),
        ("{response_code: 308, https_redirect: true, host_redirect: n.org, path_redirect: /p, strip_query: true}",
            "h.com/old/x?a=1", "http", 308, "https://n.org/p"),
        // No authority at all: a relative reference.
        ("{path_redirect: /new}", "/old/x?a=1", "http", 301, "/new?a=1"),
    ];
    for (redirect, url, scheme, status, want) in cases {
        let t = redirect_table(redirect);
        assert_eq!(
            location(&t, url, scheme),
            (status, want.to_string()),
            "{redirect} for {scheme}://{url}"
        );
    }
}

#[test]
fn redirect_prefix_rewrite_of_exact_and_regex_replaces_the_path() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {path: /a}, redirect: {prefix_rewrite: /b}}
  - {match: {regex: "/r/.*"}, redirect: {prefix_rewrite: /s}}
"#,
    );
    assert_eq!(location(&t, "h/a?x", "http").1, "http://h/b?x");
    assert_eq!(location(&t, "h/r/1/2", "http").1, "http://h/s");
}

// === Header operations ===

#[test]
fn header_ops_merge_virtual_host_then_route() {
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  request_headers_to_add:
  - {name: x-vh, value: "1"}
  - {name: x-both, value: vh, append: false}
  - {name: x-gone, value: vh}
  request_headers_to_remove: [x-drop]
  response_headers_to_add: [{name: x-served-by, value: ferry}]
  routes:
  - match: {prefix: /}
    route: {cluster: a}
    request_headers_to_add:
    - {name: x-both, value: route, append: false}
    - {name: x-route, value: "2"}
    request_headers_to_remove: [x-gone]
    response_headers_to_remove: [server]
"#,
    );
    let route = only_route(&t, "h/");
    let mut headers = HeaderMap::new();
    for (n, v) in [
        ("x-drop", "d"),
        ("x-both", "orig"),
        ("x-gone", "orig"),
        ("x-vh", "0"),
    ] {
        headers.insert(n, HeaderValue::from_static(v));
    }
    route.request_headers.apply(&mut headers);
    let get = |n: &str| -> Vec<&str> {
        headers
            .get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    assert_eq!(get("x-drop"), Vec::<&str>::new());
    assert_eq!(get("x-vh"), ["0", "1"]);
    assert_eq!(get("x-both"), ["route"]);
    // The route's removal also cancels the virtual host's addition.
    assert_eq!(get("x-gone"), Vec::<&str>::new());
    assert_eq!(get("x-route"), ["2"]);

    let mut response = HeaderMap::new();
    response.insert("server", HeaderValue::from_static("upstream"));
    route.response_headers.apply(&mut response);
    assert!(response.get("server").is_none());
    assert_eq!(
        response.get("x-served-by"),
        Some(&HeaderValue::from_static("ferry"))
    );
}

// === Hash policies ===

fn hash_table(policies: &str) -> RouteTable {
    table(&format!(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {{match: {{prefix: /}}, route: {{cluster: a, hash_policy: {policies}}}}}
"#
    ))
}

fn hash_of(t: &RouteTable, req: &Req) -> Option<u64> {
    t.find(&req.view()).and_then(|r| r.hash(&req.view()))
}

fn xxh(s: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(s.as_bytes(), 0)
}

// Spelled as Envoy spells it, to check the rotate against the reference.
#[allow(clippy::manual_rotate)]
fn combine(h: u64, new: u64) -> u64 {
    ((h << 1) | (h >> 63)) ^ new
}

#[test]
fn hash_single_policies() {
    let header = hash_table("[{header: {header_name: x-user}}]");
    let req = Req::new("h/").header("x-user", "alice");
    assert_eq!(hash_of(&header, &req), Some(xxh("alice")));
    assert_eq!(hash_of(&header, &Req::new("h/")), None);
    // Several values: sorted and chained, so their order does not matter.
    let ab = Req::new("h/").header("x-user", "a").header("x-user", "b");
    let ba = Req::new("h/").header("x-user", "b").header("x-user", "a");
    let chained = xxhash_rust::xxh64::xxh64(b"b", xxh("a"));
    assert_eq!(hash_of(&header, &ab), Some(chained));
    assert_eq!(hash_of(&header, &ba), Some(chained));

    let authority = hash_table("[{header: {header_name: \":authority\"}}]");
    assert_eq!(
        hash_of(&authority, &Req::new("svc.local/")),
        Some(xxh("svc.local"))
    );

    let cookie = hash_table("[{cookie: {name: session}}]");
    let req = Req::new("h/").header("cookie", "a=1; session=abc; b=2");
    assert_eq!(hash_of(&cookie, &req), Some(xxh("abc")));
    let split = Req::new("h/")
        .header("cookie", "a=1")
        .header("cookie", "session=\"q\"");
    assert_eq!(hash_of(&cookie, &split), Some(xxh("q")));
    let other = Req::new("h/").header("cookie", "sessionx=abc");
    assert_eq!(hash_of(&cookie, &other), None);

    let ip = hash_table("[{connection_properties: {source_ip: true}}]");
    assert_eq!(hash_of(&ip, &Req::new("h/")), Some(xxh("10.1.2.3")));
    let v6 = Req::new("h/").peer(IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(hash_of(&ip, &v6), Some(xxh("::1")));
    let no_ip = hash_table("[{connection_properties: {source_ip: false}}]");
    assert_eq!(hash_of(&no_ip, &Req::new("h/")), None);

    let query = hash_table("[{query_parameter: {name: user}}]");
    assert_eq!(
        hash_of(&query, &Req::new("h/?x=1&user=bob")),
        Some(xxh("bob"))
    );
    assert_eq!(hash_of(&query, &Req::new("h/?x=1")), None);
    assert_eq!(hash_of(&query, &Req::new("h/")), None);

    let none = table(
        "name: r\nvirtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a}}]}]",
    );
    assert_eq!(hash_of(&none, &Req::new("h/?user=bob")), None);
}

#[test]
fn hash_policies_combine_and_stop_at_terminal() {
    let both = hash_table("[{header: {header_name: x-a}}, {query_parameter: {name: q}}]");
    let req = Req::new("h/?q=2").header("x-a", "1");
    assert_eq!(hash_of(&both, &req), Some(combine(xxh("1"), xxh("2"))));
    // Policies without a value are skipped.
    assert_eq!(hash_of(&both, &Req::new("h/?q=2")), Some(xxh("2")));
    // The same policy twice does not cancel out.
    let twice = hash_table("[{header: {header_name: x-a}}, {header: {header_name: x-a}}]");
    let req = Req::new("h/").header("x-a", "1");
    assert_eq!(hash_of(&twice, &req), Some(combine(xxh("1"), xxh("1"))));
    assert_ne!(hash_of(&twice, &req), Some(0));

    let terminal =
        hash_table("[{header: {header_name: x-a}, terminal: true}, {query_parameter: {name: q}}]");
    let req = Req::new("h/?q=2").header("x-a", "1");
    assert_eq!(hash_of(&terminal, &req), Some(xxh("1")));
    // A terminal policy without a value falls through to the next.
    assert_eq!(hash_of(&terminal, &Req::new("h/?q=2")), Some(xxh("2")));

    // Envoy stops at a terminal policy once any hash exists, even when that
    // policy itself produced none.
    let later = hash_table(
        "[{header: {header_name: x-a}}, {cookie: {name: c}, terminal: true}, {query_parameter: {name: q}}]",
    );
    let req = Req::new("h/?q=2").header("x-a", "1");
    assert_eq!(hash_of(&later, &req), Some(xxh("1")));
}

// === Errors ===

#[test]
fn invalid_regex_error_names_the_field() {
    let errs = errors(
        r#"
name: r
virtual_hosts:
- {name: a, domains: [a.com], routes: [{match: {prefix: /}, route: {cluster: a}}]}
- name: b
  domains: [b.com]
  routes:
  - {match: {prefix: /0}, route: {cluster: a}}
  - {match: {prefix: /1}, route: {cluster: a}}
  - {match: {prefix: /2}, route: {cluster: a}}
  - {match: {regex: "/items/(["}, route: {cluster: a}}
"#,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("routes[0].virtual_hosts[1].routes[3].match.regex: invalid regex: "),
        "{}",
        errs[0]
    );
    assert!(!errs[0].contains('\n'), "{}", errs[0]);
}

#[test]
fn regex_that_only_parses_once_wrapped_is_rejected() {
    let errs = errors(
        r#"
name: r
virtual_hosts:
- {name: a, domains: ["*"], routes: [{match: {regex: "a)|(b"}, route: {cluster: a}}]}
"#,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("routes[0].virtual_hosts[0].routes[0].match.regex: invalid regex: ")
    );
}

#[test]
fn all_errors_are_reported_with_their_paths() {
    let errs = errors(
        r#"
name: r
virtual_hosts:
- name: v0
  domains: [a.com, ""]
  request_headers_to_add: [{name: "bad name", value: x}, {name: host, value: x}]
  request_headers_to_remove: [host]
  response_headers_to_add: [{name: x-ok, value: "bad\u0001value"}]
  routes:
  - {match: {prefix: /, path: /x}, route: {cluster: a}}
  - {match: {}, route: {cluster: a}}
  - {match: {prefix: /}, route: {cluster: x}}
  - match: {prefix: /}
    route:
      weighted_clusters: [{name: a, weight: 1}, {name: nope, weight: 1}]
  - {match: {prefix: /}, route: {weighted_clusters: [{name: a, weight: 0}]}}
  - {match: {prefix: /}, route: {weighted_clusters: []}}
  - {match: {prefix: /}, route: {cluster: a, weighted_clusters: [{name: a, weight: 1}]}}
  - {match: {prefix: /}, route: {}}
  - {match: {prefix: /}}
  - {match: {prefix: /}, route: {cluster: a}, direct_response: {status: 200}}
  - {match: {prefix: /}, direct_response: {status: 99}}
  - {match: {prefix: /}, direct_response: {status: 600}}
  - {match: {prefix: /}, redirect: {response_code: 200}}
  - {match: {prefix: /}, redirect: {scheme_redirect: https, https_redirect: true}}
  - {match: {prefix: /}, redirect: {path_redirect: /a, prefix_rewrite: /b}}
  - {match: {prefix: /}, redirect: {path_redirect: "no-slash", host_redirect: "bad host", port_redirect: 0}}
  - {match: {prefix: /}, redirect: {scheme_redirect: "1http"}}
  - match:
      prefix: /
      headers:
      - {name: "bad name", exact: x}
      - {name: x-a, regex: "("}
      - {name: x-a, exact: x, prefix: y}
      - {name: x-a, prefix: ""}
      - {name: ":scheme", exact: https}
      query_parameters:
      - {name: q, regex: "[z-a]"}
      - {name: "", exact: x}
      - {name: q, exact: x, present: true}
    route: {cluster: a}
  - match: {prefix: /}
    route:
      cluster: a
      host_rewrite: "bad host"
      prefix_rewrite: "/a b"
      hash_policy:
      - {}
      - {header: {header_name: "bad name"}}
      - {cookie: {name: ""}}
      - {query_parameter: {name: q}, cookie: {name: c}}
    request_headers_to_remove: ["bad name"]
    response_headers_to_add: [{name: ":status", value: "200"}]
- name: v1
  domains: [A.com, "*"]
  routes: []
- name: v2
  domains: ["*"]
- name: v3
  domains: []
"#,
    );
    let p = "routes[0].virtual_hosts[0]";
    let want = [
        format!("{p}.domains[1]: must not be empty"),
        format!("{p}.request_headers_to_add[1].name: the Host header cannot be set here; use route.host_rewrite"),
        format!("{p}.request_headers_to_remove[0]: the Host header cannot be removed"),
        format!("{p}.request_headers_to_add[0].name: invalid header name \"bad name\""),
        format!("{p}.response_headers_to_add[0].value: invalid header value \"bad\\u{{1}}value\""),
        format!("{p}.routes[0].match: exactly one of prefix, path, regex must be set (found: prefix, path)"),
        format!("{p}.routes[1].match: exactly one of prefix, path, regex must be set (found: none)"),
        format!("{p}.routes[2].route.cluster: unknown cluster \"x\""),
        format!("{p}.routes[3].route.weighted_clusters[1].name: unknown cluster \"nope\""),
        format!("{p}.routes[4].route.weighted_clusters: total weight must be greater than 0"),
        format!("{p}.routes[5].route.weighted_clusters: at least one cluster is required"),
        format!("{p}.routes[6].route: exactly one of cluster, weighted_clusters must be set (found: cluster, weighted_clusters)"),
        format!("{p}.routes[7].route: exactly one of cluster, weighted_clusters must be set (found: none)"),
        format!("{p}.routes[8]: exactly one of route, redirect, direct_response must be set (found: none)"),
        format!("{p}.routes[9]: exactly one of route, redirect, direct_response must be set (found: route, direct_response)"),
        format!("{p}.routes[10].direct_response.status: invalid status 99 (use 200-599)"),
        format!("{p}.routes[11].direct_response.status: invalid status 600 (use 200-599)"),
        format!("{p}.routes[12].redirect.response_code: invalid redirect code 200 (use 301, 302, 303, 307 or 308)"),
        format!("{p}.routes[13].redirect: scheme_redirect and https_redirect are exclusive"),
        format!("{p}.routes[14].redirect: path_redirect and prefix_rewrite are exclusive"),
        format!("{p}.routes[15].redirect.host_redirect: invalid host \"bad host\""),
        format!("{p}.routes[15].redirect.port_redirect: port must be 1-65535"),
        format!("{p}.routes[15].redirect.path_redirect: path \"no-slash\" must start with \"/\""),
        format!("{p}.routes[16].redirect.scheme_redirect: invalid scheme \"1http\""),
        format!("{p}.routes[17].match.headers[0].name: invalid header name \"bad name\""),
        format!("{p}.routes[17].match.headers[1].regex: invalid regex: unclosed group"),
        format!("{p}.routes[17].match.headers[2]: at most one of exact, prefix, suffix, contains, regex, present must be set (found: exact, prefix)"),
        format!("{p}.routes[17].match.headers[3].prefix: must not be empty"),
        format!("{p}.routes[17].match.headers[4].name: unsupported pseudo-header \":scheme\""),
        format!("{p}.routes[17].match.query_parameters[0].regex: invalid regex: invalid character class range, the start must be <= the end"),
        format!("{p}.routes[17].match.query_parameters[1].name: must not be empty"),
        format!("{p}.routes[17].match.query_parameters[2]: at most one of exact, regex, present must be set (found: exact, present)"),
        format!("{p}.routes[18].request_headers_to_remove[0]: invalid header name \"bad name\""),
        format!("{p}.routes[18].response_headers_to_add[0].name: invalid header name \":status\""),
        format!("{p}.routes[18].route.prefix_rewrite: invalid character ' ' in path \"/a b\""),
        format!("{p}.routes[18].route.host_rewrite: invalid host \"bad host\""),
        format!("{p}.routes[18].route.hash_policy[0]: exactly one of header, cookie, connection_properties, query_parameter must be set (found: none)"),
        format!("{p}.routes[18].route.hash_policy[1].header.header_name: invalid header name \"bad name\""),
        format!("{p}.routes[18].route.hash_policy[2].cookie.name: must not be empty"),
        format!("{p}.routes[18].route.hash_policy[3]: exactly one of header, cookie, connection_properties, query_parameter must be set (found: cookie, query_parameter)"),
        "routes[0].virtual_hosts[1].domains[0]: duplicate domain \"A.com\" (first in routes[0].virtual_hosts[0].domains[0])".to_string(),
        "routes[0].virtual_hosts[2].domains[0]: duplicate domain \"*\" (first in routes[0].virtual_hosts[1].domains[1])".to_string(),
        "routes[0].virtual_hosts[3].domains: at least one domain is required".to_string(),
    ];
    for (i, (got, want)) in errs.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "error {i}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn never_panics_on_odd_input() {
    let t = table(DOMAINS);
    for authority in [
        "é.example.com",
        "ÉXAMPLE.com:80",
        ":",
        "[",
        "[::1",
        "a:b:c",
        "*",
        "é",
    ] {
        let _ = vhost_of(&t, authority);
    }
    let t = table(
        r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {match: {prefix: /é, case_sensitive: false}, route: {cluster: a, prefix_rewrite: /x}}
  - {match: {prefix: /}, redirect: {https_redirect: true}}
"#,
    );
    for url in ["h/É", "h/éa", "h/", "é:443/é?é"] {
        let req = Req::new(url);
        if let Some(route) = t.find(&req.view()) {
            let _ = route.rewrite_path(&req.view());
            if let Action::Redirect(r) = &route.action {
                let _ = r.respond(&req.view(), "http");
            }
        }
    }
}
