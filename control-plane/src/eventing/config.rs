//! Brokers and triggers: the stored Knative `eventing.knative.dev/v1`
//! objects in, the broker's compiled form out.
//!
//! The store keeps a Broker or Trigger as written (its spec as JSON, see
//! [`crate::model::eventing`]); this module reads that spec into typed
//! Knative shapes ([`BrokerSpec`], [`TriggerSpec`]), checks what the shape
//! check cannot (CESQL, filter keys, durations, URI schemes, reference
//! kinds) and compiles it: [`BrokerDef`], [`TriggerDef`]. The same
//! compilation runs when `apply` validates an object (so an invalid spec is
//! a 400 naming the field, and nothing is stored) and when the broker
//! starts it, so the two cannot disagree.
//!
//! Destinations (`subscriber`, `deadLetterSink`) compile to a [`Target`]:
//! a `uri` is used as it is; a `ref` to a Ferry Service is delivered
//! through the mesh: to the gateway's address, with the Host header
//! `{name}.{namespace}.{domain}`, so the gateway routes it like any request
//! to that Service and holds it while a revision at zero activates.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::duration;
use super::event::check_uri;
use super::filter::{Filter, SubscriptionsApiFilter};
use crate::model::eventing::EventingObject;
use crate::model::{FieldError, FieldErrors};

/// The `apiVersion` of a Service a destination may refer to.
pub const SERVICE_API_VERSION: &str = "serving.knative.dev/v1";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Knative's broker class config reference; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    pub broker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TriggerFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    pub subscriber: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerFilter {
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Knative's duck `Destination`: a `uri`, or a `ref` to an addressable
/// (with an optional relative `uri` resolved against it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    /// Knative's TLS and OIDC fields: accepted, not used (deliveries are
    /// plain HTTP on the mesh).
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KReference {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// Knative's duck `DeliverySpec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
}

/// How `ref` destinations reach Ferry Services: hosts are
/// `{name}.{namespace}.{domain}`, and requests go to the mesh `gateway`
/// (`host:port` of a `ferry-proxy` serving the control plane's routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub domain: String,
    pub gateway: String,
}

impl Resolver {
    /// For validation only: every destination compiles the same whatever
    /// the domain and gateway are.
    pub fn for_validation() -> Resolver {
        Resolver {
            domain: "example.com".into(),
            gateway: "127.0.0.1:8080".into(),
        }
    }
}

/// Where an event is POSTed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The destination as users see it: the trigger's
    /// `status.subscriberUri`, and `knativeerrordest` on dead letters.
    pub uri: String,
    /// Where the request goes: `uri` itself, or the mesh gateway with the
    /// same path.
    pub url: String,
    /// The Host header a mesh delivery carries (the Service's host).
    pub host: Option<HeaderValue>,
    /// The Service a `ref` names, `namespace/name`.
    pub service: Option<(String, String)>,
}

impl Target {
    /// A plain URL, delivered to directly.
    pub fn direct(uri: impl Into<String>) -> Target {
        let uri = uri.into();
        Target {
            url: uri.clone(),
            uri,
            host: None,
            service: None,
        }
    }
}

impl From<&str> for Target {
    fn from(uri: &str) -> Target {
        Target::direct(uri)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffPolicy {
    Linear,
    Exponential,
}

/// A compiled `DeliverySpec`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryPolicy {
    /// Retries after the first try (so `retry + 1` tries in all).
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
    /// `None`: `Retry-After` is ignored (Knative's behaviour while the
    /// field is unset). `Some(0)` also ignores it. Otherwise the header of
    /// a 429 or 503 is honoured up to this bound.
    pub retry_after_max: Option<Duration>,
    pub dead_letter_sink: Option<Target>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            retry: 0,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(200),
            timeout: None,
            retry_after_max: None,
            dead_letter_sink: None,
        }
    }
}

/// Backoffs above this are clamped (an exponential policy with many
/// retries would otherwise overflow).
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

