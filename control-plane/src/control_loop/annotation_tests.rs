//! Every autoscaling annotation a manifest may carry reaches the revision's
//! autoscaler: manifest → apply (validated) → stored Revision →
//! [`revision_annotations`] → the resolved [`RevisionConfig`] the control
//! loop's autoscaler runs on.

use std::time::Duration;

use super::revision_annotations;
use crate::autoscaler::config::{Aggregation, KPA_CLASS, LEGACY_KEYS, REVISION_KEYS};
use crate::autoscaler::{GlobalConfig, Metric, RevisionConfig};
use crate::model::manifest;
use crate::model::reconcile::{plan_service_apply, Existing};
use crate::model::serving::Revision;
use crate::model::Manifest;

/// The revision one apply of a Service with these template annotations
/// and `containerConcurrency` stamps.
fn revision(annotations: &[(&str, &str)], container_concurrency: u32) -> Revision {
    let mut anns = String::new();
    for (k, v) in annotations {
        anns.push_str(&format!("        autoscaling.knative.dev/{k}: \"{v}\"\n"));
    }
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: tuned}}
spec:
  template:
    metadata:
      annotations:
        example.com/not-ours: \"kept\"
{anns}    spec:
      containerConcurrency: {container_concurrency}
      containers: [{{command: [ferry-hello]}}]
"
    );
    let svc = match manifest::parse(&yaml) {
        Ok(mut v) if v.len() == 1 => match v.remove(0) {
            Manifest::Service(s) => s,
            other => panic!("not a service: {other:?}"),
        },
        other => panic!("bad manifest: {other:?}"),
    };
    let plan = plan_service_apply(
        svc,
        &Existing::default(),
        &GlobalConfig::default(),
        "2026-01-01T00:00:00Z",
    )
    .unwrap_or_else(|e| panic!("{annotations:?} refused: {e}"));
    plan.new_revision
        .unwrap_or_else(|| panic!("no revision stamped"))
}

fn config_of(rev: &Revision) -> RevisionConfig {
    revision_annotations(rev, true)
        .and_then(|a| RevisionConfig::resolve(&GlobalConfig::default(), &a))
        .unwrap_or_else(|e| panic!("autoscaler refused the revision: {e}"))
}

/// What a key set to a non-default value must change in the revision's
/// config, read back as text.
type Read = fn(&RevisionConfig) -> String;

/// One case per canonical key: a value other than the default, and where
/// it must show up.
fn cases() -> Vec<(&'static str, &'static str, Read, String)> {
    vec![
        (
            "metric",
            "rps",
            |c| format!("{:?}", c.decider.metric),
            format!("{:?}", Metric::Rps),
        ),
        (
            "target",
            "10",
            |c| c.decider.total_value.to_string(),
            "10".into(),
        ),
        (
            "target-utilization-percentage",
            "50",
            |c| c.decider.target_value.to_string(),
            "50".into(),
        ),
        (
            "target-burst-capacity",
            "-1",
            |c| c.decider.target_burst_capacity.to_string(),
            "-1".into(),
        ),
        (
            "window",
            "20s",
            |c| {
                format!(
                    "{:?} {:?} {:?}",
                    c.windows.stable, c.decider.stable_window, c.scale.stable_window
                )
            },
            "20s 20s 20s".into(),
        ),
        (
            "panic-window-percentage",
            "20",
            |c| format!("{:?}", c.windows.panic),
            format!("{:?}", Duration::from_secs(12)),
        ),
        (
            "panic-threshold-percentage",
            "300",
            |c| c.decider.panic_threshold.to_string(),
            "3".into(),
        ),
        (
            "min-scale",
            "2",
            |c| c.scale.min_scale.to_string(),
            "2".into(),
        ),
        (
            "max-scale",
            "7",
            |c| c.scale.max_scale.to_string(),
            "7".into(),
        ),
        (
            "initial-scale",
            "3",
            |c| format!("{} {}", c.scale.initial_scale, c.decider.initial_scale),
            "3 3".into(),
        ),
        (
            "activation-scale",
            "2",
            |c| {
                format!(
                    "{} {}",
                    c.scale.activation_scale, c.decider.activation_scale
                )
            },
            "2 2".into(),
        ),
        (
            "scale-down-delay",
            "10s",
            |c| format!("{:?}", c.decider.scale_down_delay),
            "10s".into(),
        ),
        (
            "scale-to-zero-pod-retention-period",
            "1m",
            |c| format!("{:?}", c.scale.scale_to_zero_pod_retention_period),
            "60s".into(),
        ),
        (
            "metric-aggregation-algorithm",
            "weighted-exponential",
            |c| format!("{:?}", c.windows.aggregation),
            format!("{:?}", Aggregation::WeightedExponential),
        ),
        (
            "scale-to-zero-grace-period",
            "7s",
            |c| format!("{:?}", c.scale.scale_to_zero_grace_period),
            "7s".into(),
        ),
        (
            "max-scale-up-rate",
            "10",
            |c| c.decider.max_scale_up_rate.to_string(),
            "10".into(),
        ),
        (
            "max-scale-down-rate",
            "4",
            |c| c.decider.max_scale_down_rate.to_string(),
            "4".into(),
        ),
    ]
}

#[test]
fn every_annotation_key_reaches_the_revisions_autoscaler() {
    let defaults = RevisionConfig::defaults();
    for (key, value, read, want) in cases() {
        let rev = revision(&[(key, value)], 0);
        let got = read(&config_of(&rev));
        assert_eq!(got, want, "{key}: {value:?}");
        assert_ne!(
            read(&defaults),
            want,
            "{key}: the case must differ from the default to prove anything"
        );
    }
}

/// Knative's legacy camelCase spellings reach the same fields.
#[test]
fn legacy_spellings_reach_the_same_fields() {
    let cases = cases();
    for (legacy, canon) in LEGACY_KEYS {
        let Some((_, value, read, want)) = cases.iter().find(|c| c.0 == *canon) else {
            panic!("no case for {canon} (legacy {legacy})");
        };
        let rev = revision(&[(legacy, value)], 0);
        assert_eq!(read(&config_of(&rev)), *want, "{legacy}: {value:?}");
    }
}

/// The table covers every key the autoscaler takes from an annotation;
/// the other two come from the revision itself.
#[test]
fn the_cases_cover_every_annotation_key() {
    let cases = cases();
    for key in REVISION_KEYS {
        match *key {
            // Only one class exists: nothing to change, but it is accepted.
            "class" => {
                let rev = revision(&[("class", KPA_CLASS)], 0);
                assert_eq!(config_of(&rev), RevisionConfig::defaults());
            }
            "container-concurrency" | "reachable" => {}
            _ => assert!(
                cases.iter().any(|c| c.0 == *key),
                "no manifest case for {key}"
            ),
        }
    }
}

/// `containerConcurrency` and reachability come from the revision and its
/// routes: a concurrency of 4 is the target total without a `target`
/// annotation, and an unreachable revision is not held at `min-scale`.
#[test]
fn container_concurrency_and_reachability_come_from_the_revision() {
    let rev = revision(&[("min-scale", "2")], 4);
    let c = config_of(&rev);
    assert_eq!(
        (c.decider.total_value, c.scale.min_scale, c.scale.reachable),
        (4.0, 2, true)
    );
    let unreachable = revision_annotations(&rev, false)
        .and_then(|a| RevisionConfig::resolve(&GlobalConfig::default(), &a))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (unreachable.scale.min_scale, unreachable.scale.reachable),
        (0, false)
    );
}
