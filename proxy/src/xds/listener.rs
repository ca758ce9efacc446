//! Envoy `Listener` → [`config::Listener`] (plus the inline route config of
//! an HTTP connection manager, or the RDS name it waits for).
//!
//! Ferry listeners have one filter chain with one terminal network filter:
//! `envoy.filters.network.http_connection_manager` (its only HTTP filter the
//! router) or `envoy.filters.network.tcp_proxy`. Anything that would pick a
//! chain or add behaviour in front of the terminal filter is rejected.

// Envoy deprecates fields that control planes still send (header `append`,
// `exact_match`, `http2_protocol_options`); reading them is the point.
#![allow(deprecated)]

use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::{config_source, transport_socket, ConfigSource};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::Name;

use super::convert::{
    data_source_file, decode_any, ignored, opt_duration, socket_address, Problems,
};
use super::route::translate_route_config;
use crate::config::{self, ListenerProtocol, ListenerTls};

pub(crate) const HCM: &str = "envoy.filters.network.http_connection_manager";
pub(crate) const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const ROUTER: &str = "envoy.filters.http.router";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub(crate) const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
/// Listener filters that only inspect (and whose absence changes nothing
/// for a listener with a single filter chain).
const HARMLESS_LISTENER_FILTERS: &[&str] = &[
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
];

/// A translated listener.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsListener {
    pub listener: config::Listener,
    /// The HCM's inline `route_config`, named [`inline_route_name`]
    /// (shared with the assembled config).
    pub inline_route: Option<std::sync::Arc<config::RouteConfig>>,
    /// The RDS route configuration it waits for.
    pub rds: Option<String>,
}

/// Inline route configs are named after their listener, so two listeners'
/// inline configs never collide with each other or with an RDS name (RDS
/// names cannot start with `inline:` in practice; if one does, validation
/// reports the duplicate).
pub fn inline_route_name(listener: &str) -> String {
    format!("inline:{listener}")
}

/// Translates one listener; `Err` is the NACK sentence.
pub fn translate_listener(l: &Listener, runtime_dir: &Path) -> Result<XdsListener, String> {
    let mut p = Problems::default();
    let out = listener(&mut p, l, runtime_dir);
    match out {
        Some(out) if p.is_empty() => Ok(out),
        _ => Err(p.sentence("listener", &l.name)),
    }
}

fn listener(p: &mut Problems, l: &Listener, runtime_dir: &Path) -> Option<XdsListener> {
    if l.name.is_empty() {
        p.add("name", "must not be empty");
    }
    let address = socket_address(p, "address", &l.address);
    if !l.additional_addresses.is_empty() {
        p.unsupported("additional_addresses", "more than one address per listener");
    }
    if l.use_original_dst.as_ref().is_some_and(|b| b.value) {
        p.unsupported("use_original_dst", "original destination recovery");
    }
    if l.filter_chain_matcher.is_some() {
        p.unsupported("filter_chain_matcher", "a filter chain matcher");
    }
    if l.api_listener.is_some() {
        p.unsupported("api_listener", "an API listener");
    }
    if l.udp_listener_config.is_some() {
        p.unsupported("udp_listener_config", "a UDP listener");
    }
    for (i, lf) in l.listener_filters.iter().enumerate() {
        if !HARMLESS_LISTENER_FILTERS.contains(&lf.name.as_str()) {
            p.add(
                format!("listener_filters[{i}]"),
                format!("unsupported listener filter {:?}", lf.name),
            );
        }
    }
    if !l.access_log.is_empty() {
        ignored("listener", "access_log");
    }
    if !l.socket_options.is_empty() {
        ignored("listener", "socket_options");
    }

    // One chain: `filter_chains[0]` or the default chain when there is none.
    let (chain_path, chain) = match (l.filter_chains.as_slice(), &l.default_filter_chain) {
        ([only], None) => ("filter_chains[0]".to_string(), only),
        ([], Some(default)) => ("default_filter_chain".to_string(), default),
        ([], None) => {
            p.add("filter_chains", "a listener needs one filter chain");
            return None;
        }
        _ => {
            p.unsupported(
                "filter_chains",
                "more than one filter chain (filter chain matching)",
            );
            return None;
        }
    };
    let mut out = XdsListener {
        listener: config::Listener {
            name: l.name.clone(),
            address: address.unwrap_or_default(),
            protocol: ListenerProtocol::Http,
            route_config: None,
            cluster: None,
            tls: None,
            max_connections: 0,
            idle_timeout: None,
            request_headers_timeout: None,
            max_request_headers_kb: None,
            max_request_headers_count: None,
            // Envoy HTTP filters other than the router are rejected until
            // their typed configs are translated (see the HCM below).
            http_filters: Vec::new(),
        },
        inline_route: None,
        rds: None,
    };
    filter_chain(p, &chain_path, chain, runtime_dir, &mut out);
    Some(out)
}

