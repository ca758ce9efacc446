use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, retry_policy::RetryBackOff, route, route_action, route_match,
    weighted_cluster::ClusterWeight, DirectResponseAction, HeaderMatcher, QueryParameterMatcher,
    RedirectAction, RetryPolicy, Route, RouteAction, RouteConfiguration, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::fixtures::*;
use crate::config::{self, Dur};
use crate::xds::translate_rds;

fn one(r: Route) -> RouteConfiguration {
    route_config("rc", vec![r])
}

fn action(a: RouteAction) -> Route {
    Route {
        action: Some(route::Action::Route(a)),
        ..route_to("/", "c")
    }
}

fn cluster_action() -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("c".into())),
        ..Default::default()
    }
}

fn string_match(p: MatchPattern, ignore_case: bool) -> Option<HeaderMatchSpecifier> {
    Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }))
}

fn header(name: &str, spec: Option<HeaderMatchSpecifier>, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: spec,
        invert_match: invert,
        ..Default::default()
    }
}

fn hvo(
    key: &str,
    value: &str,
    append: Option<bool>,
    action: HeaderAppendAction,
) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| BoolValue { value }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn first_route(rc: &config::RouteConfig) -> &config::Route {
    &rc.virtual_hosts[0].routes[0]
}

#[test]
fn accepted_routes() {
    let mut matchers = route_to("/api", "c");
    if let Some(m) = matchers.r#match.as_mut() {
        m.case_sensitive = Some(BoolValue { value: false });
        m.headers = vec![
            header(
                "x-exact",
                string_match(MatchPattern::Exact("a".into()), false),
                false,
            ),
            header(
                "x-prefix",
                string_match(MatchPattern::Prefix("p".into()), false),
                true,
            ),
            header(
                "x-suffix",
                string_match(MatchPattern::Suffix("s".into()), false),
                false,
            ),
            header(
                "x-contains",
                string_match(MatchPattern::Contains("c".into()), false),
                false,
            ),
            header(
                "x-regex",
                string_match(
                    MatchPattern::SafeRegex(RegexMatcher {
                        regex: "v[0-9]+".into(),
                        ..Default::default()
                    }),
                    false,
                ),
                false,
            ),
            header(
                "x-present",
                Some(HeaderMatchSpecifier::PresentMatch(true)),
                false,
            ),
            header(
                "x-icase",
                string_match(MatchPattern::Exact("Ab".into()), true),
                false,
            ),
            header("x-none", None, false),
        ];
        m.query_parameters = vec![
            QueryParameterMatcher {
                name: "q".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(MatchPattern::Exact("1".into())),
                        ignore_case: false,
                    },
                )),
            },
            QueryParameterMatcher {
                name: "p".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(MatchPattern::Prefix("a.b".into())),
                        ignore_case: false,
                    },
                )),
            },
            QueryParameterMatcher {
                name: "present".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::PresentMatch(
                    true,
                )),
            },
        ];
    }

    let mut weighted = cluster_action();
    weighted.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
        WeightedCluster {
            clusters: vec![
                ClusterWeight {
                    name: "a".into(),
                    weight: u32v(80),
                    ..Default::default()
                },
                ClusterWeight {
                    name: "b".into(),
                    weight: u32v(20),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    ));
    weighted.timeout = dur(3, 0);
    weighted.prefix_rewrite = "/v2".into();
    weighted.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
        "up.example".into(),
    ));
    weighted.retry_policy = Some(RetryPolicy {
        retry_on: "5xx,connect-failure".into(),
        num_retries: u32v(3),
        per_try_timeout: dur(1, 0),
        retry_back_off: Some(RetryBackOff {
            base_interval: dur(0, 10_000_000),
            max_interval: dur(0, 100_000_000),
        }),
        retriable_status_codes: vec![503],
        ..Default::default()
    });
    weighted.hash_policy = vec![route_action::HashPolicy {
        policy_specifier: Some(route_action::hash_policy::PolicySpecifier::Header(
            route_action::hash_policy::Header {
                header_name: "x-user".into(),
                ..Default::default()
            },
        )),
        terminal: true,
    }];

    let redirect = Route {
        action: Some(route::Action::Redirect(RedirectAction {
            host_redirect: "new.example".into(),
            port_redirect: 8443,
            response_code: redirect_action::RedirectResponseCode::PermanentRedirect as i32,
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
                "/new".into(),
            )),
            strip_query: true,
        })),
        ..route_to("/old", "c")
    };
    let direct = Route {
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 418,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString("teapot".into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..route_to("/tea", "c")
    };
    let mut headers = route_to("/h", "c");
    headers.request_headers_to_add = vec![
        hvo(
            "x-append",
            "1",
            None,
            HeaderAppendAction::AppendIfExistsOrAdd,
        ),
        hvo(
            "x-overwrite",
            "2",
            None,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
        hvo(
            "x-deprecated",
            "3",
            Some(false),
            HeaderAppendAction::AppendIfExistsOrAdd,
        ),
    ];
    headers.request_headers_to_remove = vec!["x-gone".into()];
    headers.response_headers_to_add = vec![hvo(
        "x-resp",
        "4",
        None,
        HeaderAppendAction::AppendIfExistsOrAdd,
    )];
    #[allow(deprecated)]
    {
        headers.per_request_buffer_limit_bytes = u32v(1024);
    }
    let regex_path = Route {
        r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                regex: "/item/[0-9]+".into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..route_to("", "c")
    };

    type Check = fn(&config::Route);
    let cases: Vec<(&str, Route, Check)> = vec![
        ("empty prefix survives", route_to("", "c"), |r| {
            assert_eq!(r.matcher.prefix.as_deref(), Some(""));
            assert!(r.matcher.case_sensitive);
            assert_eq!(
                r.route.as_ref().and_then(|a| a.cluster.as_deref()),
                Some("c")
            );
        }),
        (
            "path",
            Route {
                r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Path("/exact".into())),
                    ..Default::default()
                }),
                ..route_to("", "c")
            },
            |r| assert_eq!(r.matcher.path.as_deref(), Some("/exact")),
        ),
        ("regex", regex_path, |r| {
            assert_eq!(r.matcher.regex.as_deref(), Some("/item/[0-9]+"))
        }),
        ("matchers", matchers, |r| {
            let m = &r.matcher;
            assert!(!m.case_sensitive);
            let h = &m.headers;
            assert_eq!(h[0].exact.as_deref(), Some("a"));
            assert_eq!(
                (h[1].prefix.as_deref(), h[1].invert_match),
                (Some("p"), true)
            );
            assert_eq!(h[2].suffix.as_deref(), Some("s"));
            assert_eq!(h[3].contains.as_deref(), Some("c"));
            assert_eq!(h[4].regex.as_deref(), Some("v[0-9]+"));
            assert_eq!(h[5].present, Some(true));
            assert_eq!(h[6].regex.as_deref(), Some("(?i)^Ab$"));
            assert_eq!(h[7].present, Some(true));
            let q = &m.query_parameters;
            assert_eq!(q[0].exact.as_deref(), Some("1"));
            assert_eq!(q[1].regex.as_deref(), Some("a\\.b.*"));
            assert_eq!(q[2].present, Some(true));
        }),
        ("weighted + action fields", action(weighted), |r| {
            let a = r.route.as_ref().expect("action");
            let w = a.weighted_clusters.as_ref().expect("weighted");
            assert_eq!(
                w.iter()
                    .map(|w| (w.name.as_str(), w.weight))
                    .collect::<Vec<_>>(),
                [("a", 80), ("b", 20)]
            );
            assert_eq!(a.timeout, Some(Dur(std::time::Duration::from_secs(3))));
            assert_eq!(a.prefix_rewrite.as_deref(), Some("/v2"));
            assert_eq!(a.host_rewrite.as_deref(), Some("up.example"));
            let rp = a.retry_policy.as_ref().expect("retry");
            assert_eq!(rp.retry_on, "5xx,connect-failure");
            assert_eq!(rp.num_retries, Some(3));
            assert_eq!(
                rp.per_try_timeout,
                Some(Dur(std::time::Duration::from_secs(1)))
            );
            assert_eq!(rp.retriable_status_codes, [503]);
            let bo = rp.retry_back_off.as_ref().expect("backoff");
            assert_eq!(
                bo.base_interval,
                Some(Dur(std::time::Duration::from_millis(10)))
            );
            assert_eq!(
                a.hash_policy[0]
                    .header
                    .as_ref()
                    .map(|h| h.header_name.as_str()),
                Some("x-user")
            );
            assert!(a.hash_policy[0].terminal);
        }),
        ("redirect", redirect, |r| {
            let rd = r.redirect.as_ref().expect("redirect");
            assert_eq!(rd.host_redirect.as_deref(), Some("new.example"));
            assert_eq!(rd.port_redirect, Some(8443));
            assert_eq!(rd.response_code, 308);
            assert!(rd.https_redirect && rd.strip_query);
            assert_eq!(rd.prefix_rewrite.as_deref(), Some("/new"));
        }),
        ("direct response", direct, |r| {
            let d = r.direct_response.as_ref().expect("direct");
            assert_eq!((d.status, d.body.as_deref()), (418, Some("teapot")));
        }),
        ("headers", headers, |r| {
            let add: Vec<_> = r
                .request_headers_to_add
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_str(), h.append))
                .collect();
            assert_eq!(
                add,
                [
                    ("x-append", "1", true),
                    ("x-overwrite", "2", false),
                    ("x-deprecated", "3", false)
                ]
            );
            assert_eq!(r.request_headers_to_remove, ["x-gone"]);
            assert_eq!(r.response_headers_to_add[0].name, "x-resp");
            assert_eq!(r.per_request_buffer_limit_bytes, Some(1024));
        }),
    ];
    for (name, r, check) in cases {
        match translate_rds(&one(r)) {
            Ok(rc) => check(first_route(&rc)),
            Err(e) => panic!("{name}: rejected: {e}"),
        }
    }
}

