//! The protocol rules, driven directly through the state machines.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::*;
use crate::xds::fixtures;

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::Route;

fn req(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().to_string(),
        resource_names: names.iter().map(ToString::to_string).collect(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn nack(ty: ResourceType, names: &[&str], kept: &str, nonce: &str, msg: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: msg.to_string(),
            details: Vec::new(),
        }),
        ..req(ty, names, kept, nonce)
    }
}

fn only(step: Step<DiscoveryResponse>) -> DiscoveryResponse {
    assert_eq!(step.responses.len(), 1, "one response expected: {step:?}");
    step.responses.into_iter().next().unwrap_or_default()
}

fn names_in(resp: &DiscoveryResponse, res: &Resources) -> Vec<String> {
    let ty = ResourceType::from_type_url(&resp.type_url).unwrap_or(CDS);
    resp.resources
        .iter()
        .map(|any| {
            res.get(ty)
                .resources
                .values()
                .find(|r| r.body == *any)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "<unknown>".to_string())
        })
        .collect()
}

// --- state of the world ---

#[test]
fn sotw_answers_the_first_request_and_records_the_ack() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    let resp = only(s.on_request(&req(CDS, &[], "", ""), &res));
    assert_eq!(resp.type_url, CDS.type_url());
    assert_eq!(resp.version_info, res.get(CDS).version);
    assert_eq!(
        names_in(&resp, &res),
        ["a", "b"],
        "empty CDS list = wildcard"
    );

    let step = s.on_request(&req(CDS, &[], &resp.version_info, &resp.nonce), &res);
    assert!(step.responses.is_empty(), "an ACK is not answered");
    assert_eq!(
        step.events,
        [Event::Ack {
            ty: CDS,
            version: resp.version_info.clone(),
            nonce: resp.nonce.clone()
        }]
    );
}

#[test]
fn sotw_empty_names_mean_nothing_for_eds_and_rds() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    let resp = only(s.on_request(&req(EDS, &[], "", ""), &res));
    assert!(resp.resources.is_empty());
    let resp = only(s.on_request(&req(LDS, &[], "", ""), &res));
    assert_eq!(names_in(&resp, &res), ["web"]);
    let resp = only(s.on_request(&req(RDS, &["*"], "", ""), &res));
    assert_eq!(
        names_in(&resp, &res),
        ["web_routes"],
        "explicit * is a wildcard"
    );
}

#[test]
fn sotw_fewer_names_shrink_the_subscription() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    let r1 = only(s.on_request(&req(EDS, &["a", "b"], "", ""), &res));
    assert_eq!(names_in(&r1, &res), ["a", "b"]);
    let r2 = only(s.on_request(&req(EDS, &["b"], &r1.version_info, &r1.nonce), &res));
    assert_eq!(names_in(&r2, &res), ["b"]);
    assert_ne!(r2.nonce, r1.nonce);
    // A later snapshot carries only the remaining name.
    let next = fixtures::resources(80, 20, 9009);
    let r3 = only(s.on_snapshot(&next));
    assert_eq!(names_in(&r3, &next), ["b"]);
}

#[test]
fn sotw_stale_requests_are_ignored_entirely() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    let r1 = only(s.on_request(&req(EDS, &["a"], "", ""), &res));
    // A newer response goes out before the client answered the first.
    let r2 = only(s.on_request(&req(EDS, &["a", "b"], "", ""), &res));
    // The answer to r1 arrives late: stale, even though it names a change.
    let step = s.on_request(&req(EDS, &["b"], &r1.version_info, &r1.nonce), &res);
    assert!(step.responses.is_empty());
    assert_eq!(
        step.events,
        [Event::Stale {
            ty: EDS,
            nonce: r1.nonce.clone()
        }]
    );
    assert_eq!(
        s.nonce(EDS),
        Some(r2.nonce.as_str()),
        "r2 is still the latest"
    );
    // The subscription is still a and b.
    let next = fixtures::resources(80, 20, 9009);
    assert_eq!(names_in(&only(s.on_snapshot(&next)), &next), ["a", "b"]);
}

