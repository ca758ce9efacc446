//! Envoy `RouteConfiguration` → [`config::RouteConfig`].
//!
//! Matches, actions, rewrites, retries and header operations map one to one
//! onto the model; what the model cannot express but would change which
//! route matches or what is sent (runtime fractions, regex rewrites, cluster
//! headers, mirrors, TLS requirements) is rejected with its field path.

// Envoy deprecates fields that control planes still send (header `append`,
// `exact_match`, `http2_protocol_options`); reading them is the point.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::core::v3::{header_value_option, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route, route_action, route_match::PathSpecifier, HeaderMatcher,
    QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

use std::sync::Arc;

use prost::Message;

use super::convert::{ignored, opt_duration, Problems};
use crate::config::{self, HashConnection, HashCookie, HashHeader, HashQuery};

/// Translates an RDS resource; `Err` is the NACK sentence.
///
/// The xDS state uses [`translate_rds_encoded`], which gives the same
/// result; this is the form for a decoded message.
pub fn translate_rds(rc: &RouteConfiguration) -> Result<config::RouteConfig, String> {
    let mut p = Problems::default();
    let out = route_config(&mut p, "", rc);
    if p.is_empty() {
        Ok(out)
    } else {
        Err(p.sentence("route_configuration", &rc.name))
    }
}

