//! Clients: hyper-util's pooled client for HTTP/1.1 and h2c (prior
//! knowledge), a TLS client with ALPN, and raw sockets for bytes no
//! well-behaved client would send.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client as Legacy};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::{empty, Body};

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// The JSON a [`crate::Backend`] answers with.
#[derive(Debug, Clone, Deserialize)]
pub struct Echo {
    pub backend: String,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
    pub body: String,
    pub tls: bool,
    pub sni: Option<String>,
    pub alpn: Option<String>,
}

/// Pooled HTTP client. `h1()` speaks HTTP/1.1 with keep-alive (one
/// connection reused by sequential requests), `h2c()` HTTP/2 with prior
/// knowledge.
#[derive(Clone)]
pub struct Client {
    inner: Legacy<HttpConnector, Body>,
}

/// A TLS client offering a chosen ALPN list; one connection per request.
pub struct TlsClient {
    cfg: Arc<ClientConfig>,
}

#[derive(Debug)]
pub struct TlsResp {
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<String>,
    pub resp: Resp,
}

// === impl Resp ===

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The backend's JSON echo; panics with the body if it is not one.
    pub fn echo(&self) -> Echo {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not a backend echo: {e}; body: {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of `name`.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The `x-backend` header: which backend answered.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    pub async fn read(resp: Response<Incoming>) -> anyhow::Result<Resp> {
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.context("reading response body")?;
        let trailers = collected.trailers().cloned();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }
}

// === impl Echo ===

impl Echo {
    /// First value of a request header as the backend saw it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get(name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

// === impl Client ===

impl Client {
    pub fn h1() -> Client {
        let mut b = Legacy::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90))
            .retry_canceled_requests(false);
        Client {
            inner: b.build(connector()),
        }
    }

    /// HTTP/1.1 without connection reuse: every request opens a connection.
    pub fn h1_no_pool() -> Client {
        let mut b = Legacy::builder(TokioExecutor::new());
        b.pool_max_idle_per_host(0).retry_canceled_requests(false);
        Client {
            inner: b.build(connector()),
        }
    }

    pub fn h2c() -> Client {
        let mut b = Legacy::builder(TokioExecutor::new());
        b.http2_only(true).retry_canceled_requests(false);
        Client {
            inner: b.build(connector()),
        }
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Resp> {
        self.get_with(url, &[]).await
    }

    /// GET with extra request headers (`host` overrides the URL's).
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Resp> {
        let mut b = Request::get(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(empty())?).await
    }

    /// Sends and reads the whole response, with a 30 s cap.
    pub async fn send(&self, req: Request<Body>) -> anyhow::Result<Resp> {
        let what = format!("{} {}", req.method(), req.uri());
        let fut = async {
            let resp = self.inner.request(req).await?;
            Resp::read(resp).await
        };
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(r) => r.with_context(|| what.clone()),
            Err(_) => bail!("{what}: no response within 30s"),
        }
    }

    /// Sends and returns the response with its body unread (for streaming).
    pub async fn send_streaming(&self, req: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        Ok(self.inner.request(req).await?)
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    c
}

// === impl TlsClient ===

impl TlsClient {
    pub fn new(cfg: Arc<ClientConfig>) -> TlsClient {
        TlsClient { cfg }
    }

    /// GET `path` over a new TLS connection to `addr`, verifying the
    /// certificate for `server_name`, using the protocol ALPN chose
    /// (HTTP/1.1 when none).
    pub async fn get(
        &self,
        addr: SocketAddr,
        server_name: &str,
        path: &str,
    ) -> anyhow::Result<TlsResp> {
        let fut = self.get_inner(addr, server_name, path);
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(r) => r,
            Err(_) => bail!("TLS GET {path}: no response within 30s"),
        }
    }

    async fn get_inner(
        &self,
        addr: SocketAddr,
        server_name: &str,
        path: &str,
    ) -> anyhow::Result<TlsResp> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.cfg.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let alpn = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let io = TokioIo::new(tls);
        let resp = if alpn.as_deref() == Some("h2") {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let req = Request::get(format!("https://{server_name}{path}"))
                .version(Version::HTTP_2)
                .body(empty())?;
            send.send_request(req).await?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header(header::HOST, server_name)
                .body(empty())?;
            send.send_request(req).await?
        };
        Ok(TlsResp {
            alpn,
            resp: Resp::read(resp).await?,
        })
    }
}

// === raw sockets ===

/// Writes `bytes` on a new connection and reads until the server closes
/// or `cap` passes; returns what was read (lossy UTF-8).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], cap: Duration) -> String {
    let mut out = Vec::new();
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(bytes).await?;
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(cap, fut).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until the end of an HTTP head (`\r\n\r\n`); returns the
/// head and the bytes read past it. Errors on EOF, a 64 KiB head, or 10 s.
pub async fn raw_read_head(s: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let fut = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
            }
            if buf.len() > 64 * 1024 {
                bail!("HTTP head larger than 64 KiB");
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "connection closed before the end of the head; got {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(r) => r,
        Err(_) => bail!("no complete HTTP head within 10s"),
    }
}

/// `xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`, lower- or upper-case hex.
pub fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
        && parts[2].starts_with('4')
        && parts[3]
            .chars()
            .next()
            .is_some_and(|c| matches!(c, '8' | '9' | 'a' | 'b' | 'A' | 'B'))
}

/// A gRPC health client over plaintext HTTP/2 (prior knowledge) to `addr`.
pub async fn grpc_health_client(
    addr: SocketAddr,
) -> anyhow::Result<tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(tonic_health::pb::health_client::HealthClient::new(channel))
}
