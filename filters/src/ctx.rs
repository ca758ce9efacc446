//! What a hook sees besides the message: facts about the request that the
//! pipeline knows, and the filter's own per-request state.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Version};

/// Per-request facts filled in by the pipeline. Owned by
/// [`crate::RequestFilters`] for the whole exchange, so response hooks read
/// the same values as request hooks; the pipeline updates the fields it
/// learns later (the upstream host) through
/// [`crate::RequestFilters::ctx_mut`].
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The downstream peer (the client, or the previous proxy hop).
    pub downstream_remote: SocketAddr,
    /// The request id (`x-request-id`) when the pipeline has settled it.
    pub request_id: Option<HeaderValue>,
    /// The downstream protocol.
    pub protocol: Version,
    /// Wall-clock start of the request (for `%START_TIME%`).
    pub start_time: SystemTime,
    /// The upstream endpoint, once chosen (response side only).
    pub upstream_host: Option<SocketAddr>,
    /// The verified peer identity of an mTLS downstream (a SPIFFE id or a
    /// certificate subject). `None` until the proxy passes one; RBAC's
    /// `authenticated` principal never matches without it.
    pub peer_principal: Option<Arc<str>>,
}

impl RequestCtx {
    pub fn new(downstream_remote: SocketAddr, protocol: Version, start_time: SystemTime) -> Self {
        RequestCtx {
            downstream_remote,
            request_id: None,
            protocol,
            start_time,
            upstream_host: None,
            peer_principal: None,
        }
    }
}

/// One filter's per-request state. The small inline variants cover the
/// built-ins' common cases without a heap allocation per request; `Any` is
/// for rare or larger state.
#[derive(Default)]
pub enum FilterState {
    #[default]
    Empty,
    /// A header value kept for the response side (CORS keeps the allowed
    /// origin).
    Value(HeaderValue),
    /// A few counters (local_ratelimit keeps limit, remaining, reset).
    Numbers([u64; 3]),
    /// Anything else; dropped with the request, so a guard placed here runs
    /// its `Drop` when the exchange ends.
    Any(Box<dyn Any + Send + Sync>),
}

impl std::fmt::Debug for FilterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterState::Empty => f.write_str("Empty"),
            FilterState::Value(v) => f.debug_tuple("Value").field(v).finish(),
            FilterState::Numbers(n) => f.debug_tuple("Numbers").field(n).finish(),
            FilterState::Any(_) => f.write_str("Any(..)"),
        }
    }
}

/// What a hook gets besides the message.
pub struct FilterCx<'a> {
    pub req: &'a RequestCtx,
    /// This filter's own slot. For a filter whose
    /// [`crate::HttpFilter::wants_state`] is false it is a scratch value that
    /// does not outlive the call.
    pub state: &'a mut FilterState,
    /// true when this call of `on_request_head` follows the filter's own
    /// [`crate::Action::Delay`].
    pub resumed: bool,
}
