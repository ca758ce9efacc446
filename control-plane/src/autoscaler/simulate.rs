//! `ferry-control autoscale simulate`: runs the control plane's own
//! [`Autoscaler`] on a [`ManualClock`] over a scenario and reports every
//! decision.
//!
//! A scenario is JSON, `{"config": {...}, "samples": [...]}` or
//! `{"config": {...}, "ticks": [...]}` (`docs/autoscaling.md`):
//! - `config`: Knative annotation keys without the prefix, plus
//!   `container-concurrency`, `max-scale-up-rate`, `max-scale-down-rate`,
//!   `scale-to-zero-grace-period`, `reachable`; values as strings
//!   ("60s", "70") or plain JSON numbers and booleans;
//! - `samples`: per-second load `{"t", "concurrency", "rps"?, "ready"}`
//!   fed through the real metric windows, with a decision every 2 s from
//!   the first sample;
//! - `ticks`: window averages `{"t", "ready", "stable_avg", "panic_avg"}`,
//!   one decision each.
//!
//! The revision is new at the first entry (not in panic mode, activating
//! at its initial scale), as a freshly deployed revision would be.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{Annotations, GlobalConfig, Metric, RevisionConfig};
use super::{Autoscaler, Stat, TickReport, TICK_INTERVAL};
use crate::clock::ManualClock;

/// A scenario that cannot be run; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    config: BTreeMap<String, serde_json::Value>,
    samples: Option<Vec<Sample>>,
    ticks: Option<Vec<TickEntry>>,
}

/// One second of load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Whole seconds from the scenario's origin.
    pub t: f64,
    /// Revision-wide time-weighted average concurrency in that second.
    pub concurrency: f64,
    /// Requests in that second (needed when `metric` is `rps`).
    #[serde(default)]
    pub rps: Option<f64>,
    /// Ready instances.
    pub ready: u32,
}

/// One decision from given window averages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickEntry {
    pub t: f64,
    pub ready: u32,
    pub stable_avg: f64,
    pub panic_avg: f64,
}

/// One output line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimLine {
    /// Seconds (an integer when whole).
    pub t: serde_json::Value,
    /// The decider's desired instances (-1 before the first decision; the
    /// previous decision when no load was reported for a stable window).
    pub desired: i32,
    pub panic: bool,
    pub stable_avg: f64,
    pub panic_avg: f64,
    pub excess_burst_capacity: i32,
    /// What the applier sets on the scaler.
    pub scale: i32,
    pub ready: u32,
    /// `activating`, `active` or `inactive`.
    pub state: String,
}

impl SimLine {
    fn from_report(t: f64, r: &TickReport) -> Self {
        SimLine {
            t: seconds_value(t),
            desired: r.desired,
            panic: r.panic,
            stable_avg: r.stable_avg,
            panic_avg: r.panic_avg,
            excess_burst_capacity: r.excess_burst_capacity,
            scale: r.scale,
            ready: r.ready,
            state: r.activity.to_string(),
        }
    }
}

fn seconds_value(t: f64) -> serde_json::Value {
    if t.fract() == 0.0 && t.abs() < 9.0e15 {
        serde_json::Value::from(t as i64)
    } else {
        serde_json::Value::from(t)
    }
}

/// Parses and runs a scenario with Knative's global defaults.
pub fn run_scenario(text: &str) -> Result<Vec<SimLine>, ScenarioError> {
    run_scenario_with(text, &GlobalConfig::default())
}

/// Parses and runs a scenario over the given global defaults.
pub fn run_scenario_with(text: &str, global: &GlobalConfig) -> Result<Vec<SimLine>, ScenarioError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let file: ScenarioFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" || path.is_empty() {
            ScenarioError(format!("scenario: {}", e.inner()))
        } else {
            ScenarioError(format!("{path}: {}", e.inner()))
        }
    })?;
    let annotations = config_annotations(&file.config)?;
    // Resolve once here so a bad combination is reported before running.
    let resolved = RevisionConfig::resolve(global, &annotations)
        .map_err(|e| ScenarioError(format!("config.{e}")))?;
    match (file.samples, file.ticks) {
        (Some(samples), None) => {
            run_samples(global, annotations, resolved.decider.metric, &samples)
        }
        (None, Some(ticks)) => run_ticks(global, annotations, &ticks),
        (Some(_), Some(_)) => Err(ScenarioError(
            "scenario: has both \"samples\" and \"ticks\"; give one".into(),
        )),
        (None, None) => Err(ScenarioError(
            "scenario: needs \"samples\" (per-second load) or \"ticks\" (window averages)".into(),
        )),
    }
}

