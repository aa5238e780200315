//! How much disk an instance holds, for its disk limit and `stats`.
//!
//! Summing the sizes of the paths in its home misses what an app can hide: a file deleted
//! while still open keeps its blocks until closed (`dd of=f; rm f` with the descriptor kept),
//! and a sparse file's size is not what it uses. So usage is the blocks of every file in the
//! home (hard links once), plus the blocks of files that the container's processes hold open
//! but that no longer have a name on the home's filesystem (found through
//! `/proc/<pid>/fd`). The walk is capped in entries: an app past the cap has exceeded its
//! file limit, which is a limit of its own (CF's inode limit).

use crate::tenant_fs::{TenantDir, TenantFsError, WalkLimits};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// An instance's use of its disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskUsage {
    /// Bytes of blocks held, named or not.
    pub bytes: u64,
    /// Files, directories and links in the home.
    pub entries: u64,
}

/// Why usage could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("more than {limit} files and directories")]
    TooManyFiles { limit: u64 },
    #[error("directories nested deeper than {limit}")]
    TooDeep { limit: usize },
    #[error(transparent)]
    Tree(#[from] TenantFsError),
}

/// Measures `home`'s usage, with the deleted-but-open files of container `container_id`.
pub fn usage(
    home: &Path,
    container_id: &str,
    max_files: u64,
    max_depth: usize,
) -> Result<DiskUsage, DiskError> {
    let dir = TenantDir::open(home)?;
    // Too deep to measure is a limit of its own: an app could otherwise hide any amount of
    // data below the depth a walk gives up at.
    let limits = WalkLimits {
        max_entries: max_files,
        max_depth,
        deadline: None,
    };
    let (bytes, entries) = match dir.usage(limits) {
        Ok(measured) => measured,
        Err(TenantFsError::TooManyEntries { limit, .. }) => {
            return Err(DiskError::TooManyFiles { limit });
        }
        Err(TenantFsError::TooDeep { limit, .. }) => return Err(DiskError::TooDeep { limit }),
        Err(e) => return Err(e.into()),
    };
    let home_dev = std::fs::metadata(home).map(|m| m.dev()).unwrap_or(0);
    Ok(DiskUsage {
        bytes: bytes.saturating_add(deleted_open_bytes(container_id, home_dev)),
        entries,
    })
}

/// Blocks held by files on device `dev` that the container's processes keep open after
/// their last name was removed.
fn deleted_open_bytes(container_id: &str, dev: u64) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for pid in container_pids(container_id) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            // `stat` through the descriptor's magic link: metadata of the open file itself,
            // nothing is opened or read.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if meta.is_file() && meta.nlink() == 0 && meta.dev() == dev && seen.insert(meta.ino()) {
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    total
}

/// The processes in the container's cgroup (cgroup v1's pids or memory hierarchy, or v2).
fn container_pids(container_id: &str) -> Vec<u32> {
    let candidates = [
        format!("/sys/fs/cgroup/pids/dea/{container_id}/cgroup.procs"),
        format!("/sys/fs/cgroup/memory/dea/{container_id}/cgroup.procs"),
        format!("/sys/fs/cgroup/dea/{container_id}/cgroup.procs"),
    ];
    candidates
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}
