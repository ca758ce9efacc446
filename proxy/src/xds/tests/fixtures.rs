//! Proto builders shared by the tests: the smallest valid resource of each
//! type, to be modified per case.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

pub fn any<T: Message + Name>(m: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn addr(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

pub fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into(),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

pub fn hcm_rds(route_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "ingress".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route_name.into(),
            config_source: None,
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    }
}

pub fn listener_with(name: &str, port: u32, hcm: &HttpConnectionManager) -> Listener {
    Listener {
        name: name.into(),
        address: addr("127.0.0.1", port),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn listener(name: &str, port: u32, route_name: &str) -> Listener {
    listener_with(name, port, &hcm_rds(route_name))
}

pub fn route_to(prefix: &str, cluster: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn route_config(name: &str, routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        ..Default::default()
    }
}

pub fn static_cluster(name: &str, port: u32) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(cla(name, &[("127.0.0.1", port, 1, 0)])),
        ..Default::default()
    }
}

/// (ip, port, weight, health_status)
pub fn cla(name: &str, eps: &[(&str, u32, u32, i32)]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: eps
                .iter()
                .map(|(ip, port, w, hs)| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: addr(ip, *port),
                        ..Default::default()
                    })),
                    load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                        value: *w,
                    }),
                    health_status: *hs,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn dur(secs: i64, nanos: i32) -> Option<envoy_types::pb::google::protobuf::Duration> {
    Some(envoy_types::pb::google::protobuf::Duration {
        seconds: secs,
        nanos,
    })
}

pub fn u32v(v: u32) -> Option<envoy_types::pb::google::protobuf::UInt32Value> {
    Some(envoy_types::pb::google::protobuf::UInt32Value { value: v })
}

/// A sidecar's route config: `vhosts` virtual hosts `svc-N` (domains
/// `svc-N.mesh.local`, `svc-N`), each routing `/api/` to the next service
/// and everything else to its own, except that the first one's catch-all
/// goes to `first_catch_all`. Clusters are `svc-0` .. `svc-{clusters-1}`.
pub fn mesh_routes(
    name: &str,
    vhosts: usize,
    clusters: usize,
    first_catch_all: &str,
) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: (0..vhosts)
            .map(|v| {
                let own = format!("svc-{}", v % clusters);
                let next = format!("svc-{}", (v + 1) % clusters);
                let catch_all = if v == 0 {
                    first_catch_all.to_string()
                } else {
                    own.clone()
                };
                VirtualHost {
                    name: format!("vh-{v}"),
                    domains: vec![format!("svc-{v}.mesh.local"), format!("svc-{v}")],
                    routes: vec![
                        route_to("/api/", &next),
                        route_to("/static/", &own),
                        route_to("/", &catch_all),
                    ],
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}
