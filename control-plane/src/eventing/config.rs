//! Brokers and triggers: Knative `eventing.knative.dev/v1` manifests in,
//! the broker's compiled form out.
//!
//! [`Manifest`] is the shape users write (and the shape the model store
//! will hold once `ferry-control apply` accepts Broker and Trigger); the
//! broker runs from [`EventingConfig`], built by
//! [`EventingConfig::from_manifests`]. Until `apply` lands the manifests
//! come from the `--broker-config` YAML file (several documents separated
//! by `---`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::event::check_uri;
use super::filter::{Filter, SubscriptionsApiFilter};

pub const API_VERSION: &str = "eventing.knative.dev/v1";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A Broker or Trigger object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Knative's broker class config reference; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
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

/// Knative's duck `Destination`: a `uri`, or a `ref` to an addressable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
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
    pub dead_letter_sink: Option<String>,
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

    fn compile(spec: &DeliverySpec, path: &str) -> Result<DeliveryPolicy, String> {
        let mut p = DeliveryPolicy::default();
        if let Some(r) = spec.retry {
            p.retry = u32::try_from(r).map_err(|_| format!("{path}.retry: must be >= 0"))?;
        }
        if let Some(b) = &spec.backoff_policy {
            p.backoff_policy = match b.as_str() {
                "linear" => BackoffPolicy::Linear,
                "exponential" => BackoffPolicy::Exponential,
                other => {
                    return Err(format!(
                        "{path}.backoffPolicy: {other:?} is not linear or exponential"
                    ))
                }
            };
        }
        if let Some(d) = &spec.backoff_delay {
            p.backoff_delay =
                duration::parse(d).map_err(|e| format!("{path}.backoffDelay: {e}"))?;
        }
        if let Some(t) = &spec.timeout {
            let t = duration::parse(t).map_err(|e| format!("{path}.timeout: {e}"))?;
            if t.is_zero() {
                return Err(format!("{path}.timeout: must be greater than zero"));
            }
            p.timeout = Some(t);
        }
        if let Some(m) = &spec.retry_after_max {
            p.retry_after_max =
                Some(duration::parse(m).map_err(|e| format!("{path}.retryAfterMax: {e}"))?);
        }
        if let Some(d) = &spec.dead_letter_sink {
            p.dead_letter_sink = Some(resolve(d, &format!("{path}.deadLetterSink"))?);
        }
        Ok(p)
    }
}

fn resolve(d: &Destination, path: &str) -> Result<String, String> {
    match (&d.uri, &d.reference) {
        (Some(uri), None) => {
            check_uri(uri).map_err(|e| format!("{path}.uri: {e}"))?;
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                return Err(format!("{path}.uri: only http and https are supported"));
            }
            Ok(uri.clone())
        }
        (_, Some(r)) => Err(format!(
            "{path}.ref: {} {:?} — references need the serving model, which is not wired \
             to the broker yet; use {path}.uri",
            r.kind, r.name
        )),
        (None, None) => Err(format!("{path}: needs uri (or ref)")),
    }
}

#[derive(Clone, Debug)]
pub struct BrokerDef {
    pub namespace: String,
    pub name: String,
    pub delivery: DeliveryPolicy,
}

#[derive(Clone, Debug)]
pub struct TriggerDef {
    pub namespace: String,
    pub name: String,
    pub broker: String,
    pub filter: Filter,
    pub subscriber: String,
    pub delivery: DeliveryPolicy,
}

impl TriggerDef {
    /// The name of this trigger's cursor in its broker's log.
    pub fn cursor_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default)]
pub struct EventingConfig {
    pub brokers: Vec<BrokerDef>,
    pub triggers: Vec<TriggerDef>,
}

/// Kubernetes object names: DNS-1123 labels.
fn check_name(n: &str, path: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{path}: {n:?} is not a valid name (lowercase letters, digits, '-')"
        ))
    }
}

