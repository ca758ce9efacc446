//! The controller over a real store and real logs, with the subscriber side
//! faked (a recording [`Sender`]) and the ingress a real socket.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::HeaderMap;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::Registry;

use super::*;
use crate::eventing::broker::BrokerOptions;
use crate::eventing::config::Resolver;
use crate::eventing::delivery::{HttpResponse, Sender, TokioSleeper};
use crate::eventing::metrics::EventingMetrics;
use crate::model::{manifest, FieldErrors};
use crate::store::testing::TestDir;
use crate::store::{FileStore, Runtime};

/// One delivery: (url, Host header, ce-id).
type Got = (String, Option<String>, String);

#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Got>>,
    /// URLs that never answer (a hung subscriber).
    hung: Mutex<Vec<String>>,
}

impl Sender for Recorder {
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        _body: Bytes,
        _timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<HttpResponse, String>> {
        let s = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.got.lock().expect("lock").push((
            url.to_owned(),
            s("host"),
            s("ce-id").unwrap_or_default(),
        ));
        if self.hung.lock().expect("lock").iter().any(|h| h == url) {
            return futures_util::future::pending().boxed();
        }
        async {
            Ok(HttpResponse {
                status: 200,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            })
        }
        .boxed()
    }
}

impl Recorder {
    fn ids_to(&self, url: &str) -> Vec<String> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|g| g.0 == url)
            .map(|g| g.2.clone())
            .collect()
    }
}

struct Fixture {
    serving: Arc<Serving>,
    controller: Controller,
    recorder: Arc<Recorder>,
    registry: Registry,
    shutdown: watch::Sender<bool>,
}

fn fixture(dir: &TestDir) -> Fixture {
    let store = FileStore::open(&dir.path().join("store")).unwrap_or_else(|e| panic!("{e}"));
    let serving = Arc::new(Serving::new(
        Arc::new(store),
        Arc::new(Runtime::new()),
        "example.com",
    ));
    let resolver = Resolver {
        domain: "example.com".into(),
        gateway: "127.0.0.1:8080".into(),
    };
    let mut opts = BrokerOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().join("eventing"),
        resolver,
    );
    opts.persist_every = Duration::from_millis(10);
    let registry = Registry::new();
    let recorder = Arc::new(Recorder::default());
    let (shutdown, rx) = watch::channel(false);
    let eventing = Eventing::with_io(
        opts,
        EventingMetrics::new(&registry),
        recorder.clone(),
        Arc::new(TokioSleeper),
        rx,
    );
    Fixture {
        controller: Controller::new(serving.clone(), eventing),
        serving,
        recorder,
        registry,
        shutdown,
    }
}

async fn apply(s: &Serving, yaml: &str) -> Result<(), FieldErrors> {
    for m in manifest::parse(yaml).unwrap_or_else(|e| panic!("{e}")) {
        match s.apply(m).await {
            Ok(_) => {}
            Err(ServingError::Invalid(e)) => return Err(e),
            Err(e) => panic!("{e}"),
        }
    }
    Ok(())
}

const BROKER: &str =
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b, namespace: ns}\n";

fn trigger(name: &str, subscriber: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}, namespace: ns}}\n\
         spec: {{broker: b, subscriber: {subscriber}}}\n"
    )
}

async fn post(addr: SocketAddr, path: &str, id: &str) -> u16 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/test")
        .header("ce-type", "t")
        .body(Full::new(Bytes::new()))
        .expect("request");
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(r)) => r.status().as_u16(),
        other => panic!("POST {path}: {other:?}"),
    }
}

async fn status(s: &Serving, kind: Kind, name: &str) -> Value {
    s.get(kind, "ns", name)
        .await
        .map(|v| v["status"].clone())
        .unwrap_or(Value::Null)
}

