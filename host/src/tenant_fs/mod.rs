//! Files in trees a tenant could have written, handled by an agent that runs as root.
//!
//! App sources, staging workspaces, buildpack copies, buildpack caches, instance homes and
//! crash logs are all shaped by someone the agent does not trust. Opening `<tree>/Procfile`
//! with ordinary path resolution lets that someone decide what root reads: a symlink to
//! `/etc/shadow`, a chain of links that climbs out with `..`, a FIFO that blocks the reader
//! forever, `/dev/zero`, a file of a terabyte. So every agent-side access to such a tree goes
//! through a [`TenantDir`]: a descriptor for the tree's root (a directory the agent made or
//! chose), and paths resolved *by the kernel* beneath it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` — plus `RESOLVE_NO_SYMLINKS` where no link is expected. Files are
//! opened `O_NONBLOCK` (a FIFO cannot block the open) and checked to be regular files with
//! `fstat` on the descriptor that is then read, every read has a size cap, and walks are
//! iterative with caps on depth and entries (a 20 KB archive can hold 10,000 nested
//! directories; a recursive walk would overflow the stack).
//!
//! Kernels without `openat2` (before 5.6) get a component-by-component walk with
//! `O_NOFOLLOW`, which refuses every symlink: stricter, never looser.
//!
//! Everything here blocks on the filesystem: call it from `spawn_blocking`, not from an
//! async task (only [`remove_tree_off_thread`] does that itself).

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

mod remove;
mod walk;

pub use remove::{remove_tree, remove_tree_off_thread};
pub use walk::{Entry, Flow};

/// Why a tenant's file could not be used. Paths are the host paths, for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TenantFsError {
    #[error("{} leads out of its directory (through `..` or a link)", shown(path))]
    Escapes { path: PathBuf },
    #[error(
        "{} is a symbolic link (or passes through one) where none is allowed",
        shown(path)
    )]
    Link { path: PathBuf },
    #[error("{} is a {kind}, not a {expected}", shown(path))]
    WrongKind {
        path: PathBuf,
        kind: &'static str,
        expected: &'static str,
    },
    #[error("{} is larger than the limit of {limit} bytes", shown(path))]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{} nests directories deeper than the limit of {limit}", shown(path))]
    TooDeep { path: PathBuf, limit: usize },
    #[error("{} holds more than the limit of {limit} entries", shown(path))]
    TooManyEntries { path: PathBuf, limit: u64 },
    #[error("{}: gave up at the deadline", shown(path))]
    Deadline { path: PathBuf },
    #[error("{}: {source}", shown(path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A path for a message, its middle elided past 160 bytes (a 256-level path says no more
/// than its ends).
fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    if text.len() <= 160 {
        return text;
    }
    let head: String = text.chars().take(60).collect();
    let tail: String = text
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}")
}

impl TenantFsError {
    /// The path does not exist (the only failure callers usually tolerate).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TenantFsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    fn io(path: PathBuf, errno: Errno) -> TenantFsError {
        TenantFsError::Io {
            path,
            source: errno.into(),
        }
    }
}

/// Whether a path may pass through symbolic links. Magic links (`/proc/self/fd/...`) and
/// anything leaving the root are refused either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// No symlink anywhere in the path: where the agent expects a plain file or directory
    /// it created, or a tenant has no reason to link.
    Refuse,
    /// Links are followed as long as every step stays beneath the root (a Procfile that is
    /// a link to another file of the app is fine).
    Beneath,
}

/// What an entry is, from `lstat` (links are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket, device or unknown: never read, copied or packed.
    Special(&'static str),
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Special("FIFO"),
            FileType::Socket => Kind::Special("socket"),
            FileType::CharacterDevice | FileType::BlockDevice => Kind::Special("device file"),
            FileType::Unknown => Kind::Special("special file"),
        }
    }

    /// How an error message names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Special(name) => name,
        }
    }
}

/// The `stat` fields the agent uses, in one width on every architecture.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes of disk actually held (`st_blocks * 512`): sparse files count what they use.
    pub disk_bytes: u64,
    pub mtime: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

