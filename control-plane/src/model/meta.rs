//! What every object has: Kubernetes-shaped metadata, status conditions,
//! and the name rules (DNS-1035 / DNS-1123) Knative inherits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::FieldErrors;

/// The namespace objects land in when the manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Kubernetes `ObjectMeta`, with the fields Ferry reads typed and every
/// other field (`managedFields`, `finalizers`, …) kept as written, so a
/// manifest exported with `kubectl get -o yaml` is accepted unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Bumped by the control plane on every spec change; ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The store's version of the object. On input it is a precondition:
    /// an apply carrying a stale one is refused with 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// RFC 3339, UTC; set at creation, ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

/// `True`, `False` or `Unknown`, as Kubernetes spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A Knative status condition. `reason` is a CamelCase word for
/// programs, `message` a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Condition {
    pub fn truthy(type_: &str) -> Condition {
        Condition {
            type_: type_.to_string(),
            status: ConditionStatus::True,
            reason: String::new(),
            message: String::new(),
        }
    }

    pub fn with(type_: &str, status: ConditionStatus, reason: &str, message: String) -> Condition {
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The condition of `type_` in `conditions`, if present.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Knative's "living" condition set: `Ready` is True when every dependent
/// condition is, else it takes the first False one (reason and message),
/// else the first Unknown one. Returns `Ready` followed by the dependents.
pub fn living_conditions(dependents: Vec<Condition>) -> Vec<Condition> {
    let ready = dependents
        .iter()
        .find(|c| c.status == ConditionStatus::False)
        .or_else(|| {
            dependents
                .iter()
                .find(|c| c.status == ConditionStatus::Unknown)
        })
        .map(|c| Condition {
            type_: "Ready".to_string(),
            ..c.clone()
        })
        .unwrap_or_else(|| Condition::truthy("Ready"));
    let mut out = vec![ready];
    out.extend(dependents);
    out
}

/// DNS-1035 label: lowercase letters, digits and `-`, starting with a
/// letter, ending with a letter or digit, at most 63 characters. Knative's
/// rule for names that become host labels (services, routes, tags).
pub fn check_dns1035_label(value: &str) -> Result<(), String> {
    check_label(value, true)
}

/// DNS-1123 label: as DNS-1035 but may start with a digit (namespaces).
pub fn check_dns1123_label(value: &str) -> Result<(), String> {
    check_label(value, false)
}

fn check_label(value: &str, letter_first: bool) -> Result<(), String> {
    let kind = if letter_first { "1035" } else { "1123" };
    if value.is_empty() {
        return Err(format!("not a DNS-{kind} label: must not be empty"));
    }
    if value.len() > 63 {
        return Err(format!(
            "not a DNS-{kind} label: {value:?} is {} characters long, at most 63 allowed",
            value.len()
        ));
    }
    let bytes = value.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || (!letter_first && b.is_ascii_digit()));
    let last_ok = bytes
        .last()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_chars && first_ok && last_ok {
        Ok(())
    } else {
        let start = if letter_first {
            "start with a lowercase letter"
        } else {
            "start with a lowercase letter or digit"
        };
        Err(format!(
            "not a DNS-{kind} label: {value:?} must consist of lowercase letters, digits and '-', \
             {start} and end with a letter or digit"
        ))
    }
}

/// Validates `metadata.name` (as a DNS-1035 label) and `metadata.namespace`
/// (a DNS-1123 label, once defaulted), under `path`.
pub fn validate_name_and_namespace(meta: &ObjectMeta, path: &str, errs: &mut FieldErrors) {
    if meta.name.is_empty() {
        errs.push(format!("{path}.name"), "missing field");
    } else if let Err(e) = check_dns1035_label(&meta.name) {
        errs.push(format!("{path}.name"), e);
    }
    if !meta.namespace.is_empty() {
        if let Err(e) = check_dns1123_label(&meta.namespace) {
            errs.push(format!("{path}.namespace"), e);
        }
    }
}

/// A name derived from a parent (`hello` + `-00001`), kept to 63
/// characters: a parent too long is cut and a hash of the whole keeps
/// names distinct, as Knative's `kmeta.ChildName` does.
pub fn child_name(parent: &str, suffix: &str) -> String {
    let full = format!("{parent}{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = format!("{:016x}", xxhash_rust::xxh64::xxh64(full.as_bytes(), 0));
    let keep = 63usize.saturating_sub(hash.len() + suffix.len());
    // Names are ASCII (validated), so byte slicing is on char boundaries;
    // `get` keeps it panic-free regardless.
    let head = parent.get(..keep.min(parent.len())).unwrap_or("");
    let head = head.trim_end_matches('-');
    format!("{head}{hash}{suffix}")
}

/// Now as RFC 3339 UTC, second precision (`2026-04-01T12:00:00Z`).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Unix seconds → RFC 3339 UTC (proleptic Gregorian; Howard Hinnant's
/// days-to-civil algorithm, so no date crate is needed for one format).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(0);
    let rem = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// RFC 3339 UTC (as [`rfc3339`] writes it) → unix seconds; `None` for
/// anything else. Used for the AGE column.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A unique id in UUID format. Not a random UUID (no RNG dependency): a
/// hash of the time, the process id and a counter, unique enough to tell
/// a recreated object from its predecessor.
pub fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{nanos}/{}/{n}", std::process::id());
    let a = xxhash_rust::xxh64::xxh64(seed.as_bytes(), 1);
    let b = xxhash_rust::xxh64::xxh64(seed.as_bytes(), 2);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}
