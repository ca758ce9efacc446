//! Request hashing for ring hash and Maglev clusters, after Envoy's
//! `HashPolicyImpl`: every policy that yields a value folds it into the hash
//! with a rotate-and-xor, and a `terminal` policy ends the walk once a hash
//! exists (Envoy checks the accumulated hash, not only this policy's).

use std::io::Write;
use std::net::IpAddr;

use xxhash_rust::xxh64::xxh64;

use super::matcher::{query_value, HeaderSource};
use super::table::Errors;
use super::RequestView;
use crate::config::HashPolicy as HashPolicyConfig;

#[derive(Debug, Clone)]
pub(super) struct HashPolicy {
    kind: Kind,
    terminal: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Header(HeaderSource),
    Cookie(Box<str>),
    SourceIp,
    Query(Box<str>),
}

pub(super) fn compute(policies: &[HashPolicy], req: &RequestView<'_>) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        if let Some(new) = policy.kind.evaluate(req) {
            // Rotating keeps two identical policies from cancelling out.
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ new);
        }
        if policy.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

impl Kind {
    fn evaluate(&self, req: &RequestView<'_>) -> Option<u64> {
        match self {
            Kind::Header(HeaderSource::Name(name)) => {
                let mut values = req.headers.get_all(name).iter();
                let first = values.next()?;
                let Some(second) = values.next() else {
                    return Some(xxh64(first.as_bytes(), 0));
                };
                // Sorted and chained, as Envoy does, so the order the values
                // arrived in does not change the hash.
                let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
                all.extend(values.map(|v| v.as_bytes()));
                all.sort_unstable();
                Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
            }
            Kind::Header(source) => source.value(req).map(|v| xxh64(&v, 0)),
            Kind::Cookie(name) => cookie_value(req, name).map(|v| xxh64(v.as_bytes(), 0)),
            Kind::SourceIp => Some(hash_ip(req.peer_ip)),
            Kind::Query(name) => req
                .query
                .and_then(|q| query_value(q, name))
                .map(|v| xxh64(v.as_bytes(), 0)),
        }
    }
}

/// xxh64 of the address's text form, as Envoy hashes it, formatted on the
/// stack.
fn hash_ip(ip: IpAddr) -> u64 {
    let mut buf = [0u8; 64];
    let mut cursor = &mut buf[..];
    let len = match write!(cursor, "{ip}") {
        Ok(()) => 64 - cursor.len(),
        Err(_) => 0,
    };
    xxh64(&buf[..len], 0)
}

/// The first `name` cookie across every `Cookie` header (HTTP/2 may split
/// them), with surrounding double quotes removed as Envoy does.
fn cookie_value<'r>(req: &RequestView<'r>, name: &str) -> Option<&'r str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// Compiles `policies` at config path `p` (`...route.hash_policy`). A
/// `connection_properties` policy with `source_ip: false` hashes nothing and
/// is dropped, as in Envoy.
pub(super) fn build(
    policies: &[HashPolicyConfig],
    p: &str,
    errs: &mut Errors,
) -> Option<Vec<HashPolicy>> {
    let mut out = Vec::with_capacity(policies.len());
    let mut ok = true;
    for (i, hp) in policies.iter().enumerate() {
        let pp = format!("{p}[{i}]");
        let set = [
            ("header", hp.header.is_some()),
            ("cookie", hp.cookie.is_some()),
            ("connection_properties", hp.connection_properties.is_some()),
            ("query_parameter", hp.query_parameter.is_some()),
        ];
        if !errs.exactly_one(&pp, &set) {
            ok = false;
            continue;
        }
        let kind = if let Some(h) = &hp.header {
            match HeaderSource::parse(&h.header_name) {
                Ok(source) => Some(Kind::Header(source)),
                Err(e) => {
                    errs.push(format!("{pp}.header.header_name"), e);
                    None
                }
            }
        } else if let Some(c) = &hp.cookie {
            if c.name.is_empty() {
                errs.push(format!("{pp}.cookie.name"), "must not be empty");
                None
            } else {
                Some(Kind::Cookie(c.name.as_str().into()))
            }
        } else if let Some(q) = &hp.query_parameter {
            if q.name.is_empty() {
                errs.push(format!("{pp}.query_parameter.name"), "must not be empty");
                None
            } else {
                Some(Kind::Query(q.name.as_str().into()))
            }
        } else if hp
            .connection_properties
            .as_ref()
            .is_some_and(|c| c.source_ip)
        {
            Some(Kind::SourceIp)
        } else {
            continue;
        };
        match kind {
            Some(kind) => out.push(HashPolicy {
                kind,
                terminal: hp.terminal,
            }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
