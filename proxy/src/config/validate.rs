//! Semantic checks over a parsed [`Bootstrap`]: every error with its field
//! path, all of them at once.
//!
//! Paths use the same form as the parse errors of [`super::parse_yaml`]
//! (`routes[0].virtual_hosts[1].routes[3].match.regex`), so an operator
//! reads one kind of message whether the file is malformed or merely wrong.
//! The checks follow Envoy's where Envoy has one (duplicate domains, which
//! headers a route may rewrite, Maglev table sizes), so a config that Ferry
//! accepts is one Envoy would accept too, and the xDS translation can reuse
//! this module to NACK what Envoy would NACK.
//!
//! TLS files are read here (not only when listeners start) so that a reload
//! with a missing or empty certificate is rejected before it replaces a
//! working config.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{
    Bootstrap, Cluster, ClusterKind, ConfigError, ConfigErrors, HashPolicy, HeaderMatcher,
    HeaderValueOption, LbPolicy, Listener, ListenerProtocol, ListenerTls, QueryParameterMatcher,
    Redirect, Route, RouteAction, RouteConfig, VirtualHost,
};

/// Envoy's upper bound for `maglev.table_size` (a prime).
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;
/// Envoy's upper bound for `ring_hash.maximum_ring_size`.
const RING_HASH_MAX_SIZE: u64 = 8 * 1024 * 1024;
/// ALPN protocols the HTTP server can speak.
const ALPN_PROTOCOLS: &[&str] = &["h2", "http/1.1"];
/// Pseudo-headers a matcher or hash policy may read: the ones the router
/// can take from the request head (`router::matcher::HeaderSource`).
/// `:scheme` is not among them yet.
const READABLE_PSEUDO_HEADERS: &[&str] = &[":authority", ":method", ":path"];
/// Headers that describe one connection, not the message: the proxy strips
/// them on every hop, so adding them would either be undone or corrupt the
/// framing of the forwarded message.
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Checks everything a parse cannot: references between sections, unique
/// names, addresses, exclusive fields, regexes, header names, TLS files.
/// Returns every problem found, in document order.
pub fn validate(boot: &Bootstrap) -> Result<(), ConfigErrors> {
    let mut v = Validator::new(boot, None);
    v.bootstrap(boot);
    v.xds_section(boot);
    if v.errors.is_empty() {
        // The router compiles what the checks above cannot see (retry
        // policies, rewrite forms); running it here means `--validate`
        // accepts exactly what a load accepts.
        let index: std::collections::HashMap<&str, usize> = boot
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let lookup = |name: &str| index.get(name).copied();
        for (i, rc) in boot.routes.iter().enumerate() {
            if let Err(e) = crate::router::RouteTable::build(rc, &format!("routes[{i}]"), &lookup) {
                v.errors.extend(e.0);
            }
        }
        // Filter configs are the filters' to parse; building the chains is
        // the only complete check.
        let filters = ferry_filters::Registry::builtin();
        for (i, l) in boot.listeners.iter().enumerate() {
            let routes = l.route_config.as_deref().and_then(|name| {
                boot.routes
                    .iter()
                    .enumerate()
                    .find(|(_, rc)| rc.name == name)
                    .map(|(ri, rc)| (ri, &**rc))
            });
            if let Err(e) =
                crate::active::build_filters(&filters, l, &format!("listeners[{i}]"), routes)
            {
                v.errors.extend(e);
            }
        }
    }
    v.finish()
}

/// The route configs and clusters of the last config [`validate_changes`]
/// accepted (and the caller applied), to skip re-checking what did not
/// change. Holding them keeps them alive, so a pointer compare is sound.
#[derive(Default)]
pub struct Validated {
    routes: HashMap<String, Arc<RouteConfig>>,
    clusters: HashMap<String, Arc<Cluster>>,
}

impl Validated {
    /// Remembers `boot` as valid (it passed [`validate_changes`] and was
    /// applied).
    pub fn remember(boot: &Bootstrap) -> Validated {
        Validated {
            routes: boot
                .routes
                .iter()
                .map(|rc| (rc.name.clone(), rc.clone()))
                .collect(),
            clusters: boot
                .clusters
                .iter()
                // Not with TLS: its files are re-read on every check, as
                // the build re-reads them (a reload is how they rotate).
                .filter(|c| c.tls.is_none())
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
        }
    }

    fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.get(name).map(|rc| &**rc)
    }

    fn same_cluster(&self, c: &Arc<Cluster>) -> bool {
        self.clusters
            .get(&c.name)
            .is_some_and(|old| Arc::ptr_eq(old, c) || **old == **c)
    }
}

/// [`validate`] for a config that is mostly the last accepted one (an xDS
/// update): the same checks, reported the same way, except that
/// - a cluster equal to the one in `prev` is not checked again, and of a
///   route config only the virtual hosts that changed are (every route's
///   cluster references, names and domains are checked whole: they depend
///   on the rest of the config);
/// - route tables and filter chains are not compiled here: the build that
///   follows compiles them once, and its errors carry the same paths.
pub fn validate_changes(boot: &Bootstrap, prev: &Validated) -> Result<(), ConfigErrors> {
    let mut v = Validator::new(boot, Some(prev));
    v.bootstrap(boot);
    v.xds_section(boot);
    v.finish()
}

impl<'a> Validator<'a> {
    fn new(boot: &'a Bootstrap, prev: Option<&'a Validated>) -> Self {
        Validator {
            errors: Vec::new(),
            route_names: boot.routes.iter().map(|r| r.name.as_str()).collect(),
            cluster_names: boot.clusters.iter().map(|c| c.name.as_str()).collect(),
            prev,
        }
    }

    fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    fn xds_section(&mut self, boot: &Bootstrap) {
        let Some(x) = &boot.xds else {
            return;
        };
        if !(x.server.starts_with("http://") || x.server.starts_with("https://"))
            || x.server.parse::<http::Uri>().is_err()
        {
            self.err(
                "xds.server",
                format!("invalid server {:?}: use http://host:port", x.server),
            );
        }
        if x.node_id.trim().is_empty() {
            self.err("xds.node_id", "is required");
        }
        if x.cache_dir.as_deref().is_some_and(str::is_empty) {
            self.err("xds.cache_dir", "must not be empty");
        }
    }
}

struct Validator<'a> {
    errors: Vec<ConfigError>,
    /// For reference checks; sets because a mesh config can hold thousands
    /// of clusters, each named by many routes.
    route_names: HashSet<&'a str>,
    cluster_names: HashSet<&'a str>,
    /// What was checked before ([`validate_changes`]); None checks all.
    prev: Option<&'a Validated>,
}

/// Where a header name is used; each use allows different names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderUse {
    /// Read by a matcher or a hash policy.
    Read,
    /// Added by `*_headers_to_add`.
    Add,
    /// Removed by `*_headers_to_remove`.
    Remove,
}

// === impl Validator ===

impl<'a> Validator<'a> {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(path, reason));
    }

    fn bootstrap(&mut self, boot: &'a Bootstrap) {
        // Listener addresses already seen, for the admin server too: two
        // sockets on one address cannot both bind.
        let mut bound: HashMap<SocketAddr, String> = HashMap::new();

        if let Some(admin) = &boot.admin {
            if let Some(addr) = self.socket_addr("admin.address", &admin.address) {
                if addr.port() != 0 {
                    bound.insert(addr, "admin.address".to_string());
                }
            }
        }
        if let Some(log) = &boot.access_log {
            if log.path.trim().is_empty() {
                self.err(
                    "access_log.path",
                    "must not be empty (use stdout, stderr or a file path)",
                );
            }
        }

        self.unique_names(
            "listeners",
            "listener",
            boot.listeners.iter().map(|l| l.name.as_str()),
        );
        for (i, l) in boot.listeners.iter().enumerate() {
            self.listener(&format!("listeners[{i}]"), l, &mut bound);
        }

        self.unique_names(
            "routes",
            "route config",
            boot.routes.iter().map(|r| r.name.as_str()),
        );
        for (i, r) in boot.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            match self.prev.and_then(|p| p.route(&r.name)) {
                // The very config checked before: only what depends on the
                // rest of the config can have become wrong.
                Some(prev) if std::ptr::eq(prev, &**r) => {
                    for (j, vh) in r.virtual_hosts.iter().enumerate() {
                        self.cluster_refs(&path, j, vh);
                    }
                }
                prev => self.route_config(&path, r, prev),
            }
        }

        self.unique_names(
            "clusters",
            "cluster",
            boot.clusters.iter().map(|c| c.name.as_str()),
        );
        for (i, c) in boot.clusters.iter().enumerate() {
            if self.prev.is_some_and(|p| p.same_cluster(c)) {
                continue;
            }
            self.cluster(&format!("clusters[{i}]"), c);
        }
    }

    /// Reports empty and duplicate names of one list, at `{base}[i].name`.
    fn unique_names<'n>(&mut self, base: &str, kind: &str, names: impl Iterator<Item = &'n str>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let path = || format!("{base}[{i}].name");
            if name.is_empty() {
                self.err(path(), "must not be empty");
            } else if let Some(first) = seen.get(name) {
                self.err(
                    path(),
                    format!("duplicate {kind} name {name:?} (first used by {base}[{first}])"),
                );
            } else {
                seen.insert(name, i);
            }
        }
    }

    /// Parses an `ip:port`, reporting a failure at `path`.
    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "invalid address {text:?}: expected ip:port \
                         (127.0.0.1:10000 or [::1]:10000)"
                    ),
                );
                None
            }
        }
    }

    // === Listeners ===

    fn listener(&mut self, path: &str, l: &'a Listener, bound: &mut HashMap<SocketAddr, String>) {
        let addr_path = format!("{path}.address");
        if let Some(addr) = self.socket_addr(&addr_path, &l.address) {
            // Port 0 asks the kernel for a fresh port, so any number of
            // listeners may use it (tests do).
            if addr.port() != 0 {
                if let Some(first) = bound.get(&addr) {
                    let reason = format!("address {addr} is already used by {first}");
                    self.err(addr_path, reason);
                } else {
                    bound.insert(addr, addr_path);
                }
            }
        }

        match l.protocol {
            ListenerProtocol::Http => {
                match &l.route_config {
                    None => self.err(
                        format!("{path}.route_config"),
                        "an http listener needs route_config (the name of an entry in routes)",
                    ),
                    Some(name) => self.route_ref(&format!("{path}.route_config"), name),
                }
                if l.cluster.is_some() {
                    self.err(
                        format!("{path}.cluster"),
                        "only tcp listeners take a cluster; an http listener routes through \
                         route_config",
                    );
                }
                if let Some(tls) = &l.tls {
                    self.listener_tls(&format!("{path}.tls"), tls);
                }
            }
            ListenerProtocol::Tcp => {
                match &l.cluster {
                    None => self.err(
                        format!("{path}.cluster"),
                        "a tcp listener needs cluster (the cluster every connection goes to)",
                    ),
                    Some(name) => self.cluster_ref(&format!("{path}.cluster"), name),
                }
                if l.route_config.is_some() {
                    self.err(
                        format!("{path}.route_config"),
                        "only http listeners take route_config; a tcp listener forwards to \
                         cluster",
                    );
                }
                if l.tls.is_some() {
                    self.err(
                        format!("{path}.tls"),
                        "TLS on tcp listeners is not supported yet; terminate TLS on an http \
                         listener",
                    );
                }
            }
        }
    }

    fn listener_tls(&mut self, path: &str, tls: &ListenerTls) {
        let chain_path = format!("{path}.cert_chain");
        if let Some(reason) = check_cert_file(&tls.cert_chain) {
            self.err(chain_path, reason);
        }
        let key_path = format!("{path}.private_key");
        if let Some(reason) = check_key_file(&tls.private_key) {
            self.err(key_path, reason);
        }

        if tls.alpn.is_empty() {
            self.err(
                format!("{path}.alpn"),
                "must list at least one protocol (h2, http/1.1); omit alpn for both",
            );
        }
        for (i, proto) in tls.alpn.iter().enumerate() {
            let p = format!("{path}.alpn[{i}]");
            if !ALPN_PROTOCOLS.contains(&proto.as_str()) {
                self.err(
                    p,
                    format!("unsupported ALPN protocol {proto:?} (expected h2 or http/1.1)"),
                );
            } else if tls.alpn[..i].contains(proto) {
                self.err(p, format!("duplicate ALPN protocol {proto:?}"));
            }
        }
    }

    fn route_ref(&mut self, path: &str, name: &str) {
        if name.is_empty() {
            self.err(path, "must not be empty");
        } else if !self.route_names.contains(name) {
            self.err(path, format!("unknown route config {name:?}"));
        }
    }

    fn cluster_ref(&mut self, path: &str, name: &str) {
        if name.is_empty() {
            self.err(path, "must not be empty");
        } else if !self.cluster_names.contains(name) {
            self.err(path, format!("unknown cluster {name:?}"));
        }
    }

    // === Routes ===

    /// `prev`: the same-named route config as last accepted; its virtual
    /// hosts that are unchanged (same position, equal) get only the checks
    /// that depend on the rest of the config.
    fn route_config(&mut self, path: &str, rc: &RouteConfig, prev: Option<&RouteConfig>) {
        self.unique_names(
            &format!("{path}.virtual_hosts"),
            "virtual host",
            rc.virtual_hosts.iter().map(|v| v.name.as_str()),
        );
        // Envoy rejects a domain served by two virtual hosts (or listed
        // twice): which one wins would depend on declaration order.
        // Host matching ignores case, so duplicates do too.
        let mut domains: HashMap<String, String> = HashMap::new();
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vh_path = format!("{path}.virtual_hosts[{i}]");
            self.domains(&vh_path, vh, &mut domains);
            let unchanged = prev
                .and_then(|p| p.virtual_hosts.get(i))
                .is_some_and(|p| Arc::ptr_eq(p, vh) || **p == **vh);
            if unchanged {
                self.cluster_refs(path, i, vh);
            } else {
                self.virtual_host(&vh_path, vh);
            }
        }
    }

    /// The cluster references of virtual host `i` of the route config at
    /// `path`: what an unchanged virtual host may still get wrong when
    /// clusters go away. Paths are only formatted for an error.
    fn cluster_refs(&mut self, path: &str, i: usize, vh: &VirtualHost) {
        for (j, r) in vh.routes.iter().enumerate() {
            let Some(a) = &r.route else {
                continue;
            };
            let at = |field: &str| format!("{path}.virtual_hosts[{i}].routes[{j}].route.{field}");
            if let Some(name) = &a.cluster {
                if name.is_empty() || !self.cluster_names.contains(name.as_str()) {
                    self.cluster_ref(&at("cluster"), name);
                }
            }
            for (k, w) in a.weighted_clusters.iter().flatten().enumerate() {
                if w.name.is_empty() || !self.cluster_names.contains(w.name.as_str()) {
                    self.cluster_ref(&at(&format!("weighted_clusters[{k}].name")), &w.name);
                }
            }
        }
    }

    fn domains(&mut self, path: &str, vh: &VirtualHost, seen: &mut HashMap<String, String>) {
        if vh.domains.is_empty() {
            self.err(
                format!("{path}.domains"),
                "at least one domain is required (use \"*\" to match every host)",
            );
        }
        for (i, domain) in vh.domains.iter().enumerate() {
            let p = format!("{path}.domains[{i}]");
            if let Err(reason) = check_domain(domain) {
                self.err(p, reason);
                continue;
            }
            let key = domain.to_ascii_lowercase();
            if let Some(first) = seen.get(&key) {
                let reason = format!("duplicate domain {domain:?} (also in {first})");
                self.err(p, reason);
            } else {
                seen.insert(key, p);
            }
        }
    }

    fn virtual_host(&mut self, path: &str, vh: &VirtualHost) {
        self.headers_to_add(
            &format!("{path}.request_headers_to_add"),
            &vh.request_headers_to_add,
        );
        self.headers_to_remove(
            &format!("{path}.request_headers_to_remove"),
            &vh.request_headers_to_remove,
        );
        self.headers_to_add(
            &format!("{path}.response_headers_to_add"),
            &vh.response_headers_to_add,
        );
        self.headers_to_remove(
            &format!("{path}.response_headers_to_remove"),
            &vh.response_headers_to_remove,
        );

        for (i, route) in vh.routes.iter().enumerate() {
            self.route(&format!("{path}.routes[{i}]"), route);
        }
    }

    fn route(&mut self, path: &str, r: &Route) {
        if let Some(name) = &r.name {
            if name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "must not be empty (omit it instead)",
                );
            }
        }

        let m = &r.matcher;
        let mpath = format!("{path}.match");
        // `prefix: ""` is a real matcher (everything), so presence is
        // `is_some`, never "non-empty".
        let kinds = set_fields(&[
            ("prefix", m.prefix.is_some()),
            ("path", m.path.is_some()),
            ("regex", m.regex.is_some()),
        ]);
        if let Some(reason) = exactly_one(&kinds, "prefix, path, regex") {
            let reason = if kinds.is_empty() {
                format!("{reason} (prefix: \"\" matches every path)")
            } else {
                reason
            };
            self.err(mpath.clone(), reason);
        }
        if let Some(re) = &m.regex {
            self.regex(&format!("{mpath}.regex"), re);
        }
        for (i, h) in m.headers.iter().enumerate() {
            self.header_matcher(&format!("{mpath}.headers[{i}]"), h);
        }
        for (i, q) in m.query_parameters.iter().enumerate() {
            self.query_matcher(&format!("{mpath}.query_parameters[{i}]"), q);
        }

        let actions = set_fields(&[
            ("route", r.route.is_some()),
            ("redirect", r.redirect.is_some()),
            ("direct_response", r.direct_response.is_some()),
        ]);
        if let Some(reason) = exactly_one(&actions, "route, redirect, direct_response") {
            self.err(path, reason);
        }
        if let Some(action) = &r.route {
            self.route_action(&format!("{path}.route"), action);
        }
        if let Some(redirect) = &r.redirect {
            self.redirect(&format!("{path}.redirect"), redirect);
        }
        if let Some(dr) = &r.direct_response {
            // Envoy's range: a 1xx is never a final response.
            if !(200..=599).contains(&dr.status) {
                self.err(
                    format!("{path}.direct_response.status"),
                    format!("invalid HTTP status {} (expected 200..=599)", dr.status),
                );
            }
        }

        self.headers_to_add(
            &format!("{path}.request_headers_to_add"),
            &r.request_headers_to_add,
        );
        self.headers_to_remove(
            &format!("{path}.request_headers_to_remove"),
            &r.request_headers_to_remove,
        );
        self.headers_to_add(
            &format!("{path}.response_headers_to_add"),
            &r.response_headers_to_add,
        );
        self.headers_to_remove(
            &format!("{path}.response_headers_to_remove"),
            &r.response_headers_to_remove,
        );
    }

    /// Syntax only: parsing is cheap, compiling is not (a mesh config holds
    /// thousands of regexes), and the router compiles each one anyway (its
    /// errors, e.g. a pattern too big, carry the same path).
    fn regex(&mut self, path: &str, re: &str) {
        if let Err(e) = regex_syntax::Parser::new().parse(re) {
            self.err(
                path,
                format!("invalid regex: {}", regex_error(&e.to_string())),
            );
        }
    }

    fn header_matcher(&mut self, path: &str, h: &HeaderMatcher) {
        self.header_name(&format!("{path}.name"), &h.name, HeaderUse::Read);
        let kinds = set_fields(&[
            ("exact", h.exact.is_some()),
            ("prefix", h.prefix.is_some()),
            ("suffix", h.suffix.is_some()),
            ("contains", h.contains.is_some()),
            ("regex", h.regex.is_some()),
            ("present", h.present.is_some()),
        ]);
        // None set means `present: true`, as in Envoy.
        if let Some(reason) = at_most_one(&kinds, "exact, prefix, suffix, contains, regex, present")
        {
            self.err(path, reason);
        }
        // An empty prefix, suffix or substring matches every value: Envoy
        // rejects it as a likely mistake (`present` says that on purpose).
        for (field, value) in [
            ("prefix", &h.prefix),
            ("suffix", &h.suffix),
            ("contains", &h.contains),
        ] {
            if value.as_ref().is_some_and(|v| v.is_empty()) {
                self.err(
                    format!("{path}.{field}"),
                    "must not be empty (use present: true to match any value)",
                );
            }
        }
        if let Some(re) = &h.regex {
            self.regex(&format!("{path}.regex"), re);
        }
    }

    fn query_matcher(&mut self, path: &str, q: &QueryParameterMatcher) {
        if q.name.is_empty() {
            self.err(format!("{path}.name"), "must not be empty");
        }
        let kinds = set_fields(&[
            ("exact", q.exact.is_some()),
            ("regex", q.regex.is_some()),
            ("present", q.present.is_some()),
        ]);
        // None set means `present: true`, as in Envoy.
        if let Some(reason) = at_most_one(&kinds, "exact, regex, present") {
            self.err(path, reason);
        }
        if let Some(re) = &q.regex {
            self.regex(&format!("{path}.regex"), re);
        }
    }

    fn route_action(&mut self, path: &str, a: &RouteAction) {
        let targets = set_fields(&[
            ("cluster", a.cluster.is_some()),
            ("weighted_clusters", a.weighted_clusters.is_some()),
        ]);
        if let Some(reason) = exactly_one(&targets, "cluster, weighted_clusters") {
            self.err(path, reason);
        }
        if let Some(name) = &a.cluster {
            self.cluster_ref(&format!("{path}.cluster"), name);
        }
        if let Some(split) = &a.weighted_clusters {
            let wpath = format!("{path}.weighted_clusters");
            if split.is_empty() {
                self.err(wpath.clone(), "at least one cluster is required");
            } else {
                // Summed in u64 so the check itself cannot overflow; Envoy
                // rejects a total beyond u32 too.
                let total: u64 = split.iter().map(|w| u64::from(w.weight)).sum();
                if total == 0 {
                    self.err(wpath.clone(), "total weight must be greater than 0");
                } else if total > u64::from(u32::MAX) {
                    self.err(
                        wpath.clone(),
                        format!("total weight {total} exceeds {}", u32::MAX),
                    );
                }
            }
            for (i, w) in split.iter().enumerate() {
                self.cluster_ref(&format!("{wpath}[{i}].name"), &w.name);
            }
        }
        if let Some(rewrite) = &a.prefix_rewrite {
            if let Err(reason) = check_path_chars(rewrite, false) {
                self.err(format!("{path}.prefix_rewrite"), reason);
            }
        }
        if let Some(host) = &a.host_rewrite {
            if let Err(reason) = check_authority(host) {
                self.err(format!("{path}.host_rewrite"), reason);
            }
        }
        for (i, h) in a.hash_policy.iter().enumerate() {
            self.hash_policy(&format!("{path}.hash_policy[{i}]"), h);
        }
    }

    fn hash_policy(&mut self, path: &str, h: &HashPolicy) {
        let kinds = set_fields(&[
            ("header", h.header.is_some()),
            ("cookie", h.cookie.is_some()),
            ("connection_properties", h.connection_properties.is_some()),
            ("query_parameter", h.query_parameter.is_some()),
        ]);
        if let Some(reason) = exactly_one(
            &kinds,
            "header, cookie, connection_properties, query_parameter",
        ) {
            self.err(path, reason);
        }
        if let Some(header) = &h.header {
            self.header_name(
                &format!("{path}.header.header_name"),
                &header.header_name,
                HeaderUse::Read,
            );
        }
        if let Some(cookie) = &h.cookie {
            if cookie.name.is_empty() {
                self.err(format!("{path}.cookie.name"), "must not be empty");
            }
        }
        if let Some(query) = &h.query_parameter {
            if query.name.is_empty() {
                self.err(format!("{path}.query_parameter.name"), "must not be empty");
            }
        }
    }

    fn redirect(&mut self, path: &str, r: &Redirect) {
        if !matches!(r.response_code, 301 | 302 | 303 | 307 | 308) {
            self.err(
                format!("{path}.response_code"),
                format!(
                    "invalid redirect code {} (expected 301, 302, 303, 307 or 308)",
                    r.response_code
                ),
            );
        }
        if r.path_redirect.is_some() && r.prefix_rewrite.is_some() {
            self.err(
                path,
                "path_redirect and prefix_rewrite are exclusive: set at most one",
            );
        }
        if let Some(scheme) = &r.scheme_redirect {
            if r.https_redirect {
                self.err(
                    path,
                    "scheme_redirect and https_redirect are exclusive: set at most one",
                );
            }
            if !is_scheme(scheme) {
                self.err(
                    format!("{path}.scheme_redirect"),
                    format!("invalid scheme {scheme:?} (e.g. http or https)"),
                );
            }
        }
        if let Some(host) = &r.host_redirect {
            if let Err(reason) = check_authority(host) {
                self.err(format!("{path}.host_redirect"), reason);
            }
        }
        if r.port_redirect == Some(0) {
            self.err(format!("{path}.port_redirect"), "port must be 1..=65535");
        }
        if let Some(p) = &r.path_redirect {
            // The whole new path, and optionally a query: `/new?from=old`.
            let checked = if p.starts_with('/') {
                check_path_chars(p, true)
            } else {
                Err(format!("path {p:?} must start with \"/\""))
            };
            if let Err(reason) = checked {
                self.err(format!("{path}.path_redirect"), reason);
            }
        }
        if let Some(p) = &r.prefix_rewrite {
            if let Err(reason) = check_path_chars(p, false) {
                self.err(format!("{path}.prefix_rewrite"), reason);
            }
        }
    }

    // === Headers ===

    fn header_name(&mut self, path: &str, name: &str, usage: HeaderUse) {
        if let Err(reason) = check_header_name(name, usage) {
            self.err(path, reason);
        }
    }

    fn headers_to_add(&mut self, path: &str, headers: &[HeaderValueOption]) {
        for (i, h) in headers.iter().enumerate() {
            self.header_name(&format!("{path}[{i}].name"), &h.name, HeaderUse::Add);
            if HeaderValue::from_str(&h.value).is_err() {
                self.err(
                    format!("{path}[{i}].value"),
                    format!(
                        "invalid header value {:?}: only visible ASCII, space and tab are \
                         allowed",
                        h.value
                    ),
                );
            }
        }
    }

    fn headers_to_remove(&mut self, path: &str, names: &[String]) {
        for (i, name) in names.iter().enumerate() {
            self.header_name(&format!("{path}[{i}]"), name, HeaderUse::Remove);
        }
    }

    // === Clusters ===

    fn cluster(&mut self, path: &str, c: &Cluster) {
        for (i, e) in c.endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{i}]");
            let checked = match c.kind {
                ClusterKind::Static => check_static_endpoint(&e.address),
                ClusterKind::StrictDns => check_dns_endpoint(&e.address),
            };
            if let Err(reason) = checked {
                self.err(format!("{epath}.address"), reason);
            }
            if e.weight == 0 {
                self.err(format!("{epath}.weight"), "must be at least 1");
            }
        }

        if let Some(d) = c.connect_timeout {
            if d.get().is_zero() {
                self.err(format!("{path}.connect_timeout"), "must be greater than 0");
            }
        }
        if let Some(d) = c.dns_refresh_rate {
            if d.get().is_zero() {
                self.err(format!("{path}.dns_refresh_rate"), "must be greater than 0");
            }
        }

        if let Some(rh) = &c.ring_hash {
            let p = format!("{path}.ring_hash");
            if c.lb_policy != LbPolicy::RingHash {
                self.err(p.clone(), policy_mismatch("ring_hash", c.lb_policy));
            }
            if rh.minimum_ring_size == 0 {
                self.err(format!("{p}.minimum_ring_size"), "must be at least 1");
            } else if rh.minimum_ring_size > rh.maximum_ring_size {
                self.err(
                    format!("{p}.minimum_ring_size"),
                    format!(
                        "must not exceed maximum_ring_size ({})",
                        rh.maximum_ring_size
                    ),
                );
            }
            if rh.maximum_ring_size > RING_HASH_MAX_SIZE {
                self.err(
                    format!("{p}.maximum_ring_size"),
                    format!("must not exceed {RING_HASH_MAX_SIZE}"),
                );
            }
        }
        if let Some(mg) = &c.maglev {
            let p = format!("{path}.maglev");
            if c.lb_policy != LbPolicy::Maglev {
                self.err(p.clone(), policy_mismatch("maglev", c.lb_policy));
            }
            if mg.table_size > MAGLEV_MAX_TABLE_SIZE {
                self.err(
                    format!("{p}.table_size"),
                    format!("must not exceed {MAGLEV_MAX_TABLE_SIZE}"),
                );
            } else if !is_prime(mg.table_size) {
                self.err(
                    format!("{p}.table_size"),
                    format!(
                        "{} is not prime (Maglev needs a prime table size, e.g. 65537)",
                        mg.table_size
                    ),
                );
            }
        }
        if let Some(lr) = &c.least_request {
            let p = format!("{path}.least_request");
            if c.lb_policy != LbPolicy::LeastRequest {
                self.err(p.clone(), policy_mismatch("least_request", c.lb_policy));
            }
            if lr.choice_count == 0 {
                self.err(format!("{p}.choice_count"), "must be at least 1");
            }
        }

        if let Some(tls) = &c.tls {
            if let Some(sni) = &tls.sni {
                if ServerName::try_from(sni.as_str()).is_err() {
                    self.err(
                        format!("{path}.tls.sni"),
                        format!("invalid server name {sni:?}: expected a DNS name or an IP"),
                    );
                }
            }
            if let Some(ca) = &tls.ca_file {
                if let Some(reason) = check_cert_file(ca) {
                    self.err(format!("{path}.tls.ca_file"), reason);
                }
            }
        }
        self.cluster_resilience(path, c);
        self.cluster_serving(path, c);
    }

    /// The queue-proxy and activator roles (`queue`, `activation`).
    fn cluster_serving(&mut self, path: &str, c: &Cluster) {
        if c.queue.is_some() && c.activation.is_some() {
            self.err(
                format!("{path}.activation"),
                "a cluster is either a revision's local app (queue) or a revision that can be \
                 at zero (activation), not both",
            );
        }
        if let Some(q) = &c.queue {
            let p = format!("{path}.queue");
            if q.namespace.is_empty() {
                self.err(format!("{p}.namespace"), "must not be empty");
            }
            if c.endpoints.is_empty() {
                self.err(
                    format!("{path}.endpoints"),
                    "a queue cluster is the revision's local app: at least one endpoint is \
                     required (it is probed for readiness)",
                );
            }
            if q.max_queue_depth.is_some() && q.container_concurrency == 0 {
                self.err(
                    format!("{p}.max_queue_depth"),
                    "needs container_concurrency > 0 (unlimited concurrency has no queue)",
                );
            }
            if q.queue_timeout.is_some_and(|d| d.get().is_zero()) {
                self.err(format!("{p}.queue_timeout"), "must be greater than 0");
            }
            if let Some(rp) = &q.readiness_probe {
                let rp_path = format!("{p}.readiness_probe");
                if let Some(probe_path) = &rp.path {
                    if !probe_path.starts_with('/')
                        || probe_path
                            .bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                    {
                        self.err(
                            format!("{rp_path}.path"),
                            format!("{probe_path:?} must start with '/' and hold no spaces"),
                        );
                    }
                }
                for (field, d) in [
                    ("initial_interval", rp.initial_interval),
                    ("period", rp.period),
                    ("timeout", rp.timeout),
                ] {
                    if d.is_some_and(|d| d.get().is_zero()) {
                        self.err(format!("{rp_path}.{field}"), "must be greater than 0");
                    }
                }
                if rp.failure_threshold == Some(0) {
                    self.err(format!("{rp_path}.failure_threshold"), "must be at least 1");
                }
            }
        }
        if let Some(a) = &c.activation {
            let p = format!("{path}.activation");
            if a.namespace.is_empty() {
                self.err(format!("{p}.namespace"), "must not be empty");
            }
            if a.hold_timeout.is_some_and(|d| d.get().is_zero()) {
                self.err(format!("{p}.hold_timeout"), "must be greater than 0");
            }
            if a.max_held == Some(0) {
                self.err(format!("{p}.max_held"), "must be at least 1");
            }
        }
    }

    /// Circuit breakers, health checks, outlier detection, panic threshold.
    fn cluster_resilience(&mut self, path: &str, c: &Cluster) {
        if let Some(cb) = &c.circuit_breakers {
            let p = format!("{path}.circuit_breakers");
            for (field, value) in [
                ("max_connections", cb.max_connections),
                ("max_pending_requests", cb.max_pending_requests),
                ("max_requests", cb.max_requests),
                ("max_retries", cb.max_retries),
            ] {
                if value == 0 {
                    self.err(format!("{p}.{field}"), "must be at least 1");
                }
            }
            if let Some(b) = &cb.retry_budget {
                self.percent(
                    &format!("{p}.retry_budget.budget_percent"),
                    b.budget_percent,
                );
            }
        }

        for (i, hc) in c.health_checks.iter().enumerate() {
            let p = format!("{path}.health_checks[{i}]");
            for (field, d) in [("timeout", hc.timeout), ("interval", hc.interval)] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    self.err(format!("{p}.{field}"), "must be greater than 0");
                }
            }
            for (field, n) in [
                ("unhealthy_threshold", hc.unhealthy_threshold),
                ("healthy_threshold", hc.healthy_threshold),
            ] {
                if n == Some(0) {
                    self.err(format!("{p}.{field}"), "must be at least 1");
                }
            }
            let kinds = set_fields(&[
                ("http_health_check", hc.http_health_check.is_some()),
                ("tcp_health_check", hc.tcp_health_check.is_some()),
            ]);
            if let Some(reason) = exactly_one(&kinds, "http_health_check, tcp_health_check") {
                self.err(p.clone(), reason);
            }
            let Some(http) = &hc.http_health_check else {
                continue;
            };
            let hp = format!("{p}.http_health_check");
            if !http.path.starts_with('/') {
                self.err(
                    format!("{hp}.path"),
                    format!("must start with '/': {:?}", http.path),
                );
            } else if let Err(reason) = check_path_chars(&http.path, true) {
                self.err(format!("{hp}.path"), reason);
            }
            match &http.host {
                Some(host) => {
                    if let Err(reason) = check_authority(host) {
                        self.err(format!("{hp}.host"), reason);
                    }
                }
                // The default Host is the cluster name, which may not be one.
                None => {
                    if !c.name.is_empty() && check_authority(&c.name).is_err() {
                        self.err(
                            format!("{hp}.host"),
                            format!(
                                "required: the default, the cluster name {:?}, is not a valid host",
                                c.name
                            ),
                        );
                    }
                }
            }
            for (j, r) in http.expected_statuses.iter().enumerate() {
                if !(100 <= r.start && r.start < r.end && r.end <= 600) {
                    self.err(
                        format!("{hp}.expected_statuses[{j}]"),
                        format!(
                            "invalid range [{}, {}): need 100 <= start < end <= 600",
                            r.start, r.end
                        ),
                    );
                }
            }
        }

        if let Some(od) = &c.outlier_detection {
            let p = format!("{path}.outlier_detection");
            for (field, n) in [
                ("consecutive_5xx", od.consecutive_5xx),
                (
                    "consecutive_gateway_failure",
                    od.consecutive_gateway_failure,
                ),
            ] {
                if n == 0 {
                    self.err(format!("{p}.{field}"), "must be at least 1");
                }
            }
            for (field, pct) in [
                ("enforcing_consecutive_5xx", od.enforcing_consecutive_5xx),
                (
                    "enforcing_consecutive_gateway_failure",
                    od.enforcing_consecutive_gateway_failure,
                ),
                ("max_ejection_percent", od.max_ejection_percent),
            ] {
                if pct > 100 {
                    self.err(
                        format!("{p}.{field}"),
                        format!("must be a percentage (0 to 100), not {pct}"),
                    );
                }
            }
            for (field, d) in [
                ("interval", od.interval),
                ("base_ejection_time", od.base_ejection_time),
                ("max_ejection_time", od.max_ejection_time),
            ] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    self.err(format!("{p}.{field}"), "must be greater than 0");
                }
            }
        }

        if let Some(t) = c.healthy_panic_threshold {
            self.percent(&format!("{path}.healthy_panic_threshold"), t);
        }
    }

    fn percent(&mut self, path: &str, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.err(
                path,
                format!("must be a percentage (0 to 100), not {value}"),
            );
        }
    }
}

