//! Upstream resilience end to end (issue 3): retries (another endpoint,
//! `num_retries`, budget, body replay), timeouts (per try, route, connect,
//! downstream idle, request headers), header limits, circuit breakers,
//! active health checking, panic mode, outlier detection and `/clusters`.
//!
//! Every upstream here is the programmable [`Backend`]: a standing
//! [`Behavior`] per endpoint, one-shot behaviours, a health switch, and
//! refusing connections. Timings are asserted with a tolerance that covers
//! a loaded 2-core machine, never with a fixed sleep for readiness.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_integration_tests::{
    closed_port, eventually, free_addr, full, raw_read_head, within, Backend, Behavior, Client,
    Proxy, Resp,
};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Listener → `/` → cluster `up` with `endpoints`.
/// - `listener_extra`: inline fields of the listener (`, idle_timeout: 1s`);
/// - `route_extra`: inline fields of the route action (`, timeout: 1s`);
/// - `route_level`: extra lines at the route level (12 spaces indent);
/// - `cluster_extra`: extra lines of the cluster (4 spaces indent).
struct Cfg<'a> {
    listen: &'a str,
    endpoints: Vec<String>,
    listener_extra: &'a str,
    route_extra: &'a str,
    route_level: &'a str,
    cluster_extra: &'a str,
}

impl<'a> Cfg<'a> {
    fn new(listen: &'a str, endpoints: &[&Backend]) -> Cfg<'a> {
        Cfg {
            listen,
            endpoints: endpoints.iter().map(|b| b.address()).collect(),
            listener_extra: "",
            route_extra: "",
            route_level: "",
            cluster_extra: "",
        }
    }

    fn yaml(&self) -> String {
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .map(|a| format!("{{address: \"{a}\"}}"))
            .collect();
        format!(
            r#"
listeners:
  - {{name: http, address: "{listen}", route_config: r{listener_extra}}}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: up{route_extra}}}
{route_level}
clusters:
  - name: up
    connect_timeout: 2s
    endpoints: [{eps}]
{cluster_extra}
"#,
            listen = self.listen,
            listener_extra = self.listener_extra,
            route_extra = self.route_extra,
            route_level = self.route_level,
            cluster_extra = self.cluster_extra,
            eps = eps.join(", "),
        )
    }
}

fn url(listen: &str) -> String {
    format!("http://{listen}/")
}

async fn get(c: &Client, url: &str) -> Resp {
    c.get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
}

async fn timed_get(c: &Client, url: &str) -> (Resp, Duration) {
    let t = Instant::now();
    let r = get(c, url).await;
    (r, t.elapsed())
}

async fn post(c: &Client, url: &str, body: Vec<u8>) -> Resp {
    let req = Request::post(url)
        .header("content-type", "application/octet-stream")
        .body(full(body))
        .expect("build POST");
    c.send(req)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:#}"))
}

/// `n` GETs at once, each on its own connection: (response, elapsed).
async fn concurrent_gets(url: &str, n: usize) -> Vec<(Resp, Duration)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let c = Client::h1_no_pool();
            timed_get(&c, &url).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("concurrent GET task"));
    }
    out
}

fn overloaded(r: &Resp) -> bool {
    r.status == 503 && r.header("x-ferry-overloaded") == Some("true")
}

async fn counter(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.stats().await.get(name, labels)
}

// === retries ===

#[tokio::test]
async fn retry_on_5xx_lands_on_another_endpoint() {
    let bad1 = Backend::start("bad1").await;
    let bad2 = Backend::start("bad2").await;
    let good = Backend::start("good").await;
    bad1.set_behavior(Behavior::status(503));
    bad2.set_behavior(Behavior::status(503));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&bad1, &bad2, &good]);
    // Two retries and three endpoints, two of them failing: every request
    // succeeds only if no try repeats an endpoint.
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 2}";
    cfg.cluster_extra = "    lb_policy: random";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    let n = 60;
    for i in 0..n {
        let before = (bad1.requests(), bad2.requests());
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.backend(), Some("good"), "request {i}");
        assert!(
            bad1.requests() - before.0 <= 1 && bad2.requests() - before.1 <= 1,
            "request {i} tried a failing endpoint twice: bad1 +{}, bad2 +{}",
            bad1.requests() - before.0,
            bad2.requests() - before.1
        );
    }
    assert_eq!(
        good.requests(),
        n,
        "the good endpoint answers every request"
    );
    let retried = bad1.requests() + bad2.requests();
    assert!(
        retried > 0,
        "the random balancer never picked a bad endpoint"
    );
    let retries = counter(
        &proxy,
        "ferry_upstream_rq_retry_total",
        &[("cluster", "up")],
    )
    .await;
    assert_eq!(retries, retried as f64, "one retry per failed try");
}

