//! Safe unpacking of untrusted app sources (a directory, a `.zip` or a `.tgz`): app packages,
//! droplets, buildpack archives and caches, and what a buildpack's `fetch` unpacks.
//!
//! Rules: entry paths are relative with no `..`; nothing is written through a symbolic link
//! (every parent is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the
//! destination's descriptor, files are created with `O_EXCL | O_NOFOLLOW`); devices, FIFOs and
//! sockets are refused; the bytes actually written (not what headers claim), the number of
//! entries and the depth of directories are capped. Whether a link stays inside the tree is
//! decided twice: lexically when it is met (to refuse early), and at the end by asking the
//! kernel to resolve every link beneath the root of the tree *as extracted* — so a chain of
//! links that each look harmless (`d/a/up -> ..` then `Procfile -> d/a/up/../../etc/shadow`)
//! is caught, since only the real filesystem knows what a chain resolves to. On error the
//! caller discards the destination; nothing outside it is ever touched.

use crate::tenant_fs::{self, Kind, TenantDir, TenantFsError, WalkLimits};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// Why a source was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("app source {0} does not exist")]
    Missing(PathBuf),
    #[error("app source {0} is not a directory, .zip or .tgz")]
    UnknownFormat(PathBuf),
    #[error("archive entry {0:?} has an absolute path")]
    AbsolutePath(String),
    #[error("archive entry {0:?} climbs out of the app directory")]
    PathTraversal(String),
    #[error("archive entry {entry:?} is a link to {target:?}, outside the app directory")]
    LinkEscapes { entry: String, target: String },
    #[error("archive entry {entry:?} goes through a link")]
    ThroughLink { entry: String },
    #[error("archive entry {entry:?} is a {kind}, which apps may not contain")]
    SpecialFile { entry: String, kind: &'static str },
    #[error("app is larger than the limit of {limit_mb} MiB when unpacked")]
    TooLarge { limit_mb: u64 },
    #[error("app has more than {limit} files")]
    TooManyFiles { limit: u64 },
    #[error("archive entry {entry:?} nests directories deeper than the limit of {limit}")]
    TooDeep { entry: String, limit: usize },
    #[error("archive entry {0:?} appears twice")]
    Duplicate(String),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("i/o error unpacking {entry:?}: {source}")]
    Io { entry: String, source: io::Error },
    #[error("unpacking: {0}")]
    Tree(#[from] TenantFsError),
}

/// Caps on what one source may expand to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_files: u64,
    /// Most directories an entry may sit below the root (its path's components, less one).
    pub max_depth: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 1 << 30,
            max_files: 200_000,
            max_depth: 256,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackStats {
    pub files: u64,
    pub bytes: u64,
}

/// Unpacks `source` (directory, `.zip`, `.tgz`/`.tar.gz`) into the empty or missing
/// directory `dest` (a path the agent chose). The format is decided by content, not by name.
pub fn unpack_source(
    source: &Path,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    unpack_stripped(source, dest, limits, 0)
}

/// Like [`unpack_source`], dropping `strip_components` leading components of each entry
/// (entries left with no name are skipped), as `tar --strip-components` does.
pub fn unpack_stripped(
    source: &Path,
    dest: &Path,
    limits: UnpackLimits,
    strip_components: usize,
) -> Result<UnpackStats, UnpackError> {
    let root = TenantDir::create(dest)?;
    unpack_into(source, &root, limits, strip_components)
}

/// Unpacks `source` into the open directory `root` (which may itself lie in a tenant's
/// tree: everything is written relative to its descriptor).
pub fn unpack_into(
    source: &Path,
    root: &TenantDir,
    limits: UnpackLimits,
    strip_components: usize,
) -> Result<UnpackStats, UnpackError> {
    let meta = std::fs::metadata(source).map_err(|_| UnpackError::Missing(source.to_path_buf()))?;
    let mut writer = TreeWriter::new(root, limits)?;
    writer.strip = strip_components;
    if meta.is_dir() {
        copy_dir(source, &mut writer)?;
    } else {
        let mut magic = [0u8; 4];
        let mut file = File::open(source).map_err(|e| io_err("", e))?;
        let n = file.read(&mut magic).map_err(|e| io_err("", e))?;
        match &magic[..n.min(4)] {
            [0x50, 0x4b, 0x03, 0x04] | [0x50, 0x4b, 0x05, 0x06] => unzip(source, &mut writer)?,
            [0x1f, 0x8b, ..] => untar(source, &mut writer)?,
            _ => return Err(UnpackError::UnknownFormat(source.to_path_buf())),
        }
    }
    writer.check_links()?;
    Ok(writer.stats)
}

fn io_err(entry: &str, source: io::Error) -> UnpackError {
    UnpackError::Io {
        entry: entry.to_string(),
        source,
    }
}

