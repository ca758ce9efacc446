use std::fmt;

/// One problem in a filter config, located by its field path
/// (`listeners[0].http_filters[2].config.abort.http_status`). The proxy
/// maps it 1:1 onto its own `ConfigError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfigError {
    pub path: String,
    pub reason: String,
}

impl FilterConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        FilterConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The same error seen from `prefix`: a factory reports paths relative to
    /// its config (`abort.http_status`); the registry puts them under the
    /// filter's place in the listener.
    pub(crate) fn under(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }
}

/// `a` + `b` as a field path: `a.b`, `a[0]` (for `b` = `[0]`), or either
/// alone when the other is empty.
pub(crate) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

impl fmt::Display for FilterConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for FilterConfigError {}

/// Collects errors while a factory validates, so it reports every problem at
/// once rather than the first.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FilterConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FilterConfigError::new(path, reason));
    }

    /// `Ok(value)` when nothing was reported.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, Vec<FilterConfigError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}