// === Checks on single values ===

/// The names of the fields that are set, in the order given.
fn set_fields(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect()
}

/// The reason when not exactly one of a group of exclusive fields is set.
fn exactly_one(set: &[&str], all: &str) -> Option<String> {
    match set {
        [_] => None,
        [] => Some(format!("exactly one of {all} is required; none is set")),
        _ => Some(format!(
            "exactly one of {all} is allowed; found {}",
            set.join(" and ")
        )),
    }
}

/// The reason when more than one of a group of exclusive fields is set.
fn at_most_one(set: &[&str], all: &str) -> Option<String> {
    (set.len() > 1).then(|| {
        format!(
            "at most one of {all} is allowed; found {}",
            set.join(" and ")
        )
    })
}

/// Paths written into a request line or a `Location` header: RFC 3986
/// path characters and `%` escapes; `?` only where a query may follow, and
/// never a fragment.
fn check_path_chars(value: &str, allow_query: bool) -> Result<(), String> {
    let bad = value.chars().find(|&c| match c {
        '?' => !allow_query,
        '#' => true,
        c => !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)),
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(format!("invalid character {c:?} in path {value:?}")),
    }
}

fn policy_mismatch(field: &str, policy: LbPolicy) -> String {
    let name = match policy {
        LbPolicy::RoundRobin => "round_robin",
        LbPolicy::LeastRequest => "least_request",
        LbPolicy::Random => "random",
        LbPolicy::RingHash => "ring_hash",
        LbPolicy::Maglev => "maglev",
    };
    format!("{field} is set but lb_policy is {name}; set lb_policy: {field} or remove it")
}

