//! The connection breakers inside the pool path, against a real local
//! HTTP/1.1 server: a try at `max_connections` waits as a pending request and
//! takes over the connection returned to the pool; one more is refused at
//! once; a wait is bounded by the connect timeout.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::Response as HttpResponse;
use http_body_util::Full;
use tokio::net::TcpListener;

use super::*;
use crate::config::{self, Dur};
use crate::upstream::cluster::{Cluster, Target};
use crate::upstream::PoolRegistry;

async fn server() -> SocketAddr {
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("local_addr: {e}"),
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(HttpResponse::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn cluster(addr: SocketAddr) -> Arc<Cluster> {
    let cfg = config::Cluster {
        name: "pool-breakers".into(),
        connect_timeout: Some(Dur(Duration::from_millis(300))),
        circuit_breakers: Some(config::CircuitBreakers {
            max_connections: 1,
            max_pending_requests: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let targets = vec![Target {
        addr,
        hostname: None,
        weight: 1,
    }];
    match Cluster::build(
        &cfg,
        "clusters[0]",
        targets,
        &Arc::new(PoolRegistry::default()),
    ) {
        Ok(c) => c,
        Err(e) => panic!("build: {e}"),
    }
}

fn get() -> Request<ProxyBody> {
    let mut req = Request::new(ProxyBody::Empty);
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("test"));
    req
}

#[tokio::test]
async fn pending_tries_wait_for_a_returned_connection_and_are_bounded() {
    let c = cluster(server().await);
    let pool = c.hosts.load().endpoints[0].pool().clone();

    let first = pool.send(get(), false).await;
    let Ok((_resp, Some(returner))) = first else {
        panic!("first request failed");
    };
    assert_eq!(c.breakers().snapshot().connections, 1);

    // The only connection is busy: the next try waits as pending ...
    let p2 = pool.clone();
    let waiting = tokio::spawn(async move { p2.send(get(), false).await.map(|_| ()) });
    for _ in 0..100 {
        if c.breakers().snapshot().pending == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(c.breakers().snapshot().pending, 1);
    // ... and one more finds the pending queue full: 503 at once.
    let refused = pool.send(get(), false).await;
    assert!(matches!(refused, Err(e) if e.kind == ErrorKind::Overloaded));

    // The first connection goes back to the pool: the waiter takes it.
    returner.release();
    let served = waiting
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    assert_eq!(served, Ok(()));
    assert_eq!(
        c.stats.cx_total.get(),
        1,
        "served on the returned connection"
    );
    // `waiting` dropped its response and so its returner, which closes the
    // connection and frees the slot.
    assert_eq!(c.breakers().snapshot().pending, 0);
    for _ in 0..100 {
        if c.breakers().snapshot().connections == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        c.breakers().snapshot().connections,
        0,
        "slot freed on close"
    );

    // Hold a connection busy again and wait out the bound.
    let busy = pool.send(get(), false).await;
    let Ok((_resp, Some(_busy))) = busy else {
        panic!("third request failed");
    };
    let started = std::time::Instant::now();
    let timed_out = pool.send(get(), false).await;
    assert!(matches!(timed_out, Err(e) if e.kind == ErrorKind::Overloaded));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "waited {took:?}"
    );
    assert!(
        c.stats.rq_overflow[1].get() >= 1,
        "pending overflow counted"
    );
    assert!(
        c.stats.rq_overflow[2].get() >= 2,
        "connection overflow counted"
    );
}
