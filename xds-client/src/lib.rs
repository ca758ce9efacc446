//! An Aggregated Discovery Service (xDS v3) client.
//!
//! Owns: the ADS stream (state of the world or delta), per-type version,
//! nonce and subscribed names, ACK/NACK with an `error_detail` naming each
//! rejected resource, the subscription order (CDS → EDS → LDS → RDS, with
//! EDS and RDS names supplied by the handler as it learns them), reconnect
//! with jittered capped backoff, the last accepted resources (kept across
//! reconnects, optionally persisted to a cache directory).
//!
//! Must not know: the proxy's config model, or what a resource means. It
//! hands decoded resources to a [`Handler`] (or, for a type registered with
//! [`AdsClient::watch_encoded`], their bytes, for the handler to decode only
//! what it needs) and turns the rejections it returns into a NACK; a
//! rejected resource is never recorded as accepted. A resource a response
//! repeats byte for byte is not decoded again: the handler only gets its
//! name ([`Update::unchanged`]). Of an accepted resource the client keeps its
//! version and a hash, and its bytes only when a cache directory is set.
//!
//! ```no_run
//! # use ferry_xds_client::*;
//! # async fn demo<H: Handler>(handler: H) -> Result<(), Error> {
//! let client = AdsClient::new(AdsConfig::new("http://127.0.0.1:18000", "node-1", "mesh"))?
//!     .envoy_types();
//! client.run(handler).await;
//! # Ok(())
//! # }
//! ```

pub mod backoff;
mod client;
mod error;
mod handler;
mod state;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{node, AdsClient, AdsConfig, Mode};
/// The protos this crate speaks, re-exported so users name the same types.
pub use envoy_types;
pub use error::Error;
pub use handler::{type_url, Decoded, Handler, Outcome, Rejected, Source, Update, XdsResource};
