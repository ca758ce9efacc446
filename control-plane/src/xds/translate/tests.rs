use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;

use super::*;
use crate::xds::fixtures;

fn decode<T: Message + Default + Name>(any: &Any) -> T {
    assert_eq!(any.type_url, T::type_url());
    T::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("decode {}: {e}", any.type_url))
}

#[test]
fn an_empty_prefix_is_present_on_the_wire() {
    let res = fixtures::resources(80, 20, 9001);
    let rc: RouteConfiguration = decode(&res.get(ResourceType::Route).resources["web_routes"].body);
    let route = &rc.virtual_hosts[0].routes[0];
    let m = route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.clone());
    assert_eq!(m, Some(PathSpecifier::Prefix(String::new())));
    let Some(route::Action::Route(action)) = &route.action else {
        panic!("route action expected: {route:?}");
    };
    let Some(ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier else {
        panic!("weighted clusters expected: {action:?}");
    };
    let weights: Vec<(String, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.map(|w| w.value).unwrap_or(0)))
        .collect();
    assert_eq!(weights, [("a".to_string(), 80), ("b".to_string(), 20)]);
    // A weight of 0 is sent as a present 0, not dropped.
    let res = fixtures::resources(0, 100, 9001);
    let rc: RouteConfiguration = decode(&res.get(ResourceType::Route).resources["web_routes"].body);
    let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else {
        panic!("route action expected");
    };
    let Some(ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier else {
        panic!("weighted clusters expected");
    };
    assert_eq!(wc.clusters[0].weight, Some(UInt32Value { value: 0 }));
    assert_eq!(
        action.timeout,
        Some(PbDuration {
            seconds: 5,
            nanos: 0
        })
    );
}

#[test]
fn listeners_use_rds_over_ads_and_the_router() {
    let res = fixtures::resources(80, 20, 9001);
    let l: Listener = decode(&res.get(ResourceType::Listener).resources["web"].body);
    assert_eq!(l.name, "web");
    let filter = &l.filter_chains[0].filters[0];
    assert_eq!(filter.name, HCM_FILTER);
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config expected");
    };
    let hcm: HttpConnectionManager = decode(any);
    assert_eq!(hcm.stat_prefix, "web");
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!("RDS expected");
    };
    assert_eq!(rds.route_config_name, "web_routes");
    assert_eq!(rds.config_source, Some(ads_config_source()));
    assert_eq!(hcm.http_filters.len(), 1);
    assert_eq!(hcm.http_filters[0].name, ROUTER_FILTER);
}

#[test]
fn clusters_are_eds_over_ads_with_a_load_assignment_of_their_name() {
    let res = fixtures::resources(80, 20, 9001);
    let c: Cluster = decode(&res.get(ResourceType::Cluster).resources["b"].body);
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    assert_eq!(
        c.eds_cluster_config.and_then(|e| e.eds_config),
        Some(ads_config_source())
    );
    assert_eq!(c.lb_policy, cluster::LbPolicy::LeastRequest as i32);
    assert_eq!(
        c.connect_timeout,
        Some(PbDuration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
    let cla: ClusterLoadAssignment = decode(&res.get(ResourceType::Endpoint).resources["b"].body);
    assert_eq!(cla.cluster_name, "b");
    let ep = &cla.endpoints[0].lb_endpoints[0];
    assert_eq!(ep.load_balancing_weight, Some(UInt32Value { value: 3 }));
}

#[test]
fn versions_are_content_hashes_per_type() {
    let a = fixtures::resources(80, 20, 9001);
    let same = fixtures::resources(80, 20, 9001);
    for ty in ResourceType::ALL {
        assert_eq!(a.get(ty).version, same.get(ty).version, "{ty}");
    }
    // A weight change touches only RDS.
    let split = fixtures::resources(0, 100, 9001);
    for ty in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
    ] {
        assert_eq!(a.get(ty).version, split.get(ty).version, "{ty}");
    }
    assert_ne!(
        a.get(ResourceType::Route).version,
        split.get(ResourceType::Route).version
    );
    // An endpoint change touches only EDS, and only cluster a's resource.
    let moved = fixtures::resources(80, 20, 9009);
    assert_ne!(
        a.get(ResourceType::Endpoint).version,
        moved.get(ResourceType::Endpoint).version
    );
    let eds = |r: &Resources, n: &str| r.get(ResourceType::Endpoint).resources[n].version.clone();
    assert_ne!(eds(&a, "a"), eds(&moved, "a"));
    assert_eq!(eds(&a, "b"), eds(&moved, "b"));
    assert_eq!(
        a.get(ResourceType::Cluster).version,
        moved.get(ResourceType::Cluster).version
    );
}
