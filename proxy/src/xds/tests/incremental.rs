//! An update applied to the last config must give what a fresh proxy given
//! the same resources would build, sharing (not copying, not recompiling)
//! what did not change.

use std::sync::{Arc, Mutex};

use ferry_xds_client::Update;

use super::fixtures::*;
use crate::active::Active;
use crate::config::{Bootstrap, ConfigErrors};
use crate::upstream::PoolRegistry;
use crate::xds::XdsState;

type Applied = Arc<Mutex<Vec<Bootstrap>>>;
type Apply = Box<dyn FnMut(Bootstrap) -> std::future::Ready<Result<(), ConfigErrors>> + Send>;
type State = XdsState<Apply>;

/// A state whose apply records every config.
fn state() -> (State, Applied) {
    let applied: Applied = Arc::default();
    let seen = applied.clone();
    let apply: Apply = Box::new(move |b: Bootstrap| {
        if let Ok(mut s) = seen.lock() {
            s.push(b);
        }
        std::future::ready(Ok(()))
    });
    (
        XdsState::new(Bootstrap::default(), std::env::temp_dir(), apply),
        applied,
    )
}

fn applied(a: &Applied) -> Vec<Bootstrap> {
    a.lock().map(|v| v.clone()).unwrap_or_default()
}

const CLUSTERS: usize = 6;

fn endpoints(
    svc: usize,
    port: u32,
) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    cla(
        &format!("svc-{svc}"),
        &[("127.0.0.1", port, 1, 0), ("127.0.0.2", port, 1, 0)],
    )
}

/// A proxy given the whole mesh: CDS, EDS, LDS, RDS.
async fn mesh_state(catch_all: &str, svc0_port: u32) -> (State, Applied) {
    let (mut st, applied) = state();
    let clusters = (0..CLUSTERS)
        .map(|c| eds_cluster(&format!("svc-{c}")))
        .collect();
    let claes = (0..CLUSTERS)
        .map(|c| endpoints(c, if c == 0 { svc0_port } else { 9000 + c as u32 }))
        .collect();
    for o in [
        st.handle(Update::of("c1", clusters, vec![])).await,
        st.handle(Update::of("e1", claes, vec![])).await,
        st.handle(Update::of(
            "l1",
            vec![listener("mesh", 10000, "mesh")],
            vec![],
        ))
        .await,
        st.handle(Update::of(
            "r1",
            vec![mesh_routes("mesh", 40, CLUSTERS, catch_all)],
            vec![],
        ))
        .await,
    ] {
        assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    }
    (st, applied)
}

async fn build(boot: &Bootstrap, prev: Option<&Active>, reg: &Arc<PoolRegistry>) -> Active {
    let filters = ferry_filters::Registry::builtin();
    match Active::build(boot.clone(), prev, reg, &filters, None).await {
        Ok(a) => a,
        Err(e) => panic!("build failed: {e}"),
    }
}

/// Everything a request can observe of an Active, in a stable order.
fn describe(a: &Active) -> String {
    let mut names: Vec<_> = a.listeners.keys().collect();
    names.sort();
    let mut out = String::new();
    for n in names {
        let l = &a.listeners[n];
        out.push_str(&format!(
            "{n} {:?} {:?} {:?}\n",
            l.config, l.routes, l.cluster
        ));
    }
    let mut index: Vec<_> = a.cluster_index.iter().collect();
    index.sort();
    out.push_str(&format!("{index:?}\n"));
    for c in &a.clusters {
        let hosts = c.hosts.load();
        let eps: Vec<_> = hosts.endpoints.iter().map(|e| (e.addr, e.weight)).collect();
        out.push_str(&format!("{} {:?} {eps:?}\n", c.name, c.config));
    }
    out
}

