//! Knative `eventing.knative.dev/v1` Broker and Trigger, stored as generic
//! objects (metadata + the spec as written + a status the broker sets).
//! Their shape is checked here; then the broker's own compiler
//! (`crate::eventing::config::validate`: CESQL, filter keys, durations,
//! destinations) checks what it would refuse, so `apply` never stores an
//! object the broker cannot run.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::FieldErrors;
use super::meta::{self, ObjectMeta};

pub const API_VERSION: &str = "eventing.knative.dev/v1";

/// A Broker or a Trigger: the spec stays JSON so the eventing engine owns
/// its interpretation (and new fields need no change here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventingObject {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub spec: Value,
    /// Set by the eventing engine through the store; ignored on input.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub status: Value,
}

pub type Broker = EventingObject;
pub type Trigger = EventingObject;

impl EventingObject {
    pub fn set_defaults(&mut self, kind: &str) {
        if self.api_version.is_empty() {
            self.api_version = API_VERSION.to_string();
        }
        if self.kind.is_empty() {
            self.kind = kind.to_string();
        }
        if self.metadata.namespace.is_empty() {
            self.metadata.namespace = meta::DEFAULT_NAMESPACE.to_string();
        }
    }

    /// Checks the shape of a Broker (`kind` = "Broker") or a Trigger.
    pub fn validate(&self, kind: &str) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        if !self.api_version.is_empty() && self.api_version != API_VERSION {
            errs.push("apiVersion", format!("expected {API_VERSION:?}"));
        }
        if !self.kind.is_empty() && self.kind != kind {
            errs.push("kind", format!("expected {kind:?}"));
        }
        meta::validate_name_and_namespace(&self.metadata, "metadata", &mut errs);
        let empty = Map::new();
        let spec = match &self.spec {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => {
                errs.push("spec", "expected an object");
                return errs.into_result();
            }
        };
        match kind {
            "Broker" => validate_broker(spec, &mut errs),
            _ => validate_trigger(spec, &mut errs),
        }
        // The shape first: its messages are the more precise ones, and the
        // compiler would only repeat them.
        errs.into_result()?;
        crate::eventing::config::validate(self, kind)
    }

    /// Knative refuses a change of `spec.broker` on an existing Trigger.
    pub fn check_trigger_update(&self, old: &EventingObject) -> Result<(), FieldErrors> {
        let new_broker = self.spec.get("broker");
        let old_broker = old.spec.get("broker");
        if new_broker != old_broker {
            return Err(FieldErrors::from(super::error::FieldError::new(
                "spec.broker",
                format!(
                    "immutable field changed: was {}, now {}",
                    old_broker.unwrap_or(&Value::Null),
                    new_broker.unwrap_or(&Value::Null)
                ),
            )));
        }
        Ok(())
    }
}

fn validate_broker(spec: &Map<String, Value>, errs: &mut FieldErrors) {
    for (k, v) in spec {
        match k.as_str() {
            "config" => validate_reference(v, "spec.config", errs),
            "delivery" => validate_delivery(v, "spec.delivery", errs),
            _ => errs.push(format!("spec.{k}"), "unknown field"),
        }
    }
}

fn validate_trigger(spec: &Map<String, Value>, errs: &mut FieldErrors) {
    match spec.get("broker") {
        Some(Value::String(b)) if !b.is_empty() => {
            if let Err(e) = meta::check_dns1035_label(b) {
                errs.push("spec.broker", e);
            }
        }
        Some(Value::String(_)) | None => errs.push("spec.broker", "missing field"),
        Some(_) => errs.push("spec.broker", "expected a string"),
    }
    match spec.get("subscriber") {
        Some(s) => validate_destination(s, "spec.subscriber", errs),
        None => errs.push("spec.subscriber", "missing field"),
    }
    for (k, v) in spec {
        match k.as_str() {
            "broker" | "subscriber" => {}
            "filter" => validate_filter(v, errs),
            "filters" => match v.as_array() {
                Some(list) => {
                    for (i, f) in list.iter().enumerate() {
                        validate_dialect(f, &format!("spec.filters[{i}]"), errs);
                    }
                }
                None => errs.push("spec.filters", "expected a list"),
            },
            "delivery" => validate_delivery(v, "spec.delivery", errs),
            _ => errs.push(format!("spec.{k}"), "unknown field"),
        }
    }
}

/// `spec.filter.attributes`: exact-match strings.
fn validate_filter(v: &Value, errs: &mut FieldErrors) {
    let Some(obj) = v.as_object() else {
        errs.push("spec.filter", "expected an object");
        return;
    };
    for (k, v) in obj {
        if k != "attributes" {
            errs.push(format!("spec.filter.{k}"), "unknown field");
            continue;
        }
        string_map(v, "spec.filter.attributes", errs);
    }
}

fn string_map(v: &Value, path: &str, errs: &mut FieldErrors) {
    let Some(obj) = v.as_object() else {
        errs.push(path, "expected a map of strings");
        return;
    };
    for (k, v) in obj {
        if !v.is_string() {
            errs.push(format!("{path}.{k}"), "expected a string");
        }
    }
}

