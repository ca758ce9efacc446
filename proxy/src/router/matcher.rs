//! Route matching: path (prefix, exact or regex), then every header matcher,
//! then every query-parameter matcher.

use std::borrow::Cow;

use http::HeaderName;
use regex::{Regex, RegexBuilder};

use super::table::Errors;
use super::RequestView;
use crate::config::{HeaderMatcher, QueryParameterMatcher, RouteMatch};

#[derive(Debug, Clone)]
pub(super) struct RouteMatcher {
    pub(super) path: PathMatch,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

#[derive(Debug, Clone)]
pub(super) enum PathMatch {
    /// Case-insensitive comparisons are ASCII-only, as Envoy's, so a match
    /// always covers exactly `prefix.len()` bytes of the path.
    Prefix {
        prefix: Box<str>,
        case_sensitive: bool,
    },
    Exact {
        path: Box<str>,
        case_sensitive: bool,
    },
    /// Anchored at both ends: the whole path must match.
    Regex(Regex),
}

impl RouteMatcher {
    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|q| q.matches(req.query))
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix {
                prefix,
                case_sensitive,
            } => {
                let Some(head) = path.as_bytes().get(..prefix.len()) else {
                    return false;
                };
                if *case_sensitive {
                    head == prefix.as_bytes()
                } else {
                    head.eq_ignore_ascii_case(prefix.as_bytes())
                }
            }
            PathMatch::Exact {
                path: want,
                case_sensitive,
            } => {
                if *case_sensitive {
                    path == &**want
                } else {
                    path.eq_ignore_ascii_case(want)
                }
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// Compiles `m` (at config path `p`, e.g. `...routes[3].match`).
pub(super) fn compile(m: &RouteMatch, p: &str, errs: &mut Errors) -> Option<RouteMatcher> {
    let path = compile_path(m, p, errs);
    let headers: Vec<Option<HeaderMatch>> = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| compile_header(h, &format!("{p}.headers[{i}]"), errs))
        .collect();
    let query: Vec<Option<QueryMatch>> = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| compile_query(q, &format!("{p}.query_parameters[{i}]"), errs))
        .collect();
    Some(RouteMatcher {
        path: path?,
        headers: headers.into_iter().collect::<Option<_>>()?,
        query: query.into_iter().collect::<Option<_>>()?,
    })
}

fn compile_path(m: &RouteMatch, p: &str, errs: &mut Errors) -> Option<PathMatch> {
    let set = [
        ("prefix", m.prefix.is_some()),
        ("path", m.path.is_some()),
        ("regex", m.regex.is_some()),
    ];
    if !errs.exactly_one(p, &set) {
        return None;
    }
    let case_sensitive = m.case_sensitive;
    if let Some(prefix) = &m.prefix {
        return Some(PathMatch::Prefix {
            prefix: prefix.as_str().into(),
            case_sensitive,
        });
    }
    if let Some(path) = &m.path {
        return Some(PathMatch::Exact {
            path: path.as_str().into(),
            case_sensitive,
        });
    }
    let pattern = m.regex.as_deref()?;
    full_match_regex(pattern, !case_sensitive)
        .map(PathMatch::Regex)
        .map_err(|e| errs.push(format!("{p}.regex"), e))
        .ok()
}

/// Compiles `pattern` to match whole inputs only, as Envoy's RE2 full match.
///
/// Compiled once, wrapped in `^(?:...)$`. The pattern on its own must parse
/// too: that rejects inputs such as `a)|(b` that only become valid once
/// wrapped. Parsing is cheap next to compiling (a mesh config holds
/// thousands of regexes); the pattern is compiled on its own only to word
/// an error, so messages carry the user's column numbers.
pub(super) fn full_match_regex(pattern: &str, case_insensitive: bool) -> Result<Regex, String> {
    let build = |p: &str| {
        RegexBuilder::new(p)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(regex_error)
    };
    match (parses(pattern), build(&format!("^(?:{pattern})$"))) {
        (true, Ok(re)) => Ok(re),
        (_, anchored) => build(pattern).and(anchored),
    }
}

