//! `wasi:filesystem/types` `descriptor.stat-at` and `metadata-hash-at`, with one system
//! call where wasmtime-wasi makes four.
//!
//! A detect mostly asks whether a file is in the app (`Path::exists` in Rust, `stat` in C),
//! which wasi-libc turns into a `metadata-hash-at` (for the inode number) and, when the name
//! is there, a `stat-at` that follows links. wasmtime-wasi answers the first with an `lstat`
//! of the name, and the second by opening the path beneath the directory (`openat2` with
//! `O_PATH`), `fstat`ing the result and closing it: a matching detect was a third slower
//! than one that says no.
//!
//! When the path is one plain name and that name is not a link, following changes nothing:
//! the `lstat` of the name (one `statx` beneath the directory's descriptor, the name never
//! leaving it) is the answer to both. So in detect and release, whose mounts are all
//! read-only (nothing changes under them while the guest runs), `metadata-hash-at` keeps
//! the `lstat` it made, and the `stat-at` of the same name in the same directory that follows
//! is answered from it. Everything else (a link to follow, a path of more than one name, an
//! error other than a missing name, any compile) goes the way it always did, and the answers
//! are wasmtime-wasi's, value for value (see the tests).

use super::sandbox::{Lstat, SandboxState};
use rustix::fs::{AtFlags, FileType, Statx, StatxFlags, StatxTimestamp};
use std::sync::Arc;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::FsPerms;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorStat, DescriptorType, ErrorCode, HostDescriptor, MetadataHashValue, PathFlags,
};

/// The interface both belong to, as wasmtime-wasi's linker names it.
const INTERFACE: &str = "wasi:filesystem/types@0.2.12";

/// What these calls need of a phase's state: its WASI view, its last `lstat`, and whether
/// it may take the short way (detect and release: read-only mounts, file calls on the
/// calling thread).
fn parts(state: &mut SandboxState) -> (bool, Option<Lstat>, WasiFilesystemCtxView<'_>) {
    let short = state.read_only();
    let last = state.last_lstat.take();
    (short, last, state.filesystem())
}

/// Replaces `descriptor.stat-at` and `descriptor.metadata-hash-at` in `linker` (after the
/// WASI interfaces are added).
pub(super) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = linker.instance(INTERFACE).and_then(|mut instance| {
        instance.func_wrap_async(
            "[method]descriptor.stat-at",
            |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
                Box::new(async move {
                    let (short, mut last, mut view) = parts(store.data_mut());
                    let stat = stat_at(&mut view, &mut last, short, fd, flags, path).await;
                    let stat = guest_result(&mut view, stat)?;
                    store.data_mut().last_lstat = last;
                    Ok((stat,))
                })
            },
        )?;
        instance.func_wrap_async(
            "[method]descriptor.metadata-hash-at",
            |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
                Box::new(async move {
                    let (short, mut last, mut view) = parts(store.data_mut());
                    let hash = metadata_hash_at(&mut view, &mut last, short, fd, flags, path).await;
                    let hash = guest_result(&mut view, hash)?;
                    store.data_mut().last_lstat = last;
                    Ok((hash,))
                })
            },
        )
    });
    linker.allow_shadowing(false);
    added
}

/// A result as the guest gets it, as wasmtime-wasi's bindings make it: a file-system error
/// becomes its code, anything else traps.
fn guest_result<T>(
    view: &mut WasiFilesystemCtxView<'_>,
    result: Result<T, FsError>,
) -> wasmtime::Result<Result<T, ErrorCode>> {
    Ok(match result {
        Ok(value) => Ok(value),
        Err(e) => Err(types::Host::convert_error_code(view, e)?),
    })
}

async fn stat_at(
    view: &mut WasiFilesystemCtxView<'_>,
    last: &mut Option<Lstat>,
    short: bool,
    fd: Resource<Descriptor>,
    flags: PathFlags,
    path: String,
) -> Result<DescriptorStat, FsError> {
    let follow = flags.contains(PathFlags::SYMLINK_FOLLOW);
    if let Some(lstat) = last.take()
        && short
        && lstat.name == path
        && !(follow && is_link(&lstat.stat))
        && matches!(view.table.get(&fd), Ok(Descriptor::Dir(dir)) if Arc::ptr_eq(&dir.dir, &lstat.dir))
    {
        return Ok(descriptor_stat(&lstat.stat));
    }
    if follow && is_one_name(&path) {
        let borrowed = Resource::new_borrow(fd.rep());
        // `symlink-follow` is the only path flag there is.
        if let Ok(stat) = view
            .stat_at(borrowed, PathFlags::empty(), path.clone())
            .await
            && stat.type_ != DescriptorType::SymbolicLink
        {
            return Ok(stat);
        }
    }
    view.stat_at(fd, flags, path).await
}

