//! Config reload: under load with zero failed requests, with an idle
//! keep-alive connection, on a file change without a signal, a rejected
//! bad config, and `--validate`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_integration_tests::{
    empty, eventually, free_addr, Backend, Client, Proxy, Resp, TestDir,
};
use http::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One route to backend `b` whose responses carry `x-version: VERSION`;
/// `regex` goes into an extra route's path regex.
fn versioned(listen: &str, b: &Backend, version: &str, regex: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, address: "{listen}", route_config: r}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{regex: "{regex}"}}
            direct_response: {{status: 204}}
          - match: {{prefix: /}}
            route: {{cluster: b}}
            response_headers_to_add: [{{name: x-version, value: "{version}", append: false}}]
clusters:
  - name: b
    endpoints: [{{address: "{}"}}]
"#,
        b.addr
    )
}

const GOOD_REGEX: &str = "/never/[0-9]+";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&versioned(&listen, &b, "v0", GOOD_REGEX)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let client = if t % 2 == 0 {
            Client::h1()
        } else {
            Client::h2c()
        };
        let url = format!("http://{listen}/load/{t}");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failures, mut versions) = (0u32, Vec::new(), Vec::new());
            // Bounded in count as well as by the stop flag.
            for i in 0..50_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.get(&url).await {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        let v = r.header("x-version").unwrap_or("").to_string();
                        if versions.last() != Some(&v) {
                            versions.push(v);
                        }
                    }
                    Ok(r) => failures.push(format!("#{i}: status {}", r.status)),
                    Err(e) => failures.push(format!("#{i}: {e:#}")),
                }
            }
            (ok, failures, versions)
        }));
    }
    for v in 1..=5 {
        // Pacing between reloads so traffic runs on every version.
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy
            .reload(&versioned(&listen, &b, &format!("v{v}"), GOOD_REGEX))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    let mut all_failures = Vec::new();
    for t in tasks {
        let (ok, failures, versions) = t.await.expect("load task");
        total += ok;
        all_failures.extend(failures);
        assert_eq!(
            versions.last().map(String::as_str),
            Some("v5"),
            "a client still saw an old version last: {versions:?}"
        );
        assert!(
            versions.len() >= 2,
            "a client never saw a reload: {versions:?}"
        );
    }
    assert!(
        all_failures.is_empty(),
        "{} failed requests during reloads (of {}): {:?}",
        all_failures.len(),
        total as usize + all_failures.len(),
        &all_failures[..all_failures.len().min(10)]
    );
    assert!(total >= 100, "only {total} requests ran");
}

#[tokio::test]
async fn idle_keepalive_connection_survives_reload() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&versioned(&listen, &b, "before", GOOD_REGEX)).await;

    // Exactly one connection, opened before the reload.
    let tcp = TcpStream::connect(&listen).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let get = || {
        Request::get("/idle")
            .header("host", "example.com")
            .body(empty())
            .expect("request")
    };
    let r = Resp::read(send.send_request(get()).await.expect("first request"))
        .await
        .expect("first body");
    assert_eq!(r.header("x-version"), Some("before"));

    proxy
        .reload(&versioned(&listen, &b, "after", GOOD_REGEX))
        .await;

    send.ready()
        .await
        .expect("connection still open after reload");
    let r = Resp::read(
        send.send_request(get())
            .await
            .expect("request after reload"),
    )
    .await
    .expect("second body");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-version"),
        Some("after"),
        "a new request on an old connection uses the new config"
    );
}

#[tokio::test]
async fn file_change_alone_triggers_reload() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&versioned(&listen, &b, "one", GOOD_REGEX)).await;
    let c = Client::h1();
    let url = format!("http://{listen}/");
    assert_eq!(
        c.get(&url).await.expect("GET").header("x-version"),
        Some("one")
    );
    // No SIGHUP: the file is polled every second.
    proxy.write_config(&versioned(&listen, &b, "two", GOOD_REGEX));
    eventually!(Duration::from_secs(10), "the changed file is picked up", {
        c.get(&url)
            .await
            .map(|r| r.header("x-version") == Some("two"))
            .unwrap_or(false)
    });
}

#[tokio::test]
async fn bad_reload_keeps_serving_old_config() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let proxy = Proxy::start(&versioned(&listen, &b, "good", GOOD_REGEX)).await;
    let c = Client::h1();
    let url = format!("http://{listen}/x");

    proxy
        .reload_expect_failure(&versioned(&listen, &b, "bad", "/broken/([0-9]+"))
        .await;
    let failed = proxy
        .stats()
        .await
        .get("ferry_config_reload_total", &[("result", "failed")]);
    assert!(failed >= 1.0, "failed reloads counted: {failed}");
    for _ in 0..5 {
        let r = c.get(&url).await.expect("GET after a bad reload");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-version"), Some("good"));
    }
    // The running config is still the good one, and a fixed file loads.
    let dump = proxy.config_dump().await.to_string();
    assert!(
        dump.contains(GOOD_REGEX) && !dump.contains("broken"),
        "{dump}"
    );
    proxy
        .reload(&versioned(&listen, &b, "fixed", GOOD_REGEX))
        .await;
    let r = c.get(&url).await.expect("GET");
    assert_eq!(r.header("x-version"), Some("fixed"));
}

#[tokio::test]
async fn validate_reports_field_paths_and_exit_codes() {
    let b = Backend::start("b").await;
    let dir = TestDir::new("validate");
    let listen = free_addr().to_string();

    let good = dir.write("good.yaml", &versioned(&listen, &b, "v", GOOD_REGEX));
    let (code, out) = Proxy::validate(&good).await;
    assert_eq!(code, 0, "valid config: {out}");
    assert_eq!(out.trim(), "ok");

    let bad_regex = dir.write(
        "bad-regex.yaml",
        &versioned(&listen, &b, "v", "/broken/([0-9]+"),
    );
    let (code, out) = Proxy::validate(&bad_regex).await;
    assert_eq!(code, 1, "invalid regex: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("routes[0].virtual_hosts[0].routes[0].match.regex: ")),
        "the error names the field path: {out}"
    );

    let unknown_cluster = dir.write(
        "unknown-cluster.yaml",
        &versioned(&listen, &b, "v", GOOD_REGEX)
            .replace("route: {cluster: b}", "route: {cluster: nope}"),
    );
    let (code, out) = Proxy::validate(&unknown_cluster).await;
    assert_eq!(code, 1, "unknown cluster: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("routes[0].virtual_hosts[0].routes[1].route.cluster: ")),
        "the error names the field path: {out}"
    );

    let unknown_field = dir.write(
        "unknown-field.yaml",
        &versioned(&listen, &b, "v", GOOD_REGEX)
            .replace("  - name: b\n", "  - name: b\n    bogus: 1\n"),
    );
    let (code, out) = Proxy::validate(&unknown_field).await;
    assert_eq!(code, 1, "unknown field: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("clusters[0]") && l.contains("bogus")),
        "the error names the field: {out}"
    );
}
