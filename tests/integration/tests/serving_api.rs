//! The serving model end to end: `ferry-control serve --data-dir` with
//! the real CLI applying `examples/hello/service.yaml`, reading services,
//! revisions and routes back over REST and the CLI, a 400 naming the
//! field for percents that do not add up to 100, and everything still
//! there after a restart of `ferry-control`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ferry_integration_tests::{binary_path, free_addr, full, Client, TestDir};
use http::{Method, Request, StatusCode};
use serde_json::Value;

/// A running `ferry-control serve`, killed on drop.
struct ControlPlane {
    child: Child,
    api: SocketAddr,
    log: PathBuf,
}

impl ControlPlane {
    async fn start(data_dir: &Path, logs: &TestDir, run: usize) -> ControlPlane {
        let api = free_addr();
        let log = logs.path().join(format!("ferry-control-{run}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary_path("ferry-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-listen", &api.to_string()])
            .args(["--xds-listen", &free_addr().to_string()])
            .args(["--gateway-listen", &free_addr().to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ferry-control");
        let mut cp = ControlPlane { child, api, log };
        let http = Client::h1_no_pool();
        let url = format!("http://{api}/healthz");
        for _ in 0..500 {
            if let Ok(Some(status)) = cp.child.try_wait() {
                panic!(
                    "ferry-control exited ({status}) before it was ready\n{}",
                    cp.logs()
                );
            }
            if let Ok(r) = http.get(&url).await {
                if r.status == StatusCode::OK {
                    return cp;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ferry-control not ready within 10s\n{}", cp.logs());
    }

    fn server(&self) -> String {
        format!("http://{}", self.api)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as an operator restarting it would; waits for the exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = Client::h1_no_pool()
            .get(&format!("{}{path}", self.server()))
            .await
            .expect("GET");
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("JSON body")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(binary_path("ferry-control"))
        .args(args)
        .output()
        .expect("run ferry-control")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hello/service.yaml")
        .display()
        .to_string()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What must hold before and after the restart.
async fn check_hello(cp: &ControlPlane) -> Value {
    let svc = cp.get_json("/v1/namespaces/default/services/hello").await;
    assert_eq!(svc["status"]["url"], "http://hello.default.example.com");
    assert_eq!(svc["status"]["latestCreatedRevisionName"], "hello-v2");
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-v2");
    assert_eq!(svc["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(svc["status"]["conditions"][0]["status"], "True");

    let revs = cp.get_json("/v1/namespaces/default/revisions").await;
    assert_eq!(names(&revs), ["hello-v1", "hello-v2"]);
    for r in revs["items"].as_array().into_iter().flatten() {
        assert_eq!(r["status"]["actualReplicas"], 0);
        assert_eq!(r["status"]["desiredReplicas"], 0);
        assert_eq!(r["spec"]["containers"][0]["command"][0], "ferry-hello");
    }

    let route = cp.get_json("/v1/namespaces/default/routes/hello").await;
    let traffic = &route["status"]["traffic"];
    assert_eq!(traffic[0]["revisionName"], "hello-v1");
    assert_eq!(traffic[0]["percent"], 90);
    assert_eq!(traffic[1]["revisionName"], "hello-v2");
    assert_eq!(traffic[1]["percent"], 10);
    assert_eq!(traffic[1]["tag"], "candidate");
    assert_eq!(
        traffic[1]["url"],
        "http://candidate-hello.default.example.com"
    );

    // The gateway's xDS follows the model (after the 100 ms debounce):
    // one cluster per revision, one route configuration.
    let want = serde_json::json!(["default/hello-v1", "default/hello-v2"]);
    let mut xds = Value::Null;
    for _ in 0..250 {
        xds = cp.get_json("/v1/xds/snapshot").await;
        if xds["cds"]["resources"] == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(xds["cds"]["resources"], want, "{xds}");
    assert_eq!(xds["eds"]["resources"], want);
    assert_eq!(
        xds["rds"]["resources"],
        serde_json::json!(["ferry-gateway"])
    );
    assert_eq!(
        xds["lds"]["resources"],
        serde_json::json!(["ferry-gateway"])
    );
    svc
}

#[tokio::test]
async fn apply_get_validate_and_survive_a_restart() {
    let dir = TestDir::new("serving-api");
    let data = dir.path().join("data");

    let cp = ControlPlane::start(&data, &dir, 1).await;
    let server = cp.server();

    let out = cli(&["apply", "-f", &example(), "--server", &server]);
    assert!(
        out.status.success(),
        "apply: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        "service.serving.knative.dev/hello created\nservice.serving.knative.dev/hello configured\n"
    );
    let before = check_hello(&cp).await;

    // The CLI's table and -o json read the same objects.
    let out = cli(&["get", "revisions", "--server", &server]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.starts_with("hello-v2"))
        .unwrap_or_else(|| panic!("no hello-v2 row:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..4],
        ["hello-v2", "hello", "10%", "candidate"],
        "{table}"
    );
    let out = cli(&["get", "ksvc", "hello", "-o", "json", "--server", &server]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("get -o json");
    assert_eq!(v["metadata"]["name"], "hello");

    // Percents summing to 90: a 400 naming spec.traffic, nothing changed.
    let bad = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service",
        "metadata":{"name":"hello"},
        "spec":{"template":{"metadata":{"name":"hello-v3"},
                            "spec":{"containers":[{"command":["ferry-hello"]}]}},
                "traffic":[{"revisionName":"hello-v1","percent":80},
                           {"latestRevision":true,"percent":10}]}}"#;
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("{server}/v1/namespaces/default/services/hello"))
        .header("content-type", "application/json")
        .body(full(bad))
        .expect("request");
    let r = Client::h1_no_pool().send(req).await.expect("PUT");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let status: Value = serde_json::from_slice(&r.body).expect("Status JSON");
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.contains("spec.traffic: traffic targets sum to 90, want 100"),
        "{message}"
    );
    assert_eq!(status["details"]["causes"][0]["field"], "spec.traffic");

    // The CLI reports the same error and fails.
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad).expect("write bad manifest");
    let out = cli(&[
        "apply",
        "-f",
        &bad_file.display().to_string(),
        "--server",
        &server,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("spec.traffic"), "{}", stderr(&out));

    // Unknown names are 404s.
    let r = Client::h1_no_pool()
        .get(&format!("{server}/v1/namespaces/default/services/nope"))
        .await
        .expect("GET");
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Restart: everything is still there, unchanged.
    cp.stop();
    let out = cli(&["get", "services", "--server", &server]);
    assert!(!out.status.success(), "the server is down");
    assert!(
        stderr(&out).contains("cannot reach the Ferry API"),
        "{}",
        stderr(&out)
    );

    let cp = ControlPlane::start(&data, &dir, 2).await;
    let after = check_hello(&cp).await;
    assert_eq!(before["metadata"], after["metadata"]);
    assert_eq!(before["spec"], after["spec"]);
    assert_eq!(before["status"], after["status"]);

    // Re-applying the same file after the restart stamps nothing new.
    let out = cli(&["apply", "-f", &example(), "--server", &cp.server()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revs = cp.get_json("/v1/namespaces/default/revisions").await;
    assert_eq!(names(&revs), ["hello-v1", "hello-v2"]);

    let out = cli(&["delete", "service", "hello", "--server", &cp.server()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revs = cp.get_json("/v1/revisions").await;
    assert!(names(&revs).is_empty());
}

/// PUT a Service JSON body; (status, body as JSON).
async fn put_service(cp: &ControlPlane, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "{}/v1/namespaces/default/services/tuned",
            cp.server()
        ))
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .expect("request");
    let r = Client::h1_no_pool().send(req).await.expect("PUT");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn tuned(meta_annotations: &str, template_annotations: &str) -> String {
    format!(
        r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service",
        "metadata":{{"name":"tuned","annotations":{{{meta_annotations}}}}},
        "spec":{{"template":{{"metadata":{{"annotations":{{{template_annotations}}}}},
                            "spec":{{"containers":[{{"command":["ferry-hello"]}}]}}}}}}}}"#
    )
}

/// The autoscaler's per-revision keys Knative has no annotation for are
/// accepted and kept on the revision; invalid values of any autoscaling
/// annotation are a 400 whose causes name each annotation's path.
#[tokio::test]
async fn autoscaling_annotations_are_validated_and_kept() {
    let dir = TestDir::new("serving-annotations");
    let cp = ControlPlane::start(&dir.path().join("data"), &dir, 1).await;

    let good = tuned(
        "",
        r#""autoscaling.knative.dev/scale-to-zero-grace-period":"10s",
           "autoscaling.knative.dev/max-scale-up-rate":"5",
           "autoscaling.knative.dev/max-scale-down-rate":"3",
           "autoscaling.knative.dev/window":"20s""#,
    );
    let (status, body) = put_service(&cp, &good).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rev = cp
        .get_json("/v1/namespaces/default/revisions/tuned-00001")
        .await;
    let anns = &rev["metadata"]["annotations"];
    assert_eq!(
        anns["autoscaling.knative.dev/scale-to-zero-grace-period"],
        "10s"
    );
    assert_eq!(anns["autoscaling.knative.dev/max-scale-up-rate"], "5");
    assert_eq!(anns["autoscaling.knative.dev/max-scale-down-rate"], "3");

    let bad = tuned(
        r#""autoscaling.knative.dev/max-scale-up-rate":"5""#,
        r#""autoscaling.knative.dev/scale-to-zero-grace-period":"0s",
           "autoscaling.knative.dev/max-scale-up-rate":"1",
           "autoscaling.knative.dev/max-scale-down-rate":"fast",
           "autoscaling.knative.dev/window":"5s""#,
    );
    let (status, body) = put_service(&cp, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut fields: Vec<String> = body["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str().map(str::to_string))
        .collect();
    fields.sort();
    let t = "spec.template.metadata.annotations.autoscaling.knative.dev";
    assert_eq!(
        fields,
        [
            "metadata.annotations.autoscaling.knative.dev/max-scale-up-rate".to_string(),
            format!("{t}/max-scale-down-rate"),
            format!("{t}/max-scale-up-rate"),
            format!("{t}/scale-to-zero-grace-period"),
            format!("{t}/window"),
        ],
        "{body}"
    );
    // Nothing changed.
    let rev = cp
        .get_json("/v1/namespaces/default/revisions/tuned-00001")
        .await;
    assert_eq!(
        rev["metadata"]["annotations"]["autoscaling.knative.dev/window"],
        "20s"
    );
}