#[tokio::test]
async fn retry_on_5xx_with_one_failing_endpoint_of_two() {
    let bad = Backend::start("bad").await;
    let good = Backend::start("good").await;
    bad.set_behavior(Behavior::status(503));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&bad, &good]);
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 3}";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    for i in 0..40 {
        let before = bad.requests();
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.backend(), Some("good"));
        assert!(
            bad.requests() - before <= 1,
            "request {i}: the failing endpoint saw {} tries",
            bad.requests() - before
        );
    }
    assert!(bad.requests() >= 1, "round robin never picked the bad one");
}

#[tokio::test]
async fn retry_on_connect_failure_skips_a_dead_endpoint() {
    let good = Backend::start("good").await;
    let dead = format!("127.0.0.1:{}", closed_port());
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&good]);
    cfg.endpoints.insert(0, dead.clone());
    cfg.route_extra = ", retry_policy: {retry_on: connect-failure, num_retries: 1}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    for i in 0..20 {
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(good.requests(), 20);
    let fails = counter(
        &proxy,
        "ferry_upstream_cx_connect_fail_total",
        &[("cluster", "up")],
    )
    .await;
    assert!(fails >= 1.0, "the dead endpoint was never tried");

    // The same without a retry policy: the dead endpoint's share fails.
    let listen2 = free_addr().to_string();
    let mut cfg = Cfg::new(&listen2, &[&good]);
    cfg.endpoints.insert(0, dead);
    let _p2 = Proxy::start(&cfg.yaml()).await;
    let mut failed = 0;
    for _ in 0..10 {
        let r = get(&c, &url(&listen2)).await;
        if r.status == 503 {
            assert_eq!(r.header("x-ferry-error"), Some("UF"));
            failed += 1;
        }
    }
    assert!(
        failed >= 1,
        "control: without retries a dead endpoint fails"
    );
}

#[tokio::test]
async fn retry_on_reset() {
    let bad = Backend::start("bad").await;
    let good = Backend::start("good").await;
    bad.set_behavior(Behavior::reset());
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&bad, &good]);
    cfg.route_extra = ", retry_policy: {retry_on: reset, num_retries: 1}";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    for i in 0..20 {
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert!(bad.requests() >= 1);
}

#[tokio::test]
async fn retriable_status_codes_and_gateway_error() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", retry_policy: {retry_on: \"retriable-status-codes,gateway-error\", \
                       retriable_status_codes: [418], num_retries: 1}";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    // (status of the first try, retried?)
    let cases = [
        (418, true),
        (502, true),
        (504, true),
        (500, false),
        (429, false),
    ];
    for (status, retried) in cases {
        b.reset_requests();
        b.fail_next(1, Behavior::status(status));
        let r = get(&c, &url(&listen)).await;
        let want = if retried { 200 } else { status };
        assert_eq!(
            (r.status.as_u16(), b.requests()),
            (want, 1 + u64::from(retried)),
            "first try answered {status}: (client status, tries)"
        );
    }
}

/// The per-request `x-test-behavior` header, addressed to one endpoint by
/// name: a hang cut by the per-try timeout, a reset, a 503, each retried on
/// the other endpoint.
#[tokio::test]
async fn per_request_failures_addressed_to_one_endpoint_are_retried_elsewhere() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&a, &b]);
    cfg.route_extra = ", timeout: 5s, retry_policy: {retry_on: \"5xx,reset\", num_retries: 1, \
                       per_try_timeout: 300ms}";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    for behavior in [
        "a:hang",
        "a:reset",
        "a:status=503",
        "a:delay=1s;a:status=200",
    ] {
        for i in 0..4 {
            let r = c
                .get_with(
                    &url(&listen),
                    &[(ferry_integration_tests::BEHAVIOR_HEADER, behavior)],
                )
                .await
                .unwrap_or_else(|e| panic!("GET with {behavior}: {e:#}"));
            assert_eq!(r.status, 200, "{behavior} #{i}: {}", r.text());
            assert_eq!(r.backend(), Some("b"), "{behavior} #{i}");
        }
    }
    // Addressed to nobody here: answered normally by both.
    let r = c
        .get_with(
            &url(&listen),
            &[(ferry_integration_tests::BEHAVIOR_HEADER, "zed:status=500")],
        )
        .await
        .expect("GET");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn num_retries_is_respected() {
    let b = Backend::start("b").await;
    b.set_behavior(Behavior::status(503));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 3, \
                       retry_back_off: {base_interval: 5ms, max_interval: 10ms}}";
    // Enough retry slots that only num_retries limits.
    cfg.cluster_extra = "    circuit_breakers: {max_retries: 100}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    for i in 0..5u64 {
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 503, "the last try's answer is returned");
        assert!(
            r.header("x-ferry-overloaded").is_none(),
            "not a breaker reply"
        );
        assert_eq!(
            b.requests(),
            (i + 1) * 4,
            "request {i}: 1 try + 3 retries on the only endpoint"
        );
    }
    let retries = counter(
        &proxy,
        "ferry_upstream_rq_retry_total",
        &[("cluster", "up")],
    )
    .await;
    assert_eq!(retries, 15.0);

    // Succeeds on the last allowed retry.
    b.set_behavior(Behavior::ok());
    b.reset_requests();
    b.fail_next(3, Behavior::status(503));
    let r = get(&c, &url(&listen)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.requests(), 4);
}

