//! Ferry's data plane: listeners, the HTTP pipeline, routing, upstream
//! clusters, the admin server. See `docs/ARCHITECTURE.md` for the map and
//! `pipeline` for the life of one request.
//!
//! Owns: everything a running proxy does with its config. Must not touch:
//! the control plane's model (it only ever sees Envoy resources or its own
//! YAML).

pub mod access_log;
pub mod active;
pub mod admin;
pub mod app;
pub mod config;
pub mod error;
pub mod http;
pub mod listener;
pub mod pipeline;
pub mod queue;
pub mod report;
pub mod router;
pub mod stats;
pub mod upstream;
pub mod xds;
