//! Iterative walks over a tenant's tree, and what is built on them: handing a tree to a user,
//! copying it, measuring its disk use. At most one descriptor per level is open, and every
//! walk is capped in depth, entries and time.

use super::{
    DIR_FLAGS, Kind, Links, Meta, TenantDir, TenantFsError, WalkLimits, map_open_error,
    regular_file_meta, set_mode,
};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a walk visitor says about a directory it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Descend,
    Skip,
}

/// One entry met by [`TenantDir::walk`].
pub struct Entry<'a> {
    /// Path relative to the walk's root.
    pub rel: &'a Path,
    pub name: &'a OsStr,
    /// 1 for the root's children.
    pub depth: usize,
    pub meta: Meta,
    parent: BorrowedFd<'a>,
    root: &'a TenantDir,
}

impl Entry<'_> {
    /// Opens this entry for reading: regular files only, no link followed.
    pub fn open_file(&self) -> Result<File, TenantFsError> {
        self.open_file_meta().map(|(file, _)| file)
    }

    /// [`Entry::open_file`], with what the open descriptor's `fstat` says about the file:
    /// the one `fstat` the open needs anyway, and the file as it is now rather than as the
    /// walk listed it.
    pub fn open_file_meta(&self) -> Result<(File, Meta), TenantFsError> {
        let path = self.root.host_path(self.rel);
        let fd = rustix::fs::openat(
            self.parent,
            self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| map_open_error(path.clone(), e, Links::Refuse))?;
        regular_file_meta(fd, &path)
    }

    /// The target of this symbolic link, as stored.
    pub fn read_link(&self) -> Result<PathBuf, TenantFsError> {
        let target = rustix::fs::readlinkat(self.parent, self.name, Vec::new())
            .map_err(|e| TenantFsError::io(self.root.host_path(self.rel), e))?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// Sets owner and group without following a link.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), TenantFsError> {
        rustix::fs::chownat(
            self.parent,
            self.name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| TenantFsError::io(self.root.host_path(self.rel), e))
    }
}

impl TenantDir {
    /// Visits every entry beneath this directory, depth first, parents before children
    /// (children in name order when `sorted`), without following any link. Iterative: at
    /// most `max_depth` directories are open at once.
    pub fn walk<E: From<TenantFsError>>(
        &self,
        limits: WalkLimits,
        sorted: bool,
        mut visit: impl FnMut(&Entry<'_>) -> Result<Flow, E>,
    ) -> Result<(), E> {
        struct Frame {
            fd: OwnedFd,
            rel: PathBuf,
            names: std::vec::IntoIter<OsString>,
        }
        let mut seen = 0u64;
        let root_fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| TenantFsError::io(self.path.clone(), e))?;
        let names = list(&root_fd, &self.path, sorted, &mut seen, limits.max_entries)?;
        let mut stack = vec![Frame {
            fd: root_fd,
            rel: PathBuf::new(),
            names: names.into_iter(),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let rel = frame.rel.join(&name);
            if limits.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(TenantFsError::Deadline {
                    path: self.host_path(&rel),
                }
                .into());
            }
            let stat = match rustix::fs::statat(&frame.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Gone since it was listed: nothing to visit.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(TenantFsError::io(self.host_path(&rel), e).into()),
            };
            let meta = Meta::of(&stat);
            let depth = stack.len();
            let frame = stack.last().map(|f| f.fd.as_fd());
            let Some(parent) = frame else { break };
            let entry = Entry {
                rel: &rel,
                name: &name,
                depth,
                meta,
                parent,
                root: self,
            };
            let flow = visit(&entry)?;
            if meta.kind != Kind::Dir || flow == Flow::Skip {
                continue;
            }
            if depth >= limits.max_depth {
                return Err(TenantFsError::TooDeep {
                    path: self.host_path(&rel),
                    limit: limits.max_depth,
                }
                .into());
            }
            let child =
                rustix::fs::openat(parent, &name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| map_open_error(self.host_path(&rel), e, Links::Refuse))?;
            let names = list(
                &child,
                &self.host_path(&rel),
                sorted,
                &mut seen,
                limits.max_entries,
            )?;
            stack.push(Frame {
                fd: child,
                rel,
                names: names.into_iter(),
            });
        }
        Ok(())
    }

