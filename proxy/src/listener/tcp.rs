//! The TCP proxy: one upstream connection per downstream connection, bytes
//! copied both ways until either side closes.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{stopped, Shared};
use crate::active::ListenerRt;
use crate::upstream::ActiveRequest;

pub async fn proxy(
    mut down: TcpStream,
    rt: &ListenerRt,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let active = shared.active.load_full();
    let Some(cluster) = rt.cluster.and_then(|i| active.clusters.get(i)) else {
        return;
    };
    let Some(endpoint) = cluster.pick(None) else {
        tracing::debug!(listener = %rt.name, cluster = %cluster.name, "no endpoint for TCP connection");
        return;
    };
    let _inflight = ActiveRequest::new(endpoint.clone());
    let mut up = match endpoint.pool().connect_io().await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(listener = %rt.name, upstream = %endpoint.addr, error = %e, "TCP upstream connect failed");
            return;
        }
    };
    drop(active);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = r {
                tracing::debug!(listener = %rt.name, error = %e, "TCP proxy connection ended");
            }
        }
        // A TCP stream has no request boundary to finish at: when draining,
        // it keeps going until the drain timeout ends the process.
        _ = async { stopped(&mut stop).await; std::future::pending::<()>().await } => {}
    }
}
