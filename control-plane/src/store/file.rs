//! The embedded store: everything in memory, made durable by a write-ahead
//! log in `DATA_DIR/store/`.
//!
//! - `wal.log`: one record per commit, `[len u32 LE][xxh64 u64 LE][JSON]`,
//!   appended and fsynced before the commit is acknowledged. On open, the
//!   records are replayed up to the first one that is short or fails its
//!   checksum (a write torn by a crash): the log is cut there, so the next
//!   append follows the last good record.
//! - `snapshot.json`: every object and the sequence number it includes.
//!   When the log passes [`COMPACT_BYTES`] it is written to
//!   `snapshot.json.tmp`, fsynced, renamed over `snapshot.json` and the
//!   directory fsynced; then the log is emptied. A crash at any point
//!   leaves a valid snapshot plus a log whose records at or below the
//!   snapshot's sequence number are skipped; a leftover `.tmp` is ignored
//!   and removed.
//!
//! One process per data directory: two would interleave their logs, so
//! `store/LOCK` holds the owner's pid; a lock whose process is gone (a
//! crash) is taken over.
//!
//! [`FileStore::memory`] is the same store without a directory (nothing
//! survives the process), for `serve --xds-snapshot` without `--data-dir`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::{Change, ObjectKey, Op, Precondition, Store, StoreError, StoredObject};
use crate::model::Kind;

/// Log size that triggers a snapshot.
pub const COMPACT_BYTES: u64 = 4 * 1024 * 1024;
/// Largest record accepted on replay; anything larger is a torn length.
const MAX_RECORD: u32 = 256 * 1024 * 1024;
const HEADER: usize = 12;

const WAL: &str = "wal.log";
const LOCK: &str = "LOCK";
const SNAPSHOT: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";

#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` for an in-memory store.
    dir: Option<PathBuf>,
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    version: watch::Sender<u64>,
}

struct State {
    objects: BTreeMap<ObjectKey, Arc<StoredObject>>,
    seq: u64,
    /// `None` for an in-memory store.
    wal: Option<File>,
    wal_len: u64,
    /// Set when a failed append could not be rolled back: the log's tail is
    /// unknown, so no further commit is accepted (restart to recover).
    broken: Option<String>,
    compact_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    ops: Vec<WalOp>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WalOp {
    Put(StoredObject),
    Delete(ObjectKey),
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    seq: u64,
    objects: Vec<StoredObject>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every mutation is applied after the log write succeeded and cannot
    // panic half-way through, so a poisoned lock still guards sound data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("fsync directory {}", dir.display()), e))
}

impl FileStore {
    /// Opens (creating if needed) the store under `data_dir/store`,
    /// replaying the snapshot and the log. Blocking: call before the
    /// runtime serves, or from `spawn_blocking`.
    pub fn open(data_dir: &Path) -> Result<FileStore, StoreError> {
        Self::open_with(data_dir, COMPACT_BYTES)
    }

    /// [`FileStore::open`] with a custom compaction threshold (tests).
    pub fn open_with(data_dir: &Path, compact_bytes: u64) -> Result<FileStore, StoreError> {
        let dir = data_dir.join("store");
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        sync_dir(data_dir)?;
        take_lock(&dir)?;

        let tmp = dir.join(SNAPSHOT_TMP);
        if tmp.exists() {
            // A snapshot interrupted before its rename: the previous
            // snapshot plus the log hold everything it would have.
            tracing::warn!(path = %tmp.display(), "removing an unfinished snapshot");
            let _ = fs::remove_file(&tmp);
        }

        let mut objects = BTreeMap::new();
        let mut seq = 0;
        let snap_path = dir.join(SNAPSHOT);
        match fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: Snapshot = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", snap_path.display())))?;
                seq = snap.seq;
                for o in snap.objects {
                    objects.insert(o.key.clone(), Arc::new(o));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(
                    format!("reading {}", snap_path.display()),
                    e,
                ))
            }
        }

