use std::collections::VecDeque;
use std::sync::Mutex;

use http::HeaderValue;

use super::*;
use crate::eventing::config::BackoffPolicy;

/// Answers from a script, recording every request.
#[derive(Default)]
pub(crate) struct ScriptSender {
    pub answers: Mutex<VecDeque<Result<HttpResponse, String>>>,
    pub requests: Mutex<Vec<(String, HeaderMap, Bytes)>>,
}

pub(crate) fn resp(status: u16) -> Result<HttpResponse, String> {
    Ok(HttpResponse {
        status,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    })
}

impl ScriptSender {
    pub(crate) fn new(answers: Vec<Result<HttpResponse, String>>) -> Arc<Self> {
        Arc::new(ScriptSender {
            answers: Mutex::new(answers.into()),
            requests: Mutex::default(),
        })
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .map(|r| r.0.clone())
            .collect()
    }
}

impl Sender for ScriptSender {
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        _timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<HttpResponse, String>> {
        self.requests
            .lock()
            .expect("lock")
            .push((url.to_owned(), headers, body));
        let a = self
            .answers
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| resp(200));
        async move { a }.boxed()
    }
}

/// Records waits; never waits.
#[derive(Default)]
pub(crate) struct RecordingSleeper {
    pub waits: Mutex<Vec<Duration>>,
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.waits.lock().expect("lock").push(d);
        async {}.boxed()
    }
}

fn deliverer(
    sender: Arc<ScriptSender>,
    sleeper: Arc<RecordingSleeper>,
    policy: DeliveryPolicy,
) -> Deliverer {
    Deliverer {
        sender,
        sleeper,
        subscriber: "http://sub/".into(),
        policy,
        stats: Arc::default(),
        trigger: "t".into(),
    }
}

fn ev() -> Event {
    let mut e = Event::new("1", "/s", "t");
    e.data = Some(Bytes::from_static(b"payload"));
    e
}

fn ms(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|m| Duration::from_millis(*m)).collect()
}

#[tokio::test]
async fn exponential_backoff_schedule_then_success() {
    let s = ScriptSender::new(vec![resp(500), resp(503), resp(502), resp(202)]);
    let z = Arc::new(RecordingSleeper::default());
    let d = deliverer(
        s.clone(),
        z.clone(),
        DeliveryPolicy {
            retry: 5,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(100),
            ..DeliveryPolicy::default()
        },
    );
    assert!(matches!(d.deliver(&ev()).await, Outcome::Delivered(None)));
    assert_eq!(*z.waits.lock().expect("lock"), ms(&[200, 400, 800]));
    assert_eq!(s.urls().len(), 4);
    let (_, h, b) = &s.requests.lock().expect("lock")[0];
    assert_eq!(h.get("ce-id"), Some(&HeaderValue::from_static("1")));
    assert_eq!(b.as_ref(), b"payload");
}

#[tokio::test]
async fn linear_backoff_then_dead_letter_with_error_extensions() {
    let body = Bytes::from(vec![b'x'; 2000]);
    let fail = || {
        Ok(HttpResponse {
            status: 500,
            headers: HeaderMap::new(),
            body: body.clone(),
        })
    };
    let s = ScriptSender::new(vec![fail(), fail(), fail(), resp(200)]);
    let z = Arc::new(RecordingSleeper::default());
    let d = deliverer(
        s.clone(),
        z.clone(),
        DeliveryPolicy {
            retry: 2,
            backoff_policy: BackoffPolicy::Linear,
            backoff_delay: Duration::from_millis(50),
            dead_letter_sink: Some("http://dls/".into()),
            ..DeliveryPolicy::default()
        },
    );
    assert!(matches!(d.deliver(&ev()).await, Outcome::DeadLettered));
    assert_eq!(*z.waits.lock().expect("lock"), ms(&[50, 100]));
    assert_eq!(
        s.urls(),
        vec!["http://sub/", "http://sub/", "http://sub/", "http://dls/"]
    );
    let reqs = s.requests.lock().expect("lock");
    let (_, h, b) = &reqs[3];
    assert_eq!(
        h.get("ce-knativeerrordest"),
        Some(&HeaderValue::from_static("http://sub/"))
    );
    assert_eq!(
        h.get("ce-knativeerrorcode"),
        Some(&HeaderValue::from_static("500"))
    );
    let data = h
        .get("ce-knativeerrordata")
        .and_then(|v| v.to_str().ok())
        .expect("errordata");
    assert_eq!(data.len(), ERROR_DATA_MAX);
    assert!(data.starts_with("eHh4"));
    assert_eq!(b.as_ref(), b"payload");
}