/// Translates an inline route config; `Err` lists the problems with paths
/// relative to it, for the listener to nest.
pub fn translate_route_config(rc: &RouteConfiguration) -> Result<config::RouteConfig, String> {
    let mut p = Problems::default();
    let out = route_config(&mut p, "", rc);
    if p.is_empty() {
        Ok(out)
    } else {
        Err(p
            .list
            .iter()
            .map(|(path, r)| format!("{path}: {r}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

fn join(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_string()
    } else {
        format!("{base}.{field}")
    }
}

fn route_config(p: &mut Problems, base: &str, rc: &RouteConfiguration) -> config::RouteConfig {
    if rc.vhds.is_some() {
        p.unsupported(join(base, "vhds"), "VHDS");
    }
    if !rc.cluster_specifier_plugins.is_empty() {
        p.unsupported(
            join(base, "cluster_specifier_plugins"),
            "cluster specifier plugins",
        );
    }
    if !rc.request_mirror_policies.is_empty() {
        p.unsupported(join(base, "request_mirror_policies"), "request mirroring");
    }
    if !rc.internal_only_headers.is_empty() {
        p.unsupported(join(base, "internal_only_headers"), "internal-only headers");
    }
    if rc.ignore_port_in_host_matching {
        p.unsupported(
            join(base, "ignore_port_in_host_matching"),
            "ignoring the port in host matching",
        );
    }
    if !rc.vhost_header.is_empty() {
        p.unsupported(
            join(base, "vhost_header"),
            "matching virtual hosts by another header",
        );
    }
    if rc.validate_clusters.is_some() {
        ignored("route_configuration", "validate_clusters");
    }
    if !rc.typed_per_filter_config.is_empty() {
        ignored("route_configuration", "typed_per_filter_config");
    }
    let shared = SharedHeaders::new(p, base, rc);
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let out = virtual_host(p, &join(base, &format!("virtual_hosts[{i}]")), vh);
        virtual_hosts.push(Arc::new(shared.apply(out)));
    }
    config::RouteConfig {
        name: rc.name.clone(),
        virtual_hosts,
    }
}

/// Route-configuration-wide header operations: the model has none at this
/// level, so they are applied with each virtual host's.
struct SharedHeaders {
    request_add: Vec<config::HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<config::HeaderValueOption>,
    response_remove: Vec<String>,
}

impl SharedHeaders {
    fn new(p: &mut Problems, base: &str, rc: &RouteConfiguration) -> SharedHeaders {
        SharedHeaders {
            request_add: headers_to_add(
                p,
                &join(base, "request_headers_to_add"),
                &rc.request_headers_to_add,
            ),
            request_remove: rc.request_headers_to_remove.clone(),
            response_add: headers_to_add(
                p,
                &join(base, "response_headers_to_add"),
                &rc.response_headers_to_add,
            ),
            response_remove: rc.response_headers_to_remove.clone(),
        }
    }

    fn apply(&self, mut vh: config::VirtualHost) -> config::VirtualHost {
        vh.request_headers_to_add
            .extend(self.request_add.iter().cloned());
        vh.request_headers_to_remove
            .extend(self.request_remove.iter().cloned());
        vh.response_headers_to_add
            .extend(self.response_add.iter().cloned());
        vh.response_headers_to_remove
            .extend(self.response_remove.iter().cloned());
        vh
    }
}

/// What [`translate_rds_encoded`] remembers of a translation, to take its
/// unchanged virtual hosts over next time: a hash of the route
/// configuration's own fields, and one of each virtual host's bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RdsHashes {
    head: u64,
    virtual_hosts: Vec<u64>,
}

/// Translates an encoded RDS resource: the same result as decoding it and
/// calling [`translate_rds`], but a virtual host whose bytes are those of
/// the same position in `prev` (and whose route configuration's own fields
/// did not change either) is taken over from `prev` without being decoded
/// or translated again. A one-route change in a mesh's 10,000-route config
/// then decodes and translates one virtual host. `Err` is the NACK sentence.
pub fn translate_rds_encoded(
    bytes: &[u8],
    prev: Option<(&config::RouteConfig, &RdsHashes)>,
) -> Result<(config::RouteConfig, RdsHashes), String> {
    let split = split_virtual_hosts(bytes)
        .map_err(|e| format!("route_configuration: cannot decode: {e}"))?;
    let head = RouteConfiguration::decode(split.rest.as_slice())
        .map_err(|e| format!("route_configuration: cannot decode: {e}"))?;
    let hashes = RdsHashes {
        head: xxhash_rust::xxh64::xxh64(&split.rest, 0),
        virtual_hosts: split
            .virtual_hosts
            .iter()
            .map(|vh| xxhash_rust::xxh64::xxh64(vh, 0))
            .collect(),
    };
    let prev = prev.filter(|(_, h)| h.head == hashes.head);
    let mut p = Problems::default();
    // The head alone: the configuration-wide checks and header operations.
    let mut out = route_config(&mut p, "", &head);
    let shared = SharedHeaders::new(&mut Problems::default(), "", &head);
    out.virtual_hosts = Vec::with_capacity(split.virtual_hosts.len());
    for (i, (vh, hash)) in split
        .virtual_hosts
        .iter()
        .zip(&hashes.virtual_hosts)
        .enumerate()
    {
        let kept = prev.and_then(|(rc, h)| {
            (h.virtual_hosts.get(i) == Some(hash))
                .then(|| rc.virtual_hosts.get(i).cloned())
                .flatten()
        });
        if let Some(kept) = kept {
            out.virtual_hosts.push(kept);
            continue;
        }
        let path = format!("virtual_hosts[{i}]");
        match VirtualHost::decode(*vh) {
            Ok(vh) => {
                let translated = virtual_host(&mut p, &path, &vh);
                out.virtual_hosts.push(Arc::new(shared.apply(translated)));
            }
            Err(e) => p.add(path, format!("cannot decode: {e}")),
        }
    }
    if p.is_empty() {
        Ok((out, hashes))
    } else {
        Err(p.sentence("route_configuration", &head.name))
    }
}

/// An encoded RouteConfiguration cut in two: the bytes of each virtual host
/// (field 2) and every other field, still encoded, in their order.
struct SplitRds<'a> {
    virtual_hosts: Vec<&'a [u8]>,
    rest: Vec<u8>,
}

/// Walks the top-level fields of an encoded RouteConfiguration without
/// decoding them (protobuf's wire format: a key varint, then a payload
/// whose size the wire type gives).
fn split_virtual_hosts(bytes: &[u8]) -> Result<SplitRds<'_>, String> {
    const VIRTUAL_HOSTS: u64 = 2;
    const LENGTH_DELIMITED: u64 = 2;
    let mut out = SplitRds {
        virtual_hosts: Vec::new(),
        rest: Vec::new(),
    };
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let key = read_varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        // Where a length-delimited payload starts, after its length.
        let mut payload = at;
        match wire {
            0 => {
                read_varint(bytes, &mut at)?;
            }
            1 => at += 8,
            LENGTH_DELIMITED => {
                let len = usize::try_from(read_varint(bytes, &mut at)?)
                    .map_err(|_| "length out of range")?;
                payload = at;
                at = at.checked_add(len).ok_or("length out of range")?;
            }
            5 => at += 4,
            other => return Err(format!("unsupported wire type {other}")),
        }
        if field == VIRTUAL_HOSTS && wire == LENGTH_DELIMITED {
            out.virtual_hosts
                .push(bytes.get(payload..at).ok_or("truncated field")?);
        } else {
            out.rest
                .extend_from_slice(bytes.get(start..at).ok_or("truncated field")?);
        }
    }
    Ok(out)
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn virtual_host(p: &mut Problems, path: &str, vh: &VirtualHost) -> config::VirtualHost {
    if vh.require_tls != 0 {
        p.unsupported(format!("{path}.require_tls"), "require_tls");
    }
    if vh.matcher.is_some() {
        p.unsupported(format!("{path}.matcher"), "a generic route matcher");
    }
    if !vh.request_mirror_policies.is_empty() {
        p.unsupported(
            format!("{path}.request_mirror_policies"),
            "request mirroring",
        );
    }
    if vh.hedge_policy.is_some() {
        p.unsupported(format!("{path}.hedge_policy"), "request hedging");
    }
    if vh.retry_policy_typed_config.is_some() {
        p.unsupported(
            format!("{path}.retry_policy_typed_config"),
            "a typed retry policy",
        );
    }
    if !vh.rate_limits.is_empty() {
        ignored("virtual_host", "rate_limits");
    }
    if !vh.virtual_clusters.is_empty() {
        ignored("virtual_host", "virtual_clusters");
    }
    if vh.cors.is_some() {
        ignored("virtual_host", "cors");
    }
    if !vh.typed_per_filter_config.is_empty() {
        ignored("virtual_host", "typed_per_filter_config");
    }
    // Virtual-host defaults a route inherits when it has none of its own
    // (Envoy: the route's retry policy and buffer limit win).
    let vh_retry = vh
        .retry_policy
        .as_ref()
        .map(|r| retry_policy(p, &format!("{path}.retry_policy"), r));
    let vh_buffer = vh.per_request_buffer_limit_bytes.as_ref().map(|v| v.value);

    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut out = route(p, &format!("{path}.routes[{i}]"), r);
            if out.per_request_buffer_limit_bytes.is_none() {
                out.per_request_buffer_limit_bytes = vh_buffer;
            }
            if let (Some(action), Some(retry)) = (out.route.as_mut(), vh_retry.as_ref()) {
                if action.retry_policy.is_none() {
                    action.retry_policy = Some(Box::new(retry.clone()));
                }
            }
            out
        })
        .collect();
    config::VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes,
        per_filter_config: Default::default(),
        request_headers_to_add: headers_to_add(
            p,
            &format!("{path}.request_headers_to_add"),
            &vh.request_headers_to_add,
        ),
        request_headers_to_remove: vh.request_headers_to_remove.clone(),
        response_headers_to_add: headers_to_add(
            p,
            &format!("{path}.response_headers_to_add"),
            &vh.response_headers_to_add,
        ),
        response_headers_to_remove: vh.response_headers_to_remove.clone(),
    }
}

