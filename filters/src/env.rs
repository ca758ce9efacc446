//! The edges filters read time and chance through, injectable so tests are
//! exact and fast.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Monotonic time in nanoseconds since an arbitrary origin.
pub trait Clock: Send + Sync {
    fn now_nanos(&self) -> u64;
}

/// A source of uniformly distributed random numbers.
pub trait Random: Send + Sync {
    fn next_u64(&self) -> u64;
}

/// What every filter factory gets besides its config.
#[derive(Clone)]
pub struct FilterEnv {
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Random>,
}

impl Default for FilterEnv {
    fn default() -> Self {
        FilterEnv {
            clock: Arc::new(SystemClock::new()),
            random: Arc::new(ThreadRandom),
        }
    }
}

impl std::fmt::Debug for FilterEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilterEnv")
    }
}

/// The process's monotonic clock, counted from when this value was made.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        // u64 nanoseconds last 584 years of uptime.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to (tests; simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }

    pub fn set_nanos(&self, nanos: u64) {
        self.0.store(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// fastrand's thread-local generator: no shared state between workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn next_u64(&self) -> u64 {
        fastrand::u64(..)
    }
}

/// A seeded generator for reproducible tests. The lock is held for one
/// draw only.
#[derive(Debug)]
pub struct SeededRandom(Mutex<fastrand::Rng>);

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        SeededRandom(Mutex::new(fastrand::Rng::with_seed(seed)))
    }
}

impl Random for SeededRandom {
    fn next_u64(&self) -> u64 {
        // A poisoned lock only means another draw panicked; the generator
        // state is still a valid generator.
        let mut rng = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        rng.u64(..)
    }
}
