//! The model's operations over a [`Store`]: what the REST API calls and
//! what other components (xDS translation, autoscaler, scaler, eventing)
//! read and watch.
//!
//! Writes are read → plan ([`crate::model::reconcile`]) → commit with
//! preconditions on every object read; a concurrent writer makes the commit
//! fail with a conflict and the apply is planned again (bounded). Status is
//! never stored: it is computed on every read from the stored objects and
//! the [`Runtime`], so it is never stale.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::{Change, ObjectKey, Op, Precondition, Runtime, Store, StoreError, StoredObject};
use crate::autoscaler::GlobalConfig;
use crate::model::eventing::EventingObject;
use crate::model::manifest;
use crate::model::meta;
use crate::model::reconcile::{self, ApplyError, Existing, Outcome};
use crate::model::serving::{Configuration, Revision, Route, Service, CONFIGURATION_LABEL};
use crate::model::{FieldError, FieldErrors, Kind, Manifest};

/// How many times an apply is re-planned after losing a race.
const MAX_ATTEMPTS: usize = 8;

/// Why an operation failed, each mapping to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// 400
    #[error("{0}")]
    Invalid(FieldErrors),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 405: e.g. writing a Revision, which only a Service creates.
    #[error("{0}")]
    NotAllowed(String),
    /// 409
    #[error("{0}")]
    Conflict(String),
    /// 500
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ApplyError> for ServingError {
    fn from(e: ApplyError) -> ServingError {
        match e {
            ApplyError::Invalid(f) => ServingError::Invalid(f),
            ApplyError::Conflict(m) => ServingError::Conflict(m),
        }
    }
}

impl From<FieldErrors> for ServingError {
    fn from(e: FieldErrors) -> ServingError {
        ServingError::Invalid(e)
    }
}

/// The result of an apply: what happened and the object as now stored,
/// with its status.
#[derive(Clone, Debug)]
pub struct Applied {
    pub outcome: Outcome,
    pub kind: Kind,
    pub object: Value,
}

/// A list answer, Kubernetes-shaped (`{"apiVersion", "kind": "ServiceList", "items"}`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectList {
    pub api_version: &'static str,
    pub kind: String,
    pub items: Vec<Value>,
}

/// Every serving object (of one namespace or all), with status computed:
/// what xDS translation and the autoscaler read.
#[derive(Clone, Debug, Default)]
pub struct ServingSnapshot {
    pub services: Vec<Service>,
    pub configurations: Vec<Configuration>,
    pub revisions: Vec<Revision>,
    pub routes: Vec<Route>,
}

pub struct Serving {
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    domain: String,
    /// The cluster's autoscaler settings, which a template's autoscaling
    /// annotations are validated against.
    autoscaler: GlobalConfig,
}

fn decode<T: serde::de::DeserializeOwned>(o: &StoredObject) -> Result<T, ServingError> {
    serde_json::from_value(o.body.clone())
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", o.key)).into())
}

fn encode<T: Serialize>(v: &T) -> Result<Value, ServingError> {
    serde_json::to_value(v).map_err(|e| ServingError::Store(StoreError::Internal(e.to_string())))
}

fn expect_of(o: Option<&StoredObject>) -> Precondition {
    o.map_or(Precondition::Absent, |o| {
        Precondition::Version(o.resource_version)
    })
}

fn set_rv(meta: &mut meta::ObjectMeta, o: &StoredObject) {
    meta.resource_version = Some(o.resource_version.to_string());
}

impl Serving {
    pub fn new(store: Arc<dyn Store>, runtime: Arc<Runtime>, domain: impl Into<String>) -> Serving {
        Serving {
            store,
            runtime,
            domain: domain.into(),
            autoscaler: GlobalConfig::default(),
        }
    }

    /// Validates autoscaling annotations against these cluster settings
    /// (Knative's `config-autoscaler`) instead of Knative's defaults.
    pub fn with_autoscaler(mut self, autoscaler: GlobalConfig) -> Serving {
        self.autoscaler = autoscaler;
        self
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The cluster's autoscaler settings.
    pub fn autoscaler(&self) -> &GlobalConfig {
        &self.autoscaler
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Where the autoscaler and scaler report scale, failures, endpoints.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Every committed change, object by object.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.store.subscribe()
    }

    /// "Something changed" signals: the store's commit sequence and the
    /// runtime's version. Consumers that rebuild from a snapshot (xDS)
    /// wait on either and re-read.
    pub fn watch(&self) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        (self.store.version(), self.runtime.watch())
    }