        let wal_path = dir.join(WAL);
        let mut wal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&wal_path)
            .map_err(|e| StoreError::io(format!("opening {}", wal_path.display()), e))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(format!("reading {}", wal_path.display()), e))?;
        let (records, good_len) = parse_log(&bytes);
        if good_len < bytes.len() {
            tracing::warn!(
                path = %wal_path.display(),
                kept = good_len,
                dropped = bytes.len() - good_len,
                "cutting a torn tail off the store log"
            );
            wal.set_len(good_len as u64)
                .and_then(|()| wal.sync_all())
                .map_err(|e| StoreError::io(format!("truncating {}", wal_path.display()), e))?;
        }
        let mut replayed = 0;
        for r in records {
            if r.seq <= seq {
                continue;
            }
            seq = r.seq;
            replayed += 1;
            for op in r.ops {
                match op {
                    WalOp::Put(o) => {
                        objects.insert(o.key.clone(), Arc::new(o));
                    }
                    WalOp::Delete(k) => {
                        objects.remove(&k);
                    }
                }
            }
        }
        sync_dir(&dir)?;
        tracing::info!(
            dir = %dir.display(),
            objects = objects.len(),
            seq,
            replayed,
            "store opened"
        );
        let (changes, _) = broadcast::channel(1024);
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir: Some(dir),
                state: Mutex::new(State {
                    objects,
                    seq,
                    wal: Some(wal),
                    wal_len: good_len as u64,
                    broken: None,
                    compact_bytes,
                }),
                changes,
                version: watch::Sender::new(seq),
            }),
        })
    }

    /// A store that keeps everything in memory only.
    pub fn memory() -> FileStore {
        let (changes, _) = broadcast::channel(1024);
        FileStore {
            inner: Arc::new(Inner {
                dir: None,
                state: Mutex::new(State {
                    objects: BTreeMap::new(),
                    seq: 0,
                    wal: None,
                    wal_len: 0,
                    broken: None,
                    compact_bytes: u64::MAX,
                }),
                changes,
                version: watch::Sender::new(0),
            }),
        }
    }

    /// The directory holding the log and snapshot (`None` in memory).
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    fn get_now(&self, key: &ObjectKey) -> Option<StoredObject> {
        lock(&self.inner.state)
            .objects
            .get(key)
            .map(|o| o.as_ref().clone())
    }

    fn list_now(&self, kind: Kind, namespace: Option<&str>) -> Vec<StoredObject> {
        let st = lock(&self.inner.state);
        st.objects
            .values()
            .filter(|o| o.key.kind == kind && namespace.is_none_or(|ns| o.key.namespace == ns))
            .map(|o| o.as_ref().clone())
            .collect()
    }
}

/// Claims `dir/LOCK` for this process, or fails naming the live owner.
fn take_lock(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(LOCK);
    if let Ok(text) = fs::read_to_string(&path) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            if alive {
                return Err(StoreError::Io {
                    context: format!(
                        "{} is in use by process {pid} (another ferry-control?)",
                        dir.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
                });
            }
            tracing::warn!(pid, "taking over the store lock of a process that is gone");
        }
    }
    let tmp = dir.join("LOCK.tmp");
    fs::write(&tmp, std::process::id().to_string())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_file(dir.join(LOCK));
        }
    }
}

/// Splits a log into its valid records and the length they cover.
fn parse_log(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let mut len_b = [0u8; 4];
        let mut sum_b = [0u8; 8];
        len_b.copy_from_slice(&header[..4]);
        sum_b.copy_from_slice(&header[4..]);
        let len = u32::from_le_bytes(len_b);
        if len > MAX_RECORD {
            break;
        }
        let start = pos + HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        if xxhash_rust::xxh64::xxh64(payload, 0) != u64::from_le_bytes(sum_b) {
            break;
        }
        let Ok(record) = serde_json::from_slice::<Record>(payload) else {
            break;
        };
        out.push(record);
        pos = start + len as usize;
    }
    (out, pos)
}

