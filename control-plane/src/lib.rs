//! Ferry's control plane.
//!
//! Owns today:
//! - [`xds`]: the Aggregated Discovery Service (Envoy xDS v3, state of the
//!   world and delta on one gRPC port): per-node snapshots, a version per
//!   resource type and per resource, nonces, subscriptions, the ACK/NACK
//!   record of every node; and the "static snapshot" YAML file it serves
//!   until the serving model generates resources (`docs/xds.md`).
//! - [`model`]: Knative Service → Configuration → Revision, Route
//!   (`serving.knative.dev/v1`) and Broker/Trigger (`eventing.knative.dev/v1`):
//!   manifests, defaults, validation with field paths, revision stamping,
//!   status (`docs/serving.md`).
//! - [`store`]: the `Store` trait, the crash-safe file store in the data
//!   directory, per-revision runtime state (scale, endpoints) and the
//!   `Serving` operations other components read and watch.
//! - [`api`]: the REST API (`/v1/namespaces/{ns}/services`… and
//!   `GET /v1/xds/nodes`, `/v1/xds/snapshot`, `/metrics`, `/healthz`).
//! - [`cli`]: `ferry-control apply / get / delete`, clients of that API.
//! - [`app`]: the wiring of `ferry-control serve`.
//! - [`clock`]: time as the control plane sees it.
//!
//! - [`autoscaler`]: Knative's KPA (decider + applier) and `autoscale simulate`.
//! - [`scaler`]: runs revisions' instances (the `process` backend: local
//!   processes with `ferry-proxy` sidecars); [`control_loop`] drives it from
//!   the autoscaler; [`report_server`] takes the proxies' load reports.
//! - [`eventing`]: the CloudEvents broker (ingress, durable log, triggers,
//!   delivery).
//!
//! Must not link the proxy, its filters or its xDS client: the two programs
//! share wire formats only (Envoy's protos from `envoy-types`, and
//! `proto/load_report.proto`).
//!
//! Everything time-based reads time through [`clock::Clock`], so the
//! autoscaler and delivery retries are tested on a manual clock; the xDS
//! debounce uses tokio's timer, which tests pause.

pub mod api;
pub mod app;
pub mod autoscaler;
pub mod cli;
pub mod clock;
pub mod control_loop;
pub mod eventing;
pub mod model;
pub mod report_server;
pub mod scaler;
pub mod store;
pub mod up;
pub mod xds;
