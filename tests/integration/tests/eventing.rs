//! The eventing broker end to end: `ferry-control serve --broker-config`,
//! the Python CloudEvents SDK as a third-party producer (and parser of what
//! subscribers got), a recording subscriber in this process, raw HTTP for
//! malformed input, and `kill -9` under load.
//!
//! The SDK lives in `target/pyenv` (created by `.ci/run`); without it the
//! tests that need it fail with the command that installs it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_integration_tests::TestDir;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

// Each test binary uses a part of the shared helpers.
#[allow(dead_code)]
#[path = "eventing/support.rs"]
#[macro_use]
mod support;

use support::{http_post_or_get, Backend, Ferry, Got, Subscriber};

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join("target/pyenv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: the Python CloudEvents SDK is needed. Create it with\n  \
         python3 -m venv target/pyenv && target/pyenv/bin/pip install cloudevents==1.11.0\n\
         (bash .ci/run does this)",
        py.display()
    );
    py
}

fn ce_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/ce_tool.py")
}

async fn run_py(args: &[&str]) {
    let out = tokio::process::Command::new(python())
        .arg(ce_tool())
        .args(args)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "ce_tool.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn dump_received(got: &[Got], path: &std::path::Path) {
    let list: Vec<serde_json::Value> = got
        .iter()
        .map(|g| {
            let headers: serde_json::Map<String, serde_json::Value> = g
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        serde_json::Value::String(
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        ),
                    )
                })
                .collect();
            serde_json::json!({"headers": headers, "body_hex": hex(&g.body)})
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&list).expect("json")).expect("write");
}

fn broker_yaml(triggers: &[(&str, &str, &str)]) -> String {
    // (name, subscriber url, extra spec YAML indented by 2)
    let mut y = String::from(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: ns}\n",
    );
    for (name, url, extra) in triggers {
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}, namespace: ns}}\n\
             spec:\n  broker: default\n  subscriber: {{uri: \"{url}\"}}\n{extra}"
        ));
    }
    y
}

/// id, type, source, region (if any), qty, has the `vip` extension.
type TestEvent = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    bool,
);

// ---- tests ------------------------------------------------------------------

both!(
    content_modes_round_trip_byte_exact_with_the_python_sdk,
    content_modes_round_trip_byte_exact_with_the_python_sdk_on_jetstream,
    content_modes
);
both!(
    malformed_input_gets_the_right_status,
    malformed_input_gets_the_right_status_on_jetstream,
    malformed_input
);
both!(
    every_filter_kind_routes_events,
    every_filter_kind_routes_events_on_jetstream,
    filter_kinds
);
both!(
    retries_back_off_then_dead_letter_with_error_extensions,
    retries_back_off_then_dead_letter_with_error_extensions_on_jetstream,
    retries_and_dead_letters
);
both!(
    replies_are_fed_back_to_the_broker,
    replies_are_fed_back_to_the_broker_on_jetstream,
    replies
);
both!(
    kill_9_under_load_loses_no_accepted_event,
    kill_9_under_load_loses_no_accepted_event_on_jetstream,
    kill_9_under_load
);

async fn content_modes(backend: Backend) {
    python();
    let sub = Subscriber::start().await;
    let ferry = Ferry::start(backend, &broker_yaml(&[("all", &sub.url("/all"), "")])).await;
    let dir = TestDir::new("ce-modes");
    let url = ferry.url("/ns/default");
    let mut total = 0;
    for mode in ["binary", "structured", "batch"] {
        let expected = dir.path().join(format!("{mode}.json"));
        run_py(&[
            "send",
            &url,
            mode,
            "12",
            mode,
            expected.to_str().expect("path"),
        ])
        .await;
        total += 12;
        sub.wait_count("/all", total, Duration::from_secs(10)).await;
        let got: Vec<Got> = sub
            .got("/all")
            .into_iter()
            .filter(|g| {
                g.headers
                    .get("ce-id")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|id| id.starts_with(&format!("{mode}-")))
            })
            .collect();
        let received = dir.path().join(format!("{mode}-received.json"));
        dump_received(&got, &received);
        run_py(&[
            "check",
            expected.to_str().expect("path"),
            received.to_str().expect("path"),
        ])
        .await;
    }
}

