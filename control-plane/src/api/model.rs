//! The model's REST endpoints (JSON in, JSON out):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v1/namespaces/{ns}/{kind}` | `{"kind": "ServiceList", "items": [...]}` |
//! | `GET /v1/{kind}` | the same over every namespace |
//! | `GET /v1/namespaces/{ns}/{kind}/{name}` | the object with its status |
//! | `PUT /v1/namespaces/{ns}/{kind}/{name}` | apply (create or update): 201 created, 200 otherwise; header `ferry-apply-result: created/configured/unchanged` |
//! | `POST /v1/namespaces/{ns}/{kind}` | apply, the name taken from the body |
//! | `DELETE /v1/namespaces/{ns}/{kind}/{name}` | delete; the object as it was |
//!
//! `kind` is `services`, `revisions`, `routes`, `configurations`, `brokers`
//! or `triggers`; only services, brokers and triggers are written (the
//! others are created by their Service). Errors are Kubernetes `Status`
//! objects: 400 with every invalid field path, 404, 405, 409, 413, 500.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde_json::Value;

use crate::model::Kind;
use crate::store::{Serving, ServingError};

/// Largest accepted request body (a manifest).
pub const MAX_BODY: usize = 1024 * 1024;

/// Name of the header telling what an apply did.
pub const APPLY_RESULT_HEADER: &str = "ferry-apply-result";

/// A Kubernetes-style `Status` error body; `details.causes` lists each
/// invalid field.
#[derive(Serialize)]
struct Status {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    status: &'static str,
    reason: &'static str,
    code: u16,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    field: String,
    message: String,
}

pub fn is_model_path(path: &str) -> bool {
    parse_path(path).is_some()
}

/// `(kind, namespace, name)` of a model path.
fn parse_path(path: &str) -> Option<(Kind, Option<&str>, Option<&str>)> {
    let rest = path.strip_prefix("/v1/")?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["namespaces", ns, kind] => Some((parse_kind(kind)?, Some(*ns), None)),
        ["namespaces", ns, kind, name] => Some((parse_kind(kind)?, Some(*ns), Some(*name))),
        [kind] => Some((parse_kind(kind)?, None, None)),
        _ => None,
    }
}

/// Only the plural forms are paths (a short name like `rev` is a CLI
/// convenience).
fn parse_kind(s: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.plural() == s)
}

pub async fn handle<B>(serving: &Serving, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some((kind, ns, name)) = parse_path(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no such path: {path}"),
            None,
        );
    };
    let writable = matches!(kind, Kind::Service | Kind::Broker | Kind::Trigger);
    let body = if method == Method::PUT || method == Method::POST {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(c) => Some(c.to_bytes().to_vec()),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return if too_large {
                    error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        format!("the body is larger than {MAX_BODY} bytes"),
                        None,
                    )
                } else {
                    error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("reading the body: {e}"),
                        None,
                    )
                };
            }
        }
    } else {
        None
    };
    let result = match (&method, ns, name, body) {
        (&Method::GET | &Method::HEAD, ns, None, _) => {
            serving.list_object(kind, ns).await.map(|l| {
                (
                    StatusCode::OK,
                    serde_json::to_value(l).unwrap_or(Value::Null),
                    None,
                )
            })
        }
        (&Method::GET | &Method::HEAD, Some(ns), Some(name), _) => serving
            .get(kind, ns, name)
            .await
            .map(|v| (StatusCode::OK, v, None)),
        (&Method::PUT, Some(ns), Some(name), Some(body)) if writable => {
            apply(serving, kind, ns, Some(name), &body).await
        }
        (&Method::POST, Some(ns), None, Some(body)) if writable => {
            apply(serving, kind, ns, None, &body).await
        }
        (&Method::DELETE, Some(ns), Some(name), _) if writable => serving
            .delete(kind, ns, name)
            .await
            .map(|v| (StatusCode::OK, v, None)),
        _ => {
            let allow = match (writable, ns.is_some(), name.is_some()) {
                (true, true, true) => "GET, HEAD, PUT, DELETE",
                (true, true, false) => "GET, HEAD, POST",
                _ => "GET, HEAD",
            };
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not allowed on {path}; use {allow}"),
                None,
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
    };
    match result {
        Ok((status, value, outcome)) => {
            let mut resp = super::json(&value);
            *resp.status_mut() = status;
            if let Some(o) = outcome {
                resp.headers_mut()
                    .insert(APPLY_RESULT_HEADER, HeaderValue::from_static(o));
            }
            resp
        }
        Err(e) => from_error(e),
    }
}

type Answer = (StatusCode, Value, Option<&'static str>);

async fn apply(
    serving: &Serving,
    kind: Kind,
    ns: &str,
    name: Option<&str>,
    body: &[u8],
) -> Result<Answer, ServingError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ServingError::Invalid(
            crate::model::FieldError::new("", format!("the body is not valid JSON: {e}")).into(),
        )
    })?;
    let applied = serving.apply_value(kind, ns, name, value).await?;
    let status = match applied.outcome {
        crate::model::reconcile::Outcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, applied.object, Some(applied.outcome.as_str())))
}

fn from_error(e: ServingError) -> Response<Full<Bytes>> {
    match e {
        ServingError::Invalid(errs) => {
            let causes = errs
                .0
                .iter()
                .map(|f| Cause {
                    field: f.path.clone(),
                    message: f.message.clone(),
                })
                .collect();
            error(
                StatusCode::BAD_REQUEST,
                "Invalid",
                errs.to_string(),
                Some(Details { causes }),
            )
        }
        ServingError::NotFound(m) => error(StatusCode::NOT_FOUND, "NotFound", m, None),
        ServingError::NotAllowed(m) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", m, None)
        }
        ServingError::Conflict(m) => error(StatusCode::CONFLICT, "Conflict", m, None),
        ServingError::Store(e) => {
            tracing::error!(error = %e, "store failure");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
                None,
            )
        }
    }
}

fn error(
    status: StatusCode,
    reason: &'static str,
    message: String,
    details: Option<Details>,
) -> Response<Full<Bytes>> {
    let body = Status {
        kind: "Status",
        api_version: "v1",
        status: "Failure",
        reason,
        code: status.as_u16(),
        message,
        details,
    };
    let mut resp = super::json(&body);
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
pub(crate) mod tests;
