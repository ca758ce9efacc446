//! The activator role: a request for a revision with no endpoint is held
//! (bounded in number and time) until the revision's cluster has one, then
//! proceeds; the demand is reported at once so the control plane scales the
//! revision from zero. Every proxy does this itself, so a revision at zero
//! costs no extra hop (Knative routes such requests through a separate
//! activator deployment instead).
//!
//! Endpoints arrive two ways, and a held request wakes on both:
//! - the cluster's own host set changes (health checks, DNS): its
//!   `hosts_changed` notification;
//! - a reload or an EDS update builds a new cluster for the revision: the
//!   new build is published to the revision (`Revision::publish`) and held
//!   requests move to it.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ActivationConfig;
use crate::error::{ErrorKind, ProxyError};
use crate::upstream::{Cluster, Endpoint};

use super::{Registry, Revision};

/// Knative's activator holds a request for the revision timeout (300 s by
/// default); a proxy in front of clients with shorter timeouts gains
/// nothing from holding longer than they wait, so Ferry's default is 60 s
/// (the control plane sets it from the revision's timeoutSeconds).
const HOLD_TIMEOUT: Duration = Duration::from_secs(60);
/// Knative's activator queue depth per revision.
const MAX_HELD: u32 = 10_000;

pub struct Activation {
    revision: Arc<Revision>,
    registry: Arc<Registry>,
    hold_timeout: Duration,
    max_held: u32,
}

/// Decrements the held count however the hold ends.
struct Held<'a>(&'a Revision);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activation {
    pub fn new(revision: Arc<Revision>, registry: Arc<Registry>, cfg: &ActivationConfig) -> Self {
        Activation {
            revision,
            registry,
            hold_timeout: cfg.hold_timeout.map_or(HOLD_TIMEOUT, |d| d.get()),
            max_held: cfg.max_held.unwrap_or(MAX_HELD),
        }
    }

    pub fn revision(&self) -> &Arc<Revision> {
        &self.revision
    }

    /// Holds the request until `cluster` (or a newer build of it) has an
    /// endpoint to pick; returns the cluster to send through and the
    /// endpoint. Over `max_held` → 503 `x-ferry-activation: full` at once;
    /// after `hold_timeout` → 503 `x-ferry-activation: timeout`.
    pub async fn hold(
        &self,
        cluster: &Arc<Cluster>,
        hash: Option<u64>,
    ) -> Result<(Arc<Cluster>, Arc<Endpoint>), ProxyError> {
        let rev = &*self.revision;
        if rev.held.fetch_add(1, Ordering::AcqRel) >= self.max_held {
            rev.held.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::new(ErrorKind::ActivationFull));
        }
        let _held = Held(rev);
        // Counted as proxied while held (the instance's own queue-proxy
        // counts it from its release on, via `x-ferry-proxied`).
        let _in_flight = rev.stats.enter(true);
        // Report the demand now, not at the next second.
        rev.demand.store(true, Ordering::Release);
        self.registry.demand.notify_one();
        tracing::debug!(revision = %rev.key.revision, "no endpoint: holding request");

        let deadline = tokio::time::Instant::now() + self.hold_timeout;
        let mut current = cluster.clone();
        loop {
            // Register for each wake-up before looking, so a change that
            // lands between the look and the wait is not missed.
            let mut published = pin!(rev.published.notified());
            published.as_mut().enable();
            if let Some(latest) = rev.latest() {
                if !Arc::ptr_eq(&latest, &current) {
                    current = latest;
                }
            }
            let mut changed = pin!(current.hosts_changed.notified());
            changed.as_mut().enable();
            if let Some(ep) = current.pick(hash) {
                return Ok((current.clone(), ep));
            }
            tokio::select! {
                _ = changed => {}
                _ = published => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ProxyError::new(ErrorKind::ActivationTimeout));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::upstream::PoolRegistry;

    async fn cluster(endpoints: &[&str], pools: &Arc<PoolRegistry>) -> Arc<Cluster> {
        let cfg = config::Cluster {
            name: "rev-00001".into(),
            endpoints: endpoints
                .iter()
                .map(|a| config::Endpoint {
                    address: a.to_string(),
                    weight: 1,
                })
                .collect(),
            ..Default::default()
        };
        let targets = crate::upstream::resolve(&cfg, "c").await.expect("resolve");
        Cluster::build(&cfg, "c", targets, pools)
            .map_err(|e| e.to_string())
            .expect("build")
    }

    fn activation(registry: &Arc<Registry>, hold: u64, max_held: u32) -> Activation {
        let revision = registry.revision(super::super::RevisionKey {
            namespace: "default".into(),
            revision: "rev-00001".into(),
        });
        Activation::new(
            revision,
            registry.clone(),
            &ActivationConfig {
                hold_timeout: Some(config::Dur(Duration::from_millis(hold))),
                max_held: Some(max_held),
                ..Default::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_times_out_without_an_endpoint() {
        let registry = Arc::new(Registry::new());
        let pools = Arc::new(PoolRegistry::default());
        let empty = cluster(&[], &pools).await;
        let a = activation(&registry, 300, 10);
        let started = tokio::time::Instant::now();
        let err = a.hold(&empty, None).await.err().expect("timeout");
        assert_eq!(err.kind, ErrorKind::ActivationTimeout);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(a.revision().held.load(Ordering::Acquire), 0);
        // The demand was flagged and the reporter woken.
        assert!(a.revision().demand.load(Ordering::Acquire));
        tokio::time::timeout(Duration::from_millis(1), registry.demand.notified())
            .await
            .expect("the reporter was woken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_proceeds_when_a_new_build_has_an_endpoint() {
        let registry = Arc::new(Registry::new());
        let pools = Arc::new(PoolRegistry::default());
        let empty = cluster(&[], &pools).await;
        let a = Arc::new(activation(&registry, 60_000, 10));
        a.revision().publish(&empty);
        let held = {
            let (a, empty) = (a.clone(), empty.clone());
            tokio::spawn(async move { a.hold(&empty, None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.revision().held.load(Ordering::Acquire), 1);

        // A reload builds the revision's cluster anew, now with an endpoint.
        let full = cluster(&["127.0.0.1:9"], &pools).await;
        a.revision().publish(&full);
        let (c, ep) = tokio::time::timeout(Duration::from_millis(1), held)
            .await
            .expect("released at once")
            .expect("join")
            .map_err(|e| e.to_string())
            .expect("an endpoint");
        assert!(Arc::ptr_eq(&c, &full));
        assert_eq!(ep.addr.port(), 9);
        assert_eq!(a.revision().held.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn holds_at_most_max_held() {
        let registry = Arc::new(Registry::new());
        let pools = Arc::new(PoolRegistry::default());
        let empty = cluster(&[], &pools).await;
        let a = Arc::new(activation(&registry, 1_000, 2));
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let (a, empty) = (a.clone(), empty.clone());
            waiters.push(tokio::spawn(
                async move { a.hold(&empty, None).await.map(drop) },
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let err = a.hold(&empty, None).await.err().expect("full");
        assert_eq!(err.kind, ErrorKind::ActivationFull);
        for w in waiters {
            let r = w.await.expect("join");
            assert_eq!(r.err().map(|e| e.kind), Some(ErrorKind::ActivationTimeout));
        }
    }
}
