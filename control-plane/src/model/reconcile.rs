//! What applying a Service writes, and the status every serving object
//! reports. Both are pure functions of what the store holds (plus, for
//! status, each revision's runtime state), so the store layer is a thin
//! read → plan → commit loop and status is always current.
//!
//! Knative behaviour kept here:
//! - a template change bumps the Configuration's generation and stamps a
//!   Revision named `{service}-{generation:05}`, or the template's own
//!   `metadata.name`; reusing that name for a different template is an
//!   error (Knative: "saw changes without a name change");
//! - a traffic entry with `latestRevision: true` follows the latest
//!   *ready* revision;
//! - Ready is True only when ConfigurationsReady and RoutesReady are;
//!   RoutesReady is Unknown (`TrafficNotMigrated`) while traffic that
//!   follows the latest revision has not reached the latest created one.

use std::collections::BTreeMap;

use super::error::{FieldError, FieldErrors};
use super::meta::{
    self, living_conditions, Condition, ConditionStatus, ObjectMeta, OwnerReference,
};
use super::serving::{
    self, Configuration, ConfigurationSpec, ConfigurationStatus, Revision, RevisionStatus, Route,
    RouteSpec, RouteStatus, Service, ServiceStatus, TrafficTarget, CONFIGURATION_GENERATION_LABEL,
    CONFIGURATION_LABEL, SERVICE_LABEL,
};
use crate::autoscaler::GlobalConfig;

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// 400: the object is invalid; every error names its field.
    #[error("{0}")]
    Invalid(FieldErrors),
    /// 409: valid, but it clashes with what is stored.
    #[error("{0}")]
    Conflict(String),
}

impl From<FieldErrors> for ApplyError {
    fn from(e: FieldErrors) -> ApplyError {
        ApplyError::Invalid(e)
    }
}

/// What the store holds for one Service's namespace, as the planner needs it.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub service: Option<Service>,
    pub configuration: Option<Configuration>,
    pub route: Option<Route>,
    /// Every Revision of the namespace (traffic may name any of them).
    pub revisions: Vec<Revision>,
}

/// Whether an apply changed anything, as kubectl reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The objects one apply writes.
#[derive(Clone, Debug)]
pub struct ApplyPlan {
    pub service: Service,
    pub configuration: Configuration,
    pub route: Route,
    /// Present when the template changed and the revision is new.
    pub new_revision: Option<Revision>,
    pub outcome: Outcome,
}

/// Runtime state of one revision, reported by the autoscaler and scaler
/// (not persisted: it is re-observed after a restart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionRuntime {
    pub actual_replicas: u32,
    pub desired_replicas: u32,
    /// Set when instances cannot start (`reason`, `message`): the
    /// revision's ContainerHealthy and Ready conditions become False.
    pub failure: Option<(String, String)>,
}