    // === apply ===

    /// Applies a raw object sent to `/v1/namespaces/{ns}/{plural}[/{name}]`:
    /// the path's kind, namespace and name must agree with the body's (an
    /// absent body namespace/name takes the path's).
    pub async fn apply_value(
        &self,
        kind: Kind,
        namespace: &str,
        name: Option<&str>,
        mut body: Value,
    ) -> Result<Applied, ServingError> {
        if !matches!(kind, Kind::Service | Kind::Broker | Kind::Trigger) {
            return Err(ServingError::NotAllowed(format!(
                "{} are created by their Service; apply the Service instead",
                kind.plural()
            )));
        }
        let Some(obj) = body.as_object_mut() else {
            return Err(FieldErrors::from(FieldError::new("", "expected a JSON object")).into());
        };
        obj.entry("apiVersion")
            .or_insert_with(|| Value::from(kind.api_version()));
        obj.entry("kind")
            .or_insert_with(|| Value::from(kind.name()));
        let declared = manifest::kind_of(&body)?;
        if declared != kind {
            return Err(FieldErrors::from(FieldError::new(
                "kind",
                format!("{declared} sent to the {} endpoint", kind.plural()),
            ))
            .into());
        }
        let mut m = manifest::from_value(body)?;
        let (meta_ns, meta_name) = match &mut m {
            Manifest::Service(s) => (&mut s.metadata.namespace, &mut s.metadata.name),
            Manifest::Broker(o) | Manifest::Trigger(o) => {
                (&mut o.metadata.namespace, &mut o.metadata.name)
            }
        };
        let mut errs = FieldErrors::default();
        if meta_ns.is_empty() {
            *meta_ns = namespace.to_string();
        } else if meta_ns != namespace {
            errs.push(
                "metadata.namespace",
                format!("{meta_ns:?} does not match the namespace in the URL ({namespace:?})"),
            );
        }
        if let Some(name) = name {
            if meta_name.is_empty() {
                *meta_name = name.to_string();
            } else if meta_name != name {
                errs.push(
                    "metadata.name",
                    format!("{meta_name:?} does not match the name in the URL ({name:?})"),
                );
            }
        }
        errs.into_result()?;
        self.apply(m).await
    }

    pub async fn apply(&self, m: Manifest) -> Result<Applied, ServingError> {
        match m {
            Manifest::Service(s) => self.apply_service(s).await,
            Manifest::Broker(o) => self.apply_eventing(Kind::Broker, o).await,
            Manifest::Trigger(o) => self.apply_eventing(Kind::Trigger, o).await,
        }
    }

