//! Trigger filters, compiled once when a trigger is loaded.
//!
//! Two dialects, as Knative has them:
//! - `spec.filter.attributes`: every listed attribute must equal the given
//!   value; the value `""` means "any value, but the attribute must be
//!   set".
//! - `spec.filters` (the Subscriptions API dialects): a list of `exact`,
//!   `prefix`, `suffix`, `all`, `any`, `not` and `cesql` filters, all of
//!   which must pass. When `spec.filters` is non-empty `spec.filter` is
//!   ignored, as in Knative.
//!
//! Results are three-valued like Knative's (pass, fail, no filter), so an
//! empty `all`/`any` is neutral rather than failing, and `not` of a
//! neutral filter stays neutral. At the top, neutral passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cesql::Expression;
use super::event::Event;
use crate::model::FieldError;

/// One entry of `spec.filters`, as written in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsApiFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<SubscriptionsApiFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<SubscriptionsApiFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exact: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefix: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suffix: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cesql: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    NoFilter,
}

#[derive(Clone, Debug)]
enum Node {
    Attributes(Vec<(String, String)>),
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Cesql(Box<Expression>),
    None,
}

/// A compiled trigger filter.
#[derive(Clone, Debug)]
pub struct Filter {
    root: Node,
}

impl Filter {
    /// Passes everything.
    pub fn none() -> Filter {
        Filter { root: Node::None }
    }

    /// Compiles a trigger's filters; errors name the field path.
    pub fn compile(
        attributes: Option<&BTreeMap<String, String>>,
        filters: &[SubscriptionsApiFilter],
    ) -> Result<Filter, FieldError> {
        if !filters.is_empty() {
            let nodes = filters
                .iter()
                .enumerate()
                .map(|(i, f)| compile_one(f, &format!("spec.filters[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Filter {
                root: Node::All(nodes),
            });
        }
        match attributes {
            Some(a) if !a.is_empty() => {
                for k in a.keys() {
                    check_attr_name(k, "spec.filter.attributes")?;
                }
                Ok(Filter {
                    root: Node::Attributes(a.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                })
            }
            _ => Ok(Filter::none()),
        }
    }

    pub fn matches(&self, ev: &Event) -> bool {
        eval(&self.root, ev) != Verdict::Fail
    }
}

/// Knative's rule for filter keys: a lowercase letter, then lowercase
/// letters or digits.
fn check_attr_name(name: &str, path: &str) -> Result<(), FieldError> {
    let mut b = name.bytes();
    let ok = b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            format!("{path}.{name}"),
            "attribute names must start with a letter and be lowercase alphanumeric",
        ))
    }
}

fn pairs(m: &BTreeMap<String, String>, path: &str) -> Result<Vec<(String, String)>, FieldError> {
    m.iter()
        .map(|(k, v)| {
            check_attr_name(k, path)?;
            if v.is_empty() {
                return Err(FieldError::new(
                    format!("{path}.{k}"),
                    "value must not be empty",
                ));
            }
            Ok((k.clone(), v.clone()))
        })
        .collect()
}