/// One request retrying several times holds one retry at a time: with
/// `max_retries: 1` a lone request may still use all of `num_retries`.
#[tokio::test]
async fn max_retries_counts_retries_in_flight_not_per_request_total() {
    let b = Backend::start("b").await;
    b.fail_next(3, Behavior::status(503));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 3, \
                       retry_back_off: {base_interval: 5ms, max_interval: 10ms}}";
    cfg.cluster_extra = "    circuit_breakers: {max_retries: 1}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let r = get(&Client::h1(), &url(&listen)).await;
    let overflow = counter(
        &proxy,
        "ferry_upstream_rq_overflow_total",
        &[("cluster", "up"), ("breaker", "retries")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), b.requests(), overflow),
        (200, 4, 0.0),
        "a single request (one retry in flight at a time) was refused its \
         second retry by max_retries: 1 (status, tries, retry overflows)"
    );
}

#[tokio::test]
async fn max_retries_caps_concurrent_retries() {
    let b = Backend::start("b").await;
    // Every try fails after 400 ms, so all first tries fail together and
    // every granted retry holds its slot while the others decide.
    b.set_behavior(Behavior::status(503).after(Duration::from_millis(400)));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 1, \
                       retry_back_off: {base_interval: 5ms, max_interval: 5ms}}";
    cfg.cluster_extra = "    circuit_breakers: {max_retries: 2}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let n = 8;
    let results = concurrent_gets(&url(&listen), n).await;
    for (r, _) in &results {
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!(
        b.requests(),
        n as u64 + 2,
        "{n} first tries + max_retries (2) retries"
    );
    let overflow = counter(
        &proxy,
        "ferry_upstream_rq_overflow_total",
        &[("cluster", "up"), ("breaker", "retries")],
    )
    .await;
    assert_eq!(overflow, (n - 2) as f64, "every refused retry is counted");
}

#[tokio::test]
async fn retry_budget_caps_concurrent_retries() {
    let b = Backend::start("b").await;
    b.set_behavior(Behavior::status(503).after(Duration::from_millis(400)));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 1, \
                       retry_back_off: {base_interval: 5ms, max_interval: 5ms}}";
    // 25 % of 8 requests in flight = 2 retries (max_retries would allow 50).
    cfg.cluster_extra = "    circuit_breakers:\n      max_retries: 50\n      \
                         retry_budget: {budget_percent: 25, min_retry_concurrency: 1}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let n = 8;
    let results = concurrent_gets(&url(&listen), n).await;
    for (r, _) in &results {
        assert_eq!(r.status, 503, "{}", r.text());
    }
    let tries = b.requests();
    assert_eq!(
        tries,
        n as u64 + 2,
        "{n} first tries + 25% x {n} retries, got {tries} tries"
    );
    let overflow = counter(
        &proxy,
        "ferry_upstream_rq_overflow_total",
        &[("cluster", "up"), ("breaker", "retries")],
    )
    .await;
    assert!(overflow >= 1.0, "refused retries are counted: {overflow}");

    // min_retry_concurrency: a lone request may always retry.
    b.set_behavior(Behavior::ok());
    b.reset_requests();
    b.fail_next(1, Behavior::status(503));
    let r = get(&Client::h1(), &url(&listen)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.requests(), 2);
}