impl Meta {
    // The kernel's `stat` field widths differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    pub fn of(stat: &rustix::fs::Stat) -> Meta {
        Meta {
            kind: Kind::from_mode(stat.st_mode as u32),
            mode: stat.st_mode as u32 & 0o7777,
            uid: stat.st_uid as u32,
            gid: stat.st_gid as u32,
            size: stat.st_size.max(0) as u64,
            disk_bytes: (stat.st_blocks.max(0) as u64).saturating_mul(512),
            mtime: stat.st_mtime.max(0) as u64,
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
            nlink: stat.st_nlink as u64,
        }
    }
}

/// Caps for a walk over a tenant's tree.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Directories below the root (the root's children are at depth 1).
    pub max_depth: usize,
    /// Entries seen, all kinds.
    pub max_entries: u64,
    /// Give up after this instant (blocking work cannot be cancelled any other way).
    pub deadline: Option<Instant>,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_depth: 256,
            max_entries: 1_000_000,
            deadline: None,
        }
    }
}

/// A directory of a tenant's tree, open; everything beneath it is reached through it.
#[derive(Debug)]
pub struct TenantDir {
    fd: OwnedFd,
    /// The host path, for messages only: nothing is ever opened by it.
    path: PathBuf,
}

/// Set once `openat2` turns out to be missing, so later calls go straight to the fallback.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

