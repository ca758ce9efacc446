use bytes::Bytes;

use crate::testutil::*;
use crate::Flow;

fn body(f: &mut crate::RequestFilters, chunks: &[&'static str]) -> Result<(), u16> {
    for (i, c) in chunks.iter().enumerate() {
        let mut chunk = Bytes::from_static(c.as_bytes());
        if let Flow::Respond(r) = f.on_request_body(&mut chunk, i + 1 == chunks.len()) {
            return Err(f.local_response(r).status().as_u16());
        }
    }
    Ok(())
}

#[test]
fn asks_the_pipeline_to_buffer_the_request_body_only() {
    let fx = fixture(1);
    let chain = fx.chain("- {name: buffer, config: {max_request_bytes: 10}}");
    let (f, o, _) = run(&chain, None, &mut get(&[]));
    assert!(matches!(o, Outcome::Forwarded));
    assert!(f.buffers_request_body() && f.wants_request_body());
    assert!(!f.wants_response_body());

    // Off on a route: the request takes the path without body hooks.
    let route = fx
        .route(&chain, None, "{buffer: {disabled: true}}")
        .expect("route");
    let (f, _, _) = run(&chain, Some(&route), &mut get(&[]));
    assert!(!f.buffers_request_body() && !f.wants_request_body());
}

#[test]
fn bodies_up_to_the_limit_pass_and_larger_ones_get_413() {
    let fx = fixture(1);
    let chain = fx.chain("- {name: buffer, config: {max_request_bytes: 10}}");
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    assert_eq!(
        body(&mut f, &["abcd", "efgh", "ij"]),
        Ok(()),
        "exactly 10 bytes"
    );

    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    assert_eq!(body(&mut f, &["abcd", "efgh", "ijk"]), Err(413));

    // Each request counts its own bytes.
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    assert_eq!(body(&mut f, &["0123456789"]), Ok(()));
}

#[test]
fn the_413_reply_passes_back_through_earlier_filters() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
        - {name: header_mutation, config: {response: {set: [{name: x-seen, value: yes}]}}}
        - {name: buffer, config: {max_request_bytes: 3}}",
    );
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    let mut chunk = Bytes::from_static(b"toolong");
    let Flow::Respond(r) = f.on_request_body(&mut chunk, true) else {
        panic!("over the limit")
    };
    let r = f.local_response(r);
    assert_eq!(r.status(), 413);
    assert_eq!(r.body().as_ref(), b"Payload Too Large");
    assert_eq!(header(r.headers(), "content-length"), Some("17"));
    assert_eq!(header(r.headers(), "x-seen"), Some("yes"));
}

#[test]
fn a_declared_length_over_the_limit_is_refused_before_the_body() {
    let fx = fixture(1);
    let chain = fx.chain("- {name: buffer, config: {max_request_bytes: 100}}");
    let (_, o, _) = run(&chain, None, &mut get(&[("content-length", "101")]));
    assert_eq!(status_of(&o), Some(413));
    let (_, o, _) = run(&chain, None, &mut get(&[("content-length", "100")]));
    assert_eq!(status_of(&o), None);
}

#[test]
fn per_route_override_has_its_own_limit() {
    let fx = fixture(1);
    let chain = fx.chain("- {name: buffer, config: {max_request_bytes: 4}}");
    let route = fx
        .route(&chain, None, "{buffer: {config: {max_request_bytes: 8}}}")
        .expect("route");
    let (mut f, _, _) = run(&chain, Some(&route), &mut get(&[]));
    assert_eq!(body(&mut f, &["12345678"]), Ok(()));
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    assert_eq!(body(&mut f, &["12345678"]), Err(413));
}

#[test]
fn config_errors() {
    let fx = fixture(1);
    assert_eq!(
        fx.chain_errors("- {name: buffer}"),
        ["http_filters[0].config: missing field `max_request_bytes`"]
    );
    assert_eq!(
        fx.chain_errors("- {name: buffer, config: {max_request_bytes: 0}}"),
        ["http_filters[0].config.max_request_bytes: must be at least 1"]
    );
    assert_eq!(
        fx.chain_errors("- {name: buffer, config: {max_request_bytes: 1, timeout: 1s}}"),
        ["http_filters[0].config.timeout: unknown field `timeout`, expected `max_request_bytes`"]
    );
}