async fn malformed_input(backend: Backend) {
    let sub = Subscriber::start().await;
    let ferry = Ferry::start(backend, &broker_yaml(&[("all", &sub.url("/all"), "")])).await;
    let url = ferry.url("/ns/default");
    let ce = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (ce[1..].to_vec(), "specversion"),
        (vec![ce[0], ce[2], ce[3]], "id"),
        (vec![ce[0], ce[1], ce[3]], "source"),
        (vec![ce[0], ce[1], ce[2]], "type"),
        (
            vec![("ce-specversion", "0.3"), ce[1], ce[2], ce[3]],
            "specversion",
        ),
        (
            vec![ce[0], ce[1], ("ce-source", "not a uri"), ce[3]],
            "source",
        ),
        ([&ce[..], &[("ce-time", "yesterday")]].concat(), "time"),
        ([&ce[..], &[("ce-Bad_Name", "x")]].concat(), "bad_name"),
        (
            [&ce[..], &[("ce-dataschema", "relative/path")]].concat(),
            "dataschema",
        ),
    ];
    for (headers, attr) in cases {
        let (status, _, body) = http_post_or_get(Method::POST, &url, &headers, Bytes::new())
            .await
            .expect("post");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{headers:?}: {text}");
        assert!(text.contains(&format!("\"{attr}\"")), "{attr}: {text}");
    }
    let structured = [("content-type", "application/cloudevents+json")];
    let (status, _, body) = http_post_or_get(
        Method::POST,
        &url,
        &structured,
        Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#),
    )
    .await
    .expect("post");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = http_post_or_get(
        Method::POST,
        &url,
        &structured,
        Bytes::from_static(b"{not json"),
    )
    .await
    .expect("post");
    assert_eq!(status, 400);
    let (status, _, _) =
        http_post_or_get(Method::POST, &ferry.url("/ns/missing"), &ce, Bytes::new())
            .await
            .expect("post");
    assert_eq!(status, 404);
    let (status, headers, _) = http_post_or_get(Method::PUT, &url, &ce, Bytes::new())
        .await
        .expect("put");
    assert_eq!(status, 405);
    assert_eq!(
        headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );
    let (status, _, _) = http_post_or_get(Method::GET, &url, &[], Bytes::new())
        .await
        .expect("get");
    assert_eq!(status, 405);
    // Over the 4 MiB limit. Raw TCP: the broker answers 413 from the
    // Content-Length without reading the body, and an HTTP client still
    // writing the body may see the close before the answer.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(ferry.broker)
            .await
            .expect("connect");
        let head = format!(
            "POST /ns/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: big\r\n\
             ce-source: /s\r\nce-type: t\r\ncontent-length: {}\r\n\r\n",
            5 << 20
        );
        s.write_all(head.as_bytes()).await.expect("write head");
        let _ = s.write_all(&[b'x'; 4096]).await;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    }
    // Nothing invalid reached the subscriber; a valid one still does.
    let (status, _, _) = http_post_or_get(Method::POST, &url, &ce, Bytes::from_static(b"ok"))
        .await
        .expect("post");
    assert_eq!(status, 202);
    sub.wait_count("/all", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.got("/all").len(), 1);
}

