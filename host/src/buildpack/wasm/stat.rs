//! `wasi:filesystem/types` `descriptor.stat-at`, with one system call where wasmtime-wasi
//! makes three.
//!
//! A detect mostly asks whether a file is in the app (`Path::exists` in Rust, `stat` in C):
//! a `stat-at` that follows links. wasmtime-wasi resolves a followed path by opening it
//! beneath the directory (`openat2` with `O_PATH`), `fstat`ing the result and closing it;
//! that made a matching detect a third slower than one that says no. When the path is one
//! plain name, and that name is not a link, following changes nothing: the `lstat` of the
//! name (which wasmtime-wasi itself does in one `statx`, the name never leaving the
//! directory) is the answer. Only then is it used; a link, an error, or a path with more in
//! it goes the way it always did, so what a guest can see is unchanged.

use super::sandbox::SandboxState;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorStat, DescriptorType, HostDescriptor, PathFlags,
};

/// The interface `stat-at` belongs to, as wasmtime-wasi's linker names it.
const INTERFACE: &str = "wasi:filesystem/types@0.2.12";

/// Replaces `descriptor.stat-at` in `linker` (after the WASI interfaces are added).
pub(super) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = linker.instance(INTERFACE).and_then(|mut instance| {
        instance.func_wrap_async(
            "[method]descriptor.stat-at",
            |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
                Box::new(async move {
                    let mut view = store.data_mut().filesystem();
                    let stat = stat_at(&mut view, fd, flags, path).await;
                    Ok((match stat {
                        Ok(stat) => Ok(stat),
                        Err(e) => Err(types::Host::convert_error_code(&mut view, e)?),
                    },))
                })
            },
        )
    });
    linker.allow_shadowing(false);
    added
}

async fn stat_at(
    view: &mut WasiFilesystemCtxView<'_>,
    fd: Resource<Descriptor>,
    flags: PathFlags,
    path: String,
) -> Result<DescriptorStat, FsError> {
    if flags.contains(PathFlags::SYMLINK_FOLLOW) && is_one_name(&path) {
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
    fn told(view: &mut WasiFilesystemCtxView<'_>, stat: Result<DescriptorStat, FsError>) -> String {
        match stat {
            Ok(stat) => format!("{stat:?}"),
            Err(e) => format!(
                "{:?}",
                types::Host::convert_error_code(view, e).expect("code")
            ),
        }
    }

    /// Every kind of entry, followed or not, reads exactly as wasmtime-wasi's own `stat-at`
    /// reads it: files and directories (the short way), links in the mount and out of it,
    /// dangling links, missing names, and paths of more than one name (the long way).
    #[test]
    fn stat_at_answers_as_wasmtime_wasi_does() {
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
        for inline in [true, false] {
            let mut holder = Holder {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            };
            let dir =
                super::super::mounts::open_dir(&mount, FsPerms::ReadOnly, inline).expect("mount");
            let fd = holder.table.push(Descriptor::Dir(dir)).expect("push");
            let mut view = holder.filesystem();
            for path in [
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
            ] {
                for flags in [PathFlags::SYMLINK_FOLLOW, PathFlags::empty()] {
                    let ours = runtime.block_on(stat_at(
                        &mut view,
                        Resource::new_borrow(fd.rep()),
                        flags,
                        path.to_string(),
                    ));
                    let ours = told(&mut view, ours);
                    let theirs = runtime.block_on(view.stat_at(
                        Resource::new_borrow(fd.rep()),
                        flags,
                        path.to_string(),
                    ));
                    let theirs = told(&mut view, theirs);
                    assert_eq!(ours, theirs, "{path:?} {flags:?}");
                }
            }
        }
    }
}
