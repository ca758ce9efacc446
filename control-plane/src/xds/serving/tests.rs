use std::sync::Arc;

use super::*;
use crate::model::manifest;
use crate::store::testing::TestDir;
use crate::store::{FileStore, Runtime, Serving};
use crate::xds::ResourceType;

const HELLO: &str = include_str!("../../../../examples/hello/service.yaml");

async fn hello() -> (Serving, TestDir) {
    let dir = TestDir::new("xds-serving");
    let store = FileStore::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    let s = Serving::new(Arc::new(store), Arc::new(Runtime::new()), "example.com");
    for m in manifest::parse(HELLO).unwrap_or_else(|e| panic!("{e}")) {
        s.apply(m).await.unwrap_or_else(|e| panic!("{e}"));
    }
    (s, dir)
}

fn gw() -> GatewayConfig {
    GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        domain: "example.com".to_string(),
    }
}

#[tokio::test]
async fn the_split_and_the_tag_become_virtual_hosts() {
    let (s, _dir) = hello().await;
    let snap = s.snapshot(None).await.unwrap_or_default();
    let mut eps = BTreeMap::new();
    eps.insert(
        ("default".to_string(), "hello-v1".to_string()),
        vec![SocketAddr::from(([127, 0, 0, 1], 40001))],
    );
    let file = gateway_snapshot(&gw(), &snap, &eps);
    assert_eq!(file.validate(), Ok(()));

    assert_eq!(file.listeners.len(), 1);
    assert_eq!(file.listeners[0].port, 8080);
    let vhs = &file.routes[0].virtual_hosts;
    assert_eq!(vhs.len(), 2, "{vhs:?}");
    assert_eq!(
        vhs[0].domains,
        ["hello.default.example.com", "hello.default.example.com:*"]
    );
    let split = vhs[0].routes[0]
        .weighted_clusters
        .clone()
        .unwrap_or_default();
    let split: Vec<(String, u32)> = split.into_iter().map(|w| (w.name, w.weight)).collect();
    assert_eq!(
        split,
        [
            ("default/hello-v1".to_string(), 90),
            ("default/hello-v2".to_string(), 10)
        ]
    );
    assert_eq!(
        vhs[0].routes[0].timeout,
        Some(DurationSpec(Duration::from_secs(300)))
    );
    assert_eq!(vhs[1].domains[0], "candidate-hello.default.example.com");
    assert_eq!(
        vhs[1].routes[0].cluster.as_deref(),
        Some("default/hello-v2")
    );

    let clusters: Vec<(&str, usize)> = file
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.endpoints.len()))
        .collect();
    assert_eq!(clusters, [("default/hello-v1", 1), ("default/hello-v2", 0)]);

    let res = gateway_resources(&gw(), &snap, &eps);
    assert_eq!(res.get(ResourceType::Cluster).resources.len(), 2);
    assert_eq!(res.get(ResourceType::Endpoint).resources.len(), 2);
    assert!(res
        .get(ResourceType::Listener)
        .resources
        .contains_key(GATEWAY));
    assert!(res.get(ResourceType::Route).resources.contains_key(GATEWAY));
}

