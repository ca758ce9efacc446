//! The embedded log: append-only segment files in one directory.
//!
//! ```text
//! DIR/
//!   00000000000000000000.log   sealed segment, records 0..N
//!   0000000000000000NNNN.log   active segment (file name = first offset)
//!   cursors/<trigger>.json     per-consumer positions
//! ```
//!
//! **Group commit.** One writer thread owns the active segment. Appends
//! from every producer queue on a channel; the thread takes everything
//! queued (up to `max_batch_bytes`), writes it with one `write`, calls
//! `fdatasync` once, and only then resolves each producer's future. While
//! one batch syncs the next one queues up, so the number of events per
//! fsync grows with the load and durability does not cap throughput. The
//! thread is a plain OS thread because `fdatasync` blocks for milliseconds
//! and must not stall the async runtime.
//!
//! **Recovery.** On open every segment is scanned and each record's CRC
//! checked. The active (last) segment may end in a torn record — a write
//! the kernel had only partly made durable when the process or machine
//! died. Such a tail was never acknowledged (acks follow the fsync), so it
//! is cut off and the file truncated. A damaged *sealed* segment is real
//! corruption: its intact prefix stays readable, the rest is reported and
//! skipped, and the file is left untouched for inspection.
//!
//! **Retention.** Only whole sealed segments are deleted, oldest first, and
//! never the active one. A segment goes when (a) every cursor is past it —
//! its last offset is below each cursor's low-water mark (`committed`, or
//! a parked event if lower) — and (b) it is older than `max_age` (by its
//! last write) or the log is above `max_bytes`. So a slow or parked trigger
//! holds the log's disk usage above the limits rather than losing events.
//! The one exception is `hard_max_bytes`: above it the oldest segments go
//! even if a cursor still needs them (a logged, counted loss) — it exists
//! so a subscriber that is down for days cannot fill the disk. It is off
//! unless configured.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot, watch};

use super::cursor::{sync_dir, CursorStore};
use super::record::{self, HEADER_LEN};
use super::{check_cursor_name, CursorState, EventLog, LogError, Record};

/// Segment sizes are kept below this so record positions fit in `u32`.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// Delete consumed segments whose last write is older than this.
    pub max_age: Option<Duration>,
    /// Delete consumed segments while the log is bigger than this.
    pub max_bytes: Option<u64>,
    /// Delete the oldest segments while the log is bigger than this, even
    /// if a cursor still needs them.
    pub hard_max_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct FileLogOptions {
    /// Roll to a new segment once the active one reaches this size.
    pub segment_bytes: u64,
    /// Roll once the active segment's first write is older than this, so
    /// age-based retention can work on a quiet log.
    pub segment_max_age: Option<Duration>,
    /// Largest record accepted.
    pub max_record: usize,
    /// Most bytes written per fsync.
    pub max_batch_bytes: usize,
    /// Recent records kept in memory so dispatchers at the tail never read
    /// the disk.
    pub cache_bytes: usize,
    /// Appends waiting for the writer before producers wait to enqueue.
    pub queue: usize,
    pub retention: Retention,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            segment_bytes: 64 << 20,
            segment_max_age: Some(Duration::from_secs(3600)),
            max_record: 4 << 20,
            max_batch_bytes: 8 << 20,
            cache_bytes: 32 << 20,
            queue: 16 * 1024,
            retention: Retention {
                max_age: Some(Duration::from_secs(24 * 3600)),
                max_bytes: Some(1 << 30),
                hard_max_bytes: None,
            },
        }
    }
}

struct Segment {
    base: u64,
    path: PathBuf,
    /// Read handle; readers `pread` it, so it is shared without a lock and
    /// stays readable if retention unlinks the file mid-read.
    file: Arc<File>,
    /// Byte position of each record's header.
    positions: Vec<u32>,
    size: u64,
    created: SystemTime,
    last_write: SystemTime,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.positions.len() as u64
    }
}

struct State {
    /// Ordered by `base`; the last one is active.
    segments: Vec<Segment>,
    cache: VecDeque<Record>,
    cache_bytes: usize,
    poisoned: Option<String>,
    /// Durable cursor positions, mirrored for retention.
    cursors: HashMap<String, CursorState>,
}

