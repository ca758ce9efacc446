//! One HTTP request, phase by phase, in request order:
//!
//! 1. load the active config (one `ArcSwap` load) and the listener's routes;
//! 2. read the authority (400 when absent) and route (404 when nothing
//!    matches);
//! 3. settle the request id, then run the listener's HTTP filters on the
//!    request head (a filter may delay, or answer); a filter that buffers
//!    the request body has it read whole now, through the body hooks (and
//!    may answer);
//! 4. local replies (direct response, redirect) end here; otherwise choose
//!    the cluster (weighted split); a queue cluster admits, queues or
//!    refuses the request (the queue-proxy role); take a request slot from
//!    its circuit breaker and pick an endpoint — none in an activation
//!    cluster: hold the request until one arrives (the activator role);
//! 5. rewrite the head for upstream: hop-by-hop headers, forwarding headers,
//!    route header ops, host/path rewrite, protocol translation;
//! 6. send, under the route timeout, the body through the filters'
//!    request-body hooks when they have any (a hook may answer: the upstream
//!    request is abandoned); a failed try is retried per the route's retry
//!    policy (another endpoint, backoff, retry budget, the body replayed
//!    from its kept copy, past the hooks);
//! 7. rewrite the response head, run the filters' response hooks (on local
//!    replies and errors too), count it, stream the body back, through the
//!    response-body hooks when the filters have any (the access-log record
//!    is finished when the body ends).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ferry_filters::{Action as FilterAction, Flow, LocalReply, RequestCtx, RequestFilters};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{request, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;

use crate::access_log::Completion;
use crate::active::{Active, ListenerRt};
use crate::config::UpstreamProtocol;
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{BodyError, ProxyBody};
use crate::http::filtered::{self, FilteredBody, Filters, SharedFilters, Unbuffered};
use crate::http::headers::{is_upgrade, new_request_id, strip_hop_by_hop};
use crate::http::replay::Replay;
use crate::queue::{Role, X_FERRY_PROXIED};
use crate::router::{Action, RequestView, Route, TryFailure};
use crate::upstream::pool::Returner;
use crate::upstream::{ActiveRequest, BreakerPermit, Cluster, Endpoint, TryOutcome};

const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// A filter asking to wait again and again is a bug; stop honouring it.
const MAX_FILTER_DELAYS: usize = 8;

/// Per-connection facts every request on it shares.
pub struct ConnCtx {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub active: Arc<arc_swap::ArcSwap<Active>>,
    /// The peer's address as an `x-forwarded-for` value, formatted once per
    /// connection rather than per request.
    pub peer_ip_value: HeaderValue,
}

impl ConnCtx {
    pub fn new(
        listener: Arc<str>,
        peer: SocketAddr,
        tls: bool,
        active: Arc<arc_swap::ArcSwap<Active>>,
    ) -> Self {
        let peer_ip_value = HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnCtx {
            listener,
            peer,
            tls,
            active,
            peer_ip_value,
        }
    }
}

/// What the access log and the response phase need that only the forward
/// phase knows.
#[derive(Default)]
struct Outcome {
    cluster: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    flags: &'static str,
    request_id: Option<HeaderValue>,
    /// A filter produced the response: its response hooks already ran.
    answered_by_filter: bool,
    /// The filters the request body streams through; a try that failed
    /// because one of their hooks answered is not retried.
    body_hooks: Option<SharedFilters>,
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

