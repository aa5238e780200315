//! Packing a staged tree into a droplet: a gzip'd tar with `./`-relative entries, written
//! atomically, with its SHA-1 and SHA-256.
//!
//! The tar stream is written straight into the blocks that [`ParallelGz`] compresses on
//! several threads: headers come from the `tar` crate, and each file's bytes are read from
//! its descriptor into the block being filled (one `fstat` per file, reads as large as the
//! block allows). The output is written to a temporary file beside the destination and
//! renamed into place only when complete and synced, so no reader ever sees half a droplet.
//!
//! Droplets are reproducible ([`Stamp::Reproducible`]): entries are sorted by name, each is
//! owned by the user instances run as and dated one fixed time, and the gzip members carry
//! no time or host (libdeflate writes MTIME 0 and OS 255) and are cut at fixed offsets of
//! the tar stream, whatever the number of threads. Equal trees then give byte-identical
//! droplets, which is what lets a site rebuild and check what it runs (`dea diff`,
//! `dea stage --verify`).

use super::gzip::ParallelGz;
use crate::config::Config;
use crate::tenant_fs::{Flow, Kind, Meta, TenantDir, TenantFsError, WalkLimits};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a droplet could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing droplet {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is a {kind}; droplets hold files, directories and links only")]
    Special { path: PathBuf, kind: &'static str },
    #[error("the staged app holds more than the limit of {limit_mb} MiB")]
    TooLarge { limit_mb: u64 },
    #[error(transparent)]
    Tree(#[from] TenantFsError),
}

/// A droplet on disk and its digests.
#[derive(Debug, Clone)]
pub struct PackedDroplet {
    pub path: PathBuf,
    pub size: u64,
    pub sha1: String,
    pub sha256: String,
}

/// Caps on what a packed tree may hold. The tree was written by buildpacks, so it can be as
/// deep, as wide or (with sparse files) as large as a tenant likes.
#[derive(Debug, Clone, Copy)]
pub struct PackLimits {
    /// Bytes of file content, before compression.
    pub max_bytes: u64,
    pub walk: WalkLimits,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_bytes: 4 << 30,
            walk: WalkLimits::default(),
        }
    }
}

/// 1980-01-01T00:00:00Z, the date of droplet entries when no `SOURCE_DATE_EPOCH` is given.
/// Not 0: zip cannot say a time before 1980 (Python's `zipfile` refuses such files, so an
/// app that zips its own files would fail), and some tools take a zero time for "unknown".
/// Python's wheels and Debian's `strip-nondeterminism` use the same date for that reason.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// What a droplet's entries say about their owner and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// As the file system has them: the staging's user (root for wasm buildpacks, the
    /// classic containers' user for classic ones) and the time each file was written.
    AsBuilt,
    /// Every entry owned by `uid:gid` and dated `mtime` (seconds since 1970), so that equal
    /// trees give byte-identical droplets whoever staged them and when.
    Reproducible { mtime: u64, uid: u32, gid: u32 },
}

impl Stamp {
    /// The stamp `config` asks droplets for: owned by the user instances run as (who gets
    /// the whole home at start anyway), dated `staging.source_date_epoch` or
    /// [`DEFAULT_EPOCH`].
    pub fn for_config(config: &Config) -> Stamp {
        if !config.staging.reproducible {
            return Stamp::AsBuilt;
        }
        Stamp::Reproducible {
            mtime: config.staging.source_date_epoch.unwrap_or(DEFAULT_EPOCH),
            uid: config.instances.uid,
            gid: config.instances.gid,
        }
    }
}

/// How to pack a droplet.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// gzip level, 0 (stored) to 9.
    pub level: u32,
    /// Compression workers; the droplet's bytes do not depend on it.
    pub threads: usize,
    pub limits: PackLimits,
    pub stamp: Stamp,
}

/// Packs the contents of `tree` into `dest` (entries named `./...`), compressing with `level`
/// on `threads` workers, within the default [`PackLimits`], entries as built.
pub fn pack_tree(
    tree: &Path,
    dest: &Path,
    level: u32,
    threads: usize,
) -> Result<PackedDroplet, PackError> {
    pack_tree_limited(tree, dest, level, threads, PackLimits::default())
}