fn errno_err(entry: &Path, errno: Errno) -> UnpackError {
    io_err(&entry.display().to_string(), errno.into())
}

/// Validates an entry name and returns it as a clean relative path (`None` for the root).
fn clean_entry_path(name: &str) -> Result<Option<PathBuf>, UnpackError> {
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(UnpackError::AbsolutePath(name.to_string()));
    }
    let mut out = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => {
                if part.to_string_lossy().contains('\\') {
                    return Err(UnpackError::PathTraversal(name.to_string()));
                }
                out.push(part)
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::PathTraversal(name.to_string())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::AbsolutePath(name.to_string()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The early, lexical check of a link at `entry` pointing to `target`: absolute targets and
/// targets that climb above the root counting every component as a directory. Links in the
/// target's path can make it resolve elsewhere; [`TreeWriter::check_links`] decides those
/// on the extracted tree.
fn check_link_target(entry: &Path, target: &Path) -> Result<(), UnpackError> {
    let escape = || UnpackError::LinkEscapes {
        entry: entry.display().to_string(),
        target: target.display().to_string(),
    };
    if target.is_absolute() || target.as_os_str().is_empty() {
        return Err(escape());
    }
    let mut depth: i64 = entry.components().count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return Err(escape()),
        }
        if depth < 0 {
            return Err(escape());
        }
    }
    Ok(())
}

/// Most directory descriptors kept open between entries (archives list entries directory by
/// directory, so a few cover nearly every lookup).
const DIR_CACHE: usize = 64;

