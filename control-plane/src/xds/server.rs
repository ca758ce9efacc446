//! The ADS gRPC service: `StreamAggregatedResources` (state of the world)
//! and `DeltaAggregatedResources` (delta) on one port.
//!
//! Each stream is one task. It waits for the first request (which must
//! name the node), opens the node's snapshot channel, then loops over two
//! inputs: the client's requests and the node's snapshot changes. Both go
//! through the stream's protocol state machine (`cache::SotwStream` /
//! `cache::DeltaStream`); its responses are sent in order and its events
//! recorded in the [`NodeRegistry`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::cache::{DeltaStream, NodeRegistry, Resources, SnapshotCache, SotwStream, Step};
use super::{Mode, NodeKey};

/// Responses a stream may have queued before its task waits for the
/// client to read: enough for one push of every type, twice.
const RESPONSE_QUEUE: usize = 8;

#[derive(Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    registry: Arc<NodeRegistry>,
    shutdown: watch::Receiver<bool>,
}

/// The response half of a stream, fed by the stream's task.
pub struct ResponseStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
}

/// The two protocol flavours, so one loop drives both.
trait Protocol: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const MODE: Mode;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn on_request(&mut self, req: &Self::Req, res: &Resources) -> Step<Self::Resp>;
    fn on_snapshot(&mut self, res: &Resources) -> Step<Self::Resp>;
}

// === impl AdsServer ===

impl AdsServer {
    /// Streams end when `shutdown` becomes true, so a graceful stop does
    /// not wait on clients that would otherwise hold them open forever.
    pub fn new(
        cache: Arc<SnapshotCache>,
        registry: Arc<NodeRegistry>,
        shutdown: watch::Receiver<bool>,
    ) -> AdsServer {
        AdsServer {
            cache,
            registry,
            shutdown,
        }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    fn start<P: Protocol>(
        &self,
        state: P,
        inbound: Streaming<P::Req>,
        peer: Option<std::net::SocketAddr>,
    ) -> ResponseStream<P::Resp> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(status) = this.run(state, inbound, tx.clone()).await {
                tracing::info!(?peer, mode = %P::MODE, %status, "xDS stream ended with an error");
                let _ = tx.send(Err(status)).await;
            }
        });
        ResponseStream { rx }
    }

    async fn run<P: Protocol>(
        &self,
        mut state: P,
        mut inbound: Streaming<P::Req>,
        tx: mpsc::Sender<Result<P::Resp, Status>>,
    ) -> Result<(), Status> {
        let mut shutdown = self.shutdown.clone();
        let first = tokio::select! {
            msg = inbound.message() => match msg? {
                Some(m) => m,
                None => return Ok(()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let node = match P::node(&first) {
            Some(n) if !n.id.is_empty() => NodeKey::new(&n.id, &n.cluster),
            _ => {
                return Err(Status::invalid_argument(
                    "the first request of a stream must carry node.id",
                ))
            }
        };
        let mut snapshots = self.cache.watch(&node);
        let _guard = self.registry.connect(&node, P::MODE);

        let mut next = Some(first);
        loop {
            let step = if let Some(req) = next.take() {
                // `borrow`, not `borrow_and_update`: answering one type
                // with the newest snapshot must not hide that snapshot's
                // other changed types from the push below.
                let res = snapshots.borrow().clone();
                state.on_request(&req, &res)
            } else {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            next = Some(req);
                            continue;
                        }
                        Ok(None) => return Ok(()),
                        Err(status) => {
                            tracing::debug!(node = %node, %status, "xDS stream closed by the client");
                            return Ok(());
                        }
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            return Err(Status::unavailable("control plane shutting down"));
                        }
                        let res = snapshots.borrow_and_update().clone();
                        state.on_snapshot(&res)
                    }
                    _ = shutdown.changed() => {
                        return Err(Status::unavailable("control plane shutting down"));
                    }
                }
            };
            self.registry.record(&node, P::MODE, &step.events);
            for r in step.responses {
                if tx.send(Ok(r)).await.is_err() {
                    // The client went away; tonic dropped the response stream.
                    return Ok(());
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        Ok(Response::new(self.start(
            SotwStream::new(),
            request.into_inner(),
            peer,
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        Ok(Response::new(self.start(
            DeltaStream::new(),
            request.into_inner(),
            peer,
        )))
    }
}

// === impl ResponseStream ===

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

// === impl Protocol ===

impl Protocol for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const MODE: Mode = Mode::Sotw;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn on_request(&mut self, req: &DiscoveryRequest, res: &Resources) -> Step<DiscoveryResponse> {
        SotwStream::on_request(self, req, res)
    }

    fn on_snapshot(&mut self, res: &Resources) -> Step<DiscoveryResponse> {
        SotwStream::on_snapshot(self, res)
    }
}

impl Protocol for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const MODE: Mode = Mode::Delta;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        res: &Resources,
    ) -> Step<DeltaDiscoveryResponse> {
        DeltaStream::on_request(self, req, res)
    }

    fn on_snapshot(&mut self, res: &Resources) -> Step<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, res)
    }
}

#[cfg(test)]
mod tests;
