//! Envoy `Cluster` → [`config::Cluster`], and `ClusterLoadAssignment` →
//! its endpoints.
//!
//! An EDS cluster becomes a `static` cluster of the model whose endpoints
//! come from its ClusterLoadAssignment (joined in `state`), so the rest of
//! the proxy has one kind of static cluster whatever the source.

// Envoy deprecates fields that control planes still send (header `append`,
// `exact_match`, `http2_protocol_options`); reading them is the point.
#![allow(deprecated)]

use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check::HealthChecker, transport_socket, HealthCheck, HealthStatus,
};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use prost::Name;

use super::convert::{
    data_source_file, decode_any, ignored, opt_duration, socket_address, Problems,
};
use super::listener::{ads_only, TLS_SOCKET};
use crate::config::{self, ClusterKind, LbPolicy, UpstreamProtocol};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A translated cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsCluster {
    /// Shared with the assembled config when it is not an EDS cluster.
    pub cluster: std::sync::Arc<config::Cluster>,
    /// For an EDS cluster, the ClusterLoadAssignment name it waits for
    /// (`eds_cluster_config.service_name`, else the cluster's name).
    pub eds: Option<String>,
}

/// Translates one cluster; `Err` is the NACK sentence.
pub fn translate_cluster(c: &Cluster, runtime_dir: &Path) -> Result<XdsCluster, String> {
    let mut p = Problems::default();
    let out = cluster(&mut p, c, runtime_dir);
    if p.is_empty() {
        Ok(out)
    } else {
        Err(p.sentence("cluster", &c.name))
    }
}

/// Translates a ClusterLoadAssignment into endpoints (`ip:port`, weight);
/// unhealthy, draining and timed-out endpoints are left out.
pub fn translate_cla(cla: &ClusterLoadAssignment) -> Result<Vec<config::Endpoint>, String> {
    let mut p = Problems::default();
    let out = endpoints(&mut p, "", cla);
    if p.is_empty() {
        Ok(out)
    } else {
        Err(p.sentence("cluster_load_assignment", &cla.cluster_name))
    }
}