/// `config` values are annotation strings; plain JSON numbers and booleans
/// are accepted and read as their text.
fn config_annotations(
    config: &BTreeMap<String, serde_json::Value>,
) -> Result<Annotations, ScenarioError> {
    let mut map = BTreeMap::new();
    for (k, v) in config {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ScenarioError(format!(
                    "config.{k}: must be a string, number or boolean"
                )))
            }
        };
        map.insert(k.clone(), s);
    }
    Annotations::from_keys(&map).map_err(|e| ScenarioError(format!("config.{e}")))
}

fn non_negative(v: f64, field: &str) -> Result<(), ScenarioError> {
    if !v.is_finite() || v < 0.0 {
        return Err(ScenarioError(format!(
            "{field}: must be a finite number ≥ 0, got {v}"
        )));
    }
    Ok(())
}

/// The key under which the scenario's single revision runs.
const REVISION: u8 = 0;

fn new_autoscaler(
    global: &GlobalConfig,
    annotations: Annotations,
    start: Duration,
) -> Result<(ManualClock, Autoscaler<u8>), ScenarioError> {
    let clock = ManualClock::new();
    clock.set(start);
    let mut a = Autoscaler::new(Arc::new(clock.clone()), global.clone());
    a.upsert(REVISION, annotations)
        .map_err(|e| ScenarioError(format!("config.{e}")))?;
    Ok((clock, a))
}

fn run_samples(
    global: &GlobalConfig,
    annotations: Annotations,
    metric: Metric,
    samples: &[Sample],
) -> Result<Vec<SimLine>, ScenarioError> {
    let mut prev: Option<u64> = None;
    for (i, s) in samples.iter().enumerate() {
        non_negative(s.t, &format!("samples[{i}].t"))?;
        if s.t.fract() != 0.0 {
            return Err(ScenarioError(format!(
                "samples[{i}].t: must be whole seconds, got {}",
                s.t
            )));
        }
        let t = s.t as u64;
        if prev.is_some_and(|p| t <= p) {
            return Err(ScenarioError(format!(
                "samples[{i}].t: must be greater than the previous sample's ({t} after {})",
                prev.unwrap_or_default()
            )));
        }
        prev = Some(t);
        non_negative(s.concurrency, &format!("samples[{i}].concurrency"))?;
        match s.rps {
            Some(r) => non_negative(r, &format!("samples[{i}].rps"))?,
            None if metric == Metric::Rps => {
                return Err(ScenarioError(format!(
                    "samples[{i}].rps: required when metric is rps"
                )))
            }
            None => {}
        }
    }
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Ok(Vec::new());
    };
    let (t0, t_last) = (first.t as u64, last.t as u64);
    let (clock, mut a) = new_autoscaler(global, annotations, Duration::from_secs(t0))?;
    let tick = TICK_INTERVAL.as_secs().max(1);
    let mut next = samples.iter().peekable();
    let mut out = Vec::new();
    for sec in t0..=t_last {
        clock.set(Duration::from_secs(sec));
        if let Some(s) = next.next_if(|s| s.t as u64 == sec) {
            a.set_ready(&REVISION, s.ready);
            let rps = s.rps.unwrap_or(0.0);
            // With no instance and no load nobody reports: a revision at
            // zero sends no stats, which is what lets its windows go empty.
            if s.ready > 0 || s.concurrency > 0.0 || rps > 0.0 {
                let stat = Stat {
                    average_concurrency: s.concurrency,
                    request_count: rps,
                    ..Stat::default()
                };
                // A poke (load at zero) decides at once, as in the control
                // plane. It prints as its own line unless a tick follows in
                // the same second (whose line then shows the same state).
                if let Some(r) = a.record(&REVISION, &stat) {
                    if (sec - t0) % tick != 0 {
                        out.push(SimLine::from_report(sec as f64, &r));
                    }
                }
            }
        }
        if (sec - t0) % tick == 0 {
            // A sample is a complete second, and the control plane decides
            // on complete seconds only: the decision for second `sec` is
            // made at its end.
            clock.set(Duration::from_secs(sec + 1));
            for (_, r) in a.tick() {
                out.push(SimLine::from_report(sec as f64, &r));
            }
        }
    }
    Ok(out)
}

