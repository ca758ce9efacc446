use serde_json::json;

use super::*;

#[test]
fn service_table_aligns_columns() {
    let items = vec![json!({
        "metadata": {"name": "hello", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"url": "http://hello.default.example.com",
                   "latestCreatedRevisionName": "hello-v2", "latestReadyRevisionName": "hello-v2",
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })];
    let now = meta::parse_rfc3339("2026-01-01T00:05:00Z").unwrap_or(0);
    let t = table(Kind::Service, &items, &[], false, now);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 2, "{t}");
    assert!(lines[0].starts_with("NAME    URL"), "{t}");
    assert!(lines[1].contains("http://hello.default.example.com"), "{t}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[cells.len() - 2..], ["True", "5m"], "{t}");
    // Columns line up: each header starts where its cells start.
    let col = lines[0].find(" READY ").map_or(0, |i| i + 1);
    assert_eq!(lines[1].get(col..col + 4), Some("True"), "{t}");
}

#[test]
fn revision_table_shows_traffic_and_tags_from_routes() {
    let revs = vec![
        json!({"metadata": {"name": "hello-v1", "namespace": "default",
               "labels": {"serving.knative.dev/service": "hello",
                          "serving.knative.dev/configurationGeneration": "1"}},
               "status": {"actualReplicas": 2, "desiredReplicas": 3,
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    ];
    let routes = vec![
        json!({"metadata": {"name": "hello", "namespace": "default"},
        "status": {"traffic": [{"revisionName": "hello-v1", "percent": 90},
                               {"revisionName": "hello-v1", "percent": 0, "tag": "stable"}]}}),
    ];
    let t = table(Kind::Revision, &revs, &routes, true, 0);
    let row = t.lines().nth(1).unwrap_or("");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "default",
            "hello-v1",
            "hello",
            "90%",
            "stable",
            "1",
            "True",
            "2",
            "3",
            "<unknown>"
        ],
        "{t}"
    );
}

#[test]
fn traffic_summary_names_tags() {
    let r = json!({"status": {"traffic": [
        {"revisionName": "a", "percent": 90},
        {"revisionName": "b", "percent": 10, "tag": "candidate"}]}});
    assert_eq!(traffic_summary(&r), "90% a, 10% b #candidate");
}

#[test]
fn read_docs_checks_every_document_before_sending() {
    let dir = crate::store::testing::TestDir::new("cli");
    let good = dir.path().join("a.yaml");
    let bad = dir.path().join("b.yaml");
    let _ = std::fs::write(
        &good,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a, namespace: x}\n---\n",
    );
    let _ = std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
    );
    let err = read_docs(&[dir.path().to_path_buf()], None)
        .err()
        .map(|e| e.0);
    let err = err.unwrap_or_default();
    assert!(
        err.contains("b.yaml (document 1): kind: v1/ConfigMap is not supported"),
        "{err}"
    );

    let docs = read_docs(std::slice::from_ref(&good), None).unwrap_or_else(|e| panic!("{}", e.0));
    assert_eq!(docs.len(), 1);
    assert_eq!(
        (docs[0].kind, docs[0].namespace.as_str()),
        (Kind::Service, "x")
    );
    let err = read_docs(&[good], Some("y"))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
    assert!(err.contains("does not match -n \"y\""), "{err}");
}

#[test]
fn eventing_tables_show_what_the_broker_reported() {
    let brokers = vec![json!({
        "metadata": {"name": "default", "namespace": "shop"},
        "status": {"address": {"url": "http://127.0.0.1:8090/shop/default"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })];
    let t = table(Kind::Broker, &brokers, &[], false, 0);
    let cells: Vec<&str> = t.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "default",
            "http://127.0.0.1:8090/shop/default",
            "True",
            "<unknown>"
        ],
        "{t}"
    );
    let triggers = vec![json!({
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"broker": "default",
                 "subscriber": {"ref": {"kind": "Service", "name": "billing"}, "uri": "/in"}},
        "status": {"subscriberUri": "http://billing.shop.example.com/in",
                   "conditions": [{"type": "Ready", "status": "False", "reason": "ServiceNotFound"}]}
    })];
    let t = table(Kind::Trigger, &triggers, &[], false, 0);
    let cells: Vec<&str> = t.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "orders",
            "default",
            "http://billing.shop.example.com/in",
            "False",
            "ServiceNotFound",
            "<unknown>"
        ],
        "{t}"
    );
}