    let mut filters: Option<Filters> = None;
    let mut outcome = Outcome::default();
    let mut resp =
        match route_and_forward(req, &conn, &active, &listener, &mut filters, &mut outcome).await {
            Ok(resp) => resp,
            Err(e) => match body_hook_reply(&mut filters, &mut outcome) {
                // The upstream request was abandoned for a request-body
                // hook's reply.
                Some(reply) => reply,
                None => {
                    if e.kind.side() == crate::error::Side::Upstream {
                        tracing::debug!(listener = %listener.name, error = %e, "upstream failure");
                    }
                    outcome.flags = e.kind.flag();
                    e.into_response()
                }
            },
        };
    if let (Some(f), false) = (filters.as_mut(), outcome.answered_by_filter) {
        resp = response_filters(f, resp);
    }
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
            request_id: outcome.request_id,
            downstream_remote: conn.peer,
            response_flags: outcome.flags,
        });
        resp = attach_completion(resp, completion);
    }
    // A local reply went through the body hooks already. (Filters are
    // looked at in place: moving them costs a copy on every request.)
    let hooked = !outcome.answered_by_filter
        && filters
            .as_mut()
            .is_some_and(|f| f.with(|f| f.wants_response_body()))
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        && !resp.body().is_end_stream();
    if hooked {
        if let Some(f) = filters {
            resp = response_body_hooks(f, resp);
        }
    }
    resp
}

/// Passes the response body through the filters' response-body hooks; the
/// body may change length, so `content-length` goes.
fn response_body_hooks(f: Filters, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    let ex = f.into_shared();
    resp.map(|body| FilteredBody::response(body, ex))
}

