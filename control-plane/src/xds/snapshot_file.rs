//! The "static snapshot": a YAML file of listeners, routes and clusters (with
//! their endpoints) that `ferry-control serve --xds-snapshot FILE` serves,
//! until the serving model generates resources. The schema is documented in
//! `docs/xds.md`.
//!
//! Loading is parse (serde, errors carry the field path) then validate
//! (every error, each with its field path), so an operator fixes a file in
//! one pass. [`FileWatcher`] polls the file and hands each new valid
//! snapshot on; a bad file is logged and the previous snapshot stays.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{mpsc, watch};

use super::cache::Resources;
use super::metrics::XdsMetrics;
use super::translate;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFile {
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    #[serde(default)]
    pub routes: Vec<RouteConfigSpec>,
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
}

/// An HTTP listener whose routes come over RDS (`route_config` names a
/// [`RouteConfigSpec`]).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub route_config: String,
    /// Prefix of the listener's HTTP stats; the listener name by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfigSpec {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHostSpec>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostSpec {
    pub name: String,
    #[serde(default = "all_domains")]
    pub domains: Vec<String>,
    pub routes: Vec<RouteSpec>,
}

/// One route: exactly one matcher (`prefix`, `path`, `regex`) and exactly
/// one target (`cluster`, `weighted_clusters`). `prefix: ""` is a real
/// value (match everything) and is kept as such, never dropped as a
/// default: `Option<String>` tells "absent" from "empty".
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An RE2-syntax regex matched against the whole path. Not compiled
    /// here: the client's engine is the authority on its dialect, and a
    /// regex it rejects comes back as a NACK naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedClusterSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterSpec {
    pub name: String,
    pub weight: u32,
}

/// An EDS cluster: served as a Cluster of type EDS plus a
/// ClusterLoadAssignment of the same name holding `endpoints`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    #[serde(default)]
    pub lb_policy: LbPolicySpec,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationSpec,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicySpec {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// A duration written as `250ms`, `5s`, `1.5s` or `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

/// A field that failed validation, with its path in the file
/// (`routes[0].virtual_hosts[1].routes[2].cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
}

/// Polls a snapshot file and sends every new valid snapshot, translated,
/// to `updates`.
pub struct FileWatcher {
    path: PathBuf,
    interval: Duration,
    metrics: XdsMetrics,
    /// What the last poll saw (modification time, length, content hash),
    /// so an unchanged file is neither re-read nor re-parsed.
    last_stamp: Option<Stamp>,
    last_hash: Option<u64>,
    /// The last read error logged, so a missing file is logged once, not
    /// every second.
    last_error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
}

fn all_domains() -> Vec<String> {
    vec!["*".to_string()]
}

fn default_connect_timeout() -> DurationSpec {
    DurationSpec(Duration::from_secs(5))
}

fn default_weight() -> u32 {
    1
}

