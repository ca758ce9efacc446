//! The ADS stream: connect, subscribe in order, hand each response to the
//! handler, ACK or NACK it, follow the handler's subscription changes, and
//! reconnect with backoff when the stream ends.
//!
//! ```text
//! run ─▶ replay cache ─▶ loop { connect ─▶ stream (SotW | delta) ─▶ backoff }
//!                                   │
//!   response ─▶ decode ─▶ Handler::apply ─▶ ACK (record, persist) | NACK
//!                                        └▶ subscription changes ─▶ requests
//! ```
//!
//! A resource whose bytes are those of the accepted one (state of the world
//! re-sends every resource of a type on each change) is not decoded: the
//! handler gets its name in [`Update::unchanged`]. What the client keeps of
//! an accepted resource is its version and a hash (plus its bytes when a
//! cache directory is set), never the decoded message.

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::handler::{
    decode_erased, decode_name_only, Decoded, Handler, Rejected, Source, Update, XdsResource,
};
use crate::state::{accepted_by_hash, body_hash, Accepted, TypeState};

/// State of the world or incremental.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// `StreamAggregatedResources`.
    #[default]
    Sotw,
    /// `DeltaAggregatedResources`.
    Delta,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// `http://host:port` of the ADS server.
    pub server: String,
    /// Sent with every request (servers key snapshots by id and cluster).
    pub node: Node,
    pub mode: Mode,
    /// Persist the last accepted resources here (one file per type) and
    /// replay them at start, so a restart while the server is down still
    /// starts with the last config.
    pub cache_dir: Option<PathBuf>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    /// Largest response accepted; big meshes send tens of MiB of routes.
    pub max_message_size: usize,
}

impl AdsConfig {
    pub fn new(server: impl Into<String>, node_id: &str, node_cluster: &str) -> Self {
        AdsConfig {
            server: server.into(),
            node: node(node_id, node_cluster),
            mode: Mode::Sotw,
            cache_dir: None,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_message_size: 256 * 1024 * 1024,
        }
    }
}

/// The `Node` a Ferry client announces.
pub fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: cluster.to_string(),
        user_agent_name: "ferry".to_string(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_string(),
        )),
        ..Default::default()
    }
}

/// An ADS client. Register the types in subscription order, then [`run`].
///
/// [`run`]: AdsClient::run
#[derive(Debug)]
pub struct AdsClient {
    config: AdsConfig,
    endpoint: Endpoint,
    types: Vec<TypeState>,
}

/// Requests queued for the current stream. Unbounded: requests are few and
/// small, and a bounded queue could stall the response loop on a server that
/// is itself waiting for us to read.
enum Outbound {
    Sotw(mpsc::UnboundedSender<DiscoveryRequest>),
    Delta(mpsc::UnboundedSender<DeltaDiscoveryRequest>),
}

// === impl AdsClient ===

impl AdsClient {
    pub fn new(config: AdsConfig) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(config.server.clone())
            .map_err(|e| Error::InvalidServer(config.server.clone(), e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Keepalives notice a control plane that vanished without a
            // FIN (host down, partition), which would otherwise leave the
            // stream open and the client waiting forever. TCP keepalive does
            // it quietly; HTTP/2 pings stay at 5 minutes because gRPC-Go
            // servers (go-control-plane, istiod) answer more frequent pings
            // with GOAWAY `too_many_pings` by default.
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(300))
            .keep_alive_timeout(Duration::from_secs(20));
        Ok(AdsClient {
            config,
            endpoint,
            types: Vec::new(),
        })
    }

    /// Subscribes to `T`. Types are requested in registration order.
    pub fn watch<T: XdsResource>(mut self) -> Self {
        if self.index(&T::type_url()).is_none() {
            self.types.push(TypeState::new(
                T::type_url(),
                T::WILDCARD,
                decode_erased::<T>,
            ));
        }
        self
    }

