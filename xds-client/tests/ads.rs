//! The client against the fake ADS server: ACK/NACK bookkeeping, nonces,
//! reconnects, delta, warming-driven subscriptions, the cache.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_xds_client::envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use ferry_xds_client::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use ferry_xds_client::envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use ferry_xds_client::testing::{url, FakeAdsServer, Observed};
use ferry_xds_client::{AdsClient, AdsConfig, Handler, Mode, Outcome, Rejected, Source, Update};

const WAIT: Duration = Duration::from_secs(5);

/// What the handler saw of one update.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    type_url: String,
    version: String,
    names: Vec<String>,
    unchanged: Vec<String>,
    removed: Vec<String>,
    source: Source,
}

/// Records updates; rejects any cluster whose name starts with `bad`; asks
/// for the CLA of every EDS cluster it holds (Envoy's warming order). Like
/// any handler it keeps what it made of each resource, since an update
/// leaves out the resources that did not change.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The EDS clusters accepted so far (this copy's own state).
    eds: BTreeSet<String>,
}

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Handler for Recorder {
    async fn apply(&mut self, update: Update) -> Outcome {
        if let Ok(mut s) = self.seen.lock() {
            s.push(Seen {
                type_url: update.type_url.clone(),
                version: update.version.clone(),
                names: update.resources.iter().map(|d| d.name.clone()).collect(),
                unchanged: update.unchanged.clone(),
                removed: update.removed.clone(),
                source: update.source,
            });
        }
        let Some(clusters) = update.typed::<Cluster>() else {
            return Outcome::accept();
        };
        let rejected: Vec<Rejected> = clusters
            .iter()
            .filter(|(n, _)| n.starts_with("bad"))
            .map(|(n, _)| Rejected::new(*n, format!("cluster {n:?}: bad by name")))
            .collect();
        if !rejected.is_empty() {
            return Outcome::reject(rejected);
        }
        for name in &update.removed {
            self.eds.remove(name);
        }
        for (name, c) in clusters {
            if c.cluster_discovery_type
                == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
            {
                self.eds.insert(name.to_string());
            } else {
                self.eds.remove(name);
            }
        }
        Outcome::accept().subscribe::<ClusterLoadAssignment>(self.eds.clone())
    }
}

fn cluster(name: &str, eds: bool) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(if eds {
            DiscoveryType::Eds as i32
        } else {
            DiscoveryType::Static as i32
        })),
        ..Default::default()
    }
}

fn cla(name: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        ..Default::default()
    }
}

fn config(server: &FakeAdsServer, mode: Mode) -> AdsConfig {
    let mut c = AdsConfig::new(server.url(), "node-1", "mesh");
    c.mode = mode;
    c.backoff_base = Duration::from_millis(20);
    c.backoff_cap = Duration::from_millis(100);
    c
}

fn start(config: AdsConfig, handler: Recorder) -> tokio::task::JoinHandle<()> {
    let client = match AdsClient::new(config) {
        Ok(c) => c.envoy_types(),
        Err(e) => panic!("client: {e}"),
    };
    tokio::spawn(async move {
        client.run(handler).await;
    })
}

async fn expect_sotw(
    server: &mut FakeAdsServer,
    type_url: &str,
) -> ferry_xds_client::envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    match server.next_sotw(type_url, WAIT).await {
        Some(r) => r,
        None => panic!("no {type_url} request within {WAIT:?}"),
    }
}

#[tokio::test]
async fn sotw_ack_then_nack_keeps_previous_version() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let handler = Recorder::default();
    let task = start(config(&server, Mode::Sotw), handler.clone());
    let cds = url::<Cluster>();

    // Only CDS is requested at first: EDS has no names yet, and an empty
    // EDS request would read as a wildcard.
    let first = expect_sotw(&mut server, &cds).await;
    assert_eq!(first.version_info, "");
    assert_eq!(first.response_nonce, "");
    assert!(first.resource_names.is_empty(), "CDS is a wildcard");
    assert_eq!(first.node.as_ref().map(|n| n.id.as_str()), Some("node-1"));
    let eds_or_rds = [url::<ClusterLoadAssignment>(), url::<RouteConfiguration>()];
    let early = server.drain();
    assert!(
        early
            .iter()
            .filter_map(Observed::sotw)
            .all(|r| !eds_or_rds.contains(&r.type_url)),
        "{early:?}"
    );

    let n1 = server.push_sotw("v1", &[cluster("a", false)]);
    let ack = expect_sotw(&mut server, &cds).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v1", n1.as_str())
    );
    assert!(ack.error_detail.is_none());

    let n2 = server.push_sotw("v2", &[cluster("a", false), cluster("bad-1", false)]);
    let nack = expect_sotw(&mut server, &cds).await;
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the previous version"
    );
    assert_eq!(nack.response_nonce, n2);
    let detail = nack.error_detail.expect("error_detail");
    assert!(
        detail.message.contains("cluster \"bad-1\": bad by name"),
        "{}",
        detail.message
    );

    // The rejected update was not recorded: the next good one is diffed
    // against v1 (only "a" is known, so nothing is removed).
    let n3 = server.push_sotw("v3", &[cluster("b", false)]);
    let ack = expect_sotw(&mut server, &cds).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v3", n3.as_str())
    );
    let last = handler.seen().pop().expect("seen");
    assert_eq!(last.names, ["b"]);
    assert_eq!(last.removed, ["a"]);
    task.abort();
}