/// [`pack_tree`] within `limits`.
pub fn pack_tree_limited(
    tree: &Path,
    dest: &Path,
    level: u32,
    threads: usize,
    limits: PackLimits,
) -> Result<PackedDroplet, PackError> {
    let options = PackOptions {
        level,
        threads,
        limits,
        stamp: Stamp::AsBuilt,
    };
    pack_tree_with(tree, dest, &options)
}

/// Packs the contents of `tree` into `dest` as `options` say.
pub fn pack_tree_with(
    tree: &Path,
    dest: &Path,
    options: &PackOptions,
) -> Result<PackedDroplet, PackError> {
    let write_err = |source| PackError::Write {
        path: dest.to_path_buf(),
        source,
    };
    // Entries are named in errors as in the droplet (`./app/...`), not by host path.
    let root = TenantDir::open(tree)?.labeled(".");
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(write_err)?;
    let temp = tempfile::Builder::new()
        .prefix(".droplet-")
        .suffix(".partial")
        .tempfile_in(parent)
        .map_err(write_err)?;
    let output = temp.as_file().try_clone().map_err(write_err)?;

    let mut gz = ParallelGz::new(output, options.level, options.threads.max(1));
    let stamp = options.stamp;
    let walk_result = append_root(&mut gz, &root, stamp)
        .and_then(|()| append_tree(&mut gz, &root, options.limits, stamp))
        .and_then(|()| {
            // The end of the archive: two zero records, as `tar` writes it.
            gz.write_all(&[0u8; 1024]).map_err(write_err)
        });
    // Always join the workers, even when walking failed.
    let finished = gz.finish();
    walk_result?;
    let written = finished.map_err(write_err)?;
    temp.as_file().sync_all().map_err(write_err)?;
    let mode = fs::Permissions::from_mode(0o644);
    fs::set_permissions(temp.path(), mode).map_err(write_err)?;
    temp.persist(dest).map_err(|e| write_err(e.error))?;
    Ok(PackedDroplet {
        path: dest.to_path_buf(),
        size: written.size,
        sha1: written.sha1,
        sha256: written.sha256,
    })
}

/// A tar header carrying `meta`'s mode, and its owner and time or those of `stamp`. The
/// owner's names stay empty: GNU tar extracting as root would otherwise map a name to
/// whatever id it has on the extracting host, and the agent unpacks by id anyway.
fn header_for(meta: &Meta, kind: tar::EntryType, size: u64, stamp: Stamp) -> tar::Header {
    let (uid, gid, mtime) = match stamp {
        Stamp::AsBuilt => (meta.uid, meta.gid, meta.mtime),
        Stamp::Reproducible { mtime, uid, gid } => (uid, gid, mtime),
    };
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(mtime);
    header.set_size(size);
    header
}

/// The `./` entry `tar czf droplet.tgz .` starts with.
fn append_root(gz: &mut ParallelGz, root: &TenantDir, stamp: Stamp) -> Result<(), PackError> {
    let read_err = |source| PackError::Read {
        path: root.path().to_path_buf(),
        source,
    };
    let stat = rustix::fs::fstat(root.as_fd()).map_err(|e| read_err(e.into()))?;
    let meta = Meta::of(&stat);
    let header = header_for(&meta, tar::EntryType::Directory, 0, stamp);
    append_header(gz, header, b"./", None).map_err(read_err)
}

