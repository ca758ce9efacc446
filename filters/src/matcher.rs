//! String and header matchers shared by the filters (fault's header gate,
//! CORS origins, RBAC permissions and principals), in the proxy's route
//! matcher shape and with Envoy's semantics.

use std::borrow::Cow;

use http::{request, HeaderName};
use serde::Deserialize;

use crate::error::{join, Errors};

/// Exactly one of `exact`, `prefix`, `suffix`, `contains`, `regex` (RE2-style
/// full match); `ignore_case` applies to all but `regex`, which takes an
/// inline `(?i)` instead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
}

/// A request header matcher: at most one of `exact`, `prefix`, `suffix`,
/// `contains`, `regex`, `present` (none = `present: true`); `invert_match`
/// negates the result. `name` may be a pseudo-header: `:method`, `:path`
/// (with query), `:authority` (or `host`), `:scheme`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub invert_match: bool,
}

// === Compiled forms ===

#[derive(Debug)]
pub(crate) enum StrMatcher {
    Exact(Box<[u8]>, bool),
    Prefix(Box<[u8]>, bool),
    Suffix(Box<[u8]>, bool),
    /// Case-insensitive `contains` stores the needle lowercased.
    Contains(Box<[u8]>, bool),
    Regex(regex::bytes::Regex),
}

impl StrMatcher {
    /// Compiles `m` found at config path `p`.
    pub(crate) fn compile(m: &StringMatch, p: &str, errs: &mut Errors) -> Option<StrMatcher> {
        let set = [
            ("exact", m.exact.is_some()),
            ("prefix", m.prefix.is_some()),
            ("suffix", m.suffix.is_some()),
            ("contains", m.contains.is_some()),
            ("regex", m.regex.is_some()),
        ];
        if !exactly_one(p, &set, errs) {
            return None;
        }
        let ic = m.ignore_case;
        if let Some(s) = &m.exact {
            return Some(StrMatcher::Exact(s.as_bytes().into(), ic));
        }
        let non_empty = |field: &str, s: &str, errs: &mut Errors| -> Option<Box<[u8]>> {
            if s.is_empty() {
                errs.push(join(p, field), "must not be empty");
                None
            } else {
                Some(s.as_bytes().into())
            }
        };
        if let Some(s) = &m.prefix {
            return Some(StrMatcher::Prefix(non_empty("prefix", s, errs)?, ic));
        }
        if let Some(s) = &m.suffix {
            return Some(StrMatcher::Suffix(non_empty("suffix", s, errs)?, ic));
        }
        if let Some(s) = &m.contains {
            let needle = if ic {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            };
            return Some(StrMatcher::Contains(
                non_empty("contains", &needle, errs)?,
                ic,
            ));
        }
        let pattern = m.regex.as_deref()?;
        if ic {
            errs.push(
                join(p, "ignore_case"),
                "not supported with regex; use (?i) in the pattern",
            );
            return None;
        }
        match full_match_regex(pattern) {
            Ok(re) => Some(StrMatcher::Regex(re)),
            Err(e) => {
                errs.push(join(p, "regex"), e);
                None
            }
        }
    }

    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        // ASCII-only case folding, as Envoy's `ignore_case`.
        let eq = |a: &[u8], b: &[u8], ic: bool| {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            StrMatcher::Exact(s, ic) => eq(value, s, *ic),
            StrMatcher::Prefix(s, ic) => value.get(..s.len()).is_some_and(|h| eq(h, s, *ic)),
            StrMatcher::Suffix(s, ic) => value
                .len()
                .checked_sub(s.len())
                .is_some_and(|at| eq(&value[at..], s, *ic)),
            StrMatcher::Contains(s, ic) => value.windows(s.len()).any(|w| eq(w, s, *ic)),
            StrMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// Compiles `pattern` to match whole inputs only, as Envoy's RE2 full match.
/// The pattern is first compiled alone so the error names the user's text,
/// and inputs like `a)|(b` that only parse once wrapped are rejected.
pub(crate) fn full_match_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    let build = |p: &str| regex::bytes::Regex::new(p).map_err(regex_error);
    build(pattern)?;
    build(&format!("^(?:{pattern})$"))
}

/// `invalid regex: <message>` on one line: the regex crate's errors span
/// several lines and a config error is one.
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

/// Reports unless exactly one of `set` is present.
pub(crate) fn exactly_one(p: &str, set: &[(&str, bool)], errs: &mut Errors) -> bool {
    let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
    match set.iter().filter(|(_, on)| *on).count() {
        1 => true,
        0 => {
            errs.push(
                p,
                format!("exactly one of {} is required", names.join(", ")),
            );
            false
        }
        _ => {
            errs.push(p, format!("only one of {} may be set", names.join(", ")));
            false
        }
    }
}

/// Where a header matcher reads its value.
#[derive(Debug)]
pub(crate) enum HeaderSource {
    Name(HeaderName),
    Authority,
    Method,
    Path,
    Scheme,
}

impl HeaderSource {
    pub(crate) fn parse(name: &str) -> Result<HeaderSource, String> {
        match name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => Ok(HeaderSource::Authority),
            ":method" => Ok(HeaderSource::Method),
            ":path" => Ok(HeaderSource::Path),
            ":scheme" => Ok(HeaderSource::Scheme),
            n if n.starts_with(':') => Err(format!("unsupported pseudo-header {name:?}")),
            _ => HeaderName::from_bytes(name.as_bytes())
                .map(HeaderSource::Name)
                .map_err(|_| format!("invalid header name {name:?}")),
        }
    }

