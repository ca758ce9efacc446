use std::time::Duration;

use crate::testutil::*;

#[test]
fn aborts_at_the_configured_percentage() {
    let fx = fixture(7);
    let chain = fx.chain(
        "
         - name: fault
           config: {abort: {http_status: 503, percentage: {numerator: 10}}}",
    );
    let mut aborted = 0;
    for _ in 0..10_000 {
        let (_, o, delays) = run(&chain, None, &mut get(&[]));
        assert!(delays.is_empty());
        match status_of(&o) {
            Some(503) => aborted += 1,
            None => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Binomial(10k, 0.1): sd = 30; 5 sd either side.
    assert!((850..=1150).contains(&aborted), "aborted {aborted}");
}

#[test]
fn abort_reply_has_status_and_body() {
    let fx = fixture(1);
    let chain = fx.chain("- {name: fault, config: {abort: {http_status: 418, percentage: 100}}}");
    let (_, o, _) = run(&chain, None, &mut get(&[]));
    let Outcome::Replied(r) = o else {
        panic!("must abort")
    };
    assert_eq!(r.status(), 418);
    assert_eq!(r.body().as_ref(), b"fault filter abort");
    assert_eq!(header(r.headers(), "content-length"), Some("18"));
}

#[test]
fn delay_is_an_action_then_the_request_continues() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
         - {name: fault, config: {delay: {fixed_delay: 2s, percentage: 100}}}
         - {name: header_mutation, config: {request: {set: [{name: x-after, value: yes}]}}}",
    );
    let mut head = get(&[]);
    let (_, o, delays) = run(&chain, None, &mut head);
    assert!(matches!(o, Outcome::Forwarded));
    assert_eq!(delays, [Duration::from_secs(2)]);
    assert_eq!(
        header(&head.headers, "x-after"),
        Some("yes"),
        "the chain resumes after the delay"
    );
}

#[test]
fn delay_then_abort() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
         - name: fault
           config:
             delay: {fixed_delay: 250ms, percentage: 100}
             abort: {http_status: 503, percentage: 100}",
    );
    let (_, o, delays) = run(&chain, None, &mut get(&[]));
    assert_eq!(delays, [Duration::from_millis(250)]);
    assert_eq!(status_of(&o), Some(503));
}

#[test]
fn zero_percent_never_faults() {
    let fx = fixture(1);
    let chain = fx.chain(
        "- {name: fault, config: {abort: {http_status: 503, percentage: 0}, delay: {fixed_delay: 1s, percentage: 0}}}",
    );
    for _ in 0..1000 {
        let (_, o, d) = run(&chain, None, &mut get(&[]));
        assert!(matches!(o, Outcome::Forwarded) && d.is_empty());
    }
}

#[test]
fn header_gated_faults() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
         - name: fault
           config:
             abort: {http_status: 503, percentage: 100}
             headers: [{name: x-fault, exact: 'on'}, {name: x-user}]",
    );
    let (_, o, _) = run(&chain, None, &mut get(&[("x-fault", "on")]));
    assert_eq!(status_of(&o), None, "all matchers must match");
    let (_, o, _) = run(
        &chain,
        None,
        &mut get(&[("x-fault", "off"), ("x-user", "a")]),
    );
    assert_eq!(status_of(&o), None);
    let (_, o, _) = run(
        &chain,
        None,
        &mut get(&[("x-fault", "on"), ("x-user", "a")]),
    );
    assert_eq!(status_of(&o), Some(503));
}

#[test]
fn header_control_needs_allow_header_control() {
    let fx = fixture(1);
    let off = fx.chain("- {name: fault, config: {delay: {fixed_delay: 1s, percentage: 0}}}");
    let hdrs = [
        ("x-envoy-fault-abort-request", "429"),
        ("x-envoy-fault-delay-request", "1500"),
    ];
    let (_, o, d) = run(&off, None, &mut get(&hdrs));
    assert!(matches!(o, Outcome::Forwarded) && d.is_empty());

    let on = fx.chain("- {name: fault, config: {allow_header_control: true}}");
    let (_, o, d) = run(&on, None, &mut get(&hdrs));
    assert_eq!(d, [Duration::from_millis(1500)]);
    assert_eq!(status_of(&o), Some(429));

    let (_, o, d) = run(
        &on,
        None,
        &mut get(&[
            ("x-envoy-fault-abort-request", "503"),
            ("x-envoy-fault-abort-request-percentage", "0"),
        ]),
    );
    assert!(matches!(o, Outcome::Forwarded) && d.is_empty());

    // Garbage in a control header is ignored, not an error.
    let (_, o, _) = run(
        &on,
        None,
        &mut get(&[("x-envoy-fault-abort-request", "99")]),
    );
    assert!(matches!(o, Outcome::Forwarded));
}

#[test]
fn header_percentage_over_many_requests() {
    let fx = fixture(3);
    let on = fx.chain("- {name: fault, config: {allow_header_control: true}}");
    let mut n = 0;
    for _ in 0..10_000 {
        let (_, o, _) = run(
            &on,
            None,
            &mut get(&[
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-request-percentage", "25"),
            ]),
        );
        n += usize::from(status_of(&o).is_some());
    }
    // sd = 43
    assert!((2280..=2720).contains(&n), "aborted {n}");
}

#[test]
fn max_active_faults_caps_concurrent_faults() {
    let fx = fixture(1);
    let chain = fx.chain(
        "- {name: fault, config: {delay: {fixed_delay: 1s, percentage: 100}, max_active_faults: 1}}",
    );
    let (first, _, d1) = run(&chain, None, &mut get(&[]));
    assert_eq!(d1.len(), 1);
    let (_, _, d2) = run(&chain, None, &mut get(&[]));
    assert!(d2.is_empty(), "one fault already active");
    drop(first);
    let (_, _, d3) = run(&chain, None, &mut get(&[]));
    assert_eq!(
        d3.len(),
        1,
        "the place is free once the first request ended"
    );
}

#[test]
fn config_errors_have_paths() {
    let fx = fixture(1);
    let errs = fx.chain_errors(
        "
         - {name: fault, config: {abort: {http_status: 700, percentage: 1}, headers: [{name: 'bad name', exact: x}]}}
         - {name: fault, config: {}}",
    );
    assert_eq!(
        errs,
        [
            "http_filters[0].config.abort.http_status: 700 is not a status in [200, 600)",
            "http_filters[0].config.headers[0].name: invalid header name \"bad name\"",
            "http_filters[1].name: duplicate filter \"fault\" (also at http_filters[0])",
            "http_filters[1].config: nothing to inject: set delay, abort or allow_header_control",
        ]
    );
    let errs = fx.chain_errors("- {name: fault, config: {abort: {http_status: 503}}}");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("http_filters[0].config.abort: missing field `percentage`"),
        "{errs:?}"
    );
    let errs = fx.chain_errors("- {name: fault, config: {delay: {fixed: 1s, percentage: 1}}}");
    assert!(
        errs[0].starts_with("http_filters[0].config.delay.fixed: unknown field `fixed`"),
        "{errs:?}"
    );
}