impl DeliveryPolicy {
    /// The wait before the n-th retry (n = 1, 2, …): `delay × n` (linear)
    /// or `delay × 2^n` (exponential), as the delivery spec documents.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = match self.backoff_policy {
            BackoffPolicy::Linear => n,
            BackoffPolicy::Exponential => 1u32.checked_shl(n).unwrap_or(u32::MAX),
        };
        self.backoff_delay
            .checked_mul(factor)
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }

    fn compile(
        spec: &DeliverySpec,
        path: &str,
        ns: &str,
        r: &Resolver,
        errs: &mut FieldErrors,
    ) -> DeliveryPolicy {
        let mut p = DeliveryPolicy::default();
        if let Some(n) = spec.retry {
            match u32::try_from(n) {
                Ok(n) => p.retry = n,
                Err(_) => errs.push(format!("{path}.retry"), "must be >= 0"),
            }
        }
        if let Some(b) = &spec.backoff_policy {
            match b.as_str() {
                "linear" => p.backoff_policy = BackoffPolicy::Linear,
                "exponential" => p.backoff_policy = BackoffPolicy::Exponential,
                other => errs.push(
                    format!("{path}.backoffPolicy"),
                    format!("{other:?} is not linear or exponential"),
                ),
            }
        }
        let mut dur = |field: &str, v: &Option<String>| -> Option<Duration> {
            let s = v.as_deref()?;
            duration::parse(s)
                .map_err(|e| errs.push(format!("{path}.{field}"), e))
                .ok()
        };
        if let Some(d) = dur("backoffDelay", &spec.backoff_delay) {
            p.backoff_delay = d;
        }
        let timeout = dur("timeout", &spec.timeout);
        p.retry_after_max = dur("retryAfterMax", &spec.retry_after_max);
        match timeout {
            Some(t) if t.is_zero() => {
                errs.push(format!("{path}.timeout"), "must be greater than zero")
            }
            t => p.timeout = t,
        }
        if let Some(d) = &spec.dead_letter_sink {
            p.dead_letter_sink = resolve(d, &format!("{path}.deadLetterSink"), ns, r, errs);
        }
        p
    }
}

/// Compiles a destination, or records why it cannot be.
fn resolve(
    d: &Destination,
    path: &str,
    ns: &str,
    r: &Resolver,
    errs: &mut FieldErrors,
) -> Option<Target> {
    let uri_path = format!("{path}.uri");
    match (&d.uri, &d.reference) {
        (Some(uri), None) => {
            if let Err(e) = check_uri(uri) {
                errs.push(uri_path, e);
                return None;
            }
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                errs.push(uri_path, "only http and https are supported");
                return None;
            }
            Some(Target::direct(uri.as_str()))
        }
        (relative, Some(k)) => {
            let ref_path = format!("{path}.ref");
            let mut ok = true;
            if k.kind != "Service" {
                errs.push(
                    format!("{ref_path}.kind"),
                    format!(
                        "{:?} is not supported: a destination may refer to a Service \
                         ({SERVICE_API_VERSION})",
                        k.kind
                    ),
                );
                ok = false;
            }
            if let Some(v) = &k.api_version {
                if v != SERVICE_API_VERSION {
                    errs.push(
                        format!("{ref_path}.apiVersion"),
                        format!("expected {SERVICE_API_VERSION:?}"),
                    );
                    ok = false;
                }
            }
            let ref_ns = k.namespace.as_deref().unwrap_or(ns);
            for (field, v) in [("name", k.name.as_str()), ("namespace", ref_ns)] {
                if let Err(e) = crate::model::meta::check_dns1123_label(v) {
                    errs.push(format!("{ref_path}.{field}"), e);
                    ok = false;
                }
            }
            // Knative resolves `uri` against the referent's URL, and
            // refuses an absolute one.
            let rel = match relative.as_deref() {
                None | Some("") => "/".to_owned(),
                Some(u) => {
                    if check_uri(u).is_ok() || u.starts_with("//") {
                        errs.push(
                            uri_path,
                            "must be a relative path when ref is set (it is appended to the \
                             Service's URL)",
                        );
                        return None;
                    }
                    if let Err(e) = super::event::check_uri_reference(u) {
                        errs.push(uri_path, e);
                        return None;
                    }
                    format!("/{}", u.trim_start_matches('/'))
                }
            };
            if !ok {
                return None;
            }
            let host = format!("{}.{ref_ns}.{}", k.name, r.domain);
            let Ok(host_header) = HeaderValue::from_str(&host) else {
                errs.push(
                    ref_path,
                    format!("{host:?} is not a valid host (check the domain)"),
                );
                return None;
            };
            Some(Target {
                uri: format!("http://{host}{rel}"),
                url: format!("http://{}{rel}", r.gateway),
                host: Some(host_header),
                service: Some((ref_ns.to_owned(), k.name.clone())),
            })
        }
        (None, None) => {
            errs.push(path, "expected exactly one, got neither: uri, ref");
            None
        }
    }
}

/// A Broker as the running broker needs it.
#[derive(Clone, Debug)]
pub struct BrokerDef {
    pub namespace: String,
    pub name: String,
    /// The default delivery of its triggers (as written: each trigger
    /// compiles it against its own namespace).
    pub delivery: Option<DeliverySpec>,
}