    /// Subscribes to `T` without decoding its resources: the handler gets
    /// each one's bytes ([`Update::encoded`]) and decodes what it needs, for
    /// instance only the parts of a large resource that changed. The client
    /// reads the name (field 1, as in every xDS resource type) and rejects a
    /// resource whose top-level fields do not parse; anything deeper is the
    /// handler's to reject.
    pub fn watch_encoded<T: XdsResource>(mut self) -> Self {
        if self.index(&T::type_url()).is_none() {
            self.types
                .push(TypeState::new(T::type_url(), T::WILDCARD, decode_name_only));
        }
        self
    }

    /// Envoy's ADS order: CDS → EDS → LDS → RDS, so clusters and their
    /// endpoints are known before the listeners and routes that use them.
    pub fn envoy_types(self) -> Self {
        use envoy_types::pb::envoy::config::{
            cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
            route::v3::RouteConfiguration,
        };
        self.watch::<Cluster>()
            .watch::<ClusterLoadAssignment>()
            .watch::<Listener>()
            .watch::<RouteConfiguration>()
    }

    fn index(&self, type_url: &str) -> Option<usize> {
        self.types.iter().position(|t| t.type_url == type_url)
    }

    /// Replays the cache, then keeps a stream open forever: every update goes
    /// to `handler`; when the stream ends, reconnects after a jittered,
    /// capped backoff that resets once a response arrives. Cancel it by
    /// dropping the future (or aborting its task).
    pub async fn run<H: Handler>(mut self, mut handler: H) -> Infallible {
        self.replay_cache(&mut handler).await;
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
        loop {
            let result = match self.endpoint.connect().await {
                Ok(channel) => match self.config.mode {
                    Mode::Sotw => self.sotw_stream(channel, &mut handler, &mut backoff).await,
                    Mode::Delta => self.delta_stream(channel, &mut handler, &mut backoff).await,
                },
                Err(e) => Err(Error::Connect(e)),
            };
            let delay = backoff.next_delay();
            match result {
                Ok(()) => {
                    tracing::warn!(server = %self.config.server, ?delay, "ADS stream closed by the server; reconnecting")
                }
                Err(e) => {
                    tracing::warn!(server = %self.config.server, ?delay, error = %e, "ADS stream failed; reconnecting")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    // === state of the world ===

    async fn sotw_stream<H: Handler>(
        &mut self,
        channel: Channel,
        handler: &mut H,
        backoff: &mut Backoff,
    ) -> Result<(), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        for st in &mut self.types {
            st.nonce.clear();
            if st.wants_initial_request() {
                send_sotw(&tx, st.sotw_request(&self.config.node));
            }
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size)
            .max_encoding_message_size(self.config.max_message_size);
        let mut inbound = client
            .stream_aggregated_resources(receiver_stream(rx))
            .await?
            .into_inner();
        let out = Outbound::Sotw(tx);
        tracing::info!(server = %self.config.server, "ADS stream open (state of the world)");
        while let Some(resp) = inbound.message().await? {
            backoff.reset();
            self.on_sotw_response(resp, handler, &out).await;
        }
        Ok(())
    }

    async fn on_sotw_response<H: Handler>(
        &mut self,
        resp: DiscoveryResponse,
        handler: &mut H,
        out: &Outbound,
    ) {
        let Some(idx) = self.index(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "response for a type never subscribed; ignored");
            return;
        };
        let node = &self.config.node;
        let st = &mut self.types[idx];
        st.nonce = resp.nonce.clone();

        let mut rejected = Vec::new();
        let mut decoded = Vec::with_capacity(resp.resources.len());
        let mut unchanged = Vec::new();
        let mut raw = Vec::with_capacity(resp.resources.len());
        let mut seen = HashSet::new();
        let known = accepted_by_hash(&st.accepted);
        for (i, any) in resp.resources.into_iter().enumerate() {
            let hash = body_hash(&any.value);
            let same = known.get(&hash).filter(|_| any.type_url == st.type_url);
            let name = match same {
                Some(name) => name.to_string(),
                None => match decode_any(st, &any) {
                    Err(reason) => {
                        rejected.push(Rejected::new(
                            format!("resources[{i}]"),
                            format!("resources[{i}]: {reason}"),
                        ));
                        continue;
                    }
                    Ok((name, value)) => {
                        decoded.push(Decoded::new(name.clone(), String::new(), value));
                        name
                    }
                },
            };
            if !seen.insert(name.clone()) {
                let reason = format!("{name:?}: duplicate resource name in response");
                rejected.push(Rejected::new(name, reason));
                continue;
            }
            if same.is_some() {
                unchanged.push(name.clone());
            }
            let body = self.config.cache_dir.is_some().then_some(any.value);
            raw.push((name, hash, body));
        }
        if !rejected.is_empty() {
            nack(out, st, node, &rejected);
            return;
        }
        let removed: Vec<String> = if st.wildcard {
            st.accepted
                .keys()
                .filter(|n| !seen.contains(*n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let update = Update {
            type_url: st.type_url.clone(),
            version: resp.version_info.clone(),
            resources: decoded,
            unchanged,
            removed,
            full_state: st.wildcard,
            source: Source::Server,
        };
        let outcome = handler.apply(update).await;
        let st = &mut self.types[idx];
        if !outcome.rejected.is_empty() {
            nack(out, st, node, &outcome.rejected);
        } else {
            if st.wildcard {
                st.accepted.clear();
            }
            for (name, hash, body) in raw {
                st.accepted.insert(
                    name,
                    Accepted {
                        version: resp.version_info.clone(),
                        hash,
                        body,
                    },
                );
            }
            st.version = resp.version_info;
            tracing::debug!(type_url = %st.type_url, version = %st.version, "ACK");
            send_sotw_or_delta(out, st, node);
            self.persist(idx).await;
        }
        self.apply_subscriptions(outcome.subscriptions, out).await;
    }

    // === delta ===

    async fn delta_stream<H: Handler>(
        &mut self,
        channel: Channel,
        handler: &mut H,
        backoff: &mut Backoff,
    ) -> Result<(), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        for st in &mut self.types {
            st.nonce.clear();
            if st.wants_initial_request() {
                send_delta(&tx, st.delta_initial(&self.config.node));
            }
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size)
            .max_encoding_message_size(self.config.max_message_size);
        let mut inbound = client
            .delta_aggregated_resources(receiver_stream(rx))
            .await?
            .into_inner();
        let out = Outbound::Delta(tx);
        tracing::info!(server = %self.config.server, "ADS stream open (delta)");
        while let Some(resp) = inbound.message().await? {
            backoff.reset();
            self.on_delta_response(resp, handler, &out).await;
        }
        Ok(())
    }

    async fn on_delta_response<H: Handler>(
        &mut self,
        resp: DeltaDiscoveryResponse,
        handler: &mut H,
        out: &Outbound,
    ) {
        let Some(idx) = self.index(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "delta response for a type never subscribed; ignored");
            return;
        };
        let node = &self.config.node;
        let st = &mut self.types[idx];
        st.nonce = resp.nonce.clone();

        let mut rejected = Vec::new();
        let mut decoded = Vec::with_capacity(resp.resources.len());
        let mut unchanged = Vec::new();
        let mut raw = Vec::with_capacity(resp.resources.len());
        let mut seen = HashSet::new();
        for (i, r) in resp.resources.into_iter().enumerate() {
            let label = if r.name.is_empty() {
                format!("resources[{i}]")
            } else {
                r.name.clone()
            };
            let Some(any) = r.resource else {
                let reason = format!("{label:?}: resource has no body");
                rejected.push(Rejected::new(label, reason));
                continue;
            };
            let hash = body_hash(&any.value);
            // A server may re-send what the client holds (after a reconnect
            // whose initial versions it could not match, or on any change of
            // its own versioning): recognised by name and bytes, not decoded.
            let same = !r.name.is_empty()
                && any.type_url == st.type_url
                && st.accepted.get(&r.name).is_some_and(|a| a.hash == hash);
            let name = if same {
                r.name
            } else {
                match decode_any(st, &any) {
                    Err(reason) => {
                        let reason = format!("{label:?}: {reason}");
                        rejected.push(Rejected::new(label, reason));
                        continue;
                    }
                    Ok((inner_name, value)) => {
                        // The wrapper's name is the subscription key; fall
                        // back to the message's own when a server leaves it
                        // empty.
                        let name = if r.name.is_empty() {
                            inner_name
                        } else {
                            r.name
                        };
                        decoded.push(Decoded::new(name.clone(), r.version.clone(), value));
                        name
                    }
                }
            };
            if !seen.insert(name.clone()) {
                let reason = format!("{name:?}: duplicate resource name in response");
                rejected.push(Rejected::new(name, reason));
                continue;
            }
            if same {
                unchanged.push(name.clone());
            }
            let body = self.config.cache_dir.is_some().then_some(any.value);
            raw.push((name, r.version, hash, body));
        }
        if !rejected.is_empty() {
            nack(out, st, node, &rejected);
            return;
        }
        let update = Update {
            type_url: st.type_url.clone(),
            version: resp.system_version_info.clone(),
            resources: decoded,
            unchanged,
            removed: resp.removed_resources.clone(),
            full_state: false,
            source: Source::Server,
        };
        let outcome = handler.apply(update).await;
        let st = &mut self.types[idx];
        if !outcome.rejected.is_empty() {
            nack(out, st, node, &outcome.rejected);
        } else {
            for name in &resp.removed_resources {
                st.accepted.remove(name);
            }
            for (name, version, hash, body) in raw {
                st.accepted.insert(
                    name,
                    Accepted {
                        version,
                        hash,
                        body,
                    },
                );
            }
            st.version = resp.system_version_info;
            tracing::debug!(type_url = %st.type_url, version = %st.version, "ACK");
            send_sotw_or_delta(out, st, node);
            self.persist(idx).await;
        }
        self.apply_subscriptions(outcome.subscriptions, out).await;
    }

    // === subscriptions and cache ===

    /// Follows the handler's new interest (EDS after CDS, RDS after LDS):
    /// sends a request for each type whose names changed.
    async fn apply_subscriptions(&mut self, subs: Vec<(String, BTreeSet<String>)>, out: &Outbound) {
        for (type_url, names) in subs {
            let Some(idx) = self.index(&type_url) else {
                tracing::warn!(%type_url, "handler asked for a type never registered; ignored");
                continue;
            };
            let node = &self.config.node;
            let st = &mut self.types[idx];
            if st.wildcard || st.names == names {
                continue;
            }
            let had_names = !st.names.is_empty();
            let (added, removed) = st.resubscribe(names);
            tracing::debug!(type_url = %st.type_url, ?added, ?removed, "subscription changed");
            match out {
                Outbound::Sotw(tx) => {
                    // Once a type was requested, an empty list means "none"
                    // and must be sent; before that, sending it would read
                    // as a wildcard, so wait for a name.
                    if had_names || !st.names.is_empty() {
                        send_sotw(tx, st.sotw_request(node));
                    }
                }
                Outbound::Delta(tx) => {
                    send_delta(
                        tx,
                        DeltaDiscoveryRequest {
                            node: Some(node.clone()),
                            type_url: st.type_url.clone(),
                            resource_names_subscribe: added,
                            resource_names_unsubscribe: removed.clone(),
                            ..Default::default()
                        },
                    );
                }
            }
            if !removed.is_empty() {
                self.persist(idx).await;
            }
        }
    }

    /// Writes the accepted set of one type: temp file, fsync, rename, so a
    /// crash leaves the old file or the new one, never half of one.
    async fn persist(&self, idx: usize) {
        let Some(dir) = self.config.cache_dir.clone() else {
            return;
        };
        let st = &self.types[idx];
        let bytes = st.to_cache().encode_to_vec();
        let file = dir.join(st.cache_file_name());
        // Off the runtime thread: with thousands of resources this is MiBs
        // of IO, and the runtime also serves the admin endpoint.
        let result = tokio::task::spawn_blocking(move || write_atomic(&file, &bytes)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(type_url = %st.type_url, error = %e, "cannot write xDS cache")
            }
            Err(e) => {
                tracing::warn!(type_url = %st.type_url, error = %e, "xDS cache writer failed")
            }
        }
    }

    /// Feeds each type's cache file to the handler, in subscription order,
    /// before the first connection. What the handler accepts is recorded as
    /// accepted, so the first requests carry its versions.
    async fn replay_cache<H: Handler>(&mut self, handler: &mut H) {
        let Some(dir) = self.config.cache_dir.clone() else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the xDS cache directory");
            return;
        }
        for idx in 0..self.types.len() {
            let path = dir.join(self.types[idx].cache_file_name());
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read xDS cache");
                    continue;
                }
            };
            let cached = match DeltaDiscoveryResponse::decode(bytes.as_slice()) {
                Ok(c) if c.type_url == self.types[idx].type_url => c,
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %path.display(), "corrupt xDS cache file; ignored");
                    continue;
                }
            };
            let st = &self.types[idx];
            let mut decoded = Vec::new();
            let mut raw = Vec::new();
            let mut bad = false;
            for r in cached.resources {
                let Some(any) = r.resource else {
                    bad = true;
                    break;
                };
                match decode_any(st, &any) {
                    Ok((_, value)) => {
                        let hash = body_hash(&any.value);
                        raw.push((r.name.clone(), r.version.clone(), hash, any.value));
                        decoded.push(Decoded::new(r.name, r.version, value));
                    }
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad {
                tracing::warn!(file = %path.display(), "undecodable resource in xDS cache; file ignored");
                continue;
            }
            let update = Update {
                type_url: st.type_url.clone(),
                version: cached.system_version_info.clone(),
                resources: decoded,
                unchanged: Vec::new(),
                removed: Vec::new(),
                full_state: true,
                source: Source::Cache,
            };
            let outcome = handler.apply(update).await;
            let st = &mut self.types[idx];
            if !outcome.rejected.is_empty() {
                for r in &outcome.rejected {
                    tracing::warn!(type_url = %st.type_url, "cached resource rejected: {r}");
                }
                continue;
            }
            if !st.wildcard {
                st.names.extend(raw.iter().map(|(n, _, _, _)| n.clone()));
            }
            for (name, version, hash, body) in raw {
                st.accepted.insert(
                    name,
                    Accepted {
                        version,
                        hash,
                        body: Some(body),
                    },
                );
            }
            st.version = cached.system_version_info;
            tracing::info!(type_url = %st.type_url, version = %st.version, resources = st.accepted.len(), "replayed xDS cache");
            for (type_url, names) in outcome.subscriptions {
                if let Some(i) = self.index(&type_url) {
                    if !self.types[i].wildcard {
                        self.types[i].names.extend(names);
                    }
                }
            }
        }
    }
}