impl TenantDir {
    /// Opens the root of a tree at a path the agent trusts (one it made or was configured
    /// with). The root itself must be a real directory, not a link to one.
    pub fn open(path: &Path) -> Result<TenantDir, TenantFsError> {
        let fd = rustix::fs::open(path, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| map_open_error(path.to_path_buf(), e, Links::Refuse))?;
        Ok(TenantDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Creates the directory at a trusted `path` (and its parents) if needed, then opens it.
    pub fn create(path: &Path) -> Result<TenantDir, TenantFsError> {
        std::fs::create_dir_all(path).map_err(|source| TenantFsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        TenantDir::open(path)
    }

    /// How this directory is named in messages: its host path unless relabelled.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names this directory `label` in every message about it and what is beneath it, so
    /// that errors a tenant sees say `app/Procfile`, not the agent's host paths.
    pub fn labeled(mut self, label: impl Into<PathBuf>) -> TenantDir {
        self.path = label.into();
        self
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn host_path(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel` beneath this directory with `flags`, resolved by the kernel.
    fn open_beneath(
        &self,
        rel: &Path,
        flags: OFlags,
        links: Links,
    ) -> Result<OwnedFd, TenantFsError> {
        let path = self.host_path(rel);
        let rel = checked_relative(rel, &path)?;
        let flags = match links {
            Links::Refuse => flags | OFlags::NOFOLLOW,
            Links::Beneath => flags,
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
            if links == Links::Refuse {
                resolve |= ResolveFlags::NO_SYMLINKS;
            }
            // EAGAIN: a rename raced the lookup; the kernel asks to try again.
            for _ in 0..8 {
                match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
                    Ok(fd) => return Ok(fd),
                    Err(Errno::AGAIN) => continue,
                    Err(Errno::NOSYS) => {
                        tracing::warn!("openat2 is unavailable; tenant paths refuse every link");
                        NO_OPENAT2.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(map_open_error(path, e, links)),
                }
            }
            if !NO_OPENAT2.load(Ordering::Relaxed) {
                return Err(TenantFsError::io(path, Errno::AGAIN));
            }
        }
        self.open_by_components(rel, flags, &path)
    }

    /// The fallback without `openat2`: one component at a time, no link anywhere.
    fn open_by_components(
        &self,
        rel: &Path,
        flags: OFlags,
        path: &Path,
    ) -> Result<OwnedFd, TenantFsError> {
        let parts: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some((last, parents)) = parts.split_last() else {
            return rustix::fs::openat(&self.fd, ".", flags, Mode::empty())
                .map_err(|e| map_open_error(path.to_path_buf(), e, Links::Refuse));
        };
        let mut current: Option<OwnedFd> = None;
        for part in parents {
            let dir = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let next = rustix::fs::openat(
                dir,
                *part,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| map_open_error(path.to_path_buf(), e, Links::Refuse))?;
            current = Some(next);
        }
        let dir = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        rustix::fs::openat(dir, *last, flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| map_open_error(path.to_path_buf(), e, Links::Refuse))
    }

    /// A directory beneath this one.
    pub fn open_dir(&self, rel: &Path, links: Links) -> Result<TenantDir, TenantFsError> {
        let fd = self.open_beneath(rel, DIR_FLAGS, links)?;
        Ok(TenantDir {
            fd,
            path: self.host_path(rel),
        })
    }

    /// A regular file beneath this one, open for reading (a FIFO does not block the open;
    /// it, a device or a directory is refused by `fstat` on the descriptor itself).
    pub fn open_file(&self, rel: &Path, links: Links) -> Result<File, TenantFsError> {
        let fd = self.open_beneath(rel, READ_FLAGS, links)?;
        regular_file(fd, &self.host_path(rel))
    }

    /// Reads a whole regular file of at most `limit` bytes; `None` when it does not exist.
    pub fn read(
        &self,
        rel: &Path,
        links: Links,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, TenantFsError> {
        let file = match self.open_file(rel, links) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        read_capped(file, limit, &self.host_path(rel)).map(Some)
    }

    /// [`TenantDir::read`] as UTF-8 (lossy: a tenant's bytes need not be text).
    pub fn read_string(
        &self,
        rel: &Path,
        links: Links,
        limit: u64,
    ) -> Result<Option<String>, TenantFsError> {
        Ok(self
            .read(rel, links, limit)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// What `rel` is (the last component not followed); `None` when it does not exist.
    pub fn meta(&self, rel: &Path, links: Links) -> Result<Option<Meta>, TenantFsError> {
        match self.open_beneath(
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            links,
        ) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd)
                    .map_err(|e| TenantFsError::io(self.host_path(rel), e))?;
                Ok(Some(Meta::of(&stat)))
            }
            Err(e) if e.is_not_found() => Ok(None),
            // O_PATH|O_NOFOLLOW opens a final link itself, so a Link error here is a link
            // in a parent.
            Err(e) => Err(e),
        }
    }

    /// Creates the directories of `rel` that are missing, refusing to pass through anything
    /// that is not a real directory, and opens the last.
    pub fn ensure_dir(&self, rel: &Path) -> Result<TenantDir, TenantFsError> {
        let path = self.host_path(rel);
        let rel = checked_relative(rel, &path)?;
        let mut current: Option<TenantDir> = None;
        for component in rel.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            let parent = current.as_ref().unwrap_or(self);
            match rustix::fs::mkdirat(&parent.fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(TenantFsError::io(parent.host_path(Path::new(name)), e)),
            }
            current = Some(parent.open_dir(Path::new(name), Links::Refuse)?);
        }
        match current {
            Some(dir) => Ok(dir),
            None => self.open_dir(Path::new("."), Links::Refuse),
        }
    }

    /// Creates (or truncates) the regular file `name` in this directory for writing. An
    /// existing link, FIFO or device there is refused, never written through.
    pub fn create_file(&self, name: &str, mode: u32) -> Result<File, TenantFsError> {
        let path = self.host_path(Path::new(name));
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(TenantFsError::Escapes { path });
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::TRUNC
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC
                | OFlags::NOCTTY,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| map_open_error(path.clone(), e, Links::Refuse))?;
        let file = regular_file(fd, &path)?;
        Ok(file)
    }

    /// Removes the file or link `name` in this directory (a link is removed, not followed).
    pub fn remove_file(&self, name: &str) -> Result<(), TenantFsError> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(TenantFsError::io(self.host_path(Path::new(name)), e)),
        }
    }
}

/// `rel` as a relative path with no `..` (the kernel would refuse a climb anyway; refusing
/// it here gives a clearer error).
fn checked_relative<'a>(rel: &'a Path, path: &Path) -> Result<&'a Path, TenantFsError> {
    for component in rel.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(TenantFsError::Escapes {
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    })
}

fn map_open_error(path: PathBuf, errno: Errno, links: Links) -> TenantFsError {
    match errno {
        Errno::XDEV => TenantFsError::Escapes { path },
        // ELOOP: a link where RESOLVE_NO_SYMLINKS/O_NOFOLLOW forbid one, or a chain too long.
        Errno::LOOP if links == Links::Refuse => TenantFsError::Link { path },
        Errno::LOOP => TenantFsError::Escapes { path },
        Errno::NOTDIR => TenantFsError::WrongKind {
            path,
            kind: "file (or a path through one)",
            expected: "directory",
        },
        // A FIFO opened for writing without a reader, or a device without its driver.
        Errno::NXIO | Errno::NODEV => TenantFsError::WrongKind {
            path,
            kind: "special file",
            expected: "regular file",
        },
        e => TenantFsError::io(path, e),
    }
}

/// The descriptor as a `File`, if it is a regular file.
fn regular_file(fd: OwnedFd, path: &Path) -> Result<File, TenantFsError> {
    regular_file_meta(fd, path).map(|(file, _)| file)
}

/// [`regular_file`] with the descriptor's `fstat`.
fn regular_file_meta(fd: OwnedFd, path: &Path) -> Result<(File, Meta), TenantFsError> {
    let stat = rustix::fs::fstat(&fd).map_err(|e| TenantFsError::io(path.to_path_buf(), e))?;
    let meta = Meta::of(&stat);
    if meta.kind != Kind::File {
        return Err(TenantFsError::WrongKind {
            path: path.to_path_buf(),
            kind: meta.kind.name(),
            expected: "regular file",
        });
    }
    Ok((File::from(fd), meta))
}

/// Reads all of `file`, refusing more than `limit` bytes.
pub fn read_capped(file: File, limit: u64, path: &Path) -> Result<Vec<u8>, TenantFsError> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| TenantFsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(TenantFsError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

fn set_mode(fd: BorrowedFd<'_>, mode: u32, path: &Path) -> Result<(), TenantFsError> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o777))
        .map_err(|e| TenantFsError::io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, TenantDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("root")).expect("mkdir");
        let root = TenantDir::open(&dir.path().join("root")).expect("open root");
        (dir, root)
    }

    #[test]
    fn links_out_of_the_root_are_refused_and_inside_ones_followed() {
        let (outer, root) = tree();
        std::fs::write(outer.path().join("secret"), "s3cret").expect("secret");
        std::fs::write(root.path().join("real"), "web: ok\n").expect("file");
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, root.path().join(name)).expect("symlink")
        };
        link("../secret", "up");
        link("/etc/passwd", "abs");
        link("real", "inside");
        std::fs::create_dir(root.path().join("d")).expect("dir");
        link("..", "d/parent");
        link("d/parent/../secret", "chain");
        for name in ["up", "abs", "chain"] {
            let error = root
                .read(Path::new(name), Links::Beneath, 1024)
                .expect_err("escape refused");
            assert!(
                matches!(error, TenantFsError::Escapes { .. }),
                "{name}: {error}"
            );
        }
        assert_eq!(
            root.read_string(Path::new("inside"), Links::Beneath, 1024)
                .expect("inside link")
                .as_deref(),
            Some("web: ok\n")
        );
        assert!(matches!(
            root.read(Path::new("inside"), Links::Refuse, 1024),
            Err(TenantFsError::Link { .. })
        ));
        assert!(
            root.read(Path::new("missing"), Links::Refuse, 10)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn fifos_devices_and_big_files_are_refused_without_blocking() {
        let (_outer, root) = tree();
        rustix::fs::mkfifoat(root.as_fd(), "fifo", Mode::from_raw_mode(0o644)).expect("mkfifo");
        let started = Instant::now();
        let error = root
            .read(Path::new("fifo"), Links::Refuse, 10)
            .expect_err("fifo");
        assert!(
            matches!(error, TenantFsError::WrongKind { kind: "FIFO", .. }),
            "{error}"
        );
        assert!(started.elapsed().as_secs() < 2);
        std::fs::write(root.path().join("big"), vec![b'x'; 2048]).expect("big");
        assert!(matches!(
            root.read(Path::new("big"), Links::Refuse, 1024),
            Err(TenantFsError::TooLarge { .. })
        ));
        assert!(matches!(
            root.create_file("fifo", 0o644),
            Err(TenantFsError::WrongKind { .. })
        ));
    }

    #[test]
    fn deep_trees_are_walked_to_the_cap_and_removed_whole() {
        let (outer, root) = tree();
        let mut dir = root.open_dir(Path::new("."), Links::Refuse).expect("dot");
        for _ in 0..3000 {
            dir = dir.ensure_dir(Path::new("d")).expect("nest");
        }
        let limits = WalkLimits {
            max_depth: 100,
            ..WalkLimits::default()
        };
        let error = root.usage(limits).expect_err("too deep");
        assert!(
            matches!(error, TenantFsError::TooDeep { limit: 100, .. }),
            "{error}"
        );
        drop(dir);
        remove_tree(outer.path(), OsStr::new("root")).expect("removed");
        assert!(!outer.path().join("root").exists());
    }
}
