//! The service driven through tonic over a real loopback socket.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::transport::Channel;

use super::*;
use crate::xds::{fixtures, ResourceType, XdsMetrics};

struct Harness {
    addr: SocketAddr,
    cache: Arc<SnapshotCache>,
    registry: Arc<NodeRegistry>,
    _shutdown: watch::Sender<bool>,
}

async fn start() -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let cache = Arc::new(SnapshotCache::new(fixtures::resources(80, 20, 9001)));
    let registry = Arc::new(NodeRegistry::new(XdsMetrics::new()));
    let (tx, rx) = watch::channel(false);
    let svc = AdsServer::new(cache.clone(), registry.clone(), rx).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Harness {
        addr,
        cache,
        registry,
        _shutdown: tx,
    }
}

async fn client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// A request stream the test feeds through the returned sender.
fn requests<T: Send + 'static>() -> (
    mpsc::Sender<T>,
    impl futures_util::Stream<Item = T> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel::<T>(8);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    (tx, stream)
}

async fn next<T>(s: &mut Streaming<T>) -> T {
    match tokio::time::timeout(Duration::from_secs(5), s.message()).await {
        Ok(Ok(Some(m))) => m,
        other => panic!("no response: {:?}", other.map(|r| r.map(|o| o.is_some()))),
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        cluster: "test".to_string(),
        ..Default::default()
    })
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn sotw_over_grpc_acks_pushes_and_nacks() {
    let h = start().await;
    let mut c = client(h.addr).await;
    let (tx, reqs) = requests::<DiscoveryRequest>();
    let first = DiscoveryRequest {
        node: node("sotw-1"),
        type_url: ResourceType::Route.type_url().into(),
        resource_names: vec!["web_routes".into()],
        ..Default::default()
    };
    let _ = tx.send(first).await;
    let mut resp = c
        .stream_aggregated_resources(reqs)
        .await
        .unwrap_or_else(|e| panic!("open stream: {e}"))
        .into_inner();
    let r1 = next(&mut resp).await;
    assert_eq!(r1.resources.len(), 1);
    let _ = tx
        .send(DiscoveryRequest {
            type_url: r1.type_url.clone(),
            resource_names: vec!["web_routes".into()],
            version_info: r1.version_info.clone(),
            response_nonce: r1.nonce.clone(),
            ..Default::default()
        })
        .await;
    let registry = h.registry.clone();
    eventually("the ACK is recorded", || {
        registry
            .nodes()
            .first()
            .and_then(|n| n.types.get("rds"))
            .and_then(|t| t.record.version_acked.clone())
            == Some(r1.version_info.clone())
    })
    .await;

    // A new snapshot is pushed without being asked for.
    h.cache.set_default(fixtures::resources(0, 100, 9001));
    let r2 = next(&mut resp).await;
    assert_ne!(r2.version_info, r1.version_info);
    let _ = tx
        .send(DiscoveryRequest {
            type_url: r2.type_url.clone(),
            resource_names: vec!["web_routes".into()],
            version_info: r1.version_info.clone(),
            response_nonce: r2.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "no thanks".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    eventually("the NACK is recorded", || {
        registry
            .nodes()
            .first()
            .and_then(|n| n.last_nack.clone())
            .map(|n| n.message)
            == Some("no thanks".to_string())
    })
    .await;
    let view = h.registry.nodes();
    assert_eq!(view[0].id, "sotw-1");
    assert_eq!(view[0].mode, Some("sotw"));
    assert_eq!(view[0].connected_streams, 1);
    assert_eq!(
        view[0].types["rds"]
            .record
            .last_nack
            .as_ref()
            .map(|n| n.version.clone()),
        Some(r2.version_info.clone())
    );

    // Closing the stream closes the record.
    drop(tx);
    drop(resp);
    eventually("the stream is uncounted", || {
        registry.nodes().first().map(|n| n.connected_streams) == Some(0)
    })
    .await;
}

#[tokio::test]
async fn delta_over_grpc_sends_changes_and_removals() {
    let h = start().await;
    let mut c = client(h.addr).await;
    let (tx, reqs) = requests::<DeltaDiscoveryRequest>();
    let _ = tx
        .send(DeltaDiscoveryRequest {
            node: node("delta-1"),
            type_url: ResourceType::Cluster.type_url().into(),
            ..Default::default()
        })
        .await;
    let mut resp = c
        .delta_aggregated_resources(reqs)
        .await
        .unwrap_or_else(|e| panic!("open stream: {e}"))
        .into_inner();
    let r1 = next(&mut resp).await;
    let names: Vec<&str> = r1.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let _ = tx
        .send(DeltaDiscoveryRequest {
            type_url: r1.type_url.clone(),
            response_nonce: r1.nonce.clone(),
            ..Default::default()
        })
        .await;

    // Wait for the ACK first: a push racing it would make it stale.
    let registry = h.registry.clone();
    eventually("the delta node's ACK is listed", || {
        registry
            .nodes()
            .first()
            .map(|n| (n.mode, n.types["cds"].record.version_acked.clone()))
            == Some((Some("delta"), Some(r1.system_version_info.clone())))
    })
    .await;

    let mut file = crate::xds::SnapshotFile::from_yaml(&fixtures::yaml(80, 20, 9001))
        .unwrap_or_else(|e| panic!("{e}"));
    file.clusters.retain(|c| c.name == "a");
    file.routes.clear();
    file.listeners.clear();
    h.cache
        .set_default(Arc::new(crate::xds::translate::translate(&file)));
    let r2 = next(&mut resp).await;
    assert!(r2.resources.is_empty());
    assert_eq!(r2.removed_resources, ["b"]);
}

#[tokio::test]
async fn a_stream_without_a_node_is_refused() {
    let h = start().await;
    let mut c = client(h.addr).await;
    let (tx, reqs) = requests::<DiscoveryRequest>();
    let _ = tx
        .send(DiscoveryRequest {
            type_url: ResourceType::Cluster.type_url().into(),
            ..Default::default()
        })
        .await;
    let mut resp = c
        .stream_aggregated_resources(reqs)
        .await
        .unwrap_or_else(|e| panic!("open stream: {e}"))
        .into_inner();
    let got = tokio::time::timeout(Duration::from_secs(5), resp.message()).await;
    match got {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        other => panic!(
            "expected InvalidArgument, got {:?}",
            other.map(|r| r.map(|o| o.is_some()))
        ),
    }
    assert!(h.registry.nodes().is_empty());
}