#[tokio::test]
async fn non_retryable_status_goes_straight_to_the_end() {
    let s = ScriptSender::new(vec![resp(400)]);
    let z = Arc::new(RecordingSleeper::default());
    let d = deliverer(
        s.clone(),
        z.clone(),
        DeliveryPolicy {
            retry: 3,
            ..DeliveryPolicy::default()
        },
    );
    assert!(matches!(d.deliver(&ev()).await, Outcome::Dropped));
    assert_eq!(s.urls().len(), 1);
    assert!(z.waits.lock().expect("lock").is_empty());
    assert_eq!(d.stats.dropped.get(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_the_max() {
    let with_ra = |status: u16, v: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(v).expect("hv"),
        );
        Ok(HttpResponse {
            status,
            headers: h,
            body: Bytes::new(),
        })
    };
    let s = ScriptSender::new(vec![
        with_ra(429, "3"),
        with_ra(503, "120"),
        with_ra(500, "9"),
        resp(200),
    ]);
    let z = Arc::new(RecordingSleeper::default());
    let d = deliverer(
        s,
        z.clone(),
        DeliveryPolicy {
            retry: 3,
            backoff_policy: BackoffPolicy::Linear,
            backoff_delay: Duration::from_millis(100),
            retry_after_max: Some(Duration::from_secs(10)),
            ..DeliveryPolicy::default()
        },
    );
    assert!(matches!(d.deliver(&ev()).await, Outcome::Delivered(_)));
    // 429 → 3 s; 503 → capped at 10 s; a 500's Retry-After is ignored.
    assert_eq!(*z.waits.lock().expect("lock"), ms(&[3000, 10_000, 300]));

    // Without retryAfterMax the header is ignored (Knative's opt-in).
    let s = ScriptSender::new(vec![with_ra(429, "3"), resp(200)]);
    let z = Arc::new(RecordingSleeper::default());
    let d = deliverer(
        s,
        z.clone(),
        DeliveryPolicy {
            retry: 1,
            backoff_policy: BackoffPolicy::Linear,
            backoff_delay: Duration::from_millis(100),
            ..DeliveryPolicy::default()
        },
    );
    d.deliver(&ev()).await;
    assert_eq!(*z.waits.lock().expect("lock"), ms(&[100]));
}

#[test]
fn retry_after_http_date() {
    let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
}

#[tokio::test]
async fn failing_dead_letter_sink_parks_and_retries_with_capped_backoff() {
    let s = ScriptSender::new(vec![
        resp(500),
        resp(500),
        Err("refused".into()),
        resp(500),
        resp(500),
        resp(500),
        resp(500),
        resp(500),
        resp(500),
        resp(500),
        resp(500),
        resp(200),
    ]);
    let z = Arc::new(RecordingSleeper::default());
    let d = deliverer(
        s.clone(),
        z.clone(),
        DeliveryPolicy {
            retry: 0,
            backoff_delay: Duration::from_secs(10),
            dead_letter_sink: Some("http://dls/".into()),
            ..DeliveryPolicy::default()
        },
    );
    let Outcome::Parked(dead) = d.deliver(&ev()).await else {
        panic!("expected parked");
    };
    assert_eq!(dead.get_str("knativeerrorcode").as_deref(), Some("500"));
    assert!(matches!(d.retry_parked(&dead).await, Outcome::DeadLettered));
    let waits = z.waits.lock().expect("lock").clone();
    // 20 s, 40 s, then capped at 60 s.
    assert_eq!(waits[..3], [20, 40, 60].map(Duration::from_secs));
    assert!(waits.iter().all(|w| *w <= PARK_MAX_BACKOFF));
    assert_eq!(waits.len(), 10);
}

#[tokio::test]
async fn replies_binary_and_structured_and_non_events() {
    let mut h = HeaderMap::new();
    h.insert("ce-specversion", HeaderValue::from_static("1.0"));
    h.insert("ce-id", HeaderValue::from_static("r1"));
    h.insert("ce-source", HeaderValue::from_static("/reply"));
    h.insert("ce-type", HeaderValue::from_static("reply.type"));
    let binary = Ok(HttpResponse {
        status: 200,
        headers: h,
        body: Bytes::from_static(b"r"),
    });
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/cloudevents+json"),
    );
    let structured = Ok(HttpResponse {
        status: 201,
        headers: h,
        body: Bytes::from_static(br#"{"specversion":"1.0","id":"r2","source":"/r","type":"x"}"#),
    });
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let plain = Ok(HttpResponse {
        status: 200,
        headers: h,
        body: Bytes::from_static(b"{\"ok\":true}"),
    });
    let mut h = HeaderMap::new();
    h.insert("ce-specversion", HeaderValue::from_static("1.0"));
    let invalid = Ok(HttpResponse {
        status: 200,
        headers: h,
        body: Bytes::new(),
    });
    let s = ScriptSender::new(vec![binary, structured, plain, invalid]);
    let d = deliverer(s, Arc::default(), DeliveryPolicy::default());
    let Outcome::Delivered(Some(r)) = d.deliver(&ev()).await else {
        panic!("binary reply")
    };
    assert_eq!(r.id(), "r1");
    assert_eq!(r.data.as_deref(), Some(&b"r"[..]));
    let Outcome::Delivered(Some(r)) = d.deliver(&ev()).await else {
        panic!("structured reply")
    };
    assert_eq!(r.id(), "r2");
    assert!(matches!(d.deliver(&ev()).await, Outcome::Delivered(None)));
    assert!(matches!(d.deliver(&ev()).await, Outcome::Delivered(None)));
    assert_eq!(d.stats.bad_replies.get(), 1);
}
