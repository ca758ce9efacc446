//! HTTP filters for Ferry's proxy.
//!
//! Owns: the [`HttpFilter`] trait, the per-config [`FilterChain`], and (as
//! they land) the built-in filters, each with its own config. Must not
//! touch: sockets, hyper, the proxy's snapshot or router. Filters see only
//! `http` types, so the proxy can change its HTTP stack without touching
//! them.
//!
//! A chain is built once per config and shared by every request; a filter
//! keeps per-request state only in the [`RequestCtx`] it is handed.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{request, response, HeaderMap};

/// What a hook asks the proxy to do next.
pub enum Action {
    /// Go on to the next filter / phase.
    Continue,
    /// Stop the chain and answer the client with this response; the
    /// upstream is not called.
    Respond(http::Response<Bytes>),
}

/// Per-request facts a filter may read.
pub struct RequestCtx {
    pub peer: SocketAddr,
    pub request_id: Option<http::HeaderValue>,
}

/// One HTTP filter. Every hook has a pass-through default, so a filter
/// implements only the phases it cares about. Hooks are synchronous: a filter
/// that must wait (a delay) does so in the proxy's pipeline, not here.
pub trait HttpFilter: Send + Sync {
    /// The filter's registered name (`fault`, `local_ratelimit`, ...).
    fn name(&self) -> &'static str;

    fn on_request_head(&self, _ctx: &RequestCtx, _head: &mut request::Parts) -> Action {
        Action::Continue
    }

    fn on_request_body(&self, _ctx: &RequestCtx, _chunk: &mut Bytes) -> Action {
        Action::Continue
    }

    fn on_response_head(&self, _ctx: &RequestCtx, _head: &mut response::Parts) -> Action {
        Action::Continue
    }

    fn on_response_trailers(&self, _ctx: &RequestCtx, _trailers: &mut HeaderMap) {}
}

/// An ordered list of filters, built once per config.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Arc<[Arc<dyn HttpFilter>]>,
}

impl FilterChain {
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> Self {
        FilterChain {
            filters: filters.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the request-head hooks in order; the first `Respond` wins.
    pub fn on_request_head(&self, ctx: &RequestCtx, head: &mut request::Parts) -> Action {
        for f in self.filters.iter() {
            if let Action::Respond(r) = f.on_request_head(ctx, head) {
                return Action::Respond(r);
            }
        }
        Action::Continue
    }

    /// Runs the response-head hooks in reverse order, as Envoy's encoder
    /// chain does.
    pub fn on_response_head(&self, ctx: &RequestCtx, head: &mut response::Parts) -> Action {
        for f in self.filters.iter().rev() {
            if let Action::Respond(r) = f.on_response_head(ctx, head) {
                return Action::Respond(r);
            }
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Deny;
    impl HttpFilter for Deny {
        fn name(&self) -> &'static str {
            "deny"
        }
        fn on_request_head(&self, _: &RequestCtx, _: &mut request::Parts) -> Action {
            let mut r = http::Response::new(Bytes::from_static(b"no"));
            *r.status_mut() = http::StatusCode::FORBIDDEN;
            Action::Respond(r)
        }
    }

    struct Tag(&'static str);
    impl HttpFilter for Tag {
        fn name(&self) -> &'static str {
            "tag"
        }
        fn on_request_head(&self, _: &RequestCtx, head: &mut request::Parts) -> Action {
            head.headers
                .append("x-tag", http::HeaderValue::from_static(self.0));
            Action::Continue
        }
    }

    fn ctx() -> RequestCtx {
        RequestCtx {
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            request_id: None,
        }
    }

    #[test]
    fn chain_runs_in_order_and_stops_at_respond() {
        let chain = FilterChain::new(vec![Arc::new(Tag("a")), Arc::new(Deny), Arc::new(Tag("b"))]);
        let (mut head, _) = http::Request::new(()).into_parts();
        match chain.on_request_head(&ctx(), &mut head) {
            Action::Respond(r) => assert_eq!(r.status(), http::StatusCode::FORBIDDEN),
            Action::Continue => panic!("deny filter must answer"),
        }
        let tags: Vec<_> = head.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, vec!["a"], "filters after the answering one must not run");
    }
}
