//! One HTTP request, phase by phase, in request order:
//!
//! 1. load the active config (one `ArcSwap` load) and the listener's routes;
//! 2. read the authority (400 when absent);
//! 3. route (404 when nothing matches); local replies (direct response,
//!    redirect) end here;
//! 4. choose the cluster (weighted split) and the endpoint (balancer);
//! 5. rewrite the head for upstream: hop-by-hop headers, forwarding headers,
//!    request id, route header ops, host/path rewrite, protocol translation;
//! 6. send through the endpoint's pool under the route timeout;
//! 7. rewrite the response head, count it, stream the body back (the
//!    access-log record is finished when the body ends).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::access_log::Completion;
use crate::active::{Active, ListenerRt};
use crate::config::UpstreamProtocol;
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::ProxyBody;
use crate::http::headers::{is_upgrade, new_request_id, strip_hop_by_hop};
use crate::router::{Action, RequestView, Route};
use crate::upstream::{ActiveRequest, Cluster};

const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Per-connection facts every request on it shares.
pub struct ConnCtx {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub active: Arc<arc_swap::ArcSwap<Active>>,
}

/// What the access log needs that only the pipeline knows.
struct Outcome {
    cluster: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    flags: &'static str,
}

pub async fn handle(req: Request<Incoming>, conn: Arc<ConnCtx>) -> Response<ProxyBody> {
    let start = Instant::now();
    let active = conn.active.load_full();
    let Some(listener) = active.listener(&conn.listener).cloned() else {
        return ProxyError::new(ErrorKind::Draining).into_response();
    };
    let version = req.version();

    // Only pay for the access-log record when logging is on.
    let log = active.access_log.as_ref().map(|logger| {
        let bytes_in = Arc::new(AtomicU64::new(0));
        (logger.clone(), log_head(&req), bytes_in)
    });
    let req = match &log {
        Some((_, _, bytes_in)) => req.map(|b| ProxyBody::Counted(b, bytes_in.clone())),
        None => req.map(ProxyBody::Incoming),
    };
    let request_id_slot;
    let (mut resp, outcome) = match route_and_forward(req, &conn, &active, &listener).await {
        Ok((resp, outcome, rid)) => {
            request_id_slot = rid;
            (resp, outcome)
        }
        Err((e, rid)) => {
            request_id_slot = rid;
            if e.kind.side() == crate::error::Side::Upstream {
                tracing::debug!(listener = %listener.name, error = %e, "upstream failure");
            }
            let flags = e.kind.flag();
            (
                e.into_response(),
                Outcome {
                    cluster: None,
                    upstream: None,
                    flags,
                },
            )
        }
    };
    let status = resp.status().as_u16();
    listener.stats.rq.inc(status);
    listener
        .stats
        .rq_time
        .observe(start.elapsed().as_secs_f64());
    *resp.version_mut() = version;

    if let Some((logger, head, bytes_in)) = log {
        let completion = Box::new(Completion {
            logger,
            start,
            start_time: head.start_time,
            method: head.method,
            authority: head.authority,
            path: head.path,
            version,
            status,
            bytes_received: Some(bytes_in),
            upstream_cluster: outcome.cluster,
            upstream_host: outcome.upstream,
            request_id: request_id_slot,
            downstream_remote: conn.peer,
            response_flags: outcome.flags,
        });
        resp = attach_completion(resp, completion);
    }
    resp
}

struct LogHead {
    start_time: SystemTime,
    method: http::Method,
    authority: String,
    path: String,
}

fn log_head(req: &Request<Incoming>) -> LogHead {
    LogHead {
        start_time: SystemTime::now(),
        method: req.method().clone(),
        authority: authority_of(req).unwrap_or_default().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
    }
}

/// Finishes the record when the body ends; local replies finish at once.
fn attach_completion(resp: Response<ProxyBody>, c: Box<Completion>) -> Response<ProxyBody> {
    let (parts, body) = resp.into_parts();
    let body = match body {
        ProxyBody::Upstream(mut up) => {
            up.set_completion(c);
            ProxyBody::Upstream(up)
        }
        ProxyBody::Full(b) => {
            c.finish(b.as_ref().map_or(0, |b| b.len() as u64));
            ProxyBody::Full(b)
        }
        other => {
            c.finish(0);
            other
        }
    };
    Response::from_parts(parts, body)
}

fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    // An absolute-form target (and every HTTP/2 request) carries the
    // authority in the URI; it wins over Host, per RFC 9112 §3.2.2.
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

type Forwarded = (Response<ProxyBody>, Outcome, Option<HeaderValue>);
type Failed = (ProxyError, Option<HeaderValue>);

