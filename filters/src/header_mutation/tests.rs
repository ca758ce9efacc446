use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::Version;

use super::civil_from_days;
use crate::testutil::*;
use crate::{Flow, RequestCtx};

const CONFIG: &str = "
    - name: header_mutation
      config:
        request:
          remove: [x-secret]
          set: [{name: x-id, value: 'id=%REQ_ID%'}, {name: x-static, value: plain}]
          append: [{name: x-multi, value: two}]
          add: [{name: x-maybe, value: added}, {name: x-client, value: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%'}]
        response:
          set:
            - {name: x-upstream, value: '%UPSTREAM_HOST%'}
            - {name: x-peer, value: '%DOWNSTREAM_REMOTE_ADDRESS%'}
            - {name: x-proto, value: '%PROTOCOL%'}
            - {name: x-start, value: '%START_TIME%'}
            - {name: x-pct, value: '100%% %REQ_ID%'}
          remove: [server]
";

#[test]
fn request_ops_and_variables() {
    let fx = fixture(1);
    let chain = fx.chain(CONFIG);
    let mut head = get(&[
        ("x-secret", "s"),
        ("x-multi", "one"),
        ("x-maybe", "kept"),
        ("x-request-id", "abc"),
    ]);
    let (_, o, _) = run(&chain, None, &mut head);
    assert!(matches!(o, Outcome::Forwarded));
    let h = &head.headers;
    assert_eq!(h.get("x-secret"), None);
    assert_eq!(
        header(h, "x-id"),
        Some("id=abc"),
        "falls back to x-request-id"
    );
    assert_eq!(header(h, "x-static"), Some("plain"));
    let multi: Vec<_> = h.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(header(h, "x-maybe"), Some("kept"), "add only when absent");
    assert_eq!(header(h, "x-client"), Some("192.0.2.7"));
}

#[test]
fn response_variables_from_ctx() {
    let fx = fixture(1);
    let chain = fx.chain(CONFIG);
    let peer: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
    let mut ctx = RequestCtx::new(
        peer,
        Version::HTTP_2,
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
    );
    ctx.request_id = Some(http::HeaderValue::from_static("rid-1"));
    let mut f = chain.start(ctx, None);
    let (o, _) = drive(&mut f, &mut get(&[]));
    assert!(matches!(o, Outcome::Forwarded));
    f.ctx_mut().upstream_host = Some("10.0.0.9:8080".parse().expect("addr"));
    let mut r = resp(200);
    r.headers
        .insert("server", http::HeaderValue::from_static("up"));
    assert!(matches!(f.on_response_head(&mut r), Flow::Continue));
    let h = &r.headers;
    assert_eq!(header(h, "x-upstream"), Some("10.0.0.9:8080"));
    assert_eq!(header(h, "x-peer"), Some("[2001:db8::1]:443"));
    assert_eq!(header(h, "x-proto"), Some("HTTP/2"));
    assert_eq!(header(h, "x-start"), Some("2024-05-01T12:34:56.789Z"));
    assert_eq!(header(h, "x-pct"), Some("100% rid-1"));
    assert_eq!(h.get("server"), None);
}

#[test]
fn empty_values_are_not_added() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
        - name: header_mutation
          config: {response: {set: [{name: x-upstream, value: '%UPSTREAM_HOST%'}]}}",
    );
    let (mut f, _, _) = run(&chain, None, &mut get(&[]));
    let mut r = resp(200);
    f.on_response_head(&mut r);
    assert_eq!(r.headers.get("x-upstream"), None);
}

#[test]
fn config_errors() {
    let fx = fixture(1);
    let errs = fx.chain_errors(
        "
        - name: header_mutation
          config:
            request:
              set: [{name: x-a, value: '%UPSTREAM_HOST%'}, {name: x-b, value: '%NOPE%'}, {name: 'a b', value: '%REQ_ID'}]
              remove: [host]",
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert_eq!(
        errs[0],
        "http_filters[0].config.request.remove[0]: the host header cannot be changed here; use the route's host_rewrite"
    );
    assert_eq!(
        errs[1],
        "http_filters[0].config.request.set[0].value: %UPSTREAM_HOST% is known on the response side only"
    );
    assert!(
        errs[2].starts_with("http_filters[0].config.request.set[1].value: unknown variable %NOPE%")
    );
    assert_eq!(
        errs[3],
        "http_filters[0].config.request.set[2].name: invalid header name \"a b\""
    );
    assert!(
        errs[4].starts_with("http_filters[0].config.request.set[2].value: unterminated variable")
    );
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
}
