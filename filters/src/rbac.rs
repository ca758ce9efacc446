//! `rbac`: Envoy's role-based access control on the request head. With
//! `action: ALLOW` a request matching no policy is denied; with `DENY` a
//! request matching any policy is. A policy matches when any of its
//! permissions and any of its principals match. Denied: 403
//! `RBAC: access denied`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{request, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_config;
use crate::ctx::{FilterCx, RequestCtx};
use crate::env::FilterEnv;
use crate::error::{Errors, FilterConfigError};
use crate::matcher::{HeaderMatch, HeaderMatcher, StrMatcher, StringMatch};
use crate::{Action, HttpFilter, LocalReply};

pub const NAME: &str = "rbac";

/// The filter's config (see filters/README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacConfig {
    pub action: RbacAction,
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RbacAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What the request asks for. Exactly one key per entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Permission {
    /// `any: true` matches every request.
    Any(bool),
    /// The path without the query.
    UrlPath(UrlPath),
    /// The request method (`method: GET`).
    Method(String),
    Header(HeaderMatcher),
    AndRules(Rules),
    OrRules(Rules),
    NotRule(Box<Permission>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlPath {
    pub path: StringMatch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub rules: Vec<Permission>,
}

/// Who asks. Exactly one key per entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Principal {
    Any(bool),
    /// The downstream peer's address (the direct connection).
    #[serde(alias = "direct_remote_ip")]
    SourceIp(Cidr),
    Header(HeaderMatcher),
    AndIds(Ids),
    OrIds(Ids),
    NotId(Box<Principal>),
    /// The mTLS peer identity; matches only once the proxy puts one in
    /// [`RequestCtx::peer_principal`]. Without `principal_name`: any
    /// authenticated peer.
    Authenticated(Authenticated),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cidr {
    pub address_prefix: String,
    /// Default: the full address length (one address).
    #[serde(default)]
    pub prefix_len: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    pub ids: Vec<Principal>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authenticated {
    #[serde(default)]
    pub principal_name: Option<StringMatch>,
}

pub(crate) fn build(
    config: &Value,
    _env: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: RbacConfig = parse_config(config)?;
    let mut errs = Errors::default();
    let mut policies = Vec::with_capacity(c.policies.len());
    for (name, p) in &c.policies {
        let at = format!("policies.{name}");
        if p.permissions.is_empty() {
            errs.push(
                format!("{at}.permissions"),
                "at least one permission is required",
            );
        }
        if p.principals.is_empty() {
            errs.push(
                format!("{at}.principals"),
                "at least one principal is required",
            );
        }
        let perms = compile_list(
            &p.permissions,
            &format!("{at}.permissions"),
            &mut errs,
            perm,
        );
        let ids = compile_list(
            &p.principals,
            &format!("{at}.principals"),
            &mut errs,
            principal,
        );
        policies.push(CompiledPolicy { perms, ids });
    }
    errs.finish(Arc::new(Rbac {
        deny: c.action == RbacAction::Deny,
        policies,
    }) as Arc<dyn HttpFilter>)
}

// === Compiled ===

enum Perm {
    Any,
    Path(StrMatcher),
    Method(Method),
    Header(HeaderMatch),
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
}

enum Id {
    Any,
    Ip(CidrRange),
    Header(HeaderMatch),
    And(Vec<Id>),
    Or(Vec<Id>),
    Not(Box<Id>),
    Authenticated(Option<StrMatcher>),
}

#[derive(Debug, Clone, Copy)]
enum CidrRange {
    V4(u32, u32),
    V6(u128, u128),
}

struct CompiledPolicy {
    perms: Vec<Perm>,
    ids: Vec<Id>,
}

pub(crate) struct Rbac {
    deny: bool,
    policies: Vec<CompiledPolicy>,
}

fn compile_list<T, U>(
    list: &[T],
    p: &str,
    errs: &mut Errors,
    one: fn(&T, &str, &mut Errors) -> Option<U>,
) -> Vec<U> {
    list.iter()
        .enumerate()
        .filter_map(|(i, x)| one(x, &format!("{p}[{i}]"), errs))
        .collect()
}

fn any(on: bool, p: &str, errs: &mut Errors) -> Option<()> {
    if on {
        Some(())
    } else {
        errs.push(
            format!("{p}.any"),
            "must be true (leave the entry out instead)",
        );
        None
    }
}

fn perm(x: &Permission, p: &str, errs: &mut Errors) -> Option<Perm> {
    Some(match x {
        Permission::Any(on) => any(*on, p, errs).map(|()| Perm::Any)?,
        Permission::UrlPath(u) => Perm::Path(StrMatcher::compile(
            &u.path,
            &format!("{p}.url_path.path"),
            errs,
        )?),
        Permission::Method(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) => Perm::Method(m),
            Err(_) => {
                errs.push(format!("{p}.method"), format!("invalid method {m:?}"));
                return None;
            }
        },
        Permission::Header(h) => {
            Perm::Header(HeaderMatch::compile(h, &format!("{p}.header"), errs)?)
        }
        Permission::AndRules(r) => Perm::And(compile_rules(
            &r.rules,
            &format!("{p}.and_rules.rules"),
            errs,
        )?),
        Permission::OrRules(r) => Perm::Or(compile_rules(
            &r.rules,
            &format!("{p}.or_rules.rules"),
            errs,
        )?),
        Permission::NotRule(r) => Perm::Not(Box::new(perm(r, &format!("{p}.not_rule"), errs)?)),
    })
}

fn compile_rules(rules: &[Permission], p: &str, errs: &mut Errors) -> Option<Vec<Perm>> {
    if rules.is_empty() {
        errs.push(p, "at least one rule is required");
        return None;
    }
    let before = errs.0.len();
    let out = compile_list(rules, p, errs, perm);
    (errs.0.len() == before).then_some(out)
}

fn compile_ids(ids: &[Principal], p: &str, errs: &mut Errors) -> Option<Vec<Id>> {
    if ids.is_empty() {
        errs.push(p, "at least one principal is required");
        return None;
    }
    let before = errs.0.len();
    let out = compile_list(ids, p, errs, principal);
    (errs.0.len() == before).then_some(out)
}

fn principal(x: &Principal, p: &str, errs: &mut Errors) -> Option<Id> {
    Some(match x {
        Principal::Any(on) => any(*on, p, errs).map(|()| Id::Any)?,
        Principal::SourceIp(c) => Id::Ip(cidr(c, &format!("{p}.source_ip"), errs)?),
        Principal::Header(h) => Id::Header(HeaderMatch::compile(h, &format!("{p}.header"), errs)?),
        Principal::AndIds(i) => Id::And(compile_ids(&i.ids, &format!("{p}.and_ids.ids"), errs)?),
        Principal::OrIds(i) => Id::Or(compile_ids(&i.ids, &format!("{p}.or_ids.ids"), errs)?),
        Principal::NotId(i) => Id::Not(Box::new(principal(i, &format!("{p}.not_id"), errs)?)),
        Principal::Authenticated(a) => Id::Authenticated(match &a.principal_name {
            None => None,
            Some(m) => Some(StrMatcher::compile(
                m,
                &format!("{p}.authenticated.principal_name"),
                errs,
            )?),
        }),
    })
}

fn cidr(c: &Cidr, p: &str, errs: &mut Errors) -> Option<CidrRange> {
    let Ok(ip) = c.address_prefix.trim().parse::<IpAddr>() else {
        errs.push(
            format!("{p}.address_prefix"),
            format!("invalid IP address {:?}", c.address_prefix),
        );
        return None;
    };
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.unwrap_or(bits);
    if len > bits {
        errs.push(
            format!("{p}.prefix_len"),
            format!("{len} is longer than the address ({bits} bits)"),
        );
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            CidrRange::V4(u32::from(v4) & mask, mask)
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            CidrRange::V6(u128::from(v6) & mask, mask)
        }
    })
}

