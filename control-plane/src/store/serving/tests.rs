use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::store::testing::TestDir;
use crate::store::FileStore;

const HELLO: &str = include_str!("../../../../examples/hello/service.yaml");

fn open(dir: &TestDir) -> Serving {
    let store = FileStore::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    Serving::new(Arc::new(store), Arc::new(Runtime::new()), "example.com")
}

async fn apply_all(s: &Serving, yaml: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    for m in manifest::parse(yaml).unwrap_or_else(|e| panic!("{e}")) {
        out.push(s.apply(m).await.unwrap_or_else(|e| panic!("{e}")).outcome);
    }
    out
}

#[tokio::test]
async fn the_hello_example_survives_a_restart() {
    let dir = TestDir::new("serving");
    let before;
    {
        let s = open(&dir);
        assert_eq!(
            apply_all(&s, HELLO).await,
            vec![Outcome::Created, Outcome::Configured]
        );
        before = s
            .get(Kind::Service, "default", "hello")
            .await
            .unwrap_or_default();
        assert_eq!(before["status"]["latestCreatedRevisionName"], "hello-v2");
        assert_eq!(before["status"]["traffic"][1]["tag"], "candidate");
    }
    let s = open(&dir);
    let after = s
        .get(Kind::Service, "default", "hello")
        .await
        .unwrap_or_default();
    assert_eq!(before, after);
    let revs = s
        .list(Kind::Revision, Some("default"))
        .await
        .unwrap_or_default();
    let names: Vec<&str> = revs
        .iter()
        .filter_map(|r| r.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    assert_eq!(names, ["hello-v1", "hello-v2"]);
    let route = s
        .get(Kind::Route, "default", "hello")
        .await
        .unwrap_or_default();
    assert_eq!(route["status"]["traffic"][0]["percent"], 90);
    assert_eq!(
        route["status"]["traffic"][1]["url"],
        "http://candidate-hello.default.example.com"
    );
}

#[tokio::test]
async fn runtime_reports_show_in_revision_status() {
    let dir = TestDir::new("serving");
    let s = open(&dir);
    apply_all(&s, HELLO).await;
    let (_, mut rt_version) = s.watch();
    s.runtime().set_desired_scale("default", "hello-v1", 3);
    s.runtime().set_actual_scale("default", "hello-v1", 2);
    assert!(rt_version.has_changed().unwrap_or(false));
    rt_version.borrow_and_update();
    // Reporting the same value again is not a change.
    s.runtime().set_actual_scale("default", "hello-v1", 2);
    assert!(!rt_version.has_changed().unwrap_or(true));
    let r = s
        .get(Kind::Revision, "default", "hello-v1")
        .await
        .unwrap_or_default();
    assert_eq!(r["status"]["actualReplicas"], 2);
    assert_eq!(r["status"]["desiredReplicas"], 3);
    s.runtime().set_failure(
        "default",
        "hello-v2",
        Some(("ExitCode1".into(), "exited with 1".into())),
    );
    let svc = s
        .get(Kind::Service, "default", "hello")
        .await
        .unwrap_or_default();
    assert_eq!(svc["status"]["conditions"][0]["status"], "False");
    assert_eq!(svc["status"]["conditions"][0]["reason"], "RevisionFailed");
}

#[tokio::test]
async fn delete_removes_the_service_and_everything_it_owns() {
    let dir = TestDir::new("serving");
    let s = open(&dir);
    apply_all(&s, HELLO).await;
    let mut other = HELLO.replace("hello", "other");
    other = other.split("---").next().unwrap_or_default().to_string();
    apply_all(&s, &other).await;
    s.delete(Kind::Service, "default", "hello")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for k in [
        Kind::Service,
        Kind::Configuration,
        Kind::Route,
        Kind::Revision,
    ] {
        let left: Vec<Value> = s.list(k, None).await.unwrap_or_default();
        assert_eq!(left.len(), 1, "{k}: {left:?}");
        assert!(left[0]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .starts_with("other"));
    }
    assert!(matches!(
        s.delete(Kind::Service, "default", "hello").await,
        Err(ServingError::NotFound(_))
    ));
    assert!(matches!(
        s.delete(Kind::Revision, "default", "other-v1").await,
        Err(ServingError::NotAllowed(_))
    ));
}

#[tokio::test]
async fn concurrent_applies_of_one_service_each_stamp_a_revision() {
    let dir = TestDir::new("serving");
    let s = Arc::new(open(&dir));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"metadata": {"name": "race"},
                "spec": {"template": {"spec": {"containers": [{"command": ["app", i.to_string()]}]}}}});
            s.apply_value(Kind::Service, "default", Some("race"), body).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| panic!("{e}"));
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    let revs = s.list(Kind::Revision, None).await.unwrap_or_default();
    let mut names: Vec<String> = revs
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["race-00001", "race-00002", "race-00003", "race-00004"]
    );
}

