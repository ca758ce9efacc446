//! Clusters, endpoints, load balancers and connection pools, and the
//! resilience around them: circuit breakers (`breaker`), active health
//! checking (`health`), outlier detection (`outlier`) and panic mode
//! (`cluster`).
pub mod breaker;
mod cluster;
pub mod health;
mod io;
pub mod lb;
pub mod outlier;
pub mod pool;
mod tls;

pub use breaker::{BreakerPermit, BreakerView, Breakers, Limits, RetryBudgetLimit};
pub use cluster::{
    panic_mode, resolve, spawn_dns_refresh, start, ActiveRequest, Cluster, Endpoint, HostSet,
    PoolRegistry,
};
pub use io::UpstreamIo;
pub use outlier::TryOutcome;
