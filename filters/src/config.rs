//! The config shapes every filter shares: a chain entry, a per-route
//! override, and the value types (durations, percentages) filters use.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FilterConfigError;

/// One entry of a listener's `http_filters`.
///
/// `config` stays untyped until the named filter's factory parses it: the
/// proxy's YAML loader does not know the filters' schemas, and a config
/// dump shows it as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Off unless a route enables it (Envoy's `HttpFilter.disabled`): the
    /// way to have a filter only on some routes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

/// A virtual host's or route's override of one filter of the chain, keyed
/// by the filter's name (Envoy's `typed_per_filter_config`).
///
/// `{disabled: true}` turns the filter off; `{config: ...}` replaces its
/// config (a new instance: a rate limit configured here has its own
/// buckets); `{}` or `{disabled: false}` turns on a filter the listener
/// declared `disabled`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerFilterConfig {
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Parses a filter's untyped config into its typed form; an absent config
/// (`null`) reads as an empty map. A type error comes back with its path
/// relative to the config (`abort.http_status`).
pub fn parse_config<T: DeserializeOwned>(value: &Value) -> Result<T, Vec<FilterConfigError>> {
    let empty;
    let value = if value.is_null() {
        empty = Value::Object(serde_json::Map::new());
        &empty
    } else {
        value
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![FilterConfigError::new(path, e.into_inner().to_string())]
    })
}

// === Durations ===

/// Parses `"<number><unit>"` with unit `ms`, `s`, `m` or `h` (or no unit:
/// seconds), the same spelling as the proxy's config. Fractions are allowed;
/// negative values are not.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: expected e.g. \"15s\" or \"250ms\""
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: bad number {num:?}"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A config duration: `"2s"`, `"250ms"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"2s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|v| Dur(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                if v.is_finite() && (0.0..1e9).contains(&v) {
                    Ok(Dur(Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom("a duration must be between 0 and 1e9 seconds"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

// === Percentages ===

/// A probability in parts per million. Written either as a percentage
/// (`percentage: 12.5`) or in Envoy's `FractionalPercent` form
/// (`percentage: {numerator: 125, denominator: TEN_THOUSAND}` — denominator
/// `HUNDRED` (default), `TEN_THOUSAND` or `MILLION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent {
    /// Parts per million, 0..=1_000_000.
    pub ppm: u32,
}

pub(crate) const MILLION: u32 = 1_000_000;

impl Percent {
    pub const ALL: Percent = Percent { ppm: MILLION };

    /// Draws once: true with this probability.
    pub(crate) fn sample(self, random: u64) -> bool {
        // u64 % 1e6 has a bias of ~1e-13; irrelevant for fault injection.
        (random % u64::from(MILLION)) < u64::from(self.ppm)
    }

    /// `min(self, percent)` for a header-requested percentage.
    pub(crate) fn from_percent(percent: f64) -> Option<Percent> {
        if percent.is_finite() && (0.0..=100.0).contains(&percent) {
            // At most 1e6, so the cast is exact.
            Some(Percent {
                ppm: (percent * 10_000.0).round() as u32,
            })
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fractional {
    numerator: u32,
    #[serde(default)]
    denominator: Denominator,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Denominator {
    #[default]
    Hundred,
    TenThousand,
    Million,
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage (0-100) or {numerator, denominator}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Percent::from_percent(v)
                    .ok_or_else(|| E::custom(format!("percentage {v} is not between 0 and 100")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Percent, A::Error> {
                let f = Fractional::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let scale = match f.denominator {
                    Denominator::Hundred => 10_000,
                    Denominator::TenThousand => 100,
                    Denominator::Million => 1,
                };
                // Envoy caps a numerator above its denominator at 100%.
                let ppm = f.numerator.saturating_mul(scale).min(MILLION);
                Ok(Percent { ppm })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_forms() {
        let p = |v: Value| parse_config::<Percent>(&v);
        assert_eq!(p(serde_json::json!(12.5)), Ok(Percent { ppm: 125_000 }));
        assert_eq!(p(serde_json::json!(100)), Ok(Percent::ALL));
        assert_eq!(
            p(serde_json::json!({"numerator": 5})),
            Ok(Percent { ppm: 50_000 })
        );
        assert_eq!(
            p(serde_json::json!({"numerator": 5, "denominator": "TEN_THOUSAND"})),
            Ok(Percent { ppm: 500 })
        );
        assert_eq!(
            p(serde_json::json!({"numerator": 7, "denominator": "MILLION"})),
            Ok(Percent { ppm: 7 })
        );
        assert_eq!(
            p(serde_json::json!({"numerator": 500})),
            Ok(Percent::ALL),
            "capped as Envoy does"
        );
        assert!(p(serde_json::json!(101)).is_err());
        assert!(p(serde_json::json!(-1)).is_err());
        assert!(p(serde_json::json!({"numerator": 1, "denominator": "THOUSAND"})).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3 days").is_err());
        assert_eq!(
            parse_config::<Dur>(&serde_json::json!("2m")),
            Ok(Dur(Duration::from_secs(120)))
        );
    }
}