#[tokio::test]
async fn unchanged_resources_are_named_not_decoded_again() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let handler = Recorder::default();
    let task = start(config(&server, Mode::Sotw), handler.clone());
    let cds = url::<Cluster>();
    expect_sotw(&mut server, &cds).await;
    server.push_sotw("v1", &[cluster("a", false), cluster("b", false)]);
    expect_sotw(&mut server, &cds).await;

    // State of the world re-sends "a" as it was, "b" changed, "c" is new.
    let mut b = cluster("b", false);
    b.alt_stat_name = "changed".into();
    let n2 = server.push_sotw("v2", &[cluster("a", false), b, cluster("c", false)]);
    let ack = expect_sotw(&mut server, &cds).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v2", n2.as_str())
    );
    let last = handler.seen().pop().expect("seen");
    assert_eq!(last.names, ["b", "c"]);
    assert_eq!(last.unchanged, ["a"]);
    assert!(last.removed.is_empty());

    // Unchanged still counts as present: dropping "a" later removes it.
    server.push_sotw("v3", &[cluster("c", false)]);
    expect_sotw(&mut server, &cds).await;
    let last = handler.seen().pop().expect("seen");
    assert!(last.names.is_empty(), "{last:?}");
    assert_eq!(last.unchanged, ["c"]);
    assert_eq!(last.removed, ["a", "b"]);
    task.abort();
}

#[tokio::test]
async fn a_rejected_resource_is_decoded_again_when_resent() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let handler = Recorder::default();
    let task = start(config(&server, Mode::Sotw), handler.clone());
    let cds = url::<Cluster>();
    expect_sotw(&mut server, &cds).await;
    server.push_sotw("v1", &[cluster("bad-1", false)]);
    let nack = expect_sotw(&mut server, &cds).await;
    assert!(nack.error_detail.is_some());
    // Nothing of a NACKed response was recorded, so the same bytes are
    // new again (and rejected again) rather than "unchanged".
    server.push_sotw("v2", &[cluster("bad-1", false)]);
    let nack = expect_sotw(&mut server, &cds).await;
    assert!(nack.error_detail.is_some());
    let last = handler.seen().pop().expect("seen");
    assert_eq!(last.names, ["bad-1"]);
    assert!(last.unchanged.is_empty());
    task.abort();
}

#[tokio::test]
async fn undecodable_resource_is_nacked_without_reaching_the_handler() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let handler = Recorder::default();
    let task = start(config(&server, Mode::Sotw), handler.clone());
    let cds = url::<Cluster>();
    expect_sotw(&mut server, &cds).await;
    server.push_raw_sotw(
        ferry_xds_client::envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
            version_info: "v1".into(),
            type_url: cds.clone(),
            nonce: "x1".into(),
            resources: vec![ferry_xds_client::envoy_types::pb::google::protobuf::Any {
                type_url: cds.clone(),
                value: vec![0xff, 0xff, 0xff],
            }],
            ..Default::default()
        },
    );
    let nack = expect_sotw(&mut server, &cds).await;
    assert_eq!(nack.response_nonce, "x1");
    assert_eq!(nack.version_info, "");
    let msg = nack.error_detail.map(|d| d.message).unwrap_or_default();
    assert!(
        msg.contains("resources[0]") && msg.contains("cannot decode"),
        "{msg}"
    );
    assert!(handler.seen().is_empty());
    task.abort();
}