/// The filters' response-head hooks; a filter may replace the response.
fn response_filters(f: &mut Filters, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    match f.with(|f| f.on_response_head(&mut parts)) {
        Flow::Continue => Response::from_parts(parts, body),
        Flow::Respond(reply) => f.with(|f| f.local_response(reply)).map(ProxyBody::full),
    }
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

fn view<'a, B>(req: &'a Request<B>, authority: &'a str, conn: &ConnCtx) -> RequestView<'a> {
    RequestView {
        authority,
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        peer_ip: conn.peer.ip(),
    }
}

async fn route_and_forward(
    mut req: Request<ProxyBody>,
    conn: &ConnCtx,
    active: &Active,
    listener: &ListenerRt,
    filters: &mut Option<Filters>,
    outcome: &mut Outcome,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(table) = listener.routes.as_ref() else {
        return Err(ProxyError::new(ErrorKind::NoRoute));
    };
    let route = {
        let Some(authority) = authority_of(&req) else {
            return Err(ProxyError::new(ErrorKind::BadRequest));
        };
        table.find(&view(&req, authority, conn))
    };
    let Some(route) = route else {
        return Err(ProxyError::new(ErrorKind::NoRoute));
    };

    // The request id is settled before the filters, which may log or
    // forward it.
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    outcome.request_id = Some(request_id.clone());

    if let Some(lf) = &listener.filters {
        let ctx = RequestCtx::new(conn.peer, req.version(), SystemTime::now());
        let mut f = lf.chain.start(ctx, lf.for_route(route.id));
        f.ctx_mut().request_id = Some(request_id);
        let (mut head, mut body) = req.into_parts();
        let mut answer = run_request_filters(&mut f, &mut head).await;
        if answer.is_none() && f.buffers_request_body() && !body.is_end_stream() {
            // Boxed: only requests whose filters buffer pay for its state.
            match Box::pin(buffer_request_body(&mut f, &mut head, &mut body)).await {
                Ok(reply) => answer = reply,
                Err(e) => {
                    *filters = Some(Filters::Owned(f));
                    return Err(e);
                }
            }
        }
        req = Request::from_parts(head, body);
        let f = filters.insert(Filters::Owned(f));
        if let Some(reply) = answer {
            outcome.answered_by_filter = true;
            return Ok(f.with(|f| f.local_response(reply)).map(ProxyBody::full));
        }
    }

    // The head may have changed in the filters: look at it afresh.
    let Some(authority) = authority_of(&req) else {
        return Err(ProxyError::new(ErrorKind::BadRequest));
    };
    let v = view(&req, authority, conn);
    let cluster: usize = match &route.action {
        Action::Direct(d) => {
            let mut resp = Response::new(ProxyBody::full(d.body.clone()));
            *resp.status_mut() = d.status;
            route.response_headers.apply(resp.headers_mut());
            return Ok(resp);
        }
        Action::Redirect(r) => {
            let scheme = if conn.tls { "https" } else { "http" };
            let (status, location) = r.respond(&v, scheme);
            let mut resp = Response::new(ProxyBody::Empty);
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, location);
            route.response_headers.apply(resp.headers_mut());
            return Ok(resp);
        }
        Action::Cluster(i) => *i,
        Action::Weighted(w) => w.pick(fastrand::u64(..)),
    };
    let role = active.roles.get(cluster).and_then(Option::as_ref);
    let cluster = active
        .clusters
        .get(cluster)
        .ok_or_else(|| ProxyError::new(ErrorKind::NoHealthyUpstream))?;
    outcome.cluster = Some(cluster.name.clone());

    let hash = if cluster.uses_hash {
        route.hash(&v)
    } else {
        None
    };
    let new_path = route.rewrite_path(&v);
    let authority = match &route.host_rewrite {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(authority)
            .map_err(|e| ProxyError::with_cause(ErrorKind::BadRequest, e))?,
    };

    // Queue-proxy role: admit, queue or refuse. The admission (execution
    // slot + in-flight count) lives until the response body ends.
    let admission = match role {
        Some(Role::Queue(q)) => Some(q.admit(req.headers(), route.timeout).await?),
        _ => None,
    };

    let Some(_request_slot) = cluster.breakers().try_request() else {
        return Err(ProxyError::new(ErrorKind::Overloaded));
    };
    // Activator role: no endpoint yet → hold until one arrives (possibly
    // in a newer build of the cluster) or the hold times out.
    let held_cluster: Arc<Cluster>;
    let (cluster, endpoint) = match (cluster.pick(hash), role) {
        (Some(e), _) => (cluster, e),
        (None, Some(Role::Activation(a))) => {
            let (c, e) = a.hold(cluster, hash).await?;
            held_cluster = c;
            req.headers_mut()
                .insert(X_FERRY_PROXIED, HeaderValue::from_static("activator"));
            (&held_cluster, e)
        }
        (None, _) => return Err(ProxyError::new(ErrorKind::NoHealthyUpstream)),
    };

    let upgrade = req.version() == Version::HTTP_11
        && cluster.protocol == UpstreamProtocol::Http1
        && is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    prepare_upstream_head(&mut req, conn, route, cluster, authority, new_path, upgrade)?;
    let hooked = (!upgrade)
        .then(|| request_body_hooks(filters, &mut req))
        .flatten();

    outcome.body_hooks = hooked;
    let (mut resp, returner, endpoint) =
        send_with_retries(req, route, cluster, endpoint, hash, upgrade, outcome).await?;
    if let Some(f) = filters.as_mut() {
        f.with(|f| f.ctx_mut().upstream_host = Some(endpoint.addr));
    }

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(down, up));
    }
    strip_hop_by_hop(resp.headers_mut(), switching, false);
    route.response_headers.apply(resp.headers_mut());
    Ok(resp.map(|body| {
        let mut body = ProxyBody::upstream(body, returner, None);
        if let (Some(a), ProxyBody::Upstream(up)) = (admission, &mut body) {
            up.set_admission(a);
        }
        body
    }))
}

/// A request-body hook's reply, which replaces whatever the abandoned
/// upstream request came to (`send_with_retries` fails such a request).
/// Out of line: rare, and kept off the common path's code.
#[cold]
#[inline(never)]
fn body_hook_reply(
    filters: &mut Option<Filters>,
    outcome: &mut Outcome,
) -> Option<Response<ProxyBody>> {
    let f = filters.as_mut()?;
    let reply = f.take_reply()?;
    Some(answered(f, reply, outcome))
}

/// The response to a filter's local reply: it passes back through the
/// filters before the one that answered, body hooks included.
fn answered(f: &mut Filters, reply: LocalReply, outcome: &mut Outcome) -> Response<ProxyBody> {
    outcome.answered_by_filter = true;
    f.with(|f| f.local_response(reply)).map(ProxyBody::full)
}

