//! Real Envoy 1.40 configured by `ferry-control` over ADS, in state-of-the-
//! world and delta mode: Envoy accepts the served listener, routes and
//! clusters, splits traffic 80/20 as served, follows a pushed change to
//! 0/100, and NACKs a route regex RE2 cannot compile, which shows up in
//! `GET /v1/xds/nodes` while Envoy keeps serving the previous config.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_integration_tests::envoy::{snapshot, stat_sum, ControlPlane, Envoy, XdsMode};
use ferry_integration_tests::{five_sigma, free_port, tally, wait_until, Backend, Client};

/// Requests for the split measurement.
const N: usize = 1000;
/// Time allowed for a config change to reach Envoy: the file poll (1 s),
/// the debounce and Envoy's update, with room for a slow CI box.
const PUSH_CAP: Duration = Duration::from_secs(20);

fn assert_share(counts: &BTreeMap<String, usize>, n: usize, name: &str, p: f64) {
    let got = counts.get(name).copied().unwrap_or(0) as f64;
    let want = n as f64 * p;
    let tol = five_sigma(n, p);
    assert!(
        (got - want).abs() <= tol,
        "{name}: {got} of {n} requests, expected {want} ± {tol:.0} (5σ); all: {counts:?}"
    );
}

/// The listener `web` is in Envoy's dynamic listeners, active.
fn has_active_listener(dump: &serde_json::Value, name: &str) -> bool {
    let Some(configs) = dump["configs"].as_array() else {
        return false;
    };
    configs
        .iter()
        .filter(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        .filter_map(|c| c["dynamic_listeners"].as_array())
        .flatten()
        .any(|l| l["name"] == name && l["active_state"].is_object())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_sotw_ads() {
    scenario(XdsMode::Sotw, "sotw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_delta_ads() {
    scenario(XdsMode::Delta, "delta").await;
}

async fn scenario(mode: XdsMode, mode_name: &str) {
    let a = Backend::start("first").await;
    let b = Backend::start("second").await;
    let port = free_port();
    let cp = ControlPlane::start(&snapshot(port, &a, &b, (80, 20), false)).await;
    let node_id = format!("envoy-{mode_name}");
    let envoy = Envoy::start(&node_id, cp.xds, mode).await;

    // Every type served and ACKed, in the mode Envoy speaks.
    for ty in ["cds", "eds", "lds", "rds"] {
        cp.wait_acked(&node_id, ty, PUSH_CAP).await;
    }
    let node = cp.node(&node_id).await.unwrap_or_default();
    assert_eq!(node["mode"], mode_name, "{node:#}");
    assert_eq!(node["connected_streams"], 1, "{node:#}");
    assert!(node["last_nack"].is_null(), "{node:#}");

    // Envoy accepted it: the listener is active, updates succeeded, none rejected.
    let dump = envoy.config_dump().await;
    assert!(
        has_active_listener(&dump, "web"),
        "listener web missing: {dump:#}"
    );
    let stats = envoy.stats().await;
    for (ok, rejected) in [
        (
            "cluster_manager.cds.update_success",
            "cluster_manager.cds.update_rejected",
        ),
        (
            "listener_manager.lds.update_success",
            "listener_manager.lds.update_rejected",
        ),
    ] {
        assert!(stat_sum(&stats, |n| n == ok) > 0, "{ok} is 0:\n{stats}");
        assert_eq!(
            stat_sum(&stats, |n| n == rejected),
            0,
            "{rejected}:\n{stats}"
        );
    }
    assert_eq!(
        stat_sum(&stats, |n| n.contains(".rds.")
            && n.ends_with(".update_rejected")),
        0,
        "{stats}"
    );

    // Traffic: 80/20 within five standard deviations.
    let url = format!("http://127.0.0.1:{port}/");
    let client = Client::h1();
    wait_until(
        "the Envoy listener answers 200",
        PUSH_CAP,
        async || matches!(client.get(&url).await, Ok(r) if r.status == 200),
    )
    .await;
    let counts = tally(&client, &url, N, 8).await;
    assert_share(&counts, N, "first", 0.8);
    assert_share(&counts, N, "second", 0.2);

    // A pushed weight change to 0/100 takes effect, and only RDS is re-sent.
    let before = cp.node(&node_id).await.unwrap_or_default();
    cp.write_snapshot(&snapshot(port, &a, &b, (0, 100), false));
    wait_until("every request goes to second", PUSH_CAP, async || {
        tally(&client, &url, 20, 4).await.get("second") == Some(&20)
    })
    .await;
    let counts = tally(&client, &url, 200, 4).await;
    assert_eq!(counts.get("second"), Some(&200), "{counts:?}");
    cp.wait_acked(&node_id, "rds", PUSH_CAP).await;
    let after = cp.node(&node_id).await.unwrap_or_default();
    assert_ne!(
        before["types"]["rds"]["nonce"],
        after["types"]["rds"]["nonce"]
    );
    for ty in ["cds", "eds", "lds"] {
        assert_eq!(
            before["types"][ty]["nonce"], after["types"][ty]["nonce"],
            "{ty} was re-sent for a route-only change: {after:#}"
        );
    }

    // A regex RE2 cannot compile: Envoy NACKs the route configuration …
    let stats = envoy.stats().await;
    let rejected_before = stat_sum(&stats, |n| {
        n.contains(".rds.") && n.ends_with(".update_rejected")
    });
    cp.write_snapshot(&snapshot(port, &a, &b, (0, 100), true));
    wait_until("the NACK shows in /v1/xds/nodes", PUSH_CAP, async || {
        cp.node(&node_id)
            .await
            .is_some_and(|n| n["last_nack"]["type"] == "rds")
    })
    .await;
    let node = cp.node(&node_id).await.unwrap_or_default();
    let nack = &node["last_nack"];
    let message = nack["message"].as_str().unwrap_or_default();
    assert!(message.contains("missing ]"), "NACK message: {node:#}");
    let rds = &node["types"]["rds"];
    assert_eq!(rds["state"], "nacked", "{node:#}");
    assert_eq!(rds["last_nack"]["version"], rds["version_sent"], "{node:#}");
    assert_ne!(rds["version_acked"], rds["version_sent"], "{node:#}");
    assert_eq!(nack["version"], rds["version_sent"], "{node:#}");
    let stats = envoy.stats().await;
    assert!(
        stat_sum(&stats, |n| n.contains(".rds.")
            && n.ends_with(".update_rejected"))
            > rejected_before,
        "{stats}"
    );
    let metrics = cp.api_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_xds_nacks_total{type=\"rds\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // … and keeps serving the previous config.
    let counts = tally(&client, &url, 200, 4).await;
    assert_eq!(counts.get("second"), Some(&200), "{counts:?}");
}
