//! The JSON-lines access log. Off by default; when on, each request's record
//! is formatted when its response ends and written by a dedicated thread,
//! so a slow disk never stalls a worker.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};
use serde::Serialize;

/// Records waiting for the writer; beyond this they are dropped and counted
/// rather than buffering without bound.
const QUEUE: usize = 64 * 1024;

pub struct AccessLogger {
    path: String,
    tx: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
}

impl AccessLogger {
    /// Opens `path` (`stdout`, `stderr` or a file, appended to) and starts
    /// the writer thread.
    pub fn open(path: &str) -> std::io::Result<Arc<AccessLogger>> {
        let sink: Box<dyn Write + Send> = match path {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            file => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, sink))?;
        Ok(Arc::new(AccessLogger {
            path: path.to_string(),
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn send(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        // Drain what is queued, then flush once: one syscall per burst.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
    }
}

/// One request's record, finished when its response body ends (or is
/// abandoned).
pub struct Completion {
    pub logger: Arc<AccessLogger>,
    pub start: Instant,
    pub start_time: SystemTime,
    pub method: Method,
    pub authority: String,
    pub path: String,
    pub version: Version,
    pub status: u16,
    pub bytes_received: Option<Arc<AtomicU64>>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub request_id: Option<HeaderValue>,
    pub downstream_remote: SocketAddr,
    pub response_flags: &'static str,
}

#[derive(Serialize)]
struct Record<'a> {
    start_time: String,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: f64,
    upstream_cluster: Option<&'a str>,
    upstream_host: Option<String>,
    request_id: Option<&'a str>,
    downstream_remote: String,
    response_flags: &'static str,
}

impl Completion {
    pub fn finish(self: Box<Self>, bytes_sent: u64) {
        let rec = Record {
            start_time: rfc3339(self.start_time),
            method: self.method.as_str(),
            authority: &self.authority,
            path: &self.path,
            protocol: match self.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            },
            status: self.status,
            bytes_received: self
                .bytes_received
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_sent,
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            upstream_cluster: self.upstream_cluster.as_deref(),
            upstream_host: self.upstream_host.map(|a| a.to_string()),
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            downstream_remote: self.downstream_remote.to_string(),
            response_flags: if self.response_flags.is_empty() {
                "-"
            } else {
                self.response_flags
            },
        };
        if let Ok(mut line) = serde_json::to_vec(&rec) {
            line.push(b'\n');
            self.logger.send(line);
        }
    }
}

/// `2026-11-25T00:01:02.345Z` without a date crate: days → civil date by
/// Howard Hinnant's algorithm.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_028_862_345);
        assert_eq!(rfc3339(t), "2025-11-25T00:01:02.345Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