    /// Gives the whole tree (this directory included) to `uid:gid`, links not followed.
    pub fn chown_tree(&self, uid: u32, gid: u32, limits: WalkLimits) -> Result<(), TenantFsError> {
        rustix::fs::fchown(
            &self.fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| TenantFsError::io(self.path.clone(), e))?;
        self.walk(limits, false, |entry| {
            entry.chown(uid, gid)?;
            Ok::<_, TenantFsError>(Flow::Descend)
        })
    }

    /// Copies this tree's directories, regular files and links into `dest` (an empty
    /// directory the agent made); FIFOs, sockets and devices are skipped. Files are copied
    /// through descriptors, links re-created as they are (never followed).
    pub fn copy_tree_into(
        &self,
        dest: &TenantDir,
        limits: WalkLimits,
        max_bytes: u64,
    ) -> Result<u64, TenantFsError> {
        // dests[d] is the destination directory of entries at depth d + 1.
        let mut dests: Vec<TenantDir> = vec![dest.open_dir(Path::new("."), Links::Refuse)?];
        let mut copied = 0u64;
        self.walk(limits, false, |entry| {
            dests.truncate(entry.depth);
            let Some(target) = dests.last() else {
                return Ok(Flow::Skip);
            };
            let name = entry.name;
            match entry.meta.kind {
                Kind::Dir => {
                    let made = target.ensure_dir(Path::new(name))?;
                    set_mode(made.as_fd(), entry.meta.mode | 0o700, &made.path)?;
                    dests.push(made);
                    Ok(Flow::Descend)
                }
                Kind::File => {
                    let mut from = entry.open_file()?;
                    let name = name.to_str().ok_or_else(|| TenantFsError::WrongKind {
                        path: entry.root.host_path(entry.rel),
                        kind: "file name that is not UTF-8",
                        expected: "UTF-8 name",
                    })?;
                    let mut to = target.create_file(name, 0o600)?;
                    let remaining = max_bytes.saturating_sub(copied);
                    let n = io::copy(&mut (&mut from).take(remaining + 1), &mut to).map_err(
                        |source| TenantFsError::Io {
                            path: entry.root.host_path(entry.rel),
                            source,
                        },
                    )?;
                    copied += n;
                    if n > remaining {
                        return Err(TenantFsError::TooLarge {
                            path: self.path.clone(),
                            limit: max_bytes,
                        });
                    }
                    set_mode(to.as_fd(), entry.meta.mode, &target.path)?;
                    Ok(Flow::Descend)
                }
                Kind::Symlink => {
                    let link = entry.read_link()?;
                    rustix::fs::symlinkat(&link, target.as_fd(), name)
                        .map_err(|e| TenantFsError::io(target.host_path(Path::new(name)), e))?;
                    Ok(Flow::Descend)
                }
                Kind::Special(_) => Ok(Flow::Descend),
            }
        })?;
        Ok(copied)
    }

    /// Disk held by the tree: blocks of regular files (hard links once), directories and
    /// links, and how many entries there are.
    pub fn usage(&self, limits: WalkLimits) -> Result<(u64, u64), TenantFsError> {
        let mut bytes = 0u64;
        let mut entries = 0u64;
        let mut linked = std::collections::HashSet::new();
        self.walk(limits, false, |entry| {
            entries += 1;
            let counted = entry.meta.nlink <= 1 || linked.insert((entry.meta.dev, entry.meta.ino));
            if counted {
                bytes = bytes.saturating_add(entry.meta.disk_bytes);
            }
            Ok::<_, TenantFsError>(Flow::Descend)
        })?;
        Ok((bytes, entries))
    }
}

/// The names in a directory (no `.`/`..`), counting them against the walk's entry cap.
fn list(
    fd: &OwnedFd,
    path: &Path,
    sorted: bool,
    seen: &mut u64,
    max_entries: u64,
) -> Result<Vec<OsString>, TenantFsError> {
    let mut names = Vec::new();
    let mut listing =
        rustix::fs::Dir::read_from(fd).map_err(|e| TenantFsError::io(path.to_path_buf(), e))?;
    while let Some(entry) = listing.read() {
        let entry = entry.map_err(|e| TenantFsError::io(path.to_path_buf(), e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        *seen += 1;
        if *seen > max_entries {
            return Err(TenantFsError::TooManyEntries {
                path: path.to_path_buf(),
                limit: max_entries,
            });
        }
        names.push(OsStr::from_bytes(name).to_os_string());
    }
    if sorted {
        names.sort();
    }
    Ok(names)
}
