use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::HeaderMap;

use super::*;
use crate::eventing::config::DeliveryPolicy;
use crate::eventing::delivery::tests::RecordingSleeper;
use crate::eventing::delivery::HttpResponse;
use crate::eventing::filter::Filter;
use crate::eventing::log::testutil::TempDir;
use crate::eventing::log::{FileLog, FileLogOptions};

/// Per-URL behaviour: `slow` URLs never answer; `reply` URLs answer with a
/// reply event the first time an event of type "order" comes.
#[derive(Default)]
struct Fake {
    got: Mutex<Vec<(String, String)>>,
    slow: Vec<String>,
    reply: Vec<String>,
}

impl Sender for Fake {
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        _body: Bytes,
        _t: Option<Duration>,
    ) -> BoxFuture<'static, Result<HttpResponse, String>> {
        let id = headers
            .get("ce-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let ty = headers
            .get("ce-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.got
            .lock()
            .expect("lock")
            .push((url.to_owned(), id.clone()));
        if self.slow.iter().any(|s| s == url) {
            return futures_util::future::pending().boxed();
        }
        let mut h = HeaderMap::new();
        if self.reply.iter().any(|s| s == url) && ty == "order" {
            let (rh, _) = Event::new(&format!("reply-{id}"), "/r", "receipt").to_binary();
            h = rh;
        }
        async move {
            Ok(HttpResponse {
                status: 200,
                headers: h,
                body: Bytes::new(),
            })
        }
        .boxed()
    }
}

fn trigger(name: &str, url: &str, ty: Option<&str>) -> Arc<TriggerDef> {
    let attrs: BTreeMap<String, String> = ty
        .map(|t| [("type".to_owned(), t.to_owned())].into())
        .unwrap_or_default();
    Arc::new(TriggerDef {
        namespace: "default".into(),
        name: name.into(),
        broker: "b".into(),
        filter: Filter::compile(Some(&attrs), &[]).expect("filter"),
        subscriber: url.into(),
        delivery: DeliveryPolicy::default(),
        source: serde_json::Value::Null,
    })
}

fn spawn(
    t: Arc<TriggerDef>,
    log: Arc<dyn EventLog>,
    sender: Arc<Fake>,
    stop: &watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<()>, Arc<TriggerStats>) {
    let stats = Arc::new(TriggerStats::default());
    let d = Dispatcher {
        trigger: t,
        log,
        sender,
        sleeper: Arc::new(RecordingSleeper::default()),
        stats: stats.clone(),
        max_inflight: 8,
        persist_every: Duration::from_millis(10),
    };
    (tokio::spawn(d.run(stop.clone())), stats)
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_replies_and_a_stuck_trigger_does_not_block_others() {
    let d = TempDir::new("dispatch");
    let log: Arc<dyn EventLog> =
        Arc::new(FileLog::open(&d.0, FileLogOptions::default()).expect("open"));
    let fake = Arc::new(Fake {
        slow: vec!["http://slow/".into()],
        reply: vec!["http://orders/".into()],
        ..Fake::default()
    });
    let (stop_tx, stop) = watch::channel(false);
    let (h1, orders) = spawn(
        trigger("orders", "http://orders/", Some("order")),
        log.clone(),
        fake.clone(),
        &stop,
    );
    let (h2, all) = spawn(
        trigger("all", "http://all/", None),
        log.clone(),
        fake.clone(),
        &stop,
    );
    let (h3, _slow) = spawn(
        trigger("slow", "http://slow/", None),
        log.clone(),
        fake.clone(),
        &stop,
    );
    // Let each dispatcher save its starting cursor (at the end: 0).
    wait_for("cursors", || {
        let l = log.clone();
        futures_util::FutureExt::now_or_never(async move {
            l.load_cursor("default.slow").await.ok().flatten().is_some()
                && l.load_cursor("default.all").await.ok().flatten().is_some()
                && l.load_cursor("default.orders")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        })
        .unwrap_or(false)
    })
    .await;

    let mut evs = Vec::new();
    for i in 0..20 {
        let ty = if i % 2 == 0 { "order" } else { "other" };
        evs.push(Event::new(&format!("e{i}"), "/s", ty).encode());
    }
    log.append(evs).await.expect("append");

    // 20 events + 10 replies reach "all"; "orders" gets its 10.
    wait_for("deliveries", || all.delivered.get() == 30).await;
    wait_for("orders", || orders.delivered.get() == 10).await;
    assert_eq!(orders.replies.get(), 10);
    let got = fake.got.lock().expect("lock").clone();
    assert!(got
        .iter()
        .any(|(u, id)| u == "http://all/" && id == "reply-e0"));
    assert!(!got
        .iter()
        .any(|(u, id)| u == "http://orders/" && id.starts_with("reply")));
    // The slow trigger has its window in flight and nothing more.
    assert_eq!(got.iter().filter(|(u, _)| u == "http://slow/").count(), 8);

    stop_tx.send(true).expect("stop");
    for h in [h1, h2, h3] {
        h.await.expect("join");
    }
    let c = |n: &'static str| {
        let l = log.clone();
        async move { l.load_cursor(n).await.expect("load").expect("some") }
    };
    assert_eq!(c("default.all").await.committed, 30);
    assert_eq!(c("default.orders").await.committed, 30);
    // Nothing acknowledged for the stuck trigger: it resumes at 0.
    assert_eq!(c("default.slow").await.committed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_saved_cursor() {
    let d = TempDir::new("resume");
    let log: Arc<dyn EventLog> =
        Arc::new(FileLog::open(&d.0, FileLogOptions::default()).expect("open"));
    log.store_cursor(
        "default.t",
        &CursorState {
            committed: 3,
            parked: vec![],
        },
    )
    .await
    .expect("cursor");
    let evs = (0..6)
        .map(|i| Event::new(&format!("e{i}"), "/s", "x").encode())
        .collect();
    log.append(evs).await.expect("append");
    let fake = Arc::new(Fake::default());
    let (stop_tx, stop) = watch::channel(false);
    let (h, stats) = spawn(
        trigger("t", "http://t/", None),
        log.clone(),
        fake.clone(),
        &stop,
    );
    wait_for("3 deliveries", || stats.delivered.get() == 3).await;
    let ids: Vec<String> = fake
        .got
        .lock()
        .expect("lock")
        .iter()
        .map(|x| x.1.clone())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["e3", "e4", "e5"]);
    stop_tx.send(true).expect("stop");
    h.await.expect("join");
}