fn route(p: &mut Problems, path: &str, r: &Route) -> config::Route {
    if !r.typed_per_filter_config.is_empty() {
        ignored("route", "typed_per_filter_config");
    }
    if r.decorator.is_some() || r.tracing.is_some() {
        ignored("route", "decorator/tracing");
    }
    let matcher = match &r.r#match {
        Some(m) => route_match(p, &format!("{path}.match"), m),
        None => {
            p.add(format!("{path}.match"), "is required");
            config::RouteMatch::default()
        }
    };
    let mut out = config::Route {
        name: (!r.name.is_empty()).then(|| r.name.clone()),
        matcher,
        route: None,
        redirect: None,
        direct_response: None,
        per_filter_config: Default::default(),
        per_request_buffer_limit_bytes: r.per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
        request_headers_to_add: headers_to_add(
            p,
            &format!("{path}.request_headers_to_add"),
            &r.request_headers_to_add,
        ),
        request_headers_to_remove: r.request_headers_to_remove.clone(),
        response_headers_to_add: headers_to_add(
            p,
            &format!("{path}.response_headers_to_add"),
            &r.response_headers_to_add,
        ),
        response_headers_to_remove: r.response_headers_to_remove.clone(),
    };
    match &r.action {
        Some(route::Action::Route(a)) => {
            out.route = Some(route_action(p, &format!("{path}.route"), a))
        }
        Some(route::Action::Redirect(a)) => {
            out.redirect = Some(Box::new(redirect(p, &format!("{path}.redirect"), a)))
        }
        Some(route::Action::DirectResponse(d)) => {
            let dpath = format!("{path}.direct_response");
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    match String::from_utf8(b.clone()) {
                        Ok(s) => Some(s),
                        Err(_) => {
                            p.unsupported(format!("{dpath}.body.inline_bytes"), "a non-UTF-8 body");
                            None
                        }
                    }
                }
                Some(_) => {
                    p.unsupported(format!("{dpath}.body"), "a body other than inline_string");
                    None
                }
            };
            if d.body_format.is_some() {
                p.unsupported(format!("{dpath}.body_format"), "a formatted body");
            }
            out.direct_response = Some(Box::new(config::DirectResponse {
                status: u16::try_from(d.status).unwrap_or(0),
                body,
            }));
        }
        Some(route::Action::FilterAction(_)) => {
            p.unsupported(format!("{path}.filter_action"), "a filter action")
        }
        Some(route::Action::NonForwardingAction(_)) => p.unsupported(
            format!("{path}.non_forwarding_action"),
            "a non-forwarding action",
        ),
        None => p.add(path, "needs route, redirect or direct_response"),
    }
    out
}