async fn metadata_hash_at(
    view: &mut WasiFilesystemCtxView<'_>,
    last: &mut Option<Lstat>,
    short: bool,
    fd: Resource<Descriptor>,
    flags: PathFlags,
    path: String,
) -> Result<MetadataHashValue, FsError> {
    *last = None;
    if short
        && is_one_name(&path)
        && let Ok(Descriptor::Dir(dir)) = view.table.get(&fd)
        && dir.perms == FsPerms::ReadOnly
    {
        let follow = flags.contains(PathFlags::SYMLINK_FOLLOW);
        match rustix::fs::statx(
            &*dir.dir,
            path.as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
            // What wasmtime-wasi asks for, so the answers are the same.
            StatxFlags::BASIC_STATS | StatxFlags::BTIME,
        ) {
            Ok(stat) if !(follow && is_link(&stat)) => {
                let hash = metadata_hash(&stat);
                *last = Some(Lstat {
                    dir: dir.dir.clone(),
                    name: path,
                    stat,
                });
                return Ok(hash);
            }
            // No such name: there is no link to follow either.
            Err(rustix::io::Errno::NOENT) => return Err(ErrorCode::NoEntry.into()),
            _ => {}
        }
    }
    view.metadata_hash_at(fd, flags, path).await
}

fn is_link(stat: &Statx) -> bool {
    FileType::from_raw_mode(stat.stx_mode.into()) == FileType::Symlink
}

/// wasmtime-wasi's hash of a file's identity: std's default hasher over the device and
/// inode numbers, the upper half that xored with a constant.
fn metadata_hash(stat: &Statx) -> MetadataHashValue {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    let dev = rustix::fs::makedev(stat.stx_dev_major, stat.stx_dev_minor);
    (dev, stat.stx_ino).hash(&mut hasher);
    let lower = hasher.finish();
    MetadataHashValue {
        lower,
        upper: lower ^ 4614256656552045848,
    }
}

/// A `statx` as wasmtime-wasi reports it: block and character devices by name, FIFOs and
/// sockets as unknown; a time before 1970, or one the file system does not keep, missing;
/// and (wasmtime-wasi's choice) the birth time as the status-change time.
fn descriptor_stat(stat: &Statx) -> DescriptorStat {
    let time = |t: &StatxTimestamp, kept: StatxFlags| {
        let seconds = u64::try_from(t.tv_sec).ok()?;
        (stat.stx_mask & kept.bits() != 0).then_some(Datetime {
            seconds,
            nanoseconds: t.tv_nsec,
        })
    };
    DescriptorStat {
        type_: match FileType::from_raw_mode(stat.stx_mode.into()) {
            FileType::Directory => DescriptorType::Directory,
            FileType::Symlink => DescriptorType::SymbolicLink,
            FileType::RegularFile => DescriptorType::RegularFile,
            FileType::BlockDevice => DescriptorType::BlockDevice,
            FileType::CharacterDevice => DescriptorType::CharacterDevice,
            _ => DescriptorType::Unknown,
        },
        link_count: u64::from(stat.stx_nlink),
        size: stat.stx_size,
        data_access_timestamp: time(&stat.stx_atime, StatxFlags::ATIME),
        data_modification_timestamp: time(&stat.stx_mtime, StatxFlags::MTIME),
        status_change_timestamp: time(&stat.stx_btime, StatxFlags::BTIME),
    }
}