async fn filter_kinds(backend: Backend) {
    let sub = Subscriber::start().await;
    let f = |s: &str| s.to_owned();
    let triggers = [
        ("attrs", f("  filter: {attributes: {type: com.example.order, region: \"\"}}\n")),
        ("exact", f("  filters: [{exact: {type: com.example.order}}]\n")),
        ("prefix", f("  filters: [{prefix: {type: com.example.}}]\n")),
        ("suffix", f("  filters: [{suffix: {source: /eu}}]\n")),
        ("all", f("  filters: [{all: [{prefix: {type: com.}}, {suffix: {source: /us}}]}]\n")),
        ("any", f("  filters: [{any: [{exact: {region: ap}}, {exact: {type: other}}]}]\n")),
        ("not", f("  filters: [{not: {prefix: {type: com.example.}}}]\n")),
        (
            "cesql",
            f("  filters: [{cesql: \"region LIKE 'e%' AND (LENGTH(id) = 2 OR EXISTS vip) AND INT(qty) * 2 > 10\"}]\n"),
        ),
    ];
    let urls: Vec<String> = triggers
        .iter()
        .map(|(n, _)| sub.url(&format!("/{n}")))
        .collect();
    let spec: Vec<(&str, &str, &str)> = triggers
        .iter()
        .zip(&urls)
        .map(|((n, extra), u)| (*n, u.as_str(), extra.as_str()))
        .collect();
    let ferry = Ferry::start(backend, &broker_yaml(&spec)).await;
    let url = ferry.url("/ns/default");
    // id, type, source, region (or none), qty, vip
    let events: [TestEvent; 6] = [
        (
            "e1",
            "com.example.order",
            "/shop/eu",
            Some("eu"),
            "6",
            false,
        ),
        ("e2", "com.example.order", "/shop/us", None, "1", false),
        (
            "e3",
            "com.example.refund",
            "/shop/us",
            Some("ap"),
            "9",
            false,
        ),
        ("e4", "other", "/x/eu", Some("eu"), "4", true),
        (
            "e5x",
            "com.example.order",
            "/shop/eu",
            Some("eu"),
            "7",
            true,
        ),
        (
            "e6x",
            "com.example.order",
            "/shop/eu",
            Some("eu"),
            "7",
            false,
        ),
    ];
    for (id, ty, src, region, qty, vip) in events {
        let mut h = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-type", ty),
            ("ce-source", src),
            ("ce-qty", qty),
        ];
        if let Some(r) = region {
            h.push(("ce-region", r));
        }
        if vip {
            h.push(("ce-vip", "yes"));
        }
        let (status, _, _) = http_post_or_get(Method::POST, &url, &h, Bytes::new())
            .await
            .expect("post");
        assert_eq!(status, 202);
    }
    let want: [(&str, &[&str]); 8] = [
        ("attrs", &["e1", "e5x", "e6x"]),
        ("exact", &["e1", "e2", "e5x", "e6x"]),
        ("prefix", &["e1", "e2", "e3", "e5x", "e6x"]),
        ("suffix", &["e1", "e4", "e5x", "e6x"]),
        ("all", &["e2", "e3"]),
        ("any", &["e3", "e4"]),
        ("not", &["e4"]),
        ("cesql", &["e1", "e5x"]),
    ];
    for (path, ids) in want {
        let p = format!("/{path}");
        sub.wait_count(&p, ids.len(), Duration::from_secs(10)).await;
    }
    // Everything is in: give stragglers a moment, then compare exactly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (path, ids) in want {
        let got = sub.ids(&format!("/{path}"));
        let want: HashSet<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(got, want, "trigger {path}");
    }
}

async fn retries_and_dead_letters(backend: Backend) {
    let sub = Subscriber::start().await;
    sub.answer("/fail", 500, &[], b"boom");
    let extra = format!(
        "  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT0.2S\n    deadLetterSink: {{uri: \"{}\"}}\n",
        sub.url("/dls")
    );
    let extra_exp =
        "  delivery:\n    retry: 2\n    backoffPolicy: exponential\n    backoffDelay: PT0.1S\n";
    let fail_url = sub.url("/fail");
    let exp_url = sub.url("/fail-exp");
    sub.answer("/fail-exp", 503, &[], b"");
    let ferry = Ferry::start(
        backend,
        &broker_yaml(&[("lin", &fail_url, &extra), ("exp", &exp_url, extra_exp)]),
    )
    .await;
    let ce = [
        ("ce-specversion", "1.0"),
        ("ce-id", "r1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("content-type", "text/plain"),
    ];
    let (status, _, _) = http_post_or_get(
        Method::POST,
        &ferry.url("/ns/default"),
        &ce,
        Bytes::from_static(b"data"),
    )
    .await
    .expect("post");
    assert_eq!(status, 202);
    sub.wait_count("/dls", 1, Duration::from_secs(10)).await;
    sub.wait_count("/fail-exp", 3, Duration::from_secs(10))
        .await;

    let tries = sub.got("/fail");
    assert_eq!(tries.len(), 4, "1 try + 3 retries");
    // Linear: 200, 400, 600 ms between tries.
    for (n, pair) in tries.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let want = Duration::from_millis(200 * (n as u64 + 1));
        assert!(
            gap >= want && gap < want + Duration::from_millis(250),
            "retry {}: {gap:?} vs {want:?}",
            n + 1
        );
    }
    let exp = sub.got("/fail-exp");
    // Exponential: 200, 400 ms (delay × 2^n).
    for (n, pair) in exp.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let want = Duration::from_millis(100 << (n + 1));
        assert!(
            gap >= want && gap < want + Duration::from_millis(250),
            "exp retry {}: {gap:?} vs {want:?}",
            n + 1
        );
    }
    let dls = &sub.got("/dls")[0];
    let h = |k: &str| {
        dls.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    assert_eq!(h("ce-id").as_deref(), Some("r1"));
    assert_eq!(h("ce-knativeerrordest"), Some(fail_url.clone()));
    assert_eq!(h("ce-knativeerrorcode").as_deref(), Some("500"));
    assert_eq!(h("ce-knativeerrordata").as_deref(), Some("Ym9vbQ=="));
    assert_eq!(h("content-type").as_deref(), Some("text/plain"));
    assert_eq!(dls.body.as_ref(), b"data");
    // No DLS on "exp": dropped after its retries, and logged as such.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sub.got("/fail-exp").len(), 3);
}

