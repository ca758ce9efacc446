//! Helpers shared by the crate's tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{request, response, StatusCode, Version};

use crate::{
    Action, FilterChain, FilterEnv, FilterSpec, ManualClock, Registry, RequestCtx, RequestFilters,
    RouteFilters, SeededRandom,
};

pub(crate) struct Fixture {
    pub(crate) registry: Registry,
    pub(crate) clock: Arc<ManualClock>,
}

/// Test YAML written inline as `"\n    - name: x\n      config: ..."`: drops
/// the indentation common to all lines.
pub(crate) fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn fixture(seed: u64) -> Fixture {
    let clock = Arc::new(ManualClock::new());
    let env = FilterEnv {
        clock: clock.clone(),
        random: Arc::new(SeededRandom::new(seed)),
    };
    Fixture {
        registry: Registry::new(env),
        clock,
    }
}

impl Fixture {
    /// A chain from the YAML of a listener's `http_filters` list.
    pub(crate) fn chain(&self, yaml: &str) -> FilterChain {
        let specs: Vec<FilterSpec> =
            serde_norway::from_str(&dedent(yaml)).expect("http_filters yaml");
        match self.registry.build_chain(&specs, "http_filters") {
            Ok(c) => c,
            Err(e) => panic!("chain does not build: {e:?}"),
        }
    }

    pub(crate) fn chain_errors(&self, yaml: &str) -> Vec<String> {
        let specs: Vec<FilterSpec> =
            serde_norway::from_str(&dedent(yaml)).expect("http_filters yaml");
        match self.registry.build_chain(&specs, "http_filters") {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// The view for a route with `per_filter_config` given in YAML.
    pub(crate) fn route(
        &self,
        chain: &FilterChain,
        parent: Option<&RouteFilters>,
        yaml: &str,
    ) -> Result<RouteFilters, Vec<String>> {
        let map = serde_norway::from_str(&dedent(yaml)).expect("per_filter_config yaml");
        self.registry
            .build_route_filters(chain, parent, &map, "route.per_filter_config")
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    pub(crate) fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

pub(crate) fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40_000))
}

pub(crate) fn ctx() -> RequestCtx {
    ctx_from(peer())
}

pub(crate) fn ctx_from(peer: SocketAddr) -> RequestCtx {
    RequestCtx::new(peer, Version::HTTP_11, SystemTime::UNIX_EPOCH)
}

pub(crate) fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("test request").into_parts().0
}

pub(crate) fn get(headers: &[(&str, &str)]) -> request::Parts {
    req("GET", "/", headers)
}

pub(crate) fn resp(status: u16) -> response::Parts {
    let mut r = http::Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.into_parts().0
}

/// How the request head came out of the chain.
#[derive(Debug)]
pub(crate) enum Outcome {
    Forwarded,
    /// The local reply, after the response hooks.
    Replied(http::Response<Bytes>),
}

/// Runs the request head like the pipeline, recording delays.
pub(crate) fn drive(f: &mut RequestFilters, head: &mut request::Parts) -> (Outcome, Vec<Duration>) {
    let mut delays = Vec::new();
    loop {
        match f.on_request_head(head) {
            Action::Continue => return (Outcome::Forwarded, delays),
            Action::Delay(d) => delays.push(d),
            Action::Respond(r) => return (Outcome::Replied(f.local_response(r)), delays),
        }
        assert!(delays.len() < 10, "a filter keeps delaying");
    }
}

/// Starts a request on `chain` and runs its head.
pub(crate) fn run(
    chain: &FilterChain,
    route: Option<&RouteFilters>,
    head: &mut request::Parts,
) -> (RequestFilters, Outcome, Vec<Duration>) {
    let mut f = chain.start(ctx(), route);
    let (o, d) = drive(&mut f, head);
    (f, o, d)
}

pub(crate) fn status_of(o: &Outcome) -> Option<u16> {
    match o {
        Outcome::Forwarded => None,
        Outcome::Replied(r) => Some(r.status().as_u16()),
    }
}

pub(crate) fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}
