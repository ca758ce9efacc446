//! `RouteTable::rebuild` against a fresh build: the same table, with the
//! unchanged virtual hosts shared rather than compiled again.

use std::sync::Arc;

use super::*;

const CLUSTERS: [&str; 4] = ["a", "b", "c", "d"];

fn cluster_index(name: &str) -> Option<usize> {
    CLUSTERS.iter().position(|&c| c == name)
}

/// A mesh-like route config: `n` virtual hosts of the shapes a sidecar
/// sees (exact, prefix and regex paths, a split, timeouts, headers), the
/// catch-all of the first one going to `first_catch_all`.
fn mesh(n: usize, first_catch_all: &str) -> RouteConfig {
    mesh_over(n, &CLUSTERS, first_catch_all)
}

/// [`mesh`] over the given clusters.
fn mesh_over(n: usize, clusters: &[&str], first_catch_all: &str) -> RouteConfig {
    let mut yaml = String::from("name: mesh\nvirtual_hosts:\n");
    for v in 0..n {
        let own = clusters[v % clusters.len()];
        let next = clusters[(v + 1) % clusters.len()];
        let catch_all = if v == 0 { first_catch_all } else { own };
        yaml.push_str(&format!(
            "- name: vh-{v}
  domains: [svc-{v}.mesh.local, svc-{v}]
  request_headers_to_add: [{{name: x-vh, value: '{v}'}}]
  routes:
  - {{match: {{path: /healthz}}, route: {{cluster: {own}}}}}
  - {{match: {{prefix: /api/v1/, headers: [{{name: x-canary, exact: '1'}}]}}, route: {{cluster: {next}, timeout: 5s}}}}
  - {{match: {{prefix: /api/v2/}}, route: {{weighted_clusters: [{{name: {own}, weight: 90}}, {{name: {next}, weight: 10}}]}}}}
  - {{match: {{regex: '^/items/[0-9]+$'}}, route: {{cluster: {own}, prefix_rewrite: /i/}}}}
  - {{match: {{prefix: /}}, route: {{cluster: {catch_all}}}}}
"
        ));
    }
    match serde_norway::from_str(&yaml) {
        Ok(cfg) => cfg,
        Err(e) => panic!("bad test yaml: {e}\n{yaml}"),
    }
}

fn build(cfg: &RouteConfig) -> RouteTable {
    match RouteTable::build(cfg, "routes[0]", &cluster_index) {
        Ok(t) => t,
        Err(e) => panic!("build failed:\n{e}"),
    }
}

fn rebuild(cfg: &RouteConfig, prev_cfg: &RouteConfig, prev: &RouteTable) -> RouteTable {
    match RouteTable::rebuild(cfg, "routes[0]", &cluster_index, prev_cfg, prev, &Some) {
        Ok(t) => t,
        Err(e) => panic!("rebuild failed:\n{e}"),
    }
}

fn shared(a: &RouteTable, b: &RouteTable) -> Vec<bool> {
    a.vhosts
        .iter()
        .zip(&b.vhosts)
        .map(|(x, y)| Arc::ptr_eq(x, y))
        .collect()
}

