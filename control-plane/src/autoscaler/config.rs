//! Autoscaling configuration: the cluster-wide defaults (Knative's
//! `config-autoscaler` ConfigMap keys, [`GlobalConfig`]) and the per-revision
//! `autoscaling.knative.dev/*` annotations ([`Annotations`]), resolved into
//! what the decider, the applier and the metric windows need
//! ([`RevisionConfig`]).
//!
//! Every value arrives as a string, as annotations do ("70", "60s", "0.5");
//! every error names the key it is about. Defaults and valid ranges are
//! Knative's (`pkg/autoscaler/config/config.go`,
//! `pkg/apis/autoscaling/annotation_validation.go`); where Knative's webhook
//! would reject an annotation we reject it too, rather than silently
//! ignoring it as Knative's runtime getters do.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The annotation group; [`Annotations::from_annotations`] strips it.
pub const ANNOTATION_PREFIX: &str = "autoscaling.knative.dev/";
/// Knative's only autoscaler class this crate implements.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
/// How often the decider runs (Knative's `tickInterval`), which is also the
/// slot size of the scale-down delay window.
pub const TICK_INTERVAL: Duration = Duration::from_secs(2);
/// Knative adds this to the progress deadline before giving up on an
/// activation (`activationTimeoutBuffer`).
pub const ACTIVATION_TIMEOUT_BUFFER: Duration = Duration::from_secs(30);

/// Smallest target (`autoscaling.TargetMin`).
const TARGET_MIN: f64 = 0.01;
const WINDOW_MIN: Duration = Duration::from_secs(6);
const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// A configuration value that cannot be used; `key` is the annotation or
/// config key (without the annotation prefix).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The scaling metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// In-flight requests per instance (the default).
    Concurrency,
    /// Requests per second per instance.
    Rps,
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Concurrency => "concurrency",
            Metric::Rps => "rps",
        })
    }
}

/// How a window's per-second buckets are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// Plain average (Knative's default).
    #[default]
    Linear,
    /// Exponentially decaying weights, newest heaviest.
    WeightedExponential,
}

/// Cluster-wide defaults: Knative's `config-autoscaler` keys, plus
/// `progress-deadline` (Knative's `config-deployment`), which bounds how long
/// a revision may stay activating.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub enable_scale_to_zero: bool,
    pub allow_zero_initial_scale: bool,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    /// Target utilization for `concurrency`, as a fraction.
    pub container_concurrency_target_fraction: f64,
    pub container_concurrency_target_default: f64,
    /// Target utilization for `rps`, as a fraction. Knative has no key for
    /// it (fixed 0.7); only the annotation overrides it.
    pub rps_target_utilization: f64,
    pub rps_target_default: f64,
    pub target_burst_capacity: f64,
    pub panic_window_percentage: f64,
    pub activator_capacity: f64,
    pub panic_threshold_percentage: f64,
    pub stable_window: Duration,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub scale_down_delay: Duration,
    pub initial_scale: i32,
    pub min_scale: i32,
    pub max_scale: i32,
    pub max_scale_limit: i32,
    pub progress_deadline: Duration,
}

impl Default for GlobalConfig {
    /// Knative's defaults (`defaultConfig` in `config.go`). Note that
    /// Knative's target burst capacity default is 211, not the 200 its docs
    /// round to.
    fn default() -> Self {
        GlobalConfig {
            enable_scale_to_zero: true,
            allow_zero_initial_scale: false,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            container_concurrency_target_fraction: 0.7,
            container_concurrency_target_default: 100.0,
            rps_target_utilization: 0.7,
            rps_target_default: 200.0,
            target_burst_capacity: 211.0,
            panic_window_percentage: 10.0,
            activator_capacity: 100.0,
            panic_threshold_percentage: 200.0,
            stable_window: Duration::from_secs(60),
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            initial_scale: 1,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            progress_deadline: Duration::from_secs(600),
        }
    }
}

/// The keys [`GlobalConfig::from_map`] accepts.
pub const GLOBAL_KEYS: &[&str] = &[
    "enable-scale-to-zero",
    "allow-zero-initial-scale",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "container-concurrency-target-percentage",
    "container-concurrency-target-default",
    "requests-per-second-target-default",
    "target-burst-capacity",
    "panic-window-percentage",
    "activator-capacity",
    "panic-threshold-percentage",
    "stable-window",
    "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period",
    "scale-down-delay",
    "initial-scale",
    "min-scale",
    "max-scale",
    "max-scale-limit",
    "progress-deadline",
    // Knative's class key; only the KPA is implemented.
    "pod-autoscaler-class",
];

