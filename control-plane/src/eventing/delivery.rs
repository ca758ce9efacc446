//! Delivering one event to one trigger's subscriber: HTTP binary mode,
//! retries with backoff, `Retry-After`, the dead-letter sink, replies.
//!
//! The HTTP client and the timer are traits ([`Sender`], [`Sleeper`]) so
//! the retry schedule is tested exactly: a test sender scripts the answers
//! and a recording sleeper notes every wait without waiting.
//!
//! What is retried (as Knative's `SelectiveRetry`): connection errors and
//! timeouts, 5xx, 404, 408, 409 and 429. Other answers (3xx, other 4xx)
//! fail at once and go to the dead-letter sink.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::{DeliveryPolicy, Target};
use super::event::{self, AttrValue, Event};
pub use super::metrics::TriggerStats;

/// Knative truncates the base64 of the failed response body to this.
pub const ERROR_DATA_MAX: usize = 1024;
/// Largest response body read (replies included).
const MAX_RESPONSE_BODY: usize = 4 << 20;
/// A parked event's dead-letter retries back off up to this.
pub const PARK_MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// POSTs an event. `Err` is a transport failure (refused, reset, timeout).
pub trait Sender: Send + Sync + 'static {
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<HttpResponse, String>>;
}

/// Waits. Production uses tokio's timer; tests record and return at once.
pub trait Sleeper: Send + Sync + 'static {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(d).boxed()
    }
}

/// The production sender: a pooled hyper client (HTTP/1.1 keep-alive).
#[derive(Clone)]
pub struct HyperSender {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HyperSender {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        HyperSender { client }
    }
}

impl Default for HyperSender {
    fn default() -> Self {
        Self::new()
    }
}

impl Sender for HyperSender {
    fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<HttpResponse, String>> {
        let client = self.client.clone();
        let url = url.to_owned();
        async move {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .body(Full::new(body))
                .map_err(|e| format!("bad request for {url}: {e}"))?;
            *req.headers_mut() = headers;
            let call = async {
                let resp = client.request(req).await.map_err(|e| format!("{e:#}"))?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the response: {e}"))?
                    .to_bytes();
                Ok(HttpResponse {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                })
            };
            match timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {t:?}"))),
                None => call.await,
            }
        }
        .boxed()
    }
}

/// How one event ended for one trigger.
#[derive(Debug)]
pub enum Outcome {
    /// The subscriber took it; maybe with a reply event.
    Delivered(Option<Event>),
    /// Retries ran out and the dead-letter sink took it.
    DeadLettered,
    /// Retries ran out and there is no dead-letter sink (DESIGN: dropped
    /// for this trigger, counted and logged).
    Dropped,
    /// Retries ran out and the dead-letter sink failed too: the caller
    /// parks the event and keeps retrying the sink.
    Parked(Event),
}

/// The last failed try, for the dead-letter extensions.
#[derive(Debug, Default)]
struct Failure {
    status: Option<u16>,
    body: Bytes,
    error: Option<String>,
}

pub struct Deliverer {
    pub sender: Arc<dyn Sender>,
    pub sleeper: Arc<dyn Sleeper>,
    pub subscriber: Target,
    pub policy: DeliveryPolicy,
    pub stats: Arc<TriggerStats>,
    /// For log lines.
    pub trigger: String,
}

fn retryable(status: u16) -> bool {
    status >= 500 || matches!(status, 404 | 408 | 409 | 429)
}

/// The event in binary mode, addressed to `to` (a mesh destination gets
/// its Service's Host header, which the gateway routes on).
fn binary_for(to: &Target, ev: &Event) -> (HeaderMap, Bytes) {
    let (mut headers, body) = ev.to_binary();
    if let Some(host) = &to.host {
        headers.insert(http::header::HOST, host.clone());
    }
    (headers, body)
}