fn join_errors(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

// === impl SnapshotFile ===

impl SnapshotFile {
    /// Parses YAML; a type error names the field path where it happened.
    pub fn parse(yaml: &str) -> Result<SnapshotFile, SnapshotError> {
        let de = serde_norway::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "<root>".to_string()
            } else {
                path
            };
            SnapshotError::Parse {
                path,
                message: e.into_inner().to_string(),
            }
        })
    }

    /// Parses and validates.
    pub fn from_yaml(yaml: &str) -> Result<SnapshotFile, SnapshotError> {
        let file = SnapshotFile::parse(yaml)?;
        file.validate().map_err(SnapshotError::Invalid)?;
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<SnapshotFile, SnapshotError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        })?;
        SnapshotFile::from_yaml(&yaml)
    }

    /// Every problem in the file, each with its field path. Checks what
    /// the schema alone cannot: names unique, references resolved, exactly
    /// one matcher and one target per route, ports and weights in range.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Errors::default();
        let route_names = unique_names(
            &mut errs,
            "routes",
            self.routes.iter().map(|r| r.name.as_str()),
        );
        let cluster_names = unique_names(
            &mut errs,
            "clusters",
            self.clusters.iter().map(|c| c.name.as_str()),
        );
        unique_names(
            &mut errs,
            "listeners",
            self.listeners.iter().map(|l| l.name.as_str()),
        );

        let mut sockets: BTreeMap<(String, u16), usize> = BTreeMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if l.address.parse::<IpAddr>().is_err() {
                errs.push(
                    format!("{at}.address"),
                    format!("{:?} is not an IP address", l.address),
                );
            }
            if l.port == 0 {
                errs.push(format!("{at}.port"), "must be 1..=65535");
            }
            if let Some(first) = sockets.insert((l.address.clone(), l.port), i) {
                errs.push(
                    format!("{at}.port"),
                    format!(
                        "{}:{} is already used by listeners[{first}]",
                        l.address, l.port
                    ),
                );
            }
            if !route_names.contains(l.route_config.as_str()) {
                errs.push(
                    format!("{at}.route_config"),
                    format!("no route configuration named {:?}", l.route_config),
                );
            }
            if matches!(&l.stat_prefix, Some(p) if p.is_empty()) {
                errs.push(format!("{at}.stat_prefix"), "must not be empty");
            }
        }

        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            unique_names(
                &mut errs,
                &format!("{at}.virtual_hosts"),
                r.virtual_hosts.iter().map(|v| v.name.as_str()),
            );
            for (j, vh) in r.virtual_hosts.iter().enumerate() {
                let at = format!("{at}.virtual_hosts[{j}]");
                if vh.domains.is_empty() {
                    errs.push(format!("{at}.domains"), "must list at least one domain");
                }
                for (k, d) in vh.domains.iter().enumerate() {
                    if d.is_empty() {
                        errs.push(format!("{at}.domains[{k}]"), "must not be empty");
                    }
                }
                for (k, route) in vh.routes.iter().enumerate() {
                    validate_route(
                        &mut errs,
                        &format!("{at}.routes[{k}]"),
                        route,
                        &cluster_names,
                    );
                }
            }
        }

        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if c.connect_timeout.0.is_zero() {
                errs.push(format!("{at}.connect_timeout"), "must be greater than 0");
            }
            for (j, e) in c.endpoints.iter().enumerate() {
                let at = format!("{at}.endpoints[{j}]");
                if e.address.parse::<IpAddr>().is_err() {
                    errs.push(
                        format!("{at}.address"),
                        format!("{:?} is not an IP address", e.address),
                    );
                }
                if e.port == 0 {
                    errs.push(format!("{at}.port"), "must be 1..=65535");
                }
                // Envoy requires load_balancing_weight >= 1.
                if e.weight == 0 {
                    errs.push(format!("{at}.weight"), "must be at least 1");
                }
            }
        }
        errs.finish()
    }

    /// Serializes back to YAML (used by tests and tools; defaults that
    /// carry meaning, such as `prefix: ""`, survive the round trip).
    pub fn to_yaml(&self) -> Result<String, SnapshotError> {
        serde_norway::to_string(self).map_err(|e| SnapshotError::Parse {
            path: "<root>".to_string(),
            message: e.to_string(),
        })
    }
}

fn validate_route(errs: &mut Errors, at: &str, route: &RouteSpec, clusters: &BTreeSet<&str>) {
    let matchers = [
        route.prefix.is_some(),
        route.path.is_some(),
        route.regex.is_some(),
    ];
    match matchers.iter().filter(|m| **m).count() {
        1 => {}
        0 => errs.push(at.to_string(), "needs one of prefix, path, regex"),
        _ => errs.push(at.to_string(), "has more than one of prefix, path, regex"),
    }
    if let Some(p) = &route.path {
        if !p.starts_with('/') {
            errs.push(format!("{at}.path"), "must start with '/'");
        }
    }
    if matches!(&route.regex, Some(r) if r.is_empty()) {
        errs.push(format!("{at}.regex"), "must not be empty");
    }
    match (&route.cluster, &route.weighted_clusters) {
        (Some(c), None) => {
            if !clusters.contains(c.as_str()) {
                errs.push(format!("{at}.cluster"), format!("no cluster named {c:?}"));
            }
        }
        (None, Some(wcs)) => {
            if wcs.is_empty() {
                errs.push(
                    format!("{at}.weighted_clusters"),
                    "must list at least one cluster",
                );
            }
            let mut total: u64 = 0;
            for (i, wc) in wcs.iter().enumerate() {
                total += u64::from(wc.weight);
                if !clusters.contains(wc.name.as_str()) {
                    errs.push(
                        format!("{at}.weighted_clusters[{i}].name"),
                        format!("no cluster named {:?}", wc.name),
                    );
                }
            }
            // Envoy rejects a split whose weights add up to 0 or overflow
            // a uint32; catching it here names the field.
            if !wcs.is_empty() && total == 0 {
                errs.push(
                    format!("{at}.weighted_clusters"),
                    "weights must add up to more than 0",
                );
            }
            if total > u64::from(u32::MAX) {
                errs.push(
                    format!("{at}.weighted_clusters"),
                    "weights must add up to at most 4294967295",
                );
            }
        }
        (None, None) => errs.push(at.to_string(), "needs one of cluster, weighted_clusters"),
        (Some(_), Some(_)) => errs.push(
            at.to_string(),
            "has both cluster and weighted_clusters; pick one",
        ),
    }
}

