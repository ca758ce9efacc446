//! Knative `serving.knative.dev/v1` objects: Service, Configuration,
//! Revision and Route, with Knative's defaults and validation.
//!
//! A Service owns one Configuration (its `spec.template`) and one Route
//! (its `spec.traffic`), both named after it. Every change of the template
//! stamps a new, immutable Revision (`NAME-00001`, … from the
//! Configuration's generation, or the template's own `metadata.name`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::error::{join, FieldErrors};
use super::meta::{self, Condition, ObjectMeta};
use crate::autoscaler::{self, GlobalConfig};

pub const API_VERSION: &str = "serving.knative.dev/v1";
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";
pub const ROUTE_LABEL: &str = "serving.knative.dev/route";
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";

/// Knative's defaults (`config-defaults`): a revision times out after
/// 300 s, at most 600 s may be asked for; `containerConcurrency` 0 means
/// unlimited and at most 1000 may be asked for.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 300;
pub const MAX_TIMEOUT_SECONDS: i64 = 600;
pub const DEFAULT_CONTAINER_CONCURRENCY: i64 = 0;
pub const MAX_CONTAINER_CONCURRENCY: i64 = 1000;
/// The container name Knative gives a single unnamed container.
pub const DEFAULT_CONTAINER_NAME: &str = "user-container";
/// Environment variables the platform sets; a template may not.
pub const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    /// Computed on every read; whatever a manifest carries is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub template: RevisionTemplate,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// `spec.template`: the metadata and spec each Revision is stamped from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
}

/// A Revision's spec: a pod spec (containers) plus Knative's fields.
/// Kubernetes pod fields Ferry does not use (`volumes`,
/// `serviceAccountName`, …) are kept in `extra`, so Knative manifests are
/// accepted unchanged; the process scaler ignores them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Requests one instance serves at once; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// An OCI image (Kubernetes backend); the process scaler runs
    /// `command`/`args` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `valueFrom` and friends, kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// One entry of `spec.traffic` (and, resolved, of `status.traffic`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// Allowed on a Route, never inside a Service (which has exactly one
    /// Configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Status only (the tag's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_created_revision_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_ready_revision_name: String,
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
}

/// Stored as written by the control plane (one per Service, same name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ConfigurationSpec,
    #[serde(default)]
    pub status: ConfigurationStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    pub template: RevisionTemplate,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_created_revision_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latest_ready_revision_name: String,
}

/// An immutable snapshot of a template. Its labels name its Service,
/// Configuration and the Configuration generation that stamped it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RevisionSpec,
    #[serde(default)]
    pub status: RevisionStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Instances running and ready (set by the scaler).
    #[serde(default)]
    pub actual_replicas: u32,
    /// Instances the autoscaler wants.
    #[serde(default)]
    pub desired_replicas: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RouteSpec,
    #[serde(default)]
    pub status: RouteStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
}

// === defaults ===

impl Service {
    /// Knative's defaults: namespace `default`, one container named
    /// `user-container`, `containerConcurrency` 0, `timeoutSeconds` 300,
    /// traffic 100 % to the latest revision, and in every traffic entry
    /// `latestRevision` = "no revisionName" and `percent` = 0.
    pub fn set_defaults(&mut self) {
        if self.api_version.is_empty() {
            self.api_version = API_VERSION.to_string();
        }
        if self.kind.is_empty() {
            self.kind = "Service".to_string();
        }
        if self.metadata.namespace.is_empty() {
            self.metadata.namespace = meta::DEFAULT_NAMESPACE.to_string();
        }
        self.spec.template.spec.set_defaults();
        if self.spec.traffic.is_empty() {
            self.spec.traffic = vec![TrafficTarget {
                latest_revision: Some(true),
                percent: Some(100),
                ..Default::default()
            }];
        }
        for t in &mut self.spec.traffic {
            if t.latest_revision.is_none() {
                t.latest_revision = Some(t.revision_name.is_none());
            }
            if t.percent.is_none() {
                t.percent = Some(0);
            }
        }
    }
}