fn route_match(p: &mut Problems, path: &str, m: &RouteMatch) -> config::RouteMatch {
    let mut out = config::RouteMatch {
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        ..Default::default()
    };
    match &m.path_specifier {
        // `prefix: ""` matches everything; it stays `Some("")`.
        Some(PathSpecifier::Prefix(s)) => out.prefix = Some(s.clone()),
        Some(PathSpecifier::Path(s)) => out.path = Some(s.clone()),
        Some(PathSpecifier::SafeRegex(r)) => out.regex = Some(r.regex.clone()),
        Some(PathSpecifier::ConnectMatcher(_)) => {
            p.unsupported(format!("{path}.connect_matcher"), "CONNECT matching")
        }
        Some(PathSpecifier::PathSeparatedPrefix(_)) => p.unsupported(
            format!("{path}.path_separated_prefix"),
            "path_separated_prefix",
        ),
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            p.unsupported(format!("{path}.path_match_policy"), "a path match policy")
        }
        None => p.add(path, "needs prefix, path or safe_regex"),
    }
    if m.runtime_fraction.is_some() {
        p.unsupported(format!("{path}.runtime_fraction"), "runtime fractions");
    }
    if !m.cookies.is_empty() {
        p.unsupported(format!("{path}.cookies"), "cookie matching");
    }
    if m.grpc.is_some() {
        p.unsupported(format!("{path}.grpc"), "gRPC matching");
    }
    if m.tls_context.is_some() {
        p.unsupported(format!("{path}.tls_context"), "TLS context matching");
    }
    if !m.dynamic_metadata.is_empty() {
        p.unsupported(
            format!("{path}.dynamic_metadata"),
            "dynamic metadata matching",
        );
    }
    if !m.filter_state.is_empty() {
        p.unsupported(format!("{path}.filter_state"), "filter state matching");
    }
    out.headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(p, &format!("{path}.headers[{i}]"), h))
        .collect();
    out.query_parameters = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(p, &format!("{path}.query_parameters[{i}]"), q))
        .collect();
    out
}