impl GlobalConfig {
    /// Parses `config-autoscaler` keys over the defaults; unknown keys are
    /// an error (a typo must not silently keep a default).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut c = GlobalConfig::default();
        for (k, v) in map {
            let v = v.trim();
            match k.as_str() {
                "enable-scale-to-zero" => c.enable_scale_to_zero = parse_bool(k, v)?,
                "allow-zero-initial-scale" => c.allow_zero_initial_scale = parse_bool(k, v)?,
                "max-scale-up-rate" => c.max_scale_up_rate = parse_f64(k, v)?,
                "max-scale-down-rate" => c.max_scale_down_rate = parse_f64(k, v)?,
                "container-concurrency-target-percentage" => {
                    // Knative accepts a fraction in (0, 1] for legacy reasons
                    // and a percentage above that.
                    let f = parse_f64(k, v)?;
                    c.container_concurrency_target_fraction = if f > 1.0 { f / 100.0 } else { f };
                }
                "container-concurrency-target-default" => {
                    c.container_concurrency_target_default = parse_f64(k, v)?
                }
                "requests-per-second-target-default" => c.rps_target_default = parse_f64(k, v)?,
                "target-burst-capacity" => c.target_burst_capacity = parse_f64(k, v)?,
                "panic-window-percentage" => c.panic_window_percentage = parse_f64(k, v)?,
                "activator-capacity" => c.activator_capacity = parse_f64(k, v)?,
                "panic-threshold-percentage" => c.panic_threshold_percentage = parse_f64(k, v)?,
                "stable-window" => c.stable_window = parse_duration(k, v)?,
                "scale-to-zero-grace-period" => {
                    c.scale_to_zero_grace_period = parse_duration(k, v)?
                }
                "scale-to-zero-pod-retention-period" => {
                    c.scale_to_zero_pod_retention_period = parse_duration(k, v)?
                }
                "scale-down-delay" => c.scale_down_delay = parse_duration(k, v)?,
                "initial-scale" => c.initial_scale = parse_i32(k, v)?,
                "min-scale" => c.min_scale = parse_i32(k, v)?,
                "max-scale" => c.max_scale = parse_i32(k, v)?,
                "max-scale-limit" => c.max_scale_limit = parse_i32(k, v)?,
                "progress-deadline" => c.progress_deadline = parse_duration(k, v)?,
                "pod-autoscaler-class" => {
                    if v != KPA_CLASS {
                        return Err(ConfigError::new(
                            k,
                            format!("{v:?}: only {KPA_CLASS:?} is supported"),
                        ));
                    }
                }
                _ => {
                    return Err(ConfigError::new(
                        k,
                        format!("unknown key (known: {})", GLOBAL_KEYS.join(", ")),
                    ))
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Knative's `validate` for the ConfigMap.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
        if c.scale_to_zero_grace_period.is_zero() {
            return Err(ConfigError::new(
                "scale-to-zero-grace-period",
                "must be positive",
            ));
        }
        check_whole_seconds("scale-down-delay", c.scale_down_delay)?;
        if c.target_burst_capacity < 0.0 && c.target_burst_capacity != -1.0 {
            return Err(ConfigError::new(
                "target-burst-capacity",
                format!(
                    "{} must be non-negative or -1 (unlimited)",
                    c.target_burst_capacity
                ),
            ));
        }
        let f = c.container_concurrency_target_fraction;
        if f <= 0.0 || f > 1.0 {
            return Err(ConfigError::new(
                "container-concurrency-target-percentage",
                format!("{f} is outside of (0, 100]"),
            ));
        }
        if f * c.container_concurrency_target_default < TARGET_MIN {
            return Err(ConfigError::new(
                "container-concurrency-target-default",
                format!(
                    "target concurrency {} is below {TARGET_MIN}",
                    f * c.container_concurrency_target_default
                ),
            ));
        }
        if c.rps_target_default < TARGET_MIN {
            return Err(ConfigError::new(
                "requests-per-second-target-default",
                format!("must be at least {TARGET_MIN}"),
            ));
        }
        if c.activator_capacity < 1.0 {
            return Err(ConfigError::new("activator-capacity", "must be at least 1"));
        }
        if c.max_scale_up_rate <= 1.0 {
            return Err(ConfigError::new(
                "max-scale-up-rate",
                "must be greater than 1.0",
            ));
        }
        if c.max_scale_down_rate <= 1.0 {
            return Err(ConfigError::new(
                "max-scale-down-rate",
                "must be greater than 1.0",
            ));
        }
        check_window("stable-window", c.stable_window)?;
        check_range(
            "panic-window-percentage",
            c.panic_window_percentage,
            1.0,
            100.0,
        )?;
        check_range(
            "panic-threshold-percentage",
            c.panic_threshold_percentage,
            110.0,
            1000.0,
        )?;
        if c.initial_scale < 0 || (c.initial_scale == 0 && !c.allow_zero_initial_scale) {
            return Err(ConfigError::new(
                "initial-scale",
                format!(
                    "{} must be at least 1 (or 0 with allow-zero-initial-scale)",
                    c.initial_scale
                ),
            ));
        }
        if c.min_scale < 0 {
            return Err(ConfigError::new("min-scale", "must be at least 0"));
        }
        if c.max_scale_limit < 0 {
            return Err(ConfigError::new("max-scale-limit", "must be at least 0"));
        }
        let min_max = if c.max_scale_limit > 0 { 1 } else { 0 };
        if c.max_scale < min_max || (c.max_scale_limit > 0 && c.max_scale > c.max_scale_limit) {
            return Err(ConfigError::new(
                "max-scale",
                format!(
                    "{} must be in [{min_max}, max-scale-limit {}]",
                    c.max_scale, c.max_scale_limit
                ),
            ));
        }
        if c.max_scale > 0 && c.min_scale > c.max_scale {
            return Err(ConfigError::new(
                "min-scale",
                format!("{} is greater than max-scale {}", c.min_scale, c.max_scale),
            ));
        }
        Ok(())
    }
}

/// The per-revision keys: Knative's annotation names without the prefix,
/// plus Ferry's extras (`container-concurrency`, `reachable`,
/// `max-scale-up-rate`, `max-scale-down-rate`, `scale-to-zero-grace-period`)
/// that override the global value for one revision.
pub const REVISION_KEYS: &[&str] = &[
    "class",
    "metric",
    "target",
    "target-utilization-percentage",
    "target-burst-capacity",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "min-scale",
    "max-scale",
    "initial-scale",
    "activation-scale",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "metric-aggregation-algorithm",
    "scale-to-zero-grace-period",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "container-concurrency",
    "reachable",
];

/// Knative's legacy camelCase spellings, read when the canonical key is
/// absent (Knative's `KeyPriority`).
pub const LEGACY_KEYS: &[(&str, &str)] = &[
    ("initialScale", "initial-scale"),
    ("maxScale", "max-scale"),
    ("minScale", "min-scale"),
    ("metricAggregationAlgorithm", "metric-aggregation-algorithm"),
    ("panicThresholdPercentage", "panic-threshold-percentage"),
    ("panicWindowPercentage", "panic-window-percentage"),
    ("scaleDownDelay", "scale-down-delay"),
    (
        "scaleToZeroPodRetentionPeriod",
        "scale-to-zero-pod-retention-period",
    ),
    ("targetBurstCapacity", "target-burst-capacity"),
    (
        "targetUtilizationPercentage",
        "target-utilization-percentage",
    ),
];

/// A revision's autoscaling settings as written; `None` takes the global
/// default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    pub metric: Option<Metric>,
    pub target: Option<f64>,
    /// As a fraction (the annotation is a percentage).
    pub target_utilization: Option<f64>,
    pub target_burst_capacity: Option<f64>,
    pub window: Option<Duration>,
    pub panic_window_percentage: Option<f64>,
    pub panic_threshold_percentage: Option<f64>,
    pub min_scale: Option<i32>,
    pub max_scale: Option<i32>,
    pub initial_scale: Option<i32>,
    pub activation_scale: Option<i32>,
    pub scale_down_delay: Option<Duration>,
    pub scale_to_zero_pod_retention_period: Option<Duration>,
    pub aggregation: Option<Aggregation>,
    pub scale_to_zero_grace_period: Option<Duration>,
    pub max_scale_up_rate: Option<f64>,
    pub max_scale_down_rate: Option<f64>,
    /// The revision's `containerConcurrency` (0 = unlimited).
    pub container_concurrency: Option<u32>,
    /// Whether a route sends traffic to the revision.
    pub reachable: Option<bool>,
}

impl Annotations {
    /// From a manifest's annotations: keys under `autoscaling.knative.dev/`
    /// are read (unknown ones ignored, as Knative does), everything else is
    /// not ours.
    pub fn from_annotations<'a>(
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut bare = BTreeMap::new();
        for (k, v) in annotations {
            if let Some(key) = k.strip_prefix(ANNOTATION_PREFIX) {
                let known = REVISION_KEYS.contains(&key)
                    || LEGACY_KEYS.iter().any(|(legacy, _)| *legacy == key);
                if known {
                    bare.insert(key.to_string(), v.to_string());
                }
            }
        }
        Self::from_keys(&bare)
    }