fn cluster_for(t: &RouteTable, authority: &str, path: &str) -> Option<usize> {
    let headers = http::HeaderMap::new();
    let view = RequestView {
        authority,
        method: &http::Method::GET,
        path,
        query: None,
        headers: &headers,
        peer_ip: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    match t.find(&view)?.action {
        Action::Cluster(i) => Some(i),
        _ => None,
    }
}

#[test]
fn a_one_route_change_recompiles_one_virtual_host_and_equals_a_fresh_build() {
    let before = mesh(20, "a");
    let old = build(&before);
    assert_eq!(cluster_for(&old, "svc-0.mesh.local", "/x"), Some(0));

    let after = mesh(20, "b");
    let new = rebuild(&after, &before, &old);
    assert_eq!(format!("{new:?}"), format!("{:?}", build(&after)));
    let mut expected = vec![true; 20];
    expected[0] = false;
    assert_eq!(shared(&old, &new), expected);
    assert_eq!(cluster_for(&new, "svc-0.mesh.local", "/x"), Some(1));
    assert_eq!(cluster_for(&new, "svc-1.mesh.local", "/x"), Some(1));
}

#[test]
fn shifted_virtual_hosts_are_compiled_again() {
    // Route ids hold the virtual host's position, so a virtual host that
    // moved is not taken over even though its config is equal.
    let before = mesh(5, "a");
    let old = build(&before);
    let mut after = mesh(5, "a");
    let mut extra = (*after.virtual_hosts[4]).clone();
    extra.name = "new".into();
    extra.domains = vec!["new.mesh.local".into()];
    after.virtual_hosts.insert(0, Arc::new(extra));
    let new = rebuild(&after, &before, &old);
    assert_eq!(format!("{new:?}"), format!("{:?}", build(&after)));
    assert!(shared(&old, &new).iter().all(|s| !s));
    assert_eq!(cluster_for(&new, "svc-4.mesh.local", "/healthz"), Some(0));
}

#[test]
fn errors_in_a_changed_virtual_host_are_those_of_a_fresh_build() {
    let before = mesh(3, "a");
    let old = build(&before);
    let after = mesh(3, "nope");
    let rebuilt = RouteTable::rebuild(&after, "routes[0]", &cluster_index, &before, &old, &Some)
        .err()
        .map(|e| e.to_string());
    let fresh = RouteTable::build(&after, "routes[0]", &cluster_index)
        .err()
        .map(|e| e.to_string());
    assert!(rebuilt.is_some());
    assert_eq!(rebuilt, fresh);
}

#[test]
fn moved_clusters_are_renumbered_without_compiling() {
    // Before, only "a", "c" and "d" existed (indices 0, 1, 2). Now "b" sits
    // at 1 and pushes "c" and "d" up by one.
    let before_index = |name: &str| ["a", "c", "d"].iter().position(|&c| c == name);
    let cfg = mesh_over(9, &["a", "c", "d"], "a");
    let old = match RouteTable::build(&cfg, "routes[0]", &before_index) {
        Ok(t) => t,
        Err(e) => panic!("build failed:\n{e}"),
    };
    let renumber = |i: usize| Some(if i == 0 { 0 } else { i + 1 });
    let new = match RouteTable::rebuild(&cfg, "routes[0]", &cluster_index, &cfg, &old, &renumber) {
        Ok(t) => t,
        Err(e) => panic!("rebuild failed:\n{e}"),
    };
    assert_eq!(format!("{new:?}"), format!("{:?}", build(&cfg)));
    assert_eq!(
        cluster_for(&new, "svc-1.mesh.local", "/x"),
        Some(2),
        "c is 2 now"
    );
    // No virtual host names "a" alone (each also names the next service),
    // so every one is a renumbered copy.
    assert!(shared(&old, &new).iter().all(|s| !s));

    // Same numbering: everything is shared.
    let same = match RouteTable::rebuild(&cfg, "routes[0]", &cluster_index, &cfg, &new, &Some) {
        Ok(t) => t,
        Err(e) => panic!("rebuild failed:\n{e}"),
    };
    assert!(shared(&new, &same).iter().all(|s| *s));

    // "c" is gone: the virtual hosts naming it compile again, and fail as a
    // fresh build fails.
    let without_c = |name: &str| ["a", "d"].iter().position(|&c| c == name);
    let gone = |i: usize| match i {
        0 => Some(0),
        2 => Some(1),
        _ => None,
    };
    let err = RouteTable::rebuild(&cfg, "routes[0]", &without_c, &cfg, &old, &gone)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some());
    assert_eq!(
        err,
        RouteTable::build(&cfg, "routes[0]", &without_c)
            .err()
            .map(|e| e.to_string())
    );
}
