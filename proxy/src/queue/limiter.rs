//! The queue-proxy's concurrency cap and bounded FIFO queue (Knative's
//! `queue.Breaker`): at most `container_concurrency` requests execute; up
//! to `max_queue_depth` more wait, in arrival order; a request beyond that
//! is refused at once, and one that waits longer than the queue timeout
//! gives up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue already holds `max_queue_depth` waiting requests.
    Full,
    /// No slot freed up within the queue timeout.
    Timeout,
}

pub struct Limiter {
    /// One permit per execution slot. Tokio's semaphore is fair: a released
    /// permit goes to the longest waiter, so `try_acquire` cannot overtake
    /// the queue.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot now (never the executing ones).
    waiting: AtomicU32,
    concurrency: u32,
    depth: u32,
}

/// Decrements the waiting count however the wait ends (slot, timeout, or
/// the request being dropped mid-wait by a client that went away).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    /// `concurrency` ≥ 1 (0, unlimited, has no limiter at all).
    pub fn new(concurrency: u32, depth: u32) -> Self {
        Limiter {
            slots: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
            waiting: AtomicU32::new(0),
            concurrency: concurrency.max(1),
            depth,
        }
    }

    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Slots in use.
    pub fn executing(&self) -> u32 {
        self.concurrency
            .saturating_sub(self.slots.available_permits() as u32)
    }

    /// Takes an execution slot, waiting in line for at most `wait` (None:
    /// as long as it takes). The slot is held until the permit drops.
    ///
    /// Under the cap this is one `try_acquire` (an atomic compare-and-swap
    /// and an `Arc` count): no lock, no allocation.
    pub async fn acquire(&self, wait: Option<Duration>) -> Result<OwnedSemaphorePermit, Rejected> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Knative counts executing + waiting against depth + concurrency;
        // counting the waiting alone against the depth is the same bound
        // and leaves the fast path one atomic lighter.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.depth {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejected::Full);
        }
        let _waiting = Waiting(&self.waiting);
        let acquire = self.slots.clone().acquire_owned();
        let got = match wait {
            Some(d) => match tokio::time::timeout(d, acquire).await {
                Ok(r) => r,
                Err(_) => return Err(Rejected::Timeout),
            },
            None => acquire.await,
        };
        // The semaphore is never closed; treat it as full if it were.
        got.map_err(|_| Rejected::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_executing_and_queue_depth_exactly() {
        let l = Arc::new(Limiter::new(2, 3));
        let a = l.acquire(None).await.expect("slot 1");
        let b = l.acquire(None).await.expect("slot 2");
        assert_eq!(l.executing(), 2);

        // Three wait in line, the fourth is refused at once.
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            waiters.push(tokio::spawn(async move { l.acquire(None).await }));
        }
        tokio::task::yield_now().await;
        assert_eq!(l.waiting(), 3);
        assert_eq!(l.acquire(None).await.err(), Some(Rejected::Full));

        // A released slot goes to the oldest waiter, not to a newcomer.
        drop(a);
        tokio::task::yield_now().await;
        assert_eq!(l.waiting(), 2);
        assert_eq!(l.executing(), 2);
        drop(b);
        let mut waiters = waiters.into_iter();
        let first = waiters
            .next()
            .expect("w1")
            .await
            .expect("join")
            .expect("w1 admitted");
        let _second = waiters
            .next()
            .expect("w2")
            .await
            .expect("join")
            .expect("w2 admitted");
        assert_eq!(l.waiting(), 1, "the third still waits: both slots are busy");
        drop(first);
        let third = waiters.next().expect("w3").await.expect("join");
        assert!(third.is_ok());
        assert_eq!(l.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_timeout_gives_up() {
        let l = Limiter::new(1, 10);
        let _busy = l.acquire(None).await.expect("slot");
        let started = tokio::time::Instant::now();
        let r = l.acquire(Some(Duration::from_millis(250))).await;
        assert_eq!(r.err(), Some(Rejected::Timeout));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert_eq!(l.waiting(), 0, "a timed-out waiter leaves the line");
    }

    #[tokio::test(start_paused = true)]
    async fn depth_zero_refuses_when_the_slots_are_busy() {
        let l = Limiter::new(1, 0);
        let busy = l.acquire(None).await.expect("slot");
        assert_eq!(l.acquire(None).await.err(), Some(Rejected::Full));
        drop(busy);
        assert!(l.acquire(None).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_frees_its_place_in_line() {
        let l = Arc::new(Limiter::new(1, 1));
        let _busy = l.acquire(None).await.expect("slot");
        let l2 = l.clone();
        let w = tokio::spawn(async move { l2.acquire(None).await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(l.waiting(), 1);
        w.abort();
        let _ = w.await;
        assert_eq!(l.waiting(), 0);
        assert_eq!(
            l.acquire(Some(Duration::from_millis(1))).await.err(),
            Some(Rejected::Timeout),
            "the line has room again"
        );
    }
}