#[test]
fn virtual_host_defaults_reach_routes() {
    let mut rc = route_config("rc", vec![route_to("/", "c")]);
    rc.virtual_hosts[0].retry_policy = Some(RetryPolicy {
        retry_on: "5xx".into(),
        ..Default::default()
    });
    rc.virtual_hosts[0].request_headers_to_add = vec![hvo(
        "x-vh",
        "1",
        None,
        HeaderAppendAction::AppendIfExistsOrAdd,
    )];
    rc.request_headers_to_add = vec![hvo(
        "x-rc",
        "1",
        None,
        HeaderAppendAction::AppendIfExistsOrAdd,
    )];
    let out = translate_rds(&rc).expect("ok");
    let vh = &out.virtual_hosts[0];
    assert_eq!(
        vh.request_headers_to_add
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>(),
        ["x-vh", "x-rc"]
    );
    let retry = vh.routes[0]
        .route
        .as_ref()
        .and_then(|a| a.retry_policy.as_ref());
    assert_eq!(retry.map(|r| r.retry_on.as_str()), Some("5xx"));
}

#[test]
fn rejected_routes() {
    let mut runtime = route_to("/", "c");
    if let Some(m) = runtime.r#match.as_mut() {
        m.runtime_fraction = Some(Default::default());
    }
    let mut regex_rewrite = cluster_action();
    regex_rewrite.regex_rewrite = Some(Default::default());
    let mut cluster_header = cluster_action();
    cluster_header.cluster_specifier = Some(route_action::ClusterSpecifier::ClusterHeader(
        "x-cluster".into(),
    ));
    let mut mirror = cluster_action();
    mirror.request_mirror_policies = vec![Default::default()];
    let mut add_if_absent = route_to("/", "c");
    add_if_absent.request_headers_to_add =
        vec![hvo("x", "1", None, HeaderAppendAction::AddIfAbsent)];
    let mut range = route_to("/", "c");
    if let Some(m) = range.r#match.as_mut() {
        m.headers = vec![header(
            "x",
            Some(HeaderMatchSpecifier::RangeMatch(Default::default())),
            false,
        )];
    }
    let no_action = Route {
        action: None,
        ..route_to("/", "c")
    };

    let cases: Vec<(&str, Route, &str)> = vec![
        ("runtime fraction", runtime, "route_configuration \"rc\": virtual_hosts[0].routes[0].match.runtime_fraction: runtime fractions is not supported"),
        ("regex rewrite", action(regex_rewrite), "virtual_hosts[0].routes[0].route.regex_rewrite"),
        ("cluster header", action(cluster_header), "route.cluster_header"),
        ("mirror", action(mirror), "request_mirror_policies: request mirroring"),
        ("add if absent", add_if_absent, "request_headers_to_add[0].append_action: ADD_IF_ABSENT"),
        ("range match", range, "match.headers[0].range_match"),
        ("no action", no_action, "needs route, redirect or direct_response"),
    ];
    for (name, r, want) in cases {
        match translate_rds(&one(r)) {
            Ok(rc) => panic!("{name}: accepted: {rc:?}"),
            Err(e) => assert!(e.contains(want), "{name}: {e:?} does not contain {want:?}"),
        }
    }
}
