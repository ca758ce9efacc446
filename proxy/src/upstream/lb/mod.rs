//! Load balancers. A [`Balancer`] is built once from an endpoint list (off
//! the request path) and then picks an endpoint index per request without
//! locks or allocation.
//!
//! Every policy keeps its per-request state lock-free: round robin advances
//! one atomic counter, the random policies draw from the thread-local
//! `fastrand` generator (tests make them deterministic with `fastrand::seed`),
//! and the hash policies only read their precomputed tables.

mod least_request;
mod maglev;
mod random;
mod ring_hash;
mod round_robin;
#[cfg(test)]
mod tests;

use crate::config::{Cluster, LbPolicy};

use least_request::LeastRequest;
use maglev::Maglev;
use random::WeightedRandom;
use ring_hash::RingHash;
use round_robin::RoundRobin;

/// What a balancer needs to know of an endpoint.
pub struct LbEndpoint<'a> {
    /// Stable identity, hashed by ring hash and Maglev (`ip:port`).
    pub key: &'a str,
    /// >= 1.
    pub weight: u32,
}

impl LbEndpoint<'_> {
    /// A weight of 0 would make an endpoint unreachable under some policies
    /// and not others; treating it as 1 keeps every policy consistent.
    fn effective_weight(&self) -> u32 {
        self.weight.max(1)
    }
}

pub struct Balancer {
    policy: LbPolicy,
    len: usize,
    inner: Inner,
}

enum Inner {
    /// Zero or one endpoint: nothing to choose.
    Trivial,
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    Random(WeightedRandom),
    RingHash(RingHash),
    Maglev(Maglev),
}

impl Balancer {
    /// Builds the balancer named by `cluster.lb_policy` with its options.
    pub fn new(cluster: &Cluster, endpoints: &[LbEndpoint<'_>]) -> Balancer {
        let policy = cluster.lb_policy;
        let inner = if endpoints.len() <= 1 {
            Inner::Trivial
        } else {
            let weights: Vec<u32> = endpoints.iter().map(LbEndpoint::effective_weight).collect();
            match policy {
                LbPolicy::RoundRobin => Inner::RoundRobin(RoundRobin::new(&weights)),
                LbPolicy::LeastRequest => {
                    let choices = cluster
                        .least_request
                        .as_ref()
                        .map_or(least_request::DEFAULT_CHOICE_COUNT, |c| c.choice_count);
                    Inner::LeastRequest(LeastRequest::new(&weights, choices))
                }
                LbPolicy::Random => Inner::Random(WeightedRandom::new(&weights)),
                LbPolicy::RingHash => {
                    let (min, max) = cluster.ring_hash.as_ref().map_or(
                        (ring_hash::DEFAULT_MIN_RING, ring_hash::DEFAULT_MAX_RING),
                        |c| (c.minimum_ring_size, c.maximum_ring_size),
                    );
                    Inner::RingHash(RingHash::new(endpoints, min, max))
                }
                LbPolicy::Maglev => {
                    let size = cluster
                        .maglev
                        .as_ref()
                        .map_or(maglev::DEFAULT_TABLE_SIZE, |c| c.table_size);
                    Inner::Maglev(Maglev::new(endpoints, size))
                }
            }
        };
        Balancer {
            policy,
            len: endpoints.len(),
            inner,
        }
    }

    /// Picks an endpoint index. `hash`: the request hash for ring hash and
    /// Maglev (None → random). `active(i)`: endpoint i's in-flight requests,
    /// for least request. None only when there are no endpoints.
    pub fn pick(&self, hash: Option<u64>, active: &dyn Fn(usize) -> u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let i = match &self.inner {
            Inner::Trivial => 0,
            Inner::RoundRobin(rr) => rr.pick(),
            Inner::LeastRequest(lr) => lr.pick(active),
            Inner::Random(r) => r.pick(),
            // Envoy hashes a random value when no policy produced a hash,
            // which spreads such requests in proportion to ring share.
            Inner::RingHash(ring) => ring.pick(hash.unwrap_or_else(|| fastrand::u64(..))),
            Inner::Maglev(m) => m.pick(hash.unwrap_or_else(|| fastrand::u64(..))),
        };
        Some(i)
    }

    /// The policy this balancer was built for.
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Number of endpoints it picks from.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