/// A string matcher as (exact, prefix, suffix, contains, regex) — at most
/// one set. `ignore_case` turns any of them into a `(?i)` regex.
struct StringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    regex: Option<String>,
}

fn string_matcher(p: &mut Problems, path: &str, m: &StringMatcher) -> StringMatch {
    let mut out = StringMatch {
        exact: None,
        prefix: None,
        suffix: None,
        contains: None,
        regex: None,
    };
    let (literal, anchored) = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => (s, (true, true)),
        Some(MatchPattern::Prefix(s)) => (s, (true, false)),
        Some(MatchPattern::Suffix(s)) => (s, (false, true)),
        Some(MatchPattern::Contains(s)) => (s, (false, false)),
        Some(MatchPattern::SafeRegex(r)) => {
            if m.ignore_case {
                p.unsupported(format!("{path}.ignore_case"), "ignore_case with safe_regex");
            }
            out.regex = Some(r.regex.clone());
            return out;
        }
        Some(MatchPattern::Custom(_)) => {
            p.unsupported(format!("{path}.custom"), "a custom string matcher");
            return out;
        }
        None => {
            p.add(path, "needs a match pattern");
            return out;
        }
    };
    if m.ignore_case {
        let (start, end) = anchored;
        out.regex = Some(format!(
            "(?i){}{}{}",
            if start { "^" } else { "" },
            regex::escape(literal),
            if end { "$" } else { "" }
        ));
        // The model matches regexes against the whole value; unanchored
        // sides need a wildcard.
        if let Some(r) = out.regex.as_mut() {
            if !start {
                *r = r.replacen("(?i)", "(?i).*", 1);
            }
            if !end {
                r.push_str(".*");
            }
        }
        return out;
    }
    match anchored {
        (true, true) => out.exact = Some(literal.clone()),
        (true, false) => out.prefix = Some(literal.clone()),
        (false, true) => out.suffix = Some(literal.clone()),
        (false, false) => out.contains = Some(literal.clone()),
    }
    out
}

fn header_matcher(p: &mut Problems, path: &str, h: &HeaderMatcher) -> config::HeaderMatcher {
    let mut out = config::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert_match,
        ..Default::default()
    };
    if h.treat_missing_header_as_empty {
        p.unsupported(
            format!("{path}.treat_missing_header_as_empty"),
            "treat_missing_header_as_empty",
        );
    }
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::ExactMatch(s)) => out.exact = Some(s.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => out.regex = Some(r.regex.clone()),
        Some(HeaderMatchSpecifier::PresentMatch(b)) => out.present = Some(*b),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => out.prefix = Some(s.clone()),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => out.suffix = Some(s.clone()),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => out.contains = Some(s.clone()),
        Some(HeaderMatchSpecifier::StringMatch(m)) => {
            let s = string_matcher(p, &format!("{path}.string_match"), m);
            out.exact = s.exact;
            out.prefix = s.prefix;
            out.suffix = s.suffix;
            out.contains = s.contains;
            out.regex = s.regex;
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            p.unsupported(format!("{path}.range_match"), "range matching")
        }
        // Envoy: no specifier means "the header is present".
        None => out.present = Some(true),
    }
    out
}

