//! The control plane's REST API (plain hyper 1, HTTP/1.1 and h2c):
//!
//! | path | what |
//! | --- | --- |
//! | `GET /v1/xds/nodes` | every xDS node: streams, per-type versions sent/ACKed, nonce, last NACK |
//! | `GET /v1/xds/snapshot` | the default snapshot: per type, its version and resource names |
//! | `GET /metrics` | Prometheus text exposition (`ferry_xds_*`) |
//! | `GET /healthz` | 200 once the server runs |
//! | `/v1/namespaces/{ns}/{kind}[/{name}]` | the model (see [`model`]): `services`, `brokers`, `triggers` GET / PUT / POST / DELETE; `revisions`, `routes`, `configurations` GET |
//! | `GET /v1/{kind}` | every object of a kind, all namespaces |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::Serving;
use crate::xds::{NodeRegistry, ResourceType, SnapshotCache, XdsMetrics};

pub mod model;

/// What the handlers read.
pub struct ApiState {
    pub registry: Arc<NodeRegistry>,
    pub cache: Arc<SnapshotCache>,
    pub metrics: XdsMetrics,
    /// The serving/eventing model behind `/v1/namespaces/...`.
    pub serving: Arc<Serving>,
}

#[derive(Serialize)]
struct TypeSnapshotView {
    type_url: &'static str,
    version: String,
    resources: Vec<String>,
}

/// Serves until `shutdown` becomes true. Connections in progress are
/// served to their end by their own tasks; the API holds no long streams.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Accept errors (EMFILE, aborted handshakes) are
                    // transient; a short pause keeps a full fd table from
                    // spinning this loop.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// Routes one request: the model's paths to [`model`], the rest (xDS
/// views, metrics, health) to [`route`].
pub async fn handle(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if model::is_model_path(req.uri().path()) {
        return model::handle(&state.serving, req).await;
    }
    route(state, req.method(), req.uri().path())
}

fn route(state: &ApiState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = matches!(
        path,
        "/v1/xds/nodes" | "/v1/xds/snapshot" | "/metrics" | "/healthz"
    );
    if !known {
        return text(StatusCode::NOT_FOUND, format!("no such path: {path}\n"));
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_string());
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/v1/xds/nodes" => json(&state.registry.nodes()),
        "/v1/xds/snapshot" => {
            let snap = state.cache.default_snapshot();
            let view: BTreeMap<&'static str, TypeSnapshotView> = ResourceType::ALL
                .iter()
                .map(|t| {
                    let tr = snap.get(*t);
                    (
                        t.short(),
                        TypeSnapshotView {
                            type_url: t.type_url(),
                            version: tr.version.clone(),
                            resources: tr.resources.keys().cloned().collect(),
                        },
                    )
                })
                .collect();
            json(&view)
        }
        "/metrics" => {
            let registry = &state.registry;
            state
                .metrics
                .set_node_gauges(registry.connected_nodes(), |t| registry.nacking(t));
            let mut resp = text(StatusCode::OK, state.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => text(StatusCode::OK, "ok\n".to_string()),
    }
}

pub(crate) fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON failed: {e}\n"),
        ),
    }
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{Mode, NodeKey, Resources};
    use http_body_util::BodyExt;

    fn state() -> ApiState {
        let metrics = XdsMetrics::new();
        ApiState {
            registry: Arc::new(NodeRegistry::new(metrics.clone())),
            cache: Arc::new(SnapshotCache::new(Arc::new(Resources::default()))),
            metrics,
            serving: Arc::new(crate::store::Serving::new(
                Arc::new(crate::store::FileStore::memory()),
                Arc::new(crate::store::Runtime::new()),
                "example.com",
            )),
        }
    }

    async fn body(resp: Response<Full<Bytes>>) -> String {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn nodes_lists_connected_nodes_as_json() {
        let s = state();
        let _guard = s.registry.connect(&NodeKey::new("n1", "c1"), Mode::Delta);
        let resp = route(&s, &Method::GET, "/v1/xds/nodes");
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value =
            serde_json::from_str(&body(resp).await).unwrap_or(serde_json::Value::Null);
        assert_eq!(v[0]["id"], "n1");
        assert_eq!(v[0]["cluster"], "c1");
        assert_eq!(v[0]["mode"], "delta");
        assert_eq!(v[0]["connected_streams"], 1);
    }

    #[tokio::test]
    async fn metrics_render_the_xds_families() {
        let s = state();
        let resp = route(&s, &Method::GET, "/metrics");
        assert_eq!(resp.status(), StatusCode::OK);
        let text = body(resp).await;
        assert!(text.contains("ferry_xds_nacks_total"), "{text}");
        assert!(text.contains("ferry_xds_nodes_connected 0"), "{text}");
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        let s = state();
        assert_eq!(
            route(&s, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&s, &Method::POST, "/v1/xds/nodes").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(route(&s, &Method::GET, "/healthz").status(), StatusCode::OK);
    }
}
