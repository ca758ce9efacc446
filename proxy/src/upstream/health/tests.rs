//! Threshold arithmetic, then the HTTP and TCP checkers against tiny local
//! servers on 127.0.0.1 (pass, fail by status, timeout, refused), then the
//! checker task end to end over one socket.

use std::convert::Infallible;
use std::sync::atomic::AtomicU16;
use std::sync::Mutex as StdMutex;

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::*;
use crate::config::{Dur, HealthCheck, HttpHealthCheck, StatusRange, TcpHealthCheck};
use crate::upstream::cluster::Target;
use crate::upstream::PoolRegistry;

fn settings(healthy: u32, unhealthy: u32) -> HcSettings {
    HcSettings {
        timeout: Duration::from_secs(1),
        interval: Duration::from_secs(5),
        jitter: Duration::ZERO,
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        kind: HcKind::Tcp,
    }
}

#[test]
fn first_pass_makes_a_new_endpoint_healthy_at_once() {
    let mut c = CheckerState::default();
    assert!(!c.healthy);
    assert!(c.apply(true, 3, 3));
    assert!(c.healthy);
}

#[test]
fn a_first_failure_keeps_it_out_until_healthy_threshold_passes() {
    let mut c = CheckerState::default();
    assert!(!c.apply(false, 2, 3));
    assert!(!c.healthy);
    assert!(!c.apply(true, 2, 3), "one pass of two");
    assert!(c.apply(true, 2, 3));
    assert!(c.healthy);
}

#[test]
fn unhealthy_and_healthy_thresholds_are_exact() {
    let mut c = CheckerState::default();
    c.apply(true, 2, 3);
    // Two failures, a pass (resets the run), then three failures.
    assert!(!c.apply(false, 2, 3));
    assert!(!c.apply(false, 2, 3));
    assert!(!c.apply(true, 2, 3));
    assert!(c.healthy);
    assert!(!c.apply(false, 2, 3));
    assert!(!c.apply(false, 2, 3));
    assert!(c.apply(false, 2, 3), "the 3rd failure in a row");
    assert!(!c.healthy);
    assert_eq!(c.consecutive_failures, 3);
    // A pass, a failure (resets), then two passes.
    assert!(!c.apply(true, 2, 3));
    assert!(!c.apply(false, 2, 3));
    assert!(!c.apply(true, 2, 3));
    assert!(c.apply(true, 2, 3), "the 2nd pass in a row");
    assert!(c.healthy);
}

#[test]
fn thresholds_of_one() {
    let mut c = CheckerState::default();
    c.apply(true, 1, 1);
    assert!(c.apply(false, 1, 1));
    assert!(c.apply(true, 1, 1));
}

#[test]
fn every_checker_must_pass() {
    let s = settings(1, 1);
    let h = HostHealth::new(2);
    assert!(h.failed_active_hc());
    assert!(!h.apply(0, true, &s), "checker 1 still has no pass");
    assert!(h.apply(1, true, &s));
    assert!(!h.failed_active_hc());
    assert!(h.apply(0, false, &s));
    assert!(h.failed_active_hc());
    assert_eq!(h.checkers().len(), 2);
    // Without checkers an endpoint is actively healthy for good.
    assert!(!HostHealth::new(0).failed_active_hc());
}

