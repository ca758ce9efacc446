use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use ferry_xds_client::{type_url, Outcome, Update};

use super::fixtures::*;
use crate::config::{self, Bootstrap, ConfigError, ConfigErrors};
use crate::xds::XdsState;

type Applied = Arc<Mutex<Vec<Bootstrap>>>;
type Fail = Arc<Mutex<Option<ConfigError>>>;
type Apply = std::future::Ready<Result<(), ConfigErrors>>;

/// A state whose apply records each Bootstrap and fails when `fail` holds
/// an error.
fn state(
    base: Bootstrap,
    fail: Fail,
) -> (XdsState<impl FnMut(Bootstrap) -> Apply + Send>, Applied) {
    let applied: Applied = Arc::default();
    let seen = applied.clone();
    let apply = move |b: Bootstrap| {
        let err = fail.lock().ok().and_then(|f| f.clone());
        if let Ok(mut s) = seen.lock() {
            s.push(b);
        }
        std::future::ready(match err {
            Some(e) => Err(ConfigErrors(vec![e])),
            None => Ok(()),
        })
    };
    (XdsState::new(base, std::env::temp_dir(), apply), applied)
}

fn count(a: &Applied) -> usize {
    a.lock().map(|v| v.len()).unwrap_or(0)
}

fn last(a: &Applied) -> Bootstrap {
    a.lock()
        .ok()
        .and_then(|v| v.last().cloned())
        .unwrap_or_default()
}