struct Shared {
    dir: PathBuf,
    opts: FileLogOptions,
    state: Mutex<State>,
    end_tx: watch::Sender<u64>,
    cursors: CursorStore,
    /// fsyncs of record batches so far (tests and metrics: group commit
    /// shows as far fewer syncs than appends).
    syncs: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind (no
        // half-applied invariants span an await or an I/O call), so the
        // poison flag carries no information worth dying for.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Append {
    payloads: Vec<Bytes>,
    done: oneshot::Sender<Result<Range<u64>, LogError>>,
}

/// The embedded [`EventLog`]. Cheap to clone; the writer thread stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct FileLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Append>,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

impl FileLog {
    /// Opens (creating if needed) the log in `dir`, recovering its tail.
    pub fn open(dir: impl Into<PathBuf>, opts: FileLogOptions) -> Result<FileLog, LogError> {
        let dir = dir.into();
        let mut opts = opts;
        opts.segment_bytes = opts.segment_bytes.clamp(4096, MAX_SEGMENT_BYTES);
        opts.max_record = opts.max_record.min((MAX_SEGMENT_BYTES / 4) as usize);
        fs::create_dir_all(&dir).map_err(|e| LogError::io(dir.display().to_string(), e))?;
        let mut segments = recover(&dir, &opts)?;
        let active = match segments.last() {
            Some(s) => s.path.clone(),
            None => {
                let seg = create_segment(&dir, 0)?;
                let p = seg.path.clone();
                segments.push(seg);
                p
            }
        };
        let writer = OpenOptions::new()
            .append(true)
            .open(&active)
            .map_err(|e| LogError::io(active.display().to_string(), e))?;
        let cursors = CursorStore::open(dir.join("cursors"))?;
        let cursor_map = cursors.all()?.into_iter().collect();
        let end = segments.last().map_or(0, Segment::end);
        let (end_tx, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            dir,
            state: Mutex::new(State {
                segments,
                cache: VecDeque::new(),
                cache_bytes: 0,
                poisoned: None,
                cursors: cursor_map,
            }),
            end_tx,
            cursors,
            opts,
            syncs: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(shared.opts.queue.max(1));
        let w = shared.clone();
        std::thread::Builder::new()
            .name("ferry-evlog".into())
            .spawn(move || writer_loop(&w, writer, rx))
            .map_err(|e| LogError::io("spawning the log writer", e))?;
        Ok(FileLog { shared, tx })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The first offset still stored.
    pub fn start(&self) -> u64 {
        let st = self.shared.lock();
        st.segments.first().map_or(0, |s| s.base)
    }

    /// Bytes on disk across segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.lock().segments.iter().map(|s| s.size).sum()
    }

    /// Names of the saved cursors.
    pub fn cursor_names(&self) -> Vec<String> {
        self.shared.lock().cursors.keys().cloned().collect()
    }

    /// Batches synced since open.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn segment_count(&self) -> usize {
        self.shared.lock().segments.len()
    }