fn compile_one(f: &SubscriptionsApiFilter, path: &str) -> Result<Node, FieldError> {
    let dialects = usize::from(!f.all.is_empty())
        + usize::from(!f.any.is_empty())
        + usize::from(f.not.is_some())
        + usize::from(!f.exact.is_empty())
        + usize::from(!f.prefix.is_empty())
        + usize::from(!f.suffix.is_empty())
        + usize::from(f.cesql.is_some());
    if dialects > 1 {
        return Err(FieldError::new(
            path,
            "multiple dialects found, filters can have only one dialect set",
        ));
    }
    let list = |v: &[SubscriptionsApiFilter], name: &str| {
        v.iter()
            .enumerate()
            .map(|(i, f)| compile_one(f, &format!("{path}.{name}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(if !f.all.is_empty() {
        Node::All(list(&f.all, "all")?)
    } else if !f.any.is_empty() {
        Node::Any(list(&f.any, "any")?)
    } else if let Some(n) = &f.not {
        Node::Not(Box::new(compile_one(n, &format!("{path}.not"))?))
    } else if !f.exact.is_empty() {
        Node::Exact(pairs(&f.exact, &format!("{path}.exact"))?)
    } else if !f.prefix.is_empty() {
        Node::Prefix(pairs(&f.prefix, &format!("{path}.prefix"))?)
    } else if !f.suffix.is_empty() {
        Node::Suffix(pairs(&f.suffix, &format!("{path}.suffix"))?)
    } else if let Some(src) = &f.cesql {
        Node::Cesql(Box::new(Expression::parse(src).map_err(|e| {
            FieldError::new(format!("{path}.cesql"), e.to_string())
        })?))
    } else {
        Node::None
    })
}

fn each(pairs: &[(String, String)], ev: &Event, ok: impl Fn(&str, &str) -> bool) -> Verdict {
    for (k, want) in pairs {
        match ev.get_str(k) {
            Some(v) if ok(&v, want) => {}
            _ => return Verdict::Fail,
        }
    }
    Verdict::Pass
}

fn eval(n: &Node, ev: &Event) -> Verdict {
    match n {
        Node::None => Verdict::NoFilter,
        Node::Attributes(p) => each(p, ev, |v, want| {
            if want.is_empty() {
                !v.is_empty()
            } else {
                v == want
            }
        }),
        Node::Exact(p) => each(p, ev, |v, want| v == want),
        Node::Prefix(p) => each(p, ev, |v, want| v.starts_with(want)),
        Node::Suffix(p) => each(p, ev, |v, want| v.ends_with(want)),
        Node::Cesql(x) => {
            if x.matches(ev) {
                Verdict::Pass
            } else {
                Verdict::Fail
            }
        }
        Node::All(ns) => {
            let mut r = Verdict::NoFilter;
            for n in ns {
                match eval(n, ev) {
                    Verdict::Fail => return Verdict::Fail,
                    Verdict::Pass => r = Verdict::Pass,
                    Verdict::NoFilter => {}
                }
            }
            r
        }
        Node::Any(ns) => {
            let mut r = Verdict::NoFilter;
            for n in ns {
                match eval(n, ev) {
                    Verdict::Pass => return Verdict::Pass,
                    Verdict::Fail => r = Verdict::Fail,
                    Verdict::NoFilter => {}
                }
            }
            r
        }
        Node::Not(n) => match eval(n, ev) {
            Verdict::Pass => Verdict::Fail,
            Verdict::Fail => Verdict::Pass,
            Verdict::NoFilter => Verdict::NoFilter,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        let mut e = Event::new("1", "/orders/eu", "com.example.order.created");
        e.set("region", "eu-west");
        e
    }

    fn f(yaml: &str) -> Filter {
        let filters: Vec<SubscriptionsApiFilter> = serde_norway::from_str(yaml).expect("yaml");
        Filter::compile(None, &filters).expect("compile")
    }

    fn attrs(pairs: &[(&str, &str)]) -> Filter {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Filter::compile(Some(&m), &[]).expect("compile")
    }

    #[test]
    fn attributes_filter_with_any_value() {
        let e = ev();
        assert!(attrs(&[]).matches(&e));
        assert!(attrs(&[("type", "com.example.order.created")]).matches(&e));
        assert!(!attrs(&[("type", "other")]).matches(&e));
        assert!(attrs(&[("region", "")]).matches(&e));
        assert!(!attrs(&[("missing", "")]).matches(&e));
        assert!(!attrs(&[("subject", "")]).matches(&e));
        assert!(!attrs(&[("type", "com.example.order.created"), ("region", "us")]).matches(&e));
    }

    #[test]
    fn subscriptions_api_dialects() {
        let e = ev();
        for (yaml, want) in [
            ("[{exact: {type: com.example.order.created}}]", true),
            ("[{exact: {type: com.example.order}}]", false),
            ("[{prefix: {type: com.example.}}]", true),
            ("[{prefix: {missing: x}}]", false),
            ("[{suffix: {source: /eu}}]", true),
            ("[{suffix: {source: /us}}]", false),
            ("[{not: {exact: {region: us-east}}}]", true),
            (
                "[{all: [{prefix: {type: com.}}, {suffix: {type: .created}}]}]",
                true,
            ),
            (
                "[{all: [{prefix: {type: com.}}, {suffix: {type: .deleted}}]}]",
                false,
            ),
            (
                "[{any: [{exact: {region: us}}, {exact: {region: eu-west}}]}]",
                true,
            ),
            (
                "[{any: [{exact: {region: us}}, {exact: {region: ap}}]}]",
                false,
            ),
            ("[{cesql: \"region LIKE 'eu-%' AND type != 'x'\"}]", true),
            ("[{cesql: \"missing = 'x'\"}]", false),
            ("[{prefix: {type: com.}}, {exact: {region: us}}]", false),
            ("[{}]", true),
            ("[{not: {}}]", true),
        ] {
            assert_eq!(f(yaml).matches(&e), want, "{yaml}");
        }
    }

    #[test]
    fn filters_win_over_filter() {
        let m: BTreeMap<String, String> = [("type".to_owned(), "nope".to_owned())].into();
        let filters: Vec<SubscriptionsApiFilter> =
            serde_norway::from_str("[{prefix: {type: com.}}]").expect("yaml");
        assert!(Filter::compile(Some(&m), &filters)
            .expect("ok")
            .matches(&ev()));
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = |yaml: &str| {
            let filters: Vec<SubscriptionsApiFilter> = serde_norway::from_str(yaml).expect("yaml");
            Filter::compile(None, &filters).expect_err(yaml).to_string()
        };
        assert!(bad("[{exact: {type: a}, prefix: {type: b}}]").contains("multiple dialects"));
        assert!(bad("[{exact: {type: ''}}]").contains("spec.filters[0].exact.type"));
        assert!(bad("[{exact: {Type: a}}]").contains("spec.filters[0].exact.Type"));
        let e = bad("[{all: [{cesql: 'a = '}]}]");
        assert!(
            e.contains("spec.filters[0].all[0].cesql: at position 4"),
            "{e}"
        );
    }
}