impl Inner {
    /// The blocking part of a commit (runs on a blocking thread).
    fn commit(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let mut st = lock(&self.state);
        if let Some(why) = &st.broken {
            return Err(StoreError::Internal(format!(
                "the store refuses writes after a failed log write ({why}); restart ferry-control"
            )));
        }
        for (i, op) in ops.iter().enumerate() {
            let key = op.key();
            if ops[..i].iter().any(|o| o.key() == key) {
                return Err(StoreError::Internal(format!(
                    "{key} appears twice in one commit"
                )));
            }
            let current = st.objects.get(key).map(|o| o.resource_version);
            let expect = match op {
                Op::Put { expect, .. } | Op::Delete { expect, .. } => *expect,
            };
            let ok = match (expect, current) {
                (Precondition::Any, _) => true,
                (Precondition::Absent, None) => true,
                (Precondition::Absent, Some(_)) => false,
                (Precondition::Version(v), Some(c)) => v == c,
                (Precondition::Version(_), None) => false,
            };
            if !ok {
                let message = match current {
                    Some(c) => format!("expected {expect:?}, stored version is {c}"),
                    None => format!("expected {expect:?}, the object does not exist"),
                };
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    message,
                });
            }
        }
        let seq = st.seq + 1;
        let wal_ops: Vec<WalOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, body, .. } => WalOp::Put(StoredObject {
                    key,
                    resource_version: seq,
                    body,
                }),
                Op::Delete { key, .. } => WalOp::Delete(key),
            })
            .collect();
        let record = Record { seq, ops: wal_ops };
        let payload = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Internal(format!("encoding a log record: {e}")))?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| StoreError::Internal("commit too large".to_string()))?;
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&xxhash_rust::xxh64::xxh64(&payload, 0).to_le_bytes());
        buf.extend_from_slice(&payload);
        let before = st.wal_len;
        if let Some(wal) = st.wal.as_mut() {
            if let Err(e) = wal.write_all(&buf).and_then(|()| wal.sync_data()) {
                // Take the partial record back out so the next append does
                // not follow garbage; if even that fails, stop accepting
                // writes.
                if let Err(e2) = wal.set_len(before).and_then(|()| wal.sync_data()) {
                    st.broken = Some(format!("{e}; rollback: {e2}"));
                }
                return Err(StoreError::io("appending to the store log", e));
            }
        }
        st.wal_len = before + buf.len() as u64;
        st.seq = seq;
        let mut changes = Vec::with_capacity(record.ops.len());
        for op in record.ops {
            match op {
                WalOp::Put(o) => {
                    let o = Arc::new(o);
                    st.objects.insert(o.key.clone(), o.clone());
                    changes.push(Change {
                        seq,
                        key: o.key.clone(),
                        object: Some(o),
                    });
                }
                WalOp::Delete(key) => {
                    st.objects.remove(&key);
                    changes.push(Change {
                        seq,
                        key,
                        object: None,
                    });
                }
            }
        }
        if st.wal_len > st.compact_bytes {
            if let Err(e) = self.compact(&mut st) {
                // The log still holds everything; compaction is retried on
                // the next commit.
                tracing::warn!(error = %e, "store snapshot failed; keeping the log");
            }
        }
        // Published while still holding the lock, so subscribers see
        // commits in order.
        for c in changes {
            let _ = self.changes.send(c);
        }
        self.version.send_replace(seq);
        Ok(seq)
    }

    fn compact(&self, st: &mut State) -> Result<(), StoreError> {
        let (Some(dir), Some(_)) = (&self.dir, &st.wal) else {
            return Ok(());
        };
        let snap = Snapshot {
            format: 1,
            seq: st.seq,
            objects: st.objects.values().map(|o| o.as_ref().clone()).collect(),
        };
        let bytes = serde_json::to_vec(&snap)
            .map_err(|e| StoreError::Internal(format!("encoding the snapshot: {e}")))?;
        let tmp = dir.join(SNAPSHOT_TMP);
        let mut f = File::create(&tmp)
            .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io(format!("writing {}", tmp.display()), e))?;
        drop(f);
        fs::rename(&tmp, dir.join(SNAPSHOT))
            .map_err(|e| StoreError::io("renaming the snapshot into place", e))?;
        sync_dir(dir)?;
        // Only now may the log shrink: the snapshot covers every record.
        if let Some(wal) = st.wal.as_mut() {
            wal.set_len(0)
                .and_then(|()| wal.sync_all())
                .map_err(|e| StoreError::io("emptying the store log", e))?;
        }
        st.wal_len = 0;
        tracing::info!(
            seq = st.seq,
            objects = snap.objects.len(),
            "store snapshot written"
        );
        Ok(())
    }
}

impl Store for FileStore {
    fn get(&self, key: &ObjectKey) -> BoxFuture<'_, Result<Option<StoredObject>, StoreError>> {
        let r = Ok(self.get_now(key));
        Box::pin(std::future::ready(r))
    }

    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> BoxFuture<'_, Result<Vec<StoredObject>, StoreError>> {
        let r = Ok(self.list_now(kind, namespace));
        Box::pin(std::future::ready(r))
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // fsync blocks for milliseconds: keep it off the async workers.
            // (In memory there is no I/O, but one path keeps it simple.)
            tokio::task::spawn_blocking(move || inner.commit(ops))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    fn version(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }
}

#[cfg(test)]
mod tests;