fn query_matcher(
    p: &mut Problems,
    path: &str,
    q: &QueryParameterMatcher,
) -> config::QueryParameterMatcher {
    let mut out = config::QueryParameterMatcher {
        name: q.name.clone(),
        ..Default::default()
    };
    match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::PresentMatch(b)) => out.present = Some(*b),
        Some(QueryParameterMatchSpecifier::StringMatch(m)) => {
            let s = string_matcher(p, &format!("{path}.string_match"), m);
            // The model has exact and regex only: the other literal forms
            // become anchored regexes.
            let esc = |v: &str| regex::escape(v);
            out.exact = s.exact;
            out.regex = s
                .regex
                .or_else(|| s.prefix.map(|v| format!("{}.*", esc(&v))))
                .or_else(|| s.suffix.map(|v| format!(".*{}", esc(&v))))
                .or_else(|| s.contains.map(|v| format!(".*{}.*", esc(&v))));
        }
        None => out.present = Some(true),
    }
    out
}

fn route_action(p: &mut Problems, path: &str, a: &RouteAction) -> config::RouteAction {
    let mut out = config::RouteAction::default();
    match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => out.cluster = Some(c.clone()),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let wpath = format!("{path}.weighted_clusters");
            if w.random_value_specifier.is_some() {
                p.unsupported(
                    format!("{wpath}.random_value_specifier"),
                    "a random value specifier",
                );
            }
            let mut list = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                let cpath = format!("{wpath}.clusters[{i}]");
                if !c.cluster_header.is_empty() {
                    p.unsupported(format!("{cpath}.cluster_header"), "a cluster from a header");
                }
                if !c.request_headers_to_add.is_empty()
                    || !c.request_headers_to_remove.is_empty()
                    || !c.response_headers_to_add.is_empty()
                    || !c.response_headers_to_remove.is_empty()
                {
                    p.unsupported(cpath.clone(), "per-cluster header operations in a split");
                }
                if c.host_rewrite_specifier.is_some() {
                    p.unsupported(
                        format!("{cpath}.host_rewrite_literal"),
                        "a per-cluster host rewrite",
                    );
                }
                if c.metadata_match.is_some() {
                    p.unsupported(format!("{cpath}.metadata_match"), "subset load balancing");
                }
                list.push(config::WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight.as_ref().map_or(0, |v| v.value),
                });
            }
            // A zero weight is legal in Envoy (a split at 0/100); the model
            // keeps it and the router never picks it.
            out.weighted_clusters = Some(list);
        }
        Some(route_action::ClusterSpecifier::ClusterHeader(_)) => {
            p.unsupported(format!("{path}.cluster_header"), "a cluster from a header")
        }
        Some(route_action::ClusterSpecifier::ClusterSpecifierPlugin(_))
        | Some(route_action::ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => p.unsupported(
            format!("{path}.cluster_specifier_plugin"),
            "cluster specifier plugins",
        ),
        None => p.add(path, "needs cluster or weighted_clusters"),
    }
    out.timeout = opt_duration(p, &format!("{path}.timeout"), &a.timeout);
    if !a.prefix_rewrite.is_empty() {
        out.prefix_rewrite = Some(a.prefix_rewrite.clone());
    }
    if a.regex_rewrite.is_some() {
        p.unsupported(format!("{path}.regex_rewrite"), "regex rewrites");
    }
    if a.path_rewrite_policy.is_some() {
        p.unsupported(
            format!("{path}.path_rewrite_policy"),
            "a path rewrite policy",
        );
    }
    match &a.host_rewrite_specifier {
        None => {}
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            out.host_rewrite = Some(h.clone())
        }
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => {}
        Some(_) => p.unsupported(
            format!("{path}.host_rewrite"),
            "a host rewrite other than host_rewrite_literal",
        ),
    }
    if let Some(r) = &a.retry_policy {
        out.retry_policy = Some(Box::new(retry_policy(
            p,
            &format!("{path}.retry_policy"),
            r,
        )));
    }
    if a.retry_policy_typed_config.is_some() {
        p.unsupported(
            format!("{path}.retry_policy_typed_config"),
            "a typed retry policy",
        );
    }
    for (i, h) in a.hash_policy.iter().enumerate() {
        let hpath = format!("{path}.hash_policy[{i}]");
        let mut hp = config::HashPolicy {
            terminal: h.terminal,
            ..Default::default()
        };
        use route_action::hash_policy::PolicySpecifier;
        match &h.policy_specifier {
            Some(PolicySpecifier::Header(hd)) => {
                if hd.regex_rewrite.is_some() {
                    p.unsupported(
                        format!("{hpath}.header.regex_rewrite"),
                        "rewriting a hashed header",
                    );
                }
                hp.header = Some(HashHeader {
                    header_name: hd.header_name.clone(),
                });
            }
            Some(PolicySpecifier::Cookie(c)) => {
                if c.ttl.is_some() {
                    p.unsupported(format!("{hpath}.cookie.ttl"), "generating a hash cookie");
                }
                hp.cookie = Some(HashCookie {
                    name: c.name.clone(),
                });
            }
            Some(PolicySpecifier::ConnectionProperties(c)) => {
                hp.connection_properties = Some(HashConnection {
                    source_ip: c.source_ip,
                })
            }
            Some(PolicySpecifier::QueryParameter(q)) => {
                hp.query_parameter = Some(HashQuery {
                    name: q.name.clone(),
                })
            }
            Some(PolicySpecifier::FilterState(_)) => {
                p.unsupported(format!("{hpath}.filter_state"), "hashing on filter state")
            }
            None => p.add(
                hpath,
                "needs header, cookie, connection_properties or query_parameter",
            ),
        }
        out.hash_policy.push(hp);
    }
    if !a.request_mirror_policies.is_empty() {
        p.unsupported(
            format!("{path}.request_mirror_policies"),
            "request mirroring",
        );
    }
    if a.hedge_policy.is_some() {
        p.unsupported(format!("{path}.hedge_policy"), "request hedging");
    }
    if a.metadata_match.is_some() {
        p.unsupported(format!("{path}.metadata_match"), "subset load balancing");
    }
    if a.internal_redirect_policy.is_some() {
        p.unsupported(
            format!("{path}.internal_redirect_policy"),
            "internal redirects",
        );
    }
    if a.idle_timeout.is_some() {
        ignored("route_action", "idle_timeout");
    }
    if a.max_stream_duration.is_some() {
        ignored("route_action", "max_stream_duration");
    }
    if !a.upgrade_configs.is_empty() {
        ignored("route_action", "upgrade_configs");
    }
    if !a.rate_limits.is_empty() {
        ignored("route_action", "rate_limits");
    }
    if a.cors.is_some() {
        ignored("route_action", "cors");
    }
    out
}

