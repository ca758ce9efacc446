//! Cursor files of the embedded log: `cursors/<name>.json`, replaced
//! atomically (write a temp file, fsync it, rename over the old one), so a
//! crash leaves either the old or the new position, never a torn one.
//!
//! The directory is fsynced only when a cursor is first created. After
//! that it is deliberately not fsynced after the rename (dispatchers
//! save every 100 ms, and those syncs would compete with the log's group
//! commit). If a crash loses the rename, the previous file — complete,
//! since it was fsynced before its own rename — comes back: the trigger
//! redelivers a little more (still at least once), and anything retention
//! deleted on the strength of the newer position had already been done.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{check_cursor_name, CursorState, LogError};

pub struct CursorStore {
    dir: PathBuf,
}

impl CursorStore {
    pub fn open(dir: PathBuf) -> Result<Self, LogError> {
        fs::create_dir_all(&dir).map_err(|e| LogError::io(dir.display().to_string(), e))?;
        // A crash between writing and renaming leaves a temp file behind;
        // it never held the current state, so it is simply removed.
        if let Ok(rd) = fs::read_dir(&dir) {
            for entry in rd.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(CursorStore { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn load(&self, name: &str) -> Result<Option<CursorState>, LogError> {
        check_cursor_name(name)?;
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| LogError::BadCursor {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io(path.display().to_string(), e)),
        }
    }

    pub fn store(&self, name: &str, state: &CursorState) -> Result<(), LogError> {
        check_cursor_name(name)?;
        let path = self.path(name);
        let tmp = self.dir.join(format!("{name}.json.tmp"));
        let bytes = serde_json::to_vec(state).map_err(|e| LogError::BadCursor {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let io = |e| LogError::io(tmp.display().to_string(), e);
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        drop(f);
        let first = !path.exists();
        fs::rename(&tmp, &path).map_err(|e| LogError::io(path.display().to_string(), e))?;
        if first {
            // A new cursor has no older file to fall back on: losing its
            // name would restart the trigger at the end of the log and skip
            // the events in between.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<(), LogError> {
        check_cursor_name(name)?;
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io(path.display().to_string(), e)),
        }
    }

    /// Every saved cursor (name, state); unreadable files are reported.
    pub fn all(&self) -> Result<Vec<(String, CursorState)>, LogError> {
        let rd =
            fs::read_dir(&self.dir).map_err(|e| LogError::io(self.dir.display().to_string(), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".json") {
                if let Some(state) = self.load(name)? {
                    out.push((name.to_owned(), state));
                }
            }
        }
        Ok(out)
    }
}

/// Makes a create, rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;

    #[test]
    fn store_load_replace_remove() {
        let d = TempDir::new("cursor");
        let s = CursorStore::open(d.0.join("cursors")).expect("open");
        assert_eq!(s.load("t1").expect("load"), None);
        let a = CursorState {
            committed: 5,
            parked: vec![2],
        };
        s.store("t1", &a).expect("store");
        assert_eq!(s.load("t1").expect("load"), Some(a));
        let b = CursorState {
            committed: 9,
            parked: vec![],
        };
        s.store("t1", &b).expect("store");
        assert_eq!(s.load("t1").expect("load"), Some(b.clone()));
        assert_eq!(s.all().expect("all"), vec![("t1".to_owned(), b)]);
        s.remove("t1").expect("remove");
        assert_eq!(s.load("t1").expect("load"), None);
    }

    #[test]
    fn leftover_temp_files_are_ignored() {
        let d = TempDir::new("cursor-tmp");
        let dir = d.0.join("cursors");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("t.json.tmp"), b"{\"comm").expect("write");
        let s = CursorStore::open(dir.clone()).expect("open");
        assert_eq!(s.load("t").expect("load"), None);
        assert!(!dir.join("t.json.tmp").exists());
    }
}