async fn replies(backend: Backend) {
    let sub = Subscriber::start().await;
    sub.answer(
        "/orders",
        200,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "receipt-1"),
            ("ce-source", "/billing"),
            ("ce-type", "com.example.receipt"),
            ("content-type", "application/json"),
        ],
        br#"{"paid":true}"#,
    );
    sub.answer(
        "/structured-reply",
        202,
        &[("content-type", "application/cloudevents+json")],
        br#"{"specversion":"1.0","id":"audit-1","source":"/audit","type":"com.example.audited"}"#,
    );
    let orders = sub.url("/orders");
    let receipts = sub.url("/receipts");
    let audit = sub.url("/structured-reply");
    let audited = sub.url("/audited");
    let ferry = Ferry::start(
        backend,
        &broker_yaml(&[
            (
                "orders",
                &orders,
                "  filter: {attributes: {type: com.example.order}}\n",
            ),
            (
                "receipts",
                &receipts,
                "  filter: {attributes: {type: com.example.receipt}}\n",
            ),
            (
                "audit",
                &audit,
                "  filter: {attributes: {type: com.example.receipt}}\n",
            ),
            (
                "audited",
                &audited,
                "  filter: {attributes: {type: com.example.audited}}\n",
            ),
        ]),
    )
    .await;
    let ce = [
        ("ce-specversion", "1.0"),
        ("ce-id", "o1"),
        ("ce-source", "/shop"),
        ("ce-type", "com.example.order"),
    ];
    let (status, _, _) =
        http_post_or_get(Method::POST, &ferry.url("/ns/default"), &ce, Bytes::new())
            .await
            .expect("post");
    assert_eq!(status, 202);
    sub.wait_count("/receipts", 1, Duration::from_secs(10))
        .await;
    sub.wait_count("/audited", 1, Duration::from_secs(10)).await;
    let r = &sub.got("/receipts")[0];
    assert_eq!(
        r.headers.get("ce-id").map(|v| v.as_bytes()),
        Some(&b"receipt-1"[..])
    );
    assert_eq!(r.body.as_ref(), br#"{"paid":true}"#);
    // The subscriber of "orders" got the order once; a 2xx reply is success.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.got("/orders").len(), 1);
}

async fn kill_9_under_load(backend: Backend) {
    const N: usize = 10_000;
    let sub = Subscriber::start().await;
    let mut ferry = Ferry::start(backend, &broker_yaml(&[("all", &sub.url("/all"), "")])).await;
    let url = ferry.url("/ns/default");
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..32 {
        let (url, accepted, next) = (url.clone(), accepted.clone(), next.clone());
        producers.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= N {
                    return;
                }
                let id = format!("load-{i}");
                let req = Request::post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/load")
                    .header("ce-type", "load")
                    .body(Full::new(Bytes::from(format!("payload {i}"))))
                    .expect("req");
                // Connection errors while the broker is down are expected;
                // those events simply were not accepted.
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(5), client.request(req)).await
                {
                    if r.status() == StatusCode::ACCEPTED {
                        accepted.lock().expect("lock").push(id);
                    }
                }
            }
        }));
    }
    // Kill while the load is running.
    let start = Instant::now();
    while accepted.lock().expect("lock").len() < N / 3 && start.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ferry.kill_9_and_restart().await;
    for p in producers {
        p.await.expect("producer");
    }
    let accepted: Vec<String> = accepted.lock().expect("lock").clone();
    assert!(accepted.len() > N / 3, "only {} accepted", accepted.len());
    let start = Instant::now();
    loop {
        let got = sub.ids("/all");
        let missing: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} of {} accepted events never delivered, e.g. {:?}",
            missing.len(),
            accepted.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "accepted {} of {N}; delivered {} requests (duplicates after the restart are allowed)",
        accepted.len(),
        sub.got("/all").len()
    );
}