#[tokio::test]
async fn a_single_target_routes_to_one_cluster_and_zero_percent_entries_are_left_out() {
    let (s, _dir) = hello().await;
    let only_v2 = HELLO
        .replace("percent: 90", "percent: 0")
        .replace("percent: 10", "percent: 100");
    for m in manifest::parse(&only_v2).unwrap_or_else(|e| panic!("{e}")) {
        s.apply(m).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let snap = s.snapshot(None).await.unwrap_or_default();
    let file = gateway_snapshot(&gw(), &snap, &BTreeMap::new());
    let main = &file.routes[0].virtual_hosts[0].routes[0];
    assert_eq!(main.cluster.as_deref(), Some("default/hello-v2"));
    assert!(main.weighted_clusters.is_none());
}

#[tokio::test]
async fn endpoint_changes_change_only_eds() {
    let (s, _dir) = hello().await;
    let snap = s.snapshot(None).await.unwrap_or_default();
    let a = gateway_resources(&gw(), &snap, &BTreeMap::new());
    let mut eps = BTreeMap::new();
    eps.insert(
        ("default".to_string(), "hello-v2".to_string()),
        vec![SocketAddr::from(([127, 0, 0, 1], 40002))],
    );
    let b = gateway_resources(&gw(), &snap, &eps);
    for t in ResourceType::ALL {
        let changed = a.get(t).version != b.get(t).version;
        assert_eq!(changed, t == ResourceType::Endpoint, "{t}");
    }
}

/// Every revision cluster carries the activator role for the proxies, and
/// encodes the same way every time (its version is the hash of its bytes).
#[tokio::test]
async fn revision_clusters_carry_the_activator_metadata() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::value::Kind;

    let (s, _dir) = hello().await;
    let snap = s.snapshot(None).await.unwrap_or_default();
    let a = gateway_resources(&gw(), &snap, &BTreeMap::new());
    let b = gateway_resources(&gw(), &snap, &BTreeMap::new());
    assert_eq!(
        a.get(ResourceType::Cluster).version,
        b.get(ResourceType::Cluster).version
    );
    let r = a
        .get(ResourceType::Cluster)
        .resources
        .get("default/hello-v2")
        .cloned()
        .unwrap_or_else(|| panic!("no cluster for hello-v2"));
    let c = Cluster::decode(r.body.value.as_slice()).unwrap_or_else(|e| panic!("decode: {e}"));
    assert_eq!(c.name, "default/hello-v2");
    let md = c.metadata.unwrap_or_default();
    let ferry = md
        .filter_metadata
        .get(FERRY_METADATA)
        .cloned()
        .unwrap_or_default();
    let field = |k: &str| ferry.fields.get(k).and_then(|v| v.kind.clone());
    assert_eq!(field("activation"), Some(Kind::BoolValue(true)));
    assert_eq!(
        field("revision"),
        Some(Kind::StringValue("hello-v2".into()))
    );
    assert_eq!(
        field("namespace"),
        Some(Kind::StringValue("default".into()))
    );
    assert_eq!(
        field("hold_timeout"),
        Some(Kind::StringValue("300s".into()))
    );
    assert_eq!(ferry.fields.len(), 4);
}

/// Sidecars get the gateway's clusters and virtual hosts under their own
/// route configuration, and their own outbound listener instead of the
/// gateway's.
#[tokio::test]
async fn sidecars_get_the_mesh_routes_and_their_own_outbound_listener() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    let (s, _dir) = hello().await;
    let snap = s.snapshot(None).await.unwrap_or_default();
    let both = serving_resources(&gw(), &snap, &BTreeMap::new());
    let outbound = SocketAddr::from(([127, 0, 0, 1], 41234));
    let side = sidecar_resources(&both.sidecar, outbound);

    for t in [ResourceType::Cluster, ResourceType::Endpoint] {
        assert_eq!(
            side.get(t).version,
            both.gateway.get(t).version,
            "{t}: the same revision clusters"
        );
    }
    let names = |r: &Resources, t| -> Vec<String> { r.get(t).resources.keys().cloned().collect() };
    assert_eq!(names(&side, ResourceType::Listener), [OUTBOUND]);
    assert_eq!(names(&side, ResourceType::Route), [OUTBOUND]);
    assert_eq!(names(&both.gateway, ResourceType::Listener), [GATEWAY]);

    let body = |r: &Resources, t, n: &str| {
        r.get(t)
            .resources
            .get(n)
            .map(|x| x.body.value.clone())
            .unwrap_or_else(|| panic!("no {t} {n}"))
    };
    let l = Listener::decode(body(&side, ResourceType::Listener, OUTBOUND).as_slice())
        .unwrap_or_else(|e| panic!("{e}"));
    let sa = l
        .address
        .and_then(|a| a.address)
        .map(|a| match a {
            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => {
                (s.address, s.port_specifier)
            }
            other => panic!("{other:?}"),
        })
        .unwrap_or_else(|| panic!("no address"));
    assert_eq!(sa.0, "127.0.0.1");
    assert_eq!(
        format!("{:?}", sa.1),
        format!(
            "{:?}",
            Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    41234
                )
            )
        )
    );
    let mesh = RouteConfiguration::decode(body(&side, ResourceType::Route, OUTBOUND).as_slice())
        .unwrap_or_else(|e| panic!("{e}"));
    let gateway =
        RouteConfiguration::decode(body(&both.gateway, ResourceType::Route, GATEWAY).as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mesh.name, OUTBOUND);
    assert_eq!(mesh.virtual_hosts, gateway.virtual_hosts);
    assert_eq!(mesh.virtual_hosts.len(), 2);
}

