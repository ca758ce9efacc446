//! The CloudEvent echo, for eventing demos and tests: a request carrying a
//! binary-mode CloudEvent (`ce-specversion`) is answered 200 with a *reply*
//! event, which a Ferry broker appends back to itself:
//! `type: dev.ferry.hello.echo`, `source: /ferry-hello/{K_REVISION}`,
//! `id: echo-{the event's id}`, and the event's data and content type.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

/// The reply's `type`.
pub const ECHO_TYPE: &str = "dev.ferry.hello.echo";

pub fn is_event(req: &Request<Incoming>) -> bool {
    req.headers().contains_key("ce-specversion")
}

pub async fn echo(revision: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let id = parts
        .headers
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let data = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let mut r = Response::new(Full::new(data));
    let h = r.headers_mut();
    for (name, value) in [
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", format!("echo-{id}")),
        ("ce-source", format!("/ferry-hello/{revision}")),
        ("ce-type", ECHO_TYPE.to_string()),
    ] {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                h.insert(name, v);
            }
            Err(_) => return status(StatusCode::BAD_REQUEST),
        }
    }
    if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
        h.insert(CONTENT_TYPE, ct.clone());
    }
    r
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}
