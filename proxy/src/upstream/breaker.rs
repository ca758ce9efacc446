//! Circuit breakers: per-cluster limits on requests, retries, connections
//! and requests waiting for a connection, as Envoy's (default priority).
//!
//! The counters live in [`BreakerState`], one per cluster *name*, shared by
//! the rebuilt cluster after a config reload through the registry: pools (and
//! so their open connections) outlive reloads, so the connection count must
//! too, or a reload would let a cluster open `max_connections` more. The
//! limits are atomics in the same state, set when a cluster is started (see
//! [`BreakerState::set_limits`]) so that a config rejected after it was built
//! never changes the limits of the one still serving.
//!
//! Every acquisition is a compare-and-swap loop, so a limit is exact under
//! concurrency: never more holders than the limit, and a refusal only when
//! the limit was really reached.

use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::Notify;

use crate::config;
use crate::error::{ErrorKind, ProxyError};
use crate::stats::ClusterStats;

/// Envoy's defaults (`max_connections`, `max_pending_requests`,
/// `max_requests`: 1024; `max_retries`: 3) apply when a cluster has no
/// `circuit_breakers`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Replaces `max_retries` when set.
    pub retry_budget: Option<RetryBudgetLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudgetLimit {
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

impl Limits {
    pub fn from_config(cfg: Option<&config::CircuitBreakers>) -> Limits {
        let d = config::CircuitBreakers::default();
        let c = cfg.unwrap_or(&d);
        Limits {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_retries: c.max_retries,
            retry_budget: c.retry_budget.as_ref().map(|b| RetryBudgetLimit {
                budget_percent: b.budget_percent,
                min_retry_concurrency: b.min_retry_concurrency,
            }),
        }
    }
}

/// Which breaker refused; the `breaker` label of
/// `ferry_upstream_rq_overflow_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Requests = 0,
    Pending = 1,
    Connections = 2,
    Retries = 3,
}

/// Shared by every build of one cluster name (see the module doc).
pub struct BreakerState {
    max_connections: AtomicU32,
    max_pending: AtomicU32,
    max_requests: AtomicU32,
    max_retries: AtomicU32,
    /// 0: no budget; else `budget_percent` as f64 bits.
    budget_percent: AtomicU64,
    min_retry_concurrency: AtomicU32,
    requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
    retries: AtomicU32,
    /// Woken when a connection closes or an HTTP/1.1 connection goes back
    /// to a pool, for tries waiting as pending requests. Notified only when
    /// `pending > 0`, so the common path never touches it.
    released: Notify,
    overflow: [IntCounter; 4],
}

impl BreakerState {
    pub fn new(limits: Limits, stats: &ClusterStats) -> BreakerState {
        let s = BreakerState {
            max_connections: AtomicU32::new(0),
            max_pending: AtomicU32::new(0),
            max_requests: AtomicU32::new(0),
            max_retries: AtomicU32::new(0),
            budget_percent: AtomicU64::new(0),
            min_retry_concurrency: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            released: Notify::new(),
            overflow: stats.rq_overflow.clone(),
        };
        s.set_limits(limits);
        s
    }

    /// Applies a (new) config's limits. Holders above a lowered limit keep
    /// their permits; new ones are refused until the count is below it.
    pub fn set_limits(&self, l: Limits) {
        self.max_connections
            .store(l.max_connections, Ordering::Relaxed);
        self.max_pending
            .store(l.max_pending_requests, Ordering::Relaxed);
        self.max_requests.store(l.max_requests, Ordering::Relaxed);
        self.max_retries.store(l.max_retries, Ordering::Relaxed);
        let (pct, min) = match l.retry_budget {
            // A budget of exactly 0 % would read back as "no budget"; the
            // smallest positive percentage gives the same limits.
            Some(b) => (
                b.budget_percent.clamp(f64::MIN_POSITIVE, 100.0).to_bits(),
                b.min_retry_concurrency,
            ),
            None => (0, 0),
        };
        self.budget_percent.store(pct, Ordering::Relaxed);
        self.min_retry_concurrency.store(min, Ordering::Relaxed);
        // A raised limit may admit waiters at once.
        self.released.notify_waiters();
    }

    pub fn limits(&self) -> Limits {
        let pct = self.budget_percent.load(Ordering::Relaxed);
        Limits {
            max_connections: self.max_connections.load(Ordering::Relaxed),
            max_pending_requests: self.max_pending.load(Ordering::Relaxed),
            max_requests: self.max_requests.load(Ordering::Relaxed),
            max_retries: self.max_retries.load(Ordering::Relaxed),
            retry_budget: (pct != 0).then(|| RetryBudgetLimit {
                budget_percent: f64::from_bits(pct),
                min_retry_concurrency: self.min_retry_concurrency.load(Ordering::Relaxed),
            }),
        }
    }

