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
//! | [`config`] | Broker/Trigger manifests (Knative shape) → compiled config |
//! | [`filter`], [`cesql`] | trigger filters |
//! | [`delivery`] | one event to one subscriber: retries, backoff, DLS, replies |
//! | [`dispatcher`] | one trigger's loop and cursor |
//! | [`broker`] | wiring: logs, ingress, dispatchers, retention |
//!
//! See `docs/eventing.md` for the user-facing description.

pub mod broker;
pub mod cesql;
pub mod config;
pub mod delivery;
pub mod dispatcher;
pub mod duration;
pub mod event;
pub mod filter;
pub mod ingress;
pub mod log;

pub use broker::{Broker, BrokerOptions};
pub use config::EventingConfig;
