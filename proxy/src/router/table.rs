//! Building a [`RouteTable`] from config, and choosing the virtual host for
//! an authority.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::redirect::{strip_port, RedirectAction};
use super::rewrite::{check_path, PathRewrite};
use super::split::WeightedClusters;
use super::{
    hash, matcher, Action, DirectAction, HeaderOps, Route, RouteTable, VirtualHost, DEFAULT_TIMEOUT,
};
use crate::config::{
    ConfigError, ConfigErrors, HeaderValueOption, Route as RouteConfigEntry, RouteAction,
    RouteConfig, VirtualHost as VirtualHostConfig,
};

/// Errors collected while compiling, so one build reports all of them.
#[derive(Default)]
pub(super) struct Errors {
    pub(super) list: Vec<ConfigError>,
}

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigError::new(path, reason));
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Checks that exactly one of `fields` (name, is set) is set.
    pub(super) fn exactly_one(&mut self, p: &str, fields: &[(&str, bool)]) -> bool {
        self.count_set(p, fields, "exactly one", 1..=1)
    }

    pub(super) fn at_most_one(&mut self, p: &str, fields: &[(&str, bool)]) -> bool {
        self.count_set(p, fields, "at most one", 0..=1)
    }

    fn count_set(
        &mut self,
        p: &str,
        fields: &[(&str, bool)],
        rule: &str,
        allowed: std::ops::RangeInclusive<usize>,
    ) -> bool {
        let set: Vec<&str> = fields.iter().filter(|f| f.1).map(|f| f.0).collect();
        if allowed.contains(&set.len()) {
            return true;
        }
        let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
        let found = if set.is_empty() {
            "none".to_string()
        } else {
            set.join(", ")
        };
        self.push(
            p,
            format!(
                "{rule} of {} must be set (found: {found})",
                names.join(", ")
            ),
        );
        false
    }
}

/// An earlier config and its table, whose virtual hosts a build takes over
/// where unchanged; `renumber` maps its cluster indices to the new ones.
pub(super) struct Previous<'a> {
    pub(super) cfg: &'a RouteConfig,
    pub(super) table: &'a RouteTable,
    pub(super) renumber: &'a dyn Fn(usize) -> Option<usize>,
}

pub(super) fn build(
    cfg: &RouteConfig,
    path: &str,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    prev: Option<Previous<'_>>,
) -> Result<RouteTable, ConfigErrors> {
    let mut errs = Errors::default();
    let mut vhosts = Vec::with_capacity(cfg.virtual_hosts.len());
    let mut domains = DomainIndexBuilder::default();
    for (i, vh) in cfg.virtual_hosts.iter().enumerate() {
        let p = format!("{path}.virtual_hosts[{i}]");
        domains.add(vh, i, &p, &mut errs);
        // Same position matters: route ids hold the virtual host's index.
        let kept = prev.as_ref().and_then(|p| {
            let old = p.cfg.virtual_hosts.get(i)?;
            if !(Arc::ptr_eq(old, vh) || **old == **vh) {
                return None;
            }
            let compiled = p.table.vhosts.get(i)?;
            if compiled.same_numbering(p.renumber) {
                Some(compiled.clone())
            } else {
                compiled.renumbered(p.renumber).map(Arc::new)
            }
        });
        if let Some(kept) = kept {
            vhosts.push(kept);
        } else if let Some(vh) = build_virtual_host(vh, i, &p, cluster_index, &mut errs) {
            vhosts.push(Arc::new(vh));
        }
    }
    if !errs.list.is_empty() {
        return Err(ConfigErrors(errs.list));
    }
    Ok(RouteTable {
        vhosts,
        domains: domains.finish(),
    })
}

