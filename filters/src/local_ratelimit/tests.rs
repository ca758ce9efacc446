use std::net::SocketAddr;
use std::time::Duration;

use crate::testutil::*;
use crate::{Action, Flow, HttpFilter};

fn limiter(fx: &Fixture, config: &str) -> crate::FilterChain {
    fx.chain(&format!("[{{name: local_ratelimit, config: {config}}}]"))
}

/// Status of one request (None = forwarded) and its x-ratelimit headers.
fn one(chain: &crate::FilterChain, headers: &[(&str, &str)]) -> (Option<u16>, [Option<String>; 3]) {
    let (mut f, o, _) = run(chain, None, &mut get(headers));
    let h = match &o {
        Outcome::Replied(r) => r.headers().clone(),
        Outcome::Forwarded => {
            let mut r = resp(200);
            assert!(matches!(f.on_response_head(&mut r), Flow::Continue));
            r.headers
        }
    };
    let get = |n: &str| header(&h, n).map(str::to_string);
    (
        status_of(&o),
        [
            get("x-ratelimit-limit"),
            get("x-ratelimit-remaining"),
            get("x-ratelimit-reset"),
        ],
    )
}

fn statuses(chain: &crate::FilterChain, n: usize) -> Vec<Option<u16>> {
    (0..n).map(|_| one(chain, &[]).0).collect()
}

#[test]
fn token_bucket_refills_exactly() {
    let fx = fixture(1);
    let chain = limiter(
        &fx,
        "{token_bucket: {max_tokens: 3, tokens_per_fill: 2, fill_interval: 1s}}",
    );
    assert_eq!(statuses(&chain, 4), [None, None, None, Some(429)]);
    fx.advance(Duration::from_millis(999));
    assert_eq!(
        statuses(&chain, 1),
        [Some(429)],
        "no refill before the interval"
    );
    fx.advance(Duration::from_millis(1));
    assert_eq!(
        statuses(&chain, 3),
        [None, None, Some(429)],
        "tokens_per_fill added"
    );
    fx.advance(Duration::from_secs(10));
    assert_eq!(
        statuses(&chain, 4),
        [None, None, None, Some(429)],
        "capped at max_tokens"
    );
}

