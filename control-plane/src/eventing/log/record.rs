//! On-disk framing of one record in a segment file:
//!
//! ```text
//! +-----------+-----------+-----------------+
//! | len: u32  | crc: u32  | payload (len B) |
//! +-----------+-----------+-----------------+
//!   little endian; crc = CRC-32 (IEEE) of the 4 length bytes + payload
//! ```
//!
//! The checksum covers the length too, so a torn write that left a bogus
//! length is caught as surely as a torn payload. A zero length is never
//! written (events are never empty), which makes a run of zero bytes — what
//! a file that grew but whose data never reached the disk reads as — fail
//! the check instead of parsing as empty records.

pub const HEADER_LEN: usize = 8;

/// Appends the framed `payload` to `buf`.
pub fn encode(buf: &mut Vec<u8>, payload: &[u8]) {
    // Callers bound payloads far below 4 GiB (FileLogOptions::max_record).
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let len_bytes = len.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(payload);
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Why a scan stopped before the end of the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than a header or than the header's length promised.
    Truncated,
    /// Length of zero or above the limit.
    BadLength(u32),
    /// Checksum mismatch.
    BadChecksum,
}

/// Result of scanning a segment's bytes.
#[derive(Debug, Default)]
pub struct Scan {
    /// Byte position of each valid record's header.
    pub positions: Vec<u32>,
    /// Bytes up to the end of the last valid record.
    pub valid_len: usize,
    /// Set if the scan stopped before the end of the input.
    pub damage: Option<Damage>,
}

/// Walks the records in `bytes` and stops at the first one that is not
/// intact. Everything before that point is trusted; nothing after it is,
/// since without a valid length there is no way to find the next record.
pub fn scan(bytes: &[u8], max_record: usize) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + HEADER_LEN) else {
            out.damage = Some(Damage::Truncated);
            break;
        };
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let len = u32::from_le_bytes(len_bytes);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len as usize > max_record {
            out.damage = Some(Damage::BadLength(len));
            break;
        }
        let start = pos + HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            out.damage = Some(Damage::Truncated);
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&len_bytes);
        h.update(payload);
        if h.finalize() != crc {
            out.damage = Some(Damage::BadChecksum);
            break;
        }
        // Segments are capped well below 4 GiB, so positions fit in u32.
        out.positions.push(u32::try_from(pos).unwrap_or(u32::MAX));
        pos = start + len as usize;
        out.valid_len = pos;
    }
    out
}

/// Checks one framed record read back from disk and returns its payload.
pub fn decode(framed: &[u8]) -> Option<&[u8]> {
    let s = scan(framed, usize::MAX);
    if s.positions.len() == 1 && s.valid_len == framed.len() {
        framed.get(HEADER_LEN..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in payloads {
            encode(&mut b, p);
        }
        b
    }

    #[test]
    fn round_trip() {
        let b = framed(&[b"one", b"two two", &[0u8; 300]]);
        let s = scan(&b, 1 << 20);
        assert_eq!(s.positions, vec![0, 11, 26]);
        assert_eq!(s.valid_len, b.len());
        assert_eq!(s.damage, None);
        assert_eq!(decode(&b[11..26]), Some(&b"two two"[..]));
    }

    #[test]
    fn every_torn_tail_is_detected() {
        let b = framed(&[b"first", b"second record"]);
        let first_end = HEADER_LEN + 5;
        // Cut the second record at every possible point.
        for cut in first_end + 1..b.len() {
            let s = scan(&b[..cut], 1 << 20);
            assert_eq!(s.positions, vec![0], "cut at {cut}");
            assert_eq!(s.valid_len, first_end);
            assert!(s.damage.is_some());
        }
    }

    #[test]
    fn flipped_bits_are_detected() {
        let b = framed(&[b"first", b"second record"]);
        for i in 13..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let s = scan(&c, 1 << 20);
            assert_eq!(s.positions, vec![0], "flip at {i}");
            assert!(s.damage.is_some());
        }
    }

    #[test]
    fn zeros_are_not_records() {
        let mut b = framed(&[b"x"]);
        b.extend_from_slice(&[0u8; 64]);
        let s = scan(&b, 1 << 20);
        assert_eq!(s.positions.len(), 1);
        assert_eq!(s.damage, Some(Damage::BadLength(0)));
    }

    #[test]
    fn oversized_length_is_rejected() {
        let b = framed(&[&[7u8; 100]]);
        let s = scan(&b, 50);
        assert_eq!(s.damage, Some(Damage::BadLength(100)));
        assert!(s.positions.is_empty());
    }
}
