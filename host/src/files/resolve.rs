//! Turning a requested path into an open file or directory under a root, without ever opening
//! anything outside it.
//!
//! The DEA resolved the path with `realpath` and then checked that the result started with the
//! root *as a string* (reference dea_ng.md §5.4), and the Go server opened the path afterwards.
//! Two weaknesses follow: a sibling whose name extends the root's (`…/abc-evil` next to
//! `…/abc`) passes a string-prefix test, and a symlink swapped in between the check and the
//! open is followed. Here the kernel does the resolution and the check in one step:
//! `openat2(root, path, RESOLVE_BENEATH)` fails with `EXDEV` as soon as `..`, an absolute
//! symlink or a relative one would leave the root, and staging paths add `RESOLVE_NO_SYMLINKS`
//! (the DEA answers any symlink in a staging path with 403). The returned descriptor is what
//! gets served, so there is no window for a swap.
//!
//! Kernels without `openat2` (before 5.6, or a seccomp filter refusing it) get the DEA's method
//! with a path-component test instead of a string prefix, and `O_NOFOLLOW` on the final open;
//! only a swap of an intermediate directory between check and open is not covered there.

use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Which rules the path follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Relative to the instance's home; `..` and symlinks are fine while they stay inside.
    Instance,
    /// An absolute path in the staging container, under its root; no `..`, no symlinks at all.
    Staging,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The path leaves the root, or is something that is not served (symlink in a staging
    /// path, device, FIFO, socket, unreadable).
    #[error("not accessible")]
    NotAccessible,
    #[error("entity not found")]
    NotFound,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a request resolved to: a regular file or a directory, open.
#[derive(Debug)]
pub(crate) struct Opened {
    pub file: std::fs::File,
    pub metadata: std::fs::Metadata,
    /// The path on the host, for logs and for noticing that a tailed file was renamed.
    pub host_path: PathBuf,
}

/// How a path is opened; tests run both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Openat2,
    Portable,
}

/// Set once `openat2` turns out to be unavailable, so later requests skip straight to the
/// portable method.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `requested` (raw bytes, as decoded from the query) under `root`.
pub(crate) fn open_under(
    root: &Path,
    requested: &[u8],
    scope: Scope,
) -> Result<Opened, ResolveError> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match open_with(root, requested, scope, Method::Openat2) {
            Err(ResolveError::Io(e))
                if matches!(
                    e.raw_os_error().map(Errno::from_raw_os_error),
                    Some(Errno::NOSYS | Errno::PERM)
                ) =>
            {
                tracing::warn!("openat2 unavailable ({e}); using realpath checks for file paths");
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    open_with(root, requested, scope, Method::Portable)
}

pub(crate) fn open_with(
    root: &Path,
    requested: &[u8],
    scope: Scope,
    method: Method,
) -> Result<Opened, ResolveError> {
    let relative = relative_path(requested, scope)?;
    let (fd, host_path) = match method {
        Method::Openat2 => open_openat2(root, &relative, scope)?,
        Method::Portable => open_portable(root, &relative, scope)?,
    };
    let file = std::fs::File::from(fd);
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    if !(kind.is_file() || kind.is_dir()) {
        // Devices, FIFOs and sockets are not files to serve (a FIFO would block a reader).
        return Err(ResolveError::NotAccessible);
    }
    Ok(Opened {
        file,
        metadata,
        host_path,
    })
}

/// The requested path relative to the root. Leading slashes are dropped: instance paths are
/// joined to the home directory as Ruby's `File.join` does (`/logs` is `<home>/logs`), and
/// staging paths are absolute container paths whose `/` is the root.
fn relative_path(requested: &[u8], scope: Scope) -> Result<PathBuf, ResolveError> {
    if requested.contains(&0) {
        return Err(ResolveError::NotAccessible);
    }
    let trimmed = requested
        .iter()
        .position(|&b| b != b'/')
        .map_or(&[][..], |start| &requested[start..]);
    let path = Path::new(OsStr::from_bytes(trimmed));
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            // The DEA refuses a staging path whose realpath differs from the path asked for,
            // which any `..` causes.
            Component::ParentDir if scope == Scope::Staging => {
                return Err(ResolveError::NotAccessible);
            }
            Component::ParentDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(ResolveError::NotAccessible),
        }
    }
    if path.as_os_str().is_empty() {
        return Ok(PathBuf::from("."));
    }
    Ok(path.to_path_buf())
}

/// Flags for opening what is served: never a controlling terminal, never block on a FIFO
/// (it is refused after the open anyway).
fn open_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY
}

/// The root as a starting point for `openat2`: `O_PATH` is enough and skips opening it for
/// reading.
fn open_root(root: &Path) -> Result<rustix::fd::OwnedFd, ResolveError> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(map_errno)
}

