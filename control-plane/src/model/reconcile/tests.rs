//! Validation, defaults, revision stamping and status, against Knative's
//! documented behaviour.

use super::*;
use crate::autoscaler::config::KPA_CLASS as KPA;
use crate::model::manifest;
use crate::model::serving::RevisionTemplate;
use crate::model::Manifest;

const NOW: &str = "2026-01-01T00:00:00Z";

fn svc(yaml: &str) -> Service {
    match manifest::parse(yaml) {
        Ok(mut v) if v.len() == 1 => match v.remove(0) {
            Manifest::Service(s) => s,
            other => panic!("not a service: {other:?}"),
        },
        other => panic!("bad fixture: {other:?}"),
    }
}

fn base(traffic: &str) -> Service {
    svc(&format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: hello}}
spec:
  template:
    spec:
      containers: [{{command: [ferry-hello]}}]
{traffic}"
    ))
}

fn errors(s: &Service) -> Vec<(String, String)> {
    match s.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.0.into_iter().map(|f| (f.path, f.message)).collect(),
    }
}

fn paths(s: &Service) -> Vec<String> {
    errors(s).into_iter().map(|(p, _)| p).collect()
}

/// Applies `s` over `existing`, then folds the result into it (what the
/// store would hold afterwards).
fn apply(existing: &mut Existing, s: Service) -> Result<ApplyPlan, ApplyError> {
    let plan = plan_service_apply(s, existing, &GlobalConfig::default(), NOW)?;
    existing.service = Some(plan.service.clone());
    existing.configuration = Some(plan.configuration.clone());
    existing.route = Some(plan.route.clone());
    if let Some(r) = &plan.new_revision {
        existing.revisions.push(r.clone());
    }
    Ok(plan)
}

fn with_image(s: &mut Service, image: &str) {
    s.spec.template.spec.containers[0].image = Some(image.to_string());
}

// === validation ===

#[test]
fn a_minimal_service_is_valid() {
    assert_eq!(errors(&base("")), vec![]);
}

#[test]
fn percents_must_sum_to_100_and_the_error_names_spec_traffic() {
    let s = base("  traffic:\n    - {latestRevision: true, percent: 90}\n");
    assert_eq!(
        errors(&s),
        vec![(
            "spec.traffic".to_string(),
            "traffic targets sum to 90, want 100".to_string()
        )]
    );
}

#[test]
fn a_percent_out_of_range_names_its_entry() {
    let s = base(
        "  traffic:\n    - {latestRevision: true, percent: 150}\n    - {revisionName: hello-x, percent: -50}\n",
    );
    assert_eq!(
        paths(&s),
        vec!["spec.traffic[0].percent", "spec.traffic[1].percent"],
        "{:?}",
        errors(&s)
    );
}

#[test]
fn left_out_percents_count_as_zero() {
    let s = base("  traffic:\n    - {latestRevision: true}\n");
    assert!(errors(&s)[0].1.contains("sum to 0"));
}

#[test]
fn duplicate_tags_are_refused() {
    let s = base(
        "  traffic:\n    - {latestRevision: true, percent: 50, tag: a}\n    - {latestRevision: true, percent: 50, tag: a}\n",
    );
    assert_eq!(paths(&s), vec!["spec.traffic[1].tag"]);
    assert!(errors(&s)[0].1.contains("multiple definitions for \"a\""));
}

#[test]
fn tags_must_be_dns_labels() {
    let s = base("  traffic:\n    - {latestRevision: true, percent: 100, tag: Bad_Tag}\n");
    assert_eq!(paths(&s), vec!["spec.traffic[0].tag"]);
}

#[test]
fn latest_revision_and_revision_name_are_exclusive() {
    let both =
        base("  traffic:\n    - {latestRevision: true, revisionName: hello-a, percent: 100}\n");
    assert_eq!(paths(&both), vec!["spec.traffic[0].latestRevision"]);
    let neither = base("  traffic:\n    - {latestRevision: false, percent: 100}\n");
    assert_eq!(paths(&neither), vec!["spec.traffic[0].latestRevision"]);
}

#[test]
fn url_and_configuration_name_are_not_allowed_in_a_service_spec() {
    let s = base(
        "  traffic:\n    - {latestRevision: true, percent: 100, url: 'http://x', configurationName: c}\n",
    );
    assert_eq!(
        paths(&s),
        vec!["spec.traffic[0].configurationName", "spec.traffic[0].url"]
    );
}