fn cluster(p: &mut Problems, c: &Cluster, runtime_dir: &Path) -> XdsCluster {
    if c.name.is_empty() {
        p.add("name", "must not be empty");
    }
    let mut out = config::Cluster {
        name: c.name.clone(),
        ..Default::default()
    };
    let mut eds = None;
    use cluster::{ClusterDiscoveryType, DiscoveryType};
    let kind = match &c.cluster_discovery_type {
        None => Ok(DiscoveryType::Static),
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).map_err(|_| *t),
        Some(ClusterDiscoveryType::ClusterType(ct)) => {
            p.unsupported(
                "cluster_type",
                &format!("custom cluster type {:?}", ct.name),
            );
            Ok(DiscoveryType::Static)
        }
    };
    match kind {
        Ok(DiscoveryType::Static) => out.kind = ClusterKind::Static,
        Ok(DiscoveryType::StrictDns) => out.kind = ClusterKind::StrictDns,
        Ok(DiscoveryType::Eds) => {
            out.kind = ClusterKind::Static;
            let cfg = c.eds_cluster_config.as_ref();
            if let Some(cfg) = cfg {
                ads_only(p, "eds_cluster_config.eds_config", &cfg.eds_config);
            }
            let service = cfg.map(|c| c.service_name.as_str()).unwrap_or("");
            eds = Some(if service.is_empty() {
                c.name.clone()
            } else {
                service.to_string()
            });
        }
        Ok(DiscoveryType::LogicalDns) => p.unsupported("type", "cluster type LOGICAL_DNS"),
        Ok(DiscoveryType::OriginalDst) => p.unsupported("type", "cluster type ORIGINAL_DST"),
        Err(t) => p.add("type", format!("unknown cluster type {t}")),
    }

    out.lb_policy = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(cluster::LbPolicy::RingHash) => LbPolicy::RingHash,
        Ok(cluster::LbPolicy::Maglev) => LbPolicy::Maglev,
        Ok(other) => {
            p.unsupported("lb_policy", &format!("lb_policy {}", other.as_str_name()));
            LbPolicy::RoundRobin
        }
        Err(_) => {
            p.add("lb_policy", format!("unknown lb_policy {}", c.lb_policy));
            LbPolicy::RoundRobin
        }
    };
    if c.load_balancing_policy.is_some() {
        p.unsupported("load_balancing_policy", "a typed load balancing policy");
    }
    match &c.lb_config {
        None => {}
        Some(cluster::LbConfig::RingHashLbConfig(r)) => {
            if r.hash_function != 0 {
                p.unsupported(
                    "ring_hash_lb_config.hash_function",
                    "a hash function other than XX_HASH",
                );
            }
            let d = config::RingHashConfig {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 * 1024 * 1024,
            };
            out.ring_hash = Some(config::RingHashConfig {
                minimum_ring_size: r
                    .minimum_ring_size
                    .as_ref()
                    .map_or(d.minimum_ring_size, |v| v.value),
                maximum_ring_size: r
                    .maximum_ring_size
                    .as_ref()
                    .map_or(d.maximum_ring_size, |v| v.value),
            });
        }
        Some(cluster::LbConfig::MaglevLbConfig(m)) => {
            out.maglev = Some(config::MaglevConfig {
                table_size: m.table_size.as_ref().map_or(65537, |v| v.value),
            });
        }
        Some(cluster::LbConfig::LeastRequestLbConfig(l)) => {
            if l.active_request_bias.is_some() {
                ignored("cluster", "least_request_lb_config.active_request_bias");
            }
            if l.slow_start_config.is_some() {
                p.unsupported("least_request_lb_config.slow_start_config", "slow start");
            }
            out.least_request = Some(config::LeastRequestConfig {
                choice_count: l.choice_count.as_ref().map_or(2, |v| v.value),
            });
        }
        Some(cluster::LbConfig::RoundRobinLbConfig(r)) if r.slow_start_config.is_some() => {
            p.unsupported("round_robin_lb_config.slow_start_config", "slow start");
        }
        Some(cluster::LbConfig::RoundRobinLbConfig(_)) => {}
        Some(cluster::LbConfig::OriginalDstLbConfig(_)) => p.unsupported(
            "original_dst_lb_config",
            "original destination load balancing",
        ),
    }

    out.connect_timeout = opt_duration(p, "connect_timeout", &c.connect_timeout);
    out.dns_refresh_rate = opt_duration(p, "dns_refresh_rate", &c.dns_refresh_rate);

    if let Some(cb) = &c.circuit_breakers {
        // Ferry has one priority: Envoy's DEFAULT thresholds apply; HIGH
        // ones are for traffic Ferry never marks as high priority.
        let default = cb
            .thresholds
            .iter()
            .enumerate()
            .find(|(_, t)| t.priority == 0);
        if cb.thresholds.iter().any(|t| t.priority != 0) {
            ignored("cluster", "circuit_breakers.thresholds (priority HIGH)");
        }
        if let Some((i, t)) = default {
            out.circuit_breakers = Some(thresholds(
                p,
                &format!("circuit_breakers.thresholds[{i}]"),
                t,
            ));
        }
    }
    out.health_checks = c
        .health_checks
        .iter()
        .enumerate()
        .filter_map(|(i, h)| health_check(p, &format!("health_checks[{i}]"), h))
        .collect();
    if let Some(od) = &c.outlier_detection {
        out.outlier_detection = Some(outlier(p, "outlier_detection", od));
    }
    if let Some(common) = &c.common_lb_config {
        out.healthy_panic_threshold = common.healthy_panic_threshold.as_ref().map(|v| v.value);
        if common.locality_config_specifier.is_some() {
            ignored("cluster", "common_lb_config.locality_config");
        }
    }

    // Upstream protocol: the typed extension options (current Envoy), or
    // the deprecated http2_protocol_options.
    if c.http2_protocol_options.is_some() {
        out.protocol = UpstreamProtocol::Http2;
    }
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS && any.type_url != HttpProtocolOptions::type_url() {
            ignored(
                "cluster",
                &format!("typed_extension_protocol_options[{key}]"),
            );
            continue;
        }
        let Some(opts) = decode_any::<HttpProtocolOptions>(p, &path, any) else {
            continue;
        };
        match &opts.upstream_protocol_options {
            None => {}
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => {
                    out.protocol = UpstreamProtocol::Http1
                }
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => {
                    out.protocol = UpstreamProtocol::Http2
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => p.unsupported(
                    format!("{path}.explicit_http_config.http3_protocol_options"),
                    "HTTP/3 upstreams",
                ),
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => p.unsupported(
                format!("{path}.use_downstream_protocol_config"),
                "using the downstream protocol upstream",
            ),
            Some(UpstreamProtocolOptions::AutoConfig(_)) => {
                p.unsupported(format!("{path}.auto_config"), "protocol selection by ALPN")
            }
        }
        if let Some(common) = &opts.common_http_protocol_options {
            out.idle_timeout = opt_duration(
                p,
                &format!("{path}.common_http_protocol_options.idle_timeout"),
                &common.idle_timeout,
            );
        }
        if !opts.http_filters.is_empty() {
            p.unsupported(format!("{path}.http_filters"), "upstream HTTP filters");
        }
    }

    if let Some(ts) = &c.transport_socket {
        out.tls = upstream_tls(p, "transport_socket", ts, runtime_dir);
    }
    if !c.transport_socket_matches.is_empty() || c.transport_socket_matcher.is_some() {
        p.unsupported("transport_socket_matches", "transport socket matching");
    }
    if c.lb_subset_config.is_some() {
        p.unsupported("lb_subset_config", "subset load balancing");
    }
    if !c.filters.is_empty() {
        p.unsupported("filters", "upstream network filters");
    }
    if c.upstream_bind_config.is_some() {
        p.unsupported("upstream_bind_config", "binding upstream connections");
    }
    if c.upstream_config.is_some() {
        p.unsupported("upstream_config", "a custom upstream");
    }
    if c.lrs_server.is_some() {
        ignored("cluster", "lrs_server");
    }

    // STATIC and STRICT_DNS carry their endpoints inline; EDS's come from
    // its ClusterLoadAssignment and an inline one is ignored, as in Envoy.
    if eds.is_none() {
        if let Some(cla) = &c.load_assignment {
            out.endpoints = endpoints(p, "load_assignment", cla);
        }
    }
    ferry_roles(p, c, &mut out);
    XdsCluster {
        cluster: std::sync::Arc::new(out),
        eds,
    }
}

