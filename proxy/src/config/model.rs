//! The plain-data config model: what a static YAML file holds and what the
//! xDS translation produces. Nothing here is compiled (no regexes, no
//! sockets); `validate` checks it and the router/upstream modules compile it.
//!
//! Field names follow Envoy's where an Envoy user would look for them
//! (`domains`, `prefix_rewrite`, `weighted_clusters`, `lb_policy`, ...), with
//! Envoy's deep nesting flattened where it carries no meaning for Ferry.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_filters::{FilterSpec, PerFilterConfig};
use serde::{Deserialize, Serialize};

use super::duration::Dur;

/// A whole static config file (`ferry-proxy --config FILE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Admin server; CLI `--admin` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// JSON-lines access log; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Named route configurations, referenced by HTTP listeners.
    ///
    /// Route configs and clusters are shared, not copied: a config
    /// assembled from xDS resources, the running config and the cluster
    /// runtimes hold one copy of each, and "unchanged since the last
    /// config" is a pointer compare before it is a deep one.
    #[serde(default)]
    pub routes: Vec<Arc<RouteConfig>>,
    #[serde(default)]
    pub clusters: Vec<Arc<Cluster>>,
    /// Configuration from a control plane over ADS; the listeners, routes
    /// and clusters above are then the static part, served beside the
    /// dynamic one. CLI flags (`--xds`, `--node-id`, ...) override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsBootstrap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsBootstrap {
    /// `http://host:port` of the ADS server.
    pub server: String,
    pub node_id: String,
    #[serde(default)]
    pub node_cluster: String,
    /// Incremental (delta) xDS instead of state of the world.
    #[serde(default)]
    pub delta: bool,
    /// Keep the last accepted resources here, so a proxy restarted while
    /// the control plane is down still serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port`; keep it on loopback.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr` or a file path (appended to).
    #[serde(default = "default_access_log_path")]
    pub path: String,
}

fn default_access_log_path() -> String {
    "stdout".to_string()
}

// === Listeners ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    /// `ip:port` to bind.
    pub address: String,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// HTTP listeners: the name of an entry in `routes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<String>,
    /// TCP listeners: the cluster every connection is proxied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// TLS termination; without it the listener is plaintext (HTTP/1.1 and
    /// h2c prior knowledge on the same port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Accepted connections above this are closed at once (0 = no limit).
    #[serde(default)]
    pub max_connections: u32,
    /// A downstream connection with no request in flight for this long is
    /// closed; default 1h (Envoy's HCM default). `0s` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// The whole request head must arrive within this after the connection
    /// opens or its first byte arrives (slowloris); default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Dur>,
    /// Request heads larger than this get 431; default 60 (KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers_kb: Option<u32>,
    /// Requests with more headers than this get 431; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers_count: Option<u32>,
    /// HTTP filters, in order (see filters/README.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_filters: Vec<FilterSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM file with the certificate chain, leaf first.
    pub cert_chain: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
    /// ALPN protocols offered, in preference order.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
}

pub fn default_alpn() -> Vec<String> {
    vec!["h2".to_string(), "http/1.1".to_string()]
}

// === Routes ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default)]
    /// Shared like route configs: a route config that changed in one
    /// virtual host shares the others with the config it replaces.
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// `example.com`, `*.example.com`, `api.*`, or `*`. A domain may carry a
    /// port (`example.com:8080`) to match only that `Host`.
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Per-filter overrides for every route of this host, by filter name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_filter_config: BTreeMap<String, PerFilterConfig>,
    /// Header rewrites for every route of this host, applied before the
    /// route's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub name: String,
    pub value: String,
    /// true: add another value next to existing ones; false: replace them.
    #[serde(default = "default_true")]
    pub append: bool,
}

fn default_true() -> bool {
    true
}

/// Rare parts (redirects, direct responses, retry policies) are boxed: a
/// mesh's route config holds tens of thousands of routes, nearly all of
/// them forwarding without either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Exactly one of `route`, `redirect`, `direct_response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Box<Redirect>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Box<DirectResponse>>,
    /// Per-filter overrides for this route, by filter name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_filter_config: BTreeMap<String, PerFilterConfig>,
    /// Request bodies up to this size are kept so a retry can resend them;
    /// a larger body is streamed and not retried. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request_buffer_limit_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

/// Exactly one of `prefix`, `path`, `regex`. `prefix: ""` is meaningful
/// (matches everything) and must survive every round trip, so these are
/// `Option`s and never skipped-when-empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Matched against the whole path (without the query), RE2-like syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcher>,
}