fn full_match_bytes_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    let build = |p: &str| regex::bytes::Regex::new(p).map_err(regex_error);
    match (parses(pattern), build(&format!("^(?:{pattern})$"))) {
        (true, Ok(re)) => Ok(re),
        (_, anchored) => build(pattern).and(anchored),
    }
}

/// Whether `pattern` parses on its own (syntax only, no compilation).
fn parses(pattern: &str) -> bool {
    regex_syntax::ast::parse::Parser::new()
        .parse(pattern)
        .is_ok()
}

/// `invalid regex: <message>`, on one line: the regex crate's syntax errors
/// span several lines (pattern, caret, message) and a config error is one.
fn regex_error(e: regex::Error) -> String {
    let text = e.to_string();
    let message = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or(text.as_str(), |l| l.trim());
    let message = message.strip_prefix("error: ").unwrap_or(message);
    format!("invalid regex: {message}")
}

// === Headers ===

/// Where a matched or hashed header value comes from. Pseudo-headers are
/// read from the request view, and `host` is treated as `:authority` so a
/// matcher works the same over HTTP/1.1 and HTTP/2.
#[derive(Debug, Clone)]
pub(super) enum HeaderSource {
    Name(HeaderName),
    Authority,
    Method,
    /// `:path`: path and query, as on the wire.
    Path,
}

impl HeaderSource {
    pub(super) fn parse(name: &str) -> Result<HeaderSource, String> {
        match name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => Ok(HeaderSource::Authority),
            ":method" => Ok(HeaderSource::Method),
            ":path" => Ok(HeaderSource::Path),
            n if n.starts_with(':') => Err(format!("unsupported pseudo-header {name:?}")),
            _ => HeaderName::from_bytes(name.as_bytes())
                .map(HeaderSource::Name)
                .map_err(|_| format!("invalid header name {name:?}")),
        }
    }

    /// The header's value; several values of one header are joined with
    /// `,` as Envoy does (allocating only then).
    pub(super) fn value<'r>(&self, req: &RequestView<'r>) -> Option<Cow<'r, [u8]>> {
        match self {
            HeaderSource::Authority => Some(Cow::Borrowed(req.authority.as_bytes())),
            HeaderSource::Method => Some(Cow::Borrowed(req.method.as_str().as_bytes())),
            HeaderSource::Path => Some(match req.query {
                None => Cow::Borrowed(req.path.as_bytes()),
                Some(q) => Cow::Owned(format!("{}?{q}", req.path).into_bytes()),
            }),
            HeaderSource::Name(name) => {
                let mut values = req.headers.get_all(name).iter();
                let first = values.next()?;
                let Some(second) = values.next() else {
                    return Some(Cow::Borrowed(first.as_bytes()));
                };
                let mut joined = first.as_bytes().to_vec();
                for v in std::iter::once(second).chain(values) {
                    joined.push(b',');
                    joined.extend_from_slice(v.as_bytes());
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    source: HeaderSource,
    kind: HeaderKind,
    invert: bool,
}

#[derive(Debug, Clone)]
enum HeaderKind {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<[u8]>),
    Regex(regex::bytes::Regex),
    Present(bool),
}

impl HeaderMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let Some(value) = self.source.value(req) else {
            // Envoy: a missing header satisfies only a presence check that
            // asks for absence (`present: false`, or `present: true` with
            // `invert_match`); every other matcher fails, inverted or not.
            return matches!(self.kind, HeaderKind::Present(p) if p == self.invert);
        };
        let value: &[u8] = &value;
        let hit = match &self.kind {
            HeaderKind::Exact(s) => value == &**s,
            HeaderKind::Prefix(s) => value.starts_with(s),
            HeaderKind::Suffix(s) => value.ends_with(s),
            HeaderKind::Contains(s) => value.windows(s.len()).any(|w| w == &**s),
            HeaderKind::Regex(re) => re.is_match(value),
            HeaderKind::Present(p) => *p,
        };
        hit != self.invert
    }
}

