//! Clusters, endpoints, load balancers and connection pools.
mod cluster;
mod io;
pub mod lb;
pub mod pool;
mod tls;

pub use cluster::{resolve, spawn_dns_refresh, ActiveRequest, Cluster, Endpoint, PoolRegistry};
pub use io::UpstreamIo;