fn open_openat2(
    root: &Path,
    relative: &Path,
    scope: Scope,
) -> Result<(rustix::fd::OwnedFd, PathBuf), ResolveError> {
    let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    if scope == Scope::Staging {
        resolve |= ResolveFlags::NO_SYMLINKS;
    }
    let fd = with_root(root, |root_fd| {
        rustix::fs::openat2(root_fd, relative, open_flags(), Mode::empty(), resolve)
            .map_err(map_errno)
    })?;
    Ok((fd, root.join(relative)))
}

/// Most roots whose descriptors a worker thread keeps: few, as they count against the agent's
/// descriptor limit (the hot roots are the few instances whose logs are being read; a miss
/// costs one `fstat` more than no cache at all).
const ROOT_CACHE_ENTRIES: usize = 16;

/// A root's descriptor, and the directory it is (device, inode).
struct CachedRoot {
    fd: rustix::fd::OwnedFd,
    device: u64,
    inode: u64,
}

thread_local! {
    /// Root descriptors of this thread, by the root's path.
    static ROOTS: std::cell::RefCell<std::collections::HashMap<Vec<u8>, CachedRoot>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Runs `open` with a descriptor of `root`, as if `root` had just been opened.
///
/// Opening the root for every request was a tenth of a small file's cost (a `struct file`
/// made and freed, on top of the path walk). So each thread keeps the root descriptors it
/// opened, and uses one only while `stat(root)` still names the same directory (device and
/// inode): a walk of the path without opening anything. An inode number is not reused while
/// a descriptor holds the inode, so a match is the very directory that opening the path now
/// would give; a root replaced or removed is opened again (or not found), as before. The
/// root is the agent's own path (never a tenant's), and what is beneath it is still resolved
/// by `openat2(RESOLVE_BENEATH)` on every request.
fn with_root<T>(
    root: &Path,
    mut open: impl FnMut(BorrowedFd<'_>) -> Result<T, ResolveError>,
) -> Result<T, ResolveError> {
    let now = rustix::fs::stat(root).map_err(map_errno)?;
    let key = root.as_os_str().as_bytes();
    let hit = ROOTS.with_borrow(|roots| {
        roots
            .get(key)
            .filter(|c| c.device == now.st_dev && c.inode == now.st_ino)
            .map(|c| open(c.fd.as_fd()))
    });
    if let Some(result) = hit {
        return result;
    }
    let fd = open_root(root)?;
    // What counts is the directory this descriptor is, whatever the path names by now.
    let opened = rustix::fs::fstat(&fd).map_err(map_errno)?;
    let result = open(fd.as_fd());
    ROOTS.with_borrow_mut(|roots| {
        if roots.len() >= ROOT_CACHE_ENTRIES && !roots.contains_key(key) {
            roots.clear();
        }
        roots.insert(
            key.to_vec(),
            CachedRoot {
                fd,
                device: opened.st_dev,
                inode: opened.st_ino,
            },
        );
    });
    result
}

fn open_portable(
    root: &Path,
    relative: &Path,
    scope: Scope,
) -> Result<(rustix::fd::OwnedFd, PathBuf), ResolveError> {
    let root = std::fs::canonicalize(root).map_err(map_io)?;
    let target = match scope {
        Scope::Instance => {
            let real = std::fs::canonicalize(root.join(relative)).map_err(map_io)?;
            // Component-wise, unlike the DEA's string prefix: `/x/abc-evil` is not in `/x/abc`.
            if !real.starts_with(&root) {
                return Err(ResolveError::NotAccessible);
            }
            real
        }
        Scope::Staging => {
            let mut current = root.clone();
            for component in relative.components() {
                if let Component::Normal(name) = component {
                    current.push(name);
                    let metadata = std::fs::symlink_metadata(&current).map_err(map_io)?;
                    if metadata.file_type().is_symlink() {
                        return Err(ResolveError::NotAccessible);
                    }
                }
            }
            current
        }
    };
    let fd = rustix::fs::open(&target, open_flags() | OFlags::NOFOLLOW, Mode::empty())
        .map_err(map_errno)?;
    Ok((fd, target))
}

fn map_errno(errno: Errno) -> ResolveError {
    match errno {
        // EXDEV: the path would leave the root; ELOOP: a symlink where none may be (or a loop).
        Errno::XDEV | Errno::LOOP | Errno::ACCESS => ResolveError::NotAccessible,
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => ResolveError::NotFound,
        other => ResolveError::Io(std::io::Error::from(other)),
    }
}

fn map_io(error: std::io::Error) -> ResolveError {
    match error.raw_os_error() {
        Some(code) => map_errno(Errno::from_raw_os_error(code)),
        None => ResolveError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        home: PathBuf,
        staging: PathBuf,
    }

    /// `abc/` (an instance home) next to `abc-evil/` (a sibling whose name extends it), and a
    /// staging root with a log and a symlink.
    fn tree() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("abc");
        let evil = dir.path().join("abc-evil");
        let staging = dir.path().join("task");
        for d in [
            home.join("logs"),
            evil.clone(),
            staging.join("tmp/staged/logs"),
        ] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(home.join("logs/stdout.log"), "out").expect("write");
        std::fs::write(evil.join("secret"), "secret").expect("write");
        std::fs::write(staging.join("tmp/staged/logs/staging_task.log"), "log").expect("write");
        symlink("logs/stdout.log", home.join("inside")).expect("symlink");
        symlink("../abc-evil/secret", home.join("sibling")).expect("symlink");
        symlink(evil.join("secret"), home.join("absolute")).expect("symlink");
        symlink("/etc/passwd", home.join("passwd")).expect("symlink");
        symlink("staged", staging.join("tmp/link")).expect("symlink");
        Tree {
            home,
            staging,
            _dir: dir,
        }
    }

    fn read(result: Result<Opened, ResolveError>) -> String {
        use std::io::Read;
        let mut opened = result.expect("opens");
        let mut text = String::new();
        opened.file.read_to_string(&mut text).expect("reads");
        text
    }

    #[test]
    fn instance_paths_stay_under_the_home() {
        let t = tree();
        for method in [Method::Openat2, Method::Portable] {
            let open = |p: &str| open_with(&t.home, p.as_bytes(), Scope::Instance, method);
            assert_eq!(read(open("logs/stdout.log")), "out", "{method:?}");
            assert_eq!(read(open("/logs/stdout.log")), "out", "{method:?}");
            assert_eq!(read(open("logs/../logs/stdout.log")), "out", "{method:?}");
            assert_eq!(read(open("inside")), "out", "{method:?}");
            assert!(open("").expect("root").metadata.is_dir());
            assert!(open("/").expect("root").metadata.is_dir());
            for escape in [
                "../abc-evil/secret",
                "sibling",
                "absolute",
                "passwd",
                "logs/../../abc-evil/secret",
            ] {
                assert!(
                    matches!(open(escape), Err(ResolveError::NotAccessible)),
                    "{escape} with {method:?}"
                );
            }
            assert!(matches!(open("nope"), Err(ResolveError::NotFound)));
            assert!(matches!(open("a\0b"), Err(ResolveError::NotAccessible)));
        }
    }

    #[test]
    fn staging_paths_allow_no_symlink_and_no_parent() {
        let t = tree();
        for method in [Method::Openat2, Method::Portable] {
            let open = |p: &str| open_with(&t.staging, p.as_bytes(), Scope::Staging, method);
            assert_eq!(read(open("/tmp/staged/logs/staging_task.log")), "log");
            for refused in [
                "/tmp/link/logs/staging_task.log",
                "/tmp/staged/../staged/logs/staging_task.log",
                "/../../etc/passwd",
            ] {
                assert!(
                    matches!(open(refused), Err(ResolveError::NotAccessible)),
                    "{refused} with {method:?}"
                );
            }
            assert!(matches!(open("/tmp/nope"), Err(ResolveError::NotFound)));
        }
    }

    #[test]
    fn a_root_replaced_or_removed_is_seen_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("home");
        let old = dir.path().join("home.old");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("f"), "one").expect("write");
        let open = || open_with(&root, b"f", Scope::Instance, Method::Openat2);
        // Twice: the second time from this thread's cached descriptor.
        assert_eq!(read(open()), "one");
        assert_eq!(read(open()), "one");
        // The cached descriptor follows the directory; the path now names another one.
        std::fs::rename(&root, &old).expect("rename");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("f"), "two").expect("write");
        assert_eq!(read(open()), "two");
        std::fs::remove_dir_all(&root).expect("remove");
        assert!(matches!(open(), Err(ResolveError::NotFound)));
        // The agent's own root path may be a link; it is followed, as `open` did.
        symlink(&old, &root).expect("symlink");
        assert_eq!(read(open()), "one");
        std::fs::remove_file(&root).expect("remove link");
        std::fs::write(&root, "a file").expect("write");
        assert!(matches!(open(), Err(ResolveError::NotFound)));
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let t = tree();
        let fifo = t.home.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        for method in [Method::Openat2, Method::Portable] {
            assert!(matches!(
                open_with(&t.home, b"fifo", Scope::Instance, method),
                Err(ResolveError::NotAccessible)
            ));
        }
    }
}
