//! Compiled route tables: host → virtual host → ordered routes → action.
//!
//! A [`RouteTable`] is built once per config from a [`RouteConfig`], off the
//! request path; [`RouteTable::find`] is the per-request lookup. It does not
//! allocate except in rare cases: an authority with upper-case letters (it is
//! lowercased for the domain lookup), a header matcher over a header sent
//! several times (the values are joined), or a `:path` matcher on a request
//! with a query. Cluster names are resolved to indices at build time.
//!
//! Semantics follow Envoy's router; where Ferry differs it says so at the
//! item concerned.

mod hash;
mod matcher;
#[cfg(test)]
mod rebuild_tests;
mod redirect;
mod retry;
mod rewrite;
mod split;
mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::config::{ConfigErrors, RouteConfig};

pub use redirect::RedirectAction;
pub use retry::{RetryPolicy, TryFailure};
pub use split::WeightedClusters;

/// Applied when a route sets no `timeout`, as Envoy's.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Request bodies kept for a retry when a route sets no
/// `per_request_buffer_limit_bytes`.
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// What the router needs to know about a request. Borrowed from the request
/// head; building one never allocates.
pub struct RequestView<'a> {
    /// `Host` or `:authority`, as sent (may carry a port).
    pub authority: &'a str,
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub peer_ip: IpAddr,
}

#[derive(Debug)]
pub struct RouteTable {
    /// Shared with the next build of the same config when a virtual host
    /// did not change (see [`RouteTable::rebuild`]).
    vhosts: Vec<Arc<VirtualHost>>,
    domains: table::DomainIndex,
}

#[derive(Debug, Clone)]
struct VirtualHost {
    routes: Vec<Route>,
}

impl VirtualHost {
    /// Whether `renumber` leaves every cluster index of its routes as is.
    fn same_numbering(&self, renumber: &dyn Fn(usize) -> Option<usize>) -> bool {
        self.routes.iter().all(|r| match &r.action {
            Action::Cluster(i) => renumber(*i) == Some(*i),
            Action::Weighted(w) => w.targets().all(|(i, _)| renumber(i) == Some(i)),
            Action::Redirect(_) | Action::Direct(_) => true,
        })
    }

    /// A copy with every cluster index `i` replaced by `renumber(i)`; None
    /// when a cluster it names is gone.
    fn renumbered(&self, renumber: &dyn Fn(usize) -> Option<usize>) -> Option<VirtualHost> {
        let mut out = self.clone();
        for r in &mut out.routes {
            match &mut r.action {
                Action::Cluster(i) => *i = renumber(*i)?,
                Action::Weighted(w) => *w = w.renumbered(renumber)?,
                Action::Redirect(_) | Action::Direct(_) => {}
            }
        }
        Some(out)
    }
}

impl RouteTable {
    /// Compiles `cfg`. `path` is the config path of `cfg` (e.g. `routes[0]`)
    /// and prefixes every error. `cluster_index` maps a cluster name to its
    /// index in the active cluster list (None: unknown cluster → error).
    pub fn build(
        cfg: &RouteConfig,
        path: &str,
        cluster_index: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<RouteTable, ConfigErrors> {
        table::build(cfg, path, cluster_index, None)
    }

    /// Compiles `cfg`, taking over from `prev` (the table built from
    /// `prev_cfg`) each virtual host whose config is unchanged and at the
    /// same position: a one-route change in a mesh's 10,000-route config
    /// compiles one virtual host, not a thousand. The result is what
    /// [`RouteTable::build`] would produce.
    ///
    /// `renumber` maps a cluster index of `prev` to the same cluster's index
    /// now (None: the cluster is gone). A taken-over virtual host whose
    /// clusters kept their indices is shared; one whose clusters moved (a
    /// cluster added or removed before them) is copied with the new indices,
    /// which costs no compiling.
    pub fn rebuild(
        cfg: &RouteConfig,
        path: &str,
        cluster_index: &dyn Fn(&str) -> Option<usize>,
        prev_cfg: &RouteConfig,
        prev: &RouteTable,
        renumber: &dyn Fn(usize) -> Option<usize>,
    ) -> Result<RouteTable, ConfigErrors> {
        let prev = table::Previous {
            cfg: prev_cfg,
            table: prev,
            renumber,
        };
        table::build(cfg, path, cluster_index, Some(prev))
    }

    /// How many virtual hosts this table shares with `other` (the same
    /// compiled object, not an equal one).
    #[cfg(test)]
    pub(crate) fn shared_virtual_hosts(&self, other: &RouteTable) -> usize {
        self.vhosts
            .iter()
            .zip(&other.vhosts)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }

    /// The first matching route of the virtual host matching the request's
    /// authority, or None (→ 404).
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        let vh = self.domains.select(req.authority)?;
        self.vhosts
            .get(vh)?
            .routes
            .iter()
            .find(|r| r.matcher.matches(req))
    }
}

/// Where a route sits in its config: `virtual_hosts[virtual_host].routes[route]`.
/// Lets per-listener data (filter overrides) be kept beside a shared table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteId {
    pub virtual_host: usize,
    pub route: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub id: RouteId,
    pub action: Action,
    /// None: no timeout.
    pub timeout: Option<Duration>,
    /// Virtual host's then route's rewrites, merged at build time.
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Set `Host`/`:authority` upstream.
    pub host_rewrite: Option<HeaderValue>,
    pub retry: Option<RetryPolicy>,
    /// Request bodies up to this size are kept for retries.
    pub buffer_limit: usize,
    name: Option<Box<str>>,
    virtual_host: Arc<str>,
    matcher: matcher::RouteMatcher,
    rewrite: Option<rewrite::PathRewrite>,
    hash_policy: Vec<hash::HashPolicy>,
}

impl Route {
    /// The path-and-query to send upstream when `prefix_rewrite` applies,
    /// else None (send the original).
    pub fn rewrite_path(&self, req: &RequestView<'_>) -> Option<String> {
        let rewrite = self.rewrite.as_ref()?;
        let mut out = String::with_capacity(
            rewrite.len_hint() + req.path.len() + req.query.map_or(0, |q| q.len() + 1),
        );
        rewrite.apply(req.path, &mut out);
        if let Some(q) = req.query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }

    /// The request's hash for ring hash / Maglev, from the route's
    /// hash_policy; None when no policy produced one.
    pub fn hash(&self, req: &RequestView<'_>) -> Option<u64> {
        hash::compute(&self.hash_policy, req)
    }

    /// The route's configured `name`, for logs and stats.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name of the virtual host the route belongs to.
    pub fn virtual_host(&self) -> &str {
        &self.virtual_host
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Index into the active cluster list.
    Cluster(usize),
    Weighted(WeightedClusters),
    Redirect(RedirectAction),
    Direct(DirectAction),
}

#[derive(Debug, Clone)]
pub struct DirectAction {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Header additions/removals compiled to `HeaderName`/`HeaderValue`.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    /// (name, value, append)
    pub add: Vec<(HeaderName, HeaderValue, bool)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Removals first, then additions (`append: false` replaces).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, append) in &self.add {
            if *append {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
    }

    /// Appends `later`'s operations so that applying the result once equals
    /// applying `self` and then `later`: since `apply` removes before it
    /// adds, a later removal must also cancel earlier additions of that name.
    fn then(mut self, later: HeaderOps) -> HeaderOps {
        for name in &later.remove {
            self.add.retain(|(n, _, _)| n != name);
            if !self.remove.contains(name) {
                self.remove.push(name.clone());
            }
        }
        self.add.extend(later.add);
        self
    }
}