/// Where Ferry's control plane puts the queue-proxy and activator roles.
const FERRY_METADATA: &str = "ferry";

/// `metadata.filter_metadata["ferry"]` → the cluster's `activation` or
/// `queue` block (docs/config.md: the same keys as the YAML blocks).
/// `activation: true` selects the activator role; otherwise any of the
/// queue keys (`container_concurrency`, `max_queue_depth`,
/// `queue_timeout`, `readiness_probe`) selects the queue role. Values of
/// the wrong type are NACKed with their path; unknown keys are left alone
/// (metadata is shared with other tools).
fn ferry_roles(p: &mut Problems, c: &Cluster, out: &mut config::Cluster) {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct};
    let Some(md) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(FERRY_METADATA))
    else {
        return;
    };
    let base = format!("metadata.filter_metadata.{FERRY_METADATA}");

    fn string(p: &mut Problems, path: &str, s: &Struct, key: &str) -> Option<String> {
        match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::NullValue(_)) => None,
            Some(Kind::StringValue(v)) => Some(v.clone()),
            Some(_) => {
                p.add(format!("{path}.{key}"), "must be a string");
                None
            }
        }
    }
    fn count(p: &mut Problems, path: &str, s: &Struct, key: &str) -> Option<u32> {
        match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::NullValue(_)) => None,
            Some(Kind::NumberValue(n))
                if n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX) =>
            {
                Some(*n as u32)
            }
            // Some control planes write numbers as strings.
            Some(Kind::StringValue(v)) if v.parse::<u32>().is_ok() => v.parse().ok(),
            Some(_) => {
                p.add(format!("{path}.{key}"), "must be a non-negative integer");
                None
            }
        }
    }
    fn duration(p: &mut Problems, path: &str, s: &Struct, key: &str) -> Option<config::Dur> {
        let text = string(p, path, s, key)?;
        match config::duration::parse_duration(&text) {
            Ok(d) => Some(config::Dur(d)),
            Err(e) => {
                p.add(format!("{path}.{key}"), e);
                None
            }
        }
    }

    let activation = match md.fields.get("activation").and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => false,
        Some(Kind::BoolValue(b)) => *b,
        Some(_) => {
            p.add(format!("{base}.activation"), "must be a boolean");
            false
        }
    };
    let revision = string(p, &base, md, "revision").unwrap_or_default();
    let namespace = string(p, &base, md, "namespace").unwrap_or_else(config::default_namespace);
    if activation {
        out.activation = Some(config::ActivationConfig {
            revision,
            namespace,
            hold_timeout: duration(p, &base, md, "hold_timeout"),
            max_held: count(p, &base, md, "max_held"),
        });
        return;
    }
    const QUEUE_KEYS: [&str; 4] = [
        "container_concurrency",
        "max_queue_depth",
        "queue_timeout",
        "readiness_probe",
    ];
    if !QUEUE_KEYS.iter().any(|k| md.fields.contains_key(*k)) {
        return;
    }
    let readiness_probe = match md
        .fields
        .get("readiness_probe")
        .and_then(|v| v.kind.as_ref())
    {
        None | Some(Kind::NullValue(_)) => None,
        Some(Kind::StructValue(rp)) => {
            let path = format!("{base}.readiness_probe");
            Some(config::ReadinessProbe {
                path: string(p, &path, rp, "path"),
                initial_interval: duration(p, &path, rp, "initial_interval"),
                period: duration(p, &path, rp, "period"),
                timeout: duration(p, &path, rp, "timeout"),
                failure_threshold: count(p, &path, rp, "failure_threshold"),
            })
        }
        Some(_) => {
            p.add(format!("{base}.readiness_probe"), "must be a struct");
            None
        }
    };
    out.queue = Some(config::QueueConfig {
        revision,
        namespace,
        container_concurrency: count(p, &base, md, "container_concurrency").unwrap_or(0),
        max_queue_depth: count(p, &base, md, "max_queue_depth"),
        queue_timeout: duration(p, &base, md, "queue_timeout"),
        readiness_probe,
    });
}

