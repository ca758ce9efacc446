//! Ferry's control plane.
//!
//! Owns: the xDS server, the Service → Revision → Route model and its store,
//! the KPA autoscaler, the scaler backends and the eventing broker (each
//! lands with its issue). Must not link the proxy, its filters or its xDS
//! client: the two programs share wire formats only.
//!
//! Everything time-based reads time through [`clock::Clock`], so the
//! autoscaler and delivery retries are tested on a manual clock.

pub mod clock;