#[test]
fn names_must_be_dns_1035_labels() {
    let mut s = base("");
    s.metadata.name = "1hello".to_string();
    assert_eq!(paths(&s), vec!["metadata.name"]);
    s.metadata.name = "Hello".to_string();
    assert_eq!(paths(&s), vec!["metadata.name"]);
    s.metadata.name = "a".repeat(64);
    assert_eq!(paths(&s), vec!["metadata.name"]);
    s.metadata.name = String::new();
    assert_eq!(paths(&s), vec!["metadata.name"]);
    s.metadata.name = "hello".to_string();
    s.metadata.namespace = "Bad".to_string();
    assert_eq!(paths(&s), vec!["metadata.namespace"]);
}

#[test]
fn a_template_name_must_carry_the_service_prefix() {
    let mut s = base("");
    s.spec.template.metadata.name = "other-1".to_string();
    assert_eq!(paths(&s), vec!["spec.template.metadata.name"]);
    assert!(errors(&s)[0].1.contains("must have prefix \"hello-\""));
}

#[test]
fn container_rules() {
    let s = svc("apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
spec:
  template:
    spec:
      containerConcurrency: 1001
      timeoutSeconds: 601
      containers:
        - ports: [{containerPort: 0}, {containerPort: 8081}]
          env: [{name: K_REVISION, value: x}, {name: 9lives, value: y}]
");
    assert_eq!(
        paths(&s),
        vec![
            "spec.template.spec.containerConcurrency",
            "spec.template.spec.timeoutSeconds",
            "spec.template.spec.containers[0]",
            "spec.template.spec.containers[0].ports",
            "spec.template.spec.containers[0].ports[0].containerPort",
            "spec.template.spec.containers[0].env[0].name",
            "spec.template.spec.containers[0].env[1].name",
        ],
        "{:?}",
        errors(&s)
    );
    let none = svc("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {template: {spec: {}}}\n");
    assert_eq!(paths(&none), vec!["spec.template.spec.containers"]);
}

#[test]
fn autoscaling_annotations_belong_on_the_template_and_are_checked() {
    let mut s = base("");
    s.metadata
        .annotations
        .insert("autoscaling.knative.dev/target".into(), "10".into());
    assert_eq!(
        paths(&s),
        vec!["metadata.annotations.autoscaling.knative.dev/target"]
    );
    let mut s = base("");
    let a = &mut s.spec.template.metadata.annotations;
    a.insert("autoscaling.knative.dev/target".into(), "ten".into());
    a.insert("autoscaling.knative.dev/min-scale".into(), "3".into());
    a.insert("autoscaling.knative.dev/max-scale".into(), "2".into());
    a.insert("autoscaling.knative.dev/window".into(), "1m30s".into());
    a.insert("autoscaling.knative.dev/metric".into(), "rps".into());
    a.insert("autoscaling.knative.dev/tagret".into(), "1".into());
    let p = paths(&s);
    assert_eq!(
        p,
        vec![
            "spec.template.metadata.annotations.autoscaling.knative.dev/tagret",
            "spec.template.metadata.annotations.autoscaling.knative.dev/target",
            "spec.template.metadata.annotations.autoscaling.knative.dev/max-scale",
        ],
        "{:?}",
        errors(&s)
    );
}

/// Knative's value rules and bounds for every annotation the autoscaler
/// reads (Ferry's per-revision extras included): a bad value is an error
/// at that annotation's path; a good one passes.
#[test]
fn every_autoscaling_annotation_value_is_checked() {
    let cases = [
        ("class", "hpa.autoscaling.knative.dev", KPA),
        ("metric", "cpu", "concurrency"),
        ("target", "0.001", "0.5"),
        ("target-utilization-percentage", "101", "100"),
        ("target-burst-capacity", "-2", "-1"),
        ("window", "5s", "6s"),
        ("window", "1.5s", "1h"),
        ("panic-window-percentage", "0.5", "1"),
        ("panic-threshold-percentage", "100", "1000"),
        ("min-scale", "-1", "0"),
        ("max-scale", "x", "3"),
        ("initial-scale", "-1", "2"),
        ("activation-scale", "1", "2"),
        ("scale-down-delay", "1.5s", "1h"),
        ("scale-to-zero-pod-retention-period", "61m", "0s"),
        (
            "metric-aggregation-algorithm",
            "mean",
            "weightedExponential",
        ),
        ("scale-to-zero-grace-period", "0s", "500ms"),
        ("max-scale-up-rate", "1", "1.5"),
        ("max-scale-down-rate", "0.5", "2"),
        ("minScale", "-3", "1"),
        ("targetBurstCapacity", "x", "0"),
    ];
    for (key, bad, good) in cases {
        let mut s = base("");
        let annotation = format!("autoscaling.knative.dev/{key}");
        s.spec
            .template
            .metadata
            .annotations
            .insert(annotation.clone(), bad.into());
        assert_eq!(
            paths(&s),
            vec![format!("spec.template.metadata.annotations.{annotation}")],
            "{key}: {bad:?}"
        );
        s.spec
            .template
            .metadata
            .annotations
            .insert(annotation, good.into());
        assert_eq!(errors(&s), Vec::new(), "{key}: {good:?}");
    }
    // Knative's defaults forbid a zero initial scale; a cluster allowing
    // it accepts one.
    let mut s = base("");
    s.spec
        .template
        .metadata
        .annotations
        .insert("autoscaling.knative.dev/initial-scale".into(), "0".into());
    assert_eq!(
        paths(&s),
        vec!["spec.template.metadata.annotations.autoscaling.knative.dev/initial-scale"]
    );
    let allowing = GlobalConfig {
        allow_zero_initial_scale: true,
        ..GlobalConfig::default()
    };
    assert_eq!(s.validate_with(&allowing), Ok(()));
    // Keys that come from the revision itself are not annotations.
    let mut s = base("");
    s.spec.template.metadata.annotations.insert(
        "autoscaling.knative.dev/container-concurrency".into(),
        "1".into(),
    );
    let e = errors(&s);
    assert!(
        e.len() == 1 && e[0].1.contains("containerConcurrency"),
        "{e:?}"
    );
    // Ferry's per-revision extras are refused on the Service's own
    // metadata like every autoscaling annotation.
    let mut s = base("");
    s.metadata.annotations.insert(
        "autoscaling.knative.dev/scale-to-zero-grace-period".into(),
        "10s".into(),
    );
    assert_eq!(
        paths(&s),
        vec!["metadata.annotations.autoscaling.knative.dev/scale-to-zero-grace-period"]
    );
}

#[test]
fn unknown_structural_fields_name_their_path() {
    let e = manifest::parse(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  trafic: []\n",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("spec.trafic: unknown field `trafic`"), "{e}");
    let e = manifest::parse(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers: [{ports: [{containerPort: x}]}]\n",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.contains("spec.template.spec.containers[0].ports[0].containerPort"),
        "{e}"
    );
}

#[test]
fn kubernetes_fields_ferry_does_not_use_are_kept() {
    let s = svc("apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: a, finalizers: [x]}
spec:
  template:
    spec:
      serviceAccountName: sa
      containers:
        - image: nginx
          imagePullPolicy: Always
          readinessProbe: {httpGet: {path: /}}
");
    assert_eq!(errors(&s), vec![]);
    let back = serde_json::to_value(&s).unwrap_or_default();
    assert_eq!(back["spec"]["template"]["spec"]["serviceAccountName"], "sa");
    assert_eq!(
        back["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    assert_eq!(back["metadata"]["finalizers"][0], "x");
}

// === defaults ===

#[test]
fn defaults_are_knatives() {
    let mut s = base("");
    s.set_defaults();
    assert_eq!(s.metadata.namespace, "default");
    assert_eq!(s.spec.template.spec.container_concurrency, Some(0));
    assert_eq!(s.spec.template.spec.timeout_seconds, Some(300));
    assert_eq!(s.spec.template.spec.containers[0].name, "user-container");
    assert_eq!(
        s.spec.traffic,
        vec![TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            ..Default::default()
        }]
    );
    let mut s = base("  traffic:\n    - {revisionName: hello-a, percent: 100}\n    - {tag: t}\n");
    s.set_defaults();
    assert_eq!(s.spec.traffic[0].latest_revision, Some(false));
    assert_eq!(s.spec.traffic[1].latest_revision, Some(true));
    assert_eq!(s.spec.traffic[1].percent, Some(0));
}

#[test]
fn several_unnamed_containers_get_numbered_names() {
    let mut spec = crate::model::serving::RevisionSpec {
        containers: vec![Default::default(), Default::default()],
        ..Default::default()
    };
    spec.containers[1].name = "user-container-0".to_string();
    spec.set_defaults();
    assert_eq!(spec.containers[0].name, "user-container-1");
}

// === revision stamping ===

#[test]
fn each_template_change_stamps_the_next_revision() {
    let mut ex = Existing::default();
    let p1 = apply(&mut ex, base("")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p1.outcome, Outcome::Created);
    let r1 = p1.new_revision.unwrap_or_default();
    assert_eq!(r1.metadata.name, "hello-00001");
    assert_eq!(r1.metadata.labels[SERVICE_LABEL], "hello");
    assert_eq!(r1.metadata.labels[CONFIGURATION_GENERATION_LABEL], "1");
    assert_eq!(
        p1.configuration.status.latest_created_revision_name,
        "hello-00001"
    );

    // Same template: nothing new, nothing changed.
    let p = apply(&mut ex, base("")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.outcome, Outcome::Unchanged);
    assert!(p.new_revision.is_none());

    // Spelling a default out is not a change.
    let mut explicit = base("  traffic:\n    - {latestRevision: true, percent: 100}\n");
    explicit.spec.template.spec.timeout_seconds = Some(300);
    let p = apply(&mut ex, explicit).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.new_revision.is_none());

    // Traffic-only change: a new generation of the service, no revision.
    let mut tagged = base("  traffic:\n    - {latestRevision: true, percent: 100, tag: now}\n");
    tagged.metadata.labels.insert("team".into(), "a".into());
    let p = apply(&mut ex, tagged).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.outcome, Outcome::Configured);
    assert!(p.new_revision.is_none());
    assert_eq!(p.service.metadata.generation, Some(2));

    let mut changed = base("");
    with_image(&mut changed, "v2");
    let p = apply(&mut ex, changed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.new_revision.map(|r| r.metadata.name),
        Some("hello-00002".to_string())
    );
    assert_eq!(p.configuration.metadata.generation, Some(2));
    assert_eq!(p.service.metadata.generation, Some(3));
    assert_eq!(
        p.service.metadata.uid, p1.service.metadata.uid,
        "uid survives updates"
    );
}

#[test]
fn an_explicit_template_name_is_honoured_and_must_change_with_the_template() {
    let mut ex = Existing::default();
    let mut v1 = base("");
    v1.spec.template.metadata.name = "hello-v1".into();
    let p = apply(&mut ex, v1.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.new_revision.map(|r| r.metadata.name),
        Some("hello-v1".to_string())
    );

    let mut same_name = v1.clone();
    with_image(&mut same_name, "other");
    match apply(&mut ex, same_name) {
        Err(ApplyError::Invalid(e)) => {
            assert_eq!(e.0[0].path, "spec.template.metadata.name");
            assert!(e.0[0].message.contains("without a name change"), "{e}");
        }
        other => panic!("expected 400, got {other:?}"),
    }

    let mut v2 = v1.clone();
    v2.spec.template.metadata.name = "hello-v2".into();
    with_image(&mut v2, "two");
    v2.spec.traffic = vec![
        TrafficTarget {
            revision_name: Some("hello-v1".into()),
            percent: Some(90),
            ..Default::default()
        },
        TrafficTarget {
            revision_name: Some("hello-v2".into()),
            percent: Some(10),
            tag: Some("candidate".into()),
            ..Default::default()
        },
    ];
    let p = apply(&mut ex, v2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.new_revision.map(|r| r.metadata.name),
        Some("hello-v2".to_string())
    );
    assert_eq!(p.configuration.metadata.generation, Some(2));

    // Back to v1's template and name: v1 is the latest again, no new one.
    let p = apply(&mut ex, v1).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.new_revision.is_none());
    assert_eq!(
        p.configuration.status.latest_created_revision_name,
        "hello-v1"
    );
    assert_eq!(ex.revisions.len(), 2);
}

#[test]
fn a_revision_name_owned_by_another_service_is_a_conflict() {
    let mut ex = Existing::default();
    let mut other = base("");
    other.metadata.name = "hello-x".into();
    other.spec.template.metadata.name = "hello-x-1".into();
    apply(&mut ex, other).unwrap_or_else(|e| panic!("{e}"));
    ex.service = None;
    ex.configuration = None;
    ex.route = None;
    let mut s = base("");
    s.spec.template.metadata.name = "hello-x-1".into();
    assert!(matches!(apply(&mut ex, s), Err(ApplyError::Conflict(_))));
}

#[test]
fn traffic_to_an_unknown_revision_is_a_400_naming_the_entry() {
    let mut ex = Existing::default();
    let s = base(
        "  traffic:\n    - {latestRevision: true, percent: 50}\n    - {revisionName: hello-nope, percent: 50}\n",
    );
    match apply(&mut ex, s) {
        Err(ApplyError::Invalid(e)) => {
            assert_eq!(e.0[0].path, "spec.traffic[1].revisionName");
            assert_eq!(
                e.0[0].message,
                "revision \"hello-nope\" not found in namespace \"default\""
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
}

#[test]
fn long_names_get_hashed_revision_names_within_63_characters() {
    let name = "a".repeat(63);
    let r = meta::child_name(&name, "-00001");
    assert!(r.len() <= 63, "{r}");
    assert!(r.ends_with("-00001"));
    assert_ne!(r, meta::child_name(&"a".repeat(62), "-00001"));
}

// === status ===

/// Statuses as the store layer computes them.
fn statuses(
    ex: &Existing,
    runtime: &dyn Fn(&str) -> RevisionRuntime,
) -> (
    Vec<Revision>,
    ConfigurationStatus,
    RouteStatus,
    ServiceStatus,
) {
    let revs: Vec<Revision> = ex
        .revisions
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.status = revision_status(&r, Some(&runtime(&r.metadata.name)));
            r
        })
        .collect();
    let config = ex.configuration.clone().unwrap_or_default();
    let route = ex.route.clone().unwrap_or_default();
    let svc = ex.service.clone().unwrap_or_default();
    let cs = configuration_status(&config, &revs);
    let rs = route_status(&route, Some(&cs), &revs, "example.com");
    let ss = service_status(&svc, Some(&cs), Some(&rs), Some(&route.spec), "example.com");
    (revs, cs, rs, ss)
}

fn cond<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
    meta::condition(cs, t).unwrap_or_else(|| panic!("no {t} condition in {cs:?}"))
}

#[test]
fn a_healthy_service_is_ready_with_urls_and_resolved_traffic() {
    let mut ex = Existing::default();
    apply(&mut ex, base("")).unwrap_or_else(|e| panic!("{e}"));
    let mut s = base(
        "  traffic:\n    - {revisionName: hello-00001, percent: 90}\n    - {latestRevision: true, percent: 10, tag: next}\n",
    );
    with_image(&mut s, "v2");
    apply(&mut ex, s).unwrap_or_else(|e| panic!("{e}"));
    let rt = |name: &str| RevisionRuntime {
        actual_replicas: u32::from(name == "hello-00002"),
        desired_replicas: 2,
        failure: None,
    };
    let (revs, _cs, rs, ss) = statuses(&ex, &rt);
    assert!(cond(&ss.conditions, "Ready").is_true());
    assert!(cond(&ss.conditions, "ConfigurationsReady").is_true());
    assert!(cond(&ss.conditions, "RoutesReady").is_true());
    assert_eq!(ss.url.as_deref(), Some("http://hello.default.example.com"));
    assert_eq!(ss.latest_created_revision_name, "hello-00002");
    assert_eq!(ss.latest_ready_revision_name, "hello-00002");
    assert_eq!(rs.traffic[0].revision_name.as_deref(), Some("hello-00001"));
    assert_eq!(rs.traffic[1].revision_name.as_deref(), Some("hello-00002"));
    assert_eq!(
        rs.traffic[1].url.as_deref(),
        Some("http://next-hello.default.example.com")
    );
    assert_eq!(ss.traffic, rs.traffic);
    let r2 = &revs[1];
    assert_eq!(
        (r2.status.actual_replicas, r2.status.desired_replicas),
        (1, 2)
    );
    assert!(cond(&r2.status.conditions, "Active").is_true());
    let a1 = cond(&revs[0].status.conditions, "Active");
    assert_eq!(
        (a1.status, a1.reason.as_str()),
        (ConditionStatus::False, "NoTraffic")
    );
    assert!(
        cond(&revs[0].status.conditions, "Ready").is_true(),
        "at zero is still ready"
    );
}

#[test]
fn a_failed_latest_revision_keeps_traffic_on_the_last_ready_one() {
    let mut ex = Existing::default();
    apply(&mut ex, base("")).unwrap_or_else(|e| panic!("{e}"));
    let mut s = base("");
    with_image(&mut s, "broken");
    apply(&mut ex, s).unwrap_or_else(|e| panic!("{e}"));
    let rt = |name: &str| RevisionRuntime {
        failure: (name == "hello-00002").then(|| {
            (
                "ExitCode1".to_string(),
                "the app exited with code 1".to_string(),
            )
        }),
        ..Default::default()
    };
    let (revs, cs, rs, ss) = statuses(&ex, &rt);
    let r2 = cond(&revs[1].status.conditions, "Ready");
    assert_eq!(
        (r2.status, r2.reason.as_str()),
        (ConditionStatus::False, "ExitCode1")
    );
    assert_eq!(cs.latest_created_revision_name, "hello-00002");
    assert_eq!(cs.latest_ready_revision_name, "hello-00001");
    assert_eq!(rs.traffic[0].revision_name.as_deref(), Some("hello-00001"));
    let ready = cond(&ss.conditions, "Ready");
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "RevisionFailed");
    assert!(
        ready.message.contains("the app exited with code 1"),
        "{ready:?}"
    );
}

