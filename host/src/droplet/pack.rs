//! Packing a staged tree into a droplet: a gzip'd tar with `./`-relative entries, written
//! atomically, with its SHA-1 and SHA-256.
//!
//! Compression is the expensive part, so the tar stream is cut into blocks that worker
//! threads compress in parallel, each as its own gzip member (RFC 1952 allows several; `gzip`,
//! `tar xzf` and Cloud Foundry's DEA read them as one stream). The output is written to a
//! temporary file beside the destination and renamed into place only when complete and
//! synced, so no reader ever sees half a droplet.

use crate::tenant_fs::{Flow, Kind, Meta, TenantDir, TenantFsError, WalkLimits};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Size of the tar blocks compressed independently.
const BLOCK_SIZE: usize = 1 << 20;

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

/// Packs the contents of `tree` into `dest` (entries named `./...`), compressing with `level`
/// on `threads` workers, within the default [`PackLimits`].
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

    let mut gz = ParallelGz::new(output, level, threads.max(1));
    let walk_result = {
        let mut builder = tar::Builder::new(&mut gz);
        builder.mode(tar::HeaderMode::Complete);
        let result = append_root(&mut builder, &root)
            .and_then(|()| append_tree(&mut builder, &root, limits));
        result.and_then(|()| {
            builder.finish().map_err(|source| PackError::Write {
                path: dest.to_path_buf(),
                source,
            })
        })
    };
    // Always join the workers, even when walking failed.
    let finished = gz.finish();
    walk_result?;
    let (size, sha1, sha256) = finished.map_err(write_err)?;
    temp.as_file().sync_all().map_err(write_err)?;
    let mode = fs::Permissions::from_mode(0o644);
    fs::set_permissions(temp.path(), mode).map_err(write_err)?;
    temp.persist(dest).map_err(|e| write_err(e.error))?;
    Ok(PackedDroplet {
        path: dest.to_path_buf(),
        size,
        sha1,
        sha256,
    })
}

/// A tar header carrying `meta`'s mode, owner and time (what `HeaderMode::Complete` keeps).
fn header_for(meta: &Meta, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode);
    header.set_uid(u64::from(meta.uid));
    header.set_gid(u64::from(meta.gid));
    header.set_mtime(meta.mtime);
    header.set_size(size);
    header
}

/// The `./` entry `tar czf droplet.tgz .` starts with.
fn append_root<W: Write>(builder: &mut tar::Builder<W>, root: &TenantDir) -> Result<(), PackError> {
    let read_err = |source| PackError::Read {
        path: root.path().to_path_buf(),
        source,
    };
    let stat = rustix::fs::fstat(root.as_fd()).map_err(|e| read_err(e.into()))?;
    let meta = Meta::of(&stat);
    let header = header_for(&meta, tar::EntryType::Directory, 0);
    append_named(builder, header, "./", None, io::empty()).map_err(read_err)
}

/// Appends every entry beneath `root`, parents first and names sorted so that equal trees
/// give equal droplets. The walk is iterative and capped (see [`PackLimits`]); files are
/// opened through their directory's descriptor, never through a link.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &TenantDir,
    limits: PackLimits,
) -> Result<(), PackError> {
    let mut total = 0u64;
    root.walk(limits.walk, true, |entry| {
        let path = root.path().join(entry.rel);
        let read_err = |source| PackError::Read {
            path: path.clone(),
            source,
        };
        let entry_name = format!("./{}", entry.rel.to_string_lossy());
        match entry.meta.kind {
            Kind::Dir => {
                let header = header_for(&entry.meta, tar::EntryType::Directory, 0);
                append_named(
                    builder,
                    header,
                    &format!("{entry_name}/"),
                    None,
                    io::empty(),
                )
                .map_err(read_err)?;
            }
            Kind::File => {
                let file = entry.open_file()?;
                let size = file.metadata().map_err(read_err)?.len();
                total = total.saturating_add(size);
                if total > limits.max_bytes {
                    return Err(PackError::TooLarge {
                        limit_mb: limits.max_bytes >> 20,
                    });
                }
                let header = header_for(&entry.meta, tar::EntryType::Regular, size);
                append_named(builder, header, &entry_name, None, file.take(size))
                    .map_err(read_err)?;
            }
            Kind::Symlink => {
                let target = entry.read_link()?;
                let header = header_for(&entry.meta, tar::EntryType::Symlink, 0);
                let target = target.to_string_lossy().into_owned();
                append_named(builder, header, &entry_name, Some(&target), io::empty())
                    .map_err(read_err)?;
            }
            Kind::Special(kind) => return Err(PackError::Special { path, kind }),
        }
        Ok(Flow::Descend)
    })
}