#[test]
fn settings_defaults() {
    let hc = HealthCheck {
        http_health_check: Some(HttpHealthCheck {
            path: "/healthz".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = HcSettings::from_config(&hc, "backend");
    assert_eq!(s.timeout, Duration::from_secs(1));
    assert_eq!(s.interval, Duration::from_secs(5));
    assert_eq!((s.healthy_threshold, s.unhealthy_threshold), (2, 3));
    assert_eq!(
        s.kind,
        HcKind::Http {
            path: "/healthz".into(),
            host: "backend".into(),
            expected: vec![(200, 300)],
        }
    );
    assert!(s.passes(200) && s.passes(299) && !s.passes(300) && !s.passes(199));
}

// === Real sockets ===

/// What the test server saw and will answer.
struct Server {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hosts: Arc<StdMutex<Vec<String>>>,
    paths: Arc<StdMutex<Vec<String>>>,
}

/// An HTTP/1.1 server: `/slow` never answers in time, anything else gets
/// the current `status`.
async fn server(http2: bool) -> Server {
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("local_addr: {e}"),
    };
    let status = Arc::new(AtomicU16::new(200));
    let hosts = Arc::new(StdMutex::new(Vec::new()));
    let paths = Arc::new(StdMutex::new(Vec::new()));
    let (st, hs, ps) = (status.clone(), hosts.clone(), paths.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (st, hs, ps) = (st.clone(), hs.clone(), ps.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (st, hs, ps) = (st.clone(), hs.clone(), ps.clone());
                    async move {
                        let host = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get(header::HOST)
                                    .and_then(|h| h.to_str().ok())
                                    .map(str::to_string)
                            })
                            .unwrap_or_default();
                        if let Ok(mut h) = hs.lock() {
                            h.push(host);
                        }
                        if let Ok(mut p) = ps.lock() {
                            p.push(req.uri().path().to_string());
                        }
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = StatusCode::from_u16(st.load(Ordering::SeqCst))
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let io = TokioIo::new(stream);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    Server {
        addr,
        status,
        hosts,
        paths,
    }
}

fn http_hc(path: &str, host: Option<&str>, timeout_ms: u64) -> HealthCheck {
    HealthCheck {
        timeout: Some(Dur(Duration::from_millis(timeout_ms))),
        interval: Some(Dur(Duration::from_millis(50))),
        unhealthy_threshold: Some(2),
        healthy_threshold: Some(2),
        http_health_check: Some(HttpHealthCheck {
            path: path.into(),
            host: host.map(str::to_string),
            expected_statuses: vec![StatusRange {
                start: 200,
                end: 300,
            }],
        }),
        ..Default::default()
    }
}

fn cluster_for(
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    checks: Vec<HealthCheck>,
) -> Arc<Cluster> {
    let cfg = config::Cluster {
        name: "hc-test".into(),
        protocol,
        health_checks: checks,
        healthy_panic_threshold: Some(0.0),
        ..Default::default()
    };
    let targets = vec![Target {
        addr,
        hostname: None,
        weight: 1,
    }];
    match Cluster::build(
        &cfg,
        "clusters[0]",
        targets,
        &Arc::new(PoolRegistry::default()),
    ) {
        Ok(c) => c,
        Err(e) => panic!("build: {e}"),
    }
}

async fn check_of(c: &Cluster, i: usize) -> Result<(), String> {
    let ep = c.hosts.load().endpoints[0].clone();
    check(ep.pool(), &c.health_checks()[i], c.protocol, false).await
}

#[tokio::test]
async fn http_check_passes_fails_by_status_and_times_out() {
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::Http2] {
        let srv = server(protocol == UpstreamProtocol::Http2).await;
        let c = cluster_for(
            srv.addr,
            protocol,
            vec![
                http_hc("/healthz", None, 1000),
                http_hc("/slow", Some("probe.local"), 200),
            ],
        );
        assert_eq!(check_of(&c, 0).await, Ok(()), "{protocol:?}");
        srv.status.store(503, Ordering::SeqCst);
        let failed = check_of(&c, 0).await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.contains("unexpected status 503")),
            "{protocol:?}: {failed:?}"
        );
        srv.status.store(200, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let slow = check_of(&c, 1).await;
        assert!(
            slow.as_ref().is_err_and(|e| e.contains("no answer within")),
            "{slow:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
            "timed out after {took:?}"
        );
        let hosts = srv.hosts.lock().map(|h| h.clone()).unwrap_or_default();
        assert_eq!(
            hosts.first().map(String::as_str),
            Some("hc-test"),
            "default host"
        );
        assert_eq!(hosts.last().map(String::as_str), Some("probe.local"));
        let paths = srv.paths.lock().map(|p| p.clone()).unwrap_or_default();
        assert_eq!(paths.first().map(String::as_str), Some("/healthz"));
        // Checks never borrow from (or add to) the pool.
        assert_eq!(c.hosts.load().endpoints[0].idle_connections(), 0);
        assert_eq!(c.breakers().snapshot().connections, 0);
    }
}

#[tokio::test]
async fn tcp_check_connects_or_fails() {
    let srv = server(false).await;
    let tcp = HealthCheck {
        timeout: Some(Dur(Duration::from_millis(500))),
        tcp_health_check: Some(TcpHealthCheck {}),
        ..Default::default()
    };
    let c = cluster_for(srv.addr, UpstreamProtocol::Http1, vec![tcp.clone()]);
    assert_eq!(check_of(&c, 0).await, Ok(()));
    // A port nothing listens on: refused.
    let closed = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l.local_addr().map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let Ok(closed) = closed else {
        panic!("cannot find a free port: {closed:?}")
    };
    let c = cluster_for(closed, UpstreamProtocol::Http1, vec![tcp]);
    assert!(check_of(&c, 0).await.is_err());
}

#[tokio::test]
async fn the_checker_task_moves_an_endpoint_in_and_out() {
    let srv = server(false).await;
    let c = cluster_for(
        srv.addr,
        UpstreamProtocol::Http1,
        vec![http_hc("/healthz", None, 500)],
    );
    // New endpoint: out until its first check, and panic mode is off.
    assert!(c.pick(None).is_none());
    crate::upstream::start(&c);
    let wait_for = |want: bool| {
        let c = c.clone();
        async move {
            for _ in 0..200 {
                if c.pick(None).is_some() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(wait_for(true).await, "healthy after the first check");
    srv.status.store(500, Ordering::SeqCst);
    assert!(wait_for(false).await, "unhealthy after 2 failures");
    let ep = c.hosts.load().endpoints[0].clone();
    assert_eq!(ep.health_flags(), "/failed_active_hc");
    srv.status.store(204, Ordering::SeqCst);
    assert!(wait_for(true).await, "healthy again after 2 passes");
    assert!(c.stats.hc_success.get() >= 3);
    assert!(c.stats.hc_failure.get() >= 2);
    // Dropping the cluster ends the task (it holds a Weak only).
    let weak = Arc::downgrade(&c);
    drop(c);
    drop(ep);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(weak.upgrade().is_none());
}
