//! Crash safety: every acknowledged commit survives a drop without any
//! shutdown; a torn log tail and a half-written snapshot are ignored.

use std::io::Write as _;

use serde_json::json;

use super::*;
use crate::store::testing::TestDir;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Service, "default", name)
}

fn put(name: &str, v: i64, expect: Precondition) -> Op {
    Op::Put {
        key: key(name),
        body: json!({"v": v}),
        expect,
    }
}

fn open(dir: &TestDir) -> FileStore {
    FileStore::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"))
}

fn body(s: &FileStore, name: &str) -> Option<serde_json::Value> {
    s.get_now(&key(name)).map(|o| o.body)
}

#[tokio::test]
async fn commits_survive_a_drop_without_close() {
    let dir = TestDir::new("store");
    {
        let s = open(&dir);
        s.commit(vec![
            put("a", 1, Precondition::Absent),
            put("b", 1, Precondition::Absent),
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        s.commit(vec![put("a", 2, Precondition::Version(1))])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit(vec![Op::Delete {
            key: key("b"),
            expect: Precondition::Any,
        }])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        // Dropped here: no flush, no close, as after a kill -9 (every
        // commit was fsynced before it returned).
    }
    let s = open(&dir);
    assert_eq!(body(&s, "a"), Some(json!({"v": 2})));
    assert_eq!(body(&s, "b"), None);
    assert_eq!(*s.version().borrow(), 3);
    assert_eq!(s.get_now(&key("a")).map(|o| o.resource_version), Some(2));
    // Sequence numbers continue where they stopped.
    let seq = s
        .commit(vec![put("c", 1, Precondition::Absent)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seq, 4);
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_and_later_commits_follow_the_last_good_record() {
    let dir = TestDir::new("store");
    {
        let s = open(&dir);
        s.commit(vec![put("a", 1, Precondition::Absent)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let wal = dir.path().join("store").join(WAL);
    let good_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    // A crash mid-append: a header promising 500 bytes, then 10 of them.
    {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&wal)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = f.write_all(&500u32.to_le_bytes());
        let _ = f.write_all(&[7u8; 8]);
        let _ = f.write_all(b"{\"seq\":2,\"");
    }
    {
        let s = open(&dir);
        assert_eq!(body(&s, "a"), Some(json!({"v": 1})));
        assert_eq!(
            std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
            good_len,
            "the torn tail is cut"
        );
        s.commit(vec![put("b", 1, Precondition::Absent)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let s = open(&dir);
    assert_eq!(body(&s, "a"), Some(json!({"v": 1})));
    assert_eq!(body(&s, "b"), Some(json!({"v": 1})));
}

#[tokio::test]
async fn a_record_with_a_bad_checksum_ends_the_replay() {
    let dir = TestDir::new("store");
    {
        let s = open(&dir);
        for i in 0..3 {
            s.commit(vec![put(&format!("o{i}"), i, Precondition::Absent)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let wal = dir.path().join("store").join(WAL);
    let mut bytes = std::fs::read(&wal).unwrap_or_default();
    let last = bytes.len() - 2;
    bytes[last] ^= 0xff;
    let _ = std::fs::write(&wal, &bytes);
    let s = open(&dir);
    assert!(body(&s, "o1").is_some());
    assert!(
        body(&s, "o2").is_none(),
        "the damaged last record is dropped"
    );
}

#[tokio::test]
async fn a_torn_temp_snapshot_is_ignored() {
    let dir = TestDir::new("store");
    {
        let s = FileStore::open_with(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
        // Threshold 1 byte: every commit writes a snapshot and empties the log.
        s.commit(vec![put("a", 1, Precondition::Absent)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit(vec![put("b", 1, Precondition::Absent)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let store_dir = dir.path().join("store");
    assert!(store_dir.join(SNAPSHOT).exists());
    assert_eq!(
        std::fs::metadata(store_dir.join(WAL)).map(|m| m.len()).ok(),
        Some(0)
    );
    // A crash while writing the next snapshot leaves half a temp file.
    let _ = std::fs::write(
        store_dir.join(SNAPSHOT_TMP),
        b"{\"format\":1,\"seq\":9,\"obj",
    );
    let s = open(&dir);
    assert_eq!(body(&s, "a"), Some(json!({"v": 1})));
    assert_eq!(body(&s, "b"), Some(json!({"v": 1})));
    assert!(!store_dir.join(SNAPSHOT_TMP).exists(), "removed on open");
    s.commit(vec![put("c", 1, Precondition::Absent)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(s);
    let s = open(&dir);
    assert_eq!(s.list_now(Kind::Service, None).len(), 3);
}

#[tokio::test]
async fn records_already_in_the_snapshot_are_not_replayed_twice() {
    // A crash between the snapshot rename and the log truncation leaves
    // both: replay must skip what the snapshot holds.
    let dir = TestDir::new("store");
    {
        let s = open(&dir);
        s.commit(vec![put("a", 1, Precondition::Absent)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.commit(vec![Op::Delete {
            key: key("a"),
            expect: Precondition::Any,
        }])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let store_dir = dir.path().join("store");
    let snap = Snapshot {
        format: 1,
        seq: 2,
        objects: vec![],
    };
    let _ = std::fs::write(
        store_dir.join(SNAPSHOT),
        serde_json::to_vec(&snap).unwrap_or_default(),
    );
    let s = open(&dir);
    assert_eq!(body(&s, "a"), None);
    assert_eq!(*s.version().borrow(), 2);
}

#[tokio::test]
async fn a_corrupt_snapshot_refuses_to_open() {
    let dir = TestDir::new("store");
    let store_dir = dir.path().join("store");
    let _ = std::fs::create_dir_all(&store_dir);
    let _ = std::fs::write(store_dir.join(SNAPSHOT), b"not json");
    assert!(matches!(
        FileStore::open(dir.path()),
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn preconditions_make_commits_all_or_nothing() {
    let dir = TestDir::new("store");
    let s = open(&dir);
    s.commit(vec![put("a", 1, Precondition::Absent)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = s
        .commit(vec![
            put("b", 1, Precondition::Absent),
            put("a", 2, Precondition::Absent),
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
    assert_eq!(body(&s, "b"), None, "nothing of a failed commit is applied");
    let r = s.commit(vec![put("a", 3, Precondition::Version(7))]).await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })));
    let r = s
        .commit(vec![Op::Delete {
            key: key("zz"),
            expect: Precondition::Version(1),
        }])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })));
}

#[tokio::test]
async fn subscribers_see_every_change_in_order() {
    let dir = TestDir::new("store");
    let s = open(&dir);
    let mut rx = s.subscribe();
    let mut version = s.version();
    s.commit(vec![
        put("a", 1, Precondition::Absent),
        put("b", 1, Precondition::Absent),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    s.commit(vec![Op::Delete {
        key: key("a"),
        expect: Precondition::Any,
    }])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        match rx.recv().await {
            Ok(c) => seen.push((c.seq, c.key.name, c.object.is_some())),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (1, "a".to_string(), true),
            (1, "b".to_string(), true),
            (2, "a".to_string(), false)
        ]
    );
    assert!(version.has_changed().unwrap_or(false));
    assert_eq!(*version.borrow_and_update(), 2);
}

#[tokio::test]
async fn the_memory_store_behaves_alike_without_a_directory() {
    let s = FileStore::memory();
    assert!(s.dir().is_none());
    s.commit(vec![put("a", 1, Precondition::Absent)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body(&s, "a"), Some(json!({"v": 1})));
    let r = s.commit(vec![put("a", 2, Precondition::Absent)]).await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })));
}

#[tokio::test]
async fn a_live_owner_keeps_the_directory_locked() {
    let dir = TestDir::new("store");
    let first = open(&dir);
    let second = FileStore::open(dir.path());
    assert!(second.is_err(), "two stores on one directory");
    drop(first);
    // A lock left by a process that is gone is taken over.
    let _ = std::fs::write(dir.path().join("store").join(LOCK), "999999999");
    let _again = open(&dir);
}