/// Exactly one of `exact`, `prefix`, `suffix`, `contains`, `regex`,
/// `present`. `invert_match` negates the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default)]
    pub invert_match: bool,
}

/// Exactly one of `exact`, `regex`, `present`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Forward to a cluster. Exactly one of `cluster`, `weighted_clusters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Traffic split: each request picks one cluster with probability
    /// weight / sum(weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Time from the request being sent upstream until the response head
    /// arrives; `0s` disables. Default 15s, as Envoy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Replace the matched prefix (or, for `path`/`regex` matches, the
    /// whole path) with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Set `Host`/`:authority` sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Hash inputs for `ring_hash` / `maglev` clusters, tried in order; the
    /// hashes of all matching policies are combined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<Box<RetryPolicy>>,
}

/// Envoy's retry policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Comma-separated conditions: `5xx`, `gateway-error`,
    /// `connect-failure`, `reset`, `refused-stream`,
    /// `retriable-status-codes`.
    pub retry_on: String,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Each try's own timeout, within the route timeout; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_back_off: Option<RetryBackOff>,
    /// For `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
}

/// Exponential backoff with full jitter between tries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    /// Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Dur>,
    /// Default 10 × base_interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

/// Exactly one of `header`, `cookie`, `connection_properties`,
/// `query_parameter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HashHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_properties: Option<HashConnection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<HashQuery>,
    /// Stop at this policy when it produced a hash.
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashHeader {
    pub header_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashConnection {
    pub source_ip: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashQuery {
    pub name: String,
}

/// Answer with a redirect. Unset parts keep the request's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u16>,
    /// Replace the whole path. Exclusive with `prefix_rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    /// Replace the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub strip_query: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "default_redirect_code")]
    pub response_code: u16,
}

fn default_redirect_code() -> u16 {
    301
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

// === Clusters ===

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: ClusterKind,
    /// `ip:port` for `static`; `hostname:port` (or `ip:port`) for
    /// `strict_dns`.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `strict_dns` re-resolution period; default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Dur>,
    /// Idle keep-alive connections are closed after this; default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Cap on idle HTTP/1.1 connections kept per endpoint; default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHashConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequestConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Below this percentage of healthy endpoints, balance across all of
    /// them (Envoy's panic mode); default 50. 0 disables panic mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<f64>,
    /// This cluster is a revision's local app, seen from its sidecar: the
    /// queue-proxy role (concurrency cap, bounded queue, readiness probing,
    /// per-second load reports). See docs/config.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueConfig>,
    /// This cluster is a revision that can be at zero: a request finding no
    /// endpoint is held until one arrives (the activator role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<ActivationConfig>,
}

/// The queue-proxy role of a cluster. Defaults are Knative's. From xDS, the
/// cluster's `metadata.filter_metadata["ferry"]` carries the same keys
/// (`revision`, `namespace`, `container_concurrency`, `max_queue_depth`,
/// `queue_timeout`, `readiness_probe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The revision's name, as reported to the control plane; default: the
    /// cluster's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Requests the app executes at once; 0 = unlimited (and no queue).
    #[serde(default)]
    pub container_concurrency: u32,
    /// Requests waiting for a slot; default 10 × container_concurrency.
    /// Beyond it: 503 at once with `x-ferry-queue: full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u32>,
    /// Longest wait for a slot; default the route's timeout (the revision
    /// timeout). Beyond it: 503 with `x-ferry-queue: timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Dur>,
    /// How the app's readiness is probed; absent: TCP connect with the
    /// defaults below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ReadinessProbe>,
}

pub fn default_namespace() -> String {
    "default".to_string()
}

/// What `queue: {}` means (the namespace defaults to `default`, as in YAML).
impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            revision: String::new(),
            namespace: default_namespace(),
            container_concurrency: 0,
            max_queue_depth: None,
            queue_timeout: None,
            readiness_probe: None,
        }
    }
}

/// What `activation: {}` means.
impl Default for ActivationConfig {
    fn default() -> Self {
        ActivationConfig {
            revision: String::new(),
            namespace: default_namespace(),
            hold_timeout: None,
            max_held: None,
        }
    }
}

