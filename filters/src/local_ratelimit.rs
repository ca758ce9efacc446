//! `local_ratelimit`: Envoy's local token bucket. The scope is where the
//! filter is configured: the listener's chain (one bucket set for the
//! listener), a virtual host's or a route's `per_filter_config` (its own
//! instance, so its own buckets). Optionally one bucket per key (a request
//! header's value or the client address), bounded by `max_keys`.
//!
//! Refills are discrete, as Envoy's: `tokens_per_fill` tokens at every
//! `fill_interval` boundary counted from when the filter was built. A
//! bucket is one `u64` (tokens, last fill tick): the listener-wide bucket is
//! updated lock-free with a compare-and-swap; keyed buckets live in sharded
//! maps under short `std::sync::Mutex` sections (a hash lookup and a few
//! integer operations, never anything that blocks).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{request, response, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse_config, Dur};
use crate::ctx::{FilterCx, FilterState};
use crate::env::{Clock, FilterEnv};
use crate::error::{Errors, FilterConfigError};
use crate::{Action, Flow, HttpFilter, LocalReply};

pub const NAME: &str = "local_ratelimit";

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Envoy rejects shorter fill intervals; it also keeps a 32-bit tick
/// counter from wrapping for 6.8 years.
const MIN_FILL_INTERVAL_NANOS: u64 = 50_000_000;
const MAX_KEYS_LIMIT: u32 = 1_000_000;

/// The filter's config (see filters/README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitConfig {
    pub token_bucket: TokenBucketConfig,
    /// One bucket per value of this key; one bucket for all when unset.
    #[serde(default)]
    pub key: Option<RateLimitKey>,
    /// Most keyed buckets kept (default 10000). Buckets that are full again
    /// are dropped first (a full bucket is the same as a new one); keys
    /// beyond the cap share one overflow bucket.
    #[serde(default)]
    pub max_keys: Option<u32>,
    /// Add `x-ratelimit-*` to allowed responses too (always on a 429).
    #[serde(default)]
    pub enable_x_ratelimit_headers: bool,
    /// Status of the rejection (default 429).
    #[serde(default)]
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub max_tokens: u32,
    /// Default 1, as Envoy.
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// `key: {request_header: x-api-key}`: requests without the header share
    /// one bucket.
    RequestHeader(String),
    /// `key: client_address`: the downstream peer's IP.
    ClientAddress,
}

pub(crate) fn build(
    config: &Value,
    env: &FilterEnv,
) -> Result<Arc<dyn HttpFilter>, Vec<FilterConfigError>> {
    new(config, env).map(|f| Arc::new(f) as Arc<dyn HttpFilter>)
}