#[tokio::test]
async fn retry_replays_the_request_body() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", retry_policy: {retry_on: 5xx, num_retries: 1}";
    cfg.route_level = "            per_request_buffer_limit_bytes: 1024";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();

    b.fail_next(1, Behavior::status(503));
    let body = b"replay me, byte for byte".to_vec();
    let r = post(&c, &url(&listen), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echo();
    assert_eq!(e.body.as_bytes(), &body[..], "the retry carried the body");
    assert_eq!(e.body_len, body.len() as u64);
    assert_eq!(b.requests(), 2);

    // Exactly at the limit: still kept, still retried.
    b.reset_requests();
    b.fail_next(1, Behavior::status(503));
    let at_limit: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = post(&c, &url(&listen), at_limit.clone()).await;
    assert_eq!(r.status, 200, "a 1024-byte body at a 1024-byte limit");
    assert_eq!(r.echo().body.as_bytes(), &at_limit[..]);
    assert_eq!(b.requests(), 2);

    // Over the limit: streamed once, not retried; the one try got it all.
    b.reset_requests();
    b.fail_next(1, Behavior::status(503));
    let retries_before = counter(
        &proxy,
        "ferry_upstream_rq_retry_total",
        &[("cluster", "up")],
    )
    .await;
    let big = vec![b'x'; 4096];
    let r = post(&c, &url(&listen), big).await;
    assert_eq!(r.status, 503, "a body over the buffer limit is not retried");
    assert_eq!(r.echo().body_len, 4096, "the single try got the whole body");
    assert_eq!(b.requests(), 1);
    let retries_after = counter(
        &proxy,
        "ferry_upstream_rq_retry_total",
        &[("cluster", "up")],
    )
    .await;
    assert_eq!(retries_after, retries_before);
}

// === timeouts ===

#[tokio::test]
async fn per_try_timeout_fires_on_time_then_retries() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.route_extra = ", timeout: 5s, retry_policy: {retry_on: 5xx, num_retries: 2, \
                       per_try_timeout: 300ms, retry_back_off: {base_interval: 5ms, max_interval: 5ms}}";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();

    // First try hangs: cut at 300 ms, the retry answers at once.
    b.fail_next(1, Behavior::delay(Duration::from_secs(5)));
    let (r, took) = timed_get(&c, &url(&listen)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.requests(), 2);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(800),
        "per-try timeout 300ms + retry took {took:?}"
    );

    // Every try hangs: three tries of 300 ms, then 504.
    b.reset_requests();
    b.set_behavior(Behavior::delay(Duration::from_secs(5)));
    let (r, took) = timed_get(&c, &url(&listen)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(b.requests(), 3);
    assert!(
        took >= Duration::from_millis(880) && took < Duration::from_millis(1600),
        "3 tries x 300ms took {took:?}"
    );
}

#[tokio::test]
async fn route_timeout_answers_504_on_time() {
    let b = Backend::start("b").await;
    b.set_behavior(Behavior::delay(Duration::from_secs(5)));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    // A per-try timeout longer than the route's: the route's wins and the
    // request is over (no retry).
    cfg.route_extra = ", timeout: 500ms, retry_policy: {retry_on: 5xx, per_try_timeout: 2s}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let (r, took) = timed_get(&Client::h1(), &url(&listen)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("x-ferry-error"), Some("UT"));
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(1000),
        "route timeout 500ms took {took:?}"
    );
    assert_eq!(b.requests(), 1, "a route timeout is not retried");
    let timeouts = counter(
        &proxy,
        "ferry_upstream_rq_timeout_total",
        &[("cluster", "up")],
    )
    .await;
    assert_eq!(timeouts, 1.0);
}

#[tokio::test]
async fn connect_refused_answers_503_at_once() {
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[]);
    cfg.endpoints = vec![format!("127.0.0.1:{}", closed_port())];
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let (r, took) = timed_get(&Client::h1(), &url(&listen)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-ferry-error"), Some("UF"));
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

/// A listener whose accept queue is full: the kernel drops further SYNs,
/// so a connect to it hangs (a black hole on loopback). Returns the
/// listener and the connections that fill it; keep them alive.
async fn black_hole() -> (tokio::net::TcpListener, Vec<TcpStream>, SocketAddr) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(1).expect("listen(1)");
    let addr = listener.local_addr().expect("local_addr");
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            // This connect hangs: the queue is full.
            Err(_) => return (listener, fillers, addr),
        }
    }
    panic!("accept queue never filled after 16 connections (tcp_abort_on_overflow?)");
}

