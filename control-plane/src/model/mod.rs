//! The serving and eventing model: Knative-shaped objects, their defaults,
//! their validation, revision stamping and status.
//!
//! - [`serving`]: Service, Configuration, Revision, Route
//!   (`serving.knative.dev/v1`), defaults and validation.
//! - [`eventing`]: Broker and Trigger (`eventing.knative.dev/v1`), kept as
//!   generic objects whose shape is checked.
//! - [`reconcile`]: what an apply of a Service writes (the Configuration,
//!   the Route, a new Revision when the template changed) and the status
//!   every object reports.
//! - [`manifest`]: multi-document YAML/JSON → typed objects.
//! - [`meta`], [`error`]: metadata, conditions, names, field-path errors.
//!
//! Everything here is pure: no I/O, no clock except where a timestamp is
//! stamped on creation, so the rules are unit-tested directly.

use serde::{Deserialize, Serialize};

pub mod error;
pub mod eventing;
pub mod manifest;
pub mod meta;
pub mod reconcile;
pub mod serving;

pub use error::{FieldError, FieldErrors};
pub use eventing::EventingObject;
pub use manifest::Manifest;
pub use meta::{Condition, ConditionStatus, ObjectMeta};
pub use serving::{Configuration, Revision, Route, Service, TrafficTarget};

/// Every kind of object the control plane stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    Configuration,
    Revision,
    Route,
    Broker,
    Trigger,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::Configuration,
        Kind::Revision,
        Kind::Route,
        Kind::Broker,
        Kind::Trigger,
    ];

    /// `Service`, as in `kind:`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Configuration => "Configuration",
            Kind::Revision => "Revision",
            Kind::Route => "Route",
            Kind::Broker => "Broker",
            Kind::Trigger => "Trigger",
        }
    }

    /// `services`, as in the REST paths and `ferry-control get`.
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Configuration => "configurations",
            Kind::Revision => "revisions",
            Kind::Route => "routes",
            Kind::Broker => "brokers",
            Kind::Trigger => "triggers",
        }
    }

    pub const fn api_version(self) -> &'static str {
        match self {
            Kind::Broker | Kind::Trigger => eventing::API_VERSION,
            _ => serving::API_VERSION,
        }
    }

    /// `service.serving.knative.dev`, as kubectl prints it.
    pub fn qualified(self) -> String {
        let group = self.api_version().split('/').next().unwrap_or("");
        format!("{}.{group}", self.name().to_ascii_lowercase())
    }

    /// Accepts the plural, the singular and kubectl's short names
    /// (`ksvc`, `rev`, `rt`, `cfg`), case-insensitively.
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        let s = s.split('.').next().unwrap_or("");
        Some(match s {
            "service" | "services" | "ksvc" | "svc" => Kind::Service,
            "configuration" | "configurations" | "config" | "cfg" => Kind::Configuration,
            "revision" | "revisions" | "rev" => Kind::Revision,
            "route" | "routes" | "rt" => Kind::Route,
            "broker" | "brokers" => Kind::Broker,
            "trigger" | "triggers" => Kind::Trigger,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
