//! NATS JetStream behind [`EventLog`], for brokers shared by several
//! control planes.
//!
//! Per broker: a stream `FERRY_<ns>_<broker>` on the subject
//! `ferry.<ns>.<broker>` (file storage), and a stream
//! `FERRY_CURSORS_<ns>_<broker>` keeping the last message per subject
//! `ferry-cursors.<ns>.<broker>.<trigger>`: each trigger's cursor as JSON
//! (an empty message is a deleted cursor). That is what a JetStream KV
//! bucket is; a plain stream is used because the client's KV API does not
//! parse the answers of Debian's nats-server 2.9.
//! Offsets are stream sequences minus one, so offset 0 is sequence 1.
//!
//! - **append**: one writer task per log takes every queued append,
//!   publishes all their messages back to back (pipelined) and then awaits
//!   the server's acks; each caller's future resolves once all of its
//!   messages are acked. The returned range is first..last+1 of this
//!   caller's sequences (another control plane publishing to the same
//!   stream may interleave, so the range can include its events).
//!   Durability is JetStream's: an ack means the stream leader stored the
//!   message (and its replicas, with `num_replicas` > 1); on one server,
//!   when that reaches the disk follows the server's sync settings.
//! - **read**: the next stored message at or after an offset, per message
//!   (`STREAM.MSG.GET` with `next_by_subject`), so retention gaps are
//!   skipped like the embedded log's.
//! - **end**: our own acks, plus a poll of the stream's last sequence every
//!   200 ms for events other control planes appended.
//! - **retention**: the stream's own limits (`max_age`, `max_bytes`).
//!   Unlike the embedded log, JetStream's limits do not wait for cursors.

use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot, watch};

use async_nats::jetstream::{self, stream};

use super::{check_cursor_name, CursorState, EventLog, LogError, Record};

#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    pub url: String,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub replicas: usize,
    /// Largest record accepted (JetStream's own default limit is 1 MiB).
    pub max_record: usize,
}

impl JetStreamOptions {
    pub fn new(url: impl Into<String>) -> Self {
        JetStreamOptions {
            url: url.into(),
            max_age: Some(Duration::from_secs(24 * 3600)),
            max_bytes: Some(1 << 30),
            replicas: 1,
            max_record: 1 << 20,
        }
    }
}

struct Append {
    payloads: Vec<Bytes>,
    done: oneshot::Sender<Result<Range<u64>, LogError>>,
}

struct Shared {
    stream: stream::Stream,
    stream_name: String,
    cursors_name: String,
    subject: String,
    cursors: stream::Stream,
    cursor_prefix: String,
    js: jetstream::Context,
    end_tx: watch::Sender<u64>,
    max_record: usize,
}

/// A broker's log in JetStream.
#[derive(Clone)]
pub struct JetStreamLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Append>,
}

fn backend(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Backend(format!("{what}: {e}"))
}

impl JetStreamLog {
    /// Connects and creates (or reuses) the broker's stream and bucket.
    pub async fn open(
        opts: &JetStreamOptions,
        namespace: &str,
        broker: &str,
    ) -> Result<JetStreamLog, LogError> {
        let client = async_nats::connect(opts.url.as_str())
            .await
            .map_err(|e| backend(&format!("connecting to NATS at {}", opts.url), e))?;
        let js = jetstream::new(client);
        let name = format!("FERRY_{namespace}_{broker}");
        let subject = format!("ferry.{namespace}.{broker}");
        let stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: opts.replicas.max(1),
                max_age: opts.max_age.unwrap_or_default(),
                max_bytes: opts
                    .max_bytes
                    .and_then(|b| i64::try_from(b).ok())
                    .unwrap_or(-1),
                ..Default::default()
            })
            .await
            .map_err(|e| backend(&format!("creating stream {name}"), e))?;
        let cname = format!("FERRY_CURSORS_{namespace}_{broker}");
        let cursor_prefix = format!("ferry-cursors.{namespace}.{broker}");
        let cursors = js
            .get_or_create_stream(stream::Config {
                name: cname.clone(),
                subjects: vec![format!("{cursor_prefix}.>")],
                storage: stream::StorageType::File,
                num_replicas: opts.replicas.max(1),
                max_messages_per_subject: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| backend(&format!("creating stream {cname}"), e))?;
        let mut s = stream.clone();
        let last = s
            .info()
            .await
            .map_err(|e| backend("reading the stream info", e))?
            .state
            .last_sequence;
        let (end_tx, _) = watch::channel(last);
        let shared = Arc::new(Shared {
            stream,
            stream_name: name,
            cursors_name: cname,
            subject,
            cursors,
            cursor_prefix,
            js: js.clone(),
            end_tx,
            max_record: opts.max_record,
        });
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(writer(js, Arc::downgrade(&shared), rx));
        tokio::spawn(poll_end(Arc::downgrade(&shared)));
        Ok(JetStreamLog { shared, tx })
    }
}