/// A registered sidecar's node is pinned to its own snapshot before it
/// connects, follows model changes, and leaves the mesh when it is gone;
/// other nodes keep the gateway's.
#[tokio::test]
async fn registered_sidecars_are_pinned_and_follow_the_model() {
    use crate::scaler::Mesh;

    let (s, _dir) = hello().await;
    let snap = s.snapshot(None).await.unwrap_or_default();
    let first = serving_resources(&gw(), &snap, &BTreeMap::new());
    let cache = Arc::new(SnapshotCache::new(Arc::new(first.gateway)));
    let sidecars = Sidecars::new(cache.clone(), "http://127.0.0.1:1".into(), first.sidecar);
    let outbound = SocketAddr::from(([127, 0, 0, 1], 41000));
    sidecars.register("hello-v1-1", outbound);
    assert_eq!(
        sidecars.registered(),
        [("hello-v1-1".to_string(), outbound)]
    );

    let node = cache.watch(&sidecar_node("hello-v1-1"));
    let listeners = |rx: &tokio::sync::watch::Receiver<Arc<Resources>>| -> Vec<String> {
        rx.borrow()
            .get(ResourceType::Listener)
            .resources
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(listeners(&node), [OUTBOUND]);
    let other = cache.watch(&NodeKey::new("gateway", ""));
    assert_eq!(listeners(&other), [GATEWAY]);
    // Same id, another node cluster: not a sidecar.
    let not_sidecar = cache.watch(&NodeKey::new("hello-v1-1", "elsewhere"));
    assert_eq!(listeners(&not_sidecar), [GATEWAY]);

    // An endpoint arrives: the sidecar's EDS follows.
    let mut eps = BTreeMap::new();
    eps.insert(
        ("default".to_string(), "hello-v2".to_string()),
        vec![SocketAddr::from(([127, 0, 0, 1], 40002))],
    );
    let eds_before = node.borrow().get(ResourceType::Endpoint).version.clone();
    sidecars.set_base(serving_resources(&gw(), &snap, &eps).sidecar);
    let eds_after = node.borrow().get(ResourceType::Endpoint).version.clone();
    assert_ne!(eds_before, eds_after);
    assert_eq!(listeners(&node), [OUTBOUND]);

    sidecars.unregister("hello-v1-1");
    assert!(sidecars.registered().is_empty());
    assert_eq!(listeners(&node), [GATEWAY]);
}

/// The publisher sends the first change after a quiet spell at once and
/// coalesces what follows within its interval into one later publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_is_published_at_once_and_later_ones_coalesced() {
    use std::time::Instant;

    let (s, _dir) = hello().await;
    let serving = Arc::new(s);
    let initial = model_resources(&serving, &gw())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = Arc::new(SnapshotCache::new(Arc::new(initial.gateway)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let interval = Duration::from_millis(500);
    let task = tokio::spawn(publish_model(
        serving.clone(),
        gw(),
        cache.clone(),
        None,
        interval,
        stop_rx,
    ));
    let eds = |cache: &SnapshotCache| {
        cache
            .default_snapshot()
            .get(ResourceType::Endpoint)
            .version
            .clone()
    };
    let until_changed = |from: String, cap: Duration| {
        let cache = cache.clone();
        async move {
            let started = Instant::now();
            while eds(&cache) == from {
                assert!(started.elapsed() < cap, "not published within {cap:?}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            started.elapsed()
        }
    };
    // Let the publisher start waiting, with nothing published for a while.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rt = serving.runtime();
    let v0 = eds(&cache);
    rt.set_endpoints(
        "default",
        "hello-v1",
        vec![SocketAddr::from(([127, 0, 0, 1], 40001))],
    );
    let first = until_changed(v0, Duration::from_secs(2)).await;
    assert!(
        first < Duration::from_millis(250),
        "first change after {first:?}"
    );
    let published = Instant::now();

    let v1 = eds(&cache);
    rt.set_endpoints(
        "default",
        "hello-v2",
        vec![SocketAddr::from(([127, 0, 0, 1], 40002))],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(eds(&cache), v1, "published within the interval");
    until_changed(v1, Duration::from_secs(3)).await;
    assert!(published.elapsed() >= interval - Duration::from_millis(50));
    let eps = cache
        .default_snapshot()
        .get(ResourceType::Endpoint)
        .resources
        .len();
    assert_eq!(eps, 2);

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