/// Records duplicates and empty names under `at[i].name`; returns the set
/// of names for reference checks.
fn unique_names<'a>(
    errs: &mut Errors,
    at: &str,
    names: impl Iterator<Item = &'a str>,
) -> BTreeSet<&'a str> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            errs.push(format!("{at}[{i}].name"), "must not be empty");
            continue;
        }
        if let Some(first) = seen.insert(name, i) {
            errs.push(
                format!("{at}[{i}].name"),
                format!("{name:?} is already used by {at}[{first}]"),
            );
            seen.insert(name, first);
        }
    }
    seen.into_keys().collect()
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: String, reason: impl Into<String>) {
        self.0.push(FieldError {
            path,
            reason: reason.into(),
        });
    }

    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

// === impl FieldError ===

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

// === impl DurationSpec ===

impl DurationSpec {
    pub fn parse(s: &str) -> Result<DurationSpec, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} has no unit (use ms, s or m)"))?;
        let (num, unit) = s.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 250ms, 5s or 2m"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            _ => return Err(format!("{s:?} has unknown unit {unit:?} (use ms, s or m)")),
        };
        let secs = value * scale;
        if !secs.is_finite() || secs > 315_576_000_000.0 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(DurationSpec(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        DurationSpec::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

// === impl FileWatcher ===

impl FileWatcher {
    pub fn new(path: PathBuf, interval: Duration, metrics: XdsMetrics) -> FileWatcher {
        FileWatcher {
            path,
            interval,
            metrics,
            last_stamp: None,
            last_hash: None,
            last_error: None,
        }
    }

    /// Loads the file now: the first snapshot, which must be valid (there
    /// is no previous one to keep serving).
    pub fn load_initial(&mut self) -> Result<Arc<Resources>, SnapshotError> {
        let stamp = self.stamp();
        let yaml = self.read()?;
        let file = SnapshotFile::from_yaml(&yaml)?;
        self.last_stamp = stamp;
        self.last_hash = Some(xxhash_rust::xxh64::xxh64(yaml.as_bytes(), 0));
        self.metrics.reload_ok();
        Ok(Arc::new(translate::translate(&file)))
    }

    /// Polls until `shutdown` flips or `updates` is closed. A file that
    /// fails to read, parse or validate is logged (once per distinct
    /// content) and counted; the previous snapshot keeps serving.
    pub async fn run(
        mut self,
        updates: mpsc::Sender<Arc<Resources>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            if let Some(resources) = self.poll() {
                if updates.send(resources).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One poll: `Some` when the file changed and is valid.
    pub fn poll(&mut self) -> Option<Arc<Resources>> {
        let stamp = self.stamp();
        if stamp.is_some() && stamp == self.last_stamp {
            return None;
        }
        self.last_stamp = stamp;
        let yaml = match self.read() {
            Ok(y) => y,
            Err(e) => {
                // Cleared so the content is looked at again once the file
                // is readable.
                self.last_hash = None;
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "snapshot file unreadable; keeping the previous snapshot");
                    self.metrics.reload_failed();
                    self.last_error = Some(msg);
                }
                return None;
            }
        };
        self.last_error = None;
        let hash = xxhash_rust::xxh64::xxh64(yaml.as_bytes(), 0);
        if Some(hash) == self.last_hash {
            return None;
        }
        self.last_hash = Some(hash);
        match SnapshotFile::from_yaml(&yaml) {
            Ok(file) => {
                let resources = translate::translate(&file);
                tracing::info!(
                    path = %self.path.display(),
                    versions = %resources.versions_summary(),
                    "snapshot file reloaded"
                );
                self.metrics.reload_ok();
                Some(Arc::new(resources))
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "invalid snapshot file; keeping the previous snapshot"
                );
                self.metrics.reload_failed();
                None
            }
        }
    }

    fn stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }

    fn read(&self) -> Result<String, SnapshotError> {
        std::fs::read_to_string(&self.path).map_err(|source| SnapshotError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests;
