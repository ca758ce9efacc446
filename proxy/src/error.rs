//! The proxy's one error type, and the only place errors become HTTP
//! responses.

use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::http::body::ProxyBody;

/// What went wrong, in the terms an operator reads in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (missing Host, bad URI).
    BadRequest,
    /// No virtual host or route matched.
    NoRoute,
    /// The route names a cluster with no endpoints.
    NoHealthyUpstream,
    /// TCP connect (or TLS handshake) to the endpoint failed.
    ConnectFailed,
    /// The connect did not finish within the cluster's connect timeout.
    ConnectTimeout,
    /// The route timeout fired before the upstream answered.
    UpstreamTimeout,
    /// The upstream closed or reset before sending a response head.
    UpstreamReset,
    /// The listener is being removed or the proxy is draining.
    Draining,
    /// A circuit breaker of the cluster is open (connections, pending
    /// requests, requests or retries at their limit).
    Overloaded,
    /// Queue-proxy role: the revision's queue is full.
    QueueFull,
    /// Queue-proxy role: no execution slot within the queue timeout.
    QueueTimeout,
    /// Activator role: too many requests already held for the revision.
    ActivationFull,
    /// Activator role: no endpoint arrived within the hold timeout.
    ActivationTimeout,
}

/// Which side an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

impl ErrorKind {
    pub fn side(self) -> Side {
        match self {
            ErrorKind::BadRequest => Side::Downstream,
            ErrorKind::NoRoute
            | ErrorKind::Draining
            | ErrorKind::Overloaded
            | ErrorKind::QueueFull
            | ErrorKind::QueueTimeout
            | ErrorKind::ActivationFull
            | ErrorKind::ActivationTimeout => Side::Internal,
            _ => Side::Upstream,
        }
    }

    /// Whether a retry on another endpoint could succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::UpstreamReset
        )
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NoHealthyUpstream
            | ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::Draining
            | ErrorKind::Overloaded
            | ErrorKind::QueueFull
            | ErrorKind::QueueTimeout
            | ErrorKind::ActivationFull
            | ErrorKind::ActivationTimeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy's response flag, for the access log.
    pub fn flag(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "DPE",
            ErrorKind::NoRoute => "NR",
            ErrorKind::NoHealthyUpstream => "UH",
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => "UF",
            ErrorKind::UpstreamTimeout => "UT",
            ErrorKind::UpstreamReset => "UC",
            ErrorKind::Draining => "DR",
            ErrorKind::Overloaded => "UO",
            // Envoy has no flags for these; Ferry's own, in Envoy's style.
            ErrorKind::QueueFull => "QF",
            ErrorKind::QueueTimeout => "QT",
            ErrorKind::ActivationFull => "AF",
            ErrorKind::ActivationTimeout => "AT",
        }
    }

    fn body(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad request\n",
            ErrorKind::NoRoute => "no route\n",
            ErrorKind::NoHealthyUpstream => "no healthy upstream\n",
            ErrorKind::ConnectFailed => "upstream connect error\n",
            ErrorKind::ConnectTimeout => "upstream connect timeout\n",
            ErrorKind::UpstreamTimeout => "upstream request timeout\n",
            ErrorKind::UpstreamReset => "upstream reset before response started\n",
            ErrorKind::Draining => "listener draining\n",
            ErrorKind::Overloaded => "upstream overloaded\n",
            ErrorKind::QueueFull => "revision queue full\n",
            ErrorKind::QueueTimeout => "timed out waiting in the revision queue\n",
            ErrorKind::ActivationFull => "too many requests waiting for the revision to activate\n",
            ErrorKind::ActivationTimeout => "timed out waiting for the revision to activate\n",
        }
    }
}

pub struct ProxyError {
    pub kind: ErrorKind,
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind) -> Self {
        ProxyError { kind, cause: None }
    }

    pub fn with_cause(
        kind: ErrorKind,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ProxyError {
            kind,
            cause: Some(cause.into()),
        }
    }

    /// The local reply for this error.
    pub fn into_response(self) -> Response<ProxyBody> {
        let kind = self.kind;
        let mut resp = Response::new(ProxyBody::full(Bytes::from_static(kind.body().as_bytes())));
        *resp.status_mut() = kind.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-ferry-error", HeaderValue::from_static(kind.flag()));
        match kind {
            ErrorKind::Overloaded => {
                h.insert("x-ferry-overloaded", HeaderValue::from_static("true"));
            }
            // The reason, for clients and for the tests of the serving roles.
            ErrorKind::QueueFull => {
                h.insert("x-ferry-queue", HeaderValue::from_static("full"));
            }
            ErrorKind::QueueTimeout => {
                h.insert("x-ferry-queue", HeaderValue::from_static("timeout"));
            }
            ErrorKind::ActivationFull => {
                h.insert("x-ferry-activation", HeaderValue::from_static("full"));
            }
            ErrorKind::ActivationTimeout => {
                h.insert("x-ferry-activation", HeaderValue::from_static("timeout"));
            }
            _ => {}
        }
        if matches!(kind, ErrorKind::BadRequest | ErrorKind::Draining) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.body().trim_end())?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyError({:?}, {self})", self.kind)
    }
}

impl std::error::Error for ProxyError {}