/// A Trigger as its dispatcher needs it.
#[derive(Clone, Debug)]
pub struct TriggerDef {
    pub namespace: String,
    pub name: String,
    pub broker: String,
    pub filter: Filter,
    pub subscriber: Target,
    pub delivery: DeliveryPolicy,
    /// What this was compiled from (the trigger's spec and its broker's
    /// delivery): a change means the dispatcher restarts with the new
    /// definition, keeping its cursor.
    pub source: Value,
}

impl TriggerDef {
    /// The name of this trigger's cursor in its broker's log.
    pub fn cursor_name(&self) -> String {
        cursor_name(&self.namespace, &self.name)
    }
}

/// A trigger's cursor name: `{namespace}.{name}`.
pub fn cursor_name(namespace: &str, trigger: &str) -> String {
    format!("{namespace}.{trigger}")
}

fn typed<T: serde::de::DeserializeOwned + Default>(spec: &Value) -> Result<T, FieldErrors> {
    if spec.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize::<_, T>(spec).map_err(|e| {
        let at = e.path().to_string();
        let path = if at == "." || at.is_empty() {
            "spec".to_owned()
        } else {
            format!("spec.{at}")
        };
        FieldErrors::from(FieldError::new(path, e.into_inner().to_string()))
    })
}

/// Reads a Broker's spec.
pub fn broker_spec(spec: &Value) -> Result<BrokerSpec, FieldErrors> {
    typed(spec)
}

/// Compiles a stored Broker.
pub fn compile_broker(obj: &EventingObject, r: &Resolver) -> Result<BrokerDef, FieldErrors> {
    let spec = broker_spec(&obj.spec)?;
    let mut errs = FieldErrors::default();
    if let Some(d) = &spec.delivery {
        DeliveryPolicy::compile(d, "spec.delivery", &obj.metadata.namespace, r, &mut errs);
    }
    errs.into_result()?;
    Ok(BrokerDef {
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone(),
        delivery: spec.delivery,
    })
}

/// Compiles a stored Trigger; `broker_delivery` is its broker's
/// `spec.delivery`, which applies when the trigger has none of its own
/// (the trigger's replaces it as a whole, as in Knative).
pub fn compile_trigger(
    obj: &EventingObject,
    broker_delivery: Option<&DeliverySpec>,
    r: &Resolver,
) -> Result<TriggerDef, FieldErrors> {
    let spec: TriggerSpec = typed(&obj.spec)?;
    let ns = obj.metadata.namespace.as_str();
    let mut errs = FieldErrors::default();
    let filter = Filter::compile(spec.filter.as_ref().map(|f| &f.attributes), &spec.filters)
        .map_err(|e| errs.push(e.path, e.message))
        .ok();
    let subscriber = resolve(&spec.subscriber, "spec.subscriber", ns, r, &mut errs);
    let delivery = match (&spec.delivery, broker_delivery) {
        (Some(d), _) => DeliveryPolicy::compile(d, "spec.delivery", ns, r, &mut errs),
        (None, Some(d)) => {
            DeliveryPolicy::compile(d, "the broker's spec.delivery", ns, r, &mut errs)
        }
        (None, None) => DeliveryPolicy::default(),
    };
    errs.into_result()?;
    let (Some(filter), Some(subscriber)) = (filter, subscriber) else {
        return Err(FieldErrors::from(FieldError::new(
            "spec",
            "does not compile",
        )));
    };
    Ok(TriggerDef {
        namespace: ns.to_owned(),
        name: obj.metadata.name.clone(),
        broker: spec.broker,
        filter,
        subscriber,
        delivery,
        source: serde_json::json!({
            "spec": obj.spec,
            "brokerDelivery": broker_delivery,
        }),
    })
}

/// What `apply` runs after the shape check: everything the broker would
/// refuse when starting the object.
pub fn validate(obj: &EventingObject, kind: &str) -> Result<(), FieldErrors> {
    let r = Resolver::for_validation();
    let mut defaulted;
    let obj = if obj.metadata.namespace.is_empty() {
        // Validation runs before defaults: a ref's namespace defaults to
        // the object's, which defaults to `default`.
        defaulted = obj.clone();
        defaulted.metadata.namespace = crate::model::meta::DEFAULT_NAMESPACE.to_owned();
        &defaulted
    } else {
        obj
    };
    match kind {
        "Broker" => compile_broker(obj, &r).map(|_| ()),
        _ => compile_trigger(obj, None, &r).map(|_| ()),
    }
}

#[cfg(test)]
mod tests;