fn build_virtual_host(
    vh: &VirtualHostConfig,
    vh_index: usize,
    p: &str,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    errs: &mut Errors,
) -> Option<VirtualHost> {
    let name: Arc<str> = vh.name.as_str().into();
    let request = request_header_ops(
        &vh.request_headers_to_add,
        &vh.request_headers_to_remove,
        p,
        errs,
    );
    let response = header_ops(
        &vh.response_headers_to_add,
        &vh.response_headers_to_remove,
        "response_headers",
        p,
        errs,
    );
    let routes: Vec<Option<Route>> = vh
        .routes
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let rp = format!("{p}.routes[{j}]");
            build_route(r, &rp, &name, cluster_index, errs).map(|mut route| {
                route.id = super::RouteId {
                    virtual_host: vh_index,
                    route: j,
                };
                // Each route gets its own merged copy so that a request
                // applies one list, not two.
                if let Some(ops) = &request {
                    route.request_headers =
                        clone_ops(ops).then(std::mem::take(&mut route.request_headers));
                }
                if let Some(ops) = &response {
                    route.response_headers =
                        clone_ops(ops).then(std::mem::take(&mut route.response_headers));
                }
                route
            })
        })
        .collect();
    let routes = routes.into_iter().collect::<Option<Vec<_>>>()?;
    request?;
    response?;
    Some(VirtualHost { routes })
}

fn clone_ops(ops: &HeaderOps) -> HeaderOps {
    HeaderOps {
        remove: ops.remove.clone(),
        add: ops.add.clone(),
    }
}

fn build_route(
    r: &RouteConfigEntry,
    p: &str,
    vhost: &Arc<str>,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    errs: &mut Errors,
) -> Option<Route> {
    let before = errs.len();
    let matcher = matcher::compile(&r.matcher, &format!("{p}.match"), errs);
    let request_headers = request_header_ops(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        p,
        errs,
    );
    let response_headers = header_ops(
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
        "response_headers",
        p,
        errs,
    );
    let set = [
        ("route", r.route.is_some()),
        ("redirect", r.redirect.is_some()),
        ("direct_response", r.direct_response.is_some()),
    ];
    let mut forward = Forward::default();
    let action = if !errs.exactly_one(p, &set) {
        None
    } else if let Some(ra) = &r.route {
        forward = build_forward(
            ra,
            &format!("{p}.route"),
            matcher.as_ref().map(|m| &m.path),
            cluster_index,
            errs,
        );
        forward.action.take()
    } else if let Some(rd) = &r.redirect {
        RedirectAction::build(
            rd,
            &format!("{p}.redirect"),
            matcher.as_ref().map(|m| &m.path),
            errs,
        )
        .map(Action::Redirect)
    } else if let Some(d) = &r.direct_response {
        match StatusCode::from_u16(d.status) {
            // Envoy accepts 200-599 for a direct response.
            Ok(status) if (200..600).contains(&d.status) => Some(Action::Direct(DirectAction {
                status,
                body: d.body.clone().map(Bytes::from).unwrap_or_default(),
            })),
            _ => {
                errs.push(
                    format!("{p}.direct_response.status"),
                    format!("invalid status {} (use 200-599)", d.status),
                );
                None
            }
        }
    } else {
        None
    };
    if errs.len() > before {
        return None;
    }
    Some(Route {
        action: action?,
        timeout: forward.timeout,
        request_headers: request_headers?,
        response_headers: response_headers?,
        host_rewrite: forward.host_rewrite,
        retry: forward.retry,
        id: super::RouteId::default(),
        buffer_limit: r
            .per_request_buffer_limit_bytes
            .map_or(super::DEFAULT_BUFFER_LIMIT, |b| b as usize),
        name: r.name.as_deref().map(Into::into),
        virtual_host: vhost.clone(),
        matcher: matcher?,
        rewrite: forward.rewrite,
        hash_policy: forward.hash_policy,
    })
}

/// The parts of a `route` action that land in [`Route`] fields.
#[derive(Default)]
struct Forward {
    action: Option<Action>,
    timeout: Option<std::time::Duration>,
    host_rewrite: Option<HeaderValue>,
    rewrite: Option<PathRewrite>,
    hash_policy: Vec<hash::HashPolicy>,
    retry: Option<super::RetryPolicy>,
}