/// Appends every entry beneath `root`, parents first and names sorted so that equal trees
/// give equal droplets. The walk is iterative and capped (see [`PackLimits`]); files are
/// opened through their directory's descriptor, never through a link, and what is packed
/// is what that descriptor's `fstat` says (kind, size, mode, owner, time).
fn append_tree(
    gz: &mut ParallelGz,
    root: &TenantDir,
    limits: PackLimits,
    stamp: Stamp,
) -> Result<(), PackError> {
    let mut total = 0u64;
    let mut name = Vec::with_capacity(256);
    root.walk(limits.walk, true, |entry| {
        let path = || root.path().join(entry.rel);
        let read_err = |source| PackError::Read {
            path: path(),
            source,
        };
        // Names are bytes, as the file system has them (not necessarily UTF-8).
        name.clear();
        name.extend_from_slice(b"./");
        name.extend_from_slice(entry.rel.as_os_str().as_bytes());
        match entry.meta.kind {
            Kind::Dir => {
                name.push(b'/');
                let header = header_for(&entry.meta, tar::EntryType::Directory, 0, stamp);
                append_header(gz, header, &name, None).map_err(read_err)?;
            }
            Kind::File => {
                let (mut file, meta) = entry.open_file_meta()?;
                total = total.saturating_add(meta.size);
                if total > limits.max_bytes {
                    return Err(PackError::TooLarge {
                        limit_mb: limits.max_bytes >> 20,
                    });
                }
                let header = header_for(&meta, tar::EntryType::Regular, meta.size, stamp);
                append_header(gz, header, &name, None).map_err(read_err)?;
                gz.fill_from(&mut file, meta.size).map_err(read_err)?;
                pad(gz, meta.size).map_err(read_err)?;
            }
            Kind::Symlink => {
                let target = entry.read_link()?;
                let header = header_for(&entry.meta, tar::EntryType::Symlink, 0, stamp);
                append_header(gz, header, &name, Some(target.as_os_str().as_bytes()))
                    .map_err(read_err)?;
            }
            Kind::Special(kind) => return Err(PackError::Special { path: path(), kind }),
        }
        Ok(Flow::Descend)
    })
}

/// Zeros up to the next 512-byte record after `len` bytes of data.
fn pad(gz: &mut ParallelGz, len: u64) -> io::Result<()> {
    let rest = (len % 512) as usize;
    if rest == 0 {
        return Ok(());
    }
    gz.write_all(&[0u8; 512][rest..])
}