#[tokio::test]
async fn connect_timeout_answers_503_on_time() {
    let (_hole, _fillers, addr) = black_hole().await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[]);
    cfg.endpoints = vec![addr.to_string()];
    let yaml = cfg
        .yaml()
        .replace("connect_timeout: 2s", "connect_timeout: 300ms");
    let _proxy = Proxy::start(&yaml).await;
    let (r, took) = timed_get(&Client::h1(), &url(&listen)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-ferry-error"), Some("UF"));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "connect_timeout 300ms took {took:?}"
    );
}

/// Reads one `content-length` response from `s`; returns its head.
async fn read_response(s: &mut TcpStream) -> String {
    let (head, mut rest) = raw_read_head(s).await.expect("response head");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut buf = [0u8; 4096];
    while rest.len() < len {
        let n = within(Duration::from_secs(5), "response body", s.read(&mut buf))
            .await
            .expect("read body");
        assert!(n > 0, "closed inside the body");
        rest.extend_from_slice(&buf[..n]);
    }
    head
}

/// Waits for EOF (or a reset) on `s`, up to `cap`; returns when it came.
async fn wait_closed(s: &mut TcpStream, cap: Duration) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    let fut = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(cap, fut).await.ok()
}

#[tokio::test]
async fn downstream_idle_timeout_closes_idle_connections() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.listener_extra = ", idle_timeout: 400ms";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let addr: SocketAddr = listen.parse().expect("listen addr");

    // A request slower than the idle timeout is not cut: it is not idle.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /?delay_ms=700 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let head = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answered = Instant::now();
    // Then the idle connection is closed 400..500 ms later (+ slack).
    let closed = wait_closed(&mut s, Duration::from_secs(3))
        .await
        .expect("the idle connection was not closed within 3s");
    let idle = closed - answered;
    assert!(
        idle >= Duration::from_millis(350) && idle < Duration::from_millis(1200),
        "idle_timeout 400ms closed after {idle:?}"
    );

    // A connection that never sends anything is closed too.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let opened = Instant::now();
    let closed = wait_closed(&mut s, Duration::from_secs(3))
        .await
        .expect("a silent connection was not closed within 3s");
    assert!(closed - opened < Duration::from_millis(1200));
}

#[tokio::test]
async fn request_headers_timeout_cuts_a_slowloris() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.listener_extra = ", request_headers_timeout: 500ms, idle_timeout: 60s";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let addr: SocketAddr = listen.parse().expect("listen addr");

    let s = TcpStream::connect(addr).await.expect("connect");
    let opened = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    // One header line every 100 ms, never the blank line: the head would
    // take 5 s.
    let writer = tokio::spawn(async move {
        if wr
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .is_err()
        {
            return;
        }
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let closed = closed.expect("a client trickling its head was not cut off within 4s");
    let took = closed - opened;
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "request_headers_timeout 500ms cut after {took:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "only a 408 (or nothing) may be answered: {text:?}"
    );
    assert_eq!(b.requests(), 0, "a partial head never reaches the upstream");
}

#[tokio::test]
async fn request_header_size_and_count_limits_answer_431() {
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.listener_extra = ", max_request_headers_kb: 16, max_request_headers_count: 20";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1_no_pool();

    // Under both limits: served.
    let mut headers: Vec<(String, String)> = (0..15)
        .map(|i| (format!("x-h{i}"), "v".repeat(500)))
        .collect();
    let mut req = Request::get(url(&listen));
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let r = c
        .send(req.body(ferry_integration_tests::empty()).expect("req"))
        .await
        .expect("GET under the limits");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.requests(), 1);

    // Too large: one 24 KiB header.
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(24 * 1024)
    );
    let out = ferry_integration_tests::raw_exchange(
        proxy_addr(&listen),
        raw.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "24 KiB head: {out:?}");

    // Too many: 30 small headers.
    headers = (0..30)
        .map(|i| (format!("x-h{i}"), "v".to_string()))
        .collect();
    let mut raw = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for (k, v) in &headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let out = ferry_integration_tests::raw_exchange(
        proxy_addr(&listen),
        raw.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "31 headers: {out:?}");
    assert_eq!(b.requests(), 1, "rejected heads never reach the upstream");
    let _ = &proxy;
}

fn proxy_addr(listen: &str) -> SocketAddr {
    listen.parse().expect("listen addr")
}

// === circuit breakers ===

