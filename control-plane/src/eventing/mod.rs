//! The eventing broker: Knative's Broker/Trigger model over a durable log.
//!
//! ```text
//! producer ─POST /{ns}/{broker}─▶ ingress ──append (group commit, fsync)──▶ log
//!                                   │ 202 after the fsync                    │
//!                                                                            ▼
//!            subscriber ◀── delivery (retries, DLS) ◀── dispatcher per trigger (own cursor)
//!                 │ 2xx with a CloudEvent = reply ──append──▶ log
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`event`] | the CloudEvent type, validation, HTTP binding, canonical log form |
//! | [`log`] | the [`log::EventLog`] trait and the embedded segmented log |
//! | [`ingress`] | the HTTP server producers post to |
//! | [`config`] | stored Broker/Trigger objects (Knative shape) → compiled definitions; `apply`'s validation |
//! | [`filter`], [`cesql`] | trigger filters |
//! | [`delivery`] | one event to one subscriber: retries, backoff, DLS, replies |
//! | [`dispatcher`] | one trigger's loop and cursor |
//! | [`broker`] | what runs: ingress, a log per broker, a dispatcher per trigger, retention |
//! | [`controller`] | the store → [`broker::Eventing`], and status back to the store |
//! | [`metrics`] | the `ferry_broker_*` / `ferry_trigger_*` Prometheus metrics |
//! | [`seed`] | `serve --broker-config FILE`: manifests applied to the store at start |
//!
//! See `docs/eventing.md` for the user-facing description.

pub mod broker;
pub mod cesql;
pub mod config;
pub mod controller;
pub mod delivery;
pub mod dispatcher;
pub mod duration;
pub mod event;
pub mod filter;
pub mod ingress;
pub mod log;
pub mod metrics;
pub mod seed;

pub use broker::{BrokerOptions, Eventing};
pub use controller::Controller;
pub use metrics::EventingMetrics;