fn new(config: &Value, env: &FilterEnv) -> Result<LocalRateLimit, Vec<FilterConfigError>> {
    let c: LocalRateLimitConfig = parse_config(config)?;
    let mut errs = Errors::default();
    let tb = &c.token_bucket;
    if tb.max_tokens == 0 {
        errs.push("token_bucket.max_tokens", "must be at least 1");
    }
    let per_fill = tb.tokens_per_fill.unwrap_or(1);
    if per_fill == 0 {
        errs.push("token_bucket.tokens_per_fill", "must be at least 1");
    }
    let interval = u64::try_from(tb.fill_interval.0.as_nanos()).unwrap_or(u64::MAX);
    if interval < MIN_FILL_INTERVAL_NANOS {
        errs.push("token_bucket.fill_interval", "must be at least 50ms");
    }
    let key = match &c.key {
        None => None,
        Some(RateLimitKey::ClientAddress) => Some(Key::ClientAddress),
        Some(RateLimitKey::RequestHeader(h)) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(Key::Header(n)),
            Err(_) => {
                errs.push("key.request_header", format!("invalid header name {h:?}"));
                None
            }
        },
    };
    let max_keys = c.max_keys.unwrap_or(10_000);
    if max_keys == 0 || max_keys > MAX_KEYS_LIMIT {
        errs.push(
            "max_keys",
            format!("must be between 1 and {MAX_KEYS_LIMIT}"),
        );
    }
    let status = match c.status {
        None => StatusCode::TOO_MANY_REQUESTS,
        Some(s) => match StatusCode::from_u16(s) {
            Ok(s) if s.as_u16() >= 400 => s,
            _ => {
                errs.push("status", format!("{s} is not a 4xx or 5xx status"));
                StatusCode::TOO_MANY_REQUESTS
            }
        },
    };
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    let spec = BucketSpec {
        max: tb.max_tokens,
        per_fill,
        interval,
        origin: env.clock.now_nanos(),
    };
    let keyed = key.map(|key| {
        // Small caps stay in one shard so the cap is exact; large ones are
        // split so two workers rarely wait on the same lock.
        let shards: u32 = if max_keys >= 1024 { 16 } else { 1 };
        Keyed {
            key,
            per_shard: max_keys.div_ceil(shards) as usize,
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            unkeyed: AtomicU64::new(spec.full()),
            overflow: AtomicU64::new(spec.full()),
        }
    });
    Ok(LocalRateLimit {
        bucket: AtomicU64::new(spec.full()),
        spec,
        keyed,
        headers_on_allowed: c.enable_x_ratelimit_headers,
        status,
        clock: env.clock.clone(),
    })
}

/// The refill parameters shared by every bucket of one filter.
#[derive(Debug, Clone, Copy)]
struct BucketSpec {
    max: u32,
    per_fill: u32,
    interval: u64,
    origin: u64,
}

/// The outcome of one take.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Taken {
    allowed: bool,
    remaining: u32,
}

impl BucketSpec {
    /// A full bucket at tick 0; a bucket is `tokens << 32 | tick as u32`.
    fn full(&self) -> u64 {
        u64::from(self.max) << 32
    }

    fn tick(&self, now: u64) -> u64 {
        now.saturating_sub(self.origin) / self.interval
    }

    /// The bucket's tokens at `tick`, refills credited.
    fn tokens_at(&self, state: u64, tick: u64) -> u32 {
        let tokens = (state >> 32) as u32;
        // Wrapping: ticks are kept mod 2^32 (6.8 years at the 50ms minimum).
        let elapsed = (tick as u32).wrapping_sub(state as u32);
        let refill = u64::from(elapsed) * u64::from(self.per_fill);
        (u64::from(tokens) + refill).min(u64::from(self.max)) as u32
    }

    /// Takes one token: the new state (when it changes) and the outcome.
    fn take(&self, state: u64, tick: u64) -> (Option<u64>, Taken) {
        let tokens = self.tokens_at(state, tick);
        if tokens == 0 {
            // No tick passed since the state was written (a tick always adds
            // tokens), so nothing to write back.
            return (
                None,
                Taken {
                    allowed: false,
                    remaining: 0,
                },
            );
        }
        let left = tokens - 1;
        let next = (u64::from(left) << 32) | u64::from(tick as u32);
        (
            Some(next),
            Taken {
                allowed: true,
                remaining: left,
            },
        )
    }