#[tokio::test]
async fn max_requests_sheds_exactly_the_overflow() {
    let b = Backend::start("b").await;
    b.set_behavior(Behavior::delay(Duration::from_millis(800)));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.cluster_extra = "    circuit_breakers: {max_requests: 4}";
    let proxy = Proxy::start(&cfg.yaml()).await;

    // At the limit: nothing is shed.
    let results = concurrent_gets(&url(&listen), 4).await;
    assert!(
        results.iter().all(|(r, _)| r.status == 200),
        "4 requests at max_requests 4: {:?}",
        results.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );

    // Three over it: exactly three shed, at once.
    b.reset_requests();
    let results = concurrent_gets(&url(&listen), 7).await;
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let shed: Vec<&(Resp, Duration)> = results.iter().filter(|(r, _)| overloaded(r)).collect();
    assert_eq!((ok, shed.len()), (4, 3), "7 requests at max_requests 4");
    for (r, took) in &shed {
        assert_eq!(r.header("x-ferry-error"), Some("UO"));
        assert!(
            *took < Duration::from_millis(400),
            "an overflow must be answered at once, took {took:?}"
        );
    }
    assert_eq!(b.requests(), 4, "shed requests never reach the upstream");
    let overflow = counter(
        &proxy,
        "ferry_upstream_rq_overflow_total",
        &[("cluster", "up"), ("breaker", "requests")],
    )
    .await;
    assert_eq!(overflow, 3.0);
}

#[tokio::test]
async fn max_pending_requests_sheds_beyond_the_queue() {
    let b = Backend::start("b").await;
    b.set_behavior(Behavior::delay(Duration::from_millis(600)));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.cluster_extra = "    circuit_breakers: {max_connections: 2, max_pending_requests: 1}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let results = concurrent_gets(&url(&listen), 5).await;
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let shed: Vec<&(Resp, Duration)> = results.iter().filter(|(r, _)| overloaded(r)).collect();
    assert_eq!(
        (ok, shed.len()),
        (3, 2),
        "2 connections + 1 pending served, 2 shed: {:?}",
        results
            .iter()
            .map(|(r, t)| (r.status.as_u16(), *t))
            .collect::<Vec<_>>()
    );
    for (_, took) in &shed {
        assert!(*took < Duration::from_millis(400), "shed after {took:?}");
    }
    assert!(
        b.connections() <= 2,
        "max_connections 2, the backend saw {}",
        b.connections()
    );
    let overflow = counter(
        &proxy,
        "ferry_upstream_rq_overflow_total",
        &[("cluster", "up"), ("breaker", "pending")],
    )
    .await;
    assert_eq!(overflow, 2.0);
}

#[tokio::test]
async fn max_connections_queues_on_one_connection() {
    let b = Backend::start("b").await;
    b.set_behavior(Behavior::delay(Duration::from_millis(300)));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&b]);
    cfg.cluster_extra = "    circuit_breakers: {max_connections: 1}";
    let _proxy = Proxy::start(&cfg.yaml()).await;
    let results = concurrent_gets(&url(&listen), 3).await;
    assert!(
        results.iter().all(|(r, _)| r.status == 200),
        "pending requests wait for the connection: {:?}",
        results.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );
    assert_eq!(b.connections(), 1, "max_connections 1");
    assert_eq!(b.peak_in_flight(), 1, "one request at a time on it");
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    assert!(
        slowest >= Duration::from_millis(850),
        "three 300ms requests in a row took {slowest:?}"
    );
}

// === active health checking ===

const HTTP_HC: &str = "    health_checks:\n      - {interval: 100ms, timeout: 500ms, \
                       unhealthy_threshold: 2, healthy_threshold: 2, \
                       http_health_check: {path: /healthz, host: up}}";

const TCP_HC: &str = "    health_checks:\n      - {interval: 100ms, timeout: 500ms, \
                      unhealthy_threshold: 2, healthy_threshold: 2, tcp_health_check: {}}";

async fn healthy_count(proxy: &Proxy) -> u64 {
    proxy.cluster_view("up").await["healthy_endpoints"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits until `addr`'s health flags satisfy `want`; returns how long.
async fn wait_health(
    proxy: &Proxy,
    addr: SocketAddr,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Duration {
    let t = Instant::now();
    eventually!(Duration::from_secs(5), what, {
        want(&proxy.endpoint_health("up", addr).await)
    });
    t.elapsed()
}

#[tokio::test]
async fn http_health_check_ejects_and_readmits() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&a, &b]);
    cfg.cluster_extra = HTTP_HC;
    let proxy = Proxy::start(&cfg.yaml()).await;
    eventually!(Duration::from_secs(5), "both endpoints pass", {
        healthy_count(&proxy).await == 2
    });
    let c = Client::h1();

    a.set_healthy(false);
    let took = wait_health(&proxy, a.addr, "a fails its health checks", |h| {
        h.contains("/failed_active_hc")
    })
    .await;
    // 2 failures 100 ms apart, + up to one interval before the first.
    assert!(
        took < Duration::from_millis(700),
        "interval 100ms x threshold 2, ejected after {took:?}"
    );
    let before = a.requests();
    for i in 0..20 {
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.backend(),
            Some("b"),
            "request {i} went to the unhealthy a"
        );
    }
    assert_eq!(a.requests(), before, "no traffic to an unhealthy endpoint");
    let failures = counter(
        &proxy,
        "ferry_upstream_health_check_total",
        &[("cluster", "up"), ("result", "failure")],
    )
    .await;
    assert!(failures >= 2.0, "failed checks counted: {failures}");

    a.set_healthy(true);
    let took = wait_health(&proxy, a.addr, "a passes again", |h| h == "healthy").await;
    assert!(
        took < Duration::from_millis(700),
        "readmitted after {took:?}"
    );
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(get(&c, &url(&listen)).await.status, 200);
    }
    assert!(a.requests() > before, "a readmitted endpoint gets traffic");
}

