//! The admin server: readiness and liveness, Prometheus counters that
//! follow traffic, `/config_dump`, `/clusters`, and the JSON access log.

use std::time::Duration;

use ferry_integration_tests::{eventually, free_addr, full, Backend, Client, Proxy, TestDir};
use http::Request;

fn yaml(listen: &str, endpoints: &[&Backend], access_log: Option<&str>) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|b| format!("{{address: \"{}\"}}", b.addr))
        .collect();
    let log = access_log
        .map(|p| format!("access_log: {{path: \"{p}\"}}\n"))
        .unwrap_or_default();
    format!(
        r#"
{log}listeners:
  - {{name: http, address: "{listen}", route_config: local}}
routes:
  - name: local
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: backend, timeout: 2s}}
clusters:
  - name: backend
    endpoints: [{}]
"#,
        eps.join(", ")
    )
}

#[tokio::test]
async fn ready_and_healthz() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&yaml(&listen, &[&b], None)).await;
    assert_eq!(proxy.admin_get("/ready").await.status, 200);
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    // Ready means bound: the listener accepts right away.
    let r = Client::h1()
        .get(&format!("http://{listen}/"))
        .await
        .expect("GET");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn prometheus_counters_follow_traffic() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&yaml(&listen, &[&b], None)).await;
    let before = proxy.stats().await;
    let c = Client::h1();
    for i in 0..10 {
        let r = c.get(&format!("http://{listen}/{i}")).await.expect("GET");
        assert_eq!(r.status, 200);
    }
    let r = c
        .get(&format!("http://{listen}/err?status=503"))
        .await
        .expect("GET");
    assert_eq!(r.status, 503);

    let cx0 = before.get("ferry_downstream_cx_total", &[]);
    let rq0 = before.get("ferry_downstream_rq_total", &[]);
    let ok0 = before.get(
        "ferry_upstream_rq_total",
        &[("cluster", "backend"), ("class", "2xx")],
    );
    let err0 = before.get(
        "ferry_upstream_rq_total",
        &[("cluster", "backend"), ("class", "5xx")],
    );
    let mut last = String::new();
    eventually!(Duration::from_secs(5), "the counters catch up", {
        let s = proxy.stats().await;
        last = s.text.clone();
        s.get("ferry_downstream_cx_total", &[]) >= cx0 + 1.0
            && s.get("ferry_downstream_rq_total", &[]) >= rq0 + 11.0
            && s.get(
                "ferry_upstream_rq_total",
                &[("cluster", "backend"), ("class", "2xx")],
            ) >= ok0 + 10.0
            && s.get(
                "ferry_upstream_rq_total",
                &[("cluster", "backend"), ("class", "5xx")],
            ) >= err0 + 1.0
    });
    // Exact: nothing else sent traffic.
    let s = proxy.stats().await;
    assert_eq!(
        s.get(
            "ferry_upstream_rq_total",
            &[("cluster", "backend"), ("class", "2xx")]
        ),
        ok0 + 10.0,
        "{last}"
    );
}

#[tokio::test]
async fn config_dump_reflects_the_running_config() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&yaml(&listen, &[&a], None)).await;
    let dump = proxy.config_dump().await;
    assert_eq!(dump["listeners"][0]["name"], "http", "{dump}");
    assert_eq!(dump["listeners"][0]["address"], listen.as_str(), "{dump}");
    assert_eq!(dump["listeners"][0]["route_config"], "local", "{dump}");
    assert_eq!(dump["clusters"][0]["name"], "backend", "{dump}");
    assert_eq!(
        dump["clusters"][0]["endpoints"][0]["address"],
        a.address().as_str(),
        "{dump}"
    );
    let route = &dump["routes"][0]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["match"]["prefix"], "/", "{dump}");
    assert_eq!(route["route"]["cluster"], "backend", "{dump}");
    assert_eq!(route["route"]["timeout"], "2s", "{dump}");

    proxy.reload(&yaml(&listen, &[&b], None)).await;
    let dump = proxy.config_dump().await;
    assert_eq!(
        dump["clusters"][0]["endpoints"][0]["address"],
        b.address().as_str(),
        "config_dump after reload: {dump}"
    );
}

#[tokio::test]
async fn clusters_lists_endpoints() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&yaml(&listen, &[&a, &b], None)).await;
    let text = proxy.admin_get("/clusters").await;
    assert_eq!(text.status, 200);
    let text = text.text();
    for needle in ["backend", &a.address(), &b.address()] {
        assert!(text.contains(needle), "/clusters lacks {needle}:\n{text}");
    }
    let json = proxy.admin_get("/clusters?format=json").await;
    assert_eq!(json.status, 200);
    let value: serde_json::Value = serde_json::from_slice(&json.body)
        .unwrap_or_else(|e| panic!("/clusters?format=json is not JSON ({e}): {}", json.text()));
    let flat = value.to_string();
    for needle in ["backend", &a.address(), &b.address()] {
        assert!(
            flat.contains(needle),
            "JSON /clusters lacks {needle}: {flat}"
        );
    }
}

#[tokio::test]
async fn access_log_writes_one_json_object_per_request() {
    let b = Backend::start("b").await;
    let dir = TestDir::new("access-log");
    let log_path = dir.file("access.log");
    let listen = free_addr().to_string();
    let _proxy = Proxy::start(&yaml(&listen, &[&b], Some(&log_path))).await;
    let c = Client::h1();
    let req = Request::post(format!("http://{listen}/al?x=1"))
        .header("x-request-id", "test-id-1")
        .header("host", "example.com")
        .body(full("abc"))
        .expect("request");
    let r = c.send(req).await.expect("POST");
    assert_eq!(r.status, 200);
    let sent = r.body.len() as u64;
    for i in 0..2 {
        c.get(&format!("http://{listen}/more/{i}"))
            .await
            .expect("GET");
    }

    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually!(Duration::from_secs(10), "three access-log lines", {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let complete: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if complete.len() >= 3 && text.ends_with('\n') {
            lines = complete
                .iter()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("access-log line is not JSON ({e}): {l}"))
                })
                .collect();
            true
        } else {
            false
        }
    });
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    let fields = [
        "start_time",
        "method",
        "authority",
        "path",
        "protocol",
        "status",
        "bytes_received",
        "bytes_sent",
        "duration_ms",
        "upstream_cluster",
        "upstream_host",
        "request_id",
        "downstream_remote",
        "response_flags",
    ];
    for line in &lines {
        for f in fields {
            assert!(line.get(f).is_some(), "field {f} missing: {line}");
        }
    }
    let post = lines
        .iter()
        .find(|l| l["request_id"] == "test-id-1")
        .unwrap_or_else(|| panic!("no line with request_id test-id-1: {lines:?}"));
    assert_eq!(post["method"], "POST");
    assert_eq!(post["authority"], "example.com");
    assert!(
        post["path"].as_str().unwrap_or("").starts_with("/al"),
        "{post}"
    );
    assert!(
        post["protocol"].as_str().unwrap_or("").contains("1.1"),
        "{post}"
    );
    assert_eq!(post["status"], 200);
    assert_eq!(post["bytes_received"], 3);
    assert_eq!(post["bytes_sent"].as_u64(), Some(sent), "{post}");
    assert!(post["duration_ms"].is_number(), "{post}");
    assert_eq!(post["upstream_cluster"], "backend");
    assert_eq!(post["upstream_host"], b.address().as_str());
    assert!(
        post["downstream_remote"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1"),
        "{post}"
    );
    assert!(post["start_time"].is_string(), "{post}");
}