/// Knative's queue-proxy probing: every `initial_interval` (50ms) until the
/// first success, then every `period`; `failure_threshold` failures in a
/// row make a ready app unready (and probing aggressive again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessProbe {
    /// HTTP GET of this path (2xx passes); absent: a TCP connect passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default 50ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<Dur>,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Dur>,
    /// One probe's limit; default 1s (100ms while probing aggressively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// The activator role of a cluster. From xDS, `filter_metadata["ferry"]`
/// carries `revision`, `namespace`, `activation: true`, `hold_timeout`,
/// `max_held`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationConfig {
    /// Default: the cluster's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Longest a request waits for an endpoint; default 60s. Beyond it: 503
    /// with `x-ferry-activation: timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_timeout: Option<Dur>,
    /// Requests held at once for this revision; default 10000 (Knative's
    /// activator queue depth). Beyond it: 503 with
    /// `x-ferry-activation: full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_held: Option<u32>,
}

/// Per-cluster limits; overflow answers 503 with `x-ferry-overloaded: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default = "default_breaker")]
    pub max_connections: u32,
    #[serde(default = "default_breaker")]
    pub max_pending_requests: u32,
    #[serde(default = "default_breaker")]
    pub max_requests: u32,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// When set, replaces `max_retries`: active retries may be at most
    /// budget_percent of active requests (but at least
    /// min_retry_concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: default_breaker(),
            max_pending_requests: default_breaker(),
            max_requests: default_breaker(),
            max_retries: default_max_retries(),
            retry_budget: None,
        }
    }
}

fn default_breaker() -> u32 {
    1024
}
fn default_max_retries() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Default 20.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: f64,
    /// Default 3.
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

fn default_budget_percent() -> f64 {
    20.0
}
fn default_min_retry_concurrency() -> u32 {
    3
}

/// Active health checking. Exactly one of `http_health_check`,
/// `tcp_health_check`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// A random extra delay up to this is added to each interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<Dur>,
    /// Failed checks in a row that mark an endpoint unhealthy; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row that mark it healthy again; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_health_check: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_health_check: Option<TcpHealthCheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    /// `Host` sent; default the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Half-open ranges `[start, end)`; default `[{start: 200, end: 300}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<StatusRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRange {
    pub start: u16,
    pub end: u16,
}

/// A TCP connect that succeeds within the timeout passes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Passive health: endpoints that keep failing are ejected for a while.
/// Defaults are Envoy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx answers (and connect failures, resets, timeouts) in a row that
    /// eject; default 5.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// 502/503/504 (and connect failures, resets, timeouts) in a row that
    /// eject; default 5.
    #[serde(default = "default_consecutive")]
    pub consecutive_gateway_failure: u32,
    /// Percentage chance an ejection by consecutive_5xx is enforced;
    /// default 100.
    #[serde(default = "default_enforcing_5xx")]
    pub enforcing_consecutive_5xx: u32,
    /// Default 0, as Envoy's: gateway-failure ejection is opt-in.
    #[serde(default)]
    pub enforcing_consecutive_gateway_failure: u32,
    /// How often ejections are reviewed; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// Ejection time = base_ejection_time × times ejected; default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Dur>,
    /// Cap on one ejection's time; default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Dur>,
    /// At most this percentage of the cluster is ejected at once (at least
    /// one endpoint can always be); default 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: default_consecutive(),
            consecutive_gateway_failure: default_consecutive(),
            enforcing_consecutive_5xx: default_enforcing_5xx(),
            enforcing_consecutive_gateway_failure: 0,
            interval: None,
            base_ejection_time: None,
            max_ejection_time: None,
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive() -> u32 {
    5
}
fn default_enforcing_5xx() -> u32 {
    100
}
fn default_max_ejection_percent() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterKind {
    #[default]
    Static,
    StrictDns,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent in SNI and verified; default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle of trusted CAs; default: the Mozilla root set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashConfig {
    #[serde(default = "default_min_ring")]
    pub minimum_ring_size: u64,
    #[serde(default = "default_max_ring")]
    pub maximum_ring_size: u64,
}

fn default_min_ring() -> u64 {
    1024
}
fn default_max_ring() -> u64 {
    8 * 1024 * 1024
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevConfig {
    /// Must be prime; default 65537.
    #[serde(default = "default_maglev_size")]
    pub table_size: u64,
}

fn default_maglev_size() -> u64 {
    65537
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestConfig {
    /// Endpoints sampled per pick; default 2 (power of two choices).
    #[serde(default = "default_choice_count")]
    pub choice_count: u32,
}

fn default_choice_count() -> u32 {
    2
}
