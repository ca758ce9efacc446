//! A route's retry policy, compiled: which failures are retried, how many
//! times, each try's timeout, and the backoff between tries.
//!
//! The decision is a pure function of the failure, so it is tested
//! table-driven; the pipeline carries it out.

use std::time::Duration;

use crate::config::RetryPolicy as RetryConfig;

use super::table::Errors;

const DEFAULT_BASE: Duration = Duration::from_millis(25);

/// Why a try failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// The upstream answered with this status.
    Status(u16),
    /// TCP connect or TLS handshake failed or timed out: nothing was sent.
    ConnectFailure,
    /// The connection closed or reset before a response head.
    Reset,
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): not
    /// processed, always safe to retry.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

const ON_5XX: u8 = 1;
const ON_GATEWAY_ERROR: u8 = 1 << 1;
const ON_CONNECT_FAILURE: u8 = 1 << 2;
const ON_RESET: u8 = 1 << 3;
const ON_REFUSED_STREAM: u8 = 1 << 4;
const ON_RETRIABLE_CODES: u8 = 1 << 5;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    on: u8,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    codes: Vec<u16>,
}

impl RetryPolicy {
    pub(super) fn build(cfg: &RetryConfig, p: &str, errs: &mut Errors) -> Option<RetryPolicy> {
        let before = errs.len();
        let mut on = 0;
        for cond in cfg
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            on |= match cond {
                "5xx" => ON_5XX,
                "gateway-error" => ON_GATEWAY_ERROR,
                "connect-failure" => ON_CONNECT_FAILURE,
                "reset" => ON_RESET,
                "refused-stream" => ON_REFUSED_STREAM,
                "retriable-status-codes" => ON_RETRIABLE_CODES,
                other => {
                    errs.push(
                        format!("{p}.retry_on"),
                        format!(
                            "unknown retry condition {other:?} (use 5xx, gateway-error, \
                             connect-failure, reset, refused-stream, retriable-status-codes)"
                        ),
                    );
                    0
                }
            };
        }
        if on == 0 && errs.len() == before {
            errs.push(
                format!("{p}.retry_on"),
                "at least one retry condition is required",
            );
        }
        for (i, c) in cfg.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                errs.push(
                    format!("{p}.retriable_status_codes[{i}]"),
                    format!("invalid status {c} (use 100-599)"),
                );
            }
        }
        let per_try_timeout = cfg
            .per_try_timeout
            .map(|d| d.get())
            .filter(|d| !d.is_zero());
        let back_off = cfg.retry_back_off.clone().unwrap_or_default();
        let base = back_off.base_interval.map_or(DEFAULT_BASE, |d| d.get());
        if base.is_zero() {
            errs.push(
                format!("{p}.retry_back_off.base_interval"),
                "must be greater than 0",
            );
        }
        let max = back_off.max_interval.map_or(base * 10, |d| d.get());
        if max < base {
            errs.push(
                format!("{p}.retry_back_off.max_interval"),
                "must not be less than base_interval",
            );
        }
        if errs.len() > before {
            return None;
        }
        Some(RetryPolicy {
            on,
            num_retries: cfg.num_retries.unwrap_or(1),
            per_try_timeout,
            base,
            max,
            codes: cfg.retriable_status_codes.clone(),
        })
    }

    /// Whether this failure may be retried under the policy (the caller
    /// still checks the retry count, the budget and the body).
    pub fn should_retry(&self, f: TryFailure) -> bool {
        let any = |bits: u8| self.on & bits != 0;
        match f {
            TryFailure::Status(s) => {
                (any(ON_5XX) && (500..600).contains(&s))
                    || (any(ON_GATEWAY_ERROR) && matches!(s, 502..=504))
                    || (any(ON_RETRIABLE_CODES) && self.codes.contains(&s))
            }
            // Envoy's 5xx and gateway-error include "no response at all".
            TryFailure::ConnectFailure => any(ON_5XX | ON_GATEWAY_ERROR | ON_CONNECT_FAILURE),
            TryFailure::Reset => any(ON_5XX | ON_GATEWAY_ERROR | ON_RESET),
            TryFailure::RefusedStream => any(ON_5XX | ON_GATEWAY_ERROR | ON_REFUSED_STREAM),
            TryFailure::PerTryTimeout => any(ON_5XX | ON_GATEWAY_ERROR),
        }
    }

    /// The wait before retry `n` (1 = the first retry): exponential with
    /// full jitter, `unit × min(max, base × 2^(n-1))`, `unit` in [0, 1).
    pub fn backoff(&self, n: u32, unit: f64) -> Duration {
        let exp = n.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, RetryBackOff};

    fn policy(on: &str, codes: &[u16]) -> RetryPolicy {
        let cfg = RetryConfig {
            retry_on: on.to_string(),
            retriable_status_codes: codes.to_vec(),
            ..Default::default()
        };
        let mut errs = Errors::default();
        let p = RetryPolicy::build(&cfg, "r", &mut errs);
        assert_eq!(errs.len(), 0);
        p.unwrap_or_else(|| panic!("policy {on} must build"))
    }

    #[test]
    fn decision_table() {
        use TryFailure::*;
        let cases: &[(&str, &[u16], TryFailure, bool)] = &[
            ("5xx", &[], Status(500), true),
            ("5xx", &[], Status(503), true),
            ("5xx", &[], Status(404), false),
            ("5xx", &[], ConnectFailure, true),
            ("5xx", &[], Reset, true),
            ("5xx", &[], PerTryTimeout, true),
            ("gateway-error", &[], Status(500), false),
            ("gateway-error", &[], Status(502), true),
            ("gateway-error", &[], Status(504), true),
            ("gateway-error", &[], Reset, true),
            ("connect-failure", &[], ConnectFailure, true),
            ("connect-failure", &[], Reset, false),
            ("connect-failure", &[], Status(503), false),
            ("reset", &[], Reset, true),
            ("reset", &[], ConnectFailure, false),
            ("refused-stream", &[], RefusedStream, true),
            ("refused-stream", &[], Reset, false),
            ("retriable-status-codes", &[409], Status(409), true),
            ("retriable-status-codes", &[409], Status(503), false),
            (
                "connect-failure,retriable-status-codes",
                &[429],
                Status(429),
                true,
            ),
            (" reset , 5xx ", &[], Status(500), true),
        ];
        for (on, codes, failure, want) in cases {
            assert_eq!(
                policy(on, codes).should_retry(*failure),
                *want,
                "retry_on={on:?} codes={codes:?} failure={failure:?}"
            );
        }
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = policy("5xx", &[]);
        // Defaults: base 25 ms, max 250 ms.
        let ceilings: Vec<u128> = (1..=6).map(|n| p.backoff(n, 1.0).as_millis()).collect();
        assert_eq!(ceilings, vec![25, 50, 100, 200, 250, 250]);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(50));
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
    }

    #[test]
    fn rejects_bad_policies_with_paths() {
        let mut errs = Errors::default();
        let cfg = RetryConfig {
            retry_on: "5xx,teapot".to_string(),
            retriable_status_codes: vec![42],
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(Dur(Duration::from_millis(100))),
                max_interval: Some(Dur(Duration::from_millis(10))),
            }),
            ..Default::default()
        };
        assert!(RetryPolicy::build(&cfg, "r", &mut errs).is_none());
        let text: Vec<String> = errs.list.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].starts_with("r.retry_on: unknown retry condition \"teapot\""));
        assert!(text[1].starts_with("r.retriable_status_codes[0]: invalid status 42"));
        assert!(text[2].starts_with("r.retry_back_off.max_interval: must not be less"));

        let mut errs = Errors::default();
        let empty = RetryConfig::default();
        assert!(RetryPolicy::build(&empty, "r", &mut errs).is_none());
        assert_eq!(errs.len(), 1);
    }
}
