//! `header_mutation`: add, set, append and remove headers on the request and
//! the response, with values that may name request facts (`%REQ_ID%`, …).
//! Values are split into literal and variable segments at build time, so a
//! request only concatenates; a value without variables is a ready
//! `HeaderValue` cloned per request (a reference count, no copy).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{request, response, HeaderMap, HeaderName, HeaderValue, Version};
use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_config;
use crate::ctx::{FilterCx, RequestCtx};
use crate::env::FilterEnv;
use crate::error::{Errors, FilterConfigError};
use crate::{Action, Flow, HttpFilter};

pub const NAME: &str = "header_mutation";

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The filter's config (see filters/README.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutationConfig {
    #[serde(default)]
    pub request: Mutations,
    #[serde(default)]
    pub response: Mutations,
}

/// Applied in the order remove, set, append, add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutations {
    /// Header names to delete (every value).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Replace every existing value (or add when absent).
    #[serde(default)]
    pub set: Vec<HeaderEntry>,
    /// Add one more value next to existing ones.
    #[serde(default)]
    pub append: Vec<HeaderEntry>,
    /// Add only when the header is absent.
    #[serde(default)]
    pub add: Vec<HeaderEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEntry {
    pub name: String,
    pub value: String,
}

pub(crate) fn build(
    config: &Value,
    _env: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: HeaderMutationConfig = parse_config(config)?;
    let mut errs = Errors::default();
    let request = compile(&c.request, "request", Side::Request, &mut errs);
    let response = compile(&c.response, "response", Side::Response, &mut errs);
    errs.finish(Arc::new(HeaderMutation { request, response }) as Arc<dyn HttpFilter>)
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    ReqId,
    RemoteAddress,
    RemoteAddressWithoutPort,
    UpstreamHost,
    Protocol,
    StartTime,
}

#[derive(Debug)]
enum Segment {
    Literal(Box<str>),
    Var(Var),
}

#[derive(Debug)]
enum Template {
    Static(HeaderValue),
    Format(Box<[Segment]>),
}

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Set,
    Append,
    Add,
}

#[derive(Debug)]
enum Op {
    Remove(HeaderName),
    Put(OpKind, HeaderName, Template),
}

pub(crate) struct HeaderMutation {
    request: Box<[Op]>,
    response: Box<[Op]>,
}

fn compile(m: &Mutations, p: &str, side: Side, errs: &mut Errors) -> Box<[Op]> {
    let mut ops = Vec::new();
    for (i, name) in m.remove.iter().enumerate() {
        if let Some(n) = header_name(name, &format!("{p}.remove[{i}]"), errs) {
            ops.push(Op::Remove(n));
        }
    }
    for (kind, field, list) in [
        (OpKind::Set, "set", &m.set),
        (OpKind::Append, "append", &m.append),
        (OpKind::Add, "add", &m.add),
    ] {
        for (i, e) in list.iter().enumerate() {
            let at = format!("{p}.{field}[{i}]");
            let name = header_name(&e.name, &format!("{at}.name"), errs);
            let template = parse_template(&e.value, side)
                .map_err(|reason| errs.push(format!("{at}.value"), reason))
                .ok();
            if let (Some(n), Some(t)) = (name, template) {
                ops.push(Op::Put(kind, n, t));
            }
        }
    }
    ops.into()
}

fn header_name(name: &str, p: &str, errs: &mut Errors) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        // Rewriting the authority belongs to the route (host_rewrite), which
        // also fixes the URI; a header edit would let the two disagree.
        Ok(n) if n == http::header::HOST => {
            errs.push(
                p,
                "the host header cannot be changed here; use the route's host_rewrite",
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(p, format!("invalid header name {name:?}"));
            None
        }
    }
}

/// Splits `value` into literals and `%VARIABLE%`s; `%%` is a literal `%`.
fn parse_template(value: &str, side: Side) -> Result<Template, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            literal.push('%');
            rest = tail;
            continue;
        }
        let Some(end) = after.find('%') else {
            return Err(format!(
                "unterminated variable in {value:?} (write %% for a literal %)"
            ));
        };
        let var = match &after[..end] {
            "REQ_ID" => Var::ReqId,
            "DOWNSTREAM_REMOTE_ADDRESS" => Var::RemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Var::RemoteAddressWithoutPort,
            "UPSTREAM_HOST" if side == Side::Response => Var::UpstreamHost,
            "UPSTREAM_HOST" => {
                return Err("%UPSTREAM_HOST% is known on the response side only".into())
            }
            "PROTOCOL" => Var::Protocol,
            "START_TIME" => Var::StartTime,
            other => {
                return Err(format!(
                    "unknown variable %{other}% (known: %REQ_ID%, %DOWNSTREAM_REMOTE_ADDRESS%, \
                     %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %UPSTREAM_HOST%, %PROTOCOL%, \
                     %START_TIME%)"
                ))
            }
        };
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal).into()));
        }
        segments.push(Segment::Var(var));
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    for s in segments.iter().filter_map(|s| match s {
        Segment::Literal(l) => Some(&**l),
        Segment::Var(_) => None,
    }) {
        HeaderValue::from_str(s).map_err(|_| format!("invalid header value {value:?}"))?;
    }
    if segments.is_empty() {
        return HeaderValue::from_str(&literal)
            .map(Template::Static)
            .map_err(|_| format!("invalid header value {value:?}"));
    }
    if !literal.is_empty() {
        HeaderValue::from_str(&literal).map_err(|_| format!("invalid header value {value:?}"))?;
        segments.push(Segment::Literal(literal.into()));
    }
    Ok(Template::Format(segments.into()))
}