/// Reads the request body whole through the request-body hooks, for a
/// filter that buffers it, and frames the request for it: its exact length
/// goes upstream (chunked only when it has trailers, which need it).
/// Some(reply): a hook answered.
async fn buffer_request_body(
    f: &mut RequestFilters,
    head: &mut request::Parts,
    body: &mut ProxyBody,
) -> Result<Option<LocalReply>, ProxyError> {
    let source = std::mem::replace(body, ProxyBody::Empty);
    let (whole, len) = match filtered::read_whole(f, source).await {
        Ok(read) => read,
        Err(Unbuffered::Answered(reply)) => return Ok(Some(reply)),
        Err(Unbuffered::Failed(e)) => return Err(ProxyError::with_cause(ErrorKind::BadRequest, e)),
    };
    head.headers.remove(header::TRANSFER_ENCODING);
    if matches!(whole, ProxyBody::FullWithTrailers(..)) {
        head.headers.remove(header::CONTENT_LENGTH);
    } else {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    *body = whole;
    Ok(None)
}

/// Puts the request body on the filters' request-body hooks when they
/// stream it (a buffered body went through them already), and shares the
/// filters with the body streams when any body hook needs them. Some: the
/// filters as the request body's hooks see them.
fn request_body_hooks(
    filters: &mut Option<Filters>,
    req: &mut Request<ProxyBody>,
) -> Option<SharedFilters> {
    // Looked at in place: moving the filters costs a copy per request.
    let (stream, response) = filters.as_mut()?.with(|f| {
        (
            f.wants_request_body() && !f.buffers_request_body(),
            f.wants_response_body(),
        )
    });
    let stream = stream && !req.body().is_end_stream();
    if !stream && !response {
        return None;
    }
    let ex = filters.take()?.into_shared();
    *filters = Some(Filters::Shared(ex.clone()));
    if !stream {
        return None;
    }
    // The hooks may change the body's length.
    req.headers_mut().remove(header::CONTENT_LENGTH);
    let body = std::mem::replace(req.body_mut(), ProxyBody::Empty);
    *req.body_mut() = FilteredBody::request(body, ex.clone());
    Some(ex)
}

/// Runs the request-head hooks, honouring delays. Some(reply): a filter
/// answered.
async fn run_request_filters(
    f: &mut RequestFilters,
    head: &mut request::Parts,
) -> Option<ferry_filters::LocalReply> {
    let mut delays = 0;
    loop {
        match f.on_request_head(head) {
            FilterAction::Continue => return None,
            FilterAction::Respond(reply) => return Some(reply),
            FilterAction::Delay(d) if delays < MAX_FILTER_DELAYS => {
                delays += 1;
                tokio::time::sleep(d).await;
            }
            FilterAction::Delay(_) => return None,
        }
    }
}

/// The request body as tries see it.
enum Payload {
    /// No retry policy (or an upgrade): the body goes out once.
    Once(Option<ProxyBody>),
    /// No body at all: every try sends none.
    Empty,
    /// Kept for replay up to the route's buffer limit.
    Replay(Replay<ProxyBody>),
}

impl Payload {
    fn next(&mut self) -> Option<ProxyBody> {
        match self {
            Payload::Once(b) => b.take(),
            Payload::Empty => Some(ProxyBody::Empty),
            Payload::Replay(r) => Some(ProxyBody::Replay(r.body())),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            Payload::Once(_) => false,
            Payload::Empty => true,
            Payload::Replay(r) => r.can_replay(),
        }
    }
}

type Sent = (Response<Incoming>, Option<Returner>, Arc<Endpoint>);

/// Sends the request, retrying per the route's policy. The route timeout
/// covers all tries and the waits between them.
async fn send_with_retries(
    req: Request<ProxyBody>,
    route: &Route,
    cluster: &Cluster,
    first: Arc<Endpoint>,
    hash: Option<u64>,
    upgrade: bool,
    outcome: &mut Outcome,
) -> Result<Sent, ProxyError> {
    let (head, body) = req.into_parts();
    let policy = route.retry.as_ref().filter(|_| !upgrade);
    let mut payload = match policy {
        None => Payload::Once(Some(body)),
        Some(_) if body.is_end_stream() => Payload::Empty,
        Some(_) => Payload::Replay(Replay::new(body, route.buffer_limit)),
    };
    // Without retries the head is moved into the one try, not cloned.
    let mut head = Some(head);
    let deadline = route.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut endpoint = first;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut retries = 0u32;
    let mut _retry_slot: Option<BreakerPermit> = None;
    loop {
        outcome.upstream = Some(endpoint.addr);
        let Some(body) = payload.next() else {
            return Err(ProxyError::new(ErrorKind::UpstreamReset));
        };
        let try_req = match (&policy, head.as_ref()) {
            (Some(_), Some(h)) => rebuild(h, body),
            _ => match head.take() {
                Some(h) => Request::from_parts(h, body),
                None => return Err(ProxyError::new(ErrorKind::UpstreamReset)),
            },
        };

        let now = tokio::time::Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(now));
        if remaining == Some(Duration::ZERO) {
            cluster.stats.rq_timeout.inc();
            return Err(ProxyError::new(ErrorKind::UpstreamTimeout));
        }
        let per_try = policy.and_then(|p| p.per_try_timeout);
        let (limit, per_try_fires) = match (per_try, remaining) {
            (Some(p), Some(r)) if p < r => (Some(p), true),
            (Some(p), None) => (Some(p), true),
            (_, r) => (r, false),
        };

        let result = {
            let _inflight = ActiveRequest::new(endpoint.clone());
            let sent_at = Instant::now();
            let send = endpoint.pool().send(try_req, upgrade);
            let r = match limit {
                Some(l) => match tokio::time::timeout(l, send).await {
                    Ok(r) => r,
                    Err(_) => Err(ProxyError::new(ErrorKind::UpstreamTimeout)),
                },
                None => send.await,
            };
            if r.is_ok() {
                cluster
                    .stats
                    .rq_time
                    .observe(sent_at.elapsed().as_secs_f64());
            }
            r
        };

        // A request-body hook answered: the try failed for that, not for
        // the endpoint, and the caller sends the filter's reply instead of
        // whatever came back.
        if outcome.body_hooks.as_ref().is_some_and(filtered::answered) {
            return Err(ProxyError::with_cause(
                ErrorKind::UpstreamReset,
                BodyError::Answered,
            ));
        }
        let failure = match &result {
            Ok((resp, _)) => {
                let status = resp.status().as_u16();
                cluster.stats.rq.inc(status);
                endpoint.record(TryOutcome::Status(status));
                TryFailure::Status(status)
            }
            Err(e) => {
                cluster.stats.rq.inc(e.kind.status().as_u16());
                endpoint
                    .rq_error
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (failure, seen) = classify(e, per_try_fires);
                if let Some(o) = seen {
                    endpoint.record(o);
                }
                if e.kind == ErrorKind::UpstreamTimeout {
                    cluster.stats.rq_timeout.inc();
                }
                match failure {
                    Some(f) => f,
                    None => return result.map(|(r, ret)| (r, ret, endpoint)),
                }
            }
        };

        let retry = policy
            .filter(|p| p.should_retry(failure) && retries < p.num_retries && payload.can_replay());
        let Some(policy) = retry else {
            return result.map(|(r, ret)| (r, ret, endpoint));
        };
        // The retry budget / max_retries breaker: no slot, no retry (Envoy
        // answers with what the last try got). The previous retry's slot is
        // given back first: the breaker counts retries in flight, and this
        // request has at most one.
        _retry_slot = None;
        let Some(slot) = cluster.breakers().try_retry() else {
            return result.map(|(r, ret)| (r, ret, endpoint));
        };
        _retry_slot = Some(slot);
        retries += 1;
        cluster.stats.rq_retry.inc();
        // A response being retried is dropped unread; its connection closes.
        drop(result);

        let wait = policy.backoff(retries, fastrand::f64());
        let wait = match deadline {
            Some(d) => wait.min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => wait,
        };
        tokio::time::sleep(wait).await;

        tried.push(endpoint.addr);
        endpoint = match cluster.pick_excluding(hash, &tried) {
            Some(e) => e,
            None => return Err(ProxyError::new(ErrorKind::NoHealthyUpstream)),
        };
    }
}