    /// From bare keys (no prefix), strictly: an unknown key is an error
    /// (used for scenarios and the global config, where a typo matters).
    pub fn from_keys(map: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut a = Annotations::default();
        // Canonical keys first; a legacy key only fills what is still unset.
        let mut entries: Vec<(&str, &str, &str)> = Vec::new();
        for (k, v) in map {
            if REVISION_KEYS.contains(&k.as_str()) {
                entries.push((k, k, v));
            }
        }
        for (k, v) in map {
            if let Some((_, canon)) = LEGACY_KEYS.iter().find(|(l, _)| *l == k.as_str()) {
                if !map.contains_key(*canon) {
                    entries.push((k, canon, v));
                }
            } else if !REVISION_KEYS.contains(&k.as_str()) {
                return Err(ConfigError::new(
                    k.as_str(),
                    format!("unknown key (known: {})", REVISION_KEYS.join(", ")),
                ));
            }
        }
        for (key, canon, v) in entries {
            let v = v.trim();
            match canon {
                "class" => {
                    if v != KPA_CLASS {
                        return Err(ConfigError::new(
                            key,
                            format!("{v:?}: only {KPA_CLASS:?} is supported"),
                        ));
                    }
                }
                "metric" => {
                    a.metric = Some(match v {
                        "concurrency" => Metric::Concurrency,
                        "rps" => Metric::Rps,
                        _ => {
                            return Err(ConfigError::new(
                                key,
                                format!("{v:?}: must be \"concurrency\" or \"rps\""),
                            ))
                        }
                    })
                }
                "target" => {
                    let t = parse_f64(key, v)?;
                    if t < TARGET_MIN {
                        return Err(ConfigError::new(
                            key,
                            format!("{v} should be at least {TARGET_MIN}"),
                        ));
                    }
                    a.target = Some(t);
                }
                "target-utilization-percentage" => {
                    let p = parse_f64(key, v)?;
                    check_range(key, p, 1.0, 100.0)?;
                    a.target_utilization = Some(p / 100.0);
                }
                "target-burst-capacity" => {
                    let t = parse_f64(key, v)?;
                    if t < 0.0 && t != -1.0 {
                        return Err(ConfigError::new(
                            key,
                            format!("{v}: must be non-negative or -1 (unlimited)"),
                        ));
                    }
                    a.target_burst_capacity = Some(t);
                }
                "window" => {
                    let d = parse_duration(key, v)?;
                    check_window(key, d)?;
                    a.window = Some(d);
                }
                "panic-window-percentage" => {
                    let p = parse_f64(key, v)?;
                    check_range(key, p, 1.0, 100.0)?;
                    a.panic_window_percentage = Some(p);
                }
                "panic-threshold-percentage" => {
                    let p = parse_f64(key, v)?;
                    check_range(key, p, 110.0, 1000.0)?;
                    a.panic_threshold_percentage = Some(p);
                }
                "min-scale" => a.min_scale = Some(parse_scale(key, v)?),
                "max-scale" => a.max_scale = Some(parse_scale(key, v)?),
                "initial-scale" => a.initial_scale = Some(parse_scale(key, v)?),
                "activation-scale" => a.activation_scale = Some(parse_i32(key, v)?),
                "scale-down-delay" => {
                    let d = parse_duration(key, v)?;
                    if d > WINDOW_MAX {
                        return Err(ConfigError::new(key, format!("{v}: must be in [0s, 1h]")));
                    }
                    check_whole_seconds(key, d)?;
                    a.scale_down_delay = Some(d);
                }
                "scale-to-zero-pod-retention-period" => {
                    let d = parse_duration(key, v)?;
                    if d > WINDOW_MAX {
                        return Err(ConfigError::new(key, format!("{v}: must be in [0s, 1h]")));
                    }
                    a.scale_to_zero_pod_retention_period = Some(d);
                }
                "metric-aggregation-algorithm" => {
                    a.aggregation = Some(match v {
                        "linear" => Aggregation::Linear,
                        "weighted-exponential" | "weightedExponential" => {
                            Aggregation::WeightedExponential
                        }
                        _ => {
                            return Err(ConfigError::new(
                                key,
                                format!("{v:?}: must be \"linear\" or \"weighted-exponential\""),
                            ))
                        }
                    })
                }
                "scale-to-zero-grace-period" => {
                    let d = parse_duration(key, v)?;
                    if d.is_zero() {
                        return Err(ConfigError::new(key, "must be positive"));
                    }
                    a.scale_to_zero_grace_period = Some(d);
                }
                "max-scale-up-rate" => {
                    let r = parse_f64(key, v)?;
                    if r <= 1.0 {
                        return Err(ConfigError::new(
                            key,
                            format!("{v}: must be greater than 1.0"),
                        ));
                    }
                    a.max_scale_up_rate = Some(r);
                }
                "max-scale-down-rate" => {
                    let r = parse_f64(key, v)?;
                    if r <= 1.0 {
                        return Err(ConfigError::new(
                            key,
                            format!("{v}: must be greater than 1.0"),
                        ));
                    }
                    a.max_scale_down_rate = Some(r);
                }
                "container-concurrency" => {
                    let cc = parse_i32(key, v)?;
                    a.container_concurrency = Some(u32::try_from(cc).map_err(|_| {
                        ConfigError::new(key, format!("{v}: must be at least 0 (0 = unlimited)"))
                    })?);
                }
                "reachable" => a.reachable = Some(parse_bool(key, v)?),
                // Every canonical key is matched above; REVISION_KEYS and
                // this match are kept in step by the tests.
                _ => return Err(ConfigError::new(key, "unknown key")),
            }
        }
        Ok(a)
    }
}