fn filter_chain(
    p: &mut Problems,
    path: &str,
    chain: &FilterChain,
    runtime_dir: &Path,
    out: &mut XdsListener,
) {
    if let Some(m) = &chain.filter_chain_match {
        if *m != Default::default() {
            p.unsupported(format!("{path}.filter_chain_match"), "a filter chain match");
        }
    }
    if chain.use_proxy_proto.as_ref().is_some_and(|b| b.value) {
        p.unsupported(format!("{path}.use_proxy_proto"), "the PROXY protocol");
    }
    if let Some(ts) = &chain.transport_socket {
        let tpath = format!("{path}.transport_socket");
        if ts.name == TLS_SOCKET || is_typed(&ts.config_type, DownstreamTlsContext::type_url()) {
            out.listener.tls = downstream_tls(p, &tpath, &ts.config_type, runtime_dir);
        } else if ts.name != RAW_BUFFER {
            p.add(tpath, format!("unsupported transport socket {:?}", ts.name));
        }
    }
    let [filter] = chain.filters.as_slice() else {
        p.add(
            format!("{path}.filters"),
            format!(
                "exactly one network filter ({HCM} or {TCP_PROXY}) is supported, found {}",
                chain.filters.len()
            ),
        );
        return;
    };
    let fpath = format!("{path}.filters[0]");
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        p.add(
            format!("{fpath}.typed_config"),
            format!("filter {:?} needs a typed_config", filter.name),
        );
        return;
    };
    let tpath = format!("{fpath}.typed_config");
    if any.type_url == HttpConnectionManager::type_url() {
        if let Some(hcm) = decode_any::<HttpConnectionManager>(p, &tpath, any) {
            http_connection_manager(p, &tpath, &hcm, out);
        }
    } else if any.type_url == TcpProxy::type_url() {
        if let Some(tcp) = decode_any::<TcpProxy>(p, &tpath, any) {
            tcp_proxy(p, &tpath, &tcp, out);
        }
    } else {
        p.add(
            fpath,
            format!(
                "unsupported network filter {:?} ({})",
                filter.name, any.type_url
            ),
        );
    }
}

fn is_typed(ct: &Option<transport_socket::ConfigType>, type_url: String) -> bool {
    matches!(ct, Some(transport_socket::ConfigType::TypedConfig(a)) if a.type_url == type_url)
}

fn http_connection_manager(
    p: &mut Problems,
    path: &str,
    hcm: &HttpConnectionManager,
    out: &mut XdsListener,
) {
    out.listener.protocol = ListenerProtocol::Http;
    let name = out.listener.name.clone();
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            ads_only(p, &format!("{path}.rds.config_source"), &rds.config_source);
            if rds.route_config_name.is_empty() {
                p.add(format!("{path}.rds.route_config_name"), "must not be empty");
            }
            out.listener.route_config = Some(rds.route_config_name.clone());
            out.rds = Some(rds.route_config_name.clone());
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            let inline = inline_route_name(&name);
            match translate_route_config(rc) {
                Ok(mut translated) => {
                    translated.name = inline.clone();
                    out.inline_route = Some(std::sync::Arc::new(translated));
                }
                // The route translator already names its own paths; nest
                // them under this field.
                Err(e) => p.add(format!("{path}.route_config"), e),
            }
            out.listener.route_config = Some(inline);
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            p.unsupported(format!("{path}.scoped_routes"), "scoped routes")
        }
        None => p.add(path, "needs rds or route_config"),
    }

    let mut saw_router = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let typed_router = matches!(&f.config_type,
            Some(http_filter::ConfigType::TypedConfig(a)) if a.type_url == ROUTER_TYPE);
        if f.name == ROUTER || typed_router {
            if i + 1 != hcm.http_filters.len() {
                p.add(fpath, format!("{ROUTER} must be the last HTTP filter"));
            }
            saw_router = true;
        } else if f.disabled || f.is_optional {
            // Envoy itself skips a disabled or optional filter it does not
            // know; so do we.
            ignored(
                "http_connection_manager",
                &format!("http_filters({})", f.name),
            );
        } else {
            p.add(fpath, format!("unsupported HTTP filter {:?}", f.name));
        }
    }
    if !saw_router {
        p.add(
            format!("{path}.http_filters"),
            format!("the last HTTP filter must be {ROUTER}"),
        );
    }

    if let Some(common) = &hcm.common_http_protocol_options {
        let cpath = format!("{path}.common_http_protocol_options");
        out.listener.idle_timeout =
            opt_duration(p, &format!("{cpath}.idle_timeout"), &common.idle_timeout);
        out.listener.max_request_headers_count = common.max_headers_count.as_ref().map(|v| v.value);
        if common.max_connection_duration.is_some() {
            ignored(
                "http_connection_manager",
                "common_http_protocol_options.max_connection_duration",
            );
        }
        if common.headers_with_underscores_action != 0 {
            p.unsupported(
                format!("{cpath}.headers_with_underscores_action"),
                "rejecting or dropping headers with underscores",
            );
        }
    }
    out.listener.request_headers_timeout = opt_duration(
        p,
        &format!("{path}.request_headers_timeout"),
        &hcm.request_headers_timeout,
    );
    out.listener.max_request_headers_kb = hcm.max_request_headers_kb.as_ref().map(|v| v.value);
    if hcm.stream_idle_timeout.is_some() {
        ignored("http_connection_manager", "stream_idle_timeout");
    }
    if hcm.request_timeout.is_some() {
        ignored("http_connection_manager", "request_timeout");
    }
    if !hcm.access_log.is_empty() {
        ignored("http_connection_manager", "access_log (use --access-log)");
    }
    if hcm.tracing.is_some() {
        ignored("http_connection_manager", "tracing");
    }
    if !hcm.upgrade_configs.is_empty() {
        ignored("http_connection_manager", "upgrade_configs");
    }
}

