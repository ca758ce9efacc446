//! An Aggregated Discovery Service (xDS v3) client.
//!
//! Owns: the ADS stream, per-type version/nonce, ACK/NACK, subscription
//! order, reconnect backoff, and the last accepted resources. Must not know:
//! the proxy's config model. It hands typed resources to a
//! [`ResourceHandler`] and turns the rejections it returns into a NACK.
//!
//! The stream itself lands with the xDS issue; the handler contract and the
//! reconnect backoff are here now because the proxy is written against them.

pub mod backoff;

/// One resource the handler refused, and why. Becomes the NACK's
/// `error_detail`; a rejected resource is never recorded as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// Receives every update of one resource type. Returning rejections NACKs
/// the whole update; the previous resources stay in force.
pub trait ResourceHandler<T>: Send + Sync {
    fn apply(&self, resources: &[(String, T)], removed: &[String]) -> Result<(), Vec<Rejected>>;
}
