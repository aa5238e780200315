//! A staging's workspace: a private directory under the agent's staging directory, with the
//! droplet's tree (`staged/`: the app, its log, what buildpacks add) in memory where it can
//! be.
//!
//! Why memory: every file of the app is created once in the workspace and deleted with it.
//! On a disk file system that is the slow part of staging an app of many files. ext4 without
//! a journal (this project's machines) checks, for each new inode, every inode of its group
//! deleted in the last seconds to minutes (`recently_deleted`), so under the churn of
//! repeated stagings one create costs 0.2 to 1 ms: 8,000 files took 1 to 6 s to create,
//! longer than compressing their 100 MB. A tmpfs creates and frees inodes in constant time,
//! and unmounting it frees the whole tree at once.
//!
//! When: the agent may mount (it runs as root), and every buildpack that could run is a wasm
//! one. A wasm buildpack's writes are made by the agent itself, so the memory is the agent's;
//! a classic buildpack's would be charged to its container's memory limit, and unlike
//! disk-backed page cache, tmpfs pages cannot be written back and reclaimed. Otherwise (or
//! when the mount fails) the workspace is on disk, as before.
//!
//! How much: the mount is capped, in bytes and inodes, so a buildpack cannot fill the
//! machine's memory: room for the largest app source accepted, the largest droplet packed
//! and the staging log. So whatever the disk workspace could turn into a droplet still fits,
//! and a source or droplet too large fails with its own error (not "no space left"). A workspace is named after the agent's process id, so
//! that a later agent can unmount the tmpfs of one that died (a crash skips the removal).

use super::StagingRequest;
use crate::buildpack::{Buildpack, BuildpackKind, BuildpackSet};
use crate::config::Config;
use crate::tenant_fs::{self, TenantDir, WalkLimits};
use nix::mount::{MntFlags, MsFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Caps for a workspace's in-memory `staged/` tree.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemoryCaps {
    pub bytes: u64,
    pub inodes: u64,
}

/// Caps for an in-memory workspace for `request`, when every buildpack that could run for
/// it is a wasm one (see the module's doc); `None` keeps it on disk. `walk` is what the
/// staged tree is packed within.
pub(super) fn memory_caps(
    config: &Config,
    installed: &BuildpackSet,
    request: &StagingRequest,
    walk: WalkLimits,
) -> Option<MemoryCaps> {
    let is_wasm = |bp: &Buildpack| matches!(bp.kind, BuildpackKind::Wasm { .. });
    let candidates: Vec<&Buildpack> = match &request.candidates {
        Some(list) => list.iter().collect(),
        None => installed.iter().collect(),
    };
    // A named buildpack may be any directory or archive: only a wasm candidate's or
    // installed buildpack's id is known to name a wasm buildpack before it is looked up.
    let named_wasm = request.buildpacks.iter().all(|name| {
        candidates
            .iter()
            .copied()
            .chain(installed.iter())
            .find(|bp| bp.id == *name)
            .is_some_and(is_wasm)
    });
    if !(named_wasm && candidates.iter().all(|bp| is_wasm(bp))) {
        return None;
    }
    let mb = config.staging.max_app_size_mb
        + config.instances.max_droplet_mb
        + config.staging.max_log_mb;
    Some(MemoryCaps {
        bytes: mb << 20,
        inodes: walk
            .max_entries
            .saturating_add(config.staging.max_app_files)
            .saturating_add(1024),
    })
}

/// A staging's private directory, removed with [`Workspace::remove`].
#[derive(Debug)]
pub(super) struct Workspace {
    root: PathBuf,
    /// `staged/` is a tmpfs of this workspace's own.
    in_memory: bool,
}

/// Names the tmpfs in the mount table, for an operator reading `/proc/mounts`.
const MOUNT_SOURCE: &str = "dea-staging";

impl Workspace {
    /// Makes a fresh workspace in `staging_dir`, with `staged/` in memory when `memory` is
    /// given and the mount succeeds.
    pub(super) fn create(staging_dir: &Path, memory: Option<MemoryCaps>) -> io::Result<Workspace> {
        std::fs::create_dir_all(staging_dir)?;
        let root = tempfile::Builder::new()
            .prefix(&format!("task-{}-", std::process::id()))
            .tempdir_in(staging_dir)?
            .keep();
        let staged = root.join("staged");
        std::fs::create_dir(&staged)?;
        let in_memory = match memory {
            Some(caps) => match mount_tmpfs(&staged, caps) {
                Ok(()) => true,
                Err(error) => {
                    // Not root, or no tmpfs: the disk will do.
                    tracing::debug!("staging on disk: cannot mount a tmpfs workspace: {error}");
                    false
                }
            },
            None => false,
        };
        Ok(Workspace { root, in_memory })
    }