/// Keys of [`REVISION_KEYS`] that come from the revision itself, never
/// from an annotation, and where they come from.
const DERIVED_KEYS: &[(&str, &str)] = &[
    (
        "container-concurrency",
        "set by spec.template.spec.containerConcurrency, not by an annotation",
    ),
    (
        "reachable",
        "follows the route's traffic, not an annotation",
    ),
];

/// Knative's webhook check of a template's `autoscaling.knative.dev/*`
/// annotations (`ValidateAnnotations`), against the cluster's defaults
/// (`allow-zero-initial-scale`, `max-scale-limit`): every key must be one
/// the autoscaler reads (Knative's, their legacy camelCase spellings, and
/// Ferry's per-revision `scale-to-zero-grace-period`, `max-scale-up-rate`,
/// `max-scale-down-rate`), each value parses within Knative's bounds, and
/// the keys agree with each other (min ≤ max, activation-scale within
/// them). Non-autoscaling annotations are ignored.
///
/// The very parsers the autoscaler runs on decide, so what passes here is
/// what a revision's autoscaler gets. Each error's key is the annotation's
/// own spelling, without the prefix.
pub fn validate_annotations<'a>(
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    global: &GlobalConfig,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut valid = BTreeMap::new();
    for (k, v) in annotations {
        let Some(key) = k.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        if let Some((_, why)) = DERIVED_KEYS.iter().find(|(d, _)| *d == key) {
            errors.push(ConfigError::new(key, *why));
            continue;
        }
        let known =
            REVISION_KEYS.contains(&key) || LEGACY_KEYS.iter().any(|(legacy, _)| *legacy == key);
        if !known {
            errors.push(ConfigError::new(
                key,
                format!("unknown autoscaling annotation {k:?}"),
            ));
            continue;
        }
        let one = BTreeMap::from([(key.to_string(), v.to_string())]);
        match Annotations::from_keys(&one) {
            Ok(_) => {
                valid.insert(key.to_string(), v.to_string());
            }
            Err(e) => errors.push(e),
        }
    }
    // The cross-key rules, over the values that parsed.
    let resolved = Annotations::from_keys(&valid).and_then(|a| RevisionConfig::resolve(global, &a));
    if let Err(mut e) = resolved {
        // Name the key as the manifest spells it.
        if !valid.contains_key(&e.key) {
            if let Some((legacy, _)) = LEGACY_KEYS
                .iter()
                .find(|(l, canon)| *canon == e.key && valid.contains_key(*l))
            {
                e.key = (*legacy).to_string();
            }
        }
        errors.push(e);
    }
    errors
}