impl Template {
    /// The value for this request; `None` when it comes out empty (an
    /// unknown request id, say): Envoy does not add empty headers.
    fn render(&self, ctx: &RequestCtx, request_headers: Option<&HeaderMap>) -> Option<HeaderValue> {
        let segments = match self {
            Template::Static(v) => return Some(v.clone()),
            Template::Format(s) => s,
        };
        let mut out = String::with_capacity(64);
        for s in segments.iter() {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Var(v) => render_var(*v, ctx, request_headers, &mut out),
            }
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }
}

fn render_var(v: Var, ctx: &RequestCtx, request_headers: Option<&HeaderMap>, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = match v {
        Var::ReqId => {
            let id = ctx
                .request_id
                .as_ref()
                .or_else(|| request_headers.and_then(|h| h.get(X_REQUEST_ID)));
            if let Some(s) = id.and_then(|id| id.to_str().ok()) {
                out.push_str(s);
            }
            Ok(())
        }
        Var::RemoteAddress => write_addr(ctx.downstream_remote, true, out),
        Var::RemoteAddressWithoutPort => write_addr(ctx.downstream_remote, false, out),
        Var::UpstreamHost => match ctx.upstream_host {
            Some(a) => write_addr(a, true, out),
            None => Ok(()),
        },
        Var::Protocol => {
            out.push_str(protocol(ctx.protocol));
            Ok(())
        }
        Var::StartTime => write_rfc3339(ctx.start_time, out),
    };
}

/// An address as `Display` writes it, with IPv4 done by hand: this runs on
/// every request that names an address, and `core::fmt` costs several times
/// the digits themselves.
fn write_addr(addr: std::net::SocketAddr, port: bool, out: &mut String) -> std::fmt::Result {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(u32::from(octet), out);
            }
            if port {
                out.push(':');
                push_decimal(u32::from(v4.port()), out);
            }
            Ok(())
        }
        v6 if port => write!(out, "{v6}"),
        v6 => write!(out, "{}", v6.ip()),
    }
}

fn push_decimal(mut n: u32, out: &mut String) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `2024-05-01T12:34:56.789Z`, Envoy's default `%START_TIME%` form.
fn write_rfc3339(t: SystemTime, out: &mut String) -> std::fmt::Result {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn apply(ops: &[Op], headers: &mut HeaderMap, ctx: &RequestCtx, side: Side) {
    for op in ops {
        match op {
            Op::Remove(n) => {
                headers.remove(n);
            }
            Op::Put(kind, name, t) => {
                let value = if side == Side::Request {
                    t.render(ctx, Some(headers))
                } else {
                    t.render(ctx, None)
                };
                let Some(value) = value else { continue };
                match kind {
                    OpKind::Set => {
                        headers.insert(name.clone(), value);
                    }
                    OpKind::Append => {
                        headers.append(name.clone(), value);
                    }
                    OpKind::Add => {
                        if !headers.contains_key(name) {
                            headers.insert(name.clone(), value);
                        }
                    }
                }
            }
        }
    }
}

impl HttpFilter for HeaderMutation {
    fn on_request_head(&self, cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        apply(&self.request, &mut head.headers, cx.req, Side::Request);
        Action::Continue
    }

    fn on_response_head(&self, cx: &mut FilterCx<'_>, head: &mut response::Parts) -> Flow {
        apply(&self.response, &mut head.headers, cx.req, Side::Response);
        Flow::Continue
    }
}

#[cfg(test)]
mod addr_tests {
    use super::write_addr;
    use std::net::SocketAddr;

    #[test]
    fn addresses_render_as_display_does() {
        for text in [
            "127.0.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.2.30.4:8080",
            "[::1]:443",
            "[2001:db8::7]:1",
        ] {
            let a: SocketAddr = text.parse().expect("valid");
            let mut with = String::new();
            write_addr(a, true, &mut with).expect("string");
            assert_eq!(with, a.to_string());
            let mut without = String::new();
            write_addr(a, false, &mut without).expect("string");
            assert_eq!(without, a.ip().to_string());
        }
    }
}

#[cfg(test)]
mod tests;
