use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::{thresholds::RetryBudget, Thresholds},
    cluster, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, health_check, transport_socket, DataSource, HealthCheck, HealthStatus,
    Http2ProtocolOptions, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::{Int64Range, Percent};

use super::fixtures::*;
use crate::config::{self, ClusterKind, Dur, LbPolicy, UpstreamProtocol};
use crate::xds::{translate_cla, translate_cluster};

fn translate(c: &Cluster) -> Result<crate::xds::XdsCluster, String> {
    translate_cluster(c, &std::env::temp_dir())
}

#[test]
fn accepted_clusters() {
    let mut full = static_cluster("full", 8080);
    full.lb_policy = cluster::LbPolicy::RingHash as i32;
    full.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
        cluster::RingHashLbConfig {
            minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 2048 }),
            ..Default::default()
        },
    ));
    full.connect_timeout = dur(2, 0);
    full.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![
            Thresholds {
                priority: 1,
                max_connections: u32v(1),
                ..Default::default()
            },
            Thresholds {
                max_connections: u32v(10),
                max_requests: u32v(20),
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(Percent { value: 25.0 }),
                    min_retry_concurrency: u32v(5),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    full.health_checks = vec![HealthCheck {
        timeout: dur(1, 0),
        interval: dur(5, 0),
        unhealthy_threshold: u32v(3),
        healthy_threshold: u32v(2),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                path: "/healthz".into(),
                expected_statuses: vec![Int64Range {
                    start: 200,
                    end: 300,
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    full.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: u32v(7),
        base_ejection_time: dur(10, 0),
        ..Default::default()
    });
    full.common_lb_config = Some(cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..Default::default()
    });
    full.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        }),
    );
    full.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &UpstreamTlsContext {
                sni: "up.example".into(),
                common_tls_context: Some(CommonTlsContext {
                    validation_context_type: Some(ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: Some(DataSource {
                                specifier: Some(data_source::Specifier::Filename("/ca.pem".into())),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))),
    });
    let mut h2_deprecated = static_cluster("h2", 1);
    #[allow(deprecated)]
    {
        h2_deprecated.http2_protocol_options = Some(Default::default());
    }
    let mut dns = static_cluster("dns", 80);
    dns.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::StrictDns as i32,
    ));
    let mut svc = eds_cluster("svc");
    svc.eds_cluster_config = Some(cluster::EdsClusterConfig {
        service_name: "svc-endpoints".into(),
        eds_config: None,
    });

    type Check = fn(&crate::xds::XdsCluster);
    let cases: Vec<(&str, Cluster, Check)> = vec![
        ("static", static_cluster("s", 8080), |t| {
            assert_eq!(t.cluster.kind, ClusterKind::Static);
            assert_eq!(t.eds, None);
            assert_eq!(
                t.cluster.endpoints,
                [config::Endpoint {
                    address: "127.0.0.1:8080".into(),
                    weight: 1
                }]
            );
        }),
        ("eds", eds_cluster("e"), |t| {
            assert_eq!(t.cluster.kind, ClusterKind::Static);
            assert_eq!(t.eds.as_deref(), Some("e"));
            assert!(t.cluster.endpoints.is_empty());
        }),
        ("eds service name", svc, |t| {
            assert_eq!(t.eds.as_deref(), Some("svc-endpoints"))
        }),
        ("strict dns", dns, |t| {
            assert_eq!(t.cluster.kind, ClusterKind::StrictDns)
        }),
        ("deprecated http2 options", h2_deprecated, |t| {
            assert_eq!(t.cluster.protocol, UpstreamProtocol::Http2)
        }),
        ("everything", full, |t| {
            let c = &t.cluster;
            assert_eq!(c.lb_policy, LbPolicy::RingHash);
            assert_eq!(
                c.ring_hash.as_ref().map(|r| r.minimum_ring_size),
                Some(2048)
            );
            assert_eq!(
                c.connect_timeout,
                Some(Dur(std::time::Duration::from_secs(2)))
            );
            let cb = c.circuit_breakers.as_ref().expect("breakers");
            assert_eq!(
                (cb.max_connections, cb.max_requests, cb.max_pending_requests),
                (10, 20, 1024)
            );
            let rb = cb.retry_budget.as_ref().expect("budget");
            assert_eq!((rb.budget_percent, rb.min_retry_concurrency), (25.0, 5));
            let hc = &c.health_checks[0];
            assert_eq!(
                hc.http_health_check.as_ref().map(|h| h.path.as_str()),
                Some("/healthz")
            );
            assert_eq!(hc.unhealthy_threshold, Some(3));
            let od = c.outlier_detection.as_ref().expect("outlier");
            assert_eq!((od.consecutive_5xx, od.consecutive_gateway_failure), (7, 5));
            assert_eq!(c.healthy_panic_threshold, Some(0.0));
            assert_eq!(c.protocol, UpstreamProtocol::Http2);
            let tls = c.tls.as_ref().expect("tls");
            assert_eq!(
                (tls.sni.as_deref(), tls.ca_file.as_deref()),
                (Some("up.example"), Some("/ca.pem"))
            );
        }),
    ];
    for (name, c, check) in cases {
        match translate(&c) {
            Ok(t) => check(&t),
            Err(e) => panic!("{name}: rejected: {e}"),
        }
    }
}