/// Writes entries under one root, enforcing the rules and limits.
struct TreeWriter {
    root: OwnedFd,
    root_path: PathBuf,
    limits: UnpackLimits,
    stats: UnpackStats,
    strip: usize,
    /// Open descriptors of directories already made or checked, by relative path.
    dirs: HashMap<PathBuf, OwnedFd>,
    /// Every link written, checked against the real tree at the end.
    links: Vec<(PathBuf, PathBuf)>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl TreeWriter {
    fn new(root: &TenantDir, limits: UnpackLimits) -> Result<TreeWriter, UnpackError> {
        let fd = rustix::fs::openat(root.as_fd(), ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| errno_err(root.path(), e))?;
        Ok(TreeWriter {
            root: fd,
            root_path: root.path().to_path_buf(),
            limits,
            stats: UnpackStats::default(),
            strip: 0,
            dirs: HashMap::new(),
            links: Vec::new(),
        })
    }

    /// The validated entry path with the configured leading components removed.
    fn entry_path(&self, name: &str) -> Result<Option<PathBuf>, UnpackError> {
        Ok(clean_entry_path(name)?
            .map(|p| p.components().skip(self.strip).collect::<PathBuf>())
            .filter(|p| !p.as_os_str().is_empty()))
    }

    fn count_entry(&mut self, rel: &Path) -> Result<(), UnpackError> {
        self.stats.files += 1;
        if self.stats.files > self.limits.max_files {
            return Err(UnpackError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        if rel.components().count() > self.limits.max_depth + 1 {
            return Err(UnpackError::TooDeep {
                entry: rel.display().to_string(),
                limit: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// The directory `dir` (relative), made if missing; never through a link.
    fn dir_fd(&mut self, dir: &Path, entry: &Path) -> Result<OwnedFd, UnpackError> {
        if dir.as_os_str().is_empty() {
            return rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
                .map_err(|e| errno_err(entry, e));
        }
        if let Some(fd) = self.dirs.get(dir) {
            return fd
                .try_clone()
                .map_err(|e| io_err(&entry.display().to_string(), e));
        }
        let through_link = || UnpackError::ThroughLink {
            entry: entry.display().to_string(),
        };
        // One lookup by the kernel for a directory that exists (the usual case)...
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = match rustix::fs::openat2(&self.root, dir, DIR_FLAGS, Mode::empty(), resolve) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => return Err(through_link()),
            // ...else the missing part made one component at a time from the root.
            Err(Errno::NOENT | Errno::NOSYS) => {
                let mut current = rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
                    .map_err(|e| errno_err(entry, e))?;
                for part in dir.components() {
                    let Component::Normal(name) = part else {
                        return Err(through_link());
                    };
                    match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno_err(entry, e)),
                    }
                    current = match rustix::fs::openat(&current, name, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(Errno::LOOP | Errno::NOTDIR) => return Err(through_link()),
                        Err(e) => return Err(errno_err(entry, e)),
                    };
                }
                current
            }
            Err(e) => return Err(errno_err(entry, e)),
        };
        if self.dirs.len() >= DIR_CACHE {
            self.dirs.clear();
        }
        let kept = fd
            .try_clone()
            .map_err(|e| io_err(&entry.display().to_string(), e))?;
        self.dirs.insert(dir.to_path_buf(), kept);
        Ok(fd)
    }

    /// The parent's descriptor and the entry's own name.
    fn parent_of<'a>(
        &mut self,
        rel: &'a Path,
    ) -> Result<(OwnedFd, &'a std::ffi::OsStr), UnpackError> {
        let name = rel
            .file_name()
            .ok_or_else(|| UnpackError::PathTraversal(rel.display().to_string()))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir_fd(parent, rel)?, name))
    }

    fn dir(&mut self, rel: &Path, mode: Option<u32>) -> Result<(), UnpackError> {
        self.count_entry(rel)?;
        let fd = self.dir_fd(rel, rel)?;
        if let Some(mode) = mode {
            // The owner keeps full access; set-id and sticky bits are dropped.
            let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode((mode | 0o700) & 0o777));
        }
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Path,
        mode: Option<u32>,
        content: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        self.count_entry(rel)?;
        let name = rel.display().to_string();
        let (parent, file_name) = self.parent_of(rel)?;
        // O_EXCL | O_NOFOLLOW: never write through a link or over an earlier entry.
        let fd = rustix::fs::openat(
            &parent,
            file_name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            Errno::EXIST => UnpackError::Duplicate(name.clone()),
            e => errno_err(rel, e),
        })?;
        let mut out = File::from(fd);
        let remaining = self.limits.max_bytes.saturating_sub(self.stats.bytes);
        let copied = io::copy(&mut content.take(remaining + 1), &mut out)
            .map_err(|e| UnpackError::Corrupt(format!("{name}: {e}")))?;
        self.stats.bytes += copied;
        if copied > remaining {
            return Err(UnpackError::TooLarge {
                limit_mb: self.limits.max_bytes >> 20,
            });
        }
        out.flush().map_err(|e| io_err(&name, e))?;
        // Keep the owner able to read and write; drop set-id bits.
        if let Some(mode) = mode {
            let _ = rustix::fs::fchmod(&out, Mode::from_raw_mode((mode & 0o777) | 0o600));
        }
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        self.count_entry(rel)?;
        check_link_target(rel, target)?;
        let (parent, name) = self.parent_of(rel)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(|e| match e {
            Errno::EXIST => UnpackError::Duplicate(rel.display().to_string()),
            e => errno_err(rel, e),
        })?;
        self.links.push((rel.to_path_buf(), target.to_path_buf()));
        Ok(())
    }

    /// An earlier regular-file entry, for a hard link (materialised as a copy).
    fn existing_file(&mut self, rel: &Path, entry: &str) -> Result<File, UnpackError> {
        let (parent, name) = self.parent_of(rel)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP => UnpackError::ThroughLink {
                entry: entry.to_string(),
            },
            e => errno_err(rel, e),
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| errno_err(rel, e))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(UnpackError::ThroughLink {
                entry: entry.to_string(),
            });
        }
        Ok(File::from(fd))
    }

    /// Every link written must resolve beneath the root in the tree as extracted: the kernel
    /// walks it (following earlier links, as anyone reading the tree later would) and stops
    /// with `EXDEV` at the first step out. A dangling link is fine while its existing part
    /// stays inside: whatever is created later is created inside too.
    fn check_links(&mut self) -> Result<(), UnpackError> {
        self.dirs.clear();
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        for (rel, target) in &self.links {
            let escapes = || UnpackError::LinkEscapes {
                entry: rel.display().to_string(),
                target: target.display().to_string(),
            };
            match rustix::fs::openat2(
                &self.root,
                rel,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            ) {
                Ok(_) | Err(Errno::NOENT | Errno::NOTDIR) => {}
                // A loop resolves to nothing, for the agent as for anyone.
                Err(Errno::LOOP) => {}
                Err(Errno::XDEV) => return Err(escapes()),
                // Without openat2 the lexical check (done when written) has to do; links
                // through links are then refused outright.
                Err(Errno::NOSYS) => {
                    let through_link = self.links.iter().any(|(other, _)| {
                        other != rel && rel.parent().is_some_and(|p| p.starts_with(other))
                            || target.starts_with(other)
                    });
                    if through_link {
                        return Err(escapes());
                    }
                }
                Err(e) => return Err(errno_err(&self.root_path.join(rel), e)),
            }
        }
        Ok(())
    }
}

