//! The staging log: every line a staging produces, in order, written to
//! `logs/staging_task.log` in the workspace (it ships in the droplet) and passed live to an
//! optional watcher (the CLI prints it; the NATS agent will stream it).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Called with each chunk of log output as it is written.
pub type LogWatcher = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A shared, append-only staging log. Cheap to clone.
#[derive(Clone)]
pub struct StagingLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    file: Option<File>,
    /// What a held log keeps until [`StagingLog::release_into`].
    held: Option<Vec<u8>>,
    watcher: Option<LogWatcher>,
    /// Bytes written so far and the most that will be.
    written: u64,
    limit: u64,
}

impl StagingLog {
    /// A log that appends to `path` (created, with parents) and tells `watcher`.
    pub fn create(path: &Path, watcher: Option<LogWatcher>) -> std::io::Result<StagingLog> {
        Self::create_capped(path, watcher, u64::MAX)
    }

    /// A log that keeps at most `limit` bytes: output past it is dropped after one note, so
    /// a buildpack that prints forever cannot fill the disk (or the controller's stream).
    pub fn create_capped(
        path: &Path,
        watcher: Option<LogWatcher>,
        limit: u64,
    ) -> std::io::Result<StagingLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::options().create(true).append(true).open(path)?;
        Ok(StagingLog {
            inner: Arc::new(Mutex::new(Inner {
                file: Some(file),
                held: None,
                watcher,
                written: 0,
                limit,
            })),
        })
    }

    /// A log that only tells `watcher` (used where no workspace exists, e.g. benchmarks).
    pub fn detached(watcher: Option<LogWatcher>) -> StagingLog {
        StagingLog {
            inner: Arc::new(Mutex::new(Inner {
                file: None,
                held: None,
                watcher,
                written: 0,
                limit: u64::MAX,
            })),
        }
    }

    /// A log that keeps what is written (at most `limit` bytes) until it is released into
    /// another: one candidate's detect output, which goes into the staging's log in the
    /// order of the candidates, whichever detect ran first.
    pub fn held(limit: u64) -> StagingLog {
        StagingLog {
            inner: Arc::new(Mutex::new(Inner {
                file: None,
                held: Some(Vec::new()),
                watcher: None,
                written: 0,
                limit,
            })),
        }
    }

    /// [`Self::release_into`], its lines sorted: for lines whose order is only the order
    /// in which concurrent work finished.
    pub fn release_sorted_into(&self, target: &StagingLog) {
        let kept = match self.inner.lock() {
            Ok(mut inner) => inner.held.as_mut().map(std::mem::take),
            Err(_) => None,
        };
        let Some(kept) = kept.filter(|k| !k.is_empty()) else {
            return;
        };
        let mut lines: Vec<&[u8]> = kept.split_inclusive(|b| *b == b'\n').collect();
        lines.sort();
        target.write_raw(&lines.concat());
    }

    /// Writes what this held log kept into `target`, and forgets it.
    pub fn release_into(&self, target: &StagingLog) {
        let kept = match self.inner.lock() {
            Ok(mut inner) => inner.held.as_mut().map(std::mem::take),
            Err(_) => None,
        };
        if let Some(kept) = kept.filter(|k| !k.is_empty()) {
            target.write_raw(&kept);
        }
    }

    /// Appends raw bytes (buildpack stdout/stderr) as they are.
    pub fn write_raw(&self, bytes: &[u8]) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.written >= inner.limit {
            return;
        }
        let room = inner.limit - inner.written;
        let note;
        let bytes = if bytes.len() as u64 > room {
            let mut kept = bytes[..room as usize].to_vec();
            kept.extend_from_slice(
                format!(
                    "\n !     staging log truncated: more than {} bytes of output\n",
                    inner.limit
                )
                .as_bytes(),
            );
            note = kept;
            inner.written = inner.limit;
            &note[..]
        } else {
            inner.written += bytes.len() as u64;
            bytes
        };
        if let Some(held) = inner.held.as_mut() {
            held.extend_from_slice(bytes);
        }
        if let Some(file) = inner.file.as_mut() {
            // A full disk must not kill the staging; the watcher still sees the output.
            let _ = file.write_all(bytes);
        }
        if let Some(watcher) = &inner.watcher {
            watcher(bytes);
        }
    }

    /// `-----> message`
    pub fn step(&self, message: &str) {
        self.write_raw(format!("-----> {message}\n").as_bytes());
    }

    /// Seven spaces, then the message.
    pub fn detail(&self, message: &str) {
        self.write_raw(format!("       {message}\n").as_bytes());
    }

    /// ` !     message`
    pub fn warning(&self, message: &str) {
        self.write_raw(format!(" !     {message}\n").as_bytes());
    }
}