#[test]
fn rejected_clusters() {
    let mut orig = eds_cluster("o");
    orig.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::OriginalDst as i32,
    ));
    let mut logical = eds_cluster("l");
    logical.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::LogicalDns as i32,
    ));
    let mut provided = eds_cluster("p");
    provided.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
    let mut grpc_hc = eds_cluster("g");
    grpc_hc.health_checks = vec![HealthCheck {
        health_checker: Some(health_check::HealthChecker::GrpcHealthCheck(
            Default::default(),
        )),
        ..Default::default()
    }];
    let mut subset = eds_cluster("sub");
    subset.lb_subset_config = Some(Default::default());
    let mut mtls = eds_cluster("m");
    mtls.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificates: vec![Default::default()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))),
    });

    let cases: Vec<(&str, Cluster, &str)> = vec![
        (
            "original dst",
            orig,
            "cluster \"o\": type: cluster type ORIGINAL_DST is not supported",
        ),
        ("logical dns", logical, "cluster type LOGICAL_DNS"),
        (
            "lb policy",
            provided,
            "lb_policy: lb_policy CLUSTER_PROVIDED is not supported",
        ),
        (
            "grpc health check",
            grpc_hc,
            "health_checks[0].grpc_health_check",
        ),
        ("subset", subset, "lb_subset_config"),
        ("mtls", mtls, "tls_certificates: client certificates (mTLS)"),
    ];
    for (name, c, want) in cases {
        match translate(&c) {
            Ok(t) => panic!("{name}: accepted: {t:?}"),
            Err(e) => assert!(e.contains(want), "{name}: {e:?} does not contain {want:?}"),
        }
    }
}

#[test]
fn cla_weights_and_health() {
    let unhealthy = HealthStatus::Unhealthy as i32;
    let draining = HealthStatus::Draining as i32;
    let timeout = HealthStatus::Timeout as i32;
    let healthy = HealthStatus::Healthy as i32;
    let degraded = HealthStatus::Degraded as i32;
    let cla = cla(
        "c",
        &[
            ("10.0.0.1", 80, 5, 0),
            ("10.0.0.2", 80, 1, unhealthy),
            ("10.0.0.3", 80, 1, draining),
            ("10.0.0.4", 80, 1, timeout),
            ("10.0.0.5", 80, 2, healthy),
            ("10.0.0.6", 80, 1, degraded),
            ("::1", 81, 1, 0),
        ],
    );
    let eps = translate_cla(&cla).expect("ok");
    let got: Vec<_> = eps.iter().map(|e| (e.address.as_str(), e.weight)).collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1:80", 5),
            ("10.0.0.5:80", 2),
            ("10.0.0.6:80", 1),
            ("[::1]:81", 1)
        ]
    );

    let mut prio = super::fixtures::cla("p", &[("10.0.0.1", 80, 1, 0)]);
    prio.endpoints[0].priority = 1;
    let err = translate_cla(&prio).expect_err("priority");
    assert!(
        err.contains("cluster_load_assignment \"p\": endpoints[0].priority"),
        "{err}"
    );
}