fn subs(o: &Outcome, url: &str) -> Vec<String> {
    o.subscriptions
        .iter()
        .find(|(u, _)| u == url)
        .map(|(_, n)| n.iter().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn warms_in_envoy_order_then_applies_once_complete() {
    let (mut st, applied) = state(Bootstrap::default(), Arc::default());

    // CDS: an EDS cluster. Accepted, warming; EDS is subscribed.
    let o = st
        .handle(Update::of("c1", vec![eds_cluster("web")], vec![]))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    assert_eq!(subs(&o, &type_url::<ClusterLoadAssignment>()), ["web"]);
    assert_eq!(count(&applied), 0);

    // LDS: a listener on RDS "r". Still warming; RDS is subscribed.
    let o = st
        .handle(Update::of("l1", vec![listener("l", 10000, "r")], vec![]))
        .await;
    assert!(o.rejected.is_empty());
    assert_eq!(subs(&o, &type_url::<RouteConfiguration>()), ["r"]);
    assert_eq!(count(&applied), 0);

    // RDS arrives, but the cluster's endpoints have not: still nothing.
    let o = st
        .handle(Update::of(
            "r1",
            vec![route_config("r", vec![route_to("", "web")])],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty());
    assert_eq!(
        count(&applied),
        0,
        "no config while the EDS cluster is warming"
    );

    // EDS completes it.
    let o = st
        .handle(Update::of(
            "e1",
            vec![cla("web", &[("127.0.0.1", 18081, 3, 0)])],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    assert_eq!(count(&applied), 1);
    let boot = last(&applied);
    assert_eq!(boot.listeners[0].route_config.as_deref(), Some("r"));
    assert_eq!(boot.clusters[0].endpoints[0].address, "127.0.0.1:18081");
    assert_eq!(boot.clusters[0].endpoints[0].weight, 3);
    assert_eq!(
        boot.routes[0].virtual_hosts[0].routes[0]
            .matcher
            .prefix
            .as_deref(),
        Some("")
    );

    // The same endpoints again change nothing: no second apply.
    st.handle(Update::of(
        "e2",
        vec![cla("web", &[("127.0.0.1", 18081, 3, 0)])],
        vec![],
    ))
    .await;
    assert_eq!(count(&applied), 1);
}

#[tokio::test]
async fn a_route_to_a_missing_cluster_waits_instead_of_serving_503() {
    let (mut st, applied) = state(Bootstrap::default(), Arc::default());
    st.handle(Update::of("c1", vec![static_cluster("a", 1)], vec![]))
        .await;
    st.handle(Update::of("l1", vec![listener("l", 10000, "r")], vec![]))
        .await;
    let o = st
        .handle(Update::of(
            "r1",
            vec![route_config("r", vec![route_to("/", "a")])],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    // (CDS alone was already a complete config: clusters, no listeners.)
    let before = count(&applied);
    assert_eq!(last(&applied).listeners.len(), 1);
    // A new route to "b" before CDS has "b": the old config keeps serving.
    let o = st
        .handle(Update::of(
            "r2",
            vec![route_config(
                "r",
                vec![route_to("/b", "b"), route_to("/", "a")],
            )],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty());
    assert_eq!(count(&applied), before);
    st.handle(Update::of(
        "c2",
        vec![static_cluster("a", 1), static_cluster("b", 2)],
        vec![],
    ))
    .await;
    assert_eq!(count(&applied), before + 1);
    assert_eq!(last(&applied).clusters.len(), 2);
}

#[tokio::test]
async fn translation_rejection_keeps_state_and_names_the_field() {
    let (mut st, applied) = state(Bootstrap::default(), Arc::default());
    let mut bad = static_cluster("bad", 1);
    bad.cluster_discovery_type =
        Some(envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(4));
    let o = st
        .handle(Update::of(
            "c1",
            vec![static_cluster("good", 1), bad],
            vec![],
        ))
        .await;
    assert_eq!(o.rejected.len(), 1);
    assert_eq!(o.rejected[0].name, "bad");
    assert!(o.rejected[0]
        .reason
        .contains("cluster \"bad\": type: cluster type ORIGINAL_DST"));
    // Nothing of the rejected update was kept, not even "good".
    assert!(st.resources().clusters.is_empty());
    assert_eq!(count(&applied), 0);
}

#[tokio::test]
async fn validation_errors_map_back_to_their_resource() {
    let (mut st, applied) = state(Bootstrap::default(), Arc::default());
    st.handle(Update::of("c1", vec![static_cluster("a", 1)], vec![]))
        .await;
    st.handle(Update::of("l1", vec![listener("l", 10000, "r")], vec![]))
        .await;
    let before = count(&applied);
    // A regex that does not compile: translation passes it through,
    // validation rejects it, the NACK names the route config.
    let mut r = route_to("", "a");
    r.r#match = Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
        path_specifier: Some(
            envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::SafeRegex(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "(unclosed".into(),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    });
    let o = st
        .handle(Update::of("r1", vec![route_config("r", vec![r])], vec![]))
        .await;
    assert_eq!(o.rejected.len(), 1, "{:?}", o.rejected);
    assert_eq!(o.rejected[0].name, "r");
    assert!(
        o.rejected[0].reason.starts_with(
            "route_configuration \"r\": virtual_hosts[0].routes[0].match.regex: invalid regex"
        ),
        "{}",
        o.rejected[0].reason
    );
    assert_eq!(count(&applied), before);
    assert!(
        st.resources().routes.is_empty(),
        "a rejected resource is not recorded"
    );
}

#[tokio::test]
async fn apply_errors_nack_and_keep_the_previous_config() {
    let fail: Arc<Mutex<Option<ConfigError>>> = Arc::default();
    let (mut st, applied) = state(Bootstrap::default(), fail.clone());
    st.handle(Update::of("c1", vec![static_cluster("a", 1)], vec![]))
        .await;
    st.handle(Update::of("l1", vec![listener("l", 10000, "r")], vec![]))
        .await;
    st.handle(Update::of(
        "r1",
        vec![route_config("r", vec![route_to("", "a")])],
        vec![],
    ))
    .await;
    assert_eq!(last(&applied).listeners.len(), 1);
    // The app cannot bind the new listener's port.
    if let Ok(mut f) = fail.lock() {
        *f = Some(ConfigError::new(
            "listeners[1].address",
            "cannot listen on 127.0.0.1:10001: in use",
        ));
    }
    let o = st
        .handle(Update::of(
            "l2",
            vec![listener("l", 10000, "r"), listener("m", 10001, "r")],
            vec![],
        ))
        .await;
    assert_eq!(o.rejected.len(), 1);
    assert_eq!(o.rejected[0].name, "m");
    assert_eq!(
        o.rejected[0].reason,
        "listener \"m\": address: cannot listen on 127.0.0.1:10001: in use"
    );
    assert_eq!(st.resources().listeners.len(), 1);
}

#[tokio::test]
async fn static_resources_merge_with_xds_and_removals_apply() {
    let base = Bootstrap {
        clusters: vec![Arc::new(config::Cluster {
            name: "static-backend".into(),
            endpoints: vec![config::Endpoint {
                address: "127.0.0.1:9".into(),
                weight: 1,
            }],
            ..Default::default()
        })],
        ..Default::default()
    };
    let (mut st, applied) = state(base, Arc::default());
    st.handle(Update::of::<Cluster>("c1", vec![], vec![])).await;
    st.handle(Update::of("l1", vec![listener("l", 10000, "r")], vec![]))
        .await;
    st.handle(Update::of(
        "r1",
        vec![route_config("r", vec![route_to("", "static-backend")])],
        vec![],
    ))
    .await;
    assert_eq!(last(&applied).listeners.len(), 1);
    assert_eq!(last(&applied).clusters[0].name, "static-backend");

    // LDS removes the listener: the config shrinks and RDS is unsubscribed.
    let o = st
        .handle(Update::of::<Listener>("l2", vec![], vec!["l".into()]))
        .await;
    assert!(o.rejected.is_empty());
    assert!(subs(&o, &type_url::<RouteConfiguration>()).is_empty());
    assert!(last(&applied).listeners.is_empty());
    assert!(
        st.resources().routes.is_empty(),
        "unsubscribed route configs are dropped"
    );
}

#[tokio::test]
async fn inline_routes_and_tcp_listeners_assemble_and_validate() {
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};

    let (mut st, applied) = state(Bootstrap::default(), Arc::default());
    let mut hcm = hcm_rds("unused");
    hcm.route_specifier = Some(RouteSpecifier::RouteConfig(route_config(
        "local",
        vec![route_to("", "a")],
    )));
    let mut tcp = listener("t", 10001, "unused");
    tcp.filter_chains[0].filters = vec![Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&TcpProxy {
            stat_prefix: "t".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".into())),
            ..Default::default()
        }))),
    }];
    let o = st
        .handle(Update::of(
            "l1",
            vec![listener_with("h", 10000, &hcm), tcp],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    assert!(
        subs(&o, &type_url::<RouteConfiguration>()).is_empty(),
        "inline routes need no RDS"
    );
    let before = count(&applied);
    // Both clusters arrive: one for the inline route, one for the TCP proxy.
    let o = st
        .handle(Update::of(
            "c1",
            vec![static_cluster("a", 1), static_cluster("db", 2)],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    assert_eq!(count(&applied), before + 1);
    let boot = last(&applied);
    assert_eq!(boot.routes[0].name, "inline:h");
    assert_eq!(boot.listeners.len(), 2);
}

fn static_cluster_base(name: &str, port: u16) -> Bootstrap {
    Bootstrap {
        clusters: vec![Arc::new(config::Cluster {
            name: name.into(),
            endpoints: vec![config::Endpoint {
                address: format!("127.0.0.1:{port}"),
                weight: 1,
            }],
            ..Default::default()
        })],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_reloaded_static_part_is_merged_with_the_xds_resources() {
    let (mut st, applied) = state(static_cluster_base("local", 9), Arc::default());
    st.handle(Update::of::<Cluster>("c1", vec![], vec![])).await;
    st.handle(Update::of("l1", vec![listener("l", 10000, "r")], vec![]))
        .await;
    st.handle(Update::of(
        "r1",
        vec![route_config("r", vec![route_to("", "local")])],
        vec![],
    ))
    .await;
    let before = count(&applied);
    assert_eq!(last(&applied).listeners.len(), 1);

    // The file now points "local" elsewhere: merged and applied, the xDS
    // listener and routes still there.
    assert_eq!(
        st.set_static(static_cluster_base("local", 10)).await,
        Ok(())
    );
    assert_eq!(count(&applied), before + 1);
    let boot = last(&applied);
    assert_eq!(boot.clusters[0].endpoints[0].address, "127.0.0.1:10");
    assert_eq!(boot.listeners.len(), 1);
    assert_eq!(boot.routes.len(), 1);

    // A file that drops what the xDS routes need is refused; the previous
    // static part stays and later updates apply on top of it.
    let refused = st.set_static(Bootstrap::default()).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("cluster \"local\"")),
        "{refused:?}"
    );
    assert_eq!(count(&applied), before + 1);
    st.handle(Update::of("c2", vec![static_cluster("extra", 7)], vec![]))
        .await;
    let boot = last(&applied);
    assert_eq!(count(&applied), before + 2);
    assert_eq!(boot.clusters[0].endpoints[0].address, "127.0.0.1:10");
    assert_eq!(boot.clusters.len(), 2);
}