/// Publishes everything queued, then awaits the acks: the JetStream form
/// of group commit.
async fn writer(js: jetstream::Context, shared: Weak<Shared>, mut rx: mpsc::Receiver<Append>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let Some(sh) = shared.upgrade() else { return };
        for a in batch.drain(..) {
            let mut acks = Vec::with_capacity(a.payloads.len());
            let mut failed = None;
            for p in a.payloads {
                match js.publish(sh.subject.clone(), p).await {
                    Ok(f) => acks.push(f),
                    Err(e) => {
                        failed = Some(backend("publishing", e));
                        break;
                    }
                }
            }
            // Awaited in a task so the next caller's publishes go out
            // while these acks are on their way.
            let sh2 = sh.clone();
            tokio::spawn(async move {
                let mut first: Option<u64> = None;
                let mut last = 0;
                let mut err = failed;
                for f in acks {
                    match f.await {
                        Ok(ack) => {
                            first.get_or_insert(ack.sequence);
                            last = ack.sequence;
                        }
                        Err(e) => {
                            err.get_or_insert(backend("publish ack", e));
                        }
                    }
                }
                if last > 0 {
                    sh2.end_tx.send_if_modified(|e| {
                        let new = (*e).max(last);
                        std::mem::replace(e, new) != new
                    });
                }
                let r = match (err, first) {
                    (Some(e), _) => Err(e),
                    (None, Some(f)) => Ok(f - 1..last),
                    (None, None) => Ok(0..0),
                };
                let _ = a.done.send(r);
            });
        }
    }
}

async fn poll_end(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(sh) = shared.upgrade() else { return };
        let mut s = sh.stream.clone();
        if let Ok(info) = s.info().await {
            let last = info.state.last_sequence;
            sh.end_tx.send_if_modified(|e| {
                let new = (*e).max(last);
                std::mem::replace(e, new) != new
            });
        }
    }
}

impl JetStreamLog {
    /// Publishes a cursor message and waits for its ack.
    async fn put_cursor(&self, name: &str, payload: Bytes) -> Result<(), LogError> {
        let subject = format!("{}.{name}", self.shared.cursor_prefix);
        self.shared
            .js
            .publish(subject, payload)
            .await
            .map_err(|e| backend("saving a cursor", e))?
            .await
            .map(|_| ())
            .map_err(|e| backend("saving a cursor", e))
    }
}

impl EventLog for JetStreamLog {
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Range<u64>, LogError>> {
        async move {
            if let Some(p) = payloads.iter().find(|p| p.len() > self.shared.max_record) {
                return Err(LogError::TooLarge {
                    size: p.len(),
                    max: self.shared.max_record,
                });
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
            let end = self.end();
            let mut out = Vec::new();
            let mut seq = from + 1;
            while out.len() < max.max(1) && seq <= end {
                match self
                    .shared
                    .stream
                    .get_first_raw_message_by_subject(&self.shared.subject, seq)
                    .await
                {
                    Ok(m) => {
                        seq = m.sequence + 1;
                        out.push(Record {
                            offset: m.sequence - 1,
                            payload: m.payload,
                        });
                    }
                    // Nothing at or after `seq` (yet): what we have is all.
                    Err(_) if !out.is_empty() => break,
                    Err(e) => {
                        if seq > end {
                            break;
                        }
                        return Err(backend("reading the stream", e));
                    }
                }
            }
            Ok(out)
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
            let subject = format!("{}.{name}", self.shared.cursor_prefix);
            match self
                .shared
                .cursors
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(m) if m.payload.is_empty() => Ok(None),
                Ok(m) => serde_json::from_slice(&m.payload)
                    .map(Some)
                    .map_err(|e| LogError::BadCursor {
                        path: subject.clone(),
                        reason: e.to_string(),
                    }),
                Err(e)
                    if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(backend("reading a cursor", e)),
            }
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
            let bytes = serde_json::to_vec(state).map_err(|e| backend("encoding a cursor", e))?;
            self.put_cursor(name, Bytes::from(bytes)).await
        }
        .boxed()
    }