    pub async fn apply_service(&self, input: Service) -> Result<Applied, ServingError> {
        let mut ns = input.metadata.namespace.clone();
        if ns.is_empty() {
            ns = meta::DEFAULT_NAMESPACE.to_string();
        }
        let name = input.metadata.name.clone();
        // Invalid input is reported before anything is read.
        input.validate_with(&self.autoscaler)?;
        let commits = self.store.version();
        for _ in 0..MAX_ATTEMPTS {
            let svc_key = ObjectKey::new(Kind::Service, &ns, &name);
            let cfg_key = ObjectKey::new(Kind::Configuration, &ns, &name);
            let route_key = ObjectKey::new(Kind::Route, &ns, &name);
            let read_at = *commits.borrow();
            let svc_obj = self.store.get(&svc_key).await?;
            let cfg_obj = self.store.get(&cfg_key).await?;
            let route_obj = self.store.get(&route_key).await?;
            let rev_objs = self.store.list(Kind::Revision, Some(&ns)).await?;
            // The reads are separate: a commit between them gives a view no
            // state ever had (a configuration generation behind its newest
            // revision), from which the plan would report a false conflict.
            if *commits.borrow() != read_at {
                continue;
            }
            if let Some(rv) = &input.metadata.resource_version {
                let current = svc_obj.as_ref().map(|o| o.resource_version.to_string());
                if current.as_deref() != Some(rv.as_str()) {
                    return Err(ServingError::Conflict(format!(
                        "service {ns}/{name} has changed (metadata.resourceVersion {rv:?} is \
                         not the stored {}); read it again and retry",
                        current.unwrap_or_else(|| "(none: it does not exist)".to_string())
                    )));
                }
            }
            let existing = Existing {
                service: svc_obj.as_ref().map(decode).transpose()?,
                configuration: cfg_obj.as_ref().map(decode).transpose()?,
                route: route_obj.as_ref().map(decode).transpose()?,
                revisions: rev_objs.iter().map(decode).collect::<Result<_, _>>()?,
            };
            let plan = reconcile::plan_service_apply(
                input.clone(),
                &existing,
                &self.autoscaler,
                &meta::now_rfc3339(),
            )?;
            if plan.outcome == Outcome::Unchanged {
                let object = self.get(Kind::Service, &ns, &name).await?;
                return Ok(Applied {
                    outcome: Outcome::Unchanged,
                    kind: Kind::Service,
                    object,
                });
            }
            let mut ops = vec![
                Op::Put {
                    key: svc_key.clone(),
                    body: encode(&plan.service)?,
                    expect: expect_of(svc_obj.as_ref()),
                },
                Op::Put {
                    key: cfg_key,
                    body: encode(&plan.configuration)?,
                    expect: expect_of(cfg_obj.as_ref()),
                },
                Op::Put {
                    key: route_key,
                    body: encode(&plan.route)?,
                    expect: expect_of(route_obj.as_ref()),
                },
            ];
            if let Some(rev) = &plan.new_revision {
                ops.push(Op::Put {
                    key: ObjectKey::new(Kind::Revision, &ns, &rev.metadata.name),
                    body: encode(rev)?,
                    expect: Precondition::Absent,
                });
            }
            match self.store.commit(ops).await {
                Ok(_) => {
                    tracing::info!(
                        service = %format!("{ns}/{name}"),
                        outcome = plan.outcome.as_str(),
                        revision = plan.new_revision.as_ref().map(|r| r.metadata.name.as_str()),
                        "service applied"
                    );
                    let object = self.get(Kind::Service, &ns, &name).await?;
                    return Ok(Applied {
                        outcome: plan.outcome,
                        kind: Kind::Service,
                        object,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServingError::Conflict(format!(
            "service {ns}/{name} kept changing while it was applied; retry"
        )))
    }

    pub async fn apply_eventing(
        &self,
        kind: Kind,
        mut obj: EventingObject,
    ) -> Result<Applied, ServingError> {
        obj.validate(kind.name())?;
        obj.set_defaults(kind.name());
        obj.status = Value::Null;
        let ns = obj.metadata.namespace.clone();
        let name = obj.metadata.name.clone();
        let key = ObjectKey::new(kind, &ns, &name);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.get(&key).await?;
            let old: Option<EventingObject> = current.as_ref().map(decode).transpose()?;
            if let Some(rv) = &obj.metadata.resource_version {
                let stored = current.as_ref().map(|o| o.resource_version.to_string());
                if stored.as_deref() != Some(rv.as_str()) {
                    return Err(ServingError::Conflict(format!(
                        "{} {ns}/{name} has changed (metadata.resourceVersion {rv:?}); read it \
                         again and retry",
                        kind.name().to_ascii_lowercase()
                    )));
                }
            }
            if kind == Kind::Trigger {
                self.check_trigger_broker(&obj).await?;
            }
            let mut new = obj.clone();
            new.metadata.resource_version = None;
            let outcome = match &old {
                None => {
                    new.metadata.generation = Some(1);
                    new.metadata.uid = Some(meta::new_uid());
                    new.metadata.creation_timestamp = Some(meta::now_rfc3339());
                    Outcome::Created
                }
                Some(old) => {
                    if kind == Kind::Trigger {
                        new.check_trigger_update(old)?;
                    }
                    let gen = old.metadata.generation.unwrap_or(1);
                    let same = old.spec == new.spec;
                    new.metadata.generation = Some(if same { gen } else { gen + 1 });
                    new.metadata.uid = old.metadata.uid.clone();
                    new.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                    // The broker's status stays until the broker updates it.
                    new.status = old.status.clone();
                    let mut old_cmp = old.clone();
                    old_cmp.metadata.resource_version = None;
                    if old_cmp == new {
                        Outcome::Unchanged
                    } else {
                        Outcome::Configured
                    }
                }
            };
            if outcome == Outcome::Unchanged {
                let object = self.get(kind, &ns, &name).await?;
                return Ok(Applied {
                    outcome,
                    kind,
                    object,
                });
            }
            let op = Op::Put {
                key: key.clone(),
                body: encode(&new)?,
                expect: expect_of(current.as_ref()),
            };
            match self.store.commit(vec![op]).await {
                Ok(_) => {
                    let object = self.get(kind, &ns, &name).await?;
                    return Ok(Applied {
                        outcome,
                        kind,
                        object,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServingError::Conflict(format!(
            "{key} kept changing while it was applied; retry"
        )))
    }

    /// A Trigger's `spec.broker` must name a stored Broker of its namespace.
    async fn check_trigger_broker(&self, t: &EventingObject) -> Result<(), ServingError> {
        let ns = &t.metadata.namespace;
        let broker = t.spec.get("broker").and_then(Value::as_str).unwrap_or("");
        let key = ObjectKey::new(Kind::Broker, ns, broker);
        if self.store.get(&key).await?.is_none() {
            return Err(FieldErrors::from(FieldError::new(
                "spec.broker",
                format!("no broker {broker:?} in namespace {ns:?}; apply the Broker first"),
            ))
            .into());
        }
        Ok(())
    }

    /// Replaces the status of a Broker or Trigger (the eventing engine's
    /// report). Returns false if the object does not exist.
    pub async fn set_eventing_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<bool, ServingError> {
        let key = ObjectKey::new(kind, namespace, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.get(&key).await? else {
                return Ok(false);
            };
            let mut obj: EventingObject = decode(&current)?;
            if obj.status == status {
                return Ok(true);
            }
            obj.status = status.clone();
            let op = Op::Put {
                key: key.clone(),
                body: encode(&obj)?,
                expect: Precondition::Version(current.resource_version),
            };
            match self.store.commit(vec![op]).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServingError::Conflict(format!("{key} kept changing")))
    }

    // === delete ===

    /// Deletes a Service (with its Configuration, Route and Revisions), a
    /// Broker or a Trigger; returns the object as it was.
    pub async fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ServingError> {
        if !matches!(kind, Kind::Service | Kind::Broker | Kind::Trigger) {
            return Err(ServingError::NotAllowed(format!(
                "{} are owned by their Service; delete the Service instead",
                kind.plural()
            )));
        }
        for _ in 0..MAX_ATTEMPTS {
            let before = self.get(kind, ns, name).await?;
            let key = ObjectKey::new(kind, ns, name);
            let Some(obj) = self.store.get(&key).await? else {
                return Err(self.not_found(kind, ns, name));
            };
            let mut ops = vec![Op::Delete {
                key,
                expect: Precondition::Version(obj.resource_version),
            }];
            let mut revisions = Vec::new();
            if kind == Kind::Service {
                for k in [Kind::Configuration, Kind::Route] {
                    let key = ObjectKey::new(k, ns, name);
                    if let Some(o) = self.store.get(&key).await? {
                        ops.push(Op::Delete {
                            key,
                            expect: Precondition::Version(o.resource_version),
                        });
                    }
                }
                for o in self.store.list(Kind::Revision, Some(ns)).await? {
                    let owned = o
                        .body
                        .pointer("/metadata/labels")
                        .and_then(|l| l.get(CONFIGURATION_LABEL))
                        .and_then(Value::as_str)
                        == Some(name);
                    if owned {
                        revisions.push(o.key.name.clone());
                        ops.push(Op::Delete {
                            key: o.key.clone(),
                            expect: Precondition::Version(o.resource_version),
                        });
                    }
                }
            }
            match self.store.commit(ops).await {
                Ok(_) => {
                    for r in revisions {
                        self.runtime.forget(ns, &r);
                    }
                    tracing::info!(object = %format!("{kind} {ns}/{name}"), "deleted");
                    return Ok(before);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServingError::Conflict(format!(
            "{kind} {ns}/{name} kept changing while it was deleted; retry"
        )))
    }

    // === reads ===

    fn not_found(&self, kind: Kind, ns: &str, name: &str) -> ServingError {
        ServingError::NotFound(format!(
            "{} {name:?} not found in namespace {ns:?}",
            kind.name().to_ascii_lowercase()
        ))
    }

    /// Every serving object of `namespace` (or all), status computed.
    pub async fn snapshot(&self, namespace: Option<&str>) -> Result<ServingSnapshot, ServingError> {
        let mut revisions: Vec<Revision> = Vec::new();
        for o in self.store.list(Kind::Revision, namespace).await? {
            let mut r: Revision = decode(&o)?;
            set_rv(&mut r.metadata, &o);
            let rt = self.runtime.get(&r.metadata.namespace, &r.metadata.name);
            r.status = reconcile::revision_status(&r, Some(&rt));
            revisions.push(r);
        }
        let in_ns = |revs: &[Revision], ns: &str| -> Vec<Revision> {
            revs.iter()
                .filter(|r| r.metadata.namespace == ns)
                .cloned()
                .collect()
        };
        let mut configurations: Vec<Configuration> = Vec::new();
        for o in self.store.list(Kind::Configuration, namespace).await? {
            let mut c: Configuration = decode(&o)?;
            set_rv(&mut c.metadata, &o);
            c.status = reconcile::configuration_status(&c, &in_ns(&revisions, &o.key.namespace));
            configurations.push(c);
        }
        let config_of = |ns: &str, name: &str| {
            configurations
                .iter()
                .find(|c| c.metadata.namespace == ns && c.metadata.name == name)
        };
        let mut routes: Vec<Route> = Vec::new();
        for o in self.store.list(Kind::Route, namespace).await? {
            let mut r: Route = decode(&o)?;
            set_rv(&mut r.metadata, &o);
            let cfg = config_of(&o.key.namespace, &o.key.name).map(|c| &c.status);
            r.status = reconcile::route_status(
                &r,
                cfg,
                &in_ns(&revisions, &o.key.namespace),
                &self.domain,
            );
            routes.push(r);
        }
        let mut services: Vec<Service> = Vec::new();
        for o in self.store.list(Kind::Service, namespace).await? {
            let mut s: Service = decode(&o)?;
            set_rv(&mut s.metadata, &o);
            let cfg = config_of(&o.key.namespace, &o.key.name).map(|c| &c.status);
            let route = routes
                .iter()
                .find(|r| r.metadata.namespace == o.key.namespace && r.metadata.name == o.key.name);
            s.status = Some(reconcile::service_status(
                &s,
                cfg,
                route.map(|r| &r.status),
                route.map(|r| &r.spec),
                &self.domain,
            ));
            services.push(s);
        }
        Ok(ServingSnapshot {
            services,
            configurations,
            revisions,
            routes,
        })
    }

    /// Every object of `kind` in `namespace` (or all), as JSON with status.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, ServingError> {
        match kind {
            Kind::Broker | Kind::Trigger => {
                let mut out = Vec::new();
                for o in self.store.list(kind, namespace).await? {
                    let mut obj: EventingObject = decode(&o)?;
                    set_rv(&mut obj.metadata, &o);
                    out.push(encode(&obj)?);
                }
                Ok(out)
            }
            _ => {
                let snap = self.snapshot(namespace).await?;
                match kind {
                    Kind::Service => snap.services.iter().map(encode).collect(),
                    Kind::Configuration => snap.configurations.iter().map(encode).collect(),
                    Kind::Revision => snap.revisions.iter().map(encode).collect(),
                    _ => snap.routes.iter().map(encode).collect(),
                }
            }
        }
    }

    /// One object as JSON with its status; `NotFound` if absent.
    pub async fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ServingError> {
        let items = self.list(kind, Some(ns)).await?;
        items
            .into_iter()
            .find(|v| v.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| self.not_found(kind, ns, name))
    }

    /// The list answer for `kind`.
    pub async fn list_object(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<ObjectList, ServingError> {
        Ok(ObjectList {
            api_version: kind.api_version(),
            kind: format!("{}List", kind.name()),
            items: self.list(kind, namespace).await?,
        })
    }
}

#[cfg(test)]
mod tests;