/// Copies a directory source (what `dea stage DIR` is given) entry by entry, iteratively,
/// without following links, under the same rules as an archive.
fn copy_dir(src_root: &Path, writer: &mut TreeWriter) -> Result<(), UnpackError> {
    // The user's own path: resolve it once, then walk its tree without following links.
    let src_root = std::fs::canonicalize(src_root).map_err(|e| io_err("", e))?;
    let source = TenantDir::open(&src_root)?;
    // The writer's caps apply; the walk itself is only kept from running away.
    let limits = WalkLimits {
        // One level past the writer's cap, so that the writer meets the entry that is too
        // deep and names it.
        max_depth: writer.limits.max_depth + 2,
        max_entries: writer.limits.max_files.saturating_add(1),
        deadline: None,
    };
    source.walk(limits, true, |entry| {
        let rel = match writer.entry_path(&entry.rel.to_string_lossy())? {
            Some(rel) => rel,
            None => return Ok(tenant_fs::Flow::Descend),
        };
        let mode = Some(entry.meta.mode);
        match entry.meta.kind {
            Kind::Symlink => writer.symlink(&rel, &entry.read_link()?)?,
            Kind::Dir => writer.dir(&rel, mode)?,
            Kind::File => writer.file(&rel, mode, &mut entry.open_file()?)?,
            Kind::Special(kind) => {
                return Err(UnpackError::SpecialFile {
                    entry: rel.display().to_string(),
                    kind,
                });
            }
        }
        Ok::<_, UnpackError>(tenant_fs::Flow::Descend)
    })
}

fn untar(source: &Path, writer: &mut TreeWriter) -> Result<(), UnpackError> {
    let file = File::open(source).map_err(|e| io_err("", e))?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = writer.entry_path(&raw_name)? else {
            continue;
        };
        let mode = entry.header().mode().ok();
        match entry.header().entry_type() {
            tar::EntryType::Directory => writer.dir(&rel, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                writer.file(&rel, mode, &mut entry)?
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("{raw_name}: link without target"))
                    })?
                    .into_owned();
                writer.symlink(&rel, &target)?;
            }
            tar::EntryType::Link => {
                // A hard link is materialised as a copy of an earlier entry in the tree.
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("{raw_name}: link without target"))
                    })?;
                let target_rel = writer.entry_path(&target.to_string_lossy()).map_err(|_| {
                    UnpackError::LinkEscapes {
                        entry: raw_name.clone(),
                        target: target.display().to_string(),
                    }
                })?;
                let Some(target_rel) = target_rel else {
                    return Err(UnpackError::Corrupt(format!("{raw_name}: bad link")));
                };
                let mut source = writer.existing_file(&target_rel, &raw_name)?;
                writer.file(&rel, mode, &mut source)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(UnpackError::SpecialFile {
                    entry: raw_name,
                    kind: "device file",
                });
            }
            tar::EntryType::Fifo => {
                return Err(UnpackError::SpecialFile {
                    entry: raw_name,
                    kind: "FIFO",
                });
            }
            _ => {
                return Err(UnpackError::SpecialFile {
                    entry: raw_name,
                    kind: "special entry",
                });
            }
        }
    }
    Ok(())
}

fn unzip(source: &Path, writer: &mut TreeWriter) -> Result<(), UnpackError> {
    let file = File::open(source).map_err(|e| io_err("", e))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| UnpackError::Corrupt(e.to_string()))?;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        let raw_name = entry.name().to_string();
        let Some(rel) = writer.entry_path(&raw_name)? else {
            continue;
        };
        let mode = entry.unix_mode();
        const S_IFMT: u32 = 0o170000;
        const S_IFLNK: u32 = 0o120000;
        const S_IFREG: u32 = 0o100000;
        const S_IFDIR: u32 = 0o040000;
        let kind = mode.map(|m| m & S_IFMT).filter(|k| *k != 0);
        if entry.is_dir() || kind == Some(S_IFDIR) {
            writer.dir(&rel, mode)?;
        } else if kind == Some(S_IFLNK) {
            let mut target = String::new();
            entry
                .by_ref()
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| UnpackError::Corrupt(format!("{raw_name}: {e}")))?;
            writer.symlink(&rel, Path::new(&target))?;
        } else if kind.is_none() || kind == Some(S_IFREG) {
            writer.file(&rel, mode, &mut entry)?;
        } else {
            return Err(UnpackError::SpecialFile {
                entry: raw_name,
                kind: "special file",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_checked() {
        assert!(matches!(
            clean_entry_path("/etc/passwd"),
            Err(UnpackError::AbsolutePath(_))
        ));
        assert!(matches!(
            clean_entry_path("a/../../x"),
            Err(UnpackError::PathTraversal(_))
        ));
        assert_eq!(
            clean_entry_path("./a/./b").expect("clean"),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(clean_entry_path("./").expect("root"), None);
    }

    #[test]
    fn link_targets_must_stay_inside() {
        assert!(check_link_target(Path::new("a/l"), Path::new("../b")).is_ok());
        assert!(check_link_target(Path::new("a/l"), Path::new("../../b")).is_err());
        assert!(check_link_target(Path::new("l"), Path::new("/etc")).is_err());
        assert!(check_link_target(Path::new("a/b/l"), Path::new("../x/../../y")).is_ok());
        assert!(check_link_target(Path::new("l"), Path::new("x/../../y")).is_err());
    }
}