    fn remove_cursor(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let name = name.to_owned();
        async move {
            check_cursor_name(&name)?;
            self.put_cursor(&name, Bytes::new()).await
        }
        .boxed()
    }

    fn delete_all(&self) -> BoxFuture<'_, Result<(), LogError>> {
        async move {
            for name in [&self.shared.stream_name, &self.shared.cursors_name] {
                self.shared
                    .js
                    .delete_stream(name)
                    .await
                    .map_err(|e| backend(&format!("deleting stream {name}"), e))?;
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::eventing::log::testutil::TempDir;

    /// `nats-server -js` on a free loopback port, killed on drop. Fails with
    /// the install command when the binary is missing (it never skips).
    pub(crate) struct NatsServer {
        child: Child,
        pub url: String,
        _dir: TempDir,
    }

    impl NatsServer {
        pub(crate) fn start() -> NatsServer {
            let dir = TempDir::new("nats");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            let child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run nats-server ({e}); install it: apt-get install nats-server")
                });
            for _ in 0..250 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            NatsServer {
                child,
                url: format!("nats://127.0.0.1:{port}"),
                _dir: dir,
            }
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_read_cursors_and_reopen() {
        let nats = NatsServer::start();
        let opts = JetStreamOptions::new(nats.url.clone());
        let log = JetStreamLog::open(&opts, "ns", "b").await.expect("open");
        assert_eq!(log.end(), 0);
        let mut w = log.watch_end();
        let r = log
            .append(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .await
            .expect("append");
        assert_eq!(r, 0..2);
        w.changed().await.expect("end moves");
        assert_eq!(log.end(), 2);
        // Concurrent producers: every offset exactly once.
        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20u8 {
                    log.append(vec![Bytes::from(vec![t, i])])
                        .await
                        .expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(log.end(), 162);
        let recs = log.read(0, 500).await.expect("read");
        assert_eq!(recs.len(), 162);
        assert_eq!(recs[1].payload.as_ref(), b"b");
        assert!(recs.iter().enumerate().all(|(i, r)| r.offset == i as u64));
        assert_eq!(log.read(160, 10).await.expect("tail").len(), 2);

        assert_eq!(log.load_cursor("ns.t").await.expect("load"), None);
        let c = CursorState {
            committed: 7,
            parked: vec![3],
        };
        log.store_cursor("ns.t", &c).await.expect("store");
        assert_eq!(
            log.load_cursor("ns.t").await.expect("load"),
            Some(c.clone())
        );

        // A second "control plane" on the same stream sees everything.
        let other = JetStreamLog::open(&opts, "ns", "b").await.expect("reopen");
        assert_eq!(other.end(), 162);
        assert_eq!(other.load_cursor("ns.t").await.expect("load"), Some(c));
        other
            .append(vec![Bytes::from_static(b"z")])
            .await
            .expect("append");
        // The first one learns about it from the poll.
        let mut w = log.watch_end();
        tokio::time::timeout(Duration::from_secs(3), w.wait_for(|e| *e == 163))
            .await
            .expect("poll sees the other append")
            .expect("watch");
        other.remove_cursor("ns.t").await.expect("remove");
        assert_eq!(log.load_cursor("ns.t").await.expect("load"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_all_removes_the_streams() {
        let nats = NatsServer::start();
        let opts = JetStreamOptions::new(nats.url.clone());
        let log = JetStreamLog::open(&opts, "ns", "gone").await.expect("open");
        log.append(vec![Bytes::from_static(b"a")])
            .await
            .expect("append");
        log.store_cursor("ns.t", &CursorState::default())
            .await
            .expect("store");
        log.delete_all().await.expect("delete");
        // A broker of the same name starts from nothing.
        let again = JetStreamLog::open(&opts, "ns", "gone")
            .await
            .expect("reopen");
        assert_eq!(again.end(), 0);
        assert_eq!(again.load_cursor("ns.t").await.expect("load"), None);
    }
}