fn compile_header(h: &HeaderMatcher, p: &str, errs: &mut Errors) -> Option<HeaderMatch> {
    let source = HeaderSource::parse(&h.name)
        .map_err(|e| errs.push(format!("{p}.name"), e))
        .ok();
    let set = [
        ("exact", h.exact.is_some()),
        ("prefix", h.prefix.is_some()),
        ("suffix", h.suffix.is_some()),
        ("contains", h.contains.is_some()),
        ("regex", h.regex.is_some()),
        ("present", h.present.is_some()),
    ];
    if !errs.at_most_one(p, &set) {
        return None;
    }
    let non_empty = |field: &str, s: &str, errs: &mut Errors| {
        if s.is_empty() {
            errs.push(format!("{p}.{field}"), "must not be empty");
            None
        } else {
            Some(s.as_bytes().into())
        }
    };
    let kind = if let Some(s) = &h.exact {
        HeaderKind::Exact(s.as_bytes().into())
    } else if let Some(s) = &h.prefix {
        HeaderKind::Prefix(non_empty("prefix", s, errs)?)
    } else if let Some(s) = &h.suffix {
        HeaderKind::Suffix(non_empty("suffix", s, errs)?)
    } else if let Some(s) = &h.contains {
        HeaderKind::Contains(non_empty("contains", s, errs)?)
    } else if let Some(s) = &h.regex {
        match full_match_bytes_regex(s) {
            Ok(re) => HeaderKind::Regex(re),
            Err(e) => {
                errs.push(format!("{p}.regex"), e);
                return None;
            }
        }
    } else {
        // No matcher at all means "present", as in Envoy.
        HeaderKind::Present(h.present.unwrap_or(true))
    };
    Some(HeaderMatch {
        source: source?,
        kind,
        invert: h.invert_match,
    })
}

// === Query parameters ===

/// Matched against the raw query string: names and values are compared
/// without percent-decoding, so `a%20b=1` does not match a matcher named
/// `a b`. The first occurrence of a parameter decides, as Envoy's.
#[derive(Debug, Clone)]
struct QueryMatch {
    name: Box<str>,
    kind: QueryKind,
}

#[derive(Debug, Clone)]
enum QueryKind {
    Exact(Box<str>),
    Regex(Regex),
    /// true: the parameter must be present; false: absent.
    Present(bool),
}

impl QueryMatch {
    fn matches(&self, query: Option<&str>) -> bool {
        let value = query.and_then(|q| query_value(q, &self.name));
        match (&self.kind, value) {
            (QueryKind::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (QueryKind::Exact(s), Some(v)) => v == &**s,
            (QueryKind::Regex(re), Some(v)) => re.is_match(v),
        }
    }
}

/// The raw value of the first `name` parameter (`""` for a bare `name`).
pub(super) fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn compile_query(q: &QueryParameterMatcher, p: &str, errs: &mut Errors) -> Option<QueryMatch> {
    let name_ok = if q.name.is_empty() {
        errs.push(format!("{p}.name"), "must not be empty");
        false
    } else {
        true
    };
    let set = [
        ("exact", q.exact.is_some()),
        ("regex", q.regex.is_some()),
        ("present", q.present.is_some()),
    ];
    if !errs.at_most_one(p, &set) {
        return None;
    }
    let kind = if let Some(s) = &q.exact {
        QueryKind::Exact(s.as_str().into())
    } else if let Some(s) = &q.regex {
        match full_match_regex(s, false) {
            Ok(re) => QueryKind::Regex(re),
            Err(e) => {
                errs.push(format!("{p}.regex"), e);
                return None;
            }
        }
    } else {
        QueryKind::Present(q.present.unwrap_or(true))
    };
    name_ok.then(|| QueryMatch {
        name: q.name.as_str().into(),
        kind,
    })
}