fn thresholds(p: &mut Problems, path: &str, t: &Thresholds) -> config::CircuitBreakers {
    let d = config::CircuitBreakers::default();
    if t.max_connection_pools.is_some() {
        p.unsupported(
            format!("{path}.max_connection_pools"),
            "max_connection_pools",
        );
    }
    config::CircuitBreakers {
        max_connections: t
            .max_connections
            .as_ref()
            .map_or(d.max_connections, |v| v.value),
        max_pending_requests: t
            .max_pending_requests
            .as_ref()
            .map_or(d.max_pending_requests, |v| v.value),
        max_requests: t.max_requests.as_ref().map_or(d.max_requests, |v| v.value),
        max_retries: t.max_retries.as_ref().map_or(d.max_retries, |v| v.value),
        retry_budget: t.retry_budget.as_ref().map(|b| config::RetryBudget {
            budget_percent: b.budget_percent.as_ref().map_or(20.0, |v| v.value),
            min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
        }),
    }
}

fn health_check(p: &mut Problems, path: &str, h: &HealthCheck) -> Option<config::HealthCheck> {
    let mut out = config::HealthCheck {
        timeout: opt_duration(p, &format!("{path}.timeout"), &h.timeout),
        interval: opt_duration(p, &format!("{path}.interval"), &h.interval),
        interval_jitter: opt_duration(p, &format!("{path}.interval_jitter"), &h.interval_jitter),
        unhealthy_threshold: h.unhealthy_threshold.as_ref().map(|v| v.value),
        healthy_threshold: h.healthy_threshold.as_ref().map(|v| v.value),
        ..Default::default()
    };
    if h.alt_port.is_some() {
        p.unsupported(format!("{path}.alt_port"), "health checking another port");
    }
    match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(hc)) => {
            let hpath = format!("{path}.http_health_check");
            if hc.send.is_some() || !hc.receive.is_empty() {
                p.unsupported(format!("{hpath}.send"), "payload checks");
            }
            if !hc.request_headers_to_add.is_empty() || !hc.request_headers_to_remove.is_empty() {
                p.unsupported(
                    format!("{hpath}.request_headers_to_add"),
                    "health check headers",
                );
            }
            if hc.method != 0 {
                p.unsupported(format!("{hpath}.method"), "a method other than GET");
            }
            let mut statuses = Vec::new();
            for (i, r) in hc.expected_statuses.iter().enumerate() {
                match (u16::try_from(r.start), u16::try_from(r.end)) {
                    (Ok(start), Ok(end)) => statuses.push(config::StatusRange { start, end }),
                    _ => p.add(
                        format!("{hpath}.expected_statuses[{i}]"),
                        "not an HTTP status range",
                    ),
                }
            }
            out.http_health_check = Some(config::HttpHealthCheck {
                path: hc.path.clone(),
                host: (!hc.host.is_empty()).then(|| hc.host.clone()),
                expected_statuses: statuses,
            });
        }
        Some(HealthChecker::TcpHealthCheck(tc)) => {
            if tc.send.is_some() || !tc.receive.is_empty() {
                p.unsupported(format!("{path}.tcp_health_check.send"), "payload checks");
            }
            out.tcp_health_check = Some(config::TcpHealthCheck {});
        }
        Some(HealthChecker::GrpcHealthCheck(_)) => {
            p.unsupported(format!("{path}.grpc_health_check"), "gRPC health checks");
            return None;
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            p.unsupported(
                format!("{path}.custom_health_check"),
                "custom health checks",
            );
            return None;
        }
        None => {
            p.add(path, "needs http_health_check or tcp_health_check");
            return None;
        }
    }
    Some(out)
}