/// What the decider needs (Knative's `DeciderSpec`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeciderSpec {
    pub metric: Metric,
    /// Per-instance value aimed for: total × utilization.
    pub target_value: f64,
    /// Per-instance value an instance can take.
    pub total_value: f64,
    pub target_burst_capacity: f64,
    pub activator_capacity: f64,
    /// As a factor (200 % = 2.0).
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub stable_window: Duration,
    pub scale_down_delay: Duration,
    pub initial_scale: i32,
    pub reachable: bool,
    /// 0 when unset.
    pub activation_scale: i32,
}

/// What the applier needs (Knative's PA scale bounds and scale-to-zero
/// settings).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSpec {
    /// 0 = no lower bound. Ignored (0) when the revision is unreachable.
    pub min_scale: i32,
    /// 0 = unbounded.
    pub max_scale: i32,
    pub initial_scale: i32,
    pub reachable: bool,
    pub enable_scale_to_zero: bool,
    pub stable_window: Duration,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    /// How long a revision may stay activating before it is given up and
    /// scaled to zero (progress deadline + 30 s).
    pub activation_timeout: Duration,
    pub activation_scale: i32,
}

/// The metric windows' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub stable: Duration,
    pub panic: Duration,
    pub aggregation: Aggregation,
}

/// Everything one revision's autoscaler runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionConfig {
    pub decider: DeciderSpec,
    pub scale: ScaleSpec,
    pub windows: WindowSpec,
}

impl RevisionConfig {
    /// Knative's defaults for a reachable revision with no annotations.
    pub fn defaults() -> Self {
        // The default configuration is valid; the fallback can only be hit
        // if the defaults above are edited into an invalid state.
        Self::resolve(&GlobalConfig::default(), &Annotations::default())
            .unwrap_or_else(|e| panic!("built-in autoscaler defaults are invalid: {e}"))
    }

