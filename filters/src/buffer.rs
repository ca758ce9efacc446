//! `buffer`: Envoy's buffer filter (`envoy.filters.http.buffer`). The whole
//! request body is read before the request goes upstream, so the upstream
//! sees a complete request with `content-length` (or nothing at all); a
//! body above `max_request_bytes` is answered `413 Payload Too Large`.
//!
//! The filter only counts: the pipeline does the buffering (it asked
//! through [`HttpFilter::buffers_request_body`]) and calls
//! [`HttpFilter::on_request_body`] for every chunk as it arrives, so a
//! body over the limit is refused as soon as it crosses it, and a declared
//! `content-length` over the limit before any of the body is read.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, request, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_config;
use crate::ctx::{FilterCx, FilterState};
use crate::env::FilterEnv;
use crate::error::FilterConfigError;
use crate::{Action, Flow, HttpFilter, LocalReply};

pub const NAME: &str = "buffer";

/// The filter's config (see filters/README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// The largest request body buffered; larger ones get 413. Required, as
    /// in Envoy.
    pub max_request_bytes: u32,
}

struct Buffer {
    max: u64,
}

pub(crate) fn build(
    config: &Value,
    _env: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: BufferConfig = parse_config(config)?;
    if c.max_request_bytes == 0 {
        return Err(vec![FilterConfigError::new(
            "max_request_bytes",
            "must be at least 1",
        )]);
    }
    Ok(Arc::new(Buffer {
        max: u64::from(c.max_request_bytes),
    }))
}

fn too_large() -> LocalReply {
    LocalReply::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large")
}

impl HttpFilter for Buffer {
    fn wants_state(&self) -> bool {
        true
    }

    fn wants_request_body(&self) -> bool {
        true
    }

    fn buffers_request_body(&self) -> bool {
        true
    }

    fn on_request_head(&self, _cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        // A declared length over the limit is refused before the body is
        // read (a client sending `expect: 100-continue` never sends it).
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(n) if n > self.max => Action::Respond(too_large()),
            _ => Action::Continue,
        }
    }

    fn on_request_body(&self, cx: &mut FilterCx<'_>, chunk: &mut Bytes, _end: bool) -> Flow {
        let seen = match &*cx.state {
            FilterState::Numbers([n, ..]) => *n,
            _ => 0,
        };
        let seen = seen.saturating_add(chunk.len() as u64);
        *cx.state = FilterState::Numbers([seen, 0, 0]);
        if seen > self.max {
            return Flow::Respond(too_large());
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests;