fn run_ticks(
    global: &GlobalConfig,
    annotations: Annotations,
    ticks: &[TickEntry],
) -> Result<Vec<SimLine>, ScenarioError> {
    let mut prev: Option<f64> = None;
    for (i, e) in ticks.iter().enumerate() {
        non_negative(e.t, &format!("ticks[{i}].t"))?;
        if prev.is_some_and(|p| e.t < p) {
            return Err(ScenarioError(format!(
                "ticks[{i}].t: must not be before the previous tick's"
            )));
        }
        prev = Some(e.t);
        non_negative(e.stable_avg, &format!("ticks[{i}].stable_avg"))?;
        non_negative(e.panic_avg, &format!("ticks[{i}].panic_avg"))?;
    }
    let Some(first) = ticks.first() else {
        return Ok(Vec::new());
    };
    let (clock, mut a) = new_autoscaler(global, annotations, Duration::from_secs_f64(first.t))?;
    let mut out = Vec::with_capacity(ticks.len());
    for e in ticks {
        clock.set(Duration::from_secs_f64(e.t));
        if let Some(r) = a.tick_with_averages(&REVISION, e.ready, e.stable_avg, e.panic_avg) {
            out.push(SimLine::from_report(e.t, &r));
        }
    }
    Ok(out)
}