#[test]
fn sotw_nack_is_recorded_and_not_answered_with_the_same_version() {
    let good = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    let r1 = only(s.on_request(&req(RDS, &["web_routes"], "", ""), &good));
    s.on_request(
        &req(RDS, &["web_routes"], &r1.version_info, &r1.nonce),
        &good,
    );

    let bad = fixtures::resources(0, 100, 9001);
    let r2 = only(s.on_snapshot(&bad));
    let step = s.on_request(
        &nack(
            RDS,
            &["web_routes"],
            &r1.version_info,
            &r2.nonce,
            "missing ]: [",
        ),
        &bad,
    );
    assert!(step.responses.is_empty(), "same version is not re-sent");
    assert_eq!(
        step.events,
        [Event::Nack {
            ty: RDS,
            version: r2.version_info.clone(),
            kept: r1.version_info.clone(),
            nonce: r2.nonce.clone(),
            message: "missing ]: [".to_string(),
        }]
    );
    // The same snapshot again: nothing. A fix (here: back to the good
    // content) goes out even though the client never ACKed in between.
    assert!(s.on_snapshot(&bad).responses.is_empty());
    let r3 = only(s.on_snapshot(&good));
    assert_eq!(r3.version_info, r1.version_info);
}

#[test]
fn sotw_pushes_only_changed_types_in_warming_order_without_waiting_for_acks() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    for (ty, names) in [
        (CDS, vec![]),
        (EDS, vec!["a", "b"]),
        (LDS, vec![]),
        (RDS, vec!["web_routes"]),
    ] {
        only(s.on_request(&req(ty, &names, "", ""), &res));
    }
    // Nothing ACKed yet; a route change alone sends RDS alone.
    let split = fixtures::resources(0, 100, 9001);
    let resp = only(s.on_snapshot(&split));
    assert_eq!(resp.type_url, RDS.type_url());
    // Everything changes: CDS, EDS, LDS, RDS in that order.
    let all = Arc::new(Resources::from_resources(Vec::new()));
    let step = s.on_snapshot(&all);
    let urls: Vec<&str> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        urls,
        [
            CDS.type_url(),
            EDS.type_url(),
            LDS.type_url(),
            RDS.type_url()
        ]
    );
    // An unsubscribed type is never pushed.
    let mut quiet = SotwStream::new();
    only(quiet.on_request(&req(CDS, &[], "", ""), &res));
    let step = quiet.on_snapshot(&all);
    assert_eq!(step.responses.len(), 1);
}

#[test]
fn sotw_unknown_types_are_reported_not_answered() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = SotwStream::new();
    let mut r = req(CDS, &[], "", "");
    r.type_url = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
    let step = s.on_request(&r, &res);
    assert!(step.responses.is_empty());
    assert!(matches!(step.events[..], [Event::UnknownType { .. }]));
}

// --- delta ---

fn dreq(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().to_string(),
        resource_names_subscribe: sub.iter().map(ToString::to_string).collect(),
        resource_names_unsubscribe: unsub.iter().map(ToString::to_string).collect(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn donly(step: Step<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    assert_eq!(step.responses.len(), 1, "one response expected: {step:?}");
    step.responses.into_iter().next().unwrap_or_default()
}

fn dnames(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn delta_wildcard_sends_everything_then_only_changes() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = DeltaStream::new();
    let r1 = donly(s.on_request(&dreq(CDS, &[], &[], ""), &res));
    assert_eq!(dnames(&r1), ["a", "b"]);
    assert_eq!(r1.resources[0].version, res.get(CDS).resources["a"].version);
    let step = s.on_request(&dreq(CDS, &[], &[], &r1.nonce), &res);
    assert!(step.responses.is_empty());
    assert!(matches!(step.events[..], [Event::Ack { .. }]));
    // An unchanged type sends nothing.
    assert!(s
        .on_snapshot(&fixtures::resources(0, 100, 9001))
        .responses
        .is_empty());
    // Removing a cluster sends its removal only.
    let yaml = fixtures::yaml(80, 20, 9001);
    let mut file = crate::xds::SnapshotFile::from_yaml(&yaml).unwrap_or_default();
    file.clusters.retain(|c| c.name == "a");
    file.routes.clear();
    file.listeners.clear();
    let fewer = crate::xds::translate::translate(&file);
    let r2 = donly(s.on_snapshot(&fewer));
    assert!(r2.resources.is_empty());
    assert_eq!(r2.removed_resources, ["b"]);
}

#[test]
fn delta_initial_versions_spare_what_the_client_has() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = DeltaStream::new();
    let mut first = dreq(EDS, &["a", "b"], &[], "");
    first.initial_resource_versions = HashMap::from([
        ("a".to_string(), res.get(EDS).resources["a"].version.clone()),
        ("b".to_string(), "old".to_string()),
        ("gone".to_string(), "old".to_string()),
    ]);
    // Names in resource_names_subscribe are always answered.
    let r = donly(s.on_request(&first, &res));
    assert_eq!(dnames(&r), ["a", "b"]);
    assert_eq!(r.removed_resources, ["gone"]);

    // A reconnect that subscribes by wildcard only gets what differs.
    let mut s = DeltaStream::new();
    let mut first = dreq(EDS, &["*"], &[], "");
    first.initial_resource_versions = HashMap::from([
        ("a".to_string(), res.get(EDS).resources["a"].version.clone()),
        ("b".to_string(), "old".to_string()),
    ]);
    let r = donly(s.on_request(&first, &res));
    assert_eq!(dnames(&r), ["b"]);
    assert!(r.removed_resources.is_empty());
}

#[test]
fn delta_subscribe_and_unsubscribe() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = DeltaStream::new();
    let r1 = donly(s.on_request(&dreq(EDS, &["a"], &[], ""), &res));
    assert_eq!(dnames(&r1), ["a"]);
    // Subscribing to b (in the ACK of r1) sends b alone.
    let r2 = donly(s.on_request(&dreq(EDS, &["b"], &[], &r1.nonce), &res));
    assert_eq!(dnames(&r2), ["b"]);
    // Unsubscribing a: nothing to send; a's later changes are not sent.
    let step = s.on_request(&dreq(EDS, &[], &["a"], &r2.nonce), &res);
    assert!(step.responses.is_empty());
    assert!(s
        .on_snapshot(&fixtures::resources(80, 20, 9009))
        .responses
        .is_empty());
    // Asking for a name that does not exist answers with its removal.
    let r3 = donly(s.on_request(&dreq(EDS, &["nope"], &[], ""), &res));
    assert!(r3.resources.is_empty());
    assert_eq!(r3.removed_resources, ["nope"]);
}