fn outlier(p: &mut Problems, path: &str, o: &OutlierDetection) -> config::OutlierDetection {
    let d = config::OutlierDetection::default();
    let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, def: u32| {
        v.as_ref().map_or(def, |v| v.value)
    };
    // Success-rate and failure-percentage ejection are Envoy defaults that
    // need request volumes most Ferry clusters never reach; noted, not
    // enforced.
    if o.enforcing_success_rate.is_some() || o.failure_percentage_threshold.is_some() {
        ignored(
            "cluster",
            "outlier_detection (success rate / failure percentage)",
        );
    }
    if o.split_external_local_origin_errors {
        p.unsupported(
            format!("{path}.split_external_local_origin_errors"),
            "splitting local-origin errors",
        );
    }
    config::OutlierDetection {
        consecutive_5xx: u(&o.consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: u(
            &o.consecutive_gateway_failure,
            d.consecutive_gateway_failure,
        ),
        enforcing_consecutive_5xx: u(&o.enforcing_consecutive_5xx, d.enforcing_consecutive_5xx),
        enforcing_consecutive_gateway_failure: u(
            &o.enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
        ),
        interval: opt_duration(p, &format!("{path}.interval"), &o.interval),
        base_ejection_time: opt_duration(
            p,
            &format!("{path}.base_ejection_time"),
            &o.base_ejection_time,
        ),
        max_ejection_time: opt_duration(
            p,
            &format!("{path}.max_ejection_time"),
            &o.max_ejection_time,
        ),
        max_ejection_percent: u(&o.max_ejection_percent, d.max_ejection_percent),
    }
}

fn upstream_tls(
    p: &mut Problems,
    path: &str,
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    runtime_dir: &Path,
) -> Option<config::UpstreamTls> {
    let typed = ts
        .config_type
        .as_ref()
        .map(|transport_socket::ConfigType::TypedConfig(a)| a);
    let is_tls = ts.name == TLS_SOCKET
        || typed.is_some_and(|a| a.type_url == UpstreamTlsContext::type_url());
    if !is_tls {
        if ts.name != "envoy.transport_sockets.raw_buffer" {
            p.add(path, format!("unsupported transport socket {:?}", ts.name));
        }
        return None;
    }
    let Some(any) = typed else {
        p.add(
            format!("{path}.typed_config"),
            "an UpstreamTlsContext is required",
        );
        return None;
    };
    let tpath = format!("{path}.typed_config");
    let ctx: UpstreamTlsContext = decode_any(p, &tpath, any)?;
    let mut out = config::UpstreamTls {
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        ca_file: None,
    };
    if ctx.auto_host_sni {
        ignored(
            "cluster",
            "auto_host_sni (the endpoint's host is the default SNI)",
        );
    }
    if let Some(common) = &ctx.common_tls_context {
        let cpath = format!("{tpath}.common_tls_context");
        if !common.tls_certificates.is_empty()
            || !common.tls_certificate_sds_secret_configs.is_empty()
        {
            p.unsupported(
                format!("{cpath}.tls_certificates"),
                "client certificates (mTLS)",
            );
        }
        match &common.validation_context_type {
            None => {}
            Some(ValidationContextType::ValidationContext(v)) => {
                let vpath = format!("{cpath}.validation_context");
                if v.trusted_ca.is_some() {
                    out.ca_file = data_source_file(
                        p,
                        &format!("{vpath}.trusted_ca"),
                        &v.trusted_ca,
                        runtime_dir,
                    );
                }
                if !v.match_subject_alt_names.is_empty()
                    || !v.match_typed_subject_alt_names.is_empty()
                {
                    p.unsupported(
                        format!("{vpath}.match_subject_alt_names"),
                        "subject alt name matching",
                    );
                }
                if !v.verify_certificate_spki.is_empty() || !v.verify_certificate_hash.is_empty() {
                    p.unsupported(
                        format!("{vpath}.verify_certificate_hash"),
                        "certificate pinning",
                    );
                }
                if v.trust_chain_verification != 0 {
                    p.unsupported(
                        format!("{vpath}.trust_chain_verification"),
                        "ACCEPT_UNTRUSTED",
                    );
                }
            }
            Some(_) => p.unsupported(
                format!("{cpath}.validation_context"),
                "a validation context other than an inline one",
            ),
        }
        if !common.alpn_protocols.is_empty() {
            ignored(
                "cluster",
                "upstream alpn_protocols (the cluster's protocol decides)",
            );
        }
    }
    Some(out)
}

fn endpoints(p: &mut Problems, base: &str, cla: &ClusterLoadAssignment) -> Vec<config::Endpoint> {
    let prefix = |s: String| {
        if base.is_empty() {
            s
        } else {
            format!("{base}.{s}")
        }
    };
    if cla
        .policy
        .as_ref()
        .is_some_and(|pol| !pol.drop_overloads.is_empty())
    {
        p.unsupported(prefix("policy.drop_overloads".into()), "drop overloads");
    }
    if !cla.named_endpoints.is_empty() {
        p.unsupported(prefix("named_endpoints".into()), "named endpoints");
    }
    let mut out = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        let lpath = prefix(format!("endpoints[{i}]"));
        if locality.priority != 0 {
            // Priorities are failover tiers; flattening them would send
            // traffic to the backup tier all the time.
            p.unsupported(format!("{lpath}.priority"), "endpoint priorities");
        }
        if locality.load_balancing_weight.is_some() {
            ignored("cluster_load_assignment", "locality load_balancing_weight");
        }
        for (j, e) in locality.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{j}]");
            // Envoy routes to UNKNOWN, HEALTHY and DEGRADED endpoints only.
            if let Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout) =
                HealthStatus::try_from(e.health_status)
            {
                continue;
            }
            let endpoint = match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    p.unsupported(format!("{epath}.endpoint_name"), "named endpoints");
                    continue;
                }
                None => {
                    p.add(format!("{epath}.endpoint"), "is required");
                    continue;
                }
            };
            let Some(address) =
                socket_address(p, &format!("{epath}.endpoint.address"), &endpoint.address)
            else {
                continue;
            };
            out.push(config::Endpoint {
                address,
                weight: e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
            });
        }
    }
    out
}