/// Maps a failed try to what the retry policy and outlier detection see.
/// `per_try_fired`: the timeout in force was the per-try one, so a timeout
/// may be retried; when the route timeout fires, the request is over.
fn classify(e: &ProxyError, per_try_fired: bool) -> (Option<TryFailure>, Option<TryOutcome>) {
    match e.kind {
        ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => (
            Some(TryFailure::ConnectFailure),
            Some(TryOutcome::ConnectFailure),
        ),
        ErrorKind::UpstreamReset if refused_stream(e) => {
            (Some(TryFailure::RefusedStream), Some(TryOutcome::Reset))
        }
        ErrorKind::UpstreamReset => (Some(TryFailure::Reset), Some(TryOutcome::Reset)),
        ErrorKind::UpstreamTimeout if per_try_fired => {
            (Some(TryFailure::PerTryTimeout), Some(TryOutcome::Timeout))
        }
        ErrorKind::UpstreamTimeout => (None, Some(TryOutcome::Timeout)),
        // Breaker overflow and local conditions say nothing of the endpoint.
        _ => (None, None),
    }
}

/// Whether an HTTP/2 upstream refused the stream (REFUSED_STREAM): the
/// request was not processed.
fn refused_stream(e: &ProxyError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e
        .cause
        .as_deref()
        .map(|c| c as &(dyn std::error::Error + 'static));
    // Bounded: error chains are short, but never trust a cycle.
    for _ in 0..8 {
        let Some(c) = cause else {
            return false;
        };
        if let Some(h2e) = c.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = c.source();
    }
    false
}

/// A fresh request with `head`'s method, URI, version and headers (no
/// extensions: a retry carries nothing connection-specific).
fn rebuild(head: &request::Parts, body: ProxyBody) -> Request<ProxyBody> {
    let mut r = Request::new(body);
    *r.method_mut() = head.method.clone();
    *r.uri_mut() = head.uri.clone();
    *r.version_mut() = head.version;
    *r.headers_mut() = head.headers.clone();
    r
}

/// Turns the downstream head into the upstream one, in place.
fn prepare_upstream_head(
    req: &mut Request<ProxyBody>,
    conn: &ConnCtx,
    route: &Route,
    cluster: &Cluster,
    authority: HeaderValue,
    new_path: Option<String>,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let h2 = cluster.protocol == UpstreamProtocol::Http2;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade, h2);
    // The proxy answers `Expect: 100-continue` itself (hyper sends the 100
    // when the body is first read, i.e. once the upstream is connected).
    headers.remove(header::EXPECT);

    let ip = conn.peer_ip_value.as_bytes();
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(Bytes::from(v))
                .map_err(|e| ProxyError::with_cause(ErrorKind::BadRequest, e))?
        }
        None => conn.peer_ip_value.clone(),
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
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
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_maps_failures_for_retry_and_outlier_detection() {
        let cases = [
            (
                ErrorKind::ConnectFailed,
                false,
                Some(TryFailure::ConnectFailure),
            ),
            (
                ErrorKind::ConnectTimeout,
                false,
                Some(TryFailure::ConnectFailure),
            ),
            (ErrorKind::UpstreamReset, false, Some(TryFailure::Reset)),
            (
                ErrorKind::UpstreamTimeout,
                true,
                Some(TryFailure::PerTryTimeout),
            ),
            (ErrorKind::UpstreamTimeout, false, None),
            (ErrorKind::Overloaded, false, None),
        ];
        for (kind, per_try, want) in cases {
            let (got, _) = classify(&ProxyError::new(kind), per_try);
            assert_eq!(got, want, "{kind:?} per_try={per_try}");
        }
        let (_, seen) = classify(&ProxyError::new(ErrorKind::Overloaded), false);
        assert!(
            seen.is_none(),
            "a local overflow must not count against the endpoint"
        );
    }
}
