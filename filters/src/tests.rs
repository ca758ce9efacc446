//! The chain's contract: order, local replies, per-route views, registry
//! errors, and state allocation.

use std::sync::Arc;

use bytes::Bytes;
use http::{request, response, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use crate::testutil::*;
use crate::{
    parse_config, Action, FilterConfigError, FilterCx, FilterEnv, FilterState, Flow, HttpFilter,
    LocalReply,
};

/// Appends its tag to `x-req` / `x-resp` / the body; answers when
/// `respond: true`.
struct Tag {
    tag: HeaderValue,
    respond: bool,
    stateful: bool,
    body: bool,
    /// Answers from the request-body hook at the end of the body.
    refuse_body: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagConfig {
    tag: String,
    #[serde(default)]
    respond: bool,
    #[serde(default)]
    stateful: bool,
    /// Declares its body hooks.
    #[serde(default)]
    body: bool,
    #[serde(default)]
    refuse_body: bool,
}

fn build_tag(v: &Value, _: &FilterEnv) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: TagConfig = parse_config(v)?;
    let tag = HeaderValue::from_str(&c.tag)
        .map_err(|_| vec![FilterConfigError::new("tag", "invalid")])?;
    Ok(Arc::new(Tag {
        tag,
        respond: c.respond,
        stateful: c.stateful,
        body: c.body,
        refuse_body: c.refuse_body,
    }))
}

impl HttpFilter for Tag {
    fn wants_state(&self) -> bool {
        self.stateful
    }
    fn wants_request_body(&self) -> bool {
        self.body
    }
    fn wants_response_body(&self) -> bool {
        self.body
    }
    fn on_request_head(&self, cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        head.headers.append("x-req", self.tag.clone());
        if self.stateful {
            *cx.state = FilterState::Value(self.tag.clone());
        }
        if self.respond {
            return Action::Respond(LocalReply::new(http::StatusCode::IM_A_TEAPOT, "tea"));
        }
        Action::Continue
    }
    fn on_request_body(&self, _: &mut FilterCx<'_>, chunk: &mut Bytes, end: bool) -> Flow {
        if self.refuse_body && end {
            return Flow::Respond(LocalReply::new(http::StatusCode::PAYLOAD_TOO_LARGE, "no"));
        }
        let mut b = chunk.to_vec();
        b.extend_from_slice(self.tag.as_bytes());
        *chunk = b.into();
        Flow::Continue
    }
    fn on_response_head(&self, cx: &mut FilterCx<'_>, head: &mut response::Parts) -> Flow {
        head.headers.append("x-resp", self.tag.clone());
        if let FilterState::Value(v) = &*cx.state {
            head.headers.append("x-state", v.clone());
        }
        Flow::Continue
    }
    fn on_response_body(&self, _: &mut FilterCx<'_>, chunk: &mut Bytes, _: bool) {
        let mut b = chunk.to_vec();
        b.extend_from_slice(self.tag.as_bytes());
        *chunk = b.into();
    }
    fn on_response_trailers(&self, _: &mut FilterCx<'_>, trailers: &mut http::HeaderMap) {
        trailers.append("x-trailer", self.tag.clone());
    }
}

fn fx() -> Fixture {
    let mut fx = fixture(1);
    fx.registry.register("a", build_tag);
    fx.registry.register("b", build_tag);
    fx.registry.register("c", build_tag);
    fx
}

fn all(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect()
}

const ABC: &str = "
    - {name: a, config: {tag: a}}
    - {name: b, config: {tag: b}}
    - {name: c, config: {tag: c}}
";

#[test]
fn request_in_order_response_in_reverse() {
    let fx = fx();
    let chain = fx.chain(ABC);
    let mut head = get(&[]);
    let (mut f, o, _) = run(&chain, None, &mut head);
    assert!(matches!(o, Outcome::Forwarded));
    assert_eq!(all(&head.headers, "x-req"), ["a", "b", "c"]);
    let mut chunk = Bytes::from_static(b">");
    assert!(matches!(
        f.on_request_body(&mut chunk, true),
        Flow::Continue
    ));
    assert_eq!(chunk, ">abc");
    let mut r = resp(200);
    assert!(matches!(f.on_response_head(&mut r), Flow::Continue));
    assert_eq!(all(&r.headers, "x-resp"), ["c", "b", "a"]);
    let mut chunk = Bytes::from_static(b"<");
    f.on_response_body(&mut chunk, true);
    assert_eq!(chunk, "<cba");
}

#[test]
fn body_hooks_are_known_at_build_time_per_route() {
    let fx = fx();
    let chain = fx.chain(ABC);
    let (f, _, _) = run(&chain, None, &mut get(&[]));
    assert!(!f.wants_request_body() && !f.wants_response_body() && !f.buffers_request_body());

    let chain = fx.chain(
        "
        - {name: a, config: {tag: a}}
        - {name: b, config: {tag: b, body: true}}",
    );
    let (f, _, _) = run(&chain, None, &mut get(&[]));
    assert!(f.wants_request_body() && f.wants_response_body());
    assert!(!f.buffers_request_body());
    let off = fx
        .route(&chain, None, "{b: {disabled: true}}")
        .expect("route");
    let (f, _, _) = run(&chain, Some(&off), &mut get(&[]));
    assert!(
        !f.wants_request_body() && !f.wants_response_body(),
        "with the body filter off on the route, nothing wraps the bodies"
    );
}

#[test]
fn response_body_and_trailer_hooks_run_in_reverse() {
    let fx = fx();
    let chain = fx.chain(
        "
        - {name: a, config: {tag: a, body: true}}
        - {name: b, config: {tag: b, body: true}}
        - {name: c, config: {tag: c, body: true}}",
    );
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    let mut chunk = Bytes::from_static(b"1");
    f.on_response_body(&mut chunk, false);
    let mut last = Bytes::new();
    f.on_response_body(&mut last, true);
    assert_eq!((chunk.as_ref(), last.as_ref()), (&b"1cba"[..], &b"cba"[..]));
    let mut t = http::HeaderMap::new();
    f.on_response_trailers(&mut t);
    assert_eq!(all(&t, "x-trailer"), ["c", "b", "a"]);
}

#[test]
fn a_request_body_reply_returns_through_earlier_filters_only() {
    let fx = fx();
    let chain = fx.chain(
        "
        - {name: a, config: {tag: a, body: true}}
        - {name: b, config: {tag: b, body: true, refuse_body: true}}
        - {name: c, config: {tag: c, body: true}}",
    );
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    let mut chunk = Bytes::from_static(b">");
    assert!(matches!(
        f.on_request_body(&mut chunk, false),
        Flow::Continue
    ));
    assert_eq!(chunk, ">abc");
    let mut chunk = Bytes::new();
    let Flow::Respond(r) = f.on_request_body(&mut chunk, true) else {
        panic!("b refuses at the end")
    };
    let r = f.local_response(r);
    assert_eq!(r.status(), 413);
    assert_eq!(all(r.headers(), "x-resp"), ["a"], "c and b never see it");
    assert_eq!(r.body(), "noa");
}

#[test]
fn local_reply_stops_the_chain_and_returns_through_earlier_filters() {
    let fx = fx();
    let chain = fx.chain(
        "
        - {name: a, config: {tag: a}}
        - {name: b, config: {tag: b, respond: true}}
        - {name: c, config: {tag: c}}",
    );
    let mut head = get(&[]);
    let (_, o, _) = run(&chain, None, &mut head);
    assert_eq!(all(&head.headers, "x-req"), ["a", "b"], "c never runs");
    let Outcome::Replied(r) = o else {
        panic!("b answers")
    };
    assert_eq!(r.status(), 418);
    assert_eq!(all(r.headers(), "x-resp"), ["a"], "only filters before b");
    assert_eq!(r.body(), "teaa");
    assert_eq!(header(r.headers(), "content-length"), Some("4"));
}

#[test]
fn per_route_disable_and_override() {
    let fx = fx();
    let chain = fx.chain(ABC);
    let route = fx
        .route(&chain, None, "{b: {disabled: true}, c: {config: {tag: C}}}")
        .expect("route");
    assert_eq!(route.enabled().collect::<Vec<_>>(), ["a", "c"]);
    let mut head = get(&[]);
    run(&chain, Some(&route), &mut head);
    assert_eq!(all(&head.headers, "x-req"), ["a", "C"]);

    // A route under a virtual host inherits what it does not override.
    let child = fx
        .route(&chain, Some(&route), "{a: {disabled: true}}")
        .expect("child");
    let mut head = get(&[]);
    run(&chain, Some(&child), &mut head);
    assert_eq!(all(&head.headers, "x-req"), ["C"]);

    // The listener's chain itself is unchanged.
    let mut head = get(&[]);
    run(&chain, None, &mut head);
    assert_eq!(all(&head.headers, "x-req"), ["a", "b", "c"]);
}

#[test]
fn disabled_by_default_enabled_per_route() {
    let fx = fx();
    let chain = fx.chain(
        "
        - {name: a, config: {tag: a}, disabled: true}
        - {name: b, disabled: true}",
    );
    let mut head = get(&[]);
    run(&chain, None, &mut head);
    assert!(head.headers.get("x-req").is_none());
    let route = fx
        .route(&chain, None, "{a: {}, b: {config: {tag: B}}}")
        .expect("route");
    let mut head = get(&[]);
    run(&chain, Some(&route), &mut head);
    assert_eq!(all(&head.headers, "x-req"), ["a", "B"]);
    let errs = fx
        .route(&chain, None, "{b: {disabled: false}}")
        .expect_err("no config");
    assert_eq!(
        errs,
        ["route.per_filter_config.b: filter \"b\" has no listener-level config to enable; give one here"]
    );
}

#[test]
fn route_override_errors_have_paths() {
    let fx = fx();
    let chain = fx.chain("- {name: a, config: {tag: a}}");
    let errs = fx
        .route(
            &chain,
            None,
            "{nope: {disabled: true}, a: {disabled: true, config: {tag: x}}, fault: {config: {abort: {http_status: 1, percentage: 1}}}}",
        )
        .expect_err("invalid");
    assert_eq!(
        errs,
        [
            "route.per_filter_config.a: `disabled: true` and `config` cannot both be set",
            "route.per_filter_config.fault.config.abort.http_status: 1 is not a status in [200, 600)",
            "route.per_filter_config.nope: unknown filter \"nope\" (known: a, b, buffer, c, cors, fault, header_mutation, local_ratelimit, rbac)",
        ]
    );
}

#[test]
fn registry_errors_have_paths() {
    let fx = fixture(1);
    let errs = fx.chain_errors(
        "
        - {name: rbac, config: {action: ALLOW}}
        - {name: rbac, config: {action: DENY}}
        - {name: foo}
        - {name: cors, config: {bogus: 1}}",
    );
    assert_eq!(
        errs,
        [
            "http_filters[1].name: duplicate filter \"rbac\" (also at http_filters[0])",
            "http_filters[2].name: unknown filter \"foo\" (known: buffer, cors, fault, header_mutation, local_ratelimit, rbac)",
            "http_filters[3].config.bogus: unknown field `bogus`, expected one of `allow_origin_string_match`, `allow_methods`, `allow_headers`, `expose_headers`, `max_age`, `allow_credentials`, `forward_not_matching_preflights`",
        ]
    );
    let specs: Result<Vec<crate::FilterSpec>, _> =
        serde_norway::from_str("[{name: cors, typed_config: {}}]");
    assert!(specs.is_err(), "unknown keys in a chain entry are rejected");
}

#[test]
fn state_is_allocated_only_for_filters_that_want_it() {
    let fx = fx();
    let chain = fx.chain(ABC);
    let (f, _, _) = run(&chain, None, &mut get(&[]));
    assert_eq!(f.state_capacity(), 0);

    let chain = fx.chain(
        "
        - {name: a, config: {tag: a}}
        - {name: b, config: {tag: b, stateful: true}}",
    );
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    assert_eq!(f.state_capacity(), 1);
    let mut r = resp(200);
    f.on_response_head(&mut r);
    assert_eq!(
        all(&r.headers, "x-state"),
        ["b"],
        "state kept from request to response"
    );

    let benchmark = fx.chain(
        "
        - {name: header_mutation, config: {request: {set: [{name: x-a, value: b}]}}}
        - {name: local_ratelimit, config: {token_bucket: {max_tokens: 100, fill_interval: 1s}}}
        - {name: rbac, config: {action: DENY, policies: {}}}",
    );
    let (f, o, _) = run(&benchmark, None, &mut get(&[]));
    assert!(matches!(o, Outcome::Forwarded));
    assert_eq!(
        f.state_capacity(),
        0,
        "the benchmark chain allocates nothing per request"
    );
}

#[test]
fn empty_chain_passes_everything() {
    let chain = crate::FilterChain::empty();
    assert!(chain.is_empty());
    let (mut f, o, _) = run(&chain, None, &mut get(&[]));
    assert!(matches!(o, Outcome::Forwarded));
    let mut r = resp(200);
    assert!(matches!(f.on_response_head(&mut r), Flow::Continue));
}

#[test]
fn request_filters_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<crate::RequestFilters>();
    check::<crate::FilterChain>();
    check::<crate::RouteFilters>();
}