fn tcp_proxy(p: &mut Problems, path: &str, tcp: &TcpProxy, out: &mut XdsListener) {
    out.listener.protocol = ListenerProtocol::Tcp;
    match &tcp.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
            out.listener.cluster = Some(c.clone())
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            p.unsupported(format!("{path}.weighted_clusters"), "a weighted TCP proxy")
        }
        _ => p.add(format!("{path}.cluster"), "must name a cluster"),
    }
    if tcp.tunneling_config.is_some() {
        p.unsupported(
            format!("{path}.tunneling_config"),
            "TCP tunneling over HTTP",
        );
    }
    if tcp.metadata_match.is_some() {
        p.unsupported(format!("{path}.metadata_match"), "subset load balancing");
    }
    if tcp.idle_timeout.is_some() {
        ignored("tcp_proxy", "idle_timeout");
    }
    if !tcp.access_log.is_empty() {
        ignored("tcp_proxy", "access_log (use --access-log)");
    }
}

fn downstream_tls(
    p: &mut Problems,
    path: &str,
    ct: &Option<transport_socket::ConfigType>,
    runtime_dir: &Path,
) -> Option<ListenerTls> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ct else {
        p.add(
            format!("{path}.typed_config"),
            "a DownstreamTlsContext is required",
        );
        return None;
    };
    let tpath = format!("{path}.typed_config");
    let ctx: DownstreamTlsContext = decode_any(p, &tpath, any)?;
    if ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value)
    {
        p.unsupported(
            format!("{tpath}.require_client_certificate"),
            "client certificates (mTLS)",
        );
    }
    if ctx.require_sni.as_ref().is_some_and(|b| b.value) {
        p.unsupported(format!("{tpath}.require_sni"), "require_sni");
    }
    let Some(common) = &ctx.common_tls_context else {
        p.add(format!("{tpath}.common_tls_context"), "is required");
        return None;
    };
    let cpath = format!("{tpath}.common_tls_context");
    if !common.tls_certificate_sds_secret_configs.is_empty() {
        p.unsupported(
            format!("{cpath}.tls_certificate_sds_secret_configs"),
            "SDS (it comes with mTLS)",
        );
    }
    if common.validation_context_type.is_some() {
        p.unsupported(
            format!("{cpath}.validation_context"),
            "validating client certificates",
        );
    }
    if common.tls_params.is_some() {
        ignored("listener", "tls_params");
    }
    let cert = match common.tls_certificates.as_slice() {
        [only] => only,
        [] => {
            p.add(
                format!("{cpath}.tls_certificates"),
                "one certificate is required",
            );
            return None;
        }
        _ => {
            p.unsupported(
                format!("{cpath}.tls_certificates"),
                "more than one certificate (selection by SNI)",
            );
            return None;
        }
    };
    let cert_path = format!("{cpath}.tls_certificates[0]");
    let cert_chain = data_source_file(
        p,
        &format!("{cert_path}.certificate_chain"),
        &cert.certificate_chain,
        runtime_dir,
    );
    let private_key = data_source_file(
        p,
        &format!("{cert_path}.private_key"),
        &cert.private_key,
        runtime_dir,
    );
    Some(ListenerTls {
        cert_chain: cert_chain?,
        private_key: private_key?,
        alpn: if common.alpn_protocols.is_empty() {
            config::default_alpn()
        } else {
            common.alpn_protocols.clone()
        },
    })
}

/// RDS and EDS must come over the same ADS stream: the client has no other.
pub(crate) fn ads_only(p: &mut Problems, path: &str, cs: &Option<ConfigSource>) {
    let Some(cs) = cs else { return };
    match &cs.config_source_specifier {
        None
        | Some(config_source::ConfigSourceSpecifier::Ads(_))
        | Some(config_source::ConfigSourceSpecifier::Self_(_)) => {}
        Some(_) => p.unsupported(path, "a config source other than ADS"),
    }
}