/// Appends an entry with its name exactly as given (the `tar` crate's path setters drop the
/// leading `./` that Cloud Foundry droplets carry). Names or link targets that do not fit the
/// 100-byte header fields go in GNU long-name records, as GNU tar writes them.
fn append_named<W: Write>(
    builder: &mut tar::Builder<W>,
    mut header: tar::Header,
    name: &str,
    link: Option<&str>,
    data: impl io::Read,
) -> io::Result<()> {
    const FIELD: usize = 100;
    let long_record = |kind: tar::EntryType, value: &str| {
        let mut record = tar::Header::new_gnu();
        let marker = b"././@LongLink";
        record.as_old_mut().name[..marker.len()].copy_from_slice(marker);
        record.set_mode(0o644);
        record.set_entry_type(kind);
        record.set_size(value.len() as u64 + 1);
        record.set_cksum();
        record
    };
    if name.len() > FIELD {
        let record = long_record(tar::EntryType::GNULongName, name);
        builder.append(&record, [name.as_bytes(), b"\0"].concat().as_slice())?;
    }
    if let Some(link) = link {
        header.set_entry_type(tar::EntryType::Symlink);
        if link.len() > FIELD {
            let record = long_record(tar::EntryType::GNULongLink, link);
            builder.append(&record, [link.as_bytes(), b"\0"].concat().as_slice())?;
        }
        let field = &mut header.as_old_mut().linkname;
        let n = link.len().min(FIELD);
        field[..n].copy_from_slice(&link.as_bytes()[..n]);
    }
    let field = &mut header.as_old_mut().name;
    let n = name.len().min(FIELD);
    field.fill(0);
    field[..n].copy_from_slice(&name.as_bytes()[..n]);
    header.set_cksum();
    builder.append(&header, data)
}

/// A `Write` that gzips in parallel: full blocks go to worker threads; a writer thread puts
/// the compressed members back in order and hashes them on the way to the file.
struct ParallelGz {
    buffer: Vec<u8>,
    next_seq: u64,
    jobs: Option<crossbeam_channel::Sender<(u64, Vec<u8>)>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<io::Result<(u64, String, String)>>>,
}

impl ParallelGz {
    fn new(mut output: File, level: u32, threads: usize) -> ParallelGz {
        // Many workers take from one queue: a multi-consumer channel, bounded so a fast tar
        // walk cannot queue the whole droplet in memory.
        let (job_tx, job_rx) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(threads * 2);
        let (done_tx, done_rx) = mpsc::channel::<(u64, io::Result<Vec<u8>>)>();
        let workers = (0..threads)
            .map(|_| {
                let job_rx = job_rx.clone();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    while let Ok((seq, block)) = job_rx.recv() {
                        let mut encoder = GzEncoder::new(
                            Vec::with_capacity(block.len() / 2),
                            Compression::new(level.min(9)),
                        );
                        let compressed = encoder.write_all(&block).and_then(|()| encoder.finish());
                        if done_tx.send((seq, compressed)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            let mut size = 0u64;
            let mut sha1 = Sha1::new();
            let mut sha256 = Sha256::new();
            let mut out = io::BufWriter::with_capacity(1 << 20, &mut output);
            for (seq, compressed) in done_rx {
                pending.insert(seq, compressed?);
                while let Some(block) = pending.remove(&next) {
                    sha1.update(&block);
                    sha256.update(&block);
                    size += block.len() as u64;
                    out.write_all(&block)?;
                    next += 1;
                }
            }
            if !pending.is_empty() {
                return Err(io::Error::other("a compression worker stopped early"));
            }
            out.flush()?;
            Ok((
                size,
                hex::encode(sha1.finalize()),
                hex::encode(sha256.finalize()),
            ))
        });
        ParallelGz {
            buffer: Vec::with_capacity(BLOCK_SIZE),
            next_seq: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn dispatch(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() && self.next_seq > 0 {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.buffer, Vec::with_capacity(BLOCK_SIZE));
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("droplet writer already finished"))?;
        jobs.send((self.next_seq, block))
            .map_err(|_| io::Error::other("droplet compression stopped"))?;
        self.next_seq += 1;
        Ok(())
    }

    /// Flushes the last block and waits for everything to reach the file.
    fn finish(mut self) -> io::Result<(u64, String, String)> {
        let dispatched = self.dispatch();
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let written = match self.writer.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("droplet writer thread failed")),
        };
        dispatched?;
        written
    }
}

impl Write for ParallelGz {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = BLOCK_SIZE - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == BLOCK_SIZE {
                self.dispatch()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