/// Plans the apply of `input` over `existing`, validated against the
/// cluster's `autoscaler` settings. `now` is the creation timestamp for new
/// objects.
pub fn plan_service_apply(
    input: Service,
    existing: &Existing,
    autoscaler: &GlobalConfig,
    now: &str,
) -> Result<ApplyPlan, ApplyError> {
    input.validate_with(autoscaler)?;
    let mut svc = input;
    svc.status = None;
    svc.set_defaults();
    let name = svc.metadata.name.clone();
    let ns = svc.metadata.namespace.clone();

    let old_config = existing.configuration.as_ref();
    let old_gen = old_config.and_then(|c| c.metadata.generation).unwrap_or(0);
    let template_changed =
        old_config.is_none_or(|c| serving::template_changed(&c.spec.template, &svc.spec.template));

    let mut new_revision = None;
    let (config_gen, latest_created) = if template_changed {
        let explicit = &svc.spec.template.metadata.name;
        if let Some(old) = old_config {
            if !explicit.is_empty() && *explicit == old.spec.template.metadata.name {
                return Err(FieldErrors::from(FieldError::new(
                    "spec.template.metadata.name",
                    format!(
                        "saw changes to the template without a name change: revision \
                         {explicit:?} already exists and revisions are immutable; give the \
                         template a new name (or remove the name to have one generated)"
                    ),
                ))
                .into());
            }
        }
        let gen = old_gen + 1;
        let rev_name = if explicit.is_empty() {
            meta::child_name(&name, &format!("-{gen:05}"))
        } else {
            explicit.clone()
        };
        match existing
            .revisions
            .iter()
            .find(|r| r.metadata.name == rev_name)
        {
            Some(r)
                if r.metadata.labels.get(CONFIGURATION_LABEL) == Some(&name)
                    && same_template(r, &svc.spec.template) =>
            {
                // Back to an earlier named template: that revision is the
                // latest again, nothing new is stamped.
            }
            Some(r) => {
                let owner = r
                    .metadata
                    .labels
                    .get(SERVICE_LABEL)
                    .map(|s| format!("service {s:?}"))
                    .unwrap_or_else(|| "another object".to_string());
                return Err(ApplyError::Conflict(format!(
                    "revision {rev_name:?} in namespace {ns:?} already exists (owned by {owner}) \
                     with a different template; set spec.template.metadata.name to a new name"
                )));
            }
            None => {
                new_revision = Some(stamp_revision(&svc, &rev_name, gen, now));
            }
        }
        (gen, rev_name)
    } else {
        let c = old_config.map(|c| c.status.latest_created_revision_name.clone());
        (old_gen, c.unwrap_or_default())
    };

    // Traffic may only name revisions that exist (or the one stamped now).
    let mut errs = FieldErrors::default();
    for (i, t) in svc.spec.traffic.iter().enumerate() {
        if let Some(rev) = t.revision_name.as_deref() {
            let known =
                rev == latest_created || existing.revisions.iter().any(|r| r.metadata.name == rev);
            if !known {
                errs.push(
                    format!("spec.traffic[{i}].revisionName"),
                    format!("revision {rev:?} not found in namespace {ns:?}"),
                );
            }
        }
    }
    errs.into_result()?;

    let old_svc = existing.service.as_ref();
    let spec_same = old_svc.is_some_and(|o| o.spec == svc.spec);
    let svc_gen = match old_svc {
        Some(o) if spec_same => o.metadata.generation.unwrap_or(1),
        Some(o) => o.metadata.generation.unwrap_or(0) + 1,
        None => 1,
    };
    let outcome = match old_svc {
        None => Outcome::Created,
        Some(o)
            if spec_same
                && new_revision.is_none()
                && o.metadata.labels == svc.metadata.labels
                && o.metadata.annotations == svc.metadata.annotations =>
        {
            Outcome::Unchanged
        }
        Some(_) => Outcome::Configured,
    };
    svc.metadata.generation = Some(svc_gen);
    svc.metadata.resource_version = None;
    svc.metadata.uid = Some(
        old_svc
            .and_then(|o| o.metadata.uid.clone())
            .unwrap_or_else(meta::new_uid),
    );
    svc.metadata.creation_timestamp = Some(
        old_svc
            .and_then(|o| o.metadata.creation_timestamp.clone())
            .unwrap_or_else(|| now.to_string()),
    );
    let owner = owner_ref(serving::API_VERSION, "Service", &svc.metadata);

    let configuration = Configuration {
        api_version: serving::API_VERSION.to_string(),
        kind: "Configuration".to_string(),
        metadata: child_meta(
            &svc,
            old_config.map(|c| &c.metadata),
            config_gen,
            now,
            &owner,
        ),
        spec: ConfigurationSpec {
            template: svc.spec.template.clone(),
        },
        status: ConfigurationStatus {
            observed_generation: Some(config_gen),
            latest_created_revision_name: latest_created,
            ..Default::default()
        },
    };
    let old_route = existing.route.as_ref();
    let route_gen = match old_route {
        Some(r) if r.spec.traffic == svc.spec.traffic => r.metadata.generation.unwrap_or(1),
        Some(r) => r.metadata.generation.unwrap_or(0) + 1,
        None => 1,
    };
    let route = Route {
        api_version: serving::API_VERSION.to_string(),
        kind: "Route".to_string(),
        metadata: child_meta(&svc, old_route.map(|r| &r.metadata), route_gen, now, &owner),
        spec: RouteSpec {
            traffic: svc.spec.traffic.clone(),
        },
        status: RouteStatus::default(),
    };
    Ok(ApplyPlan {
        service: svc,
        configuration,
        route,
        new_revision,
        outcome,
    })
}