    /// Lock-free take on a shared bucket.
    fn take_atomic(&self, bucket: &AtomicU64, tick: u64) -> Taken {
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let (next, taken) = self.take(current, tick);
            let Some(next) = next else { return taken };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    /// Whole seconds (rounded up) until the next refill.
    fn reset_secs(&self, now: u64, tick: u64) -> u64 {
        let next = self
            .origin
            .saturating_add((tick + 1).saturating_mul(self.interval));
        next.saturating_sub(now).div_ceil(1_000_000_000)
    }
}

enum Key {
    Header(HeaderName),
    ClientAddress,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<[u8]>, u64>,
    /// The tick of the last sweep, so a full shard sweeps at most once per
    /// fill interval however many new keys arrive.
    swept_at: Option<u64>,
}

struct Keyed {
    key: Key,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Requests without the key (no such header).
    unkeyed: AtomicU64,
    /// Keys that found their shard full.
    overflow: AtomicU64,
}

pub(crate) struct LocalRateLimit {
    spec: BucketSpec,
    bucket: AtomicU64,
    keyed: Option<Keyed>,
    headers_on_allowed: bool,
    status: StatusCode,
    clock: Arc<dyn Clock>,
}

impl Keyed {
    fn take(&self, spec: &BucketSpec, key: &[u8], tick: u64) -> Taken {
        let shards = self.shards.len().max(1);
        let i = (self.hasher.hash_one(key) % shards as u64) as usize;
        let Some(shard) = self.shards.get(i) else {
            return spec.take_atomic(&self.overflow, tick);
        };
        // A poisoned lock only means a panic elsewhere mid-update; the map of
        // integers is still consistent.
        let mut shard = match shard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(state) = shard.buckets.get_mut(key) {
            let (next, taken) = spec.take(*state, tick);
            if let Some(n) = next {
                *state = n;
            }
            return taken;
        }
        if shard.buckets.len() >= self.per_shard && shard.swept_at != Some(tick) {
            shard.swept_at = Some(tick);
            shard
                .buckets
                .retain(|_, state| spec.tokens_at(*state, tick) < spec.max);
        }
        if shard.buckets.len() >= self.per_shard {
            drop(shard);
            return spec.take_atomic(&self.overflow, tick);
        }
        let (next, taken) = spec.take(spec.full() | u64::from(tick as u32), tick);
        shard
            .buckets
            .insert(key.into(), next.unwrap_or(spec.full()));
        taken
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0))
            .sum()
    }
}

impl LocalRateLimit {
    fn take(&self, cx: &FilterCx<'_>, head: &request::Parts, tick: u64) -> Taken {
        let Some(keyed) = &self.keyed else {
            return self.spec.take_atomic(&self.bucket, tick);
        };
        match &keyed.key {
            Key::ClientAddress => match cx.req.downstream_remote.ip().to_canonical() {
                IpAddr::V4(v4) => keyed.take(&self.spec, &v4.octets(), tick),
                IpAddr::V6(v6) => keyed.take(&self.spec, &v6.octets(), tick),
            },
            Key::Header(name) => match head.headers.get(name) {
                Some(v) => keyed.take(&self.spec, v.as_bytes(), tick),
                None => self.spec.take_atomic(&keyed.unkeyed, tick),
            },
        }
    }

    fn put_headers(&self, headers: &mut HeaderMap, remaining: u64, reset: u64) {
        headers.insert(LIMIT, HeaderValue::from(self.spec.max));
        headers.insert(REMAINING, HeaderValue::from(remaining));
        headers.insert(RESET, HeaderValue::from(reset));
    }

    #[cfg(test)]
    pub(crate) fn keyed_len(&self) -> usize {
        self.keyed.as_ref().map_or(0, Keyed::len)
    }
}

impl HttpFilter for LocalRateLimit {
    fn wants_state(&self) -> bool {
        self.headers_on_allowed
    }

    fn on_request_head(&self, cx: &mut FilterCx<'_>, head: &mut request::Parts) -> Action {
        let now = self.clock.now_nanos();
        let tick = self.spec.tick(now);
        let taken = self.take(cx, head, tick);
        if taken.allowed {
            if self.headers_on_allowed {
                let reset = self.spec.reset_secs(now, tick);
                *cx.state = FilterState::Numbers([0, u64::from(taken.remaining), reset]);
            }
            return Action::Continue;
        }
        let mut reply = LocalReply::new(self.status, "local_rate_limited");
        self.put_headers(&mut reply.headers, 0, self.spec.reset_secs(now, tick));
        Action::Respond(reply)
    }

    fn on_response_head(&self, cx: &mut FilterCx<'_>, head: &mut response::Parts) -> Flow {
        if let FilterState::Numbers([_, remaining, reset]) = *cx.state {
            self.put_headers(&mut head.headers, remaining, reset);
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests;