#[test]
fn traffic_not_migrated_while_the_latest_is_not_ready() {
    let mut ex = Existing::default();
    apply(&mut ex, base("")).unwrap_or_else(|e| panic!("{e}"));
    let mut s = base("");
    with_image(&mut s, "v2");
    apply(&mut ex, s).unwrap_or_else(|e| panic!("{e}"));
    // Simulate a revision still deploying: Ready Unknown.
    let mut revs: Vec<Revision> = ex.revisions.clone();
    for r in &mut revs {
        r.status = revision_status(r, None);
    }
    revs[1].status.conditions[0].status = ConditionStatus::Unknown;
    let config = ex.configuration.clone().unwrap_or_default();
    let route = ex.route.clone().unwrap_or_default();
    let cs = configuration_status(&config, &revs);
    let rs = route_status(&route, Some(&cs), &revs, "example.com");
    let ss = service_status(
        ex.service.as_ref().unwrap_or(&Service::default()),
        Some(&cs),
        Some(&rs),
        Some(&route.spec),
        "example.com",
    );
    let routes_ready = cond(&ss.conditions, "RoutesReady");
    assert_eq!(routes_ready.status, ConditionStatus::Unknown);
    assert_eq!(routes_ready.reason, "TrafficNotMigrated");
    assert_eq!(
        cond(&ss.conditions, "Ready").status,
        ConditionStatus::Unknown
    );
}