/// One filter of the `spec.filters` dialect: exactly one of `exact`,
/// `prefix`, `suffix` (string maps), `all`, `any` (lists of filters),
/// `not` (a filter) or `cesql` (an expression).
fn validate_dialect(v: &Value, path: &str, errs: &mut FieldErrors) {
    let Some(obj) = v.as_object() else {
        errs.push(path, "expected an object");
        return;
    };
    if obj.len() != 1 {
        errs.push(
            path,
            format!(
                "expected exactly one of exact, prefix, suffix, all, any, not, cesql; got {}",
                obj.len()
            ),
        );
    }
    for (k, v) in obj {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "exact" | "prefix" | "suffix" => {
                string_map(v, &p, errs);
                if v.as_object().is_some_and(|m| m.is_empty()) {
                    errs.push(p, "must name at least one attribute");
                }
            }
            "all" | "any" => match v.as_array() {
                Some(list) => {
                    for (i, f) in list.iter().enumerate() {
                        validate_dialect(f, &format!("{p}[{i}]"), errs);
                    }
                }
                None => errs.push(p, "expected a list of filters"),
            },
            "not" => validate_dialect(v, &p, errs),
            "cesql" => match v.as_str() {
                Some(s) if !s.trim().is_empty() => {}
                _ => errs.push(p, "expected a non-empty CESQL expression"),
            },
            _ => errs.push(p, "unknown filter dialect"),
        }
    }
}

/// A Knative Destination: `uri` (absolute unless a `ref` is given) and/or
/// `ref` (`kind`, `name`, optional `apiVersion`, `namespace`).
fn validate_destination(v: &Value, path: &str, errs: &mut FieldErrors) {
    let Some(obj) = v.as_object() else {
        errs.push(path, "expected an object with `uri` or `ref`");
        return;
    };
    let has_ref = obj.contains_key("ref");
    let uri = obj.get("uri");
    if uri.is_none() && !has_ref {
        errs.push(path, "expected exactly one, got neither: uri, ref");
    }
    if let Some(u) = uri {
        match u.as_str() {
            Some(s) if has_ref || is_absolute_uri(s) => {}
            Some(s) => errs.push(
                format!("{path}.uri"),
                format!("{s:?} is not an absolute URI (scheme://host...)"),
            ),
            None => errs.push(format!("{path}.uri"), "expected a string"),
        }
    }
    if let Some(r) = obj.get("ref") {
        validate_reference(r, &format!("{path}.ref"), errs);
    }
    for k in obj.keys() {
        if !matches!(k.as_str(), "uri" | "ref" | "CACerts" | "audience") {
            errs.push(format!("{path}.{k}"), "unknown field");
        }
    }
}

fn validate_reference(v: &Value, path: &str, errs: &mut FieldErrors) {
    let Some(obj) = v.as_object() else {
        errs.push(path, "expected an object");
        return;
    };
    for field in ["kind", "name"] {
        match obj.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => errs.push(format!("{path}.{field}"), "missing field"),
        }
    }
}

fn is_absolute_uri(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
        }
        None => false,
    }
}

/// `spec.delivery`: `retry` (>= 0), `backoffPolicy` (exponential |
/// linear), `backoffDelay` / `timeout` / `retryAfterMax` (ISO-8601
/// durations), `deadLetterSink` (a Destination).
fn validate_delivery(v: &Value, path: &str, errs: &mut FieldErrors) {
    let Some(obj) = v.as_object() else {
        errs.push(path, "expected an object");
        return;
    };
    for (k, v) in obj {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "retry" => {
                if v.as_i64().is_none_or(|n| n < 0) {
                    errs.push(p, "expected a non-negative integer");
                }
            }
            "backoffPolicy" => match v.as_str() {
                Some("exponential" | "linear") => {}
                _ => errs.push(p, "expected \"exponential\" or \"linear\""),
            },
            "backoffDelay" | "timeout" => match v.as_str().map(parse_iso8601_duration) {
                Some(Some(_)) => {}
                _ => errs.push(
                    p,
                    "expected an ISO-8601 duration (e.g. \"PT0.5S\", \"PT1M\")",
                ),
            },
            "retryAfterMax" => match v.as_str().map(parse_iso8601_duration) {
                Some(Some(_)) => {}
                _ => errs.push(p, "expected an ISO-8601 duration"),
            },
            "deadLetterSink" => validate_destination(v, &p, errs),
            _ => errs.push(p, "unknown field"),
        }
    }
}

/// ISO-8601 durations as Knative's delivery spec uses them:
/// `P[nD][T[nH][nM][n[.f]S]]` (weeks, months and years are refused: they
/// have no fixed length).
pub fn parse_iso8601_duration(s: &str) -> Option<std::time::Duration> {
    let rest = s.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return None;
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    let mut secs = 0f64;
    let mut parse = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        let mut last_unit = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let idx = units.iter().position(|(u, _)| *u == c)?;
            // Units must come in order, each once.
            if idx < last_unit || num.is_empty() {
                return None;
            }
            last_unit = idx + 1;
            secs += num.parse::<f64>().ok()? * units[idx].1;
            num.clear();
        }
        if num.is_empty() {
            Some(())
        } else {
            None
        }
    };
    parse(date, &[('D', 86_400.0)])?;
    if let Some(t) = time {
        parse(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    std::time::Duration::try_from_secs_f64(secs).ok()
}