    /// Deletes the segments retention allows (see the module docs) and
    /// returns how many went. `now` is a parameter so tests control age.
    pub fn enforce_retention(&self, now: SystemTime) -> usize {
        let r = &self.shared.opts.retention;
        let doomed: Vec<PathBuf> = {
            let mut st = self.shared.lock();
            let need = st.cursors.values().map(CursorState::low_water).min();
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            let mut n = 0;
            // Never the active segment (the last one).
            while n + 1 < st.segments.len() {
                let seg = &st.segments[n];
                let over_hard = r.hard_max_bytes.is_some_and(|m| total > m);
                let consumed = need.is_none_or(|need| seg.end() <= need);
                let old = r
                    .max_age
                    .is_some_and(|a| now.duration_since(seg.last_write).is_ok_and(|age| age > a));
                let over = r.max_bytes.is_some_and(|m| total > m);
                if over_hard || (consumed && (old || over)) {
                    if !consumed {
                        tracing::warn!(
                            segment = %seg.path.display(),
                            first = seg.base,
                            end = seg.end(),
                            "retention hard_max_bytes deletes events a trigger has not finished"
                        );
                    }
                    total -= seg.size;
                    n += 1;
                } else {
                    break;
                }
            }
            let gone: Vec<Segment> = st.segments.drain(..n).collect();
            if let Some(first) = st.segments.first().map(|s| s.base) {
                while st.cache.front().is_some_and(|r| r.offset < first) {
                    if let Some(r) = st.cache.pop_front() {
                        st.cache_bytes -= r.payload.len();
                    }
                }
            }
            gone.into_iter().map(|s| s.path).collect()
        };
        for p in &doomed {
            if let Err(e) = fs::remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "removing a segment failed");
            }
        }
        if !doomed.is_empty() {
            if let Err(e) = sync_dir(&self.shared.dir) {
                tracing::warn!(error = %e, "syncing the log directory after retention failed");
            }
            tracing::info!(segments = doomed.len(), "retention removed log segments");
        }
        doomed.len()
    }

    fn read_blocking(shared: &Shared, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let max = max.max(1);
        let (file, path, base, positions, end_pos) = {
            let st = shared.lock();
            if let Some(front) = st.cache.front() {
                if from >= front.offset {
                    let skip = usize::try_from(from - front.offset).unwrap_or(usize::MAX);
                    return Ok(st.cache.iter().skip(skip).take(max).cloned().collect());
                }
            }
            // The first segment holding an offset >= from.
            let Some(seg) = st.segments.iter().find(|s| s.end() > from) else {
                return Ok(Vec::new());
            };
            let first = from.max(seg.base);
            let i = usize::try_from(first - seg.base).unwrap_or(usize::MAX);
            let j = (i + max).min(seg.positions.len());
            let end_pos = seg.positions.get(j).map_or(seg.size, |p| u64::from(*p));
            (
                seg.file.clone(),
                seg.path.clone(),
                first,
                seg.positions[i..j].to_vec(),
                end_pos,
            )
        };
        let Some(&start_pos) = positions.first() else {
            return Ok(Vec::new());
        };
        let start_pos = u64::from(start_pos);
        let len = usize::try_from(end_pos - start_pos).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, start_pos)
            .map_err(|e| LogError::io(path.display().to_string(), e))?;
        let buf = Bytes::from(buf);
        let mut out = Vec::with_capacity(positions.len());
        for (k, p) in positions.iter().enumerate() {
            let a = (u64::from(*p) - start_pos) as usize;
            let b = positions
                .get(k + 1)
                .map_or(buf.len(), |q| (u64::from(*q) - start_pos) as usize);
            let framed = buf.get(a..b).unwrap_or_default();
            if record::decode(framed).is_none() {
                // Only bit rot after a successful fsync gets here.
                return Err(LogError::io(
                    path.display().to_string(),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("record {} fails its checksum", base + k as u64),
                    ),
                ));
            }
            out.push(Record {
                offset: base + k as u64,
                payload: buf.slice(a + HEADER_LEN..b),
            });
        }
        Ok(out)
    }
}

/// Scans the segment files in `dir` (see "Recovery" in the module docs).
fn recover(dir: &Path, opts: &FileLogOptions) -> Result<Vec<Segment>, LogError> {
    let io = |e| LogError::io(dir.display().to_string(), e);
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".log")?;
            (stem.len() == 20).then(|| stem.parse().ok()).flatten()
        })
        .collect();
    bases.sort_unstable();
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    let count = bases.len();
    for (i, base) in bases.into_iter().enumerate() {
        let path = segment_path(dir, base);
        let pio = |e| LogError::io(path.display().to_string(), e);
        let bytes = fs::read(&path).map_err(pio)?;
        let scan = record::scan(&bytes, opts.max_record);
        if let Some(prev) = segments.last() {
            if base < prev.end() {
                return Err(LogError::Backend(format!(
                    "segment {} starts at {base} but the previous one ends at {}; \
                     refusing to guess which copy of those offsets is right",
                    path.display(),
                    prev.end()
                )));
            }
            if base > prev.end() {
                tracing::error!(
                    from = prev.end(),
                    to = base,
                    "offsets missing between segments (a damaged segment was cut short)"
                );
            }
        }
        if let Some(damage) = &scan.damage {
            if i + 1 == count {
                tracing::warn!(
                    segment = %path.display(),
                    ?damage,
                    kept_records = scan.positions.len(),
                    cut_bytes = bytes.len() - scan.valid_len,
                    "torn tail in the active segment (never acknowledged); truncating"
                );
                let f = OpenOptions::new().write(true).open(&path).map_err(pio)?;
                f.set_len(scan.valid_len as u64).map_err(pio)?;
                f.sync_all().map_err(pio)?;
            } else {
                tracing::error!(
                    segment = %path.display(),
                    ?damage,
                    readable_records = scan.positions.len(),
                    unreadable_bytes = bytes.len() - scan.valid_len,
                    "corrupt sealed segment: records after the damage are unreadable"
                );
            }
        }
        let meta = fs::metadata(&path).map_err(pio)?;
        let mtime = meta.modified().unwrap_or_else(|_| SystemTime::now());
        let file = File::open(&path).map_err(pio)?;
        segments.push(Segment {
            base,
            path,
            file: Arc::new(file),
            positions: scan.positions,
            size: scan.valid_len as u64,
            created: mtime,
            last_write: mtime,
        });
    }
    Ok(segments)
}

