//! The delta (incremental) protocol state of one stream.
//!
//! Per type: whether the client subscribed to everything (wildcard), the
//! names it subscribed to, what it holds (name → version, seeded from
//! `initial_resource_versions` on a reconnect), and the latest nonce. The
//! rules:
//! - the first request of a type is a wildcard subscription if it names
//!   nothing or names `*`; later `*` in subscribe/unsubscribe toggles it;
//! - a response carries the resources in scope whose version differs from
//!   what the client holds, plus every name it just subscribed to (the
//!   protocol requires an answer even if the client seems to have it), and
//!   `removed_resources` for names it holds or asked for that do not exist;
//! - a request with a nonce that is not the latest of its type is stale:
//!   its ACK/NACK is ignored, but its subscribe/unsubscribe lists still
//!   apply, since delta never restates them and dropping one would lose it;
//! - what was sent counts as held once sent, without waiting for the ACK:
//!   a NACKed resource is not re-sent until it changes (re-sending the same
//!   bytes would earn the same NACK), and a later fix, or a revert to what
//!   the client kept, differs from what was sent and so goes out.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};

use super::{next_nonce, Event, Resources, Step, Subscription};
use crate::xds::ResourceType;

#[derive(Debug, Default)]
pub struct DeltaStream {
    types: [TypeState; 4],
}

#[derive(Debug, Default)]
struct TypeState {
    started: bool,
    sub: Subscription,
    /// What the client holds: name → resource version.
    held: BTreeMap<String, String>,
    nonce: Option<String>,
    sent_version: Option<String>,
}

// === impl DeltaStream ===

impl DeltaStream {
    pub fn new() -> DeltaStream {
        DeltaStream::default()
    }

    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        res: &Resources,
    ) -> Step<DeltaDiscoveryResponse> {
        let mut step = Step {
            responses: Vec::new(),
            events: Vec::new(),
        };
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            step.events.push(Event::UnknownType {
                type_url: req.type_url.clone(),
            });
            return step;
        };
        let st = &mut self.types[ty.index()];
        let first = !st.started;
        if first {
            st.started = true;
            st.sub.wildcard = req.resource_names_subscribe.is_empty()
                || req.resource_names_subscribe.iter().any(|n| n == "*");
            st.held = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }

        if !req.response_nonce.is_empty() {
            if st.nonce.as_deref() == Some(req.response_nonce.as_str()) {
                let version = st.sent_version.clone().unwrap_or_default();
                match &req.error_detail {
                    Some(err) => step.events.push(Event::Nack {
                        ty,
                        version,
                        kept: String::new(),
                        nonce: req.response_nonce.clone(),
                        message: err.message.clone(),
                    }),
                    None => step.events.push(Event::Ack {
                        ty,
                        version,
                        nonce: req.response_nonce.clone(),
                    }),
                }
            } else {
                step.events.push(Event::Stale {
                    ty,
                    nonce: req.response_nonce.clone(),
                });
            }
        }

        let before = st.sub.clone();
        let mut asked = BTreeSet::new();
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.sub.wildcard = true;
            } else {
                st.sub.names.insert(n.clone());
                asked.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.sub.wildcard = false;
            } else {
                st.sub.names.remove(n);
                // The client forgets what it unsubscribed from, unless the
                // wildcard still covers it.
                if !st.sub.wildcard {
                    st.held.remove(n);
                }
            }
        }
        if first || st.sub != before {
            step.events.push(Event::Subscribed {
                ty,
                sub: st.sub.clone(),
            });
        }
        // The first request of a type is always answered, even with nothing,
        // so the client's initial fetch for that type completes.
        self.respond(ty, res, &asked, first, &mut step);
        step
    }

    /// A new snapshot: sends every started type's changes, in push order.
    pub fn on_snapshot(&mut self, res: &Resources) -> Step<DeltaDiscoveryResponse> {
        let mut step = Step {
            responses: Vec::new(),
            events: Vec::new(),
        };
        for ty in ResourceType::ALL {
            if self.types[ty.index()].started {
                self.respond(ty, res, &BTreeSet::new(), false, &mut step);
            }
        }
        step
    }

    pub fn nonce(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty.index()].nonce.as_deref()
    }

    fn respond(
        &mut self,
        ty: ResourceType,
        res: &Resources,
        asked: &BTreeSet<String>,
        always: bool,
        step: &mut Step<DeltaDiscoveryResponse>,
    ) {
        let st = &mut self.types[ty.index()];
        let tr = res.get(ty);
        let mut resources = Vec::new();
        for r in tr.resources.values() {
            if !st.sub.contains(&r.name) {
                continue;
            }
            if asked.contains(&r.name) || st.held.get(&r.name) != Some(&r.version) {
                resources.push(PbResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                });
            }
        }
        let mut removed: BTreeSet<String> = st
            .held
            .keys()
            .filter(|n| !tr.resources.contains_key(*n))
            .cloned()
            .collect();
        // Telling the client at once that a name it asked for does not exist
        // spares it waiting out its initial-fetch timeout.
        removed.extend(
            asked
                .iter()
                .filter(|n| !tr.resources.contains_key(*n))
                .cloned(),
        );
        if resources.is_empty() && removed.is_empty() && !always {
            return;
        }
        for r in &resources {
            st.held.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            st.held.remove(n);
        }
        let nonce = next_nonce();
        st.nonce = Some(nonce.clone());
        st.sent_version = Some(tr.version.clone());
        step.events.push(Event::Sent {
            ty,
            version: tr.version.clone(),
            nonce: nonce.clone(),
            resources: resources.len(),
            removed: removed.len(),
        });
        step.responses.push(DeltaDiscoveryResponse {
            system_version_info: tr.version.clone(),
            resources,
            type_url: ty.type_url().to_string(),
            removed_resources: removed.into_iter().collect(),
            nonce,
            ..Default::default()
        });
    }
}