#[tokio::test]
async fn eventing_objects_keep_their_status_across_applies() {
    let dir = TestDir::new("serving");
    let s = open(&dir);
    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n";
    assert_eq!(apply_all(&s, broker).await, vec![Outcome::Created]);
    let trigger = "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: default
  filters: [{exact: {type: a}}, {any: [{prefix: {source: x}}, {cesql: \"type LIKE 'a%'\"}]}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: hello}}
  delivery: {retry: 3, backoffPolicy: exponential, backoffDelay: PT0.2S}
";
    assert_eq!(apply_all(&s, trigger).await, vec![Outcome::Created]);
    assert!(s
        .set_eventing_status(
            Kind::Trigger,
            "default",
            "t",
            json!({"conditions": [{"type": "Ready", "status": "True"}]})
        )
        .await
        .unwrap_or(false));
    assert_eq!(apply_all(&s, trigger).await, vec![Outcome::Unchanged]);
    let t = s
        .get(Kind::Trigger, "default", "t")
        .await
        .unwrap_or_default();
    assert_eq!(t["status"]["conditions"][0]["status"], "True");
    let moved = trigger.replace("broker: default", "broker: other");
    let m = manifest::parse(&moved).unwrap_or_else(|e| panic!("{e}"));
    match s.apply(m[0].clone()).await {
        Err(ServingError::Invalid(e)) => assert_eq!(e.0[0].path, "spec.broker"),
        other => panic!("expected 400, got {other:?}"),
    }
}

#[test]
fn trigger_and_broker_shapes_are_checked() {
    let check = |yaml: &str| -> Vec<String> {
        match manifest::parse(yaml) {
            Ok(v) => match &v[0] {
                Manifest::Trigger(o) => o.validate("Trigger"),
                Manifest::Broker(o) => o.validate("Broker"),
                Manifest::Service(_) => Ok(()),
            }
            .err()
            .map(|e| e.0.into_iter().map(|f| f.path).collect())
            .unwrap_or_default(),
            Err(e) => vec![e.to_string()],
        }
    };
    let t = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n";
    assert_eq!(
        check(&format!("{t}  filter: {{attributes: {{type: 1}}}}\n  filters: [{{exact: {{}}, prefix: {{a: b}}}}, {{bogus: 1}}]\n  subscriber: {{uri: /relative}}\n  delivery: {{retry: -1, backoffPolicy: sometimes, backoffDelay: 5s, deadLetterSink: {{}}, extra: 1}}\n")),
        vec![
            "spec.broker",
            "spec.subscriber.uri",
            "spec.delivery.backoffDelay",
            "spec.delivery.backoffPolicy",
            "spec.delivery.deadLetterSink",
            "spec.delivery.extra",
            "spec.delivery.retry",
            "spec.filter.attributes.type",
            "spec.filters[0]",
            "spec.filters[0].exact",
            "spec.filters[1].bogus",
        ]
    );
    let b = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\nspec: {delivery: {deadLetterSink: {uri: 'http://dls'}, timeout: PT1S}, config: {kind: ConfigMap}}\n";
    assert_eq!(check(b), vec!["spec.config.name"]);
}