/// `Retry-After` as delay-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl Deliverer {
    /// Runs the whole schedule for `ev`.
    pub async fn deliver(&self, ev: &Event) -> Outcome {
        let started = tokio::time::Instant::now();
        let failure = match self.send_with_retries(&self.subscriber, ev).await {
            Ok(resp) => {
                self.stats.delivered.inc();
                self.stats
                    .delivery_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Outcome::Delivered(self.reply_of(resp));
            }
            Err(f) => f,
        };
        let Some(dls) = &self.policy.dead_letter_sink else {
            self.stats.dropped.inc();
            tracing::warn!(
                trigger = %self.trigger,
                id = ev.id(),
                source = ev.source(),
                status = ?failure.status,
                error = ?failure.error,
                "delivery failed after all retries and there is no dead-letter sink: event dropped for this trigger"
            );
            return Outcome::Dropped;
        };
        let dead = self.dead_letter_event(ev, &failure);
        match self.send_with_retries(dls, &dead).await {
            Ok(_) => {
                self.stats.dead_lettered.inc();
                Outcome::DeadLettered
            }
            Err(f) => {
                self.stats.parked.inc();
                tracing::error!(
                    trigger = %self.trigger,
                    id = ev.id(),
                    source = ev.source(),
                    dead_letter_status = ?f.status,
                    dead_letter_error = ?f.error,
                    "the dead-letter sink failed too: event parked, retrying the sink"
                );
                Outcome::Parked(dead)
            }
        }
    }

    /// Retries a parked event's dead-letter delivery with capped backoff
    /// until the sink takes it. Never gives up: the event is not dropped.
    pub async fn retry_parked(&self, dead: &Event) -> Outcome {
        let Some(dls) = &self.policy.dead_letter_sink else {
            return Outcome::Dropped;
        };
        let (headers, body) = binary_for(dls, dead);
        let base = self.policy.backoff_delay.max(Duration::from_millis(100));
        for n in 1u32.. {
            let wait = base
                .checked_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
                .unwrap_or(PARK_MAX_BACKOFF)
                .min(PARK_MAX_BACKOFF);
            self.sleeper.sleep(wait).await;
            self.stats.retries.inc();
            match self
                .sender
                .post(&dls.url, headers.clone(), body.clone(), self.policy.timeout)
                .await
            {
                Ok(r) if (200..300).contains(&r.status) => {
                    self.stats.dead_lettered.inc();
                    tracing::info!(trigger = %self.trigger, id = dead.id(), "parked event taken by the dead-letter sink");
                    return Outcome::DeadLettered;
                }
                _ => self.stats.failed_attempts.inc(),
            }
        }
        Outcome::Dropped
    }

    /// The event as the dead-letter sink gets it: Knative's error
    /// extensions added.
    fn dead_letter_event(&self, ev: &Event, f: &Failure) -> Event {
        let mut dead = ev.clone();
        dead.set("knativeerrordest", self.subscriber.uri.as_str());
        if let Some(code) = f.status {
            dead.set("knativeerrorcode", AttrValue::String(code.to_string()));
        }
        // Base64 of the response body, the encoding cut at 1024 characters
        // like Knative (so it may end mid-quantum). A transport error has no
        // body; its message is used instead so the sink learns why.
        let raw: &[u8] = if f.body.is_empty() {
            f.error.as_deref().map(str::as_bytes).unwrap_or_default()
        } else {
            &f.body
        };
        if !raw.is_empty() {
            let mut b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            b64.truncate(ERROR_DATA_MAX);
            dead.set("knativeerrordata", AttrValue::String(b64));
        }
        dead
    }

    fn reply_of(&self, resp: HttpResponse) -> Option<Event> {
        if resp.body.is_empty() && !resp.headers.contains_key("ce-specversion") {
            return None;
        }
        if !event::looks_like_event(&resp.headers) {
            return None;
        }
        match event::from_http(&resp.headers, resp.body) {
            Ok(mut evs) if evs.len() == 1 => {
                self.stats.replies.inc();
                evs.pop()
            }
            Ok(evs) => {
                self.stats.bad_replies.inc();
                tracing::warn!(trigger = %self.trigger, count = evs.len(), "a reply must be one event; ignored");
                None
            }
            Err(e) => {
                // The subscriber did take the event; only its reply is bad.
                self.stats.bad_replies.inc();
                tracing::warn!(trigger = %self.trigger, error = %e, "invalid reply event ignored");
                None
            }
        }
    }

    /// First try plus `retry` retries; `Ok` on any 2xx.
    async fn send_with_retries(&self, to: &Target, ev: &Event) -> Result<HttpResponse, Failure> {
        let url = to.url.as_str();
        let (headers, body) = binary_for(to, ev);
        let mut failure = Failure::default();
        let mut retry_after: Option<Duration> = None;
        for attempt in 0..=self.policy.retry {
            if attempt > 0 {
                let mut wait = self.policy.backoff(attempt);
                if let Some(ra) = retry_after.take() {
                    wait = wait.max(ra);
                }
                self.sleeper.sleep(wait).await;
                self.stats.retries.inc();
            }
            match self
                .sender
                .post(url, headers.clone(), body.clone(), self.policy.timeout)
                .await
            {
                Ok(r) if (200..300).contains(&r.status) => return Ok(r),
                Ok(r) => {
                    self.stats.failed_attempts.inc();
                    let again = retryable(r.status);
                    retry_after = self.retry_after(&r);
                    tracing::debug!(trigger = %self.trigger, url, status = r.status, attempt, "delivery attempt failed");
                    failure = Failure {
                        status: Some(r.status),
                        body: r.body,
                        error: None,
                    };
                    if !again {
                        break;
                    }
                }
                Err(e) => {
                    self.stats.failed_attempts.inc();
                    tracing::debug!(trigger = %self.trigger, url, error = %e, attempt, "delivery attempt failed");
                    failure = Failure {
                        status: None,
                        body: Bytes::new(),
                        error: Some(e),
                    };
                }
            }
        }
        Err(failure)
    }

    /// `Retry-After` of a 429/503, capped by `retryAfterMax`; ignored when
    /// `retryAfterMax` is unset or zero (Knative's opt-in rule).
    fn retry_after(&self, r: &HttpResponse) -> Option<Duration> {
        let max = self.policy.retry_after_max.filter(|m| !m.is_zero())?;
        if r.status != StatusCode::TOO_MANY_REQUESTS.as_u16()
            && r.status != StatusCode::SERVICE_UNAVAILABLE.as_u16()
        {
            return None;
        }
        let v = r.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(v, SystemTime::now()).map(|d| d.min(max))
    }
}

#[cfg(test)]
pub(crate) mod tests;
