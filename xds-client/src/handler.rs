//! The contract between the ADS stream and whoever consumes resources:
//! typed resources in, a list of rejections (and the names the consumer now
//! wants of dependent types) out.
//!
//! The client decodes every `Any` into the Rust type registered for its type
//! URL (see [`XdsResource`]) before the handler sees it, so a resource that
//! does not even decode is rejected here and the handler only ever deals with
//! well-formed protos. The exception is a type registered with
//! [`AdsClient::watch_encoded`](crate::AdsClient::watch_encoded): its
//! resources arrive as bytes, with only their name read.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

/// A resource type the client can subscribe to. Implemented here for the
/// Envoy types ADS carries; implement it for any other `prost` message to
/// subscribe to it.
pub trait XdsResource: prost::Message + prost::Name + Default + Send + 'static {
    /// Whether the type is subscribed by wildcard, as LDS and CDS are. For
    /// such a type a state-of-the-world response holds every resource, so a
    /// name missing from it has been removed. Other types (EDS, RDS) are
    /// subscribed by name, and an absent name only means "not sent".
    const WILDCARD: bool;

    /// The name the resource is known by in subscriptions.
    fn resource_name(&self) -> &str;
}

impl XdsResource for Cluster {
    const WILDCARD: bool = true;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for ClusterLoadAssignment {
    const WILDCARD: bool = false;
    fn resource_name(&self) -> &str {
        &self.cluster_name
    }
}

impl XdsResource for Listener {
    const WILDCARD: bool = true;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for RouteConfiguration {
    const WILDCARD: bool = false;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for Secret {
    const WILDCARD: bool = false;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

/// The type URL of `T` (`type.googleapis.com/envoy.config.cluster.v3.Cluster`).
pub fn type_url<T: XdsResource>() -> String {
    T::type_url()
}

/// One resource the handler refused, and why. Becomes one line of the
/// NACK's `error_detail`; a rejected resource is never recorded as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The resource's name.
    pub name: String,
    /// The whole sentence an operator reads in the NACK, naming the resource
    /// and the field (`listener "l1": filter_chains[0]...: unsupported ...`):
    /// the handler knows how its resources are best named, the client does
    /// not.
    pub reason: String,
}

impl Rejected {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejected {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Where an update came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A response on the ADS stream.
    Server,
    /// The on-disk cache, replayed at start before the first connection.
    Cache,
}

/// One decoded resource.
pub struct Decoded {
    pub name: String,
    /// The resource's own version (delta xDS); empty in state of the world.
    pub version: String,
    value: Box<dyn Any + Send>,
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Decoded {
    pub(crate) fn new(name: String, version: String, value: Box<dyn Any + Send>) -> Self {
        Decoded {
            name,
            version,
            value,
        }
    }

    pub fn get<T: XdsResource>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    /// The resource's bytes, for a type registered with
    /// [`AdsClient::watch_encoded`](crate::AdsClient::watch_encoded).
    pub fn encoded(&self) -> Option<&[u8]> {
        self.value.downcast_ref::<Encoded>().map(|e| e.0.as_slice())
    }
}

/// A resource of a type registered with
/// [`AdsClient::watch_encoded`](crate::AdsClient::watch_encoded): handed
/// over as received, for the handler to decode what it needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Encoded(pub Vec<u8>);

/// Field 1 of a message, as a string: the name of every xDS resource type
/// (`name`, or `cluster_name` for a ClusterLoadAssignment). Decoding only it
/// walks the top-level fields and skips the rest without decoding them.
#[derive(Clone, PartialEq, prost::Message)]
struct NameField {
    #[prost(string, tag = "1")]
    name: String,
}

/// Every change of one type carried by one response (or one cache file).
#[derive(Debug)]
pub struct Update {
    pub type_url: String,
    /// `version_info` (state of the world) or `system_version_info` (delta).
    pub version: String,
    /// Added or changed resources. A resource the response carried with the
    /// very bytes already accepted is not decoded again and is not here: it
    /// is listed in `unchanged` (state of the world re-sends every resource
    /// of a type, so an update of one endpoint in a thousand clusters
    /// carries one changed resource and 999 unchanged ones).
    pub resources: Vec<Decoded>,
    /// Names the response carried unchanged since they were accepted: the
    /// handler keeps what it made of them.
    pub unchanged: Vec<String>,
    /// Names that no longer exist: absent from a wildcard state-of-the-world
    /// response, or listed in a delta response's `removed_resources`.
    pub removed: Vec<String>,
    /// The update holds the whole set of the type (a wildcard SotW response
    /// or a cache replay; `resources` and `unchanged` together) rather than
    /// changes to it.
    pub full_state: bool,
    pub source: Source,
}

impl Update {
    /// An update built by hand: for testing a handler, or feeding it
    /// resources from another source.
    pub fn of<T: XdsResource>(
        version: impl Into<String>,
        resources: Vec<T>,
        removed: Vec<String>,
    ) -> Update {
        Update {
            type_url: T::type_url(),
            version: version.into(),
            resources: resources
                .into_iter()
                .map(|r| Decoded::new(r.resource_name().to_string(), String::new(), Box::new(r)))
                .collect(),
            unchanged: Vec::new(),
            removed,
            full_state: false,
            source: Source::Server,
        }
    }

    /// [`Update::of`] as a subscription made with
    /// [`AdsClient::watch_encoded`](crate::AdsClient::watch_encoded)
    /// delivers it: each resource encoded.
    pub fn of_encoded<T: XdsResource>(
        version: impl Into<String>,
        resources: Vec<T>,
        removed: Vec<String>,
    ) -> Update {
        Update {
            resources: resources
                .into_iter()
                .map(|r| {
                    let name = r.resource_name().to_string();
                    Decoded::new(name, String::new(), Box::new(Encoded(r.encode_to_vec())))
                })
                .collect(),
            ..Update::of::<T>(version, Vec::new(), removed)
        }
    }

    pub fn is<T: XdsResource>(&self) -> bool {
        self.type_url == T::type_url()
    }

    /// The encoded resources (name, bytes), if this update is of a type
    /// registered with [`AdsClient::watch_encoded`](crate::AdsClient::watch_encoded).
    pub fn encoded(&self) -> Vec<(&str, &[u8])> {
        self.resources
            .iter()
            .filter_map(|d| d.encoded().map(|b| (d.name.as_str(), b)))
            .collect()
    }

    /// The resources as `T`, if this update is of `T`'s type.
    pub fn typed<T: XdsResource>(&self) -> Option<Vec<(&str, &T)>> {
        if !self.is::<T>() {
            return None;
        }
        Some(
            self.resources
                .iter()
                .filter_map(|d| d.get::<T>().map(|r| (d.name.as_str(), r)))
                .collect(),
        )
    }
}

/// What the handler made of an update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Empty: the update is ACKed and recorded as accepted. Otherwise it is
    /// NACKed whole with these reasons and nothing of it is recorded.
    pub rejected: Vec<Rejected>,
    /// The full set of names now wanted for (non-wildcard) types, e.g. the
    /// ClusterLoadAssignments of the EDS clusters after a CDS update, or the
    /// route configurations the listeners name after an LDS update. Types
    /// not listed keep their subscription.
    pub subscriptions: Vec<(String, BTreeSet<String>)>,
}

impl Outcome {
    pub fn accept() -> Self {
        Outcome::default()
    }

    pub fn reject(rejected: Vec<Rejected>) -> Self {
        Outcome {
            rejected,
            subscriptions: Vec::new(),
        }
    }

    pub fn subscribe<T: XdsResource>(mut self, names: BTreeSet<String>) -> Self {
        self.subscriptions.push((T::type_url(), names));
        self
    }
}

/// Receives every update of every subscribed type, in the order they
/// arrive. The returned future must be `Send` so the client can run on any
/// runtime.
pub trait Handler: Send {
    fn apply(&mut self, update: Update) -> impl Future<Output = Outcome> + Send;
}

/// The type-erased decoder registered for one type URL.
pub(crate) type DecodeFn = fn(&[u8]) -> Result<(String, Box<dyn Any + Send>), prost::DecodeError>;

pub(crate) fn decode_erased<T: XdsResource>(
    bytes: &[u8],
) -> Result<(String, Box<dyn Any + Send>), prost::DecodeError> {
    let message = T::decode(bytes)?;
    Ok((message.resource_name().to_string(), Box::new(message)))
}

/// The decoder of a type registered encoded: reads the name (field 1) and
/// keeps the bytes.
pub(crate) fn decode_name_only(
    bytes: &[u8],
) -> Result<(String, Box<dyn Any + Send>), prost::DecodeError> {
    use prost::Message;
    let name = NameField::decode(bytes)?.name;
    Ok((name, Box::new(Encoded(bytes.to_vec()))))
}
