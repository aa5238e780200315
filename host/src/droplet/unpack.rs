//! Safe unpacking of untrusted app sources (a directory, a `.zip` or a `.tgz`).
//!
//! Rules, checked before anything is written: entry paths are relative with no `..`; nothing
//! is written through a symbolic link (parents must be real directories, files are created
//! fresh); a link's target must stay inside the tree; devices, FIFOs and sockets are refused;
//! the bytes actually written (not what headers claim) and the number of entries are capped.
//! On error the caller discards the destination; nothing outside it is ever touched.

use std::fs::{self, File};
use std::io::{self, Read, Write};
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
    #[error("archive entry {0:?} appears twice")]
    Duplicate(String),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("i/o error unpacking {entry:?}: {source}")]
    Io { entry: String, source: io::Error },
}

/// Caps on what one source may expand to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_files: u64,
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackStats {
    pub files: u64,
    pub bytes: u64,
}

/// Unpacks `source` (directory, `.zip`, `.tgz`/`.tar.gz`) into the empty or missing
/// directory `dest`. The format is decided by content, not by name.
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
    let meta = fs::metadata(source).map_err(|_| UnpackError::Missing(source.to_path_buf()))?;
    let mut writer = TreeWriter::new(dest, limits)?;
    writer.strip = strip_components;
    if meta.is_dir() {
        copy_dir(source, Path::new(""), &mut writer)?;
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
    Ok(writer.stats)
}

fn io_err(entry: &str, source: io::Error) -> UnpackError {
    UnpackError::Io {
        entry: entry.to_string(),
        source,
    }
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

/// Checks that a link at `entry` pointing to `target` stays inside the tree.
fn check_link_target(entry: &Path, target: &Path) -> Result<(), UnpackError> {
    let escape = || UnpackError::LinkEscapes {
        entry: entry.display().to_string(),
        target: target.display().to_string(),
    };
    if target.is_absolute() {
        return Err(escape());
    }
    // Depth below the root of the link's directory, walked lexically. Parents are never links
    // (see `TreeWriter::prepare_parent`), so lexical resolution is the real one.
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

/// Writes entries under one root, enforcing the rules and limits.
struct TreeWriter {
    root: PathBuf,
    limits: UnpackLimits,
    stats: UnpackStats,
    strip: usize,
}

impl TreeWriter {
    fn new(root: &Path, limits: UnpackLimits) -> Result<TreeWriter, UnpackError> {
        fs::create_dir_all(root).map_err(|e| io_err("", e))?;
        Ok(TreeWriter {
            root: root.to_path_buf(),
            limits,
            stats: UnpackStats::default(),
            strip: 0,
        })
    }

    /// The validated entry path with the configured leading components removed.
    fn entry_path(&self, name: &str) -> Result<Option<PathBuf>, UnpackError> {
        Ok(clean_entry_path(name)?
            .map(|p| p.components().skip(self.strip).collect::<PathBuf>())
            .filter(|p| !p.as_os_str().is_empty()))
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.stats.files += 1;
        if self.stats.files > self.limits.max_files {
            return Err(UnpackError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        Ok(())
    }

    /// Creates the parent directories of `rel`, refusing to pass through anything that is not
    /// a real directory.
    fn prepare_parent(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        let mut current = self.root.clone();
        if let Some(parent) = rel.parent() {
            for part in parent.components() {
                current.push(part);
                match fs::symlink_metadata(&current) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(UnpackError::ThroughLink {
                            entry: rel.display().to_string(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir(&current)
                            .map_err(|e| io_err(&rel.display().to_string(), e))?;
                    }
                    Err(e) => return Err(io_err(&rel.display().to_string(), e)),
                }
            }
        }
        Ok(self.root.join(rel))
    }

    fn dir(&mut self, rel: &Path, mode: Option<u32>) -> Result<(), UnpackError> {
        self.count_entry()?;
        let path = self.prepare_parent(rel)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(UnpackError::Duplicate(rel.display().to_string())),
            Err(_) => fs::create_dir(&path).map_err(|e| io_err(&rel.display().to_string(), e))?,
        }
        set_mode(&path, mode.map(|m| m | 0o700));
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Path,
        mode: Option<u32>,
        content: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        self.count_entry()?;
        let name = rel.display().to_string();
        let path = self.prepare_parent(rel)?;
        // create_new: never write through a link or over an earlier entry.
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    UnpackError::Duplicate(name.clone())
                } else {
                    io_err(&name, e)
                }
            })?;
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
        set_mode(&path, mode.map(|m| (m & 0o777) | 0o600));
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        self.count_entry()?;
        check_link_target(rel, target)?;
        let path = self.prepare_parent(rel)?;
        std::os::unix::fs::symlink(target, &path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                UnpackError::Duplicate(rel.display().to_string())
            } else {
                io_err(&rel.display().to_string(), e)
            }
        })
    }
}

fn set_mode(path: &Path, mode: Option<u32>) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = mode {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777));
    }
}

fn copy_dir(src_root: &Path, rel: &Path, writer: &mut TreeWriter) -> Result<(), UnpackError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = src_root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| io_err(&rel.display().to_string(), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(&rel.display().to_string(), e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_child = rel.join(entry.file_name());
        let name = rel_child.display().to_string();
        let meta = fs::symlink_metadata(entry.path()).map_err(|e| io_err(&name, e))?;
        let file_type = meta.file_type();
        let mode = Some(meta.permissions().mode());
        if file_type.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(|e| io_err(&name, e))?;
            writer.symlink(&rel_child, &target)?;
        } else if file_type.is_dir() {
            writer.dir(&rel_child, mode)?;
            copy_dir(src_root, &rel_child, writer)?;
        } else if file_type.is_file() {
            let mut file = File::open(entry.path()).map_err(|e| io_err(&name, e))?;
            writer.file(&rel_child, mode, &mut file)?;
        } else {
            let kind = if file_type.is_fifo() {
                "FIFO"
            } else if file_type.is_socket() {
                "socket"
            } else {
                "device file"
            };
            return Err(UnpackError::SpecialFile { entry: name, kind });
        }
    }
    Ok(())
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
                let target_path = writer.prepare_parent(&target_rel)?;
                let meta = fs::symlink_metadata(&target_path).map_err(|e| io_err(&raw_name, e))?;
                if !meta.is_file() {
                    return Err(UnpackError::ThroughLink { entry: raw_name });
                }
                let mut source = File::open(&target_path).map_err(|e| io_err(&raw_name, e))?;
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
