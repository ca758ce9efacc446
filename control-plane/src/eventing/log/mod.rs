//! The broker's durable event log: the contract ([`EventLog`]), the
//! embedded backend ([`FileLog`], the default) and NATS JetStream
//! ([`JetStreamLog`]) for brokers shared by several control planes.
//!
//! A log is a sequence of opaque records numbered by a dense `u64` offset
//! (0, 1, 2, …). Appends are durable when their future resolves; readers
//! follow the end through a `watch` channel; each consumer (a trigger's
//! dispatcher) keeps a named [`CursorState`] in the log's store so it
//! resumes where it left off after a restart.
//!
//! The trait returns boxed futures rather than using `async fn` so it stays
//! object safe: the broker holds `Arc<dyn EventLog>` and does not care
//! whether the records live in local segments or in NATS JetStream.

pub mod cursor;
pub mod file;
pub mod jetstream;
pub mod record;

use std::ops::Range;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use file::{FileLog, FileLogOptions, Retention};
pub use jetstream::{JetStreamLog, JetStreamOptions};

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub payload: Bytes,
}

/// Where a consumer stands. Every offset below `committed` is done except
/// those in `parked`, which are kept (and protected from retention) until
/// the consumer finishes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    pub committed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked: Vec<u64>,
}

impl CursorState {
    /// The lowest offset this consumer may still need.
    pub fn low_water(&self) -> u64 {
        self.parked
            .iter()
            .copied()
            .min()
            .map_or(self.committed, |p| p.min(self.committed))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A write or fsync failed earlier. After a failed fsync the kernel may
    /// have dropped the dirty pages, so the only safe state is "stop
    /// accepting" until a restart re-reads what really is on disk.
    #[error("the log is failed after an earlier write error: {0}")]
    Poisoned(String),
    #[error("record of {size} bytes is over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("the log is closed")]
    Closed,
    #[error("invalid cursor name {0:?}: use lowercase letters, digits, '-', '.' and '_'")]
    BadCursorName(String),
    #[error("corrupt cursor file {path}: {reason}")]
    BadCursor { path: String, reason: String },
    #[error("backend error: {0}")]
    Backend(String),
}

impl LogError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A durable, ordered, multi-consumer log.
pub trait EventLog: Send + Sync + 'static {
    /// Appends `payloads` in order; resolves with their offsets once they
    /// are durable (for the embedded log: after the `fdatasync` of the batch
    /// that carried them).
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Range<u64>, LogError>>;

    /// Up to `max` records from `from` on (fewer at the end). Offsets that
    /// retention removed are skipped: the first record returned may be past
    /// `from`, which tells the caller about the gap.
    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Record>, LogError>>;

    /// The offset the next append gets; every offset below it is durable.
    fn end(&self) -> u64;

    /// Follows [`EventLog::end`]; changes after every durable batch.
    fn watch_end(&self) -> watch::Receiver<u64>;

    /// The consumer's saved position, if it has one.
    fn load_cursor(&self, name: &str) -> BoxFuture<'_, Result<Option<CursorState>, LogError>>;

    /// Saves the consumer's position durably (atomically replacing the
    /// previous one).
    fn store_cursor<'a>(
        &'a self,
        name: &'a str,
        state: &'a CursorState,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Forgets a consumer (its trigger was deleted), so retention no longer
    /// waits for it.
    fn remove_cursor(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>>;

    /// Deletes every record and cursor: the log's broker was deleted.
    /// Appends after this fail.
    fn delete_all(&self) -> BoxFuture<'_, Result<(), LogError>>;
}

/// Cursor names become file names (embedded) or consumer names (NATS).
pub(crate) fn check_cursor_name(name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LogError::BadCursorName(name.to_owned()))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "ferry-evlog-{tag}-{}-{n}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_water_counts_parked_events() {
        let c = CursorState {
            committed: 10,
            parked: vec![7, 3],
        };
        assert_eq!(c.low_water(), 3);
        assert_eq!(CursorState::default().low_water(), 0);
    }

    #[test]
    fn cursor_names() {
        assert!(check_cursor_name("default.my-trigger").is_ok());
        assert!(check_cursor_name("").is_err());
        assert!(check_cursor_name("../x").is_err());
        assert!(check_cursor_name("A").is_err());
    }
}