    /// Resolves annotations over the global defaults the way Knative's KPA
    /// reconciler does (`MakeDecider`, `ResolveMetricTarget`, `MakeMetric`,
    /// `ScaleBounds`, `GetInitialScale`), checking the cross-key rules.
    pub fn resolve(global: &GlobalConfig, a: &Annotations) -> Result<Self, ConfigError> {
        let metric = a.metric.unwrap_or(Metric::Concurrency);
        let cc = f64::from(a.container_concurrency.unwrap_or(0));
        let reachable = a.reachable.unwrap_or(true);

        // ResolveMetricTarget.
        let (mut total, mut tu) = match metric {
            Metric::Rps => (global.rps_target_default, global.rps_target_utilization),
            Metric::Concurrency => (
                if cc == 0.0 {
                    global.container_concurrency_target_default
                } else {
                    cc
                },
                global.container_concurrency_target_fraction,
            ),
        };
        if let Some(t) = a.target {
            // Never aim above what containerConcurrency lets an instance take.
            total = if metric == Metric::Concurrency && cc != 0.0 {
                t.min(cc)
            } else {
                t
            };
        }
        if let Some(u) = a.target_utilization {
            tu = u;
        }
        let target_value = (total * tu).max(TARGET_MIN);

        let stable_window = a.window.unwrap_or(global.stable_window);
        let panic_pct = a
            .panic_window_percentage
            .unwrap_or(global.panic_window_percentage);
        // MakeMetric: rounded to the second, at least one bucket.
        let panic_secs = (stable_window.as_secs_f64() * panic_pct / 100.0)
            .round()
            .max(1.0);
        let panic_window = Duration::from_secs_f64(panic_secs);

        let initial_scale = match a.initial_scale {
            Some(0) if !global.allow_zero_initial_scale => {
                return Err(ConfigError::new(
                    "initial-scale",
                    "0 is not allowed unless allow-zero-initial-scale is set",
                ))
            }
            Some(i) => i,
            None => global.initial_scale,
        };
        let min_scale = a.min_scale.unwrap_or(global.min_scale);
        let max_scale = a.max_scale.unwrap_or(global.max_scale);
        if max_scale != 0 && max_scale < min_scale {
            return Err(ConfigError::new(
                "max-scale",
                format!("{max_scale} is less than min-scale {min_scale}"),
            ));
        }
        if a.max_scale.is_some() && global.max_scale_limit > 0 {
            if max_scale == 0 {
                return Err(ConfigError::new(
                    "max-scale",
                    format!(
                        "0 (unlimited) must be at most max-scale-limit {}",
                        global.max_scale_limit
                    ),
                ));
            }
            if max_scale > global.max_scale_limit {
                return Err(ConfigError::new(
                    "max-scale",
                    format!(
                        "{max_scale} exceeds max-scale-limit {}",
                        global.max_scale_limit
                    ),
                ));
            }
        }
        let activation_scale = match a.activation_scale {
            None => 0,
            Some(n) => {
                if min_scale > n {
                    return Err(ConfigError::new(
                        "activation-scale",
                        format!("min-scale {min_scale} is greater than activation-scale {n}"),
                    ));
                }
                if max_scale != 0 && max_scale < n {
                    return Err(ConfigError::new(
                        "activation-scale",
                        format!("max-scale {max_scale} is less than activation-scale {n}"),
                    ));
                }
                if n < 2 {
                    return Err(ConfigError::new(
                        "activation-scale",
                        format!("{n} must be greater than 1"),
                    ));
                }
                n
            }
        };
        let panic_threshold = a
            .panic_threshold_percentage
            .unwrap_or(global.panic_threshold_percentage)
            / 100.0;
        let tbc = a
            .target_burst_capacity
            .unwrap_or(global.target_burst_capacity);
        let scale_down_delay = a.scale_down_delay.unwrap_or(global.scale_down_delay);
        let retention = a
            .scale_to_zero_pod_retention_period
            .unwrap_or(global.scale_to_zero_pod_retention_period);

        Ok(RevisionConfig {
            decider: DeciderSpec {
                metric,
                target_value,
                total_value: total,
                target_burst_capacity: tbc,
                activator_capacity: global.activator_capacity,
                panic_threshold,
                max_scale_up_rate: a.max_scale_up_rate.unwrap_or(global.max_scale_up_rate),
                max_scale_down_rate: a.max_scale_down_rate.unwrap_or(global.max_scale_down_rate),
                stable_window,
                scale_down_delay,
                initial_scale,
                reachable,
                activation_scale,
            },
            scale: ScaleSpec {
                // ScaleBounds: min-scale does not hold an unreachable revision.
                min_scale: if reachable { min_scale } else { 0 },
                max_scale,
                initial_scale,
                reachable,
                enable_scale_to_zero: global.enable_scale_to_zero,
                stable_window,
                scale_to_zero_grace_period: a
                    .scale_to_zero_grace_period
                    .unwrap_or(global.scale_to_zero_grace_period),
                scale_to_zero_pod_retention_period: retention,
                activation_timeout: global.progress_deadline + ACTIVATION_TIMEOUT_BUFFER,
                activation_scale,
            },
            windows: WindowSpec {
                stable: stable_window,
                panic: panic_window,
                aggregation: a.aggregation.unwrap_or_default(),
            },
        })
    }
}

