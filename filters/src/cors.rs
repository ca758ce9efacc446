//! `cors`: Envoy's CORS policy. Preflights from an allowed origin are
//! answered here with 200 and the policy's headers; actual requests from an
//! allowed origin get `access-control-allow-origin` (plus credentials and
//! exposed headers) on the response; other origins get no CORS headers.
//! Per virtual host: give the policy in the virtual host's
//! `per_filter_config`.

use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{request, response, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_config;
use crate::ctx::{FilterCx, FilterState};
use crate::env::FilterEnv;
use crate::error::{Errors, FilterConfigError};
use crate::matcher::{StrMatcher, StringMatch};
use crate::{Action, Flow, HttpFilter, LocalReply};

pub const NAME: &str = "cors";

/// The filter's config (see filters/README.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed; none matches when empty.
    #[serde(default)]
    pub allow_origin_string_match: Vec<StringMatch>,
    /// Comma-separated, as Envoy (`"GET, POST"`).
    #[serde(default)]
    pub allow_methods: Option<String>,
    #[serde(default)]
    pub allow_headers: Option<String>,
    #[serde(default)]
    pub expose_headers: Option<String>,
    /// Seconds (a string in Envoy; a number is accepted too).
    #[serde(default)]
    pub max_age: Option<StrOrNum>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// A preflight from an origin that does not match goes upstream (true,
    /// the default) or is answered 200 without CORS headers (false).
    #[serde(default)]
    pub forward_not_matching_preflights: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StrOrNum {
    Str(String),
    Num(u64),
}

pub(crate) fn build(
    config: &Value,
    _env: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: CorsConfig = parse_config(config)?;
    let mut errs = Errors::default();
    let origins = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            StrMatcher::compile(m, &format!("allow_origin_string_match[{i}]"), &mut errs)
        })
        .collect();
    let mut value = |field: &str, v: Option<String>| -> Option<HeaderValue> {
        let v = v.filter(|v| !v.trim().is_empty())?;
        HeaderValue::from_str(v.trim())
            .map_err(|_| errs.push(field, format!("invalid header value {v:?}")))
            .ok()
    };
    let allow_methods = value("allow_methods", c.allow_methods);
    let allow_headers = value("allow_headers", c.allow_headers);
    let expose_headers = value("expose_headers", c.expose_headers);
    let max_age = match c.max_age {
        None => None,
        Some(StrOrNum::Num(n)) => Some(HeaderValue::from(n)),
        Some(StrOrNum::Str(s)) => match s.trim().parse::<u64>() {
            Ok(n) => Some(HeaderValue::from(n)),
            Err(_) => {
                errs.push("max_age", format!("{s:?} is not a number of seconds"));
                None
            }
        },
    };
    errs.finish(Arc::new(Cors {
        origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: c.allow_credentials,
        forward_not_matching: c.forward_not_matching_preflights.unwrap_or(true),
    }) as Arc<dyn HttpFilter>)
}

pub(crate) struct Cors {
    origins: Vec<StrMatcher>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    forward_not_matching: bool,
}

const TRUE: HeaderValue = HeaderValue::from_static("true");

impl HttpFilter for Cors {
    fn wants_state(&self) -> bool {
        // The allowed origin, echoed on the response.
        true
    }

    fn on_request_head(&self, cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        let Some(origin) = head.headers.get(ORIGIN) else {
            return Action::Continue;
        };
        let allowed = self.origins.iter().any(|m| m.matches(origin.as_bytes()));
        let preflight = head.method == Method::OPTIONS
            && head.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            if allowed {
                *cx.state = FilterState::Value(origin.clone());
            }
            return Action::Continue;
        }
        if !allowed {
            return if self.forward_not_matching {
                Action::Continue
            } else {
                Action::Respond(LocalReply::new(StatusCode::OK, ""))
            };
        }
        let mut reply = LocalReply::new(StatusCode::OK, "");
        let h = &mut reply.headers;
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        for (name, v) in [
            (ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
            (ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
            (ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(v) = v {
                h.insert(name, v.clone());
            }
        }
        if self.allow_credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        Action::Respond(reply)
    }

    fn on_response_head(&self, cx: &mut FilterCx<'_>, head: &mut response::Parts) -> Flow {
        let FilterState::Value(origin) = std::mem::take(cx.state) else {
            return Flow::Continue;
        };
        let h = &mut head.headers;
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(v) = &self.expose_headers {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests;
