//! The eventing controller: makes the running broker ([`Eventing`]) follow
//! the Brokers and Triggers in the store, and writes their status back.
//!
//! One pass ([`Controller::converge`]) reads every Broker, Trigger and
//! Service, compiles the Brokers and Triggers, and then:
//!
//! 1. removes running brokers no longer stored (ingress 404s at once;
//!    their triggers stop; their logs are deleted);
//! 2. opens the logs of new brokers;
//! 3. removes running triggers no longer stored (dispatcher stopped,
//!    cursor dropped), starts new ones (cursor at the log's end), restarts
//!    changed ones from their cursor;
//! 4. publishes the ingress routes and binds the ingress port;
//! 5. writes each object's status (`Ready` with reason and message, the
//!    broker's `address.url`, the trigger's `subscriberUri`) where it
//!    changed.
//!
//! A pass runs at start and after every store commit (its own status
//! writes included: the next pass finds nothing to change and writes
//! nothing). What failed for a reason that may pass (a log that would not
//! open, a port in use) is retried every [`RETRY`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::broker::{Eventing, Key};
use super::config::{self, TriggerDef};
use crate::model::eventing::EventingObject;
use crate::model::meta::{living_conditions, Condition, ConditionStatus};
use crate::model::Kind;
use crate::store::{Serving, ServingError, StoredObject};

/// How soon a pass that hit a failure runs again.
pub const RETRY: Duration = Duration::from_secs(2);

pub struct Controller {
    serving: Arc<Serving>,
    eventing: Eventing,
}

/// A Broker or Trigger as read from the store.
struct Stored {
    obj: EventingObject,
    generation: u64,
}

fn key_of(o: &StoredObject) -> Key {
    (o.key.namespace.clone(), o.key.name.clone())
}

fn decode(o: &StoredObject) -> Option<Stored> {
    match serde_json::from_value::<EventingObject>(o.body.clone()) {
        Ok(obj) => Some(Stored {
            generation: obj.metadata.generation.unwrap_or(1),
            obj,
        }),
        Err(e) => {
            tracing::error!(object = %o.key, error = %e, "unreadable object skipped");
            None
        }
    }
}

