//! Removing a tenant's tree, however deep, without following links and with a bounded number
//! of open descriptors.

use super::{DIR_FLAGS, Kind, Meta, TenantFsError};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Removes `parent/name` and everything beneath it, whatever its depth, without following
/// links and with a bounded number of open descriptors (the tree may be 100,000 levels
/// deep: a recursive removal, such as `std::fs::remove_dir_all`, would overflow its stack).
/// `parent` is a path the agent trusts.
pub fn remove_tree(parent: &Path, name: &OsStr) -> Result<(), TenantFsError> {
    // Subdirectories taken from one listing before it is read again.
    const BATCH: usize = 64;
    let path = parent.join(name);
    let parent_fd = match rustix::fs::open(parent, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(TenantFsError::io(parent.to_path_buf(), e)),
    };
    let mut current = match rustix::fs::openat(
        &parent_fd,
        name,
        DIR_FLAGS | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        // A file or a link where a directory was expected: remove just that.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return match rustix::fs::unlinkat(&parent_fd, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(TenantFsError::io(path, e)),
            };
        }
        Err(e) => return Err(TenantFsError::io(path, e)),
    };
    struct Level {
        /// This directory's name in its parent, and the parent's identity (checked when
        /// climbing back through `..`, so a moved directory cannot lead the removal astray).
        name: OsString,
        parent_id: (u64, u64),
        /// Subdirectories still to remove here.
        pending: Vec<OsString>,
    }
    let identity = |fd: &OwnedFd| -> Result<(u64, u64), TenantFsError> {
        let stat = rustix::fs::fstat(fd).map_err(|e| TenantFsError::io(path.clone(), e))?;
        let meta = Meta::of(&stat);
        Ok((meta.dev, meta.ino))
    };
    let mut levels: Vec<Level> = Vec::new();
    let mut pending = remove_files_and_list_dirs(&current, BATCH, &path)?;
    loop {
        if let Some(sub) = pending.pop() {
            match rustix::fs::openat(&current, &sub, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(child) => {
                    levels.push(Level {
                        name: sub,
                        parent_id: identity(&current)?,
                        pending: std::mem::take(&mut pending),
                    });
                    current = child;
                    pending = remove_files_and_list_dirs(&current, BATCH, &path)?;
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let _ = rustix::fs::unlinkat(&current, &sub, AtFlags::empty());
                }
                Err(e) => return Err(TenantFsError::io(path, e)),
            }
            continue;
        }
        // Nothing pending: look again (a batch may have been partial), then climb.
        let more = remove_files_and_list_dirs(&current, BATCH, &path)?;
        if !more.is_empty() {
            pending = more;
            continue;
        }
        let Some(level) = levels.pop() else { break };
        let up = rustix::fs::openat(&current, "..", DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| TenantFsError::io(path.clone(), e))?;
        if identity(&up)? != level.parent_id {
            return Err(TenantFsError::Escapes { path });
        }
        match rustix::fs::unlinkat(&up, &level.name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(TenantFsError::io(path, e)),
        }
        current = up;
        pending = level.pending;
    }
    drop(current);
    match rustix::fs::unlinkat(&parent_fd, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(TenantFsError::io(path, e)),
    }
}

/// [`remove_tree`] of `dir` on the blocking pool, for async callers; failures are logged
/// (a leftover directory is the operator's to see, not a reason to fail the caller).
pub async fn remove_tree_off_thread(dir: PathBuf) {
    let shown = dir.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = dir.file_name().map(OsStr::to_os_string).unwrap_or_default();
        remove_tree(&parent, &name)
    })
    .await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("removing {}: {e}", shown.display()),
        Err(e) => tracing::warn!("removing {}: {e}", shown.display()),
    }
}

/// Unlinks every non-directory in `dir` and returns up to `batch` subdirectory names.
fn remove_files_and_list_dirs(
    dir: &OwnedFd,
    batch: usize,
    path: &Path,
) -> Result<Vec<OsString>, TenantFsError> {
    let mut dirs = Vec::new();
    let mut listing =
        rustix::fs::Dir::read_from(dir).map_err(|e| TenantFsError::io(path.to_path_buf(), e))?;
    while let Some(entry) = listing.read() {
        let entry = entry.map_err(|e| TenantFsError::io(path.to_path_buf(), e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| Meta::of(&stat).kind == Kind::Dir),
            _ => false,
        };
        if is_dir {
            if dirs.len() < batch {
                dirs.push(name);
            }
        } else {
            match rustix::fs::unlinkat(dir, &name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(TenantFsError::io(path.join(&name), e)),
            }
        }
    }
    Ok(dirs)
}