/// Writes an entry's header with its name exactly as given (the `tar` crate's path setters
/// drop the leading `./` that Cloud Foundry droplets carry). Names or link targets that do
/// not fit the 100-byte header fields go in GNU long-name records first, as GNU tar writes
/// them. The entry's data, if any, follows.
fn append_header(
    gz: &mut ParallelGz,
    mut header: tar::Header,
    name: &[u8],
    link: Option<&[u8]>,
) -> io::Result<()> {
    const FIELD: usize = 100;
    let mut long_record = |kind: tar::EntryType, value: &[u8]| -> io::Result<()> {
        let mut record = tar::Header::new_gnu();
        let marker = b"././@LongLink";
        record.as_old_mut().name[..marker.len()].copy_from_slice(marker);
        record.set_mode(0o644);
        record.set_entry_type(kind);
        let len = value.len() as u64 + 1;
        record.set_size(len);
        record.set_cksum();
        gz.write_all(record.as_bytes())?;
        gz.write_all(value)?;
        gz.write_all(b"\0")?;
        pad(gz, len)
    };
    if name.len() > FIELD {
        long_record(tar::EntryType::GNULongName, name)?;
    }
    if let Some(link) = link {
        header.set_entry_type(tar::EntryType::Symlink);
        if link.len() > FIELD {
            long_record(tar::EntryType::GNULongLink, link)?;
        }
        let field = &mut header.as_old_mut().linkname;
        let n = link.len().min(FIELD);
        field[..n].copy_from_slice(&link[..n]);
    }
    let field = &mut header.as_old_mut().name;
    let n = name.len().min(FIELD);
    field.fill(0);
    field[..n].copy_from_slice(&name[..n]);
    header.set_cksum();
    gz.write_all(header.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::os::unix::fs::symlink;

    /// What an entry is, as a test compares trees: kind, mode bits, and content or target.
    fn listing(root: &Path) -> BTreeMap<PathBuf, (&'static str, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                let meta = fs::symlink_metadata(&path).expect("lstat");
                let rel = path.strip_prefix(root).expect("inside").to_path_buf();
                let mode = meta.permissions().mode() & 0o7777;
                let item = if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).expect("readlink");
                    ("link", 0, target.as_os_str().as_bytes().to_vec())
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    ("dir", mode, Vec::new())
                } else {
                    ("file", mode, fs::read(&path).expect("read"))
                };
                out.insert(rel, item);
            }
        }
        out
    }

    /// Text that takes several compression blocks, and noise that is stored.
    fn contents() -> (Vec<u8>, Vec<u8>) {
        let text = b"fn main() { println!(\"{}\", value.request); }\n"
            .iter()
            .copied()
            .cycle()
            .take(3 * super::super::gzip::BLOCK_SIZE + 777)
            .collect();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let noise = (0..200_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        (text, noise)
    }

    #[test]
    fn a_tree_packs_exactly_as_gnu_tar_reads_it_back() {
        let base = tempfile::tempdir().expect("tempdir");
        let tree = base.path().join("tree");
        let (text, noise) = contents();
        let long = "n".repeat(150);
        fs::create_dir_all(tree.join("app/a/b")).expect("dirs");
        fs::write(tree.join("app/empty"), b"").expect("empty");
        fs::write(tree.join("app/record"), vec![b'r'; 512]).expect("record");
        fs::write(tree.join("app/a/text.js"), &text).expect("text");
        fs::write(tree.join("app/a/b/noise.woff2"), &noise).expect("noise");
        fs::write(tree.join("app/a").join(&long), b"long name").expect("long");
        fs::write(
            tree.join("app").join(OsStr::from_bytes(b"caf\xe9")),
            b"latin-1",
        )
        .expect("bytes");
        fs::write(base.path().join("secret"), b"not in the droplet").expect("secret");
        symlink("empty", tree.join("app/inside")).expect("link");
        symlink(format!("a/{long}"), tree.join("app/long-target")).expect("link");
        symlink("../../secret", tree.join("app/outside")).expect("link");
        symlink("missing", tree.join("app/dangling")).expect("link");
        fs::set_permissions(
            tree.join("app/a/text.js"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        fs::set_permissions(tree.join("app/a/b"), fs::Permissions::from_mode(0o700))
            .expect("chmod");

        let dest = base.path().join("out/droplet.tgz");
        let packed = pack_tree(&tree, &dest, 6, 3).expect("packs");
        let bytes = fs::read(&dest).expect("droplet");
        assert_eq!(packed.size, bytes.len() as u64);
        assert_eq!(packed.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(packed.sha1, hex::encode(sha1::Sha1::digest(&bytes)));
        // The stored noise costs a few bytes, the text next to nothing.
        assert!(bytes.len() < noise.len() + 20_000, "{}", bytes.len());

        // Names as `tar czf droplet.tgz .` gives them: `./` first, parents before children.
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bytes.as_slice()));
        let names: Vec<Vec<u8>> = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path_bytes().into_owned())
            .collect();
        assert_eq!(names[0], b"./");
        assert_eq!(names[1], b"./app/");
        assert!(names.contains(&format!("./app/a/{long}").into_bytes()));

        let out = base.path().join("unpacked");
        fs::create_dir(&out).expect("out");
        let status = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&dest)
            .arg("-C")
            .arg(&out)
            .status()
            .expect("tar runs");
        assert!(status.success(), "GNU tar reads the droplet");
        assert_eq!(listing(&out), listing(&tree));
    }

    /// Writes the same small app into `tree`, every entry dated `mtime` and owned by `uid`
    /// (as root; otherwise the owner stays the caller's).
    fn app_tree(tree: &Path, mtime: u64, uid: u32) {
        let (text, noise) = contents();
        fs::create_dir_all(tree.join("app/lib")).expect("dirs");
        fs::write(tree.join("app/lib/text.js"), &text).expect("text");
        fs::write(tree.join("app/noise.bin"), &noise).expect("noise");
        fs::write(tree.join("app/run"), b"#!/bin/sh\n").expect("run");
        fs::set_permissions(tree.join("app/run"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        symlink("lib/text.js", tree.join("app/main.js")).expect("link");
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        for path in [
            "app/lib/text.js",
            "app/noise.bin",
            "app/run",
            "app/lib",
            "app",
            ".",
        ] {
            let file = fs::File::open(tree.join(path)).expect("open");
            file.set_modified(time).expect("set mtime");
        }
        if rustix::process::geteuid().is_root() {
            for path in [
                "app/lib/text.js",
                "app/noise.bin",
                "app/run",
                "app/lib",
                "app",
            ] {
                std::os::unix::fs::lchown(tree.join(path), Some(uid), Some(uid)).expect("chown");
            }
        }
    }

    #[test]
    fn equal_trees_give_identical_droplets_whatever_their_times_owners_and_threads() {
        let base = tempfile::tempdir().expect("tempdir");
        let stamp = Stamp::Reproducible {
            mtime: 1_700_000_000,
            uid: 2000,
            gid: 2001,
        };
        let pack = |tree: &Path, threads: usize, stamp: Stamp| {
            let options = PackOptions {
                level: 6,
                threads,
                limits: PackLimits::default(),
                stamp,
            };
            let dest = base.path().join(format!("{threads}-{}.tgz", rand_name()));
            pack_tree_with(tree, &dest, &options).expect("packs")
        };
        let (one, two) = (base.path().join("one"), base.path().join("two"));
        app_tree(&one, 1_000_000_000, 0);
        app_tree(&two, 1_600_000_000, 2000);

        let first = pack(&one, 1, stamp);
        for (tree, threads) in [(&one, 4), (&two, 1), (&two, 3)] {
            let other = pack(tree, threads, stamp);
            assert_eq!(other.sha256, first.sha256, "{threads} threads");
            assert_eq!(other.sha1, first.sha1, "{threads} threads");
        }
        // As built, the trees' own times tell them apart.
        let one_built = pack(&one, 2, Stamp::AsBuilt);
        assert_ne!(one_built.sha256, pack(&two, 2, Stamp::AsBuilt).sha256);

        let bytes = fs::read(&first.path).expect("droplet");
        // Every gzip member says no time: bytes 4..8 of its header are zero.
        assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bytes.as_slice()));
        let mut modes = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            assert_eq!(header.mtime().expect("mtime"), 1_700_000_000, "{name}");
            assert_eq!(header.uid().expect("uid"), 2000, "{name}");
            assert_eq!(header.gid().expect("gid"), 2001, "{name}");
            modes.insert(name, header.mode().expect("mode") & 0o7777);
        }
        // Modes are the tree's: they matter to the app.
        assert_eq!(modes.get("./app/run"), Some(&0o755));
        assert_eq!(modes.get("./app/lib/text.js"), Some(&0o644));
    }

    /// A name no other droplet of the test has.
    fn rand_name() -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed).to_string()
    }

    #[test]
    fn caps_and_special_files_refuse_the_pack_and_leave_nothing() {
        let base = tempfile::tempdir().expect("tempdir");
        let tree = base.path().join("tree");
        fs::create_dir_all(tree.join("app")).expect("dirs");
        for name in ["one", "two"] {
            fs::write(tree.join("app").join(name), vec![b'x'; 600 << 10]).expect("file");
        }
        let out = base.path().join("out");
        let dest = out.join("droplet.tgz");
        let limits = PackLimits {
            max_bytes: 1 << 20,
            ..PackLimits::default()
        };
        let error = pack_tree_limited(&tree, &dest, 6, 2, limits).expect_err("too large");
        assert!(
            matches!(error, PackError::TooLarge { limit_mb: 1 }),
            "{error}"
        );

        let few = PackLimits {
            walk: WalkLimits {
                max_entries: 2,
                ..WalkLimits::default()
            },
            ..PackLimits::default()
        };
        let error = pack_tree_limited(&tree, &dest, 6, 2, few).expect_err("too many");
        assert!(
            matches!(error, PackError::Tree(TenantFsError::TooManyEntries { .. })),
            "{error}"
        );

        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            tree.join("app/fifo"),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .expect("mkfifo");
        let error = pack_tree(&tree, &dest, 6, 2).expect_err("fifo");
        assert!(
            matches!(error, PackError::Special { kind: "FIFO", .. }),
            "{error}"
        );
        let left: Vec<_> = fs::read_dir(&out).expect("out").collect();
        assert!(left.is_empty(), "a partial droplet was left: {left:?}");
    }
}