#[test]
fn a_missing_revision_in_traffic_makes_the_route_not_ready() {
    let mut ex = Existing::default();
    let mut s = base("");
    s.spec.template.metadata.name = "hello-a".into();
    apply(&mut ex, s).unwrap_or_else(|e| panic!("{e}"));
    let mut route = ex.route.clone().unwrap_or_default();
    route.spec.traffic = vec![TrafficTarget {
        revision_name: Some("hello-gone".into()),
        latest_revision: Some(false),
        percent: Some(100),
        ..Default::default()
    }];
    let rs = route_status(&route, None, &[], "example.com");
    let c = cond(&rs.conditions, "Ready");
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "RevisionMissing")
    );
    assert!(rs.traffic[0].revision_name.is_none());
}

#[test]
fn template_comparison_ignores_nothing_that_matters() {
    let a = RevisionTemplate::default();
    let mut b = a.clone();
    assert!(!serving::template_changed(&a, &b));
    b.metadata
        .annotations
        .insert("autoscaling.knative.dev/target".into(), "5".into());
    assert!(
        serving::template_changed(&a, &b),
        "annotations stamp a revision"
    );
}

#[test]
fn durations_parse_like_iso8601() {
    use crate::model::eventing::parse_iso8601_duration as iso;
    use std::time::Duration;
    assert_eq!(iso("PT0.5S"), Some(Duration::from_millis(500)));
    assert_eq!(iso("P1DT1H1M1S"), Some(Duration::from_secs(90_061)));
    assert_eq!(iso("PT"), None);
    assert_eq!(iso("P1W"), None);
    assert_eq!(iso("PT1S1M"), None);
}

#[test]
fn timestamps_round_trip() {
    assert_eq!(meta::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(meta::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    for t in [0u64, 951_782_400, 1_798_000_123] {
        assert_eq!(meta::parse_rfc3339(&meta::rfc3339(t)), Some(t));
    }
    assert_eq!(meta::parse_rfc3339("yesterday"), None);
}
