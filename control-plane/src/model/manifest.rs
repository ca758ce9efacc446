//! Manifests as users write them: YAML (one or more documents) or JSON,
//! dispatched on `apiVersion` + `kind`. A `kind: List` is expanded.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::{FieldError, FieldErrors};
use super::eventing::{self, EventingObject};
use super::serving::{self, Service};
use super::Kind;

/// One object of a manifest, typed.
// A Service is larger than the generic eventing object; manifests are
// parsed once per document, so boxing would only add noise to each match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    Service(Service),
    Broker(EventingObject),
    Trigger(EventingObject),
}

impl Manifest {
    pub fn kind(&self) -> Kind {
        match self {
            Manifest::Service(_) => Kind::Service,
            Manifest::Broker(_) => Kind::Broker,
            Manifest::Trigger(_) => Kind::Trigger,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Manifest::Service(s) => &s.metadata.name,
            Manifest::Broker(o) | Manifest::Trigger(o) => &o.metadata.name,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Manifest::Service(s) => &s.metadata.namespace,
            Manifest::Broker(o) | Manifest::Trigger(o) => &o.metadata.namespace,
        }
    }

    /// The object as JSON, the shape the REST API takes.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        match self {
            Manifest::Service(s) => serde_json::to_value(s),
            Manifest::Broker(o) | Manifest::Trigger(o) => serde_json::to_value(o),
        }
    }
}

/// A document that could not be turned into an object: which one (from 1)
/// and why, with the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {errors}")]
pub struct ManifestError {
    pub document: usize,
    pub errors: FieldErrors,
}

/// Every document of `text` (YAML or JSON) as raw JSON values; empty
/// documents (a trailing `---`) are skipped, `kind: List` expanded.
pub fn documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| ManifestError {
            document: i + 1,
            errors: FieldError::new("", format!("not valid YAML/JSON: {e}")).into(),
        })?;
        match value {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind").and_then(Value::as_str) == Some("List")
                    && m.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = m.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            v => out.push(v),
        }
    }
    Ok(out)
}

/// Parses every document of `text` into typed objects.
pub fn parse(text: &str) -> Result<Vec<Manifest>, ManifestError> {
    documents(text)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            from_value(v).map_err(|errors| ManifestError {
                document: i + 1,
                errors,
            })
        })
        .collect()
}

/// Which kind a raw object declares, from `apiVersion` and `kind`.
pub fn kind_of(value: &Value) -> Result<Kind, FieldErrors> {
    let api = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    match (api, kind) {
        (Some(serving::API_VERSION), Some("Service")) => Ok(Kind::Service),
        (Some(eventing::API_VERSION), Some("Broker")) => Ok(Kind::Broker),
        (Some(eventing::API_VERSION), Some("Trigger")) => Ok(Kind::Trigger),
        (None, _) => Err(FieldError::new("apiVersion", "missing field").into()),
        (_, None) => Err(FieldError::new("kind", "missing field").into()),
        (Some(a), Some(k)) => Err(FieldError::new(
            "kind",
            format!(
                "{a}/{k} is not supported; expected {}/Service, {}/Broker or {}/Trigger",
                serving::API_VERSION,
                eventing::API_VERSION,
                eventing::API_VERSION
            ),
        )
        .into()),
    }
}

/// A raw object → its typed form, dispatched on `apiVersion`/`kind`.
pub fn from_value(value: Value) -> Result<Manifest, FieldErrors> {
    match kind_of(&value)? {
        Kind::Broker => typed(value).map(Manifest::Broker),
        Kind::Trigger => typed(value).map(Manifest::Trigger),
        _ => typed(value).map(Manifest::Service),
    }
}

/// Deserializes `value` as `T`; a type error names the field path where it
/// happened (`spec.template.spec.containers[0].ports[0].containerPort`).
pub fn typed<T: DeserializeOwned>(value: Value) -> Result<T, FieldErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, e.into_inner().to_string()).into()
    })
}
