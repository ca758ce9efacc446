//! `prefix_rewrite`, shared by forwarded routes and redirects: a prefix
//! match has its matched prefix replaced, a `path` or `regex` match the whole
//! path (Envoy's behaviour for both).

use super::matcher::PathMatch;
use super::table::Errors;

#[derive(Debug, Clone)]
pub(super) struct PathRewrite {
    /// Bytes of the path replaced; None: all of it.
    prefix_len: Option<usize>,
    with: Box<str>,
}

impl PathRewrite {
    pub(super) fn new(matcher: &PathMatch, with: &str) -> Self {
        let prefix_len = match matcher {
            PathMatch::Prefix { prefix, .. } => Some(prefix.len()),
            PathMatch::Exact { .. } | PathMatch::Regex(_) => None,
        };
        PathRewrite {
            prefix_len,
            with: with.into(),
        }
    }

    pub(super) fn len_hint(&self) -> usize {
        self.with.len() + 1
    }

    /// Writes the rewritten `path` (no query) to `out`. An origin-form
    /// target must start with `/`, so one is added when the rewrite would
    /// leave none (`prefix: /api/`, `prefix_rewrite: ""`, path `/api/x`
    /// gives `/x`).
    pub(super) fn apply(&self, path: &str, out: &mut String) {
        let rest = match self.prefix_len {
            // The route matched, so the prefix ends on a char boundary;
            // `get` keeps a misuse from panicking all the same.
            Some(n) => path.get(n..).unwrap_or(""),
            None => "",
        };
        let head = if self.with.is_empty() {
            rest
        } else {
            &self.with
        };
        if !head.starts_with('/') {
            out.push('/');
        }
        out.push_str(&self.with);
        out.push_str(rest);
    }
}

/// Checks a configured path or rewrite: valid URI path characters, no query
/// or fragment (`allow_query`: a `?` may start a query).
pub(super) fn check_path(value: &str, allow_query: bool, p: &str, errs: &mut Errors) -> bool {
    let bad = value.bytes().find(|&b| match b {
        b'?' => !allow_query,
        b'#' => true,
        _ => !is_uri_char(b),
    });
    match bad {
        None => true,
        Some(b) => {
            errs.push(
                p,
                format!("invalid character {:?} in path {value:?}", char::from(b)),
            );
            false
        }
    }
}

/// RFC 3986 `pchar`, `/` and `?`, plus `%` for escapes.
fn is_uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix {
            prefix: p.into(),
            case_sensitive: true,
        }
    }

    fn rewrite(m: &PathMatch, with: &str, path: &str) -> String {
        let mut out = String::new();
        PathRewrite::new(m, with).apply(path, &mut out);
        out
    }

    #[test]
    fn rewrites() {
        let exact = PathMatch::Exact {
            path: "/old".into(),
            case_sensitive: true,
        };
        let cases = [
            (prefix("/api/"), "/v2/", "/api/users", "/v2/users"),
            (prefix("/api"), "/", "/api/users", "//users"),
            (prefix("/api/"), "", "/api/users", "/users"),
            (prefix("/api"), "", "/api", "/"),
            (prefix(""), "/root", "/x", "/root/x"),
            (prefix("/api/"), "v2/", "/api/x", "/v2/x"),
            (exact, "/new", "/old", "/new"),
        ];
        for (m, with, path, want) in cases {
            assert_eq!(rewrite(&m, with, path), want, "{with} on {path}");
        }
    }

    #[test]
    fn path_characters() {
        let mut errs = Errors::default();
        assert!(check_path("/a/b%20c;d=e", false, "x", &mut errs));
        assert!(check_path("/a?b=c", true, "x", &mut errs));
        assert!(!check_path("/a?b=c", false, "x", &mut errs));
        assert!(!check_path("/a b", true, "y", &mut errs));
        assert!(!check_path("/a#b", true, "z", &mut errs));
        let paths: Vec<&str> = errs.list.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["x", "y", "z"]);
    }
}