async fn route_and_forward(
    mut req: Request<ProxyBody>,
    conn: &ConnCtx,
    active: &Active,
    listener: &ListenerRt,
) -> Result<Forwarded, Failed> {
    let Some(table) = listener.routes.as_ref() else {
        return Err((ProxyError::new(ErrorKind::NoRoute), None));
    };
    let Some(authority) = authority_of(&req) else {
        return Err((ProxyError::new(ErrorKind::BadRequest), None));
    };
    let view = RequestView {
        authority,
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        peer_ip: conn.peer.ip(),
    };
    let Some(route) = table.find(&view) else {
        return Err((ProxyError::new(ErrorKind::NoRoute), None));
    };

    let cluster: &Arc<Cluster> = match &route.action {
        Action::Direct(d) => {
            let mut resp = Response::new(ProxyBody::full(d.body.clone()));
            *resp.status_mut() = d.status;
            route.response_headers.apply(resp.headers_mut());
            return Ok((resp, local_outcome(), None));
        }
        Action::Redirect(r) => {
            let scheme = if conn.tls { "https" } else { "http" };
            let (status, location) = r.respond(&view, scheme);
            let mut resp = Response::new(ProxyBody::Empty);
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, location);
            route.response_headers.apply(resp.headers_mut());
            return Ok((resp, local_outcome(), None));
        }
        Action::Cluster(i) => match active.clusters.get(*i) {
            Some(c) => c,
            None => return Err((ProxyError::new(ErrorKind::NoHealthyUpstream), None)),
        },
        Action::Weighted(w) => match active.clusters.get(w.pick(fastrand::u64(..))) {
            Some(c) => c,
            None => return Err((ProxyError::new(ErrorKind::NoHealthyUpstream), None)),
        },
    };

    let hash = if cluster.uses_hash {
        route.hash(&view)
    } else {
        None
    };
    let new_path = route.rewrite_path(&view);
    let authority = match &route.host_rewrite {
        Some(h) => h.clone(),
        None => match HeaderValue::from_str(authority) {
            Ok(v) => v,
            Err(_) => return Err((ProxyError::new(ErrorKind::BadRequest), None)),
        },
    };

    let Some(endpoint) = cluster.pick(hash) else {
        return Err((ProxyError::new(ErrorKind::NoHealthyUpstream), None));
    };

    let upgrade = req.version() == Version::HTTP_11
        && cluster.protocol == UpstreamProtocol::Http1
        && is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let request_id =
        prepare_upstream_head(&mut req, conn, route, cluster, authority, new_path, upgrade)
            .map_err(|e| (e, None))?;

    let inflight = ActiveRequest::new(endpoint.clone());
    let sent_at = Instant::now();
    let send = endpoint.pool.send(req, upgrade);
    let result = match route.timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => {
                cluster.stats.rq_timeout.inc();
                Err(ProxyError::new(ErrorKind::UpstreamTimeout))
            }
        },
        None => send.await,
    };
    drop(inflight);
    let (mut resp, returner) = match result {
        Ok(r) => r,
        Err(e) => {
            cluster.stats.rq.inc(e.kind.status().as_u16());
            endpoint
                .rq_error
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err((e, Some(request_id)));
        }
    };
    cluster.stats.rq.inc(resp.status().as_u16());
    cluster
        .stats
        .rq_time
        .observe(sent_at.elapsed().as_secs_f64());

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(down, up));
    }
    strip_hop_by_hop(resp.headers_mut(), switching, false);
    route.response_headers.apply(resp.headers_mut());

    let outcome = Outcome {
        cluster: Some(cluster.name.clone()),
        upstream: Some(endpoint.addr),
        flags: "",
    };
    let resp = resp.map(|body| ProxyBody::upstream(body, returner, None));
    Ok((resp, outcome, Some(request_id)))
}

fn local_outcome() -> Outcome {
    Outcome {
        cluster: None,
        upstream: None,
        flags: "",
    }
}

/// Turns the downstream head into the upstream one, in place. Returns the
/// request id sent upstream.
fn prepare_upstream_head(
    req: &mut Request<ProxyBody>,
    conn: &ConnCtx,
    route: &Route,
    cluster: &Cluster,
    authority: HeaderValue,
    new_path: Option<String>,
    upgrade: bool,
) -> Result<HeaderValue, ProxyError> {
    let h2 = cluster.protocol == UpstreamProtocol::Http2;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade, h2);
    // The proxy answers `Expect: 100-continue` itself (hyper sends the 100
    // when the body is first read, i.e. once the upstream is connected).
    headers.remove(header::EXPECT);

    let ip = conn.peer.ip();
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => HeaderValue::from_maybe_shared(Bytes::from(format!(
            "{}, {ip}",
            String::from_utf8_lossy(prev.as_bytes())
        ))),
        None => HeaderValue::from_maybe_shared(Bytes::from(ip.to_string())),
    }
    .map_err(|e| ProxyError::with_cause(ErrorKind::BadRequest, e))?;
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    let request_id = match headers.get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    route.request_headers.apply(headers);

    let path_and_query = match new_path {
        Some(p) => PathAndQuery::from_maybe_shared(Bytes::from(p))
            .map_err(|e| ProxyError::with_cause(ErrorKind::BadRequest, e))?,
        None => req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    if h2 {
        req.headers_mut().remove(header::HOST);
        let auth = Authority::from_maybe_shared(Bytes::copy_from_slice(authority.as_bytes()))
            .map_err(|e| ProxyError::with_cause(ErrorKind::BadRequest, e))?;
        let scheme = if cluster.config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(auth);
        parts.path_and_query = Some(path_and_query);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::with_cause(ErrorKind::BadRequest, e))?;
        *req.version_mut() = Version::HTTP_2;
    } else {
        req.headers_mut().insert(header::HOST, authority);
        if req.uri().scheme().is_some() || req.uri().path_and_query() != Some(&path_and_query) {
            *req.uri_mut() = Uri::from(path_and_query);
        }
        *req.version_mut() = Version::HTTP_11;
    }
    Ok(request_id)
}

/// Joins the two upgraded connections and copies bytes both ways.
async fn tunnel(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = hyper_util::rt::TokioIo::new(down);
    let mut up = hyper_util::rt::TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded tunnel closed");
    }
}