#[tokio::test]
async fn tcp_health_check_ejects_a_refusing_endpoint_and_readmits_it() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&a, &b]);
    cfg.cluster_extra = TCP_HC;
    let proxy = Proxy::start(&cfg.yaml()).await;
    eventually!(Duration::from_secs(5), "both endpoints pass", {
        healthy_count(&proxy).await == 2
    });
    let c = Client::h1();

    a.refuse().await;
    let took = wait_health(&proxy, a.addr, "a fails its TCP checks", |h| {
        h.contains("/failed_active_hc")
    })
    .await;
    assert!(took < Duration::from_millis(700), "ejected after {took:?}");
    for i in 0..20 {
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.status, 200, "request {i} hit the refusing endpoint");
        assert_eq!(r.backend(), Some("b"));
    }

    a.resume().await;
    let took = wait_health(&proxy, a.addr, "a accepts again", |h| h == "healthy").await;
    assert!(
        took < Duration::from_millis(700),
        "readmitted after {took:?}"
    );
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(get(&c, &url(&listen)).await.status, 200);
    }
    assert!(a.requests() > before, "a readmitted endpoint gets traffic");
}

#[tokio::test]
async fn panic_mode_balances_across_all_when_too_few_are_healthy() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c3 = Backend::start("c").await;
    b.set_healthy(false);
    c3.set_healthy(false);
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&a, &b, &c3]);
    cfg.cluster_extra = HTTP_HC;
    let proxy = Proxy::start(&cfg.yaml()).await;
    eventually!(Duration::from_secs(5), "1 of 3 healthy, panic mode", {
        let v = proxy.cluster_view("up").await;
        v["healthy_endpoints"] == 1 && v["panic_mode"] == true
    });
    let counts = ferry_integration_tests::tally(&Client::h1(), &url(&listen), 60, 1).await;
    for name in ["a", "b", "c"] {
        assert!(
            counts.get(name).copied().unwrap_or(0) >= 10,
            "1/3 healthy < 50%: traffic goes to all, got {counts:?}"
        );
    }

    // Panic mode off: only the healthy one.
    let listen2 = free_addr().to_string();
    let mut cfg = Cfg::new(&listen2, &[&a, &b, &c3]);
    cfg.cluster_extra = "    healthy_panic_threshold: 0\n    health_checks:\n      \
                         - {interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, \
                         healthy_threshold: 2, http_health_check: {path: /healthz, host: up}}";
    let p2 = Proxy::start(&cfg.yaml()).await;
    eventually!(Duration::from_secs(5), "a passes on the second proxy", {
        healthy_count(&p2).await == 1
    });
    let counts = ferry_integration_tests::tally(&Client::h1(), &url(&listen2), 30, 1).await;
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    drop(proxy);
}

// === outlier detection ===

