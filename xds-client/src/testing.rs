//! A fake ADS server for tests (feature `testing`): a real tonic server on
//! `127.0.0.1:0` that records every request a client sends and lets the test
//! push responses by hand, so a test can drive exact protocol sequences
//! (stale nonces, NACKs, dropped streams) that a real control plane would
//! not produce on demand.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Name;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::handler::XdsResource;

/// A request the client sent, in arrival order across streams.
#[derive(Debug, Clone)]
pub enum Observed {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
    /// A new stream was opened (the first request follows).
    StreamOpened,
}

impl Observed {
    pub fn sotw(&self) -> Option<&DiscoveryRequest> {
        match self {
            Observed::Sotw(r) => Some(r),
            _ => None,
        }
    }

    pub fn delta(&self) -> Option<&DeltaDiscoveryRequest> {
        match self {
            Observed::Delta(r) => Some(r),
            _ => None,
        }
    }
}

type SotwTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Default)]
struct Streams {
    sotw: Vec<SotwTx>,
    delta: Vec<DeltaTx>,
}

struct Shared {
    /// Senders of the open streams' responses. A std mutex: it is held for
    /// a push or a clear, never across an await.
    streams: Mutex<Streams>,
    observed: mpsc::UnboundedSender<Observed>,
    nonce: AtomicU64,
}

/// The fake server. Dropping it stops the server.
pub struct FakeAdsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    observed: mpsc::UnboundedReceiver<Observed>,
    _shutdown: oneshot::Sender<()>,
}

// === impl FakeAdsServer ===

impl FakeAdsServer {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// On a given address: a test of reconnects brings a server up where a
    /// client is already trying to connect.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (observed_tx, observed) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            streams: Mutex::new(Streams::default()),
            observed: observed_tx,
            nonce: AtomicU64::new(0),
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let svc = AggregatedDiscoveryServiceServer::new(Service {
            shared: shared.clone(),
        });
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await;
        });
        Ok(FakeAdsServer {
            addr,
            shared,
            observed,
            _shutdown: shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request (or stream opening), waiting up to `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Observed> {
        tokio::time::timeout(timeout, self.observed.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next SotW request of `type_url`, skipping others.
    pub async fn next_sotw(
        &mut self,
        type_url: &str,
        timeout: Duration,
    ) -> Option<DiscoveryRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Observed::Sotw(r) if r.type_url == type_url => return Some(r),
                _ => {}
            }
        }
    }

    /// The next delta request of `type_url`, skipping others.
    pub async fn next_delta(
        &mut self,
        type_url: &str,
        timeout: Duration,
    ) -> Option<DeltaDiscoveryRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Observed::Delta(r) if r.type_url == type_url => return Some(r),
                _ => {}
            }
        }
    }

    /// Everything observed so far, without waiting.
    pub fn drain(&mut self) -> Vec<Observed> {
        let mut out = Vec::new();
        while let Ok(o) = self.observed.try_recv() {
            out.push(o);
        }
        out
    }

    fn nonce(&self) -> String {
        format!("n{}", self.shared.nonce.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Sends a SotW response to every open SotW stream. Returns its nonce.
    pub fn push_sotw<T: XdsResource>(&self, version: &str, resources: &[T]) -> String {
        let nonce = self.nonce();
        let resp = DiscoveryResponse {
            version_info: version.to_string(),
            type_url: T::type_url(),
            resources: resources.iter().map(to_any).collect(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.push_raw_sotw(resp);
        nonce
    }

    /// Sends any SotW response as is (malformed ones included).
    pub fn push_raw_sotw(&self, resp: DiscoveryResponse) {
        if let Ok(streams) = self.shared.streams.lock() {
            for tx in &streams.sotw {
                let _ = tx.send(Ok(resp.clone()));
            }
        }
    }

    /// Sends a delta response to every open delta stream. Returns its nonce.
    pub fn push_delta<T: XdsResource>(
        &self,
        system_version: &str,
        resources: &[(&str, T)],
        removed: &[&str],
    ) -> String {
        let nonce = self.nonce();
        let resp = DeltaDiscoveryResponse {
            system_version_info: system_version.to_string(),
            type_url: T::type_url(),
            resources: resources
                .iter()
                .map(|(version, r)| Resource {
                    name: r.resource_name().to_string(),
                    version: version.to_string(),
                    resource: Some(to_any(r)),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        if let Ok(streams) = self.shared.streams.lock() {
            for tx in &streams.delta {
                let _ = tx.send(Ok(resp.clone()));
            }
        }
        nonce
    }

    /// Ends every open stream (as a control plane restart would); the
    /// server keeps accepting new ones.
    pub fn drop_streams(&self) {
        if let Ok(mut streams) = self.shared.streams.lock() {
            *streams = Streams::default();
        }
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.shared
            .streams
            .lock()
            .map(|s| s.sotw.len() + s.delta.len())
            .unwrap_or(0)
    }
}

/// `resource` as an `Any` of its own type.
pub fn to_any<T: XdsResource>(resource: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: resource.encode_to_vec(),
    }
}

struct Service {
    shared: Arc<Shared>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<Result<T, Status>>,
) -> BoxStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut streams) = self.shared.streams.lock() {
            streams.sotw.push(tx);
        }
        let _ = self.shared.observed.send(Observed::StreamOpened);
        let observed = self.shared.observed.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let _ = observed.send(Observed::Sotw(req));
            }
        });
        Ok(Response::new(receiver_stream(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut streams) = self.shared.streams.lock() {
            streams.delta.push(tx);
        }
        let _ = self.shared.observed.send(Observed::StreamOpened);
        let observed = self.shared.observed.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let _ = observed.send(Observed::Delta(req));
            }
        });
        Ok(Response::new(receiver_stream(rx)))
    }
}

/// Shorthand used by tests: the type URL of `T`.
pub fn url<T: Name>() -> String {
    T::type_url()
}