    pub(super) fn path(&self) -> &Path {
        &self.root
    }

    /// Where the droplet's tree is assembled.
    pub(super) fn staged(&self) -> PathBuf {
        self.root.join("staged")
    }

    pub(super) fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// Removes the workspace: the tmpfs goes at once (lazily, should something still hold
    /// it), the rest the way every tenant tree goes, without following links, off the async
    /// workers.
    pub(super) async fn remove(self) {
        if self.in_memory {
            // Freeing a tree of thousands of files takes tens of milliseconds: blocking
            // work, off the async workers.
            let staged = self.staged();
            let unmounted = tokio::task::spawn_blocking(move || unmount(&staged)).await;
            match unmounted {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(
                    "unmounting staging workspace {}: {error}",
                    self.root.display()
                ),
                Err(error) => tracing::warn!(
                    "unmounting staging workspace {}: {error}",
                    self.root.display()
                ),
            }
        }
        tenant_fs::remove_tree_off_thread(self.root).await;
    }
}

fn mount_tmpfs(target: &Path, caps: MemoryCaps) -> nix::Result<()> {
    // No set-id, device or executable files: nothing in a droplet's tree is run from here
    // (wasm buildpacks cannot run programs).
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let options = format!(
        "size={},nr_inodes={},mode=0755",
        caps.bytes.max(1 << 20),
        caps.inodes.max(1024)
    );
    nix::mount::mount(
        Some(MOUNT_SOURCE),
        target,
        Some("tmpfs"),
        flags,
        Some(options.as_str()),
    )
}

fn unmount(target: &Path) -> nix::Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
}