    fn count(&self, b: Breaker) -> &AtomicU32 {
        match b {
            Breaker::Requests => &self.requests,
            Breaker::Pending => &self.pending,
            Breaker::Connections => &self.connections,
            Breaker::Retries => &self.retries,
        }
    }

    pub fn overflowed(&self, b: Breaker) {
        self.overflow[b as usize].inc();
    }

    /// Takes one slot of `b` if fewer than `limit` are held. SeqCst: the
    /// pending-wait protocol (see [`acquire_connection`]) relies on a
    /// release and a waiter's registration being totally ordered.
    fn acquire(self: &Arc<Self>, b: Breaker, limit: u32) -> Option<BreakerPermit> {
        self.count(b)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| BreakerPermit {
                state: self.clone(),
                kind: b,
            })
    }

    /// Takes a slot whatever the limit (Envoy's "a host with no connection
    /// may always open one", see [`acquire_connection`]).
    fn force(self: &Arc<Self>, b: Breaker) -> BreakerPermit {
        self.count(b).fetch_add(1, Ordering::SeqCst);
        BreakerPermit {
            state: self.clone(),
            kind: b,
        }
    }

    /// The retry limit now: `max_retries`, or with a budget
    /// `max(min_retry_concurrency, budget_percent % of active requests)`.
    pub fn retry_limit(&self) -> u32 {
        let pct = self.budget_percent.load(Ordering::Relaxed);
        if pct == 0 {
            return self.max_retries.load(Ordering::Relaxed);
        }
        retry_budget(
            f64::from_bits(pct),
            self.min_retry_concurrency.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    /// Wakes tries waiting for a connection, when there are any.
    pub fn wake_pending(&self) {
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    pub fn snapshot(&self) -> BreakerView {
        BreakerView {
            requests: self.requests.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            limits: self.limits(),
            retry_limit_now: self.retry_limit(),
        }
    }
}

/// `max(min_retry_concurrency, budget_percent % × active requests)`,
/// rounded down as Envoy does.
pub fn retry_budget(budget_percent: f64, min_retry_concurrency: u32, active_requests: u32) -> u32 {
    let budget = (f64::from(active_requests) * budget_percent / 100.0).floor();
    // `as` saturates; the budget never exceeds the active count anyway.
    (budget as u32).max(min_retry_concurrency)
}

/// What `/clusters` shows of a cluster's breakers.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    pub requests: u32,
    pub pending: u32,
    pub connections: u32,
    pub retries: u32,
    pub limits: Limits,
    /// The retry limit at this moment (the budget moves with the load).
    pub retry_limit_now: u32,
}

/// The cluster's breakers, as the pipeline sees them.
pub struct Breakers {
    state: Arc<BreakerState>,
}

impl Breakers {
    pub fn new(state: Arc<BreakerState>) -> Breakers {
        Breakers { state }
    }

    /// `max_requests`: None = open breaker (the caller answers 503
    /// Overloaded at once). The overflow is counted here.
    pub fn try_request(&self) -> Option<BreakerPermit> {
        let s = &self.state;
        let p = s.acquire(Breaker::Requests, s.max_requests.load(Ordering::Relaxed));
        if p.is_none() {
            s.overflowed(Breaker::Requests);
        }
        p
    }

    /// `max_retries`, or the retry budget when configured: budget_percent of
    /// the requests holding a permit now, at least min_retry_concurrency.
    /// None = no retry (counted as an overflow here).
    pub fn try_retry(&self) -> Option<BreakerPermit> {
        let s = &self.state;
        let p = s.acquire(Breaker::Retries, s.retry_limit());
        if p.is_none() {
            s.overflowed(Breaker::Retries);
        }
        p
    }

    pub fn state(&self) -> &Arc<BreakerState> {
        &self.state
    }

    pub fn snapshot(&self) -> BreakerView {
        self.state.snapshot()
    }
}

/// One slot of a breaker; released on drop.
pub struct BreakerPermit {
    state: Arc<BreakerState>,
    kind: Breaker,
}

impl BreakerPermit {
    pub fn kind(&self) -> Breaker {
        self.kind
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        self.state.count(self.kind).fetch_sub(1, Ordering::SeqCst);
        if self.kind == Breaker::Connections {
            self.state.wake_pending();
        }
    }
}

/// One open (or opening) upstream connection, counted against the
/// cluster's `max_connections` and its pool's own count. It travels inside
/// the connection's I/O object, so it is released exactly when the
/// connection is dropped, whoever owns it then (hyper's connection task, the
/// TCP proxy).
pub struct ConnSlot {
    _permit: BreakerPermit,
    pool_open: Arc<AtomicU32>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        // Before the permit (field drop order runs after this), so a woken
        // waiter sees the pool count already lowered.
        self.pool_open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a try got while it waited: a connection slot, or (HTTP/1.1) an idle
/// pooled connection that came back meanwhile.
pub enum Acquired<T> {
    Slot(ConnSlot),
    Reused(T),
}

/// Gets a connection slot for a pool, as Envoy's pool does:
/// - below `max_connections`: at once;
/// - at the limit but this pool has no connection at all: at once anyway
///   (otherwise other endpoints' connections could starve this one for
///   good), and the overflow is still counted;
/// - else the try waits as a pending request, if fewer than
///   `max_pending_requests` already wait (else `Overloaded` at once), until
///   a connection closes (or `reuse` finds a pooled one), at most `wait`
///   (then `Overloaded`).
///
/// `reuse` is tried before every wait, so an HTTP/1.1 connection returned to
/// the pool is taken over by a waiter instead of a new one being opened.
pub async fn acquire_connection<T>(
    state: &Arc<BreakerState>,
    pool_open: &Arc<AtomicU32>,
    wait: Duration,
    mut reuse: impl FnMut() -> Option<T>,
) -> Result<Acquired<T>, ProxyError> {
    let slot = |permit: BreakerPermit| {
        pool_open.fetch_add(1, Ordering::SeqCst);
        Acquired::Slot(ConnSlot {
            _permit: permit,
            pool_open: pool_open.clone(),
        })
    };
    let limit = || state.max_connections.load(Ordering::Relaxed);
    if let Some(p) = state.acquire(Breaker::Connections, limit()) {
        return Ok(slot(p));
    }
    state.overflowed(Breaker::Connections);
    if pool_open.load(Ordering::SeqCst) == 0 {
        return Ok(slot(state.force(Breaker::Connections)));
    }
    let Some(_pending) = state.acquire(Breaker::Pending, state.max_pending.load(Ordering::Relaxed))
    else {
        state.overflowed(Breaker::Pending);
        return Err(ProxyError::new(ErrorKind::Overloaded));
    };
    let waited = tokio::time::timeout(wait, async {
        loop {
            // Registered before the checks: a release between a failed
            // check and the await still wakes this waiter (it saw
            // `pending > 0`, which was raised above, SeqCst).
            let mut notified = pin!(state.released.notified());
            notified.as_mut().enable();
            if let Some(t) = reuse() {
                return Acquired::Reused(t);
            }
            if let Some(p) = state.acquire(Breaker::Connections, limit()) {
                return slot(p);
            }
            if pool_open.load(Ordering::SeqCst) == 0 {
                return slot(state.force(Breaker::Connections));
            }
            notified.await;
        }
    })
    .await;
    waited.map_err(|_| {
        ProxyError::with_cause(
            ErrorKind::Overloaded,
            "no upstream connection became free within the connect timeout",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(l: Limits) -> Arc<BreakerState> {
        Arc::new(BreakerState::new(l, &ClusterStats::new("breaker-test")))
    }

    fn limits(conns: u32, pending: u32, requests: u32, retries: u32) -> Limits {
        Limits {
            max_connections: conns,
            max_pending_requests: pending,
            max_requests: requests,
            max_retries: retries,
            retry_budget: None,
        }
    }

    #[test]
    fn request_limit_is_exact() {
        let b = Breakers::new(state(limits(1, 1, 3, 1)));
        let held: Vec<_> = (0..3).filter_map(|_| b.try_request()).collect();
        assert_eq!(held.len(), 3);
        assert!(b.try_request().is_none(), "the 4th is refused");
        assert_eq!(b.snapshot().requests, 3);
        drop(held);
        assert_eq!(b.snapshot().requests, 0);
        let again: Vec<_> = (0..4).filter_map(|_| b.try_request()).collect();
        assert_eq!(again.len(), 3, "released slots are available again");
    }

    #[test]
    fn retry_limit_is_exact() {
        let b = Breakers::new(state(limits(1, 1, 10, 2)));
        let r1 = b.try_retry();
        let r2 = b.try_retry();
        assert!(r1.is_some() && r2.is_some());
        assert!(b.try_retry().is_none());
        drop(r1);
        assert!(b.try_retry().is_some());
    }

    #[test]
    fn retry_budget_arithmetic() {
        // 20 % of 100 active = 20; of 10 active = 2, raised to the minimum 3.
        assert_eq!(retry_budget(20.0, 3, 100), 20);
        assert_eq!(retry_budget(20.0, 3, 10), 3);
        assert_eq!(retry_budget(20.0, 3, 0), 3);
        assert_eq!(retry_budget(50.0, 0, 7), 3, "rounded down");
        assert_eq!(retry_budget(100.0, 0, 7), 7);
        assert_eq!(retry_budget(0.0, 1, 1000), 1);
        assert_eq!(retry_budget(33.3, 0, 1000), 333);
    }

    #[test]
    fn retry_budget_follows_active_requests() {
        let mut l = limits(1, 1, 1000, 0);
        l.retry_budget = Some(RetryBudgetLimit {
            budget_percent: 25.0,
            min_retry_concurrency: 1,
        });
        let b = Breakers::new(state(l));
        // No active request: the minimum concurrency, 1.
        let first = b.try_retry();
        assert!(first.is_some());
        assert!(b.try_retry().is_none());
        // 12 active requests: 25 % = 3 retries in all.
        let reqs: Vec<_> = (0..12).filter_map(|_| b.try_request()).collect();
        assert_eq!(b.state().retry_limit(), 3);
        let more: Vec<_> = (0..5).filter_map(|_| b.try_retry()).collect();
        assert_eq!(more.len(), 2, "3 in all with the first");
        drop(reqs);
        drop(more);
        drop(first);
        assert_eq!(b.snapshot().retries, 0);
    }

    #[test]
    fn lowered_limits_apply_to_new_permits() {
        let s = state(limits(1, 1, 2, 1));
        let b = Breakers::new(s.clone());
        let held: Vec<_> = (0..2).filter_map(|_| b.try_request()).collect();
        s.set_limits(limits(1, 1, 1, 1));
        assert!(b.try_request().is_none());
        drop(held);
        assert!(b.try_request().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn connection_limit_pending_and_wait_bound() {
        let s = state(limits(2, 1, 100, 1));
        let open = Arc::new(AtomicU32::new(0));
        let none = || None::<()>;
        let wait = Duration::from_millis(500);
        let a = acquire_connection(&s, &open, wait, none).await;
        let b = acquire_connection(&s, &open, wait, none).await;
        assert!(matches!(a, Ok(Acquired::Slot(_))) && matches!(b, Ok(Acquired::Slot(_))));
        assert_eq!(open.load(Ordering::SeqCst), 2);
        assert_eq!(s.snapshot().connections, 2);

        // At the limit: the third waits as the one pending request ...
        let s2 = s.clone();
        let open2 = open.clone();
        let waiter = tokio::spawn(async move { acquire_connection(&s2, &open2, wait, none).await });
        tokio::task::yield_now().await;
        assert_eq!(s.snapshot().pending, 1);
        // ... so a fourth finds the pending queue full: refused at once.
        let refused = acquire_connection(&s, &open, wait, none).await;
        assert!(matches!(refused, Err(e) if e.kind == ErrorKind::Overloaded));
        // A connection closes: the waiter gets its slot.
        drop(a);
        let got = waiter.await.expect("join");
        assert!(matches!(got, Ok(Acquired::Slot(_))));
        assert_eq!(s.snapshot().pending, 0);
        assert_eq!(s.snapshot().connections, 2);

        // Nothing closes: the wait ends at the bound, exactly.
        let started = tokio::time::Instant::now();
        let timed_out = acquire_connection(&s, &open, wait, none).await;
        assert!(matches!(timed_out, Err(e) if e.kind == ErrorKind::Overloaded));
        assert_eq!(started.elapsed(), wait);
        assert_eq!(s.snapshot().pending, 0);
        drop(got);
        drop(b);
        assert_eq!(s.snapshot().connections, 0);
        assert_eq!(open.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_takes_a_returned_connection() {
        let s = state(limits(1, 4, 100, 1));
        let open = Arc::new(AtomicU32::new(0));
        let _held = acquire_connection(&s, &open, Duration::from_secs(1), || None::<()>).await;
        let idle = Arc::new(std::sync::Mutex::new(None::<u32>));
        let (s2, open2, idle2) = (s.clone(), open.clone(), idle.clone());
        let waiter = tokio::spawn(async move {
            acquire_connection(&s2, &open2, Duration::from_secs(1), || {
                idle2.lock().ok().and_then(|mut g| g.take())
            })
            .await
        });
        tokio::task::yield_now().await;
        if let Ok(mut g) = idle.lock() {
            *g = Some(7);
        }
        s.wake_pending();
        let got = waiter.await.expect("join");
        assert!(matches!(got, Ok(Acquired::Reused(7))));
    }

    #[tokio::test]
    async fn a_pool_without_connections_may_always_open_one() {
        let s = state(limits(1, 1, 100, 1));
        let pool_a = Arc::new(AtomicU32::new(0));
        let pool_b = Arc::new(AtomicU32::new(0));
        let wait = Duration::from_millis(10);
        let _a = acquire_connection(&s, &pool_a, wait, || None::<()>).await;
        let b = acquire_connection(&s, &pool_b, wait, || None::<()>).await;
        assert!(matches!(b, Ok(Acquired::Slot(_))));
        assert_eq!(s.snapshot().connections, 2);
        // But a second one on a pool that has one waits, then is refused.
        let b2 = acquire_connection(&s, &pool_b, wait, || None::<()>).await;
        assert!(b2.is_err());
    }
}
