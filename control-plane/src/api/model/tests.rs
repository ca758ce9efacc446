use std::sync::Arc;

use http_body_util::BodyExt;

use super::*;
use crate::store::testing::TestDir;
use crate::store::{FileStore, Runtime, Serving};

/// A `Serving` over a fresh file store; keep the dir alive as long as it.
pub(crate) fn serving() -> (Arc<Serving>, TestDir) {
    let dir = TestDir::new("api");
    let store = FileStore::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    let serving = Serving::new(Arc::new(store), Arc::new(Runtime::new()), "example.com");
    (Arc::new(serving), dir)
}

async fn call(s: &Serving, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let resp = handle(s, req).await;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

const SVC: &str = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service",
  "metadata":{"name":"hello"},
  "spec":{"template":{"spec":{"containers":[{"command":["ferry-hello"]}]}}}}"#;

#[tokio::test]
async fn put_get_list_delete_a_service() {
    let (s, _dir) = serving();
    let (st, v) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/services/hello",
        SVC,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"]["url"], "http://hello.default.example.com");
    assert_eq!(v["status"]["latestCreatedRevisionName"], "hello-00001");

    let (st, _) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/services/hello",
        SVC,
    )
    .await;
    assert_eq!(st, StatusCode::OK);

    let (st, v) = call(&s, Method::GET, "/v1/namespaces/default/services", "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["kind"], "ServiceList");
    assert_eq!(v["items"][0]["metadata"]["name"], "hello");

    let (st, v) = call(
        &s,
        Method::GET,
        "/v1/namespaces/default/revisions/hello-00001",
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = call(&s, Method::GET, "/v1/routes", "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["items"][0]["status"]["traffic"][0]["revisionName"],
        "hello-00001"
    );

    let (st, _) = call(
        &s,
        Method::DELETE,
        "/v1/namespaces/default/services/hello",
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = call(&s, Method::GET, "/v1/namespaces/default/services/hello", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (_, v) = call(&s, Method::GET, "/v1/namespaces/default/revisions", "").await;
    assert_eq!(v["items"], serde_json::json!([]));
}

#[tokio::test]
async fn invalid_traffic_is_a_400_naming_the_field() {
    let (s, _dir) = serving();
    let body = r#"{"metadata":{"name":"hello"},
      "spec":{"template":{"spec":{"containers":[{"image":"x"}]}},
              "traffic":[{"latestRevision":true,"percent":90}]}}"#;
    let (st, v) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/services/hello",
        body,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["reason"], "Invalid");
    assert_eq!(v["details"]["causes"][0]["field"], "spec.traffic");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("spec.traffic: traffic targets sum to 90, want 100"),
        "{msg}"
    );
}

#[tokio::test]
async fn path_and_body_must_agree_and_read_only_kinds_refuse_writes() {
    let (s, _dir) = serving();
    let (st, v) = call(&s, Method::PUT, "/v1/namespaces/other/services/hello", SVC).await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "an absent namespace takes the path's: {v}"
    );
    assert_eq!(v["metadata"]["namespace"], "other");
    let (st, v) = call(&s, Method::PUT, "/v1/namespaces/default/services/bye", SVC).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    let (st, _) = call(&s, Method::PUT, "/v1/namespaces/default/revisions/x", "{}").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    let (st, _) = call(&s, Method::GET, "/v1/namespaces/default/widgets", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/services/hello",
        "{nope",
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn stale_resource_version_is_a_409() {
    let (s, _dir) = serving();
    let (_, v) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/services/hello",
        SVC,
    )
    .await;
    let mut stale = v.clone();
    stale["metadata"]["resourceVersion"] = Value::from("999");
    stale["status"] = Value::Null;
    let (st, v) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/services/hello",
        &stale.to_string(),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn brokers_and_triggers_round_trip() {
    let (s, _dir) = serving();
    let broker =
        r#"{"apiVersion":"eventing.knative.dev/v1","kind":"Broker","metadata":{"name":"default"}}"#;
    let (st, _) = call(&s, Method::POST, "/v1/namespaces/default/brokers", broker).await;
    assert_eq!(st, StatusCode::CREATED);
    let trigger = r#"{"apiVersion":"eventing.knative.dev/v1","kind":"Trigger","metadata":{"name":"t"},
      "spec":{"broker":"default","filter":{"attributes":{"type":"a"}},
              "subscriber":{"uri":"http://127.0.0.1:1/"}}}"#;
    let (st, v) = call(
        &s,
        Method::PUT,
        "/v1/namespaces/default/triggers/t",
        trigger,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let bad = r#"{"apiVersion":"eventing.knative.dev/v1","kind":"Trigger","metadata":{"name":"u"},
      "spec":{"broker":"default","subscriber":{}}}"#;
    let (st, v) = call(&s, Method::PUT, "/v1/namespaces/default/triggers/u", bad).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["details"]["causes"][0]["field"], "spec.subscriber");
    let (_, v) = call(&s, Method::GET, "/v1/triggers", "").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
}