/// A condition's outcome: fine, or (reason, message).
type Check = Result<(), (&'static str, String)>;

/// What the pass learned about one stored broker.
struct BrokerState {
    /// Its log is open (and so it is served).
    opened: Check,
    /// Its `spec.delivery`, the default of its triggers.
    delivery: Option<config::DeliverySpec>,
}

/// Every Broker, Trigger and Service as stored at the start of a pass.
struct StoredState {
    brokers: BTreeMap<Key, Stored>,
    triggers: BTreeMap<Key, Stored>,
    services: BTreeSet<Key>,
}

impl Stored {
    /// A Trigger's `spec.broker`.
    fn broker(&self) -> &str {
        self.obj
            .spec
            .get("broker")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// A `ref` subscriber resolves when its Service exists. Deliveries run
/// either way (they fail, and are retried or dead-lettered, until it does).
fn subscriber_check(def: &TriggerDef, services: &BTreeSet<Key>) -> Check {
    match &def.subscriber.service {
        Some(svc) if !services.contains(svc) => Err((
            "ServiceNotFound",
            format!(
                "service {}/{} does not exist; deliveries fail until it does",
                svc.0, svc.1
            ),
        )),
        _ => Ok(()),
    }
}

fn cond(type_: &str, result: &Check) -> Condition {
    match result {
        Ok(()) => Condition::truthy(type_),
        Err((reason, message)) => {
            Condition::with(type_, ConditionStatus::False, reason, message.clone())
        }
    }
}

// === impl Controller ===

impl Controller {
    pub fn new(serving: Arc<Serving>, eventing: Eventing) -> Controller {
        Controller { serving, eventing }
    }

    pub fn eventing(&self) -> &Eventing {
        &self.eventing
    }

    /// Passes until `shutdown` turns true, then stops every dispatcher
    /// (each saves its cursor).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut version = self.serving.store().version();
        loop {
            version.borrow_and_update();
            let retry = match self.converge().await {
                Ok(retry) => retry,
                Err(e) => {
                    tracing::error!(error = %e, "eventing: reading the store failed");
                    true
                }
            };
            tokio::select! {
                changed = version.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RETRY), if retry => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.eventing.stop().await;
    }

    /// One pass; `Ok(true)` when something failed that a later pass may
    /// fix.
    pub async fn converge(&mut self) -> Result<bool, ServingError> {
        let stored = self.read().await?;
        let (brokers, mut retry) = self.converge_brokers(&stored).await;
        for key in self.eventing.trigger_keys() {
            if !stored.triggers.contains_key(&key) {
                self.eventing.remove_trigger(&key).await;
            }
        }
        let mut trigger_status = Vec::new();
        for (key, t) in &stored.triggers {
            let (status, failed) = self.converge_trigger(key, t, &brokers, &stored).await;
            retry |= failed;
            trigger_status.push((key, t, status));
        }

        // Ingress serves what is open; the port is bound with the first
        // broker.
        self.eventing.publish_routes();
        let ingress: Check = if brokers.values().any(|b| b.opened.is_ok()) {
            self.eventing
                .bind_ingress()
                .await
                .map(|_| ())
                .map_err(|e| ("IngressUnavailable", e))
        } else {
            Ok(())
        };
        retry |= ingress.is_err();

        for (key, b) in &stored.brokers {
            let Some(state) = brokers.get(key) else {
                continue;
            };
            let mut status = json!({
                "observedGeneration": b.generation,
                "conditions": living_conditions(vec![
                    cond("LogReady", &state.opened),
                    cond("IngressReady", &ingress),
                ]),
            });
            if let (Ok(()), Ok(()), Some(addr)) =
                (&state.opened, &ingress, self.eventing.ingress_addr())
            {
                status["address"] = json!({"url": format!("http://{addr}/{}/{}", key.0, key.1)});
            }
            self.write_status(Kind::Broker, key, &b.obj, status).await;
        }
        for (key, t, status) in trigger_status {
            self.write_status(Kind::Trigger, key, &t.obj, status).await;
        }
        Ok(retry)
    }

    /// Every Broker, Trigger and Service as stored now.
    async fn read(&self) -> Result<StoredState, ServingError> {
        let store = self.serving.store();
        let objects = |list: Vec<StoredObject>| -> BTreeMap<Key, Stored> {
            list.iter()
                .filter_map(|o| Some((key_of(o), decode(o)?)))
                .collect()
        };
        Ok(StoredState {
            brokers: objects(store.list(Kind::Broker, None).await?),
            triggers: objects(store.list(Kind::Trigger, None).await?),
            services: store
                .list(Kind::Service, None)
                .await?
                .iter()
                .map(key_of)
                .collect(),
        })
    }

    /// Removes the running brokers no longer stored (or no longer valid)
    /// and opens the new ones; returns each stored broker's state, and
    /// whether something failed.
    async fn converge_brokers(
        &mut self,
        stored: &StoredState,
    ) -> (BTreeMap<Key, BrokerState>, bool) {
        let mut out = BTreeMap::new();
        for (key, b) in &stored.brokers {
            let def = config::compile_broker(&b.obj, self.eventing.resolver())
                .map_err(|e| ("InvalidSpec", e.to_string()));
            out.insert(key.clone(), def);
        }
        for key in self.eventing.broker_keys() {
            if !matches!(out.get(&key), Some(Ok(_))) {
                self.eventing.remove_broker(&key).await;
            }
        }
        let mut retry = false;
        let mut states = BTreeMap::new();
        for (key, def) in out {
            let opened = match &def {
                Ok(def) => {
                    let live: Vec<String> = stored
                        .triggers
                        .iter()
                        .filter(|(k, t)| k.0 == key.0 && t.broker() == key.1)
                        .map(|((ns, name), _)| config::cursor_name(ns, name))
                        .collect();
                    let r = self
                        .eventing
                        .open_broker(def, &live)
                        .await
                        .map_err(|e| ("LogUnavailable", e));
                    retry |= r.is_err();
                    r
                }
                Err((reason, msg)) => Err((*reason, msg.clone())),
            };
            let delivery = def.ok().and_then(|d| d.delivery);
            states.insert(key, BrokerState { opened, delivery });
        }
        (states, retry)
    }

    /// Starts, restarts or pauses one trigger's dispatcher; returns its
    /// status, and whether something failed that a later pass may fix.
    async fn converge_trigger(
        &mut self,
        key: &Key,
        t: &Stored,
        brokers: &BTreeMap<Key, BrokerState>,
        stored: &StoredState,
    ) -> (Value, bool) {
        let bkey = (key.0.clone(), t.broker().to_owned());
        let broker = brokers.get(&bkey);
        let broker_ready: Check = match broker.map(|b| &b.opened) {
            None => Err((
                "BrokerDoesNotExist",
                format!("broker {}/{} does not exist", bkey.0, bkey.1),
            )),
            Some(Err((_, msg))) => Err((
                "BrokerNotReady",
                format!("broker {}/{} is not ready: {msg}", bkey.0, bkey.1),
            )),
            Some(Ok(())) => Ok(()),
        };
        let compiled = config::compile_trigger(
            &t.obj,
            broker.and_then(|b| b.delivery.as_ref()),
            self.eventing.resolver(),
        );
        let mut failed = false;
        let (subscriber, subscription) = match (&compiled, &broker_ready) {
            (Err(e), _) => {
                // Still stored, so its cursor stays for when it compiles
                // again.
                self.eventing.pause_trigger(key).await;
                let e: Check = Err(("InvalidSpec", e.to_string()));
                (e.clone(), e)
            }
            (Ok(def), Err(_)) => {
                // Its broker is gone or failed: nothing to dispatch.
                self.eventing.pause_trigger(key).await;
                (
                    subscriber_check(def, &stored.services),
                    Err(("BrokerNotReady", "waiting for the broker".to_owned())),
                )
            }
            (Ok(def), Ok(())) => {
                let started = self
                    .eventing
                    .start_trigger(def.clone())
                    .await
                    .map_err(|e| ("DispatcherFailed", e));
                failed = started.is_err();
                (subscriber_check(def, &stored.services), started)
            }
        };
        let mut conditions = vec![
            cond("BrokerReady", &broker_ready),
            cond("SubscriberResolved", &subscriber),
        ];
        if broker_ready.is_ok() {
            conditions.push(cond("SubscriptionReady", &subscription));
        }
        let mut status = json!({
            "observedGeneration": t.generation,
            "conditions": living_conditions(conditions),
        });
        if let Ok(def) = &compiled {
            status["subscriberUri"] = json!(def.subscriber.uri);
            if let Some(dls) = &def.delivery.dead_letter_sink {
                status["deadLetterSinkUri"] = json!(dls.uri);
            }
        }
        (status, failed)
    }

    async fn write_status(&self, kind: Kind, key: &Key, obj: &EventingObject, status: Value) {
        if obj.status == status {
            return;
        }
        if let Err(e) = self
            .serving
            .set_eventing_status(kind, &key.0, &key.1, status)
            .await
        {
            tracing::warn!(object = %format!("{kind} {}/{}", key.0, key.1), error = %e, "writing the status failed");
        }
    }
}

#[cfg(test)]
mod tests;