#[tokio::test]
async fn warming_subscribes_eds_after_cds_with_the_latest_nonce() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let task = start(config(&server, Mode::Sotw), Recorder::default());
    let (cds, eds) = (url::<Cluster>(), url::<ClusterLoadAssignment>());
    expect_sotw(&mut server, &cds).await;

    // Two versions back to back: the client answers each with its own
    // nonce; the second ACK carries the latest, so a server ignoring stale
    // nonces does not ignore it.
    let n1 = server.push_sotw("v1", &[cluster("x", true)]);
    let n2 = server.push_sotw("v2", &[cluster("x", true), cluster("y", true)]);
    let a1 = expect_sotw(&mut server, &cds).await;
    let sub1 = expect_sotw(&mut server, &eds).await;
    let a2 = expect_sotw(&mut server, &cds).await;
    let sub2 = expect_sotw(&mut server, &eds).await;
    assert_eq!(
        (a1.version_info.as_str(), a1.response_nonce.as_str()),
        ("v1", n1.as_str())
    );
    assert_eq!(
        (a2.version_info.as_str(), a2.response_nonce.as_str()),
        ("v2", n2.as_str())
    );
    assert_eq!(sub1.resource_names, ["x"]);
    assert_eq!(sub2.resource_names, ["x", "y"]);
    assert_eq!(
        sub2.response_nonce, "",
        "no EDS response yet on this stream"
    );

    let e1 = server.push_sotw("e1", &[cla("x"), cla("y")]);
    let ack = expect_sotw(&mut server, &eds).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("e1", e1.as_str())
    );

    // A CDS shrink unsubscribes EDS names, echoing EDS's latest nonce.
    server.push_sotw("v3", &[cluster("y", true)]);
    let sub3 = expect_sotw(&mut server, &eds).await;
    assert_eq!(sub3.resource_names, ["y"]);
    assert_eq!(
        (sub3.version_info.as_str(), sub3.response_nonce.as_str()),
        ("e1", e1.as_str())
    );
    task.abort();
}

#[tokio::test]
async fn reconnect_resends_last_accepted_versions_and_subscriptions() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let task = start(config(&server, Mode::Sotw), Recorder::default());
    let (cds, eds) = (url::<Cluster>(), url::<ClusterLoadAssignment>());
    expect_sotw(&mut server, &cds).await;
    server.push_sotw("v1", &[cluster("x", true)]);
    expect_sotw(&mut server, &cds).await;
    expect_sotw(&mut server, &eds).await;
    server.push_sotw("e1", &[cla("x")]);
    expect_sotw(&mut server, &eds).await;

    server.drop_streams();
    match server.next(WAIT).await {
        Some(Observed::StreamOpened) => {}
        other => panic!("expected a new stream, got {other:?}"),
    }
    let c = expect_sotw(&mut server, &cds).await;
    let e = expect_sotw(&mut server, &eds).await;
    assert_eq!(
        (c.version_info.as_str(), c.response_nonce.as_str()),
        ("v1", "")
    );
    assert_eq!(
        (e.version_info.as_str(), e.response_nonce.as_str()),
        ("e1", "")
    );
    assert_eq!(e.resource_names, ["x"]);
    // And the new stream works.
    let n = server.push_sotw("v2", &[cluster("x", true)]);
    let ack = expect_sotw(&mut server, &cds).await;
    assert_eq!(ack.response_nonce, n);
    task.abort();
}