fn retry_policy(p: &mut Problems, path: &str, r: &RetryPolicy) -> config::RetryPolicy {
    if !r.retriable_headers.is_empty() {
        p.unsupported(format!("{path}.retriable_headers"), "retriable_headers");
    }
    if !r.retriable_request_headers.is_empty() {
        p.unsupported(
            format!("{path}.retriable_request_headers"),
            "retriable_request_headers",
        );
    }
    if r.retry_priority.is_some() {
        p.unsupported(format!("{path}.retry_priority"), "retry priorities");
    }
    if r.rate_limited_retry_back_off.is_some() {
        p.unsupported(
            format!("{path}.rate_limited_retry_back_off"),
            "rate-limited retry backoff",
        );
    }
    if !r.retry_host_predicate.is_empty() {
        // Istio always sets previous_hosts; the balancer already moves on
        // to another endpoint on a retry most of the time.
        ignored("retry_policy", "retry_host_predicate");
    }
    let mut codes = Vec::with_capacity(r.retriable_status_codes.len());
    for (i, c) in r.retriable_status_codes.iter().enumerate() {
        match u16::try_from(*c) {
            Ok(c) => codes.push(c),
            Err(_) => p.add(
                format!("{path}.retriable_status_codes[{i}]"),
                "not an HTTP status",
            ),
        }
    }
    config::RetryPolicy {
        retry_on: r.retry_on.clone(),
        num_retries: r.num_retries.as_ref().map(|v| v.value),
        per_try_timeout: opt_duration(p, &format!("{path}.per_try_timeout"), &r.per_try_timeout),
        retry_back_off: r.retry_back_off.as_ref().map(|b| config::RetryBackOff {
            base_interval: opt_duration(
                p,
                &format!("{path}.retry_back_off.base_interval"),
                &b.base_interval,
            ),
            max_interval: opt_duration(
                p,
                &format!("{path}.retry_back_off.max_interval"),
                &b.max_interval,
            ),
        }),
        retriable_status_codes: codes,
    }
}

