//! Ferry's control plane.
//!
//! Owns today:
//! - [`xds`]: the Aggregated Discovery Service (Envoy xDS v3, state of the
//!   world and delta on one gRPC port): per-node snapshots, a version per
//!   resource type and per resource, nonces, subscriptions, the ACK/NACK
//!   record of every node; and the "static snapshot" YAML file it serves
//!   until the serving model generates resources (`docs/xds.md`).
//! - [`api`]: the REST API (`GET /v1/xds/nodes`, `/v1/xds/snapshot`,
//!   `/metrics`, `/healthz`).
//! - [`app`]: the wiring of `ferry-control serve`.
//! - [`clock`]: time as the control plane sees it.
//!
//! Still to come, each with its issue: the Service → Revision → Route model
//! and its store, the KPA autoscaler, the scaler backends and the eventing
//! broker. Must not link the proxy, its filters or its xDS client: the two
//! programs share wire formats only (Envoy's protos, from `envoy-types`).
//!
//! Everything time-based reads time through [`clock::Clock`], so the
//! autoscaler and delivery retries are tested on a manual clock; the xDS
//! debounce uses tokio's timer, which tests pause.

pub mod api;
pub mod app;
pub mod clock;
pub mod xds;