#[cfg(test)]
mod ferry_metadata_tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    use super::*;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn s(text: &str) -> Value {
        v(Kind::StringValue(text.to_string()))
    }

    fn with_metadata(fields: Vec<(&str, Value)>) -> Cluster {
        let fields: HashMap<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut filter_metadata = HashMap::new();
        filter_metadata.insert(FERRY_METADATA.to_string(), Struct { fields });
        Cluster {
            name: "default/hello-00002".to_string(),
            metadata: Some(Metadata {
                filter_metadata,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn translate(c: &Cluster) -> Result<config::Cluster, String> {
        translate_cluster(c, &std::env::temp_dir()).map(|x| (*x.cluster).clone())
    }

    /// What the control plane puts on a revision cluster for the gateway.
    #[test]
    fn activation_metadata_becomes_the_activation_block() {
        let c = with_metadata(vec![
            ("activation", v(Kind::BoolValue(true))),
            ("revision", s("hello-00002")),
            ("namespace", s("prod")),
            ("hold_timeout", s("30s")),
            ("max_held", v(Kind::NumberValue(50.0))),
        ]);
        let out = translate(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.activation,
            Some(config::ActivationConfig {
                revision: "hello-00002".to_string(),
                namespace: "prod".to_string(),
                hold_timeout: Some(config::Dur(Duration::from_secs(30))),
                max_held: Some(50),
            })
        );
        assert_eq!(out.queue, None);
    }

    #[test]
    fn queue_metadata_becomes_the_queue_block() {
        let probe = Struct {
            fields: [("path".to_string(), s("/healthz"))].into_iter().collect(),
        };
        let c = with_metadata(vec![
            ("revision", s("hello-00001")),
            ("container_concurrency", v(Kind::NumberValue(1.0))),
            ("queue_timeout", s("300s")),
            ("readiness_probe", v(Kind::StructValue(probe))),
        ]);
        let out = translate(&c).unwrap_or_else(|e| panic!("{e}"));
        let q = out.queue.unwrap_or_else(|| panic!("no queue block"));
        assert_eq!(q.revision, "hello-00001");
        assert_eq!(q.namespace, "default");
        assert_eq!(q.container_concurrency, 1);
        assert_eq!(q.queue_timeout, Some(config::Dur(Duration::from_secs(300))));
        assert_eq!(
            q.readiness_probe.and_then(|r| r.path).as_deref(),
            Some("/healthz")
        );
        assert_eq!(out.activation, None);
    }

    #[test]
    fn other_metadata_is_left_alone_and_bad_values_are_nacked() {
        let plain = with_metadata(vec![("owner", s("team-a"))]);
        let out = translate(&plain).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((out.queue, out.activation), (None, None));

        let bad = with_metadata(vec![
            ("activation", v(Kind::BoolValue(true))),
            ("hold_timeout", s("soon")),
            ("max_held", v(Kind::NumberValue(-1.0))),
        ]);
        let err = translate(&bad).err().unwrap_or_default();
        assert!(err.contains("hold_timeout"), "{err}");
        assert!(err.contains("max_held"), "{err}");
    }
}
