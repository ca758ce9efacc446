//! Broker ingress: `POST /{namespace}/{broker}` with a CloudEvent in any
//! HTTP content mode (binary, structured, batched).
//!
//! | answer | when |
//! | --- | --- |
//! | 202 | every event of the request is durably in the broker's log |
//! | 400 | not a valid CloudEvent; the body names the attribute |
//! | 404 | no such broker (or not a broker path) |
//! | 405 | anything but POST (`Allow: POST`) |
//! | 413 | body over the size limit |
//! | 503 | the log cannot take writes |
//!
//! `GET /healthz` answers 200 for probes.
//!
//! The brokers served come from a `watch` of [`Routes`] that the
//! controller replaces when a Broker is created or deleted; a request reads
//! it once (an `Arc` clone under a read lock, no await while held), keyed
//! by the path itself so the lookup allocates nothing.
//!
//! The 202 is sent only after the append's future resolved, which the
//! embedded log resolves after the fsync of the batch that carried it. A
//! batched request is appended as one unit, so it is accepted or refused
//! whole.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::event;
use super::log::{EventLog, LogError};
use super::metrics::BrokerMetrics;

/// One broker as ingress sees it.
pub struct BrokerRoute {
    pub log: Arc<dyn EventLog>,
    pub metrics: BrokerMetrics,
}

/// `"{namespace}/{broker}"` → the broker.
pub type Routes = HashMap<String, Arc<BrokerRoute>>;

/// The key of a broker in [`Routes`].
pub fn route_key(namespace: &str, broker: &str) -> String {
    format!("{namespace}/{broker}")
}

pub struct IngressState {
    pub routes: watch::Receiver<Arc<Routes>>,
    /// Largest request body accepted.
    pub max_body: usize,
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<IngressState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends are transient; pause so a full fd
                    // table does not spin this loop.
                    tracing::warn!(error = %e, "broker accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "broker connection ended with an error");
            }
        });
    }
}

fn reply(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let msg = msg.into();
    let mut r = Response::new(Full::new(Bytes::from(if msg.is_empty() {
        String::new()
    } else {
        format!("{msg}\n")
    })));
    *r.status_mut() = status;
    if !msg.is_empty() {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

/// Handles one request (generic over the body so tests need no socket).
pub async fn handle<B>(state: &IngressState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    if path == "/healthz" && req.method() == Method::GET {
        return reply(StatusCode::OK, "ok");
    }
    let key = path.trim_matches('/');
    let Some((ns, name)) = key.split_once('/').filter(|(_, n)| !n.contains('/')) else {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: POST /{namespace}/{broker}",
        );
    };
    let Some(broker) = state.routes.borrow().get(key).cloned() else {
        return reply(StatusCode::NOT_FOUND, format!("no broker {ns}/{name}"));
    };
    let m = &broker.metrics;
    if req.method() != Method::POST {
        m.rejected_method.inc();
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body as u64) {
        m.rejected_too_large.inc();
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over the {} byte limit", state.max_body),
        );
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, state.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                m.rejected_too_large.inc();
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body over the {} byte limit", state.max_body),
                );
            }
            m.rejected_invalid.inc();
            return reply(StatusCode::BAD_REQUEST, format!("reading the body: {e}"));
        }
    };
    let events = match event::from_http(&parts.headers, body) {
        Ok(evs) => evs,
        Err(e) => {
            m.rejected_invalid.inc();
            return reply(StatusCode::BAD_REQUEST, format!("invalid CloudEvent: {e}"));
        }
    };
    if events.is_empty() {
        return reply(StatusCode::ACCEPTED, "");
    }
    let n = events.len() as u64;
    let records = events.iter().map(event::Event::encode).collect();
    let started = tokio::time::Instant::now();
    let appended = broker.log.append(records).await;
    m.append_seconds.observe(started.elapsed().as_secs_f64());
    match appended {
        Ok(_) => {
            m.accepted.inc_by(n);
            reply(StatusCode::ACCEPTED, "")
        }
        Err(LogError::TooLarge { size, max }) => {
            m.rejected_too_large.inc();
            reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("event of {size} bytes over the {max} byte limit"),
            )
        }
        Err(e) => {
            m.rejected_unavailable.inc();
            tracing::error!(broker = %key, error = %e, "append failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("event log unavailable: {e}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventing::event::Event;
    use crate::eventing::log::testutil::TempDir;
    use crate::eventing::log::{FileLog, FileLogOptions};

    fn state(d: &TempDir) -> (IngressState, Arc<FileLog>, BrokerMetrics) {
        let log = Arc::new(FileLog::open(&d.0, FileLogOptions::default()).expect("open"));
        let metrics = BrokerMetrics::detached();
        let mut routes = Routes::new();
        routes.insert(
            route_key("ns", "b"),
            Arc::new(BrokerRoute {
                log: log.clone(),
                metrics: metrics.clone(),
            }),
        );
        let (_tx, rx) = watch::channel(Arc::new(routes));
        (
            IngressState {
                routes: rx,
                max_body: 1000,
            },
            log,
            metrics,
        )
    }

    fn req(
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Request<Full<Bytes>> {
        let mut r = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request")
    }

    const CE: [(&str, &str); 4] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];

    async fn body_text(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn status_codes() {
        let d = TempDir::new("ingress");
        let (st, log, m) = state(&d);
        let r = handle(&st, req(Method::POST, "/ns/b", &CE, b"hello")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(log.end(), 1);
        let stored = log.read(0, 1).await.expect("read");
        let ev = Event::decode(&stored[0].payload).expect("decode");
        assert_eq!(ev.data.as_deref(), Some(&b"hello"[..]));

        let r = handle(&st, req(Method::POST, "/ns/nope", &CE, b"")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = handle(&st, req(Method::POST, "/ns", &CE, b"")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = handle(&st, req(Method::GET, "/ns/b", &CE, b"")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            r.headers().get(header::ALLOW),
            Some(&HeaderValue::from_static("POST"))
        );
        let r = handle(&st, req(Method::POST, "/ns/b", &CE, &[b'x'; 1001])).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = handle(&st, req(Method::POST, "/ns/b", &CE[1..], b"")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(body_text(r).await.contains("\"specversion\""));
        let r = handle(
            &st,
            req(
                Method::POST,
                "/ns/b",
                &[("content-type", "application/cloudevents-batch+json")],
                br#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},
                    {"specversion":"1.0","id":"b","source":"/s","type":"t"}]"#,
            ),
        )
        .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(log.end(), 3);
        let r = handle(&st, req(Method::GET, "/healthz", &[], b"")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = handle(&st, req(Method::POST, "/ns/b/extra", &CE, b"")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // Unknown brokers are not counted anywhere; known ones by outcome.
        assert_eq!(m.accepted.get(), 3);
        assert_eq!(m.rejected_invalid.get(), 1);
        assert_eq!(m.rejected_method.get(), 1);
        assert_eq!(m.rejected_too_large.get(), 1);
        assert_eq!(m.append_seconds.get_sample_count(), 2);
    }
}