/// Formats lines as the CLI prints them: one JSON object per line.
pub fn to_json_lines(lines: &[SimLine]) -> String {
    let mut s = String::new();
    for l in lines {
        // A SimLine has only strings, numbers and booleans: it always
        // serializes.
        if let Ok(j) = serde_json::to_string(l) {
            s.push_str(&j);
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match run_scenario(text) {
            Err(e) => e.0,
            Ok(l) => panic!("accepted: {l:?}"),
        }
    }

    #[test]
    fn malformed_scenarios_name_the_field() {
        assert!(err("{").starts_with("scenario:"));
        assert!(err(r#"{"config": {}}"#).contains("needs \"samples\""));
        assert!(err(r#"{"samples": [], "ticks": []}"#).contains("both"));
        assert!(err(r#"{"samples": [{"t": 0, "concurrency": 1}]}"#).starts_with("samples[0]"));
        let e = err(
            r#"{"samples": [{"t": 0, "concurrency": 1, "ready": 1}, {"t": 2, "concurrency": "x", "ready": 1}]}"#,
        );
        assert!(e.starts_with("samples[1].concurrency"), "{e}");
        let e = err(
            r#"{"samples": [{"t": 3, "concurrency": 1, "ready": 1}, {"t": 2, "concurrency": 1, "ready": 1}]}"#,
        );
        assert!(e.starts_with("samples[1].t"), "{e}");
        let e = err(r#"{"samples": [{"t": 0.5, "concurrency": 1, "ready": 1}]}"#);
        assert!(e.starts_with("samples[0].t"), "{e}");
        let e = err(
            r#"{"config": {"metric": "rps"}, "samples": [{"t": 0, "concurrency": 1, "ready": 1}]}"#,
        );
        assert!(e.starts_with("samples[0].rps"), "{e}");
        let e = err(r#"{"config": {"window": "60"}, "ticks": []}"#);
        assert!(e.starts_with("config.window"), "{e}");
        let e = err(r#"{"config": {"target": [1]}, "ticks": []}"#);
        assert!(e.starts_with("config.target"), "{e}");
        let e = err(r#"{"config": {"min-scale": 4, "max-scale": 2}, "ticks": []}"#);
        assert!(e.starts_with("config.max-scale"), "{e}");
        let e = err(r#"{"ticks": [{"t": 0, "ready": 1, "stable_avg": -1, "panic_avg": 0}]}"#);
        assert!(e.starts_with("ticks[0].stable_avg"), "{e}");
        let e = err(
            r#"{"ticks": [{"t": 0, "ready": 1, "stable_avg": 1, "panic_avg": 0, "extra": 1}]}"#,
        );
        assert!(e.starts_with("ticks[0]"), "{e}");
    }

    fn example(name: &str) -> Vec<SimLine> {
        let text = match name {
            "steady" => include_str!("../../../examples/autoscale/steady.json"),
            "burst" => include_str!("../../../examples/autoscale/burst.json"),
            "idle-to-zero" => include_str!("../../../examples/autoscale/idle-to-zero.json"),
            "ticks" => include_str!("../../../examples/autoscale/ticks.json"),
            _ => panic!("no example {name}"),
        };
        match run_scenario(text) {
            Ok(lines) => lines,
            Err(e) => panic!("{name}: {e}"),
        }
    }

    fn at(lines: &[SimLine], t: i64) -> &SimLine {
        match lines.iter().find(|l| l.t.as_i64() == Some(t)) {
            Some(l) => l,
            None => panic!("no line at t={t}"),
        }
    }

    /// (desired, panic, scale, state) of the line at `t`.
    fn dps(lines: &[SimLine], t: i64) -> (i32, bool, i32, &str) {
        let l = at(lines, t);
        (l.desired, l.panic, l.scale, l.state.as_str())
    }

    // Concurrency 210 on the default target 100 × 70 % = 70: ⌈210/70⌉ = 3
    // at every tick (every 2 s over 0..=60 s: 31 lines), never panicking.
    #[test]
    fn steady_example() {
        let lines = example("steady");
        assert_eq!(lines.len(), 31);
        for l in &lines {
            assert_eq!(
                (l.desired, l.panic, l.scale, l.stable_avg),
                (3, false, 3, 210.0),
                "{l:?}"
            );
            // 3 × 100 − 211 − 210.
            assert_eq!(l.excess_burst_capacity, -121);
        }
    }

    // A 4× burst at 60 s on 1 instance: the 6 s panic window sees it first
    // ((5 × 70 + 280) / 6 = 105 → 2 instances, 2/1 ≥ 200 % → panic), up to
    // 4 by 64 s; panic holds 4 until a stable window after the last tick
    // over the threshold (62 s: 175/70 → 3 on 1 ready), so it ends at 124 s
    // and the stable average (157.5 → 3) takes over, then 2 at 130 s.
    #[test]
    fn burst_example() {
        let lines = example("burst");
        assert_eq!(lines.len(), 76);
        assert_eq!(dps(&lines, 58), (1, false, 1, "active"));
        assert_eq!(dps(&lines, 60), (2, true, 2, "active"));
        assert_eq!(at(&lines, 60).panic_avg, 105.0);
        assert_eq!(dps(&lines, 62), (3, true, 3, "active"));
        assert_eq!(dps(&lines, 64), (4, true, 4, "active"));
        for t in (64..=122).step_by(2) {
            assert_eq!(dps(&lines, t), (4, true, 4, "active"), "t={t}");
        }
        assert_eq!(dps(&lines, 124), (3, false, 3, "active"));
        assert_eq!(dps(&lines, 130), (2, false, 2, "active"));
        assert_eq!(dps(&lines, 150), (2, false, 2, "active"));
    }

    // Load stops after 29 s. The stable average reaches 0 at 90 s (the last
    // loaded second leaves the 60 s window): desired 0, and the revision,
    // active for more than a stable window, goes inactive at once. The
    // grace period (10 s here) ends at 100 s: scale 0. A request at 130 s
    // (no instance ready) pokes an immediate decision of 1; ready at 134 s.
    #[test]
    fn idle_to_zero_example() {
        let lines = example("idle-to-zero");
        assert_eq!(dps(&lines, 28), (1, false, 1, "active"));
        assert_eq!(dps(&lines, 88), (1, false, 1, "active"));
        assert_eq!(dps(&lines, 90), (0, false, 1, "inactive"));
        assert_eq!(dps(&lines, 98), (0, false, 1, "inactive"));
        assert_eq!(dps(&lines, 100), (0, false, 0, "inactive"));
        assert_eq!(dps(&lines, 128), (0, false, 0, "inactive"));
        assert_eq!(dps(&lines, 130), (1, false, 1, "activating"));
        assert_eq!(dps(&lines, 134), (1, false, 1, "active"));
        assert_eq!(lines.len(), 71);
    }

    // The ticks form, decision by decision (target 100 × 70 % = 70):
    // 50 → 1; panic 200 → 3 pods on 1 ready ≥ 200 % → panic, 3; panic 150
    // on 3 ready is below the threshold but panic holds, max(2, 3) = 3;
    // panic 400 → 6 on 3 ready re-arms panic at 6 s, 6; at 30 s the need
    // (2) is below the mark, 6 held; at 68 s (> 6 + 60) panic ends, stable
    // 90 → 2, but the down-rate allows only 6 / 2 = 3; at 70 s from 3 ready
    // 2 is allowed.
    #[test]
    fn ticks_example() {
        let lines = example("ticks");
        let got: Vec<(i64, i32, bool, i32, i32)> = lines
            .iter()
            .map(|l| {
                (
                    l.t.as_i64().unwrap_or(-1),
                    l.desired,
                    l.panic,
                    l.scale,
                    l.excess_burst_capacity,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 1, false, 1, -161),
                (2, 3, true, 3, -311),
                (4, 3, true, 3, -61),
                (6, 6, true, 6, -311),
                (30, 6, true, 6, 329),
                (68, 3, false, 3, 329),
                (70, 2, false, 2, 29),
            ]
        );
    }

    #[test]
    fn config_accepts_numbers_strings_and_booleans() {
        let r = run_scenario(
            r#"{"config": {"target": 10, "target-utilization-percentage": "50", "reachable": false,
                "window": "6s"},
                "ticks": [{"t": 0, "ready": 1, "stable_avg": 12, "panic_avg": 12}]}"#,
        );
        let lines = r.unwrap_or_default();
        // target 10 × 50 % = 5: 12 / 5 → 3.
        assert_eq!(lines.first().map(|l| l.desired), Some(3));
    }
}