fn build_forward(
    ra: &RouteAction,
    p: &str,
    path_match: Option<&matcher::PathMatch>,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    errs: &mut Errors,
) -> Forward {
    let set = [
        ("cluster", ra.cluster.is_some()),
        ("weighted_clusters", ra.weighted_clusters.is_some()),
    ];
    let action = if !errs.exactly_one(p, &set) {
        None
    } else if let Some(name) = &ra.cluster {
        match cluster_index(name) {
            Some(i) => Some(Action::Cluster(i)),
            None => {
                errs.push(format!("{p}.cluster"), format!("unknown cluster {name:?}"));
                None
            }
        }
    } else {
        ra.weighted_clusters.as_deref().and_then(|wcs| {
            WeightedClusters::build(wcs, &format!("{p}.weighted_clusters"), cluster_index, errs)
                .map(Action::Weighted)
        })
    };
    let timeout = match ra.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(d) if d.get().is_zero() => None,
        Some(d) => Some(d.get()),
    };
    let rewrite = ra.prefix_rewrite.as_deref().and_then(|with| {
        let ok = check_path(with, false, &format!("{p}.prefix_rewrite"), errs);
        ok.then(|| path_match.map(|m| PathRewrite::new(m, with)))
            .flatten()
    });
    let host_rewrite = ra.host_rewrite.as_deref().and_then(|h| {
        let value = HeaderValue::from_str(h)
            .ok()
            .filter(|_| !h.is_empty() && !h.contains('@'))
            .filter(|_| h.parse::<http::uri::Authority>().is_ok());
        if value.is_none() {
            errs.push(format!("{p}.host_rewrite"), format!("invalid host {h:?}"));
        }
        value
    });
    let hash_policy =
        hash::build(&ra.hash_policy, &format!("{p}.hash_policy"), errs).unwrap_or_default();
    let retry = ra
        .retry_policy
        .as_ref()
        .and_then(|rp| super::RetryPolicy::build(rp, &format!("{p}.retry_policy"), errs));
    Forward {
        action,
        timeout,
        host_rewrite,
        rewrite,
        hash_policy,
        retry,
    }
}

// === Header operations ===

/// Request-side operations: as in Envoy, `Host` (`:authority`) is not
/// theirs to change; `host_rewrite` is.
fn request_header_ops(
    add: &[HeaderValueOption],
    remove: &[String],
    p: &str,
    errs: &mut Errors,
) -> Option<HeaderOps> {
    let before = errs.len();
    for (i, h) in add.iter().enumerate() {
        if h.name.eq_ignore_ascii_case("host") {
            errs.push(
                format!("{p}.request_headers_to_add[{i}].name"),
                "the Host header cannot be set here; use route.host_rewrite",
            );
        }
    }
    for (i, name) in remove.iter().enumerate() {
        if name.eq_ignore_ascii_case("host") {
            errs.push(
                format!("{p}.request_headers_to_remove[{i}]"),
                "the Host header cannot be removed",
            );
        }
    }
    let ops = header_ops(add, remove, "request_headers", p, errs);
    if errs.len() > before {
        return None;
    }
    ops
}

/// Compiles `{side}_to_add` / `{side}_to_remove` of the object at `p`.
fn header_ops(
    add: &[HeaderValueOption],
    remove: &[String],
    side: &str,
    p: &str,
    errs: &mut Errors,
) -> Option<HeaderOps> {
    let before = errs.len();
    let mut ops = HeaderOps::default();
    for (i, name) in remove.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => ops.remove.push(n),
            Err(_) => errs.push(
                format!("{p}.{side}_to_remove[{i}]"),
                format!("invalid header name {name:?}"),
            ),
        }
    }
    for (i, h) in add.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes());
        if name.is_err() {
            errs.push(
                format!("{p}.{side}_to_add[{i}].name"),
                format!("invalid header name {:?}", h.name),
            );
        }
        let value = HeaderValue::from_str(&h.value);
        if value.is_err() {
            errs.push(
                format!("{p}.{side}_to_add[{i}].value"),
                format!("invalid header value {:?}", h.value),
            );
        }
        if let (Ok(name), Ok(value)) = (name, value) {
            ops.add.push((name, value, h.append));
        }
    }
    (errs.len() == before).then_some(ops)
}

// === Virtual host selection ===

/// Domains by kind, looked up in Envoy's order: exact, then suffix
/// wildcards (`*.example.com`, `*-bar.example.com`) longest first, then
/// prefix wildcards (`api.*`) longest first, then `*`. Keys are lowercase
/// bytes; a wildcard must cover at least one character.
/// (length, wildcard parts of that length → virtual host), longest first,
/// so the first hit is the longest match.
type ByLength = Vec<(usize, HashMap<Box<[u8]>, usize>)>;