impl RevisionSpec {
    pub fn set_defaults(&mut self) {
        if self.timeout_seconds.is_none() || self.timeout_seconds == Some(0) {
            self.timeout_seconds = Some(DEFAULT_TIMEOUT_SECONDS);
        }
        if self.container_concurrency.is_none() {
            self.container_concurrency = Some(DEFAULT_CONTAINER_CONCURRENCY);
        }
        let single = self.containers.len() == 1;
        let mut used: Vec<String> = self
            .containers
            .iter()
            .filter(|c| !c.name.is_empty())
            .map(|c| c.name.clone())
            .collect();
        let mut next = 0;
        for c in &mut self.containers {
            if !c.name.is_empty() {
                continue;
            }
            // One unnamed container is `user-container`; several get a
            // numeric suffix that does not clash with a user's name.
            let mut name = DEFAULT_CONTAINER_NAME.to_string();
            if !single || used.contains(&name) {
                loop {
                    name = format!("{DEFAULT_CONTAINER_NAME}-{next}");
                    next += 1;
                    if !used.contains(&name) {
                        break;
                    }
                }
            }
            used.push(name.clone());
            c.name = name;
        }
    }

    /// The container that serves requests: the one with a port, else the
    /// only one.
    pub fn serving_container(&self) -> Option<&Container> {
        self.containers
            .iter()
            .find(|c| !c.ports.is_empty())
            .or_else(|| self.containers.first())
    }

    /// The port the app listens on (`ports[0].containerPort`), Knative's
    /// default 8080 when none is given. The process scaler overrides it
    /// through `PORT`.
    pub fn container_port(&self) -> u16 {
        self.serving_container()
            .and_then(|c| c.ports.first())
            .and_then(|p| u16::try_from(p.container_port).ok())
            .unwrap_or(8080)
    }

    pub fn timeout_seconds_or_default(&self) -> i64 {
        match self.timeout_seconds {
            Some(t) if t > 0 => t,
            _ => DEFAULT_TIMEOUT_SECONDS,
        }
    }
}

// === validation ===

impl Service {
    /// Knative's validation of a Service, before defaults are applied to
    /// `spec.traffic` (so "percent left out" still reads as 0), on Knative's
    /// default autoscaler settings. Every error names its field path from
    /// the object root.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        self.validate_with(&GlobalConfig::default())
    }

    /// The same against a cluster's autoscaler settings, which decide
    /// whether `initial-scale: "0"` is allowed and bound `max-scale`.
    pub fn validate_with(&self, autoscaler: &GlobalConfig) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        if !self.api_version.is_empty() && self.api_version != API_VERSION {
            errs.push("apiVersion", format!("expected {API_VERSION:?}"));
        }
        if !self.kind.is_empty() && self.kind != "Service" {
            errs.push("kind", "expected \"Service\"");
        }
        meta::validate_name_and_namespace(&self.metadata, "metadata", &mut errs);
        for key in self.metadata.annotations.keys() {
            if key.starts_with(AUTOSCALING_PREFIX) {
                errs.push(
                    format!("metadata.annotations.{key}"),
                    "autoscaling annotations must be put under \
                     `spec.template.metadata.annotations` to work",
                );
            }
        }
        validate_template(
            &self.spec.template,
            &self.metadata.name,
            autoscaler,
            "spec.template",
            &mut errs,
        );
        validate_traffic(
            &self.spec.traffic,
            &self.metadata.name,
            true,
            "spec.traffic",
            &mut errs,
        );
        errs.into_result()
    }
}