fn redirect(p: &mut Problems, path: &str, r: &RedirectAction) -> config::Redirect {
    let mut out = config::Redirect {
        host_redirect: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        strip_query: r.strip_query,
        response_code: match r.response_code {
            0 => 301,
            1 => 302,
            2 => 303,
            3 => 307,
            4 => 308,
            other => {
                p.add(
                    format!("{path}.response_code"),
                    format!("unknown code {other}"),
                );
                301
            }
        },
        ..Default::default()
    };
    if r.port_redirect != 0 {
        match u16::try_from(r.port_redirect) {
            Ok(port) => out.port_redirect = Some(port),
            Err(_) => p.add(format!("{path}.port_redirect"), "must be 1..=65535"),
        }
    }
    match &r.scheme_rewrite_specifier {
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(b)) => out.https_redirect = *b,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => {
            out.scheme_redirect = Some(s.clone())
        }
        None => {}
    }
    match &r.path_rewrite_specifier {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(s)) => {
            out.path_redirect = Some(s.clone())
        }
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(s)) => {
            out.prefix_rewrite = Some(s.clone())
        }
        Some(redirect_action::PathRewriteSpecifier::RegexRewrite(_)) => p.unsupported(
            format!("{path}.regex_rewrite"),
            "regex rewrites in a redirect",
        ),
        Some(redirect_action::PathRewriteSpecifier::PathRewrite(_)) => {
            p.unsupported(format!("{path}.path_rewrite"), "substitution path rewrites")
        }
        None => {}
    }
    out
}

/// Envoy's header operations → the model's `append` flag. `append_action`
/// wins over the deprecated `append` only when `append` is unset, as in
/// Envoy.
pub(crate) fn headers_to_add(
    p: &mut Problems,
    path: &str,
    list: &[HeaderValueOption],
) -> Vec<config::HeaderValueOption> {
    use header_value_option::HeaderAppendAction;
    let mut out = Vec::with_capacity(list.len());
    for (i, h) in list.iter().enumerate() {
        let hpath = format!("{path}[{i}]");
        let Some(header) = &h.header else {
            p.add(format!("{hpath}.header"), "is required");
            continue;
        };
        let value = if header.raw_value.is_empty() {
            header.value.clone()
        } else {
            match String::from_utf8(header.raw_value.clone()) {
                Ok(v) => v,
                Err(_) => {
                    p.unsupported(
                        format!("{hpath}.header.raw_value"),
                        "a non-UTF-8 header value",
                    );
                    continue;
                }
            }
        };
        let append = match (&h.append, HeaderAppendAction::try_from(h.append_action)) {
            (Some(b), _) => b.value,
            (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => true,
            (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => false,
            (None, Ok(HeaderAppendAction::AddIfAbsent)) => {
                p.unsupported(format!("{hpath}.append_action"), "ADD_IF_ABSENT");
                continue;
            }
            (None, Ok(HeaderAppendAction::OverwriteIfExists)) => {
                p.unsupported(format!("{hpath}.append_action"), "OVERWRITE_IF_EXISTS");
                continue;
            }
            (None, Err(_)) => {
                p.add(
                    format!("{hpath}.append_action"),
                    format!("unknown action {}", h.append_action),
                );
                continue;
            }
        };
        out.push(config::HeaderValueOption {
            name: header.key.clone(),
            value,
            append,
        });
    }
    out
}