#[test]
fn delta_stale_nonce_ignores_the_ack_but_keeps_the_subscription_change() {
    let res = fixtures::resources(80, 20, 9001);
    let mut s = DeltaStream::new();
    let r1 = donly(s.on_request(&dreq(EDS, &["a"], &[], ""), &res));
    let moved = fixtures::resources(80, 20, 9009);
    let r2 = donly(s.on_snapshot(&moved));
    let step = s.on_request(&dreq(EDS, &["b"], &[], &r1.nonce), &moved);
    assert!(
        matches!(step.events[0], Event::Stale { .. }),
        "{:?}",
        step.events
    );
    assert_eq!(dnames(&donly(step)), ["b"]);
    assert_eq!(dnames(&r2), ["a"], "the moved endpoint went out before");
}

#[test]
fn delta_nack_is_recorded_and_the_resource_not_resent_until_it_changes() {
    let good = fixtures::resources(80, 20, 9001);
    let mut s = DeltaStream::new();
    let r1 = donly(s.on_request(&dreq(RDS, &["web_routes"], &[], ""), &good));
    s.on_request(&dreq(RDS, &[], &[], &r1.nonce), &good);
    let bad = fixtures::resources(0, 100, 9001);
    let r2 = donly(s.on_snapshot(&bad));
    let mut n = dreq(RDS, &[], &[], &r2.nonce);
    n.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad regex".into(),
        details: Vec::new(),
    });
    let step = s.on_request(&n, &bad);
    assert!(step.responses.is_empty());
    assert!(
        matches!(&step.events[..], [Event::Nack { ty: RDS, version, message, .. }]
            if *version == bad.get(RDS).version && message == "bad regex"),
        "{:?}",
        step.events
    );
    assert!(s.on_snapshot(&bad).responses.is_empty());
    let r3 = donly(s.on_snapshot(&good));
    assert_eq!(dnames(&r3), ["web_routes"]);
}

// --- registry, cache, debounce ---

#[test]
fn the_registry_keeps_acks_nacks_and_stream_counts() {
    let metrics = XdsMetrics::new();
    let reg = Arc::new(NodeRegistry::new(metrics.clone()));
    let node = NodeKey::new("n1", "c1");
    let guard = reg.connect(&node, Mode::Sotw);
    reg.record(
        &node,
        Mode::Sotw,
        &[
            Event::Sent {
                ty: RDS,
                version: "v1".into(),
                nonce: "1".into(),
                resources: 1,
                removed: 0,
            },
            Event::Ack {
                ty: RDS,
                version: "v1".into(),
                nonce: "1".into(),
            },
            Event::Sent {
                ty: RDS,
                version: "v2".into(),
                nonce: "2".into(),
                resources: 1,
                removed: 0,
            },
            Event::Nack {
                ty: RDS,
                version: "v2".into(),
                kept: "v1".into(),
                nonce: "2".into(),
                message: "bad".into(),
            },
        ],
    );
    let view = reg.nodes();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].connected_streams, 1);
    let rds = &view[0].types["rds"].record;
    assert_eq!(rds.version_sent.as_deref(), Some("v2"));
    assert_eq!(rds.version_acked.as_deref(), Some("v1"));
    assert_eq!(rds.state, Some("nacked"));
    let nack = view[0]
        .last_nack
        .clone()
        .unwrap_or_else(|| panic!("nack recorded"));
    assert_eq!(
        (nack.ty, nack.version.as_str(), nack.message.as_str()),
        ("rds", "v2", "bad")
    );
    assert_eq!(reg.nacking(RDS), 1);
    let text = metrics.render();
    assert!(
        text.contains("ferry_xds_nacks_total{type=\"rds\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ferry_xds_streams{mode=\"sotw\"} 1"),
        "{text}"
    );
    drop(guard);
    assert_eq!(reg.nodes()[0].connected_streams, 0);
    assert_eq!(reg.nacking(RDS), 0);
    assert!(metrics
        .render()
        .contains("ferry_xds_streams{mode=\"sotw\"} 0"));
}

