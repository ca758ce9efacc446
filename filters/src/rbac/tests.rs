use std::net::SocketAddr;
use std::sync::Arc;

use crate::testutil::*;

fn verdict(chain: &crate::FilterChain, peer: &str, head: &mut http::request::Parts) -> Option<u16> {
    let peer: SocketAddr = peer.parse().expect("addr");
    let mut f = chain.start(ctx_from(peer), None);
    status_of(&drive(&mut f, head).0)
}

const ALLOW: &str = "
    - name: rbac
      config:
        action: ALLOW
        policies:
          internal-admin:
            permissions:
              - url_path: {path: {prefix: /admin}}
            principals:
              - source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}
              - source_ip: {address_prefix: 'fd00::', prefix_len: 8}
          public-read:
            permissions:
              - and_rules:
                  rules:
                    - method: GET
                    - not_rule: {url_path: {path: {prefix: /admin}}}
            principals: [{any: true}]
          token:
            permissions: [{header: {name: ':method', exact: POST}}]
            principals:
              - and_ids:
                  ids:
                    - header: {name: x-token, exact: secret}
                    - not_id: {source_ip: {address_prefix: 192.0.2.66}}
";

#[test]
fn allow_policies() {
    let fx = fixture(1);
    let chain = fx.chain(ALLOW);
    let admin = || req("DELETE", "/admin/x", &[]);
    assert_eq!(verdict(&chain, "10.1.2.3:1", &mut admin()), None, "v4 CIDR");
    assert_eq!(
        verdict(&chain, "[::ffff:10.1.2.3]:1", &mut admin()),
        None,
        "v4-mapped"
    );
    assert_eq!(
        verdict(&chain, "[fd12::1]:1", &mut admin()),
        None,
        "v6 CIDR"
    );
    assert_eq!(verdict(&chain, "11.0.0.1:1", &mut admin()), Some(403));
    assert_eq!(verdict(&chain, "[fe80::1]:1", &mut admin()), Some(403));

    assert_eq!(
        verdict(&chain, "1.2.3.4:1", &mut req("GET", "/x?a=1", &[])),
        None
    );
    assert_eq!(
        verdict(&chain, "1.2.3.4:1", &mut req("GET", "/admin", &[])),
        Some(403)
    );
    assert_eq!(
        verdict(&chain, "1.2.3.4:1", &mut req("PUT", "/x", &[])),
        Some(403)
    );

    let post = |t: &str| req("POST", "/x", &[("x-token", t)]);
    assert_eq!(verdict(&chain, "1.2.3.4:1", &mut post("secret")), None);
    assert_eq!(verdict(&chain, "1.2.3.4:1", &mut post("nope")), Some(403));
    assert_eq!(
        verdict(&chain, "192.0.2.66:1", &mut post("secret")),
        Some(403),
        "not_id"
    );
}

#[test]
fn deny_policies_and_reply() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
        - name: rbac
          config:
            action: DENY
            policies:
              block:
                permissions: [{or_rules: {rules: [{url_path: {path: {exact: /secret}}}, {url_path: {path: {regex: '/private/.*'}}}]}}]
                principals: [{any: true}]",
    );
    assert_eq!(
        verdict(&chain, "1.2.3.4:1", &mut req("GET", "/open", &[])),
        None
    );
    let (_, o, _) = run(&chain, None, &mut req("GET", "/secret?x", &[]));
    let Outcome::Replied(r) = o else {
        panic!("denied")
    };
    assert_eq!(r.status(), 403);
    assert_eq!(r.body().as_ref(), b"RBAC: access denied");
    assert_eq!(
        verdict(&chain, "1.2.3.4:1", &mut req("GET", "/private/a/b", &[])),
        Some(403)
    );
}

#[test]
fn authenticated_needs_a_peer_identity() {
    let fx = fixture(1);
    let chain = fx.chain(
        "
        - name: rbac
          config:
            action: ALLOW
            policies:
              mesh:
                permissions: [{any: true}]
                principals: [{authenticated: {principal_name: {prefix: 'spiffe://cluster.local/'}}}]",
    );
    let mut f = chain.start(ctx(), None);
    assert_eq!(status_of(&drive(&mut f, &mut get(&[])).0), Some(403));
    let mut c = ctx();
    c.peer_principal = Some(Arc::from("spiffe://cluster.local/ns/a/sa/b"));
    let mut f = chain.start(c, None);
    assert_eq!(status_of(&drive(&mut f, &mut get(&[])).0), None);
}

#[test]
fn config_errors() {
    let fx = fixture(1);
    let errs = fx.chain_errors(
        "
        - name: rbac
          config:
            action: ALLOW
            policies:
              p:
                permissions: [{any: false}, {method: 'G T'}, {and_rules: {rules: []}}]
                principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 33}}, {source_ip: {address_prefix: nope}}]
              q: {permissions: [], principals: [{any: true}]}",
    );
    let p = "http_filters[0].config.policies";
    assert_eq!(
        errs,
        [
            format!("{p}.p.permissions[0].any: must be true (leave the entry out instead)"),
            format!("{p}.p.permissions[1].method: invalid method \"G T\""),
            format!("{p}.p.permissions[2].and_rules.rules: at least one rule is required"),
            format!(
                "{p}.p.principals[0].source_ip.prefix_len: 33 is longer than the address (32 bits)"
            ),
            format!("{p}.p.principals[1].source_ip.address_prefix: invalid IP address \"nope\""),
            format!("{p}.q.permissions: at least one permission is required"),
        ]
    );
    let errs = fx.chain_errors("[{name: rbac, config: {action: MAYBE}}]");
    assert!(
        errs[0].starts_with("http_filters[0].config.action: unknown variant `MAYBE`"),
        "{errs:?}"
    );
}
