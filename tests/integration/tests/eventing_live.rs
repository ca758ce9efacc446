//! Brokers and Triggers from the store, end to end with real processes:
//! `ferry-control apply / get / delete` against `ferry-control serve`
//! change the running broker live (on both storage backends), it survives
//! `kill -9`, its per-trigger metrics move on `/metrics`, and a trigger
//! whose subscriber is a `ref` to a Service at zero activates it through
//! the gateway of `ferry-control up`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_integration_tests::{binary_path, free_addr, TestDir};
use http::Method;
use serde_json::Value;

// Each test binary uses a part of the shared helpers.
#[allow(dead_code)]
#[path = "eventing/support.rs"]
#[macro_use]
mod support;

use support::{http_post_or_get, Backend, Ferry, Subscriber};

const BROKER: &str = "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: ns}
";

/// A Trigger of broker `ns/default`; `spec` is the rest of its spec, each
/// line indented by two spaces.
fn trigger(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}, namespace: ns}}\n\
         spec:\n  broker: default\n{spec}"
    )
}

async fn get_json(url: &str) -> Value {
    match http_post_or_get(Method::GET, url, &[], Bytes::new()).await {
        Ok((200, _, body)) => serde_json::from_slice(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Polls (bounded) until the object's status reports Ready=True for its
/// current generation; returns the object.
async fn wait_ready(api: &str, path: &str, cap: Duration) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < cap {
        last = get_json(&format!("{api}{path}")).await;
        let ready = last["status"]["conditions"][0]["status"] == "True";
        let current = last["status"]["observedGeneration"] == last["metadata"]["generation"];
        if ready && current {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} not ready within {cap:?}: {last}");
}

async fn post_event(url: &str, id: &str, ty: &str, body: &'static [u8]) -> u16 {
    let h = [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/live"),
        ("ce-type", ty),
        ("content-type", "text/plain"),
    ];
    http_post_or_get(Method::POST, url, &h, Bytes::from_static(body))
        .await
        .map(|(s, _, _)| s)
        .unwrap_or_else(|e| panic!("POST {url}: {e:#}"))
}

/// The value of one sample line of a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

both!(
    apply_get_delete_drive_the_running_broker,
    apply_get_delete_drive_the_running_broker_on_jetstream,
    live
);

async fn live(backend: Backend) {
    let sub = Subscriber::start().await;
    sub.answer("/stuck", 500, &[], b"down");
    let mut ferry = Ferry::start_empty(backend).await;
    let api = format!("http://{}", ferry.api);
    let cap = Duration::from_secs(10);

    // A Broker applied: the ingress answers for it.
    let (ok, out, err) = ferry.apply("broker.yaml", BROKER);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("broker.eventing.knative.dev/default created"),
        "{out}"
    );
    let b = wait_ready(&api, "/v1/namespaces/ns/brokers/default", cap).await;
    assert_eq!(b["status"]["address"]["url"], ferry.url("/ns/default"));
    let (ok, out, _) = ferry.cli(&["get", "brokers", "-n", "ns"]);
    assert!(
        ok && out.contains(&ferry.url("/ns/default")) && out.contains("True"),
        "{out}"
    );
    let ingress = ferry.url("/ns/default");
    assert_eq!(post_event(&ingress, "e0", "t", b"zero").await, 202);

    // Invalid specs: 400 naming the field; nothing stored.
    for (spec, field) in [
        (
            "  subscriber: {uri: 'http://127.0.0.1:1/'}\n  filters: [{cesql: \"type = \"}]\n",
            "spec.filters[0].cesql",
        ),
        (
            "  subscriber: {uri: 'http://127.0.0.1:1/'}\n  filters: [{exact: {Type: a}}]\n",
            "spec.filters[0].exact.Type",
        ),
        (
            "  subscriber: {uri: 'http://127.0.0.1:1/'}\n  delivery: {backoffDelay: 5s}\n",
            "spec.delivery.backoffDelay",
        ),
    ] {
        let (ok, out, err) = ferry.apply("bad.yaml", &trigger("bad", spec));
        assert!(!ok, "{spec}: {out}");
        assert!(err.contains(field), "{field}: {err}");
    }
    let (ok, _, err) = ferry.apply(
        "bad.yaml",
        &trigger("bad", "  subscriber: {uri: 'http://127.0.0.1:1/'}\n")
            .replace("broker: default", "broker: nope"),
    );
    assert!(!ok && err.contains("spec.broker"), "{err}");
    let (_, out, err) = ferry.cli(&["get", "triggers", "-n", "ns"]);
    assert!(err.contains("No resources found"), "{out}{err}");

    // Two triggers: "all" (a barrier that sees everything) and "t", whose
    // subscriber fails, so its event stays in retries.
    let all = sub.url("/all");
    let stuck = sub.url("/stuck");
    let t_spec = |url: &str| {
        format!(
            "  subscriber: {{uri: '{url}'}}\n  delivery: {{retry: 1000, backoffPolicy: linear, backoffDelay: PT0.05S}}\n"
        )
    };
    let both_triggers = format!(
        "{}---\n{}",
        trigger("all", &format!("  subscriber: {{uri: '{all}'}}\n")),
        trigger("t", &t_spec(&stuck))
    );
    let (ok, out, err) = ferry.apply("triggers.yaml", &both_triggers);
    assert!(ok, "{out}{err}");
    for t in ["all", "t"] {
        let v = wait_ready(&api, &format!("/v1/namespaces/ns/triggers/{t}"), cap).await;
        assert!(v["status"]["subscriberUri"].is_string(), "{v}");
    }
    assert_eq!(post_event(&ingress, "e1", "t", b"one").await, 202);
    sub.wait_count("/all", 1, cap).await;
    // Created after e0: neither trigger saw it.
    assert_eq!(sub.ids("/all"), ["e1".to_owned()].into());
    sub.wait_count("/stuck", 2, cap).await;

    // The subscriber changes: the stuck event goes to the new one, from
    // the trigger's cursor.
    let good = sub.url("/good");
    let (ok, out, err) = ferry.apply("t.yaml", &trigger("t", &t_spec(&good)));
    assert!(ok && out.contains("configured"), "{out}{err}");
    let v = wait_ready(&api, "/v1/namespaces/ns/triggers/t", cap).await;
    assert_eq!(v["status"]["subscriberUri"], good.as_str());
    sub.wait_count("/good", 1, cap).await;
    assert_eq!(sub.ids("/good"), ["e1".to_owned()].into());
    let (ok, out, _) = ferry.cli(&["get", "triggers", "-n", "ns"]);
    assert!(ok && out.contains(&good), "{out}");

    // The metrics moved, per trigger.
    let t = "{broker=\"default\",namespace=\"ns\",trigger=\"t\"}";
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < cap {
        let (_, _, body) =
            http_post_or_get(Method::GET, &ferry.api_url("/metrics"), &[], Bytes::new())
                .await
                .expect("metrics");
        text = String::from_utf8_lossy(&body).into_owned();
        if sample(&text, &format!("ferry_trigger_cursor_lag_events{t}")) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(m(&format!("ferry_trigger_events_delivered_total{t}")), 1.0);
    assert!(m(&format!("ferry_trigger_delivery_failures_total{t}")) >= 2.0);
    assert!(m(&format!("ferry_trigger_retries_total{t}")) >= 1.0);
    assert_eq!(m(&format!("ferry_trigger_cursor_lag_events{t}")), 0.0);
    assert_eq!(m(&format!("ferry_trigger_delivery_seconds_count{t}")), 1.0);
    assert_eq!(m(&format!("ferry_trigger_events_dropped_total{t}")), 0.0);
    assert_eq!(
        m("ferry_broker_events_accepted_total{broker=\"default\",namespace=\"ns\"}"),
        2.0
    );
    assert_eq!(
        m("ferry_broker_append_seconds_count{broker=\"default\",namespace=\"ns\"}"),
        2.0
    );

    // Deleted trigger: its dispatcher stops (the barrier gets e2, "t"'s
    // subscriber does not) and its series go.
    let (ok, out, err) = ferry.cli(&["delete", "trigger", "t", "-n", "ns"]);
    assert!(ok, "{out}{err}");
    let metrics_url = ferry.api_url("/metrics");
    ferry_integration_tests::eventually!(cap, "trigger t gone from /metrics", {
        let (_, _, body) = http_post_or_get(Method::GET, &metrics_url, &[], Bytes::new())
            .await
            .expect("metrics");
        !String::from_utf8_lossy(&body).contains("trigger=\"t\"")
    });
    if backend == Backend::Embedded {
        let cursor = ferry
            .data_dir()
            .join("eventing/ns/default/cursors/ns.t.json");
        assert!(!cursor.exists(), "{}", cursor.display());
    }
    assert_eq!(post_event(&ingress, "e2", "t", b"two").await, 202);
    sub.wait_count("/all", 2, cap).await;

    // kill -9: brokers, triggers and cursors come back from the data
    // directory (or JetStream).
    ferry.kill_9_and_restart().await;
    wait_ready(&api, "/v1/namespaces/ns/brokers/default", cap).await;
    wait_ready(&api, "/v1/namespaces/ns/triggers/all", cap).await;
    assert_eq!(post_event(&ingress, "e3", "t", b"three").await, 202);
    ferry_integration_tests::eventually!(cap, "e3 after the restart", {
        sub.ids("/all").contains("e3")
    });
    assert_eq!(sub.ids("/good"), ["e1".to_owned()].into());

    // Deleted broker: 404 at ingress; its trigger says why it waits.
    let (ok, out, err) = ferry.cli(&["delete", "broker", "default", "-n", "ns"]);
    assert!(ok, "{out}{err}");
    ferry_integration_tests::eventually!(cap, "ingress 404", {
        post_event(&ingress, "e4", "t", b"four").await == 404
    });
    let all_url = format!("{api}/v1/namespaces/ns/triggers/all");
    ferry_integration_tests::eventually!(cap, "trigger all says its broker is gone", {
        get_json(&all_url).await["status"]["conditions"][0]["reason"] == "BrokerDoesNotExist"
    });
}

// ---- a subscriber at zero ---------------------------------------------------

/// `ferry-control up DIR` (control plane, process scaler, gateway), killed
/// on drop.
struct Up {
    child: Child,
    api: SocketAddr,
    broker: SocketAddr,
    logs: TestDir,
}

impl Up {
    async fn start(manifests: &Path, logs: TestDir) -> Up {
        let (api, broker) = (free_addr(), free_addr());
        let child = Command::new(binary_path("ferry-control"))
            .arg("up")
            .arg(manifests)
            .arg("--data-dir")
            .arg(logs.path().join("data"))
            .args(["--gateway-listen", &free_addr().to_string()])
            .args(["--gateway-admin", &free_addr().to_string()])
            .args(["--xds-listen", &free_addr().to_string()])
            .args(["--api-listen", &api.to_string()])
            .args(["--broker-listen", &broker.to_string()])
            .args(["--autoscaler", "allow-zero-initial-scale=true"])
            .args(["--log", "info"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.path().join("up.out")).expect("stdout"))
            .stderr(std::fs::File::create(logs.path().join("up.err")).expect("stderr"))
            .spawn()
            .expect("spawn ferry-control up");
        let mut up = Up {
            child,
            api,
            broker,
            logs,
        };
        let start = Instant::now();
        while !up.read("up.out").contains("Ferry is up") {
            if let Ok(Some(st)) = up.child.try_wait() {
                panic!("ferry-control up exited ({st})\n{}", up.dump());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ferry-control up not ready\n{}",
                up.dump()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        up
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default()
    }

    fn dump(&self) -> String {
        let err = self.read("up.err");
        let lines: Vec<&str> = err.lines().collect();
        format!(
            "--- stdout\n{}\n--- stderr (tail)\n{}",
            self.read("up.out"),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM lets `up` stop its gateway and instances.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..750 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// The subscriber is a `ref` to a Service whose revision starts at zero:
/// the event goes through the gateway, which holds it while the revision
/// activates; `ferry-hello` answers with a reply event, which comes back
/// through the broker to a second trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_subscriber_at_zero_is_activated_through_the_gateway() {
    let sub = Subscriber::start().await;
    let dir = TestDir::new("eventing-zero");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    let echoes = sub.url("/echoes");
    std::fs::write(
        manifests.join("echo.yaml"),
        format!(
            "apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  template:
    metadata:
      name: echo-v1
      annotations:
        autoscaling.knative.dev/initial-scale: \"0\"
        autoscaling.knative.dev/window: \"6s\"
    spec:
      containers:
        - command: [ferry-hello]
          readinessProbe:
            httpGet: {{path: /healthz}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: to-echo, namespace: default}}
spec:
  broker: default
  filter: {{attributes: {{type: com.example.greeting}}}}
  subscriber:
    ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: echo}}
    uri: /events
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: echoes, namespace: default}}
spec:
  broker: default
  filter: {{attributes: {{type: dev.ferry.hello.echo}}}}
  subscriber: {{uri: '{echoes}'}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: default}}
"
        ),
    )
    .expect("write manifests");
    let up = Up::start(&manifests, dir).await;
    let api = format!("http://{}", up.api);
    let cap = Duration::from_secs(15);
    let t = wait_ready(&api, "/v1/namespaces/default/triggers/to-echo", cap).await;
    assert_eq!(
        t["status"]["subscriberUri"],
        "http://echo.default.example.com/events"
    );
    wait_ready(&api, "/v1/namespaces/default/triggers/echoes", cap).await;
    let rev = get_json(&format!("{api}/v1/namespaces/default/revisions/echo-v1")).await;
    assert_eq!(rev["status"]["actualReplicas"].as_u64(), Some(0), "{rev}");

    let sent = Instant::now();
    let ingress = format!("http://{}/default/default", up.broker);
    assert_eq!(
        post_event(&ingress, "g1", "com.example.greeting", b"hello").await,
        202
    );
    sub.wait_count("/echoes", 1, Duration::from_secs(30)).await;
    let took = sent.elapsed();
    let reply = &sub.got("/echoes")[0];
    let h = |k: &str| {
        reply
            .headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("ce-type"), "dev.ferry.hello.echo");
    assert_eq!(h("ce-id"), "echo-g1");
    assert_eq!(h("ce-source"), "/ferry-hello/echo-v1");
    assert_eq!(reply.body.as_ref(), b"hello");
    println!("event to a subscriber at zero: reply back after {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let rev = get_json(&format!("{api}/v1/namespaces/default/revisions/echo-v1")).await;
    assert!(rev["status"]["actualReplicas"].as_u64() >= Some(1), "{rev}");

    let (_, _, body) = http_post_or_get(Method::GET, &format!("{api}/metrics"), &[], Bytes::new())
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&body);
    let series = "{broker=\"default\",namespace=\"default\",trigger=\"to-echo\"}";
    assert_eq!(
        sample(
            &text,
            &format!("ferry_trigger_events_delivered_total{series}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("ferry_trigger_replies_total{series}")),
        Some(1.0),
        "{text}"
    );
}