#[tokio::test]
async fn consecutive_5xx_ejects_for_base_ejection_time_then_returns() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.set_behavior(Behavior::status(500));
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&a, &b]);
    cfg.cluster_extra = "    outlier_detection: {consecutive_5xx: 3, interval: 100ms, \
                         base_ejection_time: 800ms, max_ejection_percent: 50}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();

    // Round robin: a gets every other request until its third 5xx.
    for _ in 0..20 {
        if a.requests() >= 3 {
            break;
        }
        let _ = get(&c, &url(&listen)).await;
    }
    assert_eq!(a.requests(), 3);
    let ejected_at = Instant::now();
    let e = proxy.endpoint_view("up", a.addr).await;
    assert_eq!(e["health"], "/failed_outlier_check", "{e}");
    assert_eq!(e["times_ejected"], 1, "{e}");
    assert!(e["ejected_until_unix_ms"].as_u64().is_some(), "{e}");
    let text = proxy.admin_get("/clusters").await.text();
    assert!(
        text.contains(&format!(
            "up::{}::health_flags::/failed_outlier_check",
            a.addr
        )),
        "{text}"
    );
    assert!(text.contains(&format!("up::{}::times_ejected::1", a.addr)));
    assert!(text.contains(&format!("up::{}::ejected_until_unix_ms::", a.addr)));
    let ejections = counter(
        &proxy,
        "ferry_upstream_ejections_total",
        &[("cluster", "up")],
    )
    .await;
    assert_eq!(ejections, 1.0);

    // Ejected: no traffic, even once it is fine again.
    a.set_behavior(Behavior::ok());
    for i in 0..20 {
        let r = get(&c, &url(&listen)).await;
        assert_eq!(r.backend(), Some("b"), "request {i} reached the ejected a");
    }
    assert!(
        ejected_at.elapsed() < Duration::from_millis(700),
        "the check above took too long to be meaningful"
    );
    assert_eq!(a.requests(), 3);

    // It comes back on its own after base_ejection_time.
    let mut back = None;
    for _ in 0..200 {
        let r = get(&c, &url(&listen)).await;
        if r.backend() == Some("a") {
            back = Some(ejected_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = back.expect("the ejected endpoint never came back");
    assert!(
        back >= Duration::from_millis(700) && back < Duration::from_millis(1600),
        "base_ejection_time 800ms, back after {back:?}"
    );
    let e = proxy.endpoint_view("up", a.addr).await;
    assert_eq!(e["health"], "healthy", "{e}");
    assert!(e["rq_total"].as_u64().unwrap_or(0) >= 4, "{e}");
}

#[tokio::test]
async fn consecutive_gateway_failures_eject_when_enforced() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = free_addr().to_string();
    let mut cfg = Cfg::new(&listen, &[&a, &b]);
    cfg.cluster_extra =
        "    outlier_detection: {consecutive_5xx: 100, consecutive_gateway_failure: 3, \
                         enforcing_consecutive_gateway_failure: 100, interval: 100ms, \
                         base_ejection_time: 30s, max_ejection_percent: 50}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    // 500s are 5xx but not gateway failures: no ejection.
    a.set_behavior(Behavior::status(500));
    for _ in 0..12 {
        get(&c, &url(&listen)).await;
    }
    assert_eq!(proxy.endpoint_health("up", a.addr).await, "healthy");
    assert_eq!(a.requests(), 6);
    // 502s are: ejected after the third in a row.
    a.set_behavior(Behavior::status(502));
    for _ in 0..6 {
        get(&c, &url(&listen)).await;
    }
    assert_eq!(a.requests(), 9);
    assert_eq!(
        proxy.endpoint_health("up", a.addr).await,
        "/failed_outlier_check"
    );
    let e = proxy.endpoint_view("up", a.addr).await;
    assert!(
        e["consecutive_gateway_failure"].as_u64().is_some(),
        "the run is shown in /clusters: {e}"
    );
    for _ in 0..10 {
        assert_eq!(get(&c, &url(&listen)).await.backend(), Some("b"));
    }
    assert_eq!(a.requests(), 9);
}

#[tokio::test]
async fn max_ejection_percent_is_respected() {
    let bs = [
        Backend::start("e0").await,
        Backend::start("e1").await,
        Backend::start("e2").await,
        Backend::start("e3").await,
    ];
    for b in &bs {
        b.set_behavior(Behavior::status(503));
    }
    let listen = free_addr().to_string();
    let refs: Vec<&Backend> = bs.iter().collect();
    let mut cfg = Cfg::new(&listen, &refs);
    cfg.cluster_extra = "    healthy_panic_threshold: 0\n    outlier_detection: \
                         {consecutive_5xx: 2, interval: 10s, base_ejection_time: 30s, \
                         max_ejection_percent: 50}";
    let proxy = Proxy::start(&cfg.yaml()).await;
    let c = Client::h1();
    for _ in 0..40 {
        assert_eq!(get(&c, &url(&listen)).await.status, 503);
    }
    let view = proxy.cluster_view("up").await;
    let ejected = view["endpoints"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| {
                    e["health"]
                        .as_str()
                        .is_some_and(|h| h.contains("/failed_outlier_check"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(ejected, 2, "50% of 4 endpoints at most: {view}");
    assert_eq!(view["healthy_endpoints"], 2, "{view}");
}
