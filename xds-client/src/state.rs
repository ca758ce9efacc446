//! Per type URL: what is subscribed, what was last accepted (kept across
//! reconnects), and the nonce of the current stream; and the requests built
//! from them. Pure data: no IO here, so the protocol rules can be read (and
//! tested) apart from the stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;

use crate::handler::{DecodeFn, Rejected};

/// gRPC `INVALID_ARGUMENT`: the code Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// One accepted resource, as little of it as the protocol needs: its
/// version is re-announced on reconnect (delta `initial_resource_versions`),
/// its hash recognises the resource when a response carries it again
/// unchanged (state of the world re-sends every resource of a type), and its
/// encoded bytes are kept only for the cache file. The decoded form is the
/// handler's business: the client never holds it past one update.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accepted {
    pub version: String,
    pub hash: u64,
    /// The encoded resource; `None` unless a cache directory needs it.
    pub body: Option<Vec<u8>>,
}

/// The hash that tells an unchanged resource from a changed one: 64 bits
/// of xxHash over the encoded bytes (the server's own encoding, so equal
/// bytes mean an equal resource).
pub(crate) fn body_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

#[derive(Debug)]
pub(crate) struct TypeState {
    pub type_url: String,
    pub wildcard: bool,
    pub decode: DecodeFn,
    /// Names subscribed, for non-wildcard types.
    pub names: BTreeSet<String>,
    /// The last accepted `version_info` / `system_version_info`.
    pub version: String,
    /// The last nonce received on the current stream; cleared on reconnect
    /// because nonces belong to one stream.
    pub nonce: String,
    /// The last accepted resources by name.
    pub accepted: BTreeMap<String, Accepted>,
}

/// The name of an accepted resource of this type whose bytes hash to
/// `hash`: in state of the world a resource carries no name outside its
/// body, so an unchanged one is recognised by its hash alone.
pub(crate) fn accepted_by_hash(accepted: &BTreeMap<String, Accepted>) -> HashMap<u64, &str> {
    accepted
        .iter()
        .map(|(name, a)| (a.hash, name.as_str()))
        .collect()
}

// === impl TypeState ===

impl TypeState {
    pub fn new(type_url: String, wildcard: bool, decode: DecodeFn) -> Self {
        TypeState {
            type_url,
            wildcard,
            decode,
            names: BTreeSet::new(),
            version: String::new(),
            nonce: String::new(),
            accepted: BTreeMap::new(),
        }
    }

    /// Whether a stream should ask for this type now. A non-wildcard type
    /// with no names is not requested at all: an empty first request would
    /// read as a wildcard to many servers.
    pub fn wants_initial_request(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }

    fn sotw_names(&self) -> Vec<String> {
        if self.wildcard {
            Vec::new()
        } else {
            self.names.iter().cloned().collect()
        }
    }

    /// A request carrying the current state: the first request of a stream
    /// (with the last accepted version, so a server that has nothing newer
    /// need not resend), an ACK, or a subscription change.
    pub fn sotw_request(&self, node: &Node) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.version.clone(),
            node: Some(node.clone()),
            resource_names: self.sotw_names(),
            type_url: self.type_url.clone(),
            response_nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// A NACK: the previous accepted version, the rejected response's nonce
    /// (already stored in `self.nonce`) and the reasons.
    pub fn sotw_nack(&self, node: &Node, rejected: &[Rejected]) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(error_detail(rejected)),
            ..self.sotw_request(node)
        }
    }

    /// The first delta request of a stream: the subscription plus every
    /// resource already held, so the server sends only what differs.
    pub fn delta_initial(&self, node: &Node) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: self.type_url.clone(),
            // Wildcard types subscribe with an empty list on the first
            // request (the legacy wildcard every server understands).
            resource_names_subscribe: self.sotw_names(),
            initial_resource_versions: self
                .accepted
                .iter()
                .map(|(name, a)| (name.clone(), a.version.clone()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    pub fn delta_ack(&self, node: &Node) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: self.type_url.clone(),
            response_nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    pub fn delta_nack(&self, node: &Node, rejected: &[Rejected]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            error_detail: Some(error_detail(rejected)),
            ..self.delta_ack(node)
        }
    }

    /// Replaces the subscription of a non-wildcard type. Returns the names
    /// added and removed; accepted resources no longer subscribed are
    /// forgotten (the server will not update them any more).
    pub fn resubscribe(&mut self, names: BTreeSet<String>) -> (Vec<String>, Vec<String>) {
        let added: Vec<String> = names.difference(&self.names).cloned().collect();
        let removed: Vec<String> = self.names.difference(&names).cloned().collect();
        self.accepted.retain(|name, _| names.contains(name));
        self.names = names;
        (added, removed)
    }

    /// The cache file's content: the accepted set as one delta response,
    /// which keeps per-resource versions and the type's version together.
    pub fn to_cache(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.version.clone(),
            type_url: self.type_url.clone(),
            resources: self
                .accepted
                .iter()
                .filter_map(|(name, a)| {
                    Some(Resource {
                        name: name.clone(),
                        version: a.version.clone(),
                        resource: Some(Any {
                            type_url: self.type_url.clone(),
                            value: a.body.clone()?,
                        }),
                        ..Default::default()
                    })
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The cache file name: the type's message name
    /// (`envoy.config.cluster.v3.Cluster.pb`).
    pub fn cache_file_name(&self) -> String {
        let short = self.type_url.rsplit('/').next().unwrap_or(&self.type_url);
        let safe: String = short
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}.pb")
    }
}

/// The NACK's `error_detail`: the rejections' reasons (each names its
/// resource), joined with "; " so the message stays one line in logs.
pub(crate) fn error_detail(rejected: &[Rejected]) -> Status {
    let message = rejected
        .iter()
        .map(|r| format!("{r}"))
        .collect::<Vec<_>>()
        .join("; ");
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::decode_erased;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn state(wildcard: bool) -> TypeState {
        TypeState::new(
            "type.googleapis.com/x".to_string(),
            wildcard,
            decode_erased::<Cluster>,
        )
    }

    #[test]
    fn nack_keeps_previous_version_and_names_each_resource() {
        let mut st = state(true);
        st.version = "v1".into();
        st.nonce = "n2".into();
        let req = st.sotw_nack(
            &Node::default(),
            &[
                Rejected::new("a", "bad thing"),
                Rejected::new("b", "worse thing"),
            ],
        );
        assert_eq!(req.version_info, "v1");
        assert_eq!(req.response_nonce, "n2");
        let detail = req.error_detail.unwrap_or_default();
        assert_eq!(detail.code, INVALID_ARGUMENT);
        assert_eq!(detail.message, "bad thing; worse thing");
    }

    #[test]
    fn resubscribe_forgets_unsubscribed_resources() {
        let mut st = state(false);
        assert!(!st.wants_initial_request());
        st.resubscribe(["a".to_string(), "b".to_string()].into());
        for n in ["a", "b"] {
            st.accepted.insert(
                n.to_string(),
                Accepted {
                    version: "1".into(),
                    hash: 0,
                    body: None,
                },
            );
        }
        let (added, removed) = st.resubscribe(["b".to_string(), "c".to_string()].into());
        assert_eq!(added, ["c"]);
        assert_eq!(removed, ["a"]);
        assert_eq!(st.accepted.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(st.sotw_request(&Node::default()).resource_names, ["b", "c"]);
    }

    #[test]
    fn cache_file_name_is_the_message_name() {
        let st = TypeState::new(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            true,
            decode_erased::<Cluster>,
        );
        assert_eq!(st.cache_file_name(), "envoy.config.cluster.v3.Cluster.pb");
    }
}
