//! The chain built once per listener config, the per-route view of it, and
//! the per-request value that drives the hooks.

use std::sync::Arc;

use bytes::Bytes;
use http::{request, response, HeaderMap};

use crate::ctx::{FilterCx, FilterState, RequestCtx};
use crate::{Action, Flow, HttpFilter, LocalReply};

pub(crate) type FilterRef = Arc<dyn HttpFilter>;

/// A filter position without a per-request state slot.
const NO_SLOT: u16 = u16::MAX;

/// The filters in effect at each chain position (`None`: off here), with
/// their per-request state slots assigned once, at build time.
pub(crate) struct Resolved {
    filters: Box<[Option<FilterRef>]>,
    slots: Box<[u16]>,
    n_states: usize,
    body: BodyHooks,
}

/// Which body hooks some filter in effect implements, known at build time
/// so a request whose filters have none streams its bodies untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BodyHooks {
    request: bool,
    buffer_request: bool,
    response: bool,
}

impl Resolved {
    pub(crate) fn new(filters: Vec<Option<FilterRef>>) -> Resolved {
        let mut body = BodyHooks::default();
        for f in filters.iter().flatten() {
            body.buffer_request |= f.buffers_request_body();
            body.request |= f.wants_request_body() || f.buffers_request_body();
            body.response |= f.wants_response_body();
        }
        let mut n_states = 0usize;
        let slots = filters
            .iter()
            .map(|f| match f {
                // Chains are a handful of filters; u16 is far beyond any.
                Some(f) if f.wants_state() && n_states < usize::from(NO_SLOT) => {
                    n_states += 1;
                    (n_states - 1) as u16
                }
                _ => NO_SLOT,
            })
            .collect();
        Resolved {
            filters: filters.into(),
            slots,
            n_states,
            body,
        }
    }

    pub(crate) fn filters_vec(&self) -> Vec<Option<FilterRef>> {
        self.filters.to_vec()
    }
}

/// The ordered filters of one HTTP listener, built once per config by
/// [`crate::Registry::build_chain`] and shared by every request (cloning is
/// a few reference counts).
#[derive(Clone)]
pub struct FilterChain {
    pub(crate) names: Arc<[Box<str>]>,
    /// The listener-level instance at each position, also for filters
    /// declared `disabled` (when they have a config), so a route can turn
    /// them on without building a new one.
    pub(crate) instances: Arc<[Option<FilterRef>]>,
    pub(crate) base: Arc<Resolved>,
}

/// A virtual host's or route's view of a [`FilterChain`]: some filters off,
/// some with their own config. Built once per route by
/// [`crate::Registry::build_route_filters`].
#[derive(Clone)]
pub struct RouteFilters {
    pub(crate) names: Arc<[Box<str>]>,
    pub(crate) resolved: Arc<Resolved>,
}

/// One request's pass through a chain: the request facts, the per-filter
/// state, and how far the request got. Create with [`FilterChain::start`];
/// it is `Send` and owns everything it needs, so the pipeline can move it
/// into the response body stream.
pub struct RequestFilters {
    resolved: Arc<Resolved>,
    ctx: RequestCtx,
    states: Vec<FilterState>,
    /// Filters `0..next` have passed the request head: they get the body and
    /// response hooks. While the head is in progress it is the position of
    /// the filter to call next.
    next: usize,
    /// The filter at `next` asked for a delay and is to be called again.
    resumed: bool,
}

// === impl FilterChain ===

impl FilterChain {
    /// A chain with no filters (a listener without `http_filters`).
    pub fn empty() -> FilterChain {
        FilterChain {
            names: Arc::from(Vec::<Box<str>>::new()),
            instances: Arc::from(Vec::<Option<FilterRef>>::new()),
            base: Arc::new(Resolved::new(Vec::new())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The filters' names, in chain order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The view of a route with no overrides of its own.
    pub fn default_route_filters(&self) -> RouteFilters {
        RouteFilters {
            names: self.names.clone(),
            resolved: self.base.clone(),
        }
    }

    /// Begins one request. `route` is the matched route's
    /// [`RouteFilters`] (built from this chain); `None` runs the listener's
    /// defaults. Allocates only when a filter in effect keeps state.
    pub fn start(&self, ctx: RequestCtx, route: Option<&RouteFilters>) -> RequestFilters {
        let resolved = match route {
            Some(r) if Arc::ptr_eq(&r.names, &self.names) => r.resolved.clone(),
            Some(_) => {
                // Route filters built from another chain (another listener or
                // an older snapshot) are a wiring bug; the listener defaults
                // are the safe answer in release builds.
                debug_assert!(false, "RouteFilters built from a different FilterChain");
                self.base.clone()
            }
            None => self.base.clone(),
        };
        let states = (0..resolved.n_states).map(|_| FilterState::Empty).collect();
        RequestFilters {
            resolved,
            ctx,
            states,
            next: 0,
            resumed: false,
        }
    }

    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }
}

impl Default for FilterChain {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names.iter()).finish()
    }
}

// === impl RouteFilters ===

impl RouteFilters {
    /// The names of the filters in effect for this route, in chain order.
    pub fn enabled(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .zip(self.resolved.filters.iter())
            .filter(|(_, f)| f.is_some())
            .map(|(n, _)| &**n)
    }

    pub(crate) fn filters(&self) -> &[Option<FilterRef>] {
        &self.resolved.filters
    }
}

impl std::fmt::Debug for RouteFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.enabled()).finish()
    }
}

// === impl RequestFilters ===

