use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, HttpProtocolOptions, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChainMatch, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsCertificate,
};

use super::fixtures::*;
use crate::config::{self, Dur, ListenerProtocol};
use crate::xds::translate_listener;

fn tmp() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ferry-xds-test-{}", std::process::id()))
}

fn translate(l: &Listener) -> Result<crate::xds::XdsListener, String> {
    translate_listener(l, &tmp())
}

fn with_filter(mut l: Listener, f: Filter) -> Listener {
    l.filter_chains[0].filters = vec![f];
    l
}

fn tls_socket(ctx: &DownstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.into())),
        ..Default::default()
    })
}

#[test]
fn accepted_listeners() {
    let mut hcm_fields = hcm_rds("r1");
    hcm_fields.common_http_protocol_options = Some(HttpProtocolOptions {
        idle_timeout: dur(30, 0),
        max_headers_count: u32v(50),
        ..Default::default()
    });
    hcm_fields.request_headers_timeout = dur(0, 500_000_000);
    hcm_fields.max_request_headers_kb = u32v(16);

    let mut inline = hcm_rds("ignored");
    inline.route_specifier = Some(RouteSpecifier::RouteConfig(route_config(
        "local",
        vec![route_to("", "c1")],
    )));

    let tcp = TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        ..Default::default()
    };
    let tcp_listener = with_filter(
        listener("t", 5432, "x"),
        Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&tcp))),
        },
    );

    let mut tls = listener("s", 8443, "r1");
    tls.filter_chains[0].transport_socket = Some(tls_socket(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: file("/certs/chain.pem"),
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString("KEY".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            alpn_protocols: vec!["http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    }));

    type Check = fn(&crate::xds::XdsListener);
    let cases: Vec<(&str, Listener, Check)> = vec![
        ("rds", listener("l1", 10000, "r1"), |t| {
            assert_eq!(t.listener.address, "127.0.0.1:10000");
            assert_eq!(t.listener.protocol, ListenerProtocol::Http);
            assert_eq!(t.listener.route_config.as_deref(), Some("r1"));
            assert_eq!(t.rds.as_deref(), Some("r1"));
            assert!(t.inline_route.is_none());
        }),
        ("hcm fields", listener_with("l2", 10001, &hcm_fields), |t| {
            let l = &t.listener;
            assert_eq!(
                l.idle_timeout,
                Some(Dur(std::time::Duration::from_secs(30)))
            );
            assert_eq!(
                l.request_headers_timeout,
                Some(Dur(std::time::Duration::from_millis(500)))
            );
            assert_eq!(l.max_request_headers_kb, Some(16));
            assert_eq!(l.max_request_headers_count, Some(50));
        }),
        (
            "inline route config",
            listener_with("l3", 10002, &inline),
            |t| {
                assert_eq!(t.listener.route_config.as_deref(), Some("inline:l3"));
                assert!(t.rds.is_none());
                let rc = t.inline_route.as_ref().expect("inline");
                assert_eq!(rc.name, "inline:l3");
                // `prefix: ""` survives.
                let m = &rc.virtual_hosts[0].routes[0].matcher;
                assert_eq!(m.prefix.as_deref(), Some(""));
            },
        ),
        ("tcp proxy", tcp_listener, |t| {
            assert_eq!(t.listener.protocol, ListenerProtocol::Tcp);
            assert_eq!(t.listener.cluster.as_deref(), Some("db"));
            assert!(t.listener.route_config.is_none());
        }),
        ("tls", tls, |t| {
            let tls = t.listener.tls.as_ref().expect("tls");
            assert_eq!(tls.cert_chain, "/certs/chain.pem");
            // Inline material is written to a content-addressed file.
            let key = Path::new(&tls.private_key);
            assert_eq!(std::fs::read_to_string(key).ok().as_deref(), Some("KEY"));
            assert_eq!(tls.alpn, ["http/1.1"]);
        }),
    ];
    for (name, l, check) in cases {
        match translate(&l) {
            Ok(t) => check(&t),
            Err(e) => panic!("{name}: rejected: {e}"),
        }
    }
}

#[test]
fn rejected_listeners() {
    let mut lua = hcm_rds("r1");
    lua.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.lua".into(),
            ..Default::default()
        },
    );
    // An optional filter first, so the path names index 1.
    let mut lua_after = hcm_rds("r1");
    lua_after.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.lua".into(),
            ..Default::default()
        },
    );
    lua_after.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.optional_thing".into(),
            is_optional: true,
            ..Default::default()
        },
    );
    let mut optional = hcm_rds("r1");
    optional.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.lua".into(),
            is_optional: true,
            ..Default::default()
        },
    );
    let mut no_router = hcm_rds("r1");
    no_router.http_filters.clear();

    let mut chain_match = listener("m", 1, "r1");
    chain_match.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
        server_names: vec!["example.com".into()],
        ..Default::default()
    });
    let mut two_chains = listener("two", 1, "r1");
    two_chains
        .filter_chains
        .push(two_chains.filter_chains[0].clone());
    let mut no_addr = listener("na", 1, "r1");
    no_addr.address = None;

    let cases: Vec<(&str, Listener, &str)> = vec![
        (
            "unknown required http filter",
            listener_with("l1", 1, &lua_after),
            "listener \"l1\": filter_chains[0].filters[0].typed_config.http_filters[1]: unsupported HTTP filter \"envoy.filters.http.lua\"",
        ),
        (
            "router not last",
            listener_with("l1", 1, &lua),
            "http_filters[0]: unsupported HTTP filter \"envoy.filters.http.lua\"",
        ),
        ("no router", listener_with("l1", 1, &no_router), "the last HTTP filter must be envoy.filters.http.router"),
        ("filter chain match", chain_match, "filter_chains[0].filter_chain_match: a filter chain match is not supported"),
        ("two chains", two_chains, "filter_chains: more than one filter chain"),
        ("no address", no_addr, "address: an address is required"),
        (
            "unknown network filter",
            with_filter(
                listener("nf", 1, "r1"),
                Filter {
                    name: "envoy.filters.network.redis_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
                        type_url: "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy".into(),
                        value: vec![],
                    })),
                },
            ),
            "unsupported network filter \"envoy.filters.network.redis_proxy\"",
        ),
    ];
    for (name, l, want) in cases {
        match translate(&l) {
            Ok(t) => panic!("{name}: accepted: {t:?}"),
            Err(e) => assert!(e.contains(want), "{name}: {e:?} does not contain {want:?}"),
        }
    }
    // An optional unknown filter is skipped, as Envoy does.
    assert!(translate(&listener_with("ok", 1, &optional)).is_ok());
}

#[test]
fn hcm_maps_to_a_valid_model_listener() {
    let t = translate(&listener("l", 10000, "r")).expect("ok");
    let boot = config::Bootstrap {
        listeners: vec![t.listener],
        routes: vec![std::sync::Arc::new(config::RouteConfig {
            name: "r".into(),
            virtual_hosts: vec![],
        })],
        ..Default::default()
    };
    assert_eq!(config::validate(&boot), Ok(()));
}
