//! Per-revision runtime state reported by other components: the scaler
//! (actual scale, failures, endpoints) and the autoscaler (desired scale).
//! Kept in memory only: after a restart the scaler and autoscaler report
//! it again within a tick, and persisting a value that changes every two
//! seconds would cost an fsync each time for nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::model::reconcile::RevisionRuntime;

/// (namespace, revision name).
pub type RevisionKey = (String, String);

#[derive(Default)]
pub struct Runtime {
    state: Mutex<BTreeMap<RevisionKey, Entry>>,
    /// Bumped on every change that matters (a value that actually changed),
    /// so watchers (xDS translation) do not churn on repeated reports.
    version: watch::Sender<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Entry {
    rt: RevisionRuntime,
    endpoints: Vec<SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one assignment; a poisoned lock guards sound data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime::default()
    }

    fn update(&self, ns: &str, rev: &str, f: impl FnOnce(&mut Entry)) {
        let mut st = lock(&self.state);
        let key = (ns.to_string(), rev.to_string());
        let entry = st.entry(key).or_default();
        let before = entry.clone();
        f(entry);
        if *entry != before {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// The scaler's report: instances running and ready.
    pub fn set_actual_scale(&self, ns: &str, rev: &str, actual: u32) {
        self.update(ns, rev, |e| e.rt.actual_replicas = actual);
    }

    /// The autoscaler's decision.
    pub fn set_desired_scale(&self, ns: &str, rev: &str, desired: u32) {
        self.update(ns, rev, |e| e.rt.desired_replicas = desired);
    }

    /// Marks a revision failed (`Some((reason, message))`: its
    /// ContainerHealthy and Ready become False) or healthy again (`None`).
    pub fn set_failure(&self, ns: &str, rev: &str, failure: Option<(String, String)>) {
        self.update(ns, rev, |e| e.rt.failure = failure);
    }

    /// The ready endpoints of a revision (`ip:port` of each instance's
    /// inbound sidecar), served over EDS.
    pub fn set_endpoints(&self, ns: &str, rev: &str, mut endpoints: Vec<SocketAddr>) {
        endpoints.sort();
        endpoints.dedup();
        self.update(ns, rev, |e| e.endpoints = endpoints);
    }

    pub fn get(&self, ns: &str, rev: &str) -> RevisionRuntime {
        lock(&self.state)
            .get(&(ns.to_string(), rev.to_string()))
            .map(|e| e.rt.clone())
            .unwrap_or_default()
    }

    pub fn endpoints_of(&self, ns: &str, rev: &str) -> Vec<SocketAddr> {
        lock(&self.state)
            .get(&(ns.to_string(), rev.to_string()))
            .map(|e| e.endpoints.clone())
            .unwrap_or_default()
    }

    /// Every revision's endpoints.
    pub fn endpoints(&self) -> BTreeMap<RevisionKey, Vec<SocketAddr>> {
        lock(&self.state)
            .iter()
            .map(|(k, e)| (k.clone(), e.endpoints.clone()))
            .collect()
    }

    /// Drops the state of a deleted revision.
    pub fn forget(&self, ns: &str, rev: &str) {
        if lock(&self.state)
            .remove(&(ns.to_string(), rev.to_string()))
            .is_some()
        {
            self.version.send_modify(|v| *v += 1);
        }
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