impl EventingConfig {
    /// Parses a YAML stream of Broker and Trigger manifests.
    pub fn from_yaml(text: &str) -> Result<EventingConfig, String> {
        let mut manifests = Vec::new();
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let v =
                serde_norway::Value::deserialize(doc).map_err(|e| format!("document {i}: {e}"))?;
            if v.is_null() {
                continue;
            }
            let m: Manifest =
                serde_norway::from_value(v).map_err(|e| format!("document {i}: {e}"))?;
            manifests.push(m);
        }
        EventingConfig::from_manifests(&manifests)
    }

    pub fn from_manifests(manifests: &[Manifest]) -> Result<EventingConfig, String> {
        let mut cfg = EventingConfig::default();
        let mut broker_delivery: BTreeMap<(String, String), Option<DeliverySpec>> = BTreeMap::new();
        let mut trigger_specs = Vec::new();
        for m in manifests {
            let ns = m
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let what = format!("{} {ns}/{}", m.kind, m.metadata.name);
            if m.api_version != API_VERSION {
                return Err(format!("{what}: apiVersion must be {API_VERSION}"));
            }
            check_name(&m.metadata.name, &format!("{what}: metadata.name"))?;
            check_name(&ns, &format!("{what}: metadata.namespace"))?;
            match m.kind.as_str() {
                "Broker" => {
                    let spec: BrokerSpec = if m.spec.is_null() {
                        BrokerSpec::default()
                    } else {
                        serde_json::from_value(m.spec.clone())
                            .map_err(|e| format!("{what}: spec: {e}"))?
                    };
                    let key = (ns.clone(), m.metadata.name.clone());
                    if broker_delivery.insert(key, spec.delivery.clone()).is_some() {
                        return Err(format!("{what}: defined twice"));
                    }
                    cfg.brokers.push(BrokerDef {
                        namespace: ns,
                        name: m.metadata.name.clone(),
                        delivery: match &spec.delivery {
                            Some(d) => {
                                DeliveryPolicy::compile(d, &format!("{what}: spec.delivery"))?
                            }
                            None => DeliveryPolicy::default(),
                        },
                    });
                }
                "Trigger" => {
                    let spec: TriggerSpec = serde_json::from_value(m.spec.clone())
                        .map_err(|e| format!("{what}: spec: {e}"))?;
                    trigger_specs.push((ns, m.metadata.name.clone(), what, spec));
                }
                other => return Err(format!("{what}: unsupported kind {other:?}")),
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (ns, name, what, spec) in trigger_specs {
            if !seen.insert((ns.clone(), name.clone())) {
                return Err(format!("{what}: defined twice"));
            }
            let Some(bdel) = broker_delivery.get(&(ns.clone(), spec.broker.clone())) else {
                return Err(format!(
                    "{what}: spec.broker: no broker {ns}/{} is defined",
                    spec.broker
                ));
            };
            let filter =
                Filter::compile(spec.filter.as_ref().map(|f| &f.attributes), &spec.filters)
                    .map_err(|e| format!("{what}: {e}"))?;
            let subscriber = resolve(&spec.subscriber, &format!("{what}: spec.subscriber"))?;
            // The trigger's delivery replaces the broker's as a whole.
            let delivery = match (&spec.delivery, bdel) {
                (Some(d), _) => DeliveryPolicy::compile(d, &format!("{what}: spec.delivery"))?,
                (None, Some(d)) => DeliveryPolicy::compile(d, &format!("{what}: broker delivery"))?,
                (None, None) => DeliveryPolicy::default(),
            };
            cfg.triggers.push(TriggerDef {
                namespace: ns,
                name,
                broker: spec.broker,
                filter,
                subscriber,
                delivery,
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: shop
spec:
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.5S
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: orders
  namespace: shop
spec:
  broker: default
  filter:
    attributes:
      type: com.example.order
  subscriber:
    uri: http://127.0.0.1:9999/orders
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: audit
  namespace: shop
spec:
  broker: default
  filters:
    - cesql: "type LIKE 'com.example.%'"
  subscriber:
    uri: http://127.0.0.1:9999/audit
  delivery:
    retry: 5
    backoffPolicy: exponential
    backoffDelay: PT1S
    timeout: PT2S
    retryAfterMax: PT30S
    deadLetterSink:
      uri: http://127.0.0.1:9999/dls
"#;

    #[test]
    fn parses_knative_manifests() {
        let c = EventingConfig::from_yaml(YAML).expect("valid");
        assert_eq!(c.brokers.len(), 1);
        assert_eq!(c.triggers.len(), 2);
        let orders = &c.triggers[0];
        assert_eq!(orders.cursor_name(), "shop.orders");
        // Inherits the broker's delivery.
        assert_eq!(orders.delivery.retry, 3);
        assert_eq!(orders.delivery.backoff(2), Duration::from_secs(1));
        let audit = &c.triggers[1];
        assert_eq!(audit.delivery.retry, 5);
        assert_eq!(audit.delivery.timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            audit.delivery.retry_after_max,
            Some(Duration::from_secs(30))
        );
        assert_eq!(audit.delivery.backoff(1), Duration::from_secs(2));
        assert_eq!(audit.delivery.backoff(3), Duration::from_secs(8));
        assert_eq!(
            audit.delivery.dead_letter_sink.as_deref(),
            Some("http://127.0.0.1:9999/dls")
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = EventingConfig::from_yaml(include_str!("../../../examples/eventing/brokers.yaml"))
            .expect("examples/eventing/brokers.yaml");
        assert_eq!(c.triggers.len(), 2);
    }

    #[test]
    fn backoff_formulas() {
        let mut p = DeliveryPolicy {
            backoff_delay: Duration::from_millis(100),
            backoff_policy: BackoffPolicy::Linear,
            ..DeliveryPolicy::default()
        };
        let ms = |n| p.backoff(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3)), (100, 200, 300));
        p.backoff_policy = BackoffPolicy::Exponential;
        let ms = |n| p.backoff(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3)), (200, 400, 800));
        assert_eq!(p.backoff(200), MAX_BACKOFF);
    }

    #[test]
    fn errors_name_the_object_and_field() {
        let bad = |y: &str| EventingConfig::from_yaml(y).expect_err(y);
        let head = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n";
        assert!(
            bad(&format!("{head}spec: {{delivery: {{backoffDelay: 5s}}}}"))
                .contains("spec.delivery.backoffDelay")
        );
        assert!(bad(&format!(
            "{head}spec: {{delivery: {{backoffPolicy: random}}}}"
        ))
        .contains("backoffPolicy"));
        assert!(bad(&format!("{head}spec: {{delivery: {{retry: -1}}}}")).contains("retry"));
        let t = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n";
        assert!(bad(&format!(
            "{head}---\n{t}spec: {{broker: nope, subscriber: {{uri: 'http://x'}}}}"
        ))
        .contains("no broker default/nope"));
        assert!(bad(&format!(
            "{head}---\n{t}spec: {{broker: b, subscriber: {{uri: 'http://x'}}, filters: [{{cesql: 'a ='}}]}}"
        ))
        .contains("spec.filters[0].cesql: at position 3"));
        assert!(bad(&format!(
            "{head}---\n{t}spec: {{broker: b, subscriber: {{}}}}"
        ))
        .contains("spec.subscriber"));
        assert!(bad("apiVersion: v1\nkind: Broker\nmetadata: {name: b}\n").contains("apiVersion"));
    }
}