fn create_segment(dir: &Path, base: u64) -> Result<Segment, LogError> {
    let path = segment_path(dir, base);
    let pio = |e| LogError::io(path.display().to_string(), e);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .open(&path)
        .map_err(pio)?;
    f.sync_all().map_err(pio)?;
    drop(f);
    // The new name must be durable before any record in it is acked.
    sync_dir(dir)?;
    let now = SystemTime::now();
    Ok(Segment {
        base,
        file: Arc::new(File::open(&path).map_err(pio)?),
        path,
        positions: Vec::new(),
        size: 0,
        created: now,
        last_write: now,
    })
}

fn writer_loop(shared: &Shared, mut active: File, mut rx: mpsc::Receiver<Append>) {
    let opts = &shared.opts;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut batch: Vec<Append> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes: usize = first.payloads.iter().map(|p| p.len() + HEADER_LEN).sum();
        batch.push(first);
        while bytes < opts.max_batch_bytes {
            match rx.try_recv() {
                Ok(a) => {
                    bytes += a
                        .payloads
                        .iter()
                        .map(|p| p.len() + HEADER_LEN)
                        .sum::<usize>();
                    batch.push(a);
                }
                Err(_) => break,
            }
        }
        if let Some(why) = shared.lock().poisoned.clone() {
            for a in batch.drain(..) {
                let _ = a.done.send(Err(LogError::Poisoned(why.clone())));
            }
            continue;
        }
        match write_batch(shared, &mut active, &mut buf, &batch) {
            Ok((start, count)) => {
                let mut next = start;
                for a in batch.drain(..) {
                    let n = a.payloads.len() as u64;
                    let _ = a.done.send(Ok(next..next + n));
                    next += n;
                }
                debug_assert_eq!(next, start + count);
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "event log write failed; refusing further appends");
                shared.lock().poisoned = Some(why.clone());
                for a in batch.drain(..) {
                    let _ = a.done.send(Err(LogError::Poisoned(why.clone())));
                }
            }
        }
    }
}

/// Writes and syncs one batch; returns (first offset, count).
fn write_batch(
    shared: &Shared,
    active: &mut File,
    buf: &mut Vec<u8>,
    batch: &[Append],
) -> Result<(u64, u64), LogError> {
    let opts = &shared.opts;
    // Roll first, so a batch never spans two files.
    let (roll_at, active_size) = {
        let st = shared.lock();
        let seg = st.segments.last();
        let now = SystemTime::now();
        let full = seg.is_some_and(|s| {
            !s.positions.is_empty()
                && (s.size >= opts.segment_bytes
                    || opts
                        .segment_max_age
                        .is_some_and(|a| now.duration_since(s.created).is_ok_and(|age| age > a)))
        });
        (
            full.then(|| seg.map_or(0, Segment::end)),
            seg.map_or(0, |s| s.size),
        )
    };
    let mut size = active_size;
    if let Some(base) = roll_at {
        let seg = create_segment(&shared.dir, base)?;
        *active = OpenOptions::new()
            .append(true)
            .open(&seg.path)
            .map_err(|e| LogError::io(seg.path.display().to_string(), e))?;
        shared.lock().segments.push(seg);
        size = 0;
    }

    buf.clear();
    let mut positions = Vec::new();
    let mut records = Vec::new();
    for a in batch {
        for p in &a.payloads {
            positions.push(u32::try_from(size + buf.len() as u64).unwrap_or(u32::MAX));
            record::encode(buf, p);
            records.push(p.clone());
        }
    }
    let what = || "the active log segment".to_owned();
    active.write_all(buf).map_err(|e| LogError::io(what(), e))?;
    active.sync_data().map_err(|e| LogError::io(what(), e))?;
    shared
        .syncs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let now = SystemTime::now();
    let mut st = shared.lock();
    let st = &mut *st;
    let Some(seg) = st.segments.last_mut() else {
        return Err(LogError::Backend("no active segment".into()));
    };
    let start = seg.end();
    seg.positions.extend(positions);
    seg.size += buf.len() as u64;
    seg.last_write = now;
    let end = seg.end();
    for (k, payload) in records.into_iter().enumerate() {
        st.cache_bytes += payload.len();
        st.cache.push_back(Record {
            offset: start + k as u64,
            payload,
        });
    }
    while st.cache_bytes > opts.cache_bytes && st.cache.len() > 1 {
        if let Some(r) = st.cache.pop_front() {
            st.cache_bytes -= r.payload.len();
        }
    }
    shared.end_tx.send_replace(end);
    Ok((start, end - start))
}