/// The regex crate's syntax errors span lines (the pattern, a caret line,
/// then `error: ...`); config errors are one line each, so keep the
/// message lines and drop the drawing.
fn regex_error(text: &str) -> String {
    let messages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("error: "))
        .collect();
    if messages.is_empty() {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        messages.join("; ")
    }
}

/// `example.com`, `example.com:8080`, `*.example.com`, `*-example.com`,
/// `example.*`, `*`: Envoy allows one wildcard, only at either end.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(c) = domain
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
    {
        return Err(format!("invalid character {c:?} in domain {domain:?}"));
    }
    let stars = domain.matches('*').count();
    if stars > 1 || (stars == 1 && !domain.starts_with('*') && !domain.ends_with('*')) {
        return Err(format!(
            "invalid wildcard in {domain:?}: a single * only at the start or the end \
             (*.example.com, *-example.com, example.*, *)"
        ));
    }
    Ok(())
}

fn check_header_name(name: &str, usage: HeaderUse) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".to_string());
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') {
        return match usage {
            HeaderUse::Read if READABLE_PSEUDO_HEADERS.contains(&lower.as_str()) => Ok(()),
            HeaderUse::Read => Err(format!(
                "unsupported pseudo-header {name:?} (expected one of {})",
                READABLE_PSEUDO_HEADERS.join(", ")
            )),
            HeaderUse::Add => Err(format!(
                "pseudo-header {name:?} may not be modified (use host_rewrite or \
                 prefix_rewrite)"
            )),
            HeaderUse::Remove => Err(format!("pseudo-header {name:?} may not be removed")),
        };
    }
    if HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("invalid header name {name:?}"));
    }
    match usage {
        HeaderUse::Read => Ok(()),
        HeaderUse::Add if lower == "host" => {
            Err("host may not be modified here; use route.host_rewrite".to_string())
        }
        HeaderUse::Add if HOP_BY_HOP_HEADERS.contains(&lower.as_str()) => Err(format!(
            "hop-by-hop header {name:?} may not be added: it describes one connection and \
             the proxy strips it"
        )),
        HeaderUse::Add if lower == "content-length" => {
            Err("content-length may not be added: the proxy frames the message itself".to_string())
        }
        HeaderUse::Remove if lower == "host" => {
            Err("host may not be removed: every request needs one".to_string())
        }
        HeaderUse::Add | HeaderUse::Remove => Ok(()),
    }
}

