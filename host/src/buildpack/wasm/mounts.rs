//! The directories a phase's guest sees, and how they reach it.
//!
//! WASI's own preopens are opened from a path in every `WasiCtx`, and closed with it: for a
//! detect call that was two path walks and two closes, a fifth of the call. Here a mount is
//! an open directory handle ([`ReadOnlyDir`]) that many phases can share: a staging's app is
//! opened once and mounted in every buildpack's detect. The guest gets the mounts through
//! `wasi:filesystem/preopens`, which the runtime's linker answers from the phase's own list
//! ([`super::preopens::add_to_linker`]), so the `WasiCtx` holds no directory at all: a guest sees exactly the
//! mounts its phase was given, with the permissions each was given, and nothing else.

use parking_lot::Mutex;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime_wasi::filesystem::Dir;
use wasmtime_wasi::{FsPerms, OpenMode};

/// Why a phase's sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
}

/// A directory opened once, mounted read-only in as many phases as want it. Cloning shares
/// the handle: each guest gets a descriptor of its own in its own resource table, and a
/// guest cannot change the handle (directory reads open the directory again, so they do
/// not share a position either).
#[derive(Clone)]
pub struct ReadOnlyDir {
    path: Arc<Path>,
    dir: Dir,
}

impl ReadOnlyDir {
    /// Opens `path` (a directory the host chose; links in it are followed, as a path mount
    /// always did) for read-only mounts. Small phases do their few file calls on the
    /// calling thread instead of hopping to the blocking pool (about 5x faster detect).
    pub fn open(path: &Path) -> Result<ReadOnlyDir, SandboxError> {
        Ok(ReadOnlyDir {
            path: path.into(),
            dir: open_dir(path, FsPerms::ReadOnly, true)?,
        })
    }

    /// The host directory it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it was opened from `path`, spelled the same way (a byte comparison: this is
    /// asked on every detect, and a path's component-wise comparison costs more).
    pub fn opened_from(&self, path: &Path) -> bool {
        self.path.as_os_str() == path.as_os_str()
    }

    pub(super) fn dir(&self) -> &Dir {
        &self.dir
    }
}

impl std::fmt::Debug for ReadOnlyDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReadOnlyDir").field(&self.path).finish()
    }
}

/// Opens a host directory as WASI does for a preopen (`O_PATH | O_DIRECTORY`, close on
/// exec), with `perms` enforced by wasmtime-wasi on everything opened beneath it.
pub(super) fn open_dir(path: &Path, perms: FsPerms, inline_io: bool) -> Result<Dir, SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::PATH;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|source| SandboxError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
    let mode = match perms {
        FsPerms::ReadOnly => OpenMode::READ,
        FsPerms::ReadWrite => OpenMode::READ | OpenMode::WRITE,
    };
    Ok(Dir::new(file, perms, mode, inline_io))
}

/// The app directory of one staging, opened by the first phase that mounts it and shared
/// by the rest (every buildpack's detect). Keyed by path, so a runner handed another
/// staging's context still mounts what that context names.
#[derive(Default)]
pub struct SharedApp {
    opened: Mutex<Option<ReadOnlyDir>>,
}

impl SharedApp {
    pub fn new() -> Arc<SharedApp> {
        Arc::new(SharedApp::default())
    }

    /// The handle for `app`, opened now if this is the first phase to ask for it.
    pub fn get(&self, app: &Path) -> Result<ReadOnlyDir, SandboxError> {
        let mut opened = self.opened.lock();
        match opened.as_ref() {
            Some(dir) if dir.opened_from(app) => Ok(dir.clone()),
            _ => {
                let dir = ReadOnlyDir::open(app)?;
                *opened = Some(dir.clone());
                Ok(dir)
            }
        }
    }
}