impl EventLog for FileLog {
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Range<u64>, LogError>> {
        async move {
            if let Some(p) = payloads
                .iter()
                .find(|p| p.len() > self.shared.opts.max_record)
            {
                return Err(LogError::TooLarge {
                    size: p.len(),
                    max: self.shared.opts.max_record,
                });
            }
            if payloads.iter().any(|p| p.is_empty()) {
                return Err(LogError::Backend("empty records are not stored".into()));
            }
            if payloads.is_empty() {
                let e = self.end();
                return Ok(e..e);
            }
            let (done, rx) = oneshot::channel();
            self.tx
                .send(Append { payloads, done })
                .await
                .map_err(|_| LogError::Closed)?;
            rx.await.map_err(|_| LogError::Closed)?
        }
        .boxed()
    }

    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Record>, LogError>> {
        async move {
            // The tail is served from memory without touching a thread
            // pool; older records need a pread, done off the runtime.
            {
                let st = self.shared.lock();
                if let Some(front) = st.cache.front() {
                    if from >= front.offset {
                        let skip = usize::try_from(from - front.offset).unwrap_or(usize::MAX);
                        return Ok(st
                            .cache
                            .iter()
                            .skip(skip)
                            .take(max.max(1))
                            .cloned()
                            .collect());
                    }
                }
            }
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || FileLog::read_blocking(&shared, from, max))
                .await
                .map_err(|e| LogError::Backend(format!("read task: {e}")))?
        }
        .boxed()
    }

    fn end(&self) -> u64 {
        *self.shared.end_tx.borrow()
    }

    fn watch_end(&self) -> watch::Receiver<u64> {
        self.shared.end_tx.subscribe()
    }

    fn load_cursor(&self, name: &str) -> BoxFuture<'_, Result<Option<CursorState>, LogError>> {
        let name = name.to_owned();
        async move {
            check_cursor_name(&name)?;
            Ok(self.shared.lock().cursors.get(&name).cloned())
        }
        .boxed()
    }

    fn store_cursor<'a>(
        &'a self,
        name: &'a str,
        state: &'a CursorState,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        async move {
            check_cursor_name(name)?;
            let shared = self.shared.clone();
            let (n, s) = (name.to_owned(), state.clone());
            tokio::task::spawn_blocking(move || {
                shared.cursors.store(&n, &s)?;
                // Mirrored only once durable: retention must never trust a
                // position a crash could take back.
                shared.lock().cursors.insert(n, s);
                Ok(())
            })
            .await
            .map_err(|e| LogError::Backend(format!("cursor task: {e}")))?
        }
        .boxed()
    }

    fn remove_cursor(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let name = name.to_owned();
        async move {
            check_cursor_name(&name)?;
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || {
                shared.cursors.remove(&name)?;
                shared.lock().cursors.remove(&name);
                Ok(())
            })
            .await
            .map_err(|e| LogError::Backend(format!("cursor task: {e}")))?
        }
        .boxed()
    }

    fn delete_all(&self) -> BoxFuture<'_, Result<(), LogError>> {
        async move {
            {
                // The writer checks this before every batch, so nothing
                // is acknowledged into a directory that is going away.
                let mut st = self.shared.lock();
                st.poisoned = Some("the broker was deleted".into());
                st.cursors.clear();
                st.cache.clear();
                st.cache_bytes = 0;
            }
            let dir = self.shared.dir.clone();
            tokio::task::spawn_blocking(move || match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(LogError::io(dir.display().to_string(), e)),
            })
            .await
            .map_err(|e| LogError::Backend(format!("delete task: {e}")))?
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