/// A `Host` value: a name or IP, optionally with a port.
fn check_authority(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty".to_string());
    }
    match host.parse::<http::uri::Authority>() {
        // Authority also accepts `user@host`, which is no Host value.
        Ok(_) if !host.contains('@') => Ok(()),
        _ => Err(format!("invalid host {host:?}: expected host or host:port")),
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn check_static_endpoint(addr: &str) -> Result<(), String> {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("invalid address {addr:?}: port 0")),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "invalid address {addr:?}: a static cluster needs ip:port (use type: strict_dns \
             for host names)"
        )),
    }
}

fn check_dns_endpoint(addr: &str) -> Result<(), String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("invalid address {addr:?}: port 0"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("invalid address {addr:?}: expected host:port"));
    };
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !valid_host {
        return Err(format!("invalid host {host:?} in {addr:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!(
            "invalid port {port:?} in {addr:?}: expected 1..=65535"
        )),
    }
}

/// The reason a PEM certificate file is unusable, if it is.
fn check_cert_file(file: &str) -> Option<String> {
    if file.is_empty() {
        return Some("must not be empty".to_string());
    }
    let iter = match CertificateDer::pem_file_iter(file) {
        Ok(iter) => iter,
        Err(e) => return Some(pem_error(file, &e)),
    };
    let mut count = 0usize;
    for cert in iter {
        match cert {
            Ok(_) => count += 1,
            Err(e) => return Some(pem_error(file, &e)),
        }
    }
    (count == 0).then(|| format!("no certificate found in {file}"))
}

/// The reason a PEM private key file is unusable, if it is.
fn check_key_file(file: &str) -> Option<String> {
    if file.is_empty() {
        return Some("must not be empty".to_string());
    }
    match PrivateKeyDer::from_pem_file(file) {
        Ok(_) => None,
        Err(pem::Error::NoItemsFound) => Some(format!("no private key found in {file}")),
        Err(e) => Some(pem_error(file, &e)),
    }
}

fn pem_error(file: &str, e: &pem::Error) -> String {
    match e {
        pem::Error::Io(io) => {
            let cwd = if Path::new(file).is_relative() {
                " (relative paths start at the working directory)"
            } else {
                ""
            };
            format!("cannot read {file}: {io}{cwd}")
        }
        other => format!("invalid PEM in {file}: {other}"),
    }
}

/// Trial division; callers bound `n` (≤ 5,000,011) so this stays cheap.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests;
