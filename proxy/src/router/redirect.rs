//! Redirect responses: the `Location` is the request's URL with the
//! configured parts swapped, built the way Envoy's `newUri` builds it.

use http::{HeaderValue, StatusCode};

use super::matcher::PathMatch;
use super::rewrite::{check_path, PathRewrite};
use super::table::Errors;
use super::RequestView;
use crate::config::Redirect;

#[derive(Debug, Clone)]
pub struct RedirectAction {
    status: StatusCode,
    /// Lowercased; None keeps the request's.
    scheme: Option<Box<str>>,
    /// None keeps the request's authority.
    host: Option<Box<str>>,
    port: Option<u16>,
    path: PathChange,
    strip_query: bool,
}

#[derive(Debug, Clone)]
enum PathChange {
    Keep,
    /// `path_redirect`; a query in it replaces the request's, and
    /// `strip_query` does not remove it (Envoy's rule).
    Replace {
        path: Box<str>,
        query: Option<Box<str>>,
    },
    Rewrite(PathRewrite),
}

impl RedirectAction {
    /// Status and `Location` for this request; `scheme` is the request's
    /// (`http`/`https`).
    pub fn respond(&self, req: &RequestView<'_>, scheme: &str) -> (StatusCode, HeaderValue) {
        let location = self.location(req, scheme);
        let value = HeaderValue::from_bytes(location.as_bytes()).unwrap_or_else(|_| {
            // Only control characters are refused, and request parts and
            // config values cannot contain them; dropping them is a
            // fallback that keeps this infallible.
            let clean: String = location.chars().filter(|c| !c.is_control()).collect();
            HeaderValue::from_bytes(clean.as_bytes()).unwrap_or(HeaderValue::from_static("/"))
        });
        (self.status, value)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Location` for this request, as a string.
    pub fn location(&self, req: &RequestView<'_>, scheme: &str) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let scheme_changed = !new_scheme.eq_ignore_ascii_case(scheme);
        let host: &str = match (&self.host, self.port) {
            (Some(h), None) => h,
            (Some(h), Some(_)) => strip_port(h),
            (None, Some(_)) => strip_port(req.authority),
            (None, None) if scheme_changed => {
                // A port that was the old scheme's default would be wrong
                // for the new one (`http://a:80` → `https://a`); any other
                // port was chosen on purpose and is kept.
                let host = strip_port(req.authority);
                let port = &req.authority[host.len()..];
                let default = match scheme.to_ascii_lowercase().as_str() {
                    "http" => ":80",
                    "https" => ":443",
                    _ => "",
                };
                if !default.is_empty() && port == default {
                    host
                } else {
                    req.authority
                }
            }
            (None, None) => req.authority,
        };

        let mut out = String::with_capacity(
            new_scheme.len()
                + 3
                + host.len()
                + 6
                + req.path.len()
                + req.query.map_or(0, str::len)
                + 1,
        );
        // Without any authority (HTTP/1.0 without Host) only a relative
        // reference can be built.
        if !host.is_empty() {
            out.push_str(new_scheme);
            out.push_str("://");
            out.push_str(host);
            if let Some(port) = self.port {
                out.push(':');
                out.push_str(&port.to_string());
            }
        }
        let mut query = if self.strip_query { None } else { req.query };
        let path_start = out.len();
        match &self.path {
            PathChange::Keep => out.push_str(req.path),
            PathChange::Replace { path, query: q } => {
                out.push_str(path);
                if q.is_some() {
                    query = q.as_deref();
                }
            }
            PathChange::Rewrite(rw) => rw.apply(req.path, &mut out),
        }
        if out.len() == path_start {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// Compiles `r` at config path `p` (`...routes[3].redirect`); `matcher`
    /// is the route's path match, which `prefix_rewrite` depends on (None
    /// when it failed to compile).
    pub(super) fn build(
        r: &Redirect,
        p: &str,
        matcher: Option<&PathMatch>,
        errs: &mut Errors,
    ) -> Option<RedirectAction> {
        let before = errs.len();
        let status = match r.response_code {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(r.response_code).ok(),
            code => {
                errs.push(
                    format!("{p}.response_code"),
                    format!("invalid redirect code {code} (use 301, 302, 303, 307 or 308)"),
                );
                None
            }
        };
        let scheme = match (&r.scheme_redirect, r.https_redirect) {
            (Some(_), true) => {
                errs.push(p, "scheme_redirect and https_redirect are exclusive");
                None
            }
            (Some(s), false) => {
                if !is_scheme(s) {
                    errs.push(
                        format!("{p}.scheme_redirect"),
                        format!("invalid scheme {s:?}"),
                    );
                }
                Some(s.to_ascii_lowercase().into())
            }
            (None, true) => Some("https".into()),
            (None, false) => None,
        };
        if let Some(h) = &r.host_redirect {
            if h.is_empty() || h.parse::<http::uri::Authority>().is_err() || h.contains('@') {
                errs.push(format!("{p}.host_redirect"), format!("invalid host {h:?}"));
            }
        }
        if r.port_redirect == Some(0) {
            errs.push(format!("{p}.port_redirect"), "port must be 1-65535");
        }
        let path = match (&r.path_redirect, &r.prefix_rewrite) {
            (Some(_), Some(_)) => {
                errs.push(p, "path_redirect and prefix_rewrite are exclusive");
                PathChange::Keep
            }
            (Some(path), None) => {
                let pp = format!("{p}.path_redirect");
                if !path.starts_with('/') {
                    errs.push(&pp, format!("path {path:?} must start with \"/\""));
                }
                check_path(path, true, &pp, errs);
                match path.split_once('?') {
                    Some((path, query)) => PathChange::Replace {
                        path: path.into(),
                        query: Some(query.into()),
                    },
                    None => PathChange::Replace {
                        path: path.as_str().into(),
                        query: None,
                    },
                }
            }
            (None, Some(with)) => {
                check_path(with, false, &format!("{p}.prefix_rewrite"), errs);
                match matcher {
                    Some(m) => PathChange::Rewrite(PathRewrite::new(m, with)),
                    None => PathChange::Keep,
                }
            }
            (None, None) => PathChange::Keep,
        };
        if errs.len() > before {
            return None;
        }
        Some(RedirectAction {
            status: status?,
            scheme,
            host: r.host_redirect.as_deref().map(Into::into),
            port: r.port_redirect,
            path,
            strip_query: r.strip_query,
        })
    }
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `authority` without its `:port`, if it has one (`[::1]:80` → `[::1]`;
/// a bare IPv6 address is left whole).
pub(super) fn strip_port(authority: &str) -> &str {
    let Some(colon) = authority.rfind(':') else {
        return authority;
    };
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if !port.bytes().all(|b| b.is_ascii_digit()) || (host.contains(':') && !bracketed) {
        return authority;
    }
    host
}