#[tokio::test]
async fn a_one_route_update_builds_what_a_full_build_builds() {
    let (mut st, seen) = mesh_state("svc-0", 8000).await;
    // (Clusters with their endpoints were complete on their own, then the
    // listener with its routes.)
    assert_eq!(applied(&seen).len(), 2);
    let o = st
        .handle(Update::of(
            "r2",
            vec![mesh_routes("mesh", 40, CLUSTERS, "svc-1")],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    let after = applied(&seen);
    assert_eq!(after.len(), 3);
    let (old, new) = (&after[1], &after[2]);

    // The same config as a proxy that only ever saw the new routes.
    let (_, fresh_seen) = mesh_state("svc-1", 8000).await;
    let fresh = applied(&fresh_seen).pop().expect("fresh config");
    assert!(
        *new == fresh,
        "the incremental config differs from a fresh one"
    );
    // Every cluster is the very one applied before: nothing copied.
    assert!(old
        .clusters
        .iter()
        .zip(&new.clusters)
        .all(|(a, b)| Arc::ptr_eq(a, b)));
    assert!(!Arc::ptr_eq(&old.routes[0], &new.routes[0]));

    // And the running form: built on the previous one, it equals a build
    // from scratch, keeps every cluster runtime and shares the unchanged
    // virtual hosts' compiled routes.
    let reg = Arc::new(PoolRegistry::default());
    let running = build(old, None, &reg).await;
    let next = build(new, Some(&running), &reg).await;
    let scratch = build(&fresh, None, &Arc::new(PoolRegistry::default())).await;
    assert_eq!(describe(&next), describe(&scratch));
    assert!(running
        .clusters
        .iter()
        .zip(&next.clusters)
        .all(|(a, b)| Arc::ptr_eq(a, b)));
    let table = |a: &Active| a.listeners["mesh"].routes.clone().expect("http listener");
    assert_eq!(table(&next).shared_virtual_hosts(&table(&running)), 39);
}

#[tokio::test]
async fn an_endpoint_update_rebuilds_one_cluster_and_equals_a_full_build() {
    let (mut st, seen) = mesh_state("svc-0", 8000).await;
    // State of the world: every CLA again, one changed. The client would
    // name the others unchanged; a server re-sending them all is the same.
    let claes = (0..CLUSTERS)
        .map(|c| endpoints(c, if c == 0 { 8001 } else { 9000 + c as u32 }))
        .collect();
    let o = st.handle(Update::of("e2", claes, vec![])).await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    let after = applied(&seen);
    assert_eq!(after.len(), 3);
    let (old, new) = (&after[1], &after[2]);
    let (_, fresh_seen) = mesh_state("svc-0", 8001).await;
    let fresh = applied(&fresh_seen).pop().expect("fresh config");
    assert!(
        *new == fresh,
        "the incremental config differs from a fresh one"
    );
    assert!(Arc::ptr_eq(&old.routes[0], &new.routes[0]));

    let reg = Arc::new(PoolRegistry::default());
    let running = build(old, None, &reg).await;
    let next = build(new, Some(&running), &reg).await;
    let scratch = build(&fresh, None, &Arc::new(PoolRegistry::default())).await;
    assert_eq!(describe(&next), describe(&scratch));
    let kept: Vec<bool> = running
        .clusters
        .iter()
        .zip(&next.clusters)
        .map(|(a, b)| Arc::ptr_eq(a, b))
        .collect();
    assert_eq!(kept, [false, true, true, true, true, true]);
    let table = |a: &Active| a.listeners["mesh"].routes.clone().expect("http listener");
    assert!(Arc::ptr_eq(&table(&running), &table(&next)));
}

#[tokio::test]
async fn unchanged_resources_named_by_the_client_keep_their_translation() {
    let (mut st, seen) = mesh_state("svc-0", 8000).await;
    let routes_before = st.resources().routes["mesh"].config.clone();
    // What the client hands over when a response repeats what was accepted.
    let mut update = Update::of::<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>(
        "r2",
        vec![],
        vec![],
    );
    update.unchanged = vec!["mesh".into()];
    let o = st.handle(update).await;
    assert!(o.rejected.is_empty());
    assert!(Arc::ptr_eq(
        &st.resources().routes["mesh"].config,
        &routes_before
    ));
    assert_eq!(applied(&seen).len(), 2, "nothing changed, nothing applied");
}

#[tokio::test]
async fn a_cluster_removed_under_an_unchanged_route_waits_for_it() {
    let (mut st, seen) = mesh_state("svc-0", 8000).await;
    // CDS drops svc-5 while routes still name it: warming, not a 503.
    let clusters = (0..CLUSTERS - 1)
        .map(|c| eds_cluster(&format!("svc-{c}")))
        .collect();
    let o = st
        .handle(Update::of("c2", clusters, vec!["svc-5".into()]))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    assert_eq!(applied(&seen).len(), 2, "the previous config keeps serving");
}

#[tokio::test]
async fn a_cluster_added_before_the_others_builds_what_a_full_build_builds() {
    let (mut st, seen) = mesh_state("svc-0", 8000).await;
    // "svc-00" sorts between "svc-0" and "svc-1": every later cluster moves
    // up one index, under routes that did not change.
    let mut clusters: Vec<_> = (0..CLUSTERS)
        .map(|c| eds_cluster(&format!("svc-{c}")))
        .collect();
    clusters.push(eds_cluster("svc-00"));
    st.handle(Update::of("c2", clusters, vec![])).await;
    let o = st
        .handle(Update::of(
            "e2",
            vec![cla("svc-00", &[("127.0.0.3", 7000, 1, 0)])],
            vec![],
        ))
        .await;
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    let after = applied(&seen);
    assert_eq!(after.len(), 3);
    let (old, new) = (&after[1], &after[2]);
    assert!(Arc::ptr_eq(&old.routes[0], &new.routes[0]));

    let reg = Arc::new(PoolRegistry::default());
    let running = build(old, None, &reg).await;
    let next = build(new, Some(&running), &reg).await;
    let scratch = build(new, None, &Arc::new(PoolRegistry::default())).await;
    assert_eq!(describe(&next), describe(&scratch));
    assert_ne!(running.cluster_index, next.cluster_index, "indices moved");
    // Every cluster runtime survives; the new one is built.
    assert_eq!(
        next.clusters
            .iter()
            .filter(|c| running.clusters.iter().any(|o| Arc::ptr_eq(o, c)))
            .count(),
        CLUSTERS
    );
}

/// What the proxy's subscription delivers: every resource encoded.
#[tokio::test]
async fn encoded_resources_give_the_same_config_as_decoded_ones() {
    let (mut st, seen) = state();
    let clusters: Vec<_> = (0..CLUSTERS)
        .map(|c| eds_cluster(&format!("svc-{c}")))
        .collect();
    let claes: Vec<_> = (0..CLUSTERS)
        .map(|c| endpoints(c, if c == 0 { 8000 } else { 9000 + c as u32 }))
        .collect();
    for o in [
        st.handle(Update::of_encoded("c1", clusters, vec![])).await,
        st.handle(Update::of_encoded("e1", claes, vec![])).await,
        st.handle(Update::of_encoded(
            "l1",
            vec![listener("mesh", 10000, "mesh")],
            vec![],
        ))
        .await,
        st.handle(Update::of_encoded(
            "r1",
            vec![mesh_routes("mesh", 40, CLUSTERS, "svc-0")],
            vec![],
        ))
        .await,
    ] {
        assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    }
    let (_, typed_seen) = mesh_state("svc-0", 8000).await;
    let encoded = applied(&seen).pop().expect("a config");
    let typed = applied(&typed_seen).pop().expect("a config");
    assert!(encoded == typed, "encoded and decoded updates differ");
}