impl CidrRange {
    fn contains(self, ip: IpAddr) -> bool {
        // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
        match (self, ip.to_canonical()) {
            (CidrRange::V4(net, mask), IpAddr::V4(a)) => u32::from(a) & mask == net,
            (CidrRange::V6(net, mask), IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }
}

impl Perm {
    fn matches(&self, head: &request::Parts) -> bool {
        match self {
            Perm::Any => true,
            Perm::Path(m) => m.matches(head.uri.path().as_bytes()),
            Perm::Method(m) => head.method == *m,
            Perm::Header(h) => h.matches(head),
            Perm::And(all) => all.iter().all(|p| p.matches(head)),
            Perm::Or(any) => any.iter().any(|p| p.matches(head)),
            Perm::Not(p) => !p.matches(head),
        }
    }
}

impl Id {
    fn matches(&self, ctx: &RequestCtx, head: &request::Parts) -> bool {
        match self {
            Id::Any => true,
            Id::Ip(c) => c.contains(ctx.downstream_remote.ip()),
            Id::Header(h) => h.matches(head),
            Id::And(all) => all.iter().all(|i| i.matches(ctx, head)),
            Id::Or(any) => any.iter().any(|i| i.matches(ctx, head)),
            Id::Not(i) => !i.matches(ctx, head),
            Id::Authenticated(name) => match (&ctx.peer_principal, name) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(p), Some(m)) => m.matches(p.as_bytes()),
            },
        }
    }
}

impl HttpFilter for Rbac {
    fn on_request_head(&self, cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        let matched = self.policies.iter().any(|p| {
            p.perms.iter().any(|x| x.matches(head)) && p.ids.iter().any(|i| i.matches(cx.req, head))
        });
        if matched == self.deny {
            Action::Respond(LocalReply::new(
                StatusCode::FORBIDDEN,
                "RBAC: access denied",
            ))
        } else {
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests;