fn validate_template(
    t: &RevisionTemplate,
    parent: &str,
    autoscaler: &GlobalConfig,
    path: &str,
    errs: &mut FieldErrors,
) {
    let name = &t.metadata.name;
    if !name.is_empty() {
        let p = format!("{path}.metadata.name");
        if let Err(e) = meta::check_dns1035_label(name) {
            errs.push(p, e);
        } else if !parent.is_empty() && !name.starts_with(&format!("{parent}-")) {
            errs.push(p, format!("{name:?} must have prefix \"{parent}-\""));
        }
    }
    validate_autoscaling_annotations(
        &t.metadata.annotations,
        autoscaler,
        &format!("{path}.metadata.annotations"),
        errs,
    );
    validate_revision_spec(&t.spec, &format!("{path}.spec"), errs);
}

fn validate_revision_spec(spec: &RevisionSpec, path: &str, errs: &mut FieldErrors) {
    if let Some(cc) = spec.container_concurrency {
        if !(0..=MAX_CONTAINER_CONCURRENCY).contains(&cc) {
            errs.push(
                format!("{path}.containerConcurrency"),
                format!("expected 0 <= {cc} <= {MAX_CONTAINER_CONCURRENCY}"),
            );
        }
    }
    if let Some(t) = spec.timeout_seconds {
        if !(0..=MAX_TIMEOUT_SECONDS).contains(&t) {
            errs.push(
                format!("{path}.timeoutSeconds"),
                format!("expected 0 <= {t} <= {MAX_TIMEOUT_SECONDS}"),
            );
        }
    }
    let cpath = format!("{path}.containers");
    if spec.containers.is_empty() {
        errs.push(cpath, "missing field: at least one container is required");
        return;
    }
    let with_ports = spec
        .containers
        .iter()
        .filter(|c| !c.ports.is_empty())
        .count();
    if spec.containers.len() > 1 && with_ports != 1 {
        errs.push(
            cpath.clone(),
            format!(
                "with {} containers exactly one must name its port (the one serving \
                 requests); {with_ports} do",
                spec.containers.len()
            ),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let p = format!("{cpath}[{i}]");
        if !c.name.is_empty() {
            if let Err(e) = meta::check_dns1123_label(&c.name) {
                errs.push(format!("{p}.name"), e);
            }
            if let Some(first) = names.insert(&c.name, i) {
                errs.push(
                    format!("{p}.name"),
                    format!(
                        "duplicate container name {:?} (also {cpath}[{first}])",
                        c.name
                    ),
                );
            }
        }
        let has_image = c.image.as_deref().is_some_and(|s| !s.is_empty());
        if !has_image && c.command.is_empty() {
            errs.push(
                p.clone(),
                "expected `image` or `command` (the process scaler runs `command`/`args`)",
            );
        }
        if c.command.iter().any(String::is_empty) {
            errs.push(format!("{p}.command"), "empty string in command");
        }
        if c.ports.len() > 1 {
            errs.push(
                format!("{p}.ports"),
                "more than one container port is set; Knative allows one",
            );
        }
        for (j, port) in c.ports.iter().enumerate() {
            if !(1..=65535).contains(&port.container_port) {
                errs.push(
                    format!("{p}.ports[{j}].containerPort"),
                    format!("expected 1 <= {} <= 65535", port.container_port),
                );
            }
            if let Some(proto) = &port.protocol {
                if proto != "TCP" {
                    errs.push(
                        format!("{p}.ports[{j}].protocol"),
                        format!("{proto:?} is not supported; expected \"TCP\""),
                    );
                }
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            let ep = format!("{p}.env[{j}].name");
            if !is_env_name(&e.name) {
                errs.push(
                    ep,
                    format!(
                        "{:?} is not a valid environment variable name \
                         (letters, digits, '_', '-', '.'; not starting with a digit)",
                        e.name
                    ),
                );
            } else if RESERVED_ENV.contains(&e.name.as_str()) {
                errs.push(
                    ep,
                    format!("{:?} is a reserved environment variable", e.name),
                );
            }
        }
    }
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// The template's `autoscaling.knative.dev/*` annotations, checked by the
/// autoscaler's own parsers against the cluster's defaults
/// ([`autoscaler::config::validate_annotations`]): unknown keys are refused
/// (a typo would otherwise silently do nothing), and every value the
/// autoscaler could not use is a 400 naming the annotation.
fn validate_autoscaling_annotations(
    annotations: &BTreeMap<String, String>,
    autoscaler: &GlobalConfig,
    path: &str,
    errs: &mut FieldErrors,
) {
    let pairs = annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for e in autoscaler::config::validate_annotations(pairs, autoscaler) {
        errs.push(format!("{path}.{AUTOSCALING_PREFIX}{}", e.key), e.message);
    }
}

/// Knative's traffic rules: each entry names a revision or floats on the
/// latest (never both, never neither), percents are 0..=100 and sum to
/// exactly 100, tags are DNS-1035 labels and unique, `url` is status-only.
fn validate_traffic(
    traffic: &[TrafficTarget],
    service: &str,
    in_service: bool,
    path: &str,
    errs: &mut FieldErrors,
) {
    if traffic.is_empty() {
        // Defaults to 100 % latest.
        return;
    }
    let mut sum: i64 = 0;
    let mut tags: HashMap<&str, usize> = HashMap::new();
    for (i, t) in traffic.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let pinned = t.revision_name.as_deref().is_some_and(|n| !n.is_empty());
        if let Some(latest) = t.latest_revision {
            if latest == pinned {
                errs.push(
                    format!("{p}.latestRevision"),
                    format!(
                        "may not set revisionName {:?} when latestRevision is {latest}",
                        t.revision_name.as_deref().unwrap_or("")
                    ),
                );
            }
        }
        if in_service && t.configuration_name.is_some() {
            errs.push(
                format!("{p}.configurationName"),
                "must not set the field(s): a Service's traffic always refers to its own \
                 configuration",
            );
        }
        if let Some(rev) = t.revision_name.as_deref() {
            if rev.is_empty() {
                errs.push(format!("{p}.revisionName"), "must not be empty");
            } else if let Err(e) = meta::check_dns1035_label(rev) {
                errs.push(format!("{p}.revisionName"), e);
            }
        }
        if t.url.is_some() {
            errs.push(
                format!("{p}.url"),
                "must not set the field(s): url is reported in status",
            );
        }
        if let Some(pct) = t.percent {
            if !(0..=100).contains(&pct) {
                errs.push(
                    format!("{p}.percent"),
                    format!("expected 0 <= {pct} <= 100"),
                );
            }
            sum = sum.saturating_add(pct);
        }
        if let Some(tag) = t.tag.as_deref() {
            let tp = format!("{p}.tag");
            if let Err(e) = meta::check_dns1035_label(tag) {
                errs.push(tp, e);
            } else if !service.is_empty() && tag.len() + 1 + service.len() > 63 {
                errs.push(
                    tp,
                    format!("host label \"{tag}-{service}\" would be longer than 63 characters"),
                );
            } else if let Some(first) = tags.insert(tag, i) {
                errs.push(
                    tp,
                    format!("multiple definitions for {tag:?} (also {path}[{first}].tag)"),
                );
            }
        }
    }
    if sum != 100 {
        errs.push(
            path.to_string(),
            format!("traffic targets sum to {sum}, want 100"),
        );
    }
}

/// Compares two templates the way "did the template change?" must: after
/// defaults, so spelling a default out is not a change.
pub fn template_changed(old: &RevisionTemplate, new: &RevisionTemplate) -> bool {
    old != new
}

/// The host of a Service (or Route): `{name}.{namespace}.{domain}`.
pub fn host(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.{domain}")
}

/// The host of a tagged target: `{tag}-{name}.{namespace}.{domain}`.
pub fn tag_host(tag: &str, name: &str, namespace: &str, domain: &str) -> String {
    format!("{tag}-{name}.{namespace}.{domain}")
}

/// Field path helper for callers building their own messages.
pub fn traffic_path(i: usize, field: &str) -> String {
    join(&format!("spec.traffic[{i}]"), field)
}
