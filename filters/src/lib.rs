//! HTTP filters for Ferry's proxy.
//!
//! **Owns:** the [`HttpFilter`] trait and what a hook may ask for
//! ([`Action`], [`Flow`], [`LocalReply`]); the per-listener [`FilterChain`],
//! per-route overrides ([`RouteFilters`]) and the per-request driver
//! ([`RequestFilters`]); the explicit name → factory [`Registry`]; every
//! built-in filter and its config ([`fault`], [`local_ratelimit`],
//! [`header_mutation`], [`cors`], [`rbac`], [`buffer`]); the injectable [`Clock`] and
//! [`Random`] they read.
//!
//! **Must not touch:** sockets, hyper, tokio, the proxy's snapshot, router or
//! error types. Filters see only `http` types and [`RequestCtx`], so the proxy
//! can change its HTTP stack without touching them. Hooks are synchronous and
//! never wait: a filter that needs time to pass (a fault delay) returns
//! [`Action::Delay`] and the pipeline does the waiting.
//!
//! # Integration surface (what `proxy/src/pipeline.rs` calls)
//!
//! Build time, once per snapshot (never per request):
//! - [`Registry::builtin`] (or [`Registry::new`] with a test clock/RNG);
//! - [`Registry::build_chain`] on a listener's `http_filters: Vec<FilterSpec>`
//!   → [`FilterChain`], or every error as [`FilterConfigError`] with its path;
//! - [`Registry::build_route_filters`] on a virtual host's or route's
//!   `per_filter_config: BTreeMap<String, PerFilterConfig>` → [`RouteFilters`]
//!   (pass the virtual host's result as `parent` when building its routes, so
//!   a virtual-host override is one instance shared by its routes).
//!
//! Per request:
//! ```text
//! let mut f = chain.start(RequestCtx::new(peer, version, SystemTime::now()), Some(&route_filters));
//! loop {
//!     match f.on_request_head(&mut head) {
//!         Action::Continue => break,
//!         Action::Delay(d) => tokio::time::sleep(d).await, // then call again: the chain resumes
//!         Action::Respond(r) => return f.local_response(r), // response hooks of earlier filters run
//!     }
//! }
//! // f.buffers_request_body(): read the whole body first, each chunk through
//! //   f.on_request_body(&mut chunk, eos) -> Flow (Respond = answer, no upstream request),
//! //   then forward it with content-length;
//! // else f.wants_request_body(): the same hook per chunk as the body streams
//! //   upstream (Respond = answer, abandon the upstream request).
//! f.ctx_mut().upstream_host = Some(endpoint_addr);
//! match f.on_response_head(&mut resp_head) { Flow::Continue => {}, Flow::Respond(r) => return r.into_response() }
//! // f.wants_response_body(): while streaming, f.on_response_body(&mut chunk, eos)
//! //   and f.on_response_trailers(&mut trailers)
//! ```
//! The pipeline's own error responses (404, 503, …) produced after the chain
//! ran should also go through [`RequestFilters::on_response_head`], so CORS
//! and header mutations apply to them as to any response.
//!
//! Hook order follows Envoy: request hooks in chain order, response hooks in
//! reverse, and a local reply from filter *i* passes back through the
//! response hooks of filters *0..i* only (those that saw the request).

use std::time::Duration;

use bytes::Bytes;
use http::{request, response, HeaderMap, HeaderName, HeaderValue, StatusCode};

mod chain;
mod config;
mod ctx;
mod env;
mod error;
mod matcher;
mod registry;

pub mod buffer;
pub mod cors;
pub mod fault;
pub mod header_mutation;
pub mod local_ratelimit;
pub mod rbac;

pub use chain::{FilterChain, RequestFilters, RouteFilters};
pub use config::{parse_config, parse_duration, Dur, FilterSpec, PerFilterConfig, Percent};
pub use ctx::{FilterCx, FilterState, RequestCtx};
pub use env::{Clock, FilterEnv, ManualClock, Random, SeededRandom, SystemClock, ThreadRandom};
pub use error::FilterConfigError;
pub use matcher::{HeaderMatcher, StringMatch};
pub use registry::{BuildFn, Registry};