/// Unmounts the in-memory trees of workspaces whose agent is gone (a crash skips
/// [`Workspace::remove`]) and removes those workspaces, in the background. A workspace whose
/// process still exists, or that is not named after one, is left alone.
pub(super) fn remove_stale(staging_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(staging_dir) else {
        return;
    };
    let Ok(dir) = TenantDir::open(staging_dir) else {
        return;
    };
    let mut stale = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `task-<pid>-<random>`: older workspaces (`task-<random>`) are not named after a
        // process, so nothing says they are stale.
        let Some(pid) = name
            .strip_prefix("task-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // A mount point sits on another device than the directory holding it; neither is
        // followed if it is a link.
        let device = |rel: &Path| {
            dir.meta(rel, tenant_fs::Links::Refuse)
                .ok()
                .flatten()
                .map(|m| (m.kind, m.dev))
        };
        let workspace = Path::new(&name);
        let staged = workspace.join("staged");
        if let (Some((tenant_fs::Kind::Dir, outer)), Some((tenant_fs::Kind::Dir, inner))) =
            (device(workspace), device(&staged))
            && outer != inner
            && let Err(error) = unmount(&staging_dir.join(&staged))
        {
            tracing::warn!("unmounting stale staging workspace {name}: {error}");
            continue;
        }
        stale.push(entry.file_name());
    }
    if stale.is_empty() {
        return;
    }
    let parent = staging_dir.to_path_buf();
    std::thread::spawn(move || {
        for name in stale {
            if let Err(error) = tenant_fs::remove_tree(&parent, &name) {
                tracing::warn!(
                    "removing stale staging workspace {}: {error}",
                    name.to_string_lossy()
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const TMPFS_MAGIC: i64 = 0x0102_1994;

    // The field's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    fn is_tmpfs(path: &Path) -> bool {
        rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == TMPFS_MAGIC)
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    const CAPS: MemoryCaps = MemoryCaps {
        bytes: 4 << 20,
        inodes: 64,
    };

    fn buildpack(id: &str, wasm: bool) -> Buildpack {
        Buildpack {
            id: id.into(),
            name: id.into(),
            version: "1".into(),
            description: String::new(),
            dir: PathBuf::from("/nonexistent"),
            kind: if wasm {
                BuildpackKind::Wasm {
                    component: PathBuf::from("/nonexistent/buildpack.wasm"),
                }
            } else {
                BuildpackKind::Classic {
                    mode: crate::buildpack::classic::ClassicMode::Heroku,
                }
            },
            fetch_allow: Vec::new(),
            env: Vec::new(),
        }
    }

    #[test]
    fn memory_only_when_every_buildpack_that_could_run_is_wasm() {
        let config = Config::default();
        let walk = WalkLimits::default();
        let wasm_only = BuildpackSet::from_list(vec![buildpack("a", true), buildpack("b", true)]);
        let mixed = BuildpackSet::from_list(vec![buildpack("a", true), buildpack("c", false)]);
        let request = StagingRequest::new("app", "out.tgz");
        let caps = memory_caps(&config, &wasm_only, &request, walk).expect("wasm only");
        let mb = config.staging.max_app_size_mb
            + config.instances.max_droplet_mb
            + config.staging.max_log_mb;
        assert_eq!(caps.bytes, mb << 20);
        assert!(caps.inodes > walk.max_entries);
        assert!(memory_caps(&config, &mixed, &request, walk).is_none());

        // A controller's candidates decide, not what is installed.
        let mut offered = StagingRequest::new("app", "out.tgz");
        offered.candidates = Some(vec![buildpack("c", false)]);
        assert!(memory_caps(&config, &wasm_only, &offered, walk).is_none());
        offered.candidates = Some(vec![buildpack("a", true)]);
        assert!(memory_caps(&config, &mixed, &offered, walk).is_some());

        // Named buildpacks: a wasm id, a classic id, or a path nobody knows yet.
        let mut named = StagingRequest::new("app", "out.tgz");
        named.buildpacks = vec!["b".into()];
        assert!(memory_caps(&config, &wasm_only, &named, walk).is_some());
        named.buildpacks = vec!["c".into()];
        named.candidates = Some(vec![buildpack("a", true)]);
        assert!(memory_caps(&config, &mixed, &named, walk).is_none());
        named.buildpacks = vec!["/some/dir".into()];
        assert!(memory_caps(&config, &wasm_only, &named, walk).is_none());
    }

    #[tokio::test]
    async fn an_in_memory_workspace_is_capped_and_goes_whole() {
        let base = tempfile::tempdir().expect("tempdir");
        let workspace = Workspace::create(base.path(), Some(CAPS)).expect("workspace");
        let staged = workspace.staged();
        if !is_root() {
            // Only root mounts: the workspace falls back to the disk.
            assert!(!workspace.in_memory());
            assert!(!is_tmpfs(&staged));
            workspace.remove().await;
            return;
        }
        assert!(workspace.in_memory());
        assert!(is_tmpfs(&staged));
        let name = workspace
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            name.starts_with(&format!("task-{}-", std::process::id())),
            "{name}"
        );
        // The cap holds: a write past 4 MiB fails with "no space".
        std::fs::create_dir(staged.join("app")).expect("app");
        let error =
            std::fs::write(staged.join("app/big"), vec![1u8; 5 << 20]).expect_err("past the cap");
        assert_eq!(
            error.raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        std::fs::remove_file(staged.join("app/big")).expect("the part written");
        std::fs::write(staged.join("app/small"), b"fits").expect("small");
        let root = workspace.path().to_path_buf();
        workspace.remove().await;
        assert!(!root.exists(), "workspace left");
    }

    #[tokio::test]
    async fn on_disk_when_not_asked_and_stale_mounts_are_undone() {
        let base = tempfile::tempdir().expect("tempdir");
        let disk = Workspace::create(base.path(), None).expect("workspace");
        assert!(!disk.in_memory());
        disk.remove().await;
        if !is_root() {
            return;
        }
        // A workspace of a process that is gone (pid numbers stop well below 2^22).
        let stale = base.path().join("task-4999999-abc");
        std::fs::create_dir_all(stale.join("staged")).expect("stale");
        mount_tmpfs(&stale.join("staged"), CAPS).expect("mount");
        std::fs::write(stale.join("staged/file"), b"x").expect("file");
        // And one of a live process (this one) and one not named after a process.
        let live = Workspace::create(base.path(), Some(CAPS)).expect("live");
        std::fs::create_dir_all(base.path().join("task-other/staged")).expect("other");
        std::fs::create_dir_all(base.path().join("task-4999999")).expect("old format");
        remove_stale(base.path());
        assert!(!is_tmpfs(&stale.join("staged")) || !stale.exists());
        for _ in 0..100 {
            if !stale.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!stale.exists(), "stale workspace left");
        assert!(is_tmpfs(&live.staged()), "a live workspace was touched");
        assert!(base.path().join("task-other").exists());
        assert!(base.path().join("task-4999999").exists());
        live.remove().await;
    }
}
