//! `fault`: Envoy's HTTP fault injection — delay and/or abort a share of
//! requests, optionally only those matching headers, optionally requested
//! by the client through `x-envoy-fault-*` headers.
//!
//! Order per request, as Envoy: header gate → `max_active_faults` → delay
//! (the pipeline waits) → abort. A delayed request that is also chosen for
//! abort is aborted after the delay.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{request, HeaderName, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse_config, Dur, Percent};
use crate::ctx::{FilterCx, FilterState};
use crate::env::{FilterEnv, Random};
use crate::error::{Errors, FilterConfigError};
use crate::matcher::{compile_headers, HeaderMatch, HeaderMatcher};
use crate::{Action, HttpFilter, LocalReply};

pub const NAME: &str = "fault";

const ABORT_HEADER: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
const ABORT_PERCENT_HEADER: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
const DELAY_HEADER: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
const DELAY_PERCENT_HEADER: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");

/// The filter's config (see filters/README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default)]
    pub delay: Option<DelayConfig>,
    #[serde(default)]
    pub abort: Option<AbortConfig>,
    /// Every matcher must match for a fault to apply.
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    /// At most this many requests in a fault at once; unlimited when unset.
    #[serde(default)]
    pub max_active_faults: Option<u32>,
    /// Honour `x-envoy-fault-abort-request` / `x-envoy-fault-delay-request`
    /// (and their `-percentage` companions) from the client.
    #[serde(default)]
    pub allow_header_control: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    pub fixed_delay: Dur,
    pub percentage: Percent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortConfig {
    pub http_status: u16,
    pub percentage: Percent,
}

pub(crate) fn build(
    config: &Value,
    env: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    let c: FaultConfig = parse_config(config)?;
    let mut errs = Errors::default();
    let abort = c
        .abort
        .as_ref()
        .and_then(|a| match abort_status(a.http_status) {
            Some(s) => Some((s, a.percentage)),
            None => {
                errs.push(
                    "abort.http_status",
                    format!("{} is not a status in [200, 600)", a.http_status),
                );
                None
            }
        });
    if c.delay.is_none() && c.abort.is_none() && !c.allow_header_control {
        errs.push(
            "",
            "nothing to inject: set delay, abort or allow_header_control",
        );
    }
    let headers = compile_headers(&c.headers, "headers", &mut errs);
    errs.finish(Arc::new(Fault {
        delay: c.delay.map(|d| (d.fixed_delay.0, d.percentage)),
        abort,
        headers,
        header_control: c.allow_header_control,
        max_active: c.max_active_faults,
        active: Arc::new(AtomicU32::new(0)),
        random: env.random.clone(),
    }) as Arc<dyn HttpFilter>)
}

fn abort_status(code: u16) -> Option<StatusCode> {
    (200..600)
        .contains(&code)
        .then(|| StatusCode::from_u16(code).ok())
        .flatten()
}

pub(crate) struct Fault {
    delay: Option<(Duration, Percent)>,
    abort: Option<(StatusCode, Percent)>,
    headers: Vec<HeaderMatch>,
    header_control: bool,
    max_active: Option<u32>,
    active: Arc<AtomicU32>,
    random: Arc<dyn Random>,
}

/// Holds one place in `max_active_faults` until the request ends.
struct ActiveFault(Arc<AtomicU32>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a delayed request still has to do when it resumes.
struct Delayed {
    abort: Option<StatusCode>,
    _active: Option<ActiveFault>,
}

impl Fault {
    fn chosen(&self, p: Percent) -> bool {
        match p.ppm {
            0 => false,
            crate::config::MILLION => true,
            _ => p.sample(self.random.next_u64()),
        }
    }

    /// A client-requested value and its percentage (default 100%), when
    /// header control is on.
    fn requested(
        &self,
        head: &request::Parts,
        name: &HeaderName,
        percent: &HeaderName,
    ) -> Option<(u64, Percent)> {
        if !self.header_control {
            return None;
        }
        let value = head.headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        let p = match head.headers.get(percent) {
            None => Percent::ALL,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .and_then(Percent::from_percent)?,
        };
        Some((value, p))
    }

    fn delay_for(&self, head: &request::Parts) -> Option<Duration> {
        let (d, p) = match self.requested(head, &DELAY_HEADER, &DELAY_PERCENT_HEADER) {
            Some((ms, p)) => (Duration::from_millis(ms), p),
            None => self.delay?,
        };
        self.chosen(p).then_some(d)
    }

    fn abort_for(&self, head: &request::Parts) -> Option<StatusCode> {
        let (s, p) = match self.requested(head, &ABORT_HEADER, &ABORT_PERCENT_HEADER) {
            Some((code, p)) => (abort_status(u16::try_from(code).ok()?)?, p),
            None => self.abort?,
        };
        self.chosen(p).then_some(s)
    }

    /// Takes a place under `max_active_faults`; `Err` when full.
    fn admit(&self) -> Result<Option<ActiveFault>, ()> {
        let Some(max) = self.max_active else {
            return Ok(None);
        };
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Some(ActiveFault(self.active.clone())))
            .map_err(|_| ())
    }
}

fn abort_reply(status: StatusCode) -> Action {
    Action::Respond(LocalReply::new(status, "fault filter abort"))
}

impl HttpFilter for Fault {
    fn wants_state(&self) -> bool {
        // To finish after a delay, and to hold the active-fault place.
        true
    }

    fn on_request_head(&self, cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        if cx.resumed {
            let pending = match std::mem::take(cx.state) {
                FilterState::Any(b) => b.downcast::<Delayed>().ok(),
                _ => None,
            };
            let Some(mut pending) = pending else {
                return Action::Continue;
            };
            let abort = pending.abort.take();
            // Keep the place in max_active_faults until the request ends.
            *cx.state = FilterState::Any(pending);
            return abort.map_or(Action::Continue, abort_reply);
        }
        if !self.headers.iter().all(|m| m.matches(head)) {
            return Action::Continue;
        }
        let delay = self.delay_for(head);
        let abort = self.abort_for(head);
        if delay.is_none() && abort.is_none() {
            return Action::Continue;
        }
        let Ok(active) = self.admit() else {
            return Action::Continue;
        };
        match delay {
            Some(d) => {
                *cx.state = FilterState::Any(Box::new(Delayed {
                    abort,
                    _active: active,
                }));
                Action::Delay(d)
            }
            None => {
                if let Some(a) = active {
                    *cx.state = FilterState::Any(Box::new(a));
                }
                abort.map_or(Action::Continue, abort_reply)
            }
        }
    }
}

#[cfg(test)]
mod tests;