fn parse_f64(key: &str, v: &str) -> Result<f64, ConfigError> {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(ConfigError::new(key, format!("{v:?} is not a number"))),
    }
}

fn parse_i32(key: &str, v: &str) -> Result<i32, ConfigError> {
    v.parse::<i32>()
        .map_err(|_| ConfigError::new(key, format!("{v:?} is not a 32-bit integer")))
}

/// A scale bound: a non-negative integer.
fn parse_scale(key: &str, v: &str) -> Result<i32, ConfigError> {
    let n = parse_i32(key, v)?;
    if n < 0 {
        return Err(ConfigError::new(key, format!("{n} must be at least 0")));
    }
    Ok(n)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::new(key, format!("{v:?} is not true or false"))),
    }
}

fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(v).map_err(|why| ConfigError::new(key, format!("{v:?}: {why}")))
}

fn check_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if !(lo..=hi).contains(&v) {
        return Err(ConfigError::new(
            key,
            format!("{v} must be in [{lo}, {hi}]"),
        ));
    }
    Ok(())
}

fn check_whole_seconds(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.subsec_nanos() != 0 {
        return Err(ConfigError::new(
            key,
            format!("{d:?} must be specified with at most second precision"),
        ));
    }
    Ok(())
}

fn check_window(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d < WINDOW_MIN || d > WINDOW_MAX {
        return Err(ConfigError::new(key, format!("{d:?} must be in [6s, 1h]")));
    }
    check_whole_seconds(key, d)
}