#[test]
fn rejection_carries_headers_and_reset() {
    let fx = fixture(1);
    let chain = limiter(&fx, "{token_bucket: {max_tokens: 1, fill_interval: 5s}}");
    let (s, h) = one(&chain, &[]);
    assert_eq!(s, None);
    assert_eq!(
        h,
        [None, None, None],
        "no headers on allowed responses by default"
    );
    fx.advance(Duration::from_millis(1500));
    let (mut f, o, _) = run(&chain, None, &mut get(&[]));
    let Outcome::Replied(r) = o else {
        panic!("limited")
    };
    assert_eq!(r.status(), 429);
    assert_eq!(r.body().as_ref(), b"local_rate_limited");
    assert_eq!(header(r.headers(), "x-ratelimit-limit"), Some("1"));
    assert_eq!(header(r.headers(), "x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        header(r.headers(), "x-ratelimit-reset"),
        Some("4"),
        "3.5s, rounded up"
    );
    // The limiter itself does not touch the response side afterwards.
    let mut other = resp(200);
    f.on_response_head(&mut other);
    assert!(other.headers.is_empty());
}

#[test]
fn headers_on_allowed_responses_when_enabled() {
    let fx = fixture(1);
    let chain = limiter(
        &fx,
        "{token_bucket: {max_tokens: 2, fill_interval: 1s}, enable_x_ratelimit_headers: true}",
    );
    let s = |x: &str| Some(x.to_string());
    assert_eq!(one(&chain, &[]), (None, [s("2"), s("1"), s("1")]));
    assert_eq!(one(&chain, &[]), (None, [s("2"), s("0"), s("1")]));
    assert_eq!(one(&chain, &[]), (Some(429), [s("2"), s("0"), s("1")]));
}

#[test]
fn keyed_buckets_are_independent() {
    let fx = fixture(1);
    let chain = limiter(
        &fx,
        "{token_bucket: {max_tokens: 1, fill_interval: 1s}, key: {request_header: x-user}}",
    );
    assert_eq!(one(&chain, &[("x-user", "a")]).0, None);
    assert_eq!(one(&chain, &[("x-user", "a")]).0, Some(429));
    assert_eq!(one(&chain, &[("x-user", "b")]).0, None);
    assert_eq!(
        one(&chain, &[]).0,
        None,
        "no key: the shared unkeyed bucket"
    );
    assert_eq!(one(&chain, &[]).0, Some(429));
    assert_eq!(one(&chain, &[("x-user", "c")]).0, None);
    fx.advance(Duration::from_secs(1));
    assert_eq!(one(&chain, &[("x-user", "a")]).0, None);
}

#[test]
fn keyed_by_client_address() {
    let fx = fixture(1);
    let chain = limiter(
        &fx,
        "{token_bucket: {max_tokens: 1, fill_interval: 1s}, key: client_address}",
    );
    let from = |peer: &str| {
        let peer: SocketAddr = peer.parse().expect("addr");
        let mut f = chain.start(ctx_from(peer), None);
        status_of(&drive(&mut f, &mut get(&[])).0)
    };
    assert_eq!(from("10.0.0.1:1000"), None);
    assert_eq!(
        from("10.0.0.1:2000"),
        Some(429),
        "the port is not part of the key"
    );
    assert_eq!(
        from("[::ffff:10.0.0.1]:3000"),
        Some(429),
        "v4-mapped is the same client"
    );
    assert_eq!(from("10.0.0.2:1000"), None);
    assert_eq!(from("[2001:db8::1]:1000"), None);
}

#[test]
fn bucket_cap_holds_under_many_keys() {
    let fx = fixture(1);
    let config = serde_json::json!({
        "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
        "key": {"request_header": "x-user"},
        "max_keys": 2000,
    });
    let env = fx.registry.env().clone();
    let rl = super::new(&config, &env).expect("builds");
    let ctx = ctx();
    let mut allowed = 0;
    let try_key = |k: usize| {
        let mut state = crate::FilterState::Empty;
        let mut cx = crate::FilterCx {
            req: &ctx,
            state: &mut state,
            resumed: false,
        };
        let mut head = get(&[("x-user", &k.to_string())]);
        matches!(rl.on_request_head(&mut cx, &mut head), Action::Continue)
    };
    for k in 0..100_000 {
        allowed += usize::from(try_key(k));
    }
    assert!(rl.keyed_len() <= 2000, "{} buckets", rl.keyed_len());
    // 2000 keys got their own bucket; the rest shared one overflow token.
    assert!((2000..=2001).contains(&allowed), "allowed {allowed}");
    // Once buckets are full again they are swept and new keys fit.
    fx.advance(Duration::from_secs(1));
    let mut allowed = 0;
    for k in 100_000..200_000 {
        allowed += usize::from(try_key(k));
    }
    assert!(rl.keyed_len() <= 2000, "{} buckets", rl.keyed_len());
    assert!(
        (2000..=2001).contains(&allowed),
        "swept shards take new keys again: allowed {allowed}"
    );
}

#[test]
fn route_override_is_its_own_scope() {
    let fx = fixture(1);
    let chain = limiter(&fx, "{token_bucket: {max_tokens: 1, fill_interval: 1s}}");
    let vhost = fx
        .route(
            &chain,
            None,
            "{local_ratelimit: {config: {token_bucket: {max_tokens: 2, fill_interval: 1s}}}}",
        )
        .expect("vhost");
    let r1 = fx.route(&chain, Some(&vhost), "{}").expect("r1");
    let r2 = fx.route(&chain, Some(&vhost), "{}").expect("r2");
    let off = fx
        .route(&chain, Some(&vhost), "{local_ratelimit: {disabled: true}}")
        .expect("off");
    let status =
        |route: Option<&crate::RouteFilters>| status_of(&run(&chain, route, &mut get(&[])).1);
    assert_eq!(status(None), None);
    assert_eq!(status(None), Some(429), "listener bucket spent");
    assert_eq!(status(Some(&r1)), None, "virtual host bucket is separate");
    assert_eq!(status(Some(&r2)), None, "and shared by its routes");
    assert_eq!(status(Some(&r1)), Some(429));
    assert_eq!(status(Some(&off)), None);
}

#[test]
fn config_errors() {
    let fx = fixture(1);
    let errs = fx.chain_errors(
        "[{name: local_ratelimit, config: {token_bucket: {max_tokens: 0, tokens_per_fill: 0, fill_interval: 10ms}, max_keys: 0, status: 200, key: {request_header: 'a b'}}}]",
    );
    let p = "http_filters[0].config";
    assert_eq!(
        errs,
        [
            format!("{p}.token_bucket.max_tokens: must be at least 1"),
            format!("{p}.token_bucket.tokens_per_fill: must be at least 1"),
            format!("{p}.token_bucket.fill_interval: must be at least 50ms"),
            format!("{p}.key.request_header: invalid header name \"a b\""),
            format!("{p}.max_keys: must be between 1 and 1000000"),
            format!("{p}.status: 200 is not a 4xx or 5xx status"),
        ]
    );
    let errs =
        fx.chain_errors("[{name: local_ratelimit, config: {token_bucket: {max_tokens: 1}}}]");
    assert!(
        errs[0].starts_with("http_filters[0].config.token_bucket: missing field `fill_interval`"),
        "{errs:?}"
    );
}
