//! The state-of-the-world protocol state of one stream.
//!
//! Per type: the subscription (the names of the latest request), the
//! latest nonce and the version sent with it. The rules:
//! - a request whose `response_nonce` is set but is not the latest nonce of
//!   its type is stale: it is ignored entirely (its names included), since
//!   the client will answer the newer response;
//! - otherwise a set nonce makes it an ACK (no `error_detail`) or a NACK;
//!   a NACK is not answered with the same version again;
//! - the first request of a type, and any request changing the
//!   subscription, is answered with the current resources;
//! - a new snapshot is pushed for every subscribed type whose version
//!   differs from the one last sent, ACKed or not: the server never waits
//!   for an ACK before sending a newer version.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{next_nonce, Event, Resources, Step, Subscription};
use crate::xds::ResourceType;

#[derive(Debug, Default)]
pub struct SotwStream {
    types: [TypeState; 4],
}

#[derive(Debug, Default)]
struct TypeState {
    /// `None` until the client first asks for this type.
    subscription: Option<Subscription>,
    nonce: Option<String>,
    sent_version: Option<String>,
}

// === impl SotwStream ===

impl SotwStream {
    pub fn new() -> SotwStream {
        SotwStream::default()
    }

    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        res: &Resources,
    ) -> Step<DiscoveryResponse> {
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
        if !req.response_nonce.is_empty() {
            if st.nonce.as_deref() != Some(req.response_nonce.as_str()) {
                step.events.push(Event::Stale {
                    ty,
                    nonce: req.response_nonce.clone(),
                });
                return step;
            }
            let version = st.sent_version.clone().unwrap_or_default();
            match &req.error_detail {
                Some(err) => step.events.push(Event::Nack {
                    ty,
                    version,
                    kept: req.version_info.clone(),
                    nonce: req.response_nonce.clone(),
                    message: err.message.clone(),
                }),
                None => step.events.push(Event::Ack {
                    ty,
                    version: req.version_info.clone(),
                    nonce: req.response_nonce.clone(),
                }),
            }
        }
        let sub = Subscription::from_sotw(ty, &req.resource_names);
        let first = st.nonce.is_none();
        let changed = st.subscription.as_ref() != Some(&sub);
        if changed {
            step.events.push(Event::Subscribed {
                ty,
                sub: sub.clone(),
            });
            st.subscription = Some(sub);
        }
        if first || changed {
            self.respond(ty, res, &mut step);
        }
        step
    }

    /// A new snapshot: pushes every subscribed type whose version moved, in
    /// push order (CDS, EDS, LDS, RDS).
    pub fn on_snapshot(&mut self, res: &Resources) -> Step<DiscoveryResponse> {
        let mut step = Step {
            responses: Vec::new(),
            events: Vec::new(),
        };
        for ty in ResourceType::ALL {
            let st = &self.types[ty.index()];
            if st.subscription.is_some()
                && st.sent_version.as_deref() != Some(res.get(ty).version.as_str())
            {
                self.respond(ty, res, &mut step);
            }
        }
        step
    }

    /// The latest nonce sent for `ty` (for tests and diagnostics).
    pub fn nonce(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty.index()].nonce.as_deref()
    }

    fn respond(&mut self, ty: ResourceType, res: &Resources, step: &mut Step<DiscoveryResponse>) {
        let st = &mut self.types[ty.index()];
        let Some(sub) = &st.subscription else {
            return;
        };
        let tr = res.get(ty);
        let resources: Vec<_> = tr
            .resources
            .values()
            .filter(|r| sub.contains(&r.name))
            .map(|r| r.body.clone())
            .collect();
        let nonce = next_nonce();
        st.nonce = Some(nonce.clone());
        st.sent_version = Some(tr.version.clone());
        step.events.push(Event::Sent {
            ty,
            version: tr.version.clone(),
            nonce: nonce.clone(),
            resources: resources.len(),
            removed: 0,
        });
        step.responses.push(DiscoveryResponse {
            version_info: tr.version.clone(),
            resources,
            type_url: ty.type_url().to_string(),
            nonce,
            ..Default::default()
        });
    }
}