#[tokio::test]
async fn keeps_retrying_until_the_server_comes_up() {
    // Take a free port, start the client against it, then bring a server up
    // there: the client must still be retrying and connect.
    let probe = FakeAdsServer::start().await.expect("server");
    let addr = probe.addr();
    let c = config(&probe, Mode::Sotw);
    drop(probe);
    let task = start(c, Recorder::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = None;
    for _ in 0..50 {
        // The old listener closes asynchronously after the drop.
        match FakeAdsServer::start_on(addr).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut server = server.expect("rebind the port");
    let req = expect_sotw(&mut server, &url::<Cluster>()).await;
    assert_eq!(req.version_info, "");
    task.abort();
}

#[tokio::test]
async fn delta_add_remove_and_initial_versions_on_reconnect() {
    let mut server = FakeAdsServer::start().await.expect("server");
    let handler = Recorder::default();
    let task = start(config(&server, Mode::Delta), handler.clone());
    let (cds, eds) = (url::<Cluster>(), url::<ClusterLoadAssignment>());
    let first = server.next_delta(&cds, WAIT).await.expect("first");
    assert!(first.resource_names_subscribe.is_empty());
    assert!(first.initial_resource_versions.is_empty());

    let n1 = server.push_delta(
        "s1",
        &[("1", cluster("a", true)), ("1", cluster("b", false))],
        &[],
    );
    let ack = server.next_delta(&cds, WAIT).await.expect("ack");
    assert_eq!(ack.response_nonce, n1);
    assert!(ack.error_detail.is_none());
    let sub = server.next_delta(&eds, WAIT).await.expect("eds sub");
    assert_eq!(sub.resource_names_subscribe, ["a"]);

    // Remove "b", change "a": the handler sees exactly that.
    let mut a2 = cluster("a", true);
    a2.alt_stat_name = "a-v2".into();
    let n2 = server.push_delta("s2", &[("2", a2.clone())], &["b"]);
    let ack = server.next_delta(&cds, WAIT).await.expect("ack");
    assert_eq!(ack.response_nonce, n2);
    let last = handler.seen().pop().expect("seen");
    assert_eq!(
        (last.names.clone(), last.removed.clone()),
        (vec!["a".to_string()], vec!["b".to_string()])
    );

    // A NACK in delta carries the nonce and the reason.
    let n3 = server.push_delta("s3", &[("3", cluster("bad", false))], &[]);
    let nack = server.next_delta(&cds, WAIT).await.expect("nack");
    assert_eq!(nack.response_nonce, n3);
    assert!(nack.error_detail.is_some());

    // Reconnect: the accepted set (not the rejected "bad") is announced.
    server.drop_streams();
    let again = server.next_delta(&cds, WAIT).await.expect("reconnect");
    let mut versions: Vec<_> = again.initial_resource_versions.into_iter().collect();
    versions.sort();
    assert_eq!(versions, [("a".to_string(), "2".to_string())]);
    let eds_again = server.next_delta(&eds, WAIT).await.expect("eds again");
    assert_eq!(eds_again.resource_names_subscribe, ["a"]);

    // A server re-sending what the client holds costs no decode: the
    // handler is told the name only.
    let n4 = server.push_delta("s4", &[("2", a2)], &[]);
    let ack = server.next_delta(&cds, WAIT).await.expect("ack");
    assert_eq!(ack.response_nonce, n4);
    let last = handler.seen().pop().expect("seen");
    assert!(last.names.is_empty(), "{last:?}");
    assert_eq!(last.unchanged, ["a"]);
    task.abort();
}

#[tokio::test]
async fn cache_is_replayed_before_connecting() {
    let dir = std::env::temp_dir().join(format!("ferry-xds-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = FakeAdsServer::start().await.expect("server");
    let mut c = config(&server, Mode::Sotw);
    c.cache_dir = Some(dir.clone());
    let task = start(c.clone(), Recorder::default());
    let cds = url::<Cluster>();
    expect_sotw(&mut server, &cds).await;
    server.push_sotw("v7", &[cluster("a", false)]);
    expect_sotw(&mut server, &cds).await;
    // The ACK goes out first; the file follows.
    let file = dir.join("envoy.config.cluster.v3.Cluster.pb");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !file.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert!(file.exists());

    // A new client with the server gone still gets the cached clusters.
    drop(server);
    let handler = Recorder::default();
    let task = start(c, handler.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    while handler.seen().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = handler.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].source, Source::Cache);
    assert_eq!(seen[0].version, "v7");
    assert_eq!(seen[0].names, ["a"]);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// (name, bytes) of each resource handed over.
type SeenBytes = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Records what an encoded subscription hands over.
#[derive(Clone, Default)]
struct Bytes {
    seen: SeenBytes,
}

impl Handler for Bytes {
    async fn apply(&mut self, update: Update) -> Outcome {
        if let Ok(mut s) = self.seen.lock() {
            for (name, bytes) in update.encoded() {
                s.push((name.to_string(), bytes.to_vec()));
            }
        }
        Outcome::accept()
    }
}

#[tokio::test]
async fn an_encoded_subscription_hands_over_bytes_and_names() {
    use ferry_xds_client::envoy_types::pb::envoy::config::route::v3::VirtualHost;
    use prost::Message;

    let mut server = FakeAdsServer::start().await.expect("server");
    let handler = Bytes::default();
    let client = match AdsClient::new(config(&server, Mode::Sotw)) {
        Ok(c) => c.watch::<Cluster>().watch_encoded::<RouteConfiguration>(),
        Err(e) => panic!("client: {e}"),
    };
    let task = {
        let handler = handler.clone();
        tokio::spawn(async move {
            client.run(handler).await;
        })
    };
    let cds = url::<Cluster>();
    expect_sotw(&mut server, &cds).await;
    let rc = RouteConfiguration {
        name: "web".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    // RDS is by name: the fake server answers whatever is pushed.
    let n = server.push_sotw("r1", std::slice::from_ref(&rc));
    let ack = expect_sotw(&mut server, &url::<RouteConfiguration>()).await;
    assert_eq!(ack.response_nonce, n);
    assert!(ack.error_detail.is_none());
    let seen = handler.seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen, [("web".to_string(), rc.encode_to_vec())]);

    // Top-level fields that do not parse are still the client's to reject.
    server.push_raw_sotw(
        ferry_xds_client::envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
            version_info: "r2".into(),
            type_url: url::<RouteConfiguration>(),
            nonce: "x2".into(),
            resources: vec![ferry_xds_client::envoy_types::pb::google::protobuf::Any {
                type_url: url::<RouteConfiguration>(),
                value: vec![0x0a, 0xff],
            }],
            ..Default::default()
        },
    );
    let nack = expect_sotw(&mut server, &url::<RouteConfiguration>()).await;
    assert_eq!(nack.response_nonce, "x2");
    assert!(nack.error_detail.is_some());
    task.abort();
}
