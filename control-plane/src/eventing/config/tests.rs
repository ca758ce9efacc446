use super::*;
use crate::model::{manifest, Manifest};

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
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: auditor}
    uri: events/in?x=1
  delivery:
    retry: 5
    backoffPolicy: exponential
    backoffDelay: PT1S
    timeout: PT2S
    retryAfterMax: PT30S
    deadLetterSink:
      ref: {kind: Service, name: dlq, namespace: ops}
"#;

fn resolver() -> Resolver {
    Resolver {
        domain: "example.com".into(),
        gateway: "127.0.0.1:8080".into(),
    }
}

/// The Brokers and Triggers of a YAML stream, defaulted as `apply`
/// stores them.
fn objects(yaml: &str) -> Vec<(String, EventingObject)> {
    manifest::parse(yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter_map(|m| match m {
            Manifest::Broker(mut o) => {
                o.set_defaults("Broker");
                Some(("Broker".to_owned(), o))
            }
            Manifest::Trigger(mut o) => {
                o.set_defaults("Trigger");
                Some(("Trigger".to_owned(), o))
            }
            Manifest::Service(_) => None,
        })
        .collect()
}

#[test]
fn compiles_knative_manifests_with_the_brokers_delivery() {
    let objs = objects(YAML);
    let broker = compile_broker(&objs[0].1, &resolver()).expect("broker");
    let orders =
        compile_trigger(&objs[1].1, broker.delivery.as_ref(), &resolver()).expect("orders");
    assert_eq!(orders.cursor_name(), "shop.orders");
    // No delivery of its own: the broker's.
    assert_eq!(orders.delivery.retry, 3);
    assert_eq!(orders.delivery.backoff(2), Duration::from_secs(1));
    assert_eq!(
        orders.subscriber,
        Target::direct("http://127.0.0.1:9999/orders")
    );

    let audit = compile_trigger(&objs[2].1, broker.delivery.as_ref(), &resolver()).expect("audit");
    assert_eq!(audit.delivery.retry, 5);
    assert_eq!(audit.delivery.timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        audit.delivery.retry_after_max,
        Some(Duration::from_secs(30))
    );
    assert_eq!(audit.delivery.backoff(1), Duration::from_secs(2));
    assert_eq!(audit.delivery.backoff(3), Duration::from_secs(8));
    // A ref goes through the gateway with the Service's host; the relative
    // uri is appended to the Service's URL.
    let s = &audit.subscriber;
    assert_eq!(s.uri, "http://auditor.shop.example.com/events/in?x=1");
    assert_eq!(s.url, "http://127.0.0.1:8080/events/in?x=1");
    assert_eq!(
        s.host.as_ref().and_then(|h| h.to_str().ok()),
        Some("auditor.shop.example.com")
    );
    assert_eq!(s.service, Some(("shop".into(), "auditor".into())));
    let dls = audit.delivery.dead_letter_sink.as_ref().expect("dls");
    assert_eq!(dls.uri, "http://dlq.ops.example.com/");
    assert_eq!(dls.url, "http://127.0.0.1:8080/");
    // What the trigger was built from: a change of the broker's delivery
    // changes it too (the dispatcher restarts with the new policy).
    let mut changed = broker.delivery.clone().expect("delivery");
    changed.retry = Some(9);
    let orders2 = compile_trigger(&objs[1].1, Some(&changed), &resolver()).expect("orders");
    assert_ne!(orders.source, orders2.source);
    assert_eq!(orders2.delivery.retry, 9);
}

#[test]
fn the_shipped_examples_are_valid() {
    for (file, text) in [
        (
            "brokers.yaml",
            include_str!("../../../../examples/eventing/brokers.yaml"),
        ),
        (
            "mesh.yaml",
            include_str!("../../../../examples/eventing/mesh.yaml"),
        ),
    ] {
        let objs = objects(text);
        assert!(!objs.is_empty(), "{file}");
        for (kind, o) in objs {
            o.validate(&kind)
                .unwrap_or_else(|e| panic!("{file}: {kind} {}: {e}", o.metadata.name));
        }
    }
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

/// The paths `validate` reports for a Trigger spec (YAML flow mapping).
fn trigger_errors(spec: &str) -> Vec<String> {
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec: {spec}\n"
    );
    match manifest::parse(&yaml).map(|mut v| v.remove(0)) {
        Ok(Manifest::Trigger(o)) => validate(&o, "Trigger")
            .err()
            .map(|e| e.0.into_iter().map(|f| f.path).collect())
            .unwrap_or_default(),
        other => panic!("{yaml}: {other:?}"),
    }
}

#[test]
fn what_the_shape_check_cannot_see_is_refused_with_its_path() {
    let sub = "subscriber: {uri: 'http://x/'}";
    assert_eq!(
        trigger_errors(&format!(
            "{{broker: b, {sub}, filters: [{{cesql: 'a ='}}]}}"
        )),
        ["spec.filters[0].cesql"]
    );
    assert_eq!(
        trigger_errors(&format!(
            "{{broker: b, {sub}, filters: [{{any: [{{exact: {{Type: a}}}}]}}]}}"
        )),
        ["spec.filters[0].any[0].exact.Type"]
    );
    assert_eq!(
        trigger_errors(&format!(
            "{{broker: b, {sub}, filter: {{attributes: {{'x-y': a}}}}}}"
        )),
        ["spec.filter.attributes.x-y"]
    );
    assert_eq!(
        trigger_errors(&format!(
            "{{broker: b, {sub}, delivery: {{backoffDelay: P1X, timeout: PT0S}}}}"
        )),
        ["spec.delivery.backoffDelay", "spec.delivery.timeout"]
    );
    assert_eq!(
        trigger_errors("{broker: b, subscriber: {uri: 'ftp://x/'}}"),
        ["spec.subscriber.uri"]
    );
    assert_eq!(
        trigger_errors("{broker: b, subscriber: {ref: {kind: Broker, name: x}}}"),
        ["spec.subscriber.ref.kind"]
    );
    assert_eq!(
        trigger_errors("{broker: b, subscriber: {ref: {kind: Service, name: x, apiVersion: v1}}}"),
        ["spec.subscriber.ref.apiVersion"]
    );
    assert_eq!(
        trigger_errors(
            "{broker: b, subscriber: {ref: {kind: Service, name: x}, uri: 'http://y/'}}"
        ),
        ["spec.subscriber.uri"]
    );
    assert_eq!(
        trigger_errors(&format!(
            "{{broker: b, {sub}, delivery: {{deadLetterSink: {{ref: {{kind: Service, name: Bad_Name}}}}}}}}"
        )),
        ["spec.delivery.deadLetterSink.ref.name"]
    );
    assert!(trigger_errors(&format!("{{broker: b, {sub}}}")).is_empty());
}