#[test]
fn nodes_follow_the_default_snapshot_unless_pinned() {
    let cache = SnapshotCache::new(fixtures::resources(80, 20, 9001));
    let n1 = NodeKey::new("n1", "c");
    let n2 = NodeKey::new("n2", "c");
    let w1 = cache.watch(&n1);
    let w2 = cache.watch(&n2);
    let pinned = fixtures::resources(50, 50, 9001);
    cache.set_node(&n2, pinned.clone());
    let next = fixtures::resources(0, 100, 9001);
    cache.set_default(next.clone());
    assert!(Arc::ptr_eq(&w1.borrow(), &next));
    assert!(Arc::ptr_eq(&w2.borrow(), &pinned));
    cache.clear_node(&n2);
    assert!(Arc::ptr_eq(&w2.borrow(), &next));
}

#[tokio::test(start_paused = true)]
async fn debounce_publishes_the_last_of_a_burst_once() {
    let first = fixtures::resources(80, 20, 9001);
    let cache = Arc::new(SnapshotCache::new(first.clone()));
    let mut w = cache.watch(&NodeKey::new("n", "c"));
    w.borrow_and_update();
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(debounce(
        rx,
        cache.clone(),
        Duration::from_millis(100),
        Duration::from_secs(1),
    ));
    let last = fixtures::resources(0, 100, 9001);
    for r in [
        fixtures::resources(50, 50, 9001),
        fixtures::resources(10, 90, 9001),
        last.clone(),
    ] {
        let _ = tx.send(r).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !w.has_changed().unwrap_or(true),
        "nothing published within the burst"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(w.has_changed().unwrap_or(false));
    assert!(Arc::ptr_eq(&w.borrow_and_update(), &last));

    // A source that never goes quiet is still published by max_delay.
    let start = tokio::time::Instant::now();
    for i in 0..30u32 {
        let _ = tx.send(fixtures::resources(i, 100, 9001)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if w.has_changed().unwrap_or(false) {
            break;
        }
    }
    assert!(w.has_changed().unwrap_or(false));
    assert!(
        start.elapsed() <= Duration::from_millis(1100),
        "{:?}",
        start.elapsed()
    );
    drop(tx);
    let _ = task.await;
}

#[test]
fn disconnected_nodes_are_kept_a_while_then_dropped() {
    let clock = crate::clock::ManualClock::new();
    let retention = Retention {
        keep: Duration::from_secs(600),
        max_disconnected: 2,
    };
    let reg = Arc::new(NodeRegistry::with_clock(
        XdsMetrics::new(),
        Arc::new(clock.clone()),
        retention,
    ));
    let listed = |reg: &NodeRegistry| -> Vec<(String, bool)> {
        reg.nodes()
            .into_iter()
            .map(|n| (n.id, n.connected))
            .collect()
    };
    let a = reg.connect(&NodeKey::new("a", "c"), Mode::Sotw);
    let b = reg.connect(&NodeKey::new("b", "c"), Mode::Delta);
    drop(a);
    clock.advance(Duration::from_secs(300));
    assert_eq!(
        listed(&reg),
        [("a".to_string(), false), ("b".to_string(), true)]
    );
    clock.advance(Duration::from_secs(301));
    assert_eq!(listed(&reg), [("b".to_string(), true)], "a is past keep");

    // A node that comes back is connected again and no longer ages.
    drop(b);
    clock.advance(Duration::from_secs(500));
    let b = reg.connect(&NodeKey::new("b", "c"), Mode::Delta);
    clock.advance(Duration::from_secs(500));
    assert_eq!(listed(&reg), [("b".to_string(), true)]);
    drop(b);

    // Bounded: beyond max_disconnected the oldest goes first.
    for id in ["x", "y", "z"] {
        drop(reg.connect(&NodeKey::new(id, "c"), Mode::Sotw));
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        listed(&reg),
        [("y".to_string(), false), ("z".to_string(), false)]
    );
}