/// Parses a duration the way Go's `time.ParseDuration` does (annotation
/// values are Go durations): a sequence of decimal numbers with units `ns`,
/// `us`/`µs`, `ms`, `s`, `m`, `h` ("60s", "1m30s", "1.5h", "500ms"), or a
/// bare "0". Negative durations are rejected: no setting takes one.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if let Some(rest) = s.strip_prefix('-') {
        // Go accepts "-0s"; anything below zero is no valid setting.
        return match parse_go_duration(rest) {
            Ok(d) if d.is_zero() => Ok(Duration::ZERO),
            Ok(_) => Err("must not be negative".into()),
            Err(e) => Err(e),
        };
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err("expected a number, like \"60s\"".into());
        }
        let value: f64 = num.parse().map_err(|_| format!("bad number {num:?}"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("missing unit (ns, us, ms, s, m, h), like \"60s\"".into()),
            other => return Err(format!("unknown unit {other:?}")),
        };
        total_nanos += value * scale;
        rest = next;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err("too large".into());
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("60").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("-5s").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn knative_defaults() {
        let c = RevisionConfig::defaults();
        assert_eq!(c.decider.metric, Metric::Concurrency);
        assert_eq!(c.decider.total_value, 100.0);
        assert_eq!(c.decider.target_value, 70.0);
        assert_eq!(c.decider.panic_threshold, 2.0);
        assert_eq!(c.decider.max_scale_up_rate, 1000.0);
        assert_eq!(c.decider.max_scale_down_rate, 2.0);
        assert_eq!(c.decider.target_burst_capacity, 211.0);
        assert_eq!(c.windows.stable, Duration::from_secs(60));
        assert_eq!(c.windows.panic, Duration::from_secs(6));
        assert_eq!(c.scale.scale_to_zero_grace_period, Duration::from_secs(30));
        assert_eq!(c.scale.initial_scale, 1);
        assert!(c.decider.reachable);
    }

    #[test]
    fn targets_resolve_like_knative() {
        let g = GlobalConfig::default();
        // rps: total 200 × the fixed 70 % utilization.
        let a = Annotations::from_keys(&keys(&[("metric", "rps")])).unwrap_or_default();
        let c = RevisionConfig::resolve(&g, &a).ok();
        assert_eq!(c.map(|c| c.decider.target_value), Some(140.0));
        // containerConcurrency caps the target annotation.
        let a = Annotations::from_keys(&keys(&[
            ("target", "50"),
            ("container-concurrency", "10"),
            ("target-utilization-percentage", "80"),
        ]));
        let c = a.and_then(|a| RevisionConfig::resolve(&g, &a));
        assert_eq!(
            c.map(|c| (c.decider.total_value, c.decider.target_value)),
            Ok((10.0, 8.0))
        );
        // containerConcurrency alone is the total.
        let a = Annotations::from_keys(&keys(&[("container-concurrency", "4")]));
        let c = a.and_then(|a| RevisionConfig::resolve(&g, &a));
        assert_eq!(c.map(|c| c.decider.target_value), Ok(4.0 * 0.7));
        // Panic window: 10 % of 45 s rounds to 5 s (4.5 rounds half away).
        let a = Annotations::from_keys(&keys(&[("window", "45s")]));
        let c = a.and_then(|a| RevisionConfig::resolve(&g, &a));
        assert_eq!(c.map(|c| c.windows.panic), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = [
            (("target", "x"), "target"),
            (("window", "60"), "window"),
            (("window", "5s"), "window"),
            (
                ("panic-threshold-percentage", "100"),
                "panic-threshold-percentage",
            ),
            (("target-burst-capacity", "-2"), "target-burst-capacity"),
            (("metric", "cpu"), "metric"),
            (("min-scale", "-1"), "min-scale"),
            (("activation-scale", "1"), "activation-scale"),
            (("max-scale-down-rate", "1"), "max-scale-down-rate"),
            (("scale-down-delay", "1.5s"), "scale-down-delay"),
            (("reachable", "maybe"), "reachable"),
            (("targt", "10"), "targt"),
        ];
        for ((k, v), want) in bad {
            let r = Annotations::from_keys(&keys(&[(k, v)]))
                .and_then(|a| RevisionConfig::resolve(&GlobalConfig::default(), &a));
            match r {
                Err(e) => assert_eq!(e.key, want, "{k}={v}: {e}"),
                Ok(_) => panic!("{k}={v} accepted"),
            }
        }
        let r = Annotations::from_keys(&keys(&[("min-scale", "3"), ("max-scale", "2")]))
            .and_then(|a| RevisionConfig::resolve(&GlobalConfig::default(), &a));
        assert_eq!(r.err().map(|e| e.key), Some("max-scale".to_string()));
    }

    #[test]
    fn prefixed_annotations_and_legacy_keys() {
        let anns = [
            ("autoscaling.knative.dev/minScale", "2"),
            ("autoscaling.knative.dev/max-scale", "5"),
            ("autoscaling.knative.dev/maxScale", "9"),
            ("autoscaling.knative.dev/unknown-thing", "x"),
            ("example.com/other", "y"),
        ];
        let a = Annotations::from_annotations(anns.iter().copied());
        assert_eq!(
            a.as_ref().map(|a| (a.min_scale, a.max_scale)),
            Ok((Some(2), Some(5)))
        );
    }

    #[test]
    fn global_config_parses_and_validates() {
        let g = GlobalConfig::from_map(&keys(&[
            ("container-concurrency-target-percentage", "80"),
            ("stable-window", "2m"),
            ("enable-scale-to-zero", "false"),
        ]));
        let g = g.unwrap_or_default();
        assert_eq!(g.container_concurrency_target_fraction, 0.8);
        assert_eq!(g.stable_window, Duration::from_secs(120));
        assert!(!g.enable_scale_to_zero);
        let e = GlobalConfig::from_map(&keys(&[("max-scale-up-rate", "1")]));
        assert_eq!(
            e.err().map(|e| e.key),
            Some("max-scale-up-rate".to_string())
        );
        let e = GlobalConfig::from_map(&keys(&[("nope", "1")]));
        assert_eq!(e.err().map(|e| e.key), Some("nope".to_string()));
    }

    #[test]
    fn every_revision_key_parses() {
        let samples: BTreeMap<&str, &str> = [
            ("class", KPA_CLASS),
            ("metric", "rps"),
            ("target", "10"),
            ("target-utilization-percentage", "50"),
            ("target-burst-capacity", "-1"),
            ("window", "30s"),
            ("panic-window-percentage", "20"),
            ("panic-threshold-percentage", "300"),
            ("min-scale", "1"),
            ("max-scale", "10"),
            ("initial-scale", "2"),
            ("activation-scale", "3"),
            ("scale-down-delay", "10s"),
            ("scale-to-zero-pod-retention-period", "1m"),
            ("metric-aggregation-algorithm", "weighted-exponential"),
            ("scale-to-zero-grace-period", "10s"),
            ("max-scale-up-rate", "10"),
            ("max-scale-down-rate", "4"),
            ("container-concurrency", "5"),
            ("reachable", "false"),
        ]
        .into_iter()
        .collect();
        for k in REVISION_KEYS {
            assert!(samples.contains_key(k), "no sample for {k}");
        }
        let map = samples
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let a = Annotations::from_keys(&map);
        let c = a.and_then(|a| RevisionConfig::resolve(&GlobalConfig::default(), &a));
        let c = c.map_err(|e| e.to_string());
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            assert_eq!(c.decider.target_value, 5.0);
            assert_eq!(c.windows.panic, Duration::from_secs(6));
            assert_eq!(
                c.scale.min_scale, 0,
                "min-scale does not hold an unreachable revision"
            );
            assert_eq!(c.windows.aggregation, Aggregation::WeightedExponential);
        }
    }
}