fn ready(status: &Value) -> (String, String) {
    let c = &status["conditions"][0];
    assert_eq!(c["type"], "Ready", "{status}");
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Polls (bounded) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn render(r: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_and_triggers_follow_the_store() {
    let dir = TestDir::new("eventing-ctl");
    let mut f = fixture(&dir);
    let (s, rec) = (f.serving.clone(), f.recorder.clone());

    // Nothing stored: no port held.
    assert!(!f.controller.converge().await.expect("pass"));
    assert_eq!(f.controller.eventing().ingress_addr(), None);

    apply(&s, BROKER).await.expect("broker");
    f.controller.converge().await.expect("pass");
    let addr = f
        .controller
        .eventing()
        .ingress_addr()
        .expect("ingress bound");
    let st = status(&s, Kind::Broker, "b").await;
    assert_eq!(ready(&st), ("True".into(), String::new()));
    assert_eq!(st["address"]["url"], format!("http://{addr}/ns/b"));
    assert_eq!(st["observedGeneration"], 1);
    // Before any trigger: accepted, and no trigger will ever see it.
    assert_eq!(post(addr, "/ns/b", "e0").await, 202);

    // Invalid specs are refused with their path, and change nothing.
    let bad = apply(
        &s,
        &trigger("bad", "{uri: 'http://a/'}, filters: [{cesql: 'x ='}]"),
    )
    .await
    .expect_err("bad CESQL");
    assert_eq!(bad.0[0].path, "spec.filters[0].cesql");
    let bad = apply(
        &s,
        &trigger("bad", "{uri: 'http://a/'}").replace("broker: b", "broker: nope"),
    )
    .await
    .expect_err("unknown broker");
    assert_eq!(bad.0[0].path, "spec.broker");
    assert!(s.list(Kind::Trigger, None).await.expect("list").is_empty());

    apply(&s, &trigger("t1", "{uri: 'http://a/'}"))
        .await
        .expect("t1");
    f.controller.converge().await.expect("pass");
    let st = status(&s, Kind::Trigger, "t1").await;
    assert_eq!(ready(&st), ("True".into(), String::new()), "{st}");
    assert_eq!(st["subscriberUri"], "http://a/");
    assert_eq!(post(addr, "/ns/b", "e1").await, 202);
    until("e1 delivered", || rec.ids_to("http://a/") == ["e1"]).await;
    let stats = f
        .controller
        .eventing()
        .trigger_stats(&("ns".into(), "t1".into()));
    let stats = stats.expect("running");
    until("e1 finished", || {
        stats.cursor_lag.get() == 0 && stats.delivered.get() == 1
    })
    .await;

    // A new subscriber, keeping the cursor: an event stuck on the old,
    // hung subscriber goes to the new one once the trigger changes (a
    // cursor created anew would start past it), and e1 is not delivered
    // again.
    rec.hung.lock().expect("lock").push("http://a/".into());
    assert_eq!(post(addr, "/ns/b", "e2").await, 202);
    until("e2 tried on a", || rec.ids_to("http://a/") == ["e1", "e2"]).await;
    apply(&s, &trigger("t1", "{uri: 'http://b/'}"))
        .await
        .expect("t1 changed");
    f.controller.converge().await.expect("pass");
    until("e2 delivered to b", || rec.ids_to("http://b/") == ["e2"]).await;
    let st = status(&s, Kind::Trigger, "t1").await;
    assert_eq!(st["subscriberUri"], "http://b/");
    assert_eq!(st["observedGeneration"], 2);
    until("delivered counts both", || stats.delivered.get() == 2).await;
    let text = render(&f.registry);
    assert!(
        text.contains(
            "ferry_trigger_events_delivered_total{broker=\"b\",namespace=\"ns\",trigger=\"t1\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("ferry_broker_events_accepted_total{broker=\"b\",namespace=\"ns\"} 3"));

    // Deleted trigger: dispatcher stopped, cursor and series gone.
    let cursor = dir.path().join("eventing/ns/b/cursors/ns.t1.json");
    assert!(cursor.exists());
    s.delete(Kind::Trigger, "ns", "t1").await.expect("delete");
    f.controller.converge().await.expect("pass");
    assert!(!cursor.exists());
    assert!(!render(&f.registry).contains("trigger=\"t1\""));
    assert_eq!(post(addr, "/ns/b", "e3").await, 202);

    // A trigger that refers to a Service goes through the gateway with the
    // Service's host; the Service does not exist, which its status says.
    apply(
        &s,
        &trigger("mesh", "{ref: {kind: Service, name: echo}, uri: /in}"),
    )
    .await
    .expect("mesh");
    f.controller.converge().await.expect("pass");
    let st = status(&s, Kind::Trigger, "mesh").await;
    assert_eq!(st["subscriberUri"], "http://echo.ns.example.com/in");
    assert_eq!(ready(&st), ("False".into(), "ServiceNotFound".into()));
    assert_eq!(post(addr, "/ns/b", "e4").await, 202);
    until("e4 delivered through the gateway", || {
        rec.got.lock().expect("lock").iter().any(|g| {
            g.0 == "http://127.0.0.1:8080/in"
                && g.1.as_deref() == Some("echo.ns.example.com")
                && g.2 == "e4"
        })
    })
    .await;
    assert!(rec.ids_to("http://b/").iter().all(|id| id != "e3"));

    // Deleted broker: 404 at ingress, its log gone, its trigger waits.
    s.delete(Kind::Broker, "ns", "b").await.expect("delete");
    f.controller.converge().await.expect("pass");
    assert_eq!(post(addr, "/ns/b", "e5").await, 404);
    assert!(!dir.path().join("eventing/ns/b").exists());
    let st = status(&s, Kind::Trigger, "mesh").await;
    assert_eq!(ready(&st), ("False".into(), "BrokerDoesNotExist".into()));
    assert!(!render(&f.registry).contains("broker=\"b\""));

    // A pass with nothing to change writes nothing.
    let v = *s.store().version().borrow();
    f.controller.converge().await.expect("pass");
    assert_eq!(*s.store().version().borrow(), v);

    let _ = f.shutdown.send(true);
    f.controller.eventing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_every_trigger_from_its_cursor() {
    let dir = TestDir::new("eventing-restart");
    {
        let mut f = fixture(&dir);
        apply(&f.serving, BROKER).await.expect("broker");
        apply(&f.serving, &trigger("t", "{uri: 'http://a/'}"))
            .await
            .expect("trigger");
        f.controller.converge().await.expect("pass");
        let addr = f.controller.eventing().ingress_addr().expect("bound");
        assert_eq!(post(addr, "/ns/b", "before").await, 202);
        let rec = f.recorder.clone();
        until("delivered", || rec.ids_to("http://a/") == ["before"]).await;
        let stats = f
            .controller
            .eventing()
            .trigger_stats(&("ns".into(), "t".into()))
            .expect("running");
        until("finished", || stats.cursor_lag.get() == 0).await;
        let _ = f.shutdown.send(true);
        f.controller.eventing.stop().await;
    }
    let mut f = fixture(&dir);
    let rec = f.recorder.clone();
    f.controller.converge().await.expect("pass");
    let st = status(&f.serving, Kind::Trigger, "t").await;
    assert_eq!(ready(&st), ("True".into(), String::new()));
    let addr = f.controller.eventing().ingress_addr().expect("bound");
    assert_eq!(post(addr, "/ns/b", "after").await, 202);
    until("delivered after the restart", || {
        rec.ids_to("http://a/") == ["after"]
    })
    .await;
    let _ = f.shutdown.send(true);
    f.controller.eventing.stop().await;
}
