//! The explicit table of filter names and factories, and the build of
//! chains and per-route views from config.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::chain::{FilterChain, FilterRef, Resolved, RouteFilters};
use crate::config::{FilterSpec, PerFilterConfig};
use crate::env::FilterEnv;
use crate::error::{Errors, FilterConfigError};
use crate::{buffer, cors, fault, header_mutation, local_ratelimit, rbac, HttpFilter};

/// Builds one filter instance from its untyped config. Error paths are
/// relative to the config (`abort.http_status`).
pub type BuildFn = fn(&Value, &FilterEnv) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>>;

/// Filter name → factory, plus the clock and RNG every filter is built
/// with. Made once at startup (in the proxy's `app`), not a global.
#[derive(Clone, Debug)]
pub struct Registry {
    table: Vec<(&'static str, BuildFn)>,
    env: FilterEnv,
}

impl Registry {
    /// The built-in filters, on the given clock and RNG.
    pub fn new(env: FilterEnv) -> Registry {
        let table: Vec<(&'static str, BuildFn)> = vec![
            (buffer::NAME, buffer::build),
            (cors::NAME, cors::build),
            (fault::NAME, fault::build),
            (header_mutation::NAME, header_mutation::build),
            (local_ratelimit::NAME, local_ratelimit::build),
            (rbac::NAME, rbac::build),
        ];
        Registry { table, env }
    }

    /// The built-in filters on the system clock and a thread-local RNG.
    pub fn builtin() -> Registry {
        Registry::new(FilterEnv::default())
    }

    /// Adds (or replaces) a filter type.
    pub fn register(&mut self, name: &'static str, build: BuildFn) {
        match self.table.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = build,
            None => self.table.push((name, build)),
        }
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.table.iter().map(|(n, _)| *n)
    }

    pub fn env(&self) -> &FilterEnv {
        &self.env
    }

    fn lookup(&self, name: &str) -> Option<BuildFn> {
        self.table.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    fn unknown(&self, name: &str) -> String {
        let mut known: Vec<&str> = self.names().collect();
        known.sort_unstable();
        format!("unknown filter {name:?} (known: {})", known.join(", "))
    }

    /// Builds one filter; errors are placed under `path` (the config's own
    /// path, e.g. `listeners[0].http_filters[1].config`).
    pub fn build_filter(
        &self,
        name: &str,
        config: &Value,
        path: &str,
    ) -> Result<FilterRef, Vec<FilterConfigError>> {
        let Some(build) = self.lookup(name) else {
            return Err(vec![FilterConfigError::new(path, self.unknown(name))]);
        };
        build(config, &self.env).map_err(|errs| errs.into_iter().map(|e| e.under(path)).collect())
    }

    /// Builds a listener's chain from its `http_filters`, at config path
    /// `path` (e.g. `listeners[0].http_filters`). Every error is returned.
    pub fn build_chain(
        &self,
        specs: &[FilterSpec],
        path: &str,
    ) -> Result<FilterChain, Vec<FilterConfigError>> {
        let mut errs = Errors::default();
        let mut names: Vec<Box<str>> = Vec::with_capacity(specs.len());
        let mut instances = Vec::with_capacity(specs.len());
        let mut effective = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let known = self.lookup(&spec.name).is_some();
            if !known {
                errs.push(format!("{p}.name"), self.unknown(&spec.name));
            } else if let Some(j) = names.iter().position(|n| **n == *spec.name) {
                // Route overrides address filters by name, so a name must
                // say which one.
                errs.push(
                    format!("{p}.name"),
                    format!("duplicate filter {:?} (also at {path}[{j}])", spec.name),
                );
            }
            names.push(spec.name.as_str().into());
            // Off by default with nothing to build: a route must bring its
            // own config to turn it on.
            let instance = if !known || (spec.disabled && spec.config.is_none()) {
                None
            } else {
                let config = spec.config.as_ref().unwrap_or(&Value::Null);
                match self.build_filter(&spec.name, config, &format!("{p}.config")) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        errs.0.extend(e);
                        None
                    }
                }
            };
            effective.push(if spec.disabled {
                None
            } else {
                instance.clone()
            });
            instances.push(instance);
        }
        errs.finish(FilterChain {
            names: names.into(),
            instances: instances.into(),
            base: Arc::new(Resolved::new(effective)),
        })
    }

    /// Builds the view of `chain` for a virtual host or route from its
    /// `per_filter_config` (at config path `path`). `parent` is the virtual
    /// host's view when building one of its routes: what the route does not
    /// override it inherits, sharing the same instances (so a rate limit set
    /// on the virtual host is one bucket for all its routes).
    ///
    /// A name that is a known filter but absent from this chain is ignored
    /// (its config is still validated), as Envoy does: one route config may
    /// serve listeners with different chains. An unknown name is an error (a typo would otherwise be a
    /// silent no-op).
    pub fn build_route_filters(
        &self,
        chain: &FilterChain,
        parent: Option<&RouteFilters>,
        overrides: &BTreeMap<String, PerFilterConfig>,
        path: &str,
    ) -> Result<RouteFilters, Vec<FilterConfigError>> {
        let parent = parent.filter(|p| Arc::ptr_eq(&p.names, &chain.names));
        if overrides.is_empty() {
            return Ok(parent
                .cloned()
                .unwrap_or_else(|| chain.default_route_filters()));
        }
        let mut filters: Vec<Option<FilterRef>> = match parent {
            Some(p) => p.filters().to_vec(),
            None => chain.base.filters_vec(),
        };
        let mut errs = Errors::default();
        for (name, o) in overrides {
            let p = format!("{path}.{name}");
            if self.lookup(name).is_none() {
                errs.push(p, self.unknown(name));
                continue;
            }
            let Some(i) = chain.position(name) else {
                // Still checked, so a bad config never waits for the listener
                // that has the filter.
                if let Some(config) = &o.config {
                    if let Err(e) = self.build_filter(name, config, &format!("{p}.config")) {
                        errs.0.extend(e);
                    }
                }
                continue;
            };
            let slot = match (o.disabled, &o.config) {
                (true, Some(_)) => {
                    errs.push(p, "`disabled: true` and `config` cannot both be set");
                    continue;
                }
                (true, None) => None,
                (false, Some(config)) => {
                    match self.build_filter(name, config, &format!("{p}.config")) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            errs.0.extend(e);
                            continue;
                        }
                    }
                }
                (false, None) => match chain.instances.get(i).cloned().flatten() {
                    Some(f) => Some(f),
                    None => {
                        errs.push(
                            p,
                            format!(
                                "filter {name:?} has no listener-level config to enable; \
                                 give one here"
                            ),
                        );
                        continue;
                    }
                },
            };
            if let Some(entry) = filters.get_mut(i) {
                *entry = slot;
            }
        }
        errs.finish(RouteFilters {
            names: chain.names.clone(),
            resolved: Arc::new(Resolved::new(filters)),
        })
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}