#[derive(Default)]
pub(super) struct DomainIndex {
    exact: HashMap<Box<[u8]>, usize>,
    suffix: ByLength,
    prefix: ByLength,
    default: Option<usize>,
}

/// Sorted, so two indexes of the same domains print the same whatever
/// their hash maps' iteration order.
impl std::fmt::Debug for DomainIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn sorted(map: &HashMap<Box<[u8]>, usize>) -> Vec<(String, usize)> {
            let mut v: Vec<(String, usize)> = map
                .iter()
                .map(|(k, i)| (String::from_utf8_lossy(k).into_owned(), *i))
                .collect();
            v.sort();
            v
        }
        let grouped = |g: &ByLength| -> Vec<(usize, Vec<(String, usize)>)> {
            g.iter().map(|(len, m)| (*len, sorted(m))).collect()
        };
        f.debug_struct("DomainIndex")
            .field("exact", &sorted(&self.exact))
            .field("suffix", &grouped(&self.suffix))
            .field("prefix", &grouped(&self.prefix))
            .field("default", &self.default)
            .finish()
    }
}

impl DomainIndex {
    /// The virtual host for `authority`: as sent (port included), then with
    /// the port stripped, and only then the `*` host, so `example.com:8080`
    /// reaches `example.com` rather than the catch-all.
    pub(super) fn select(&self, authority: &str) -> Option<usize> {
        let host: Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(authority.to_ascii_lowercase())
        } else {
            Cow::Borrowed(authority)
        };
        self.lookup(host.as_bytes())
            .or_else(|| {
                let stripped = strip_port(&host);
                (stripped.len() != host.len())
                    .then(|| self.lookup(stripped.as_bytes()))
                    .flatten()
            })
            .or(self.default)
    }

    fn lookup(&self, host: &[u8]) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        let wildcard = |groups: &ByLength, suffix: bool| {
            groups
                .iter()
                .filter(|(len, _)| *len < host.len())
                .find_map(|(len, map)| {
                    let part = if suffix {
                        &host[host.len() - len..]
                    } else {
                        &host[..*len]
                    };
                    map.get(part).copied()
                })
        };
        wildcard(&self.suffix, true).or_else(|| wildcard(&self.prefix, false))
    }
}

#[derive(Default)]
struct DomainIndexBuilder {
    index: DomainIndex,
    /// Lowercased domain → where it was first declared.
    seen: HashMap<String, String>,
}

impl DomainIndexBuilder {
    fn add(&mut self, vh: &VirtualHostConfig, vh_index: usize, p: &str, errs: &mut Errors) {
        if vh.domains.is_empty() {
            errs.push(format!("{p}.domains"), "at least one domain is required");
        }
        for (k, domain) in vh.domains.iter().enumerate() {
            let dp = format!("{p}.domains[{k}]");
            let d = domain.to_ascii_lowercase();
            if d.is_empty() {
                errs.push(dp, "must not be empty");
                continue;
            }
            if let Some(first) = self.seen.get(&d) {
                errs.push(
                    dp,
                    format!("duplicate domain {domain:?} (first in {first})"),
                );
                continue;
            }
            self.seen.insert(d.clone(), dp);
            let d = d.into_bytes();
            if d == b"*" {
                self.index.default = Some(vh_index);
            } else if let Some(suffix) = d.strip_prefix(b"*") {
                insert_grouped(&mut self.index.suffix, suffix, vh_index);
            } else if let Some(prefix) = d.strip_suffix(b"*") {
                insert_grouped(&mut self.index.prefix, prefix, vh_index);
            } else {
                self.index.exact.insert(d.into_boxed_slice(), vh_index);
            }
        }
    }

    fn finish(mut self) -> DomainIndex {
        for groups in [&mut self.index.suffix, &mut self.index.prefix] {
            groups.sort_by_key(|g| std::cmp::Reverse(g.0));
        }
        self.index
    }
}

fn insert_grouped(groups: &mut ByLength, key: &[u8], vh: usize) {
    let len = key.len();
    let group = match groups.iter().position(|(l, _)| *l == len) {
        Some(g) => &mut groups[g].1,
        None => {
            groups.push((len, HashMap::new()));
            let last = groups.len() - 1;
            &mut groups[last].1
        }
    };
    group.entry(key.into()).or_insert(vh);
}
