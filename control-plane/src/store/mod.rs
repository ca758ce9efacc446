//! Persistence of the model.
//!
//! - [`Store`]: the trait every backend implements: objects keyed by
//!   (kind, namespace, name), each with a `resource_version`; atomic
//!   multi-object commits with per-object preconditions (optimistic
//!   concurrency, as Kubernetes does it); and change notification. Async
//!   (boxed futures, so it is object-safe) because the Kubernetes backend
//!   (a later issue) talks to an API server.
//! - [`FileStore`]: the embedded default: a checksummed write-ahead log
//!   plus an atomically replaced snapshot in the data directory.
//! - [`Runtime`]: per-revision state other components report (actual and
//!   desired scale, failures, endpoints); in memory, re-observed after a
//!   restart.
//! - [`Serving`]: the operations the API and other components use: apply a
//!   Service (stamping revisions), read objects with their status, delete,
//!   and watch for changes.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::model::Kind;

mod file;
mod runtime;
mod serving;

pub use file::FileStore;
pub use runtime::Runtime;
pub use serving::{Applied, ObjectList, Serving, ServingError, ServingSnapshot};

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object as stored: its key, the version of its last write (the
/// store's commit sequence number at that write) and its JSON body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub resource_version: u64,
    pub body: serde_json::Value,
}

/// What must hold for one operation of a commit to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No check.
    Any,
    /// The object must not exist (create).
    Absent,
    /// The object must exist with exactly this version (update).
    Version(u64),
}

/// One write of a commit.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: ObjectKey,
        body: serde_json::Value,
        expect: Precondition,
    },
    Delete {
        key: ObjectKey,
        expect: Precondition,
    },
}

impl Op {
    pub fn key(&self) -> &ObjectKey {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// One object changed by a commit, as subscribers see it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The commit's sequence number (all changes of one commit share it).
    pub seq: u64,
    pub key: ObjectKey,
    /// The new object; `None` when it was deleted.
    pub object: Option<Arc<StoredObject>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition failed: the caller re-reads and retries, or reports
    /// a 409.
    #[error("conflict on {key}: {message}")]
    Conflict { key: ObjectKey, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Data on disk that cannot be read back (not a torn tail: those are
    /// cut on open).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A backend for the model's objects.
///
/// Contract: a commit is all-or-nothing and durable when its future
/// resolves `Ok`; its changes are then visible to `get`/`list` and sent to
/// every subscriber, in commit order. `version()` is the sequence number of
/// the latest commit, for consumers that only need "something changed"
/// (they re-read; a `watch` never lags). A `broadcast` subscriber that
/// lags gets `RecvError::Lagged` and must re-list.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &ObjectKey) -> BoxFuture<'_, Result<Option<StoredObject>, StoreError>>;

    /// Every object of `kind`, in `namespace` or in all of them, ordered by
    /// (namespace, name).
    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> BoxFuture<'_, Result<Vec<StoredObject>, StoreError>>;

    /// Applies `ops` atomically; returns the commit's sequence number.
    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>>;

    fn subscribe(&self) -> broadcast::Receiver<Change>;

    fn version(&self) -> watch::Receiver<u64>;
}

/// Scratch directories for tests, removed on drop.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);

    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(label: &str) -> TestDir {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "ferry-cp-{label}-{}-{n}-{}",
                std::process::id(),
                crate::model::meta::new_uid()
            ));
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {p:?}: {e}"));
            TestDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