/// A revision built from `svc`'s template, owned by its Configuration.
fn stamp_revision(svc: &Service, name: &str, config_gen: u64, now: &str) -> Revision {
    let t = &svc.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(SERVICE_LABEL.to_string(), svc.metadata.name.clone());
    labels.insert(CONFIGURATION_LABEL.to_string(), svc.metadata.name.clone());
    labels.insert(
        CONFIGURATION_GENERATION_LABEL.to_string(),
        config_gen.to_string(),
    );
    Revision {
        api_version: serving::API_VERSION.to_string(),
        kind: "Revision".to_string(),
        metadata: ObjectMeta {
            name: name.to_string(),
            namespace: svc.metadata.namespace.clone(),
            labels,
            annotations: t.metadata.annotations.clone(),
            generation: Some(1),
            uid: Some(meta::new_uid()),
            creation_timestamp: Some(now.to_string()),
            owner_references: vec![OwnerReference {
                api_version: serving::API_VERSION.to_string(),
                kind: "Configuration".to_string(),
                name: svc.metadata.name.clone(),
                uid: String::new(),
                controller: Some(true),
            }],
            ..Default::default()
        },
        spec: t.spec.clone(),
        status: RevisionStatus::default(),
    }
}

/// Whether revision `r` was stamped from `template` (spec, labels we did
/// not add, annotations).
fn same_template(r: &Revision, template: &serving::RevisionTemplate) -> bool {
    let mut labels = r.metadata.labels.clone();
    for k in [
        SERVICE_LABEL,
        CONFIGURATION_LABEL,
        CONFIGURATION_GENERATION_LABEL,
    ] {
        labels.remove(k);
    }
    r.spec == template.spec
        && r.metadata.annotations == template.metadata.annotations
        && labels == template.metadata.labels
}

fn owner_ref(api_version: &str, kind: &str, m: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: m.name.clone(),
        uid: m.uid.clone().unwrap_or_default(),
        controller: Some(true),
    }
}

fn child_meta(
    svc: &Service,
    old: Option<&ObjectMeta>,
    generation: u64,
    now: &str,
    owner: &OwnerReference,
) -> ObjectMeta {
    let mut labels = BTreeMap::new();
    labels.insert(SERVICE_LABEL.to_string(), svc.metadata.name.clone());
    ObjectMeta {
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        labels,
        generation: Some(generation),
        uid: Some(
            old.and_then(|m| m.uid.clone())
                .unwrap_or_else(meta::new_uid),
        ),
        creation_timestamp: Some(
            old.and_then(|m| m.creation_timestamp.clone())
                .unwrap_or_else(|| now.to_string()),
        ),
        owner_references: vec![owner.clone()],
        ..Default::default()
    }
}

// === status ===

/// A revision's status from its runtime state: Ready (= ResourcesAvailable
/// and ContainerHealthy), Active (has instances; a revision at zero is
/// Ready but not Active, as in Knative), and the replica counts.
pub fn revision_status(rev: &Revision, rt: Option<&RevisionRuntime>) -> RevisionStatus {
    let rt = rt.cloned().unwrap_or_default();
    let healthy = match &rt.failure {
        Some((reason, message)) => Condition::with(
            "ContainerHealthy",
            ConditionStatus::False,
            reason,
            message.clone(),
        ),
        None => Condition::truthy("ContainerHealthy"),
    };
    let mut conditions = living_conditions(vec![Condition::truthy("ResourcesAvailable"), healthy]);
    conditions.push(if rt.actual_replicas > 0 {
        Condition::truthy("Active")
    } else {
        Condition::with(
            "Active",
            ConditionStatus::False,
            "NoTraffic",
            "The target is not receiving traffic.".to_string(),
        )
    });
    RevisionStatus {
        observed_generation: rev.metadata.generation,
        conditions,
        actual_replicas: rt.actual_replicas,
        desired_replicas: rt.desired_replicas,
    }
}

