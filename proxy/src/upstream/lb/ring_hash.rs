//! Ketama-style consistent hashing, as Envoy's `RING_HASH`.
//!
//! Each endpoint owns `replicas` points on a 64-bit ring, at the xxh64 of
//! `"{key}_{i}"`; a request goes to the owner of the first point at or after
//! its hash, wrapping around.
//!
//! Unlike Envoy, which derives the per-weight replica count from the exact
//! endpoint count, Ferry rounds it up to a power of two. Adding or removing an
//! endpoint then usually leaves every other endpoint's points untouched, so
//! the only keys that move are those gained or lost by the changed endpoint;
//! the price is a ring up to twice `minimum_ring_size`.

use xxhash_rust::xxh64::xxh64;

use super::LbEndpoint;

pub(super) const DEFAULT_MIN_RING: u64 = 1024;
pub(super) const DEFAULT_MAX_RING: u64 = 8 * 1024 * 1024;
/// Envoy's upper bound on `maximum_ring_size`.
pub(super) const RING_SIZE_LIMIT: u64 = 8 * 1024 * 1024;

pub(super) struct RingHash {
    /// (point, endpoint index), sorted by point.
    ring: Vec<(u64, u32)>,
}

impl RingHash {
    /// Out-of-range sizes are clamped (validation reports them; building
    /// must still succeed): `1 <= min <= max <= RING_SIZE_LIMIT`.
    pub(super) fn new(endpoints: &[LbEndpoint<'_>], min: u64, max: u64) -> Self {
        let max = max.clamp(1, RING_SIZE_LIMIT);
        let min = min.clamp(1, max);
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.effective_weight()))
            .collect();
        let counts = replica_counts(&weights, min, max);

        let mut ring = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        let mut buf = String::new();
        for (index, (endpoint, &count)) in endpoints.iter().zip(&counts).enumerate() {
            for i in 0..count {
                buf.clear();
                buf.push_str(endpoint.key);
                buf.push('_');
                push_decimal(&mut buf, i);
                ring.push((xxh64(buf.as_bytes(), 0), index as u32));
            }
        }
        // Tie-break on the key so the ring does not depend on endpoint order.
        ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| endpoints[a.1 as usize].key.cmp(endpoints[b.1 as usize].key))
        });
        RingHash { ring }
    }

    pub(super) fn pick(&self, hash: u64) -> usize {
        let i = self.ring.partition_point(|&(point, _)| point < hash);
        let entry = self.ring.get(i).or_else(|| self.ring.first());
        entry.map_or(0, |&(_, index)| index as usize)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }
}

/// Points per endpoint: `base · weight`, where `base` depends only on the
/// config (`minimum_ring_size / 4`, at least 16), never on how many
/// endpoints there are. That is what makes the ring consistent: adding or
/// removing an endpoint adds or removes only that endpoint's points, so only
/// its keys move (Envoy scales points by the endpoint count, which moves
/// keys between endpoints that stayed). Reduced to fit `max`; when even one
/// point per unit of weight exceeds `max`, points are shared out in
/// proportion with running sums, as Envoy does.
fn replica_counts(weights: &[u64], min: u64, max: u64) -> Vec<u64> {
    let total: u64 = weights.iter().sum::<u64>().max(1);
    let base = (min / 4).max(16).min(max / total);
    if base >= 1 {
        return weights.iter().map(|w| w * base).collect();
    }
    let scale = max as f64 / total as f64;
    let mut target = 0.0;
    let mut placed = 0u64;
    weights
        .iter()
        .map(|&w| {
            target += scale * w as f64;
            let upto = (target.round() as u64).min(max);
            let count = upto.saturating_sub(placed);
            placed += count;
            count
        })
        .collect()
}

fn push_decimal(buf: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        buf.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_follow_weight_and_bounds() {
        // Points per unit of weight do not depend on the endpoint count.
        assert_eq!(replica_counts(&[1; 3], 1024, 1 << 20), [256; 3]);
        assert_eq!(replica_counts(&[1; 4], 1024, 1 << 20), [256; 4]);
        assert_eq!(replica_counts(&[1; 5], 1024, 1 << 20), [256; 5]);
        assert_eq!(replica_counts(&[3, 1], 1024, 1 << 20), [768, 256]);
        assert_eq!(replica_counts(&[1, 1], 8, 1 << 20), [16, 16]);
        // `max` still caps the ring.
        assert_eq!(replica_counts(&[1, 1], 1024, 300), [150, 150]);
        let shared = replica_counts(&[1; 3], 1024, 2);
        assert_eq!(shared.iter().sum::<u64>(), 2);
    }

    #[test]
    fn decimal_keys() {
        let mut s = String::new();
        for n in [0, 7, 10, 12345, u64::MAX] {
            s.clear();
            push_decimal(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn lookup_wraps_around() {
        let eps = [
            LbEndpoint {
                key: "a",
                weight: 1,
            },
            LbEndpoint {
                key: "b",
                weight: 1,
            },
        ];
        let ring = RingHash::new(&eps, 4, 4);
        assert_eq!(ring.len(), 4);
        let (first_point, first_owner) = ring.ring[0];
        let last_point = ring.ring[3].0;
        assert_eq!(ring.pick(first_point), first_owner as usize);
        assert_eq!(ring.pick(0), first_owner as usize);
        if last_point < u64::MAX {
            assert_eq!(ring.pick(last_point + 1), first_owner as usize);
        }
    }
}