type DecodedValue = Box<dyn std::any::Any + Send>;

fn decode_any(
    st: &TypeState,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<(String, DecodedValue), String> {
    if any.type_url != st.type_url {
        return Err(format!(
            "type {:?} in a response of type {:?}",
            any.type_url, st.type_url
        ));
    }
    (st.decode)(&any.value).map_err(|e| format!("cannot decode: {e}"))
}

fn nack(out: &Outbound, st: &TypeState, node: &Node, rejected: &[Rejected]) {
    for r in rejected {
        tracing::warn!(type_url = %st.type_url, version = %st.version, "NACK: {r}");
    }
    match out {
        Outbound::Sotw(tx) => send_sotw(tx, st.sotw_nack(node, rejected)),
        Outbound::Delta(tx) => send_delta(tx, st.delta_nack(node, rejected)),
    }
}

fn send_sotw_or_delta(out: &Outbound, st: &TypeState, node: &Node) {
    match out {
        Outbound::Sotw(tx) => send_sotw(tx, st.sotw_request(node)),
        Outbound::Delta(tx) => send_delta(tx, st.delta_ack(node)),
    }
}

/// A closed queue means the stream is gone; the reconnect resends state, so
/// a lost request needs no handling here.
fn send_sotw(tx: &mpsc::UnboundedSender<DiscoveryRequest>, req: DiscoveryRequest) {
    let _ = tx.send(req);
}

fn send_delta(tx: &mpsc::UnboundedSender<DeltaDiscoveryRequest>, req: DeltaDiscoveryRequest) {
    let _ = tx.send(req);
}

fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("pb.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
