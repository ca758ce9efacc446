use crate::testutil::*;

const POLICY: &str = "
    - name: cors
      config:
        allow_origin_string_match:
          - {exact: 'https://app.example.com'}
          - {suffix: '.trusted.org'}
          - {regex: 'https://dev-[0-9]+\\.example\\.net'}
        allow_methods: GET, POST
        allow_headers: content-type, x-token
        expose_headers: x-trace
        max_age: '600'
        allow_credentials: true
";

fn preflight(origin: &str) -> http::request::Parts {
    req(
        "OPTIONS",
        "/api",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ],
    )
}

#[test]
fn preflight_from_allowed_origin_is_answered() {
    let fx = fixture(1);
    let chain = fx.chain(POLICY);
    for origin in [
        "https://app.example.com",
        "https://x.trusted.org",
        "https://dev-12.example.net",
    ] {
        let (_, o, _) = run(&chain, None, &mut preflight(origin));
        let Outcome::Replied(r) = o else {
            panic!("{origin}: preflight must be answered")
        };
        let h = r.headers();
        assert_eq!(r.status(), 200);
        assert_eq!(header(h, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(h, "access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            header(h, "access-control-allow-headers"),
            Some("content-type, x-token")
        );
        assert_eq!(header(h, "access-control-max-age"), Some("600"));
        assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
        assert!(r.body().is_empty());
    }
}

#[test]
fn preflight_from_other_origin_goes_upstream_without_cors_headers() {
    let fx = fixture(1);
    let chain = fx.chain(POLICY);
    let (mut f, o, _) = run(&chain, None, &mut preflight("https://evil.com"));
    assert!(matches!(o, Outcome::Forwarded));
    let mut r = resp(204);
    f.on_response_head(&mut r);
    assert!(r.headers.is_empty());

    let strict = fx.chain(
        "[{name: cors, config: {allow_origin_string_match: [{exact: a}], forward_not_matching_preflights: false}}]",
    );
    let (_, o, _) = run(&strict, None, &mut preflight("https://evil.com"));
    let Outcome::Replied(r) = o else {
        panic!("answered")
    };
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("access-control-allow-origin"), None);
}

#[test]
fn actual_request_gets_origin_on_response() {
    let fx = fixture(1);
    let chain = fx.chain(POLICY);
    let mut head = req("POST", "/api", &[("origin", "https://app.example.com")]);
    let (mut f, o, _) = run(&chain, None, &mut head);
    assert!(matches!(o, Outcome::Forwarded));
    let mut r = resp(200);
    f.on_response_head(&mut r);
    assert_eq!(
        header(&r.headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&r.headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&r.headers, "access-control-expose-headers"),
        Some("x-trace")
    );
    assert_eq!(r.headers.get("access-control-allow-methods"), None);
}

#[test]
fn non_matching_or_missing_origin_gets_nothing() {
    let fx = fixture(1);
    let chain = fx.chain(POLICY);
    for headers in [&[("origin", "https://app.example.com.evil.com")][..], &[]] {
        let (mut f, o, _) = run(&chain, None, &mut req("GET", "/", headers));
        assert!(matches!(o, Outcome::Forwarded));
        let mut r = resp(200);
        f.on_response_head(&mut r);
        assert!(r.headers.is_empty(), "{headers:?}");
    }
}

#[test]
fn local_replies_of_later_filters_get_cors_headers() {
    let fx = fixture(1);
    let chain = fx.chain(&format!(
        "{POLICY}
    - name: rbac
      config: {{action: DENY, policies: {{all: {{permissions: [{{any: true}}], principals: [{{any: true}}]}}}}}}
"
    ));
    let mut head = req("GET", "/", &[("origin", "https://app.example.com")]);
    let (_, o, _) = run(&chain, None, &mut head);
    let Outcome::Replied(r) = o else {
        panic!("denied")
    };
    assert_eq!(r.status(), 403);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[test]
fn config_errors() {
    let fx = fixture(1);
    let errs = fx.chain_errors(
        "[{name: cors, config: {allow_origin_string_match: [{exact: a, prefix: b}, {regex: '('}], max_age: soon}}]",
    );
    let p = "http_filters[0].config";
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(errs[0], format!("{p}.allow_origin_string_match[0]: only one of exact, prefix, suffix, contains, regex may be set"));
    assert!(errs[1].starts_with(&format!(
        "{p}.allow_origin_string_match[1].regex: invalid regex"
    )));
    assert_eq!(
        errs[2],
        format!("{p}.max_age: \"soon\" is not a number of seconds")
    );
}