    /// The value; several values of one header are joined with `,` as Envoy
    /// does (allocating only then).
    pub(crate) fn value<'r>(&self, head: &'r request::Parts) -> Option<Cow<'r, [u8]>> {
        match self {
            HeaderSource::Authority => match head.uri.authority() {
                Some(a) => Some(Cow::Borrowed(a.as_str().as_bytes())),
                None => head
                    .headers
                    .get(http::header::HOST)
                    .map(|v| Cow::Borrowed(v.as_bytes())),
            },
            HeaderSource::Method => Some(Cow::Borrowed(head.method.as_str().as_bytes())),
            HeaderSource::Path => Some(Cow::Borrowed(
                head.uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
            )),
            HeaderSource::Scheme => head.uri.scheme_str().map(|s| Cow::Borrowed(s.as_bytes())),
            HeaderSource::Name(name) => {
                let mut values = head.headers.get_all(name).iter();
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

#[derive(Debug)]
enum HeaderKind {
    Str(StrMatcher),
    Present(bool),
}

#[derive(Debug)]
pub(crate) struct HeaderMatch {
    source: HeaderSource,
    kind: HeaderKind,
    invert: bool,
}

impl HeaderMatch {
    pub(crate) fn compile(h: &HeaderMatcher, p: &str, errs: &mut Errors) -> Option<HeaderMatch> {
        let source = HeaderSource::parse(&h.name)
            .map_err(|e| errs.push(join(p, "name"), e))
            .ok();
        let string = StringMatch {
            exact: h.exact.clone(),
            prefix: h.prefix.clone(),
            suffix: h.suffix.clone(),
            contains: h.contains.clone(),
            regex: h.regex.clone(),
            ignore_case: false,
        };
        let any_string = [&h.exact, &h.prefix, &h.suffix, &h.contains, &h.regex]
            .iter()
            .any(|s| s.is_some());
        let kind = match (any_string, h.present) {
            (true, Some(_)) => {
                errs.push(
                    p,
                    "only one of exact, prefix, suffix, contains, regex, present may be set",
                );
                return None;
            }
            (true, None) => HeaderKind::Str(StrMatcher::compile(&string, p, errs)?),
            // No matcher at all means "present", as in Envoy.
            (false, present) => HeaderKind::Present(present.unwrap_or(true)),
        };
        Some(HeaderMatch {
            source: source?,
            kind,
            invert: h.invert_match,
        })
    }

    pub(crate) fn matches(&self, head: &request::Parts) -> bool {
        let Some(value) = self.source.value(head) else {
            // Envoy: a missing header satisfies only a presence check that
            // asks for absence (`present: false`, or `present: true` with
            // `invert_match`); every other matcher fails, inverted or not.
            return matches!(self.kind, HeaderKind::Present(p) if p == self.invert);
        };
        let hit = match &self.kind {
            HeaderKind::Str(m) => m.matches(&value),
            HeaderKind::Present(p) => *p,
        };
        hit != self.invert
    }
}

/// Compiles a list of header matchers at `p` (`p[0]`, `p[1]`, …).
pub(crate) fn compile_headers(
    list: &[HeaderMatcher],
    p: &str,
    errs: &mut Errors,
) -> Vec<HeaderMatch> {
    list.iter()
        .enumerate()
        .filter_map(|(i, h)| HeaderMatch::compile(h, &format!("{p}[{i}]"), errs))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder()
            .method("POST")
            .uri("http://example.com/a/b?x=1");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        match b.body(()) {
            Ok(r) => r.into_parts().0,
            Err(e) => panic!("bad test request: {e}"),
        }
    }

    fn header(yaml: &str) -> HeaderMatch {
        let m: HeaderMatcher = serde_norway::from_str(yaml).expect("yaml");
        let mut errs = Errors::default();
        let c = HeaderMatch::compile(&m, "h", &mut errs);
        assert!(errs.0.is_empty(), "{:?}", errs.0);
        c.expect("compiled")
    }

    #[test]
    fn header_kinds() {
        let h = head(&[("x-a", "Hello"), ("x-b", "1"), ("x-b", "2")]);
        assert!(header("{name: x-a, exact: Hello}").matches(&h));
        assert!(!header("{name: x-a, exact: hello}").matches(&h));
        assert!(header("{name: x-a, prefix: He}").matches(&h));
        assert!(header("{name: x-a, suffix: llo}").matches(&h));
        assert!(header("{name: x-a, contains: ell}").matches(&h));
        assert!(header("{name: x-a, regex: 'H.*o'}").matches(&h));
        assert!(
            !header("{name: x-a, regex: 'ell'}").matches(&h),
            "full match"
        );
        assert!(header("{name: x-b, exact: '1,2'}").matches(&h), "joined");
        assert!(header("{name: x-a}").matches(&h));
        assert!(header("{name: x-missing, present: false}").matches(&h));
        assert!(!header("{name: x-missing, exact: a, invert_match: true}").matches(&h));
        assert!(header("{name: x-a, exact: b, invert_match: true}").matches(&h));
        assert!(header("{name: ':method', exact: POST}").matches(&h));
        assert!(header("{name: ':path', exact: '/a/b?x=1'}").matches(&h));
        assert!(header("{name: ':authority', exact: example.com}").matches(&h));
    }

    #[test]
    fn string_matcher_errors_have_paths() {
        let mut errs = Errors::default();
        let m = StringMatch {
            exact: Some("a".into()),
            prefix: Some("b".into()),
            ..Default::default()
        };
        assert!(StrMatcher::compile(&m, "x[0]", &mut errs).is_none());
        let m = StringMatch {
            regex: Some("(".into()),
            ..Default::default()
        };
        assert!(StrMatcher::compile(&m, "x[1]", &mut errs).is_none());
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["x[0]", "x[1].regex"]);
    }

    #[test]
    fn ignore_case() {
        let m = StringMatch {
            suffix: Some(".EXAMPLE.com".into()),
            ignore_case: true,
            ..Default::default()
        };
        let mut errs = Errors::default();
        let c = StrMatcher::compile(&m, "", &mut errs).expect("ok");
        assert!(c.matches(b"https://a.example.COM"));
        assert!(!c.matches(b"https://a.example.org"));
    }
}
