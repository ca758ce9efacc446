//! The static snapshot schema → Envoy v3 resources.
//!
//! - a listener becomes a Listener with one filter chain: the
//!   `http_connection_manager` fetching its route configuration over RDS
//!   through ADS, then the router filter;
//! - a route configuration becomes a RouteConfiguration;
//! - a cluster becomes a Cluster of type EDS (endpoints over ADS) and a
//!   ClusterLoadAssignment named after it.
//!
//! Validation happened before (`snapshot_file`), so translation cannot
//! fail. Proto3 defaults that carry meaning are set explicitly: a
//! `prefix: ""` becomes a present `prefix` oneof holding "" (match
//! everything), never an absent matcher.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, weighted_cluster, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::{Message, Name};

use super::cache::Resources;
use super::snapshot_file::{
    ClusterSpec, DurationSpec, LbPolicySpec, ListenerSpec, RouteConfigSpec, RouteSpec, SnapshotFile,
};
use super::ResourceType;

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Translates a validated snapshot file into versioned resources.
pub fn translate(file: &SnapshotFile) -> Resources {
    let mut out = Vec::new();
    for c in &file.clusters {
        out.push((ResourceType::Cluster, c.name.clone(), pack(cluster(c))));
        out.push((
            ResourceType::Endpoint,
            c.name.clone(),
            pack(load_assignment(c)),
        ));
    }
    for l in &file.listeners {
        out.push((ResourceType::Listener, l.name.clone(), pack(listener(l))));
    }
    for r in &file.routes {
        out.push((ResourceType::Route, r.name.clone(), pack(route_config(r))));
    }
    Resources::from_resources(out)
}

pub fn listener(l: &ListenerSpec) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: l.stat_prefix.clone().unwrap_or_else(|| l.name.clone()),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: l.route_config.clone(),
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                pack(Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket(&l.address, l.port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_config(r: &RouteConfigSpec) -> RouteConfiguration {
    RouteConfiguration {
        name: r.name.clone(),
        virtual_hosts: r
            .virtual_hosts
            .iter()
            .map(|vh| VirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                routes: vh.routes.iter().map(route).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn route(r: &RouteSpec) -> Route {
    // Validation guarantees exactly one matcher; the order here only
    // decides which one wins if that ever changes.
    let path_specifier = if let Some(p) = &r.prefix {
        route_match::PathSpecifier::Prefix(p.clone())
    } else if let Some(p) = &r.path {
        route_match::PathSpecifier::Path(p.clone())
    } else {
        route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.regex.clone().unwrap_or_default(),
            engine_type: None,
        })
    };
    let cluster_specifier = match &r.weighted_clusters {
        Some(wcs) => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: wcs
                .iter()
                .map(|wc| weighted_cluster::ClusterWeight {
                    name: wc.name.clone(),
                    weight: Some(UInt32Value { value: wc.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        None => route_action::ClusterSpecifier::Cluster(r.cluster.clone().unwrap_or_default()),
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path_specifier),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: r.timeout.map(duration),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn cluster(c: &ClusterSpec) -> Cluster {
    let lb_policy = match c.lb_policy {
        LbPolicySpec::RoundRobin => cluster::LbPolicy::RoundRobin,
        LbPolicySpec::LeastRequest => cluster::LbPolicy::LeastRequest,
        LbPolicySpec::Random => cluster::LbPolicy::Random,
        LbPolicySpec::RingHash => cluster::LbPolicy::RingHash,
        LbPolicySpec::Maglev => cluster::LbPolicy::Maglev,
    };
    Cluster {
        name: c.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        // service_name stays empty: the ClusterLoadAssignment is named
        // after the cluster, which is what an empty service_name means.
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration(c.connect_timeout)),
        lb_policy: lb_policy as i32,
        ..Default::default()
    }
}

pub fn load_assignment(c: &ClusterSpec) -> ClusterLoadAssignment {
    let lb_endpoints = c
        .endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket(&e.address, e.port)),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: e.weight }),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// "Fetch this over the ADS stream already open", in the v3 API.
fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn duration(d: DurationSpec) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.0.subsec_nanos()).unwrap_or(0),
    }
}

fn pack<T: Message + Name>(m: T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests;
