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
    watcher: Option<LogWatcher>,
}

impl StagingLog {
    /// A log that appends to `path` (created, with parents) and tells `watcher`.
    pub fn create(path: &Path, watcher: Option<LogWatcher>) -> std::io::Result<StagingLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::options().create(true).append(true).open(path)?;
        Ok(StagingLog {
            inner: Arc::new(Mutex::new(Inner {
                file: Some(file),
                watcher,
            })),
        })
    }

    /// A log that only tells `watcher` (used where no workspace exists, e.g. benchmarks).
    pub fn detached(watcher: Option<LogWatcher>) -> StagingLog {
        StagingLog {
            inner: Arc::new(Mutex::new(Inner {
                file: None,
                watcher,
            })),
        }
    }

    /// Appends raw bytes (buildpack stdout/stderr) as they are.
    pub fn write_raw(&self, bytes: &[u8]) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
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
