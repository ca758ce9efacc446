//! `ferry-hello`: the demo app the process scaler runs.
//!
//! - listens on `127.0.0.1:$PORT` (`$HOST` overrides the address; `PORT`
//!   defaults to 8080, as Knative's contract says);
//! - `GET /` (any path) answers `Hello from {K_REVISION}` (or `$MESSAGE`);
//!   `?sleep=MS` holds the request that long first, to simulate work;
//! - `GET /healthz` answers 200 (a readiness probe path);
//! - `GET /stats` answers `{"revision", "port", "requests", "in_flight",
//!   "max_in_flight"}` (this process's own counters, `/stats` itself not
//!   counted);
//! - `GET /crash` exits with status 3 (restart tests);
//! - `GET /call?host=HOST[&path=PATH]` calls `PATH` (default `/`) on
//!   `HOST` through `$FERRY_OUTBOUND`, the sidecar's outbound listener the
//!   process scaler gives every instance (`http://127.0.0.1:PORT`), and
//!   answers with that answer's status and body, its `x-revision` as
//!   `x-called-revision` (service-to-service calls through the mesh);
//! - a request carrying a CloudEvent is answered with a reply event
//!   (`cloudevent.rs`: the eventing demo's subscriber);
//! - every answer carries `x-revision`, `x-instance` (the port) and
//!   `x-in-flight` (requests in flight in this process when this one
//!   arrived, itself included) and `x-max-in-flight`, so a client can
//!   check per-instance concurrency without reaching instances directly;
//! - `$STARTUP_DELAY_MS` delays binding the port (a slow-starting app, for
//!   readiness and cold-start tests);
//! - once listening it logs `... listening on ADDR at unix_us=T` (stderr),
//!   its own start time for the cold-start bench;
//! - SIGTERM or SIGINT: exits at once (its sidecar has drained already).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

mod cloudevent;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

struct App {
    revision: String,
    message: String,
    port: u16,
    counters: Counters,
    /// `$FERRY_OUTBOUND`: where `/call` sends requests.
    outbound: Option<SocketAddr>,
}

/// Decrements the in-flight count however the request ends (answered or
/// dropped by a client that went away).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let c = &app.counters;
    if path == "/stats" {
        let body = format!(
            "{{\"revision\":\"{}\",\"port\":{},\"requests\":{},\"in_flight\":{},\"max_in_flight\":{}}}\n",
            app.revision,
            app.port,
            c.requests.load(Ordering::Acquire),
            c.in_flight.load(Ordering::Acquire),
            c.max_in_flight.load(Ordering::Acquire),
        );
        return Ok(respond(&app, StatusCode::OK, body, 0, "application/json"));
    }
    if path == "/healthz" {
        return Ok(respond(
            &app,
            StatusCode::OK,
            "ok\n".into(),
            0,
            "text/plain",
        ));
    }
    if path == "/crash" {
        eprintln!("ferry-hello: /crash requested, exiting with status 3");
        std::process::exit(3);
    }
    if path == "/call" {
        let query = req.uri().query().unwrap_or("");
        return Ok(call(&app, query).await);
    }
    c.requests.fetch_add(1, Ordering::AcqRel);
    let now = c.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    let _guard = InFlight(&c.in_flight);
    c.max_in_flight.fetch_max(now, Ordering::AcqRel);
    if cloudevent::is_event(&req) {
        return Ok(cloudevent::echo(&app.revision, req).await);
    }
    let sleep = req
        .uri()
        .query()
        .and_then(|q| query_param(q, "sleep"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        // A typo must not park a request for hours.
        .min(600_000);
    if sleep > 0 {
        tokio::time::sleep(Duration::from_millis(sleep)).await;
    }
    let body = format!("{}\n", app.message);
    Ok(respond(&app, StatusCode::OK, body, now, "text/plain"))
}

/// `/call?host=HOST&path=PATH`: one GET through the sidecar's outbound
/// listener, whose routes pick the revision by `Host` (and activate it if
/// it is at zero).
async fn call(app: &App, query: &str) -> Response<Full<Bytes>> {
    let Some(outbound) = app.outbound else {
        return respond(
            app,
            StatusCode::SERVICE_UNAVAILABLE,
            "no FERRY_OUTBOUND: this instance has no outbound sidecar\n".into(),
            0,
            "text/plain",
        );
    };
    let Some(host) = query_param(query, "host").filter(|h| !h.is_empty()) else {
        return respond(
            app,
            StatusCode::BAD_REQUEST,
            "usage: /call?host=HOST[&path=PATH]\n".into(),
            0,
            "text/plain",
        );
    };
    let path = query_param(query, "path").unwrap_or("/");
    match get(outbound, host, path).await {
        Ok((status, revision, body)) => {
            let mut r = respond(app, status, body, 0, "text/plain");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&revision) {
                r.headers_mut().insert("x-called-revision", v);
            }
            r
        }
        Err(e) => respond(
            app,
            StatusCode::BAD_GATEWAY,
            format!("calling {host}{path} through {outbound}: {e}\n"),
            0,
            "text/plain",
        ),
    }
}

/// GET `path` with `Host: host` over one HTTP/1.1 connection to `addr`:
/// the status, the answer's `x-revision` and its body.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(StatusCode, String, String), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let revision = resp
        .headers()
        .get("x-revision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        revision,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn respond(
    app: &App,
    status: StatusCode,
    body: String,
    in_flight: u64,
    content_type: &str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("content-type", content_type.to_string());
    put("x-revision", app.revision.clone());
    put("x-instance", app.port.to_string());
    put("x-in-flight", in_flight.to_string());
    put(
        "x-max-in-flight",
        app.counters
            .max_in_flight
            .load(Ordering::Acquire)
            .to_string(),
    );
    r
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => match p.parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("ferry-hello: PORT={p:?} is not a port number");
                std::process::exit(2);
            }
        },
        Err(_) => 8080,
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_string());
    let addr: SocketAddr = match format!("{host}:{port}").parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("ferry-hello: HOST={host:?} is not an IP address");
            std::process::exit(2);
        }
    };
    let revision = std::env::var("K_REVISION").unwrap_or_else(|_| "ferry-hello".to_string());
    let message = std::env::var("MESSAGE").unwrap_or_else(|_| format!("Hello from {revision}"));
    let delay = std::env::var("STARTUP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-hello: binding {addr}: {e}");
            std::process::exit(1);
        }
    };
    let listening_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    eprintln!("ferry-hello: {revision} listening on {addr} at unix_us={listening_us}");
    let outbound = std::env::var("FERRY_OUTBOUND").ok().and_then(|u| {
        u.strip_prefix("http://")
            .unwrap_or(&u)
            .trim_end_matches('/')
            .parse::<SocketAddr>()
            .ok()
    });
    let app = Arc::new(App {
        revision,
        message,
        port,
        counters: Counters::default(),
        outbound,
    });

    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: try again shortly
                // rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    eprintln!("ferry-hello: stopping");
}
