use super::*;
use crate::xds::fixtures;

fn errors(yaml: &str) -> Vec<String> {
    match SnapshotFile::from_yaml(yaml) {
        Ok(_) => Vec::new(),
        Err(SnapshotError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn the_fixture_parses_with_its_defaults() {
    let file =
        SnapshotFile::from_yaml(&fixtures::yaml(80, 20, 9001)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.listeners[0].route_config, "web_routes");
    let route = &file.routes[0].virtual_hosts[0].routes[0];
    assert_eq!(route.prefix.as_deref(), Some(""));
    assert_eq!(route.timeout, Some(DurationSpec(Duration::from_secs(5))));
    assert_eq!(file.clusters[0].lb_policy, LbPolicySpec::RoundRobin);
    assert_eq!(file.clusters[0].connect_timeout.0, Duration::from_secs(5));
    assert_eq!(file.clusters[0].endpoints[0].weight, 1);
    assert_eq!(file.clusters[1].lb_policy, LbPolicySpec::LeastRequest);
    assert_eq!(
        file.clusters[1].connect_timeout.0,
        Duration::from_millis(250)
    );
}

#[test]
fn an_empty_prefix_survives_a_round_trip() {
    let file =
        SnapshotFile::from_yaml(&fixtures::yaml(80, 20, 9001)).unwrap_or_else(|e| panic!("{e}"));
    let yaml = file.to_yaml().unwrap_or_else(|e| panic!("{e}"));
    let again = SnapshotFile::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(again, file);
    assert_eq!(
        again.routes[0].virtual_hosts[0].routes[0].prefix.as_deref(),
        Some("")
    );
}

#[test]
fn type_errors_name_the_field_path() {
    let errs = errors("clusters:\n  - name: a\n    connect_timeout: soon\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("clusters[0].connect_timeout: "),
        "{errs:?}"
    );

    let errs =
        errors("listeners:\n  - {name: l, address: 127.0.0.1, port: 70000, route_config: r}\n");
    assert!(errs[0].starts_with("listeners[0].port: "), "{errs:?}");

    let errs = errors("clusters:\n  - name: a\n    endpoint: []\n");
    assert!(errs[0].contains("unknown field `endpoint`"), "{errs:?}");
}

#[test]
fn validation_reports_every_error_with_its_path() {
    let yaml = r#"
listeners:
  - {name: l, address: localhost, port: 0, route_config: nope}
  - {name: l, address: 127.0.0.1, port: 8080, route_config: r}
routes:
  - name: r
    virtual_hosts:
      - name: v
        domains: []
        routes:
          - {prefix: /, path: /x, cluster: a}
          - {prefix: /, cluster: missing}
          - {path: x, weighted_clusters: [{name: a, weight: 0}]}
          - {regex: ".*"}
          - {prefix: /, cluster: a, weighted_clusters: [{name: a, weight: 1}]}
clusters:
  - name: a
    connect_timeout: 0s
    endpoints: [{address: 10.0.0.1, port: 0, weight: 0}]
"#;
    let errs = errors(yaml);
    let expect = [
        "listeners[1].name: \"l\" is already used by listeners[0]",
        "listeners[0].address: \"localhost\" is not an IP address",
        "listeners[0].port: must be 1..=65535",
        "listeners[0].route_config: no route configuration named \"nope\"",
        "routes[0].virtual_hosts[0].domains: must list at least one domain",
        "routes[0].virtual_hosts[0].routes[0]: has more than one of prefix, path, regex",
        "routes[0].virtual_hosts[0].routes[1].cluster: no cluster named \"missing\"",
        "routes[0].virtual_hosts[0].routes[2].path: must start with '/'",
        "routes[0].virtual_hosts[0].routes[2].weighted_clusters: weights must add up to more than 0",
        "routes[0].virtual_hosts[0].routes[3]: needs one of cluster, weighted_clusters",
        "routes[0].virtual_hosts[0].routes[4]: has both cluster and weighted_clusters; pick one",
        "clusters[0].connect_timeout: must be greater than 0",
        "clusters[0].endpoints[0].port: must be 1..=65535",
        "clusters[0].endpoints[0].weight: must be at least 1",
    ];
    for e in expect {
        assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn a_regex_is_not_judged_here() {
    // The client's engine decides; Envoy NACKs what RE2 rejects.
    let yaml = fixtures::yaml(80, 20, 9001).replace("- prefix: \"\"", "- regex: \"([\"");
    assert_eq!(errors(&yaml), Vec::<String>::new());
}

#[test]
fn durations() {
    let ok = [
        ("250ms", Duration::from_millis(250)),
        ("5s", Duration::from_secs(5)),
        ("1.5s", Duration::from_millis(1500)),
        ("2m", Duration::from_secs(120)),
        ("0s", Duration::ZERO),
    ];
    for (s, d) in ok {
        assert_eq!(DurationSpec::parse(s), Ok(DurationSpec(d)), "{s}");
    }
    for bad in ["5", "s", "5h", "-1s", "1e9999s", ""] {
        assert!(DurationSpec::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        DurationSpec(Duration::from_millis(1500)).to_string(),
        "1500ms"
    );
    assert_eq!(DurationSpec(Duration::from_secs(3)).to_string(), "3s");
}

#[test]
fn the_watcher_keeps_the_last_good_snapshot() {
    let dir =
        std::env::temp_dir().join(format!("ferry-cp-watch-{}-{}", std::process::id(), line!()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("snap.yaml");
    let write = |s: &str| std::fs::write(&path, s).unwrap_or_else(|e| panic!("write: {e}"));
    write(&fixtures::yaml(80, 20, 9001));
    let metrics = XdsMetrics::new();
    let mut w = FileWatcher::new(path.clone(), Duration::from_secs(1), metrics.clone());
    let first = w.load_initial().unwrap_or_else(|e| panic!("{e}"));
    assert!(w.poll().is_none(), "unchanged file");

    write("listeners: [{name: x}]\n");
    assert!(w.poll().is_none(), "invalid file is not published");
    assert!(metrics
        .render()
        .contains("ferry_xds_snapshot_reloads_total{result=\"failed\"} 1"));

    write(&fixtures::yaml(0, 100, 9001));
    let next = w
        .poll()
        .unwrap_or_else(|| panic!("a valid change is published"));
    assert_ne!(
        next.get(crate::xds::ResourceType::Route).version,
        first.get(crate::xds::ResourceType::Route).version
    );
    let _ = std::fs::remove_dir_all(&dir);
}