/// Whether `path` names an entry of the directory itself: not empty, no separator, not `.`
/// or `..` (the only paths whose `lstat` and `stat` differ just by a final link).
fn is_one_name(path: &str) -> bool {
    !path.is_empty() && path != "." && path != ".." && !path.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::ResourceTable;
    use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

    #[test]
    fn only_a_plain_name_takes_the_short_way() {
        for name in ["marker", "package.json", ".env", "...", "a b"] {
            assert!(is_one_name(name), "{name}");
        }
        for path in ["", ".", "..", "a/b", "a/", "/a", "../a", "a\0b"] {
            assert!(!is_one_name(path), "{path:?}");
        }
    }

    struct Holder {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Holder {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    /// What the guest is told, in a comparable form.
    fn told<T: std::fmt::Debug>(
        view: &mut WasiFilesystemCtxView<'_>,
        result: Result<T, FsError>,
    ) -> String {
        format!("{:?}", guest_result(view, result).expect("no trap"))
    }

    const PATHS: &[&str] = &[
        "file",
        "dir",
        "to-file",
        "to-dir",
        "to-outside",
        "up-and-out",
        "dangling",
        "missing",
        "dir/inner",
        "to-dir/inner",
        ".",
        "..",
        "",
        "file/",
    ];

    /// Every kind of entry, followed or not, reads exactly as wasmtime-wasi's own calls read
    /// it: files and directories (the short way), links in the mount and out of it, dangling
    /// links, missing names, and paths of more than one name (the long way); a `stat-at` on
    /// its own, and after a `metadata-hash-at` of the same name or of another one.
    #[test]
    fn answers_are_wasmtime_wasi_s() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let outside = scratch.path().join("outside");
        let mount = scratch.path().join("mount");
        std::fs::create_dir_all(mount.join("dir")).expect("dir");
        std::fs::write(&outside, "secret").expect("outside");
        std::fs::write(mount.join("file"), "12345").expect("file");
        std::fs::write(mount.join("dir/inner"), "1").expect("inner");
        let link = |to: &std::path::Path, name: &str| {
            std::os::unix::fs::symlink(to, mount.join(name)).expect("link")
        };
        link(std::path::Path::new("file"), "to-file");
        link(std::path::Path::new("dir"), "to-dir");
        link(&outside, "to-outside");
        link(std::path::Path::new("../outside"), "up-and-out");
        link(std::path::Path::new("missing"), "dangling");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let flag_sets = [PathFlags::SYMLINK_FOLLOW, PathFlags::empty()];
        for (perms, short) in [
            (FsPerms::ReadOnly, true),
            (FsPerms::ReadOnly, false),
            (FsPerms::ReadWrite, true),
        ] {
            let mut holder = Holder {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            };
            let dir = super::super::mounts::open_dir(&mount, perms, short).expect("mount");
            let fd = holder.table.push(Descriptor::Dir(dir)).expect("push");
            let mut view = holder.filesystem();
            let borrow = || Resource::<Descriptor>::new_borrow(fd.rep());
            let mut last = None;
            for path in PATHS {
                for flags in flag_sets {
                    let context = format!("{path:?} {flags:?} {perms:?} short: {short}");
                    let theirs = runtime.block_on(view.stat_at(borrow(), flags, path.to_string()));
                    let theirs = told(&mut view, theirs);
                    let ours = runtime.block_on(stat_at(
                        &mut view,
                        &mut last,
                        short,
                        borrow(),
                        flags,
                        path.to_string(),
                    ));
                    assert_eq!(told(&mut view, ours), theirs, "stat-at {context}");

                    let hash =
                        runtime.block_on(view.metadata_hash_at(borrow(), flags, path.to_string()));
                    let hash = told(&mut view, hash);
                    let ours = runtime.block_on(metadata_hash_at(
                        &mut view,
                        &mut last,
                        short,
                        borrow(),
                        flags,
                        path.to_string(),
                    ));
                    assert_eq!(told(&mut view, ours), hash, "metadata-hash-at {context}");

                    // After that hash: the same name, then (with a hash in between) each
                    // other name, as a guest might ask.
                    for (then, then_flags) in std::iter::once((*path, flags))
                        .chain(PATHS.iter().flat_map(|p| flag_sets.map(|f| (*p, f))))
                    {
                        let theirs =
                            runtime.block_on(view.stat_at(borrow(), then_flags, then.to_string()));
                        let theirs = told(&mut view, theirs);
                        let ours = runtime.block_on(stat_at(
                            &mut view,
                            &mut last,
                            short,
                            borrow(),
                            then_flags,
                            then.to_string(),
                        ));
                        assert_eq!(
                            told(&mut view, ours),
                            theirs,
                            "stat-at {then:?} {then_flags:?} after the hash of {context}"
                        );
                        let _ = runtime.block_on(metadata_hash_at(
                            &mut view,
                            &mut last,
                            short,
                            borrow(),
                            flags,
                            path.to_string(),
                        ));
                    }
                }
            }
        }
    }
}