/// Calls `hook` on filter `i` with its state slot (or a throwaway one).
fn with_cx<R>(
    resolved: &Resolved,
    states: &mut [FilterState],
    ctx: &RequestCtx,
    i: usize,
    resumed: bool,
    hook: impl FnOnce(&dyn HttpFilter, &mut FilterCx<'_>) -> R,
) -> Option<R> {
    let filter = resolved.filters.get(i)?.as_deref()?;
    let mut scratch = FilterState::Empty;
    let slot = resolved.slots.get(i).copied().unwrap_or(NO_SLOT);
    let state = match states.get_mut(usize::from(slot)) {
        Some(s) => s,
        None => &mut scratch,
    };
    let mut cx = FilterCx {
        req: ctx,
        state,
        resumed,
    };
    Some(hook(filter, &mut cx))
}

impl RequestFilters {
    pub fn ctx(&self) -> &RequestCtx {
        &self.ctx
    }

    /// For facts the pipeline learns as the request goes on (the upstream
    /// host, the request id).
    pub fn ctx_mut(&mut self) -> &mut RequestCtx {
        &mut self.ctx
    }

    /// Whether the request body must pass through
    /// [`Self::on_request_body`] (streamed or buffered).
    pub fn wants_request_body(&self) -> bool {
        self.resolved.body.request
    }

    /// Whether the whole request body must go through
    /// [`Self::on_request_body`] before the request goes upstream (see
    /// [`HttpFilter::buffers_request_body`]).
    pub fn buffers_request_body(&self) -> bool {
        self.resolved.body.buffer_request
    }

    /// Whether the response body must pass through
    /// [`Self::on_response_body`] and [`Self::on_response_trailers`].
    pub fn wants_response_body(&self) -> bool {
        self.resolved.body.response
    }

    /// Runs the request-head hooks in chain order. `Delay(d)`: wait `d`, then
    /// call this again (the chain resumes at the filter that asked).
    /// `Respond(r)`: answer with `r`, best through [`Self::local_response`].
    pub fn on_request_head(&mut self, head: &mut request::Parts) -> Action {
        let len = self.resolved.filters.len();
        while self.next < len {
            let i = self.next;
            let resumed = std::mem::take(&mut self.resumed);
            let action = with_cx(
                &self.resolved,
                &mut self.states,
                &self.ctx,
                i,
                resumed,
                |f, cx| f.on_request_head(cx, head),
            );
            match action {
                None | Some(Action::Continue) => self.next += 1,
                Some(Action::Delay(d)) => {
                    self.resumed = true;
                    return Action::Delay(d);
                }
                // `next` stays at the answering filter: only the filters
                // before it saw the request and see the reply.
                Some(Action::Respond(r)) => return Action::Respond(r),
            }
        }
        Action::Continue
    }

    /// Runs the request-body hooks of the filters that passed the head, in
    /// chain order.
    pub fn on_request_body(&mut self, chunk: &mut Bytes, end_of_stream: bool) -> Flow {
        for i in 0..self.next {
            let flow = with_cx(
                &self.resolved,
                &mut self.states,
                &self.ctx,
                i,
                false,
                |f, cx| f.on_request_body(cx, chunk, end_of_stream),
            );
            if let Some(Flow::Respond(r)) = flow {
                self.next = i;
                return Flow::Respond(r);
            }
        }
        Flow::Continue
    }

    /// Runs the response-head hooks in reverse chain order (Envoy's encoder
    /// order). `Respond(r)`: send `r` instead of the upstream response, as is.
    pub fn on_response_head(&mut self, head: &mut response::Parts) -> Flow {
        for i in (0..self.next).rev() {
            let flow = with_cx(
                &self.resolved,
                &mut self.states,
                &self.ctx,
                i,
                false,
                |f, cx| f.on_response_head(cx, head),
            );
            if let Some(Flow::Respond(r)) = flow {
                return Flow::Respond(r);
            }
        }
        Flow::Continue
    }

    pub fn on_response_body(&mut self, chunk: &mut Bytes, end_of_stream: bool) {
        for i in (0..self.next).rev() {
            with_cx(
                &self.resolved,
                &mut self.states,
                &self.ctx,
                i,
                false,
                |f, cx| f.on_response_body(cx, chunk, end_of_stream),
            );
        }
    }

    pub fn on_response_trailers(&mut self, trailers: &mut HeaderMap) {
        for i in (0..self.next).rev() {
            with_cx(
                &self.resolved,
                &mut self.states,
                &self.ctx,
                i,
                false,
                |f, cx| f.on_response_trailers(cx, trailers),
            );
        }
    }

    /// Turns a filter's local reply into the response to send: it passes
    /// through the response hooks of the filters before the one that
    /// answered (CORS and header mutation apply to a 429 too), with
    /// `content-length` set.
    pub fn local_response(&mut self, reply: LocalReply) -> http::Response<Bytes> {
        let (mut parts, mut body) = reply.into_parts();
        if let Flow::Respond(other) = self.on_response_head(&mut parts) {
            return other.into_response();
        }
        self.on_response_body(&mut body, true);
        LocalReply::finish(parts, body)
    }
}

#[cfg(test)]
impl RequestFilters {
    /// Heap capacity of the state slots (0: nothing allocated).
    pub(crate) fn state_capacity(&self) -> usize {
        self.states.capacity()
    }
}

impl std::fmt::Debug for RequestFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFilters")
            .field("ctx", &self.ctx)
            .field("next", &self.next)
            .field("states", &self.states)
            .finish()
    }
}