/// What a request-head hook asks the pipeline to do next.
#[derive(Debug)]
pub enum Action {
    /// Go on to the next filter, then to routing and the upstream.
    Continue,
    /// Stop the chain and answer the client with this reply; the upstream is
    /// not called.
    Respond(LocalReply),
    /// Hold the request this long, then call
    /// [`RequestFilters::on_request_head`] again: the same filter is called
    /// again with [`FilterCx::resumed`] set, so it can finish what it started
    /// (a fault filter aborts after its delay).
    Delay(Duration),
}

/// What a body or response-head hook asks for: hooks past the request head
/// cannot delay (the bytes are already moving).
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Request body: answer instead of forwarding. Response head: replace the
    /// upstream response (its body is dropped) with this reply.
    Respond(LocalReply),
}

/// A response produced by a filter instead of the upstream.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One HTTP filter instance, built once from its config and shared by every
/// request. Every hook has a pass-through default (none panics), so a filter
/// implements only the phases it cares about. Per-request data goes in
/// [`FilterCx::state`], never in `self`.
pub trait HttpFilter: Send + Sync + 'static {
    /// true when the filter keeps per-request data in [`FilterCx::state`];
    /// the chain allocates state slots only for such filters (none at all
    /// when no filter of the chain asks).
    fn wants_state(&self) -> bool {
        false
    }

    /// true when the filter implements [`HttpFilter::on_request_body`]. The
    /// pipeline passes a request body through the hooks only when a filter
    /// of the request's chain says so; other requests stream untouched.
    fn wants_request_body(&self) -> bool {
        false
    }

    /// true when the request must not go upstream before its whole body
    /// went through the request-body hooks (Envoy's buffer filter). The
    /// pipeline then reads the body first, keeps it in memory, and forwards
    /// it with `content-length`; the filter bounds it by answering from
    /// [`HttpFilter::on_request_body`] when it grows too large. Implies
    /// [`HttpFilter::wants_request_body`].
    fn buffers_request_body(&self) -> bool {
        false
    }

    /// true when the filter implements [`HttpFilter::on_response_body`] or
    /// [`HttpFilter::on_response_trailers`]; otherwise response bodies
    /// stream untouched.
    fn wants_response_body(&self) -> bool {
        false
    }

    fn on_request_head(&self, _cx: &mut FilterCx<'_>, _head: &mut request::Parts) -> Action {
        Action::Continue
    }

    /// One data frame of the request body (`end`: the last one; an empty
    /// chunk with `end` when the body ends without data). Only called when
    /// [`HttpFilter::wants_request_body`] (or `buffers_request_body`) says
    /// so. `Flow::Respond` answers the client with the reply instead and
    /// abandons the upstream request. Runs once per chunk, whatever the
    /// number of upstream tries.
    fn on_request_body(&self, _cx: &mut FilterCx<'_>, _chunk: &mut Bytes, _end: bool) -> Flow {
        Flow::Continue
    }

    fn on_response_head(&self, _cx: &mut FilterCx<'_>, _head: &mut response::Parts) -> Flow {
        Flow::Continue
    }

    /// Response bytes are already streaming to the client: modify in place
    /// only. Only called when [`HttpFilter::wants_response_body`] says so
    /// (and for the body of a local reply). A response whose body may change
    /// goes out without `content-length`.
    fn on_response_body(&self, _cx: &mut FilterCx<'_>, _chunk: &mut Bytes, _end: bool) {}

    /// The response's trailers, after its last data frame. Only called when
    /// [`HttpFilter::wants_response_body`] says so.
    fn on_response_trailers(&self, _cx: &mut FilterCx<'_>, _trailers: &mut HeaderMap) {}
}

// === impl LocalReply ===

impl LocalReply {
    /// A reply with a `text/plain` body (no body when `body` is empty).
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        let mut headers = HeaderMap::new();
        if !body.is_empty() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
        }
        LocalReply {
            status,
            headers,
            body,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The reply as a response with `content-length` set.
    pub fn into_response(self) -> http::Response<Bytes> {
        let (parts, body) = self.into_parts();
        Self::finish(parts, body)
    }

    pub(crate) fn into_parts(self) -> (response::Parts, Bytes) {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers = self.headers;
        (parts, self.body)
    }

    pub(crate) fn finish(mut parts: response::Parts, body: Bytes) -> http::Response<Bytes> {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        http::Response::from_parts(parts, body)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