fn is_ready(rev: &Revision) -> bool {
    meta::condition(&rev.status.conditions, "Ready").is_some_and(Condition::is_true)
}

fn config_generation_of(rev: &Revision) -> u64 {
    rev.metadata
        .labels
        .get(CONFIGURATION_GENERATION_LABEL)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The Configuration's status. `revisions` are the namespace's revisions
/// with their status already computed ([`revision_status`]).
pub fn configuration_status(config: &Configuration, revisions: &[Revision]) -> ConfigurationStatus {
    let name = &config.metadata.name;
    let latest_created = config.status.latest_created_revision_name.clone();
    let latest_ready = revisions
        .iter()
        .filter(|r| r.metadata.labels.get(CONFIGURATION_LABEL) == Some(name) && is_ready(r))
        .max_by_key(|r| config_generation_of(r))
        .map(|r| r.metadata.name.clone())
        .unwrap_or_default();
    let created = revisions.iter().find(|r| r.metadata.name == latest_created);
    let ready = match created {
        None => Condition::with(
            "Ready",
            ConditionStatus::Unknown,
            "RevisionMissing",
            format!("Configuration {name:?} is waiting for revision {latest_created:?}."),
        ),
        Some(r) if is_ready(r) => Condition::truthy("Ready"),
        Some(r) => {
            let c = meta::condition(&r.status.conditions, "Ready");
            let status = c.map_or(ConditionStatus::Unknown, |c| c.status);
            let msg = c.map(|c| c.message.clone()).unwrap_or_default();
            let reason = if status == ConditionStatus::False {
                "RevisionFailed"
            } else {
                "Deploying"
            };
            Condition::with(
                "Ready",
                status,
                reason,
                format!("Revision {latest_created:?} failed with message: {msg}."),
            )
        }
    };
    ConfigurationStatus {
        observed_generation: config.metadata.generation,
        conditions: vec![ready],
        latest_created_revision_name: latest_created,
        latest_ready_revision_name: latest_ready,
    }
}

/// The Route's status: its URL, its traffic resolved to revisions (with
/// each tag's URL), and AllTrafficAssigned / IngressReady / Ready.
pub fn route_status(
    route: &Route,
    config: Option<&ConfigurationStatus>,
    revisions: &[Revision],
    domain: &str,
) -> RouteStatus {
    let name = &route.metadata.name;
    let ns = &route.metadata.namespace;
    let mut traffic = Vec::new();
    let mut assigned = Condition::truthy("AllTrafficAssigned");
    let mut note = |c: Condition| {
        // The first problem found is the one reported; False wins over
        // Unknown.
        let worse = matches!(
            (assigned.status, c.status),
            (ConditionStatus::True, _) | (ConditionStatus::Unknown, ConditionStatus::False)
        );
        if worse {
            assigned = c;
        }
    };
    for t in &route.spec.traffic {
        let latest = t.latest_revision.unwrap_or(t.revision_name.is_none());
        let resolved = if latest {
            match config {
                Some(c) if !c.latest_ready_revision_name.is_empty() => {
                    Some(c.latest_ready_revision_name.clone())
                }
                Some(c) => {
                    let failed = c
                        .conditions
                        .first()
                        .is_some_and(|x| x.status == ConditionStatus::False);
                    note(Condition::with(
                        "AllTrafficAssigned",
                        if failed {
                            ConditionStatus::False
                        } else {
                            ConditionStatus::Unknown
                        },
                        "RevisionMissing",
                        if failed {
                            format!("Configuration {name:?} does not have any ready Revision.")
                        } else {
                            format!(
                                "Configuration {name:?} is waiting for a Revision to become ready."
                            )
                        },
                    ));
                    None
                }
                None => {
                    note(Condition::with(
                        "AllTrafficAssigned",
                        ConditionStatus::False,
                        "ConfigurationMissing",
                        format!("Configuration {name:?} referenced in traffic not found."),
                    ));
                    None
                }
            }
        } else {
            let rev = t.revision_name.clone().unwrap_or_default();
            match revisions.iter().find(|r| r.metadata.name == rev) {
                Some(r) if !is_ready(r) => {
                    let failed = meta::condition(&r.status.conditions, "Ready")
                        .is_some_and(|c| c.status == ConditionStatus::False);
                    note(Condition::with(
                        "AllTrafficAssigned",
                        if failed {
                            ConditionStatus::False
                        } else {
                            ConditionStatus::Unknown
                        },
                        "RevisionFailed",
                        format!("Revision {rev:?} referenced in traffic is not ready."),
                    ));
                    Some(rev)
                }
                Some(_) => Some(rev),
                None => {
                    note(Condition::with(
                        "AllTrafficAssigned",
                        ConditionStatus::False,
                        "RevisionMissing",
                        format!("Revision {rev:?} referenced in traffic not found."),
                    ));
                    None
                }
            }
        };
        traffic.push(TrafficTarget {
            tag: t.tag.clone(),
            revision_name: resolved,
            configuration_name: None,
            latest_revision: Some(latest),
            percent: t.percent,
            url: t
                .tag
                .as_ref()
                .map(|tag| format!("http://{}", serving::tag_host(tag, name, ns, domain))),
        });
    }
    let conditions = living_conditions(vec![assigned, Condition::truthy("IngressReady")]);
    RouteStatus {
        observed_generation: route.metadata.generation,
        conditions,
        url: Some(format!("http://{}", serving::host(name, ns, domain))),
        traffic,
    }
}

/// The Service's status from its Configuration's and Route's.
pub fn service_status(
    svc: &Service,
    config: Option<&ConfigurationStatus>,
    route: Option<&RouteStatus>,
    route_spec: Option<&RouteSpec>,
    domain: &str,
) -> ServiceStatus {
    let configs_ready = match config.and_then(|c| c.conditions.first()) {
        Some(c) => Condition {
            type_: "ConfigurationsReady".to_string(),
            ..c.clone()
        },
        None => Condition::with(
            "ConfigurationsReady",
            ConditionStatus::Unknown,
            "OutOfDate",
            "The Configuration is still working to reflect the latest desired specification."
                .to_string(),
        ),
    };
    let mut routes_ready = match route.and_then(|r| r.conditions.first()) {
        Some(c) => Condition {
            type_: "RoutesReady".to_string(),
            ..c.clone()
        },
        None => Condition::with(
            "RoutesReady",
            ConditionStatus::Unknown,
            "OutOfDate",
            "The Route is still working to reflect the latest desired specification.".to_string(),
        ),
    };
    // Traffic that follows the latest revision has not reached the latest
    // created one while that one is not ready yet.
    let follows_latest = route_spec.is_some_and(|s| {
        s.traffic
            .iter()
            .any(|t| t.latest_revision.unwrap_or(t.revision_name.is_none()))
    });
    if let Some(c) = config {
        if follows_latest
            && routes_ready.is_true()
            && c.latest_created_revision_name != c.latest_ready_revision_name
            && configs_ready.status != ConditionStatus::False
        {
            routes_ready = Condition::with(
                "RoutesReady",
                ConditionStatus::Unknown,
                "TrafficNotMigrated",
                "Traffic is not yet migrated to the latest revision.".to_string(),
            );
        }
    }
    ServiceStatus {
        observed_generation: svc.metadata.generation,
        conditions: living_conditions(vec![configs_ready, routes_ready]),
        url: Some(format!(
            "http://{}",
            serving::host(&svc.metadata.name, &svc.metadata.namespace, domain)
        )),
        latest_created_revision_name: config
            .map(|c| c.latest_created_revision_name.clone())
            .unwrap_or_default(),
        latest_ready_revision_name: config
            .map(|c| c.latest_ready_revision_name.clone())
            .unwrap_or_default(),
        traffic: route.map(|r| r.traffic.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
