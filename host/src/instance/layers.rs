//! Droplets unpacked once per SHA-1 and shared: an instance's home is an overlay mount whose
//! read-only lower layer is its droplet's tree and whose upper layer, the instance's own,
//! takes every write of the app.
//!
//! Unpacking a droplet and handing each of its files to the app's user is most of what the
//! agent adds to a start that it does not have to (a 10 MB droplet: ~15 ms of a ~60 ms
//! start). With a shared tree, every start after the first costs one mount, and fifty
//! instances of an app hold one copy of its droplet on disk, not fifty.
//!
//! Why the shared tree stays the droplet's, whatever the tenants do:
//! - it is written once, by the agent, into a scratch directory that is renamed into place
//!   only when complete (checked, owned by the app's user, start command read), and never
//!   changed after;
//! - apps see it only through their overlay, where a write, a `chmod` or a removal lands in
//!   the instance's upper layer (copy-up, whiteouts), never in the tree; the tree's own path
//!   is not inside any container;
//! - a tree is removed only when no registered instance that holds resources names its
//!   droplet, under a lock that starts take while they look it up and mount it.
//!
//! Where overlayfs cannot be used (a kernel without it, `base_dir` on a filesystem that cannot
//! be an upper layer, such as an overlay itself), homes are unpacked per instance as before,
//! after one warning.

use super::InstanceError;
use super::home::prepare_tree;
use crate::droplet::{self, UnpackLimits};
use nix::mount::{MntFlags, MsFlags};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// Unpacked droplets kept for later starts while no instance uses them (the most recently
/// used first): a restart or a scale-up of a recent app skips its unpacking.
const KEEP_UNUSED: usize = 8;

/// The start command of a tree, beside it (the tree itself is the tenant's).
const COMMAND_FILE: &str = "start_command";

/// Shared droplet trees under `<base_dir>/layers/<sha1>/tree`.
pub(super) struct Layers {
    dir: PathBuf,
    /// False once overlayfs was found unusable here (or when configured off).
    usable: AtomicBool,
    /// Starts hold it shared from looking a tree up until their mount stands; eviction
    /// holds it alone, so it never removes a tree a start is about to mount.
    evicting: RwLock<()>,
    /// One unpacking per droplet at a time: concurrent starts of one droplet wait for it.
    unpacking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A droplet's shared tree.
pub(super) struct Tree {
    path: PathBuf,
    /// `staging_info.yml`'s `start_command`.
    pub staged_command: Option<String>,
}

/// Why a home could not be layered.
#[derive(Debug, thiserror::Error)]
pub(super) enum LayerError {
    /// The droplet itself is bad (or the tree could not be written): the start fails.
    #[error(transparent)]
    Droplet(#[from] InstanceError),
    /// Overlayfs cannot be used here: the home is unpacked instead.
    #[error("overlay home at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("overlay home at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No SHA-1 to name the droplet's tree by: this home is unpacked in place.
    #[error("droplet {0:?} has no SHA-1 to share it by")]
    Unkeyed(String),
    /// A path overlayfs' option string cannot carry (`,`, `:` or `\` in `base_dir`).
    #[error("overlay home: {0} cannot be named in overlayfs options")]
    Unnameable(PathBuf),
}

impl Layers {
    pub(super) fn new(base_dir: &Path, enabled: bool) -> Layers {
        let dir = base_dir.join("layers");
        // Scratch trees of an agent that died while unpacking.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".unpacking-")
                {
                    let _ = crate::tenant_fs::remove_tree(&dir, &entry.file_name());
                }
            }
        }
        Layers {
            dir,
            usable: AtomicBool::new(enabled),
            evicting: RwLock::new(()),
            unpacking: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// Makes `instance_dir/home` an overlay over droplet `sha1`'s tree (unpacking `droplet`
    /// into it first if this host has none yet), with the instance's own layer beside it.
    /// Blocking.
    pub(super) fn mount_home(
        &self,
        sha1: &str,
        droplet: &Path,
        instance_dir: &Path,
        limits: UnpackLimits,
        owner: (u32, u32),
    ) -> Result<Tree, LayerError> {
        // The tree's name: only ever a digest the droplet store checked.
        if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LayerError::Unkeyed(sha1.to_string()));
        }
        let _starting = self.evicting.read();
        let tree = self.tree(sha1, droplet, limits, owner)?;
        let home = instance_dir.join("home");
        let upper = instance_dir.join("upper");
        let work = instance_dir.join("work");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Io { path, source }
        };
        for dir in [&home, &upper, &work] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        // The home's root is the upper layer's: the app's, with the droplet root's mode.
        let mode = std::fs::metadata(&tree.path).map_err(io(&tree.path))?;
        std::os::unix::fs::chown(&upper, Some(owner.0), Some(owner.1)).map_err(io(&upper))?;
        std::fs::set_permissions(&upper, mode.permissions()).map_err(io(&upper))?;
        let mut options = String::from("lowerdir=");
        for (key, path) in [
            ("", &tree.path),
            (",upperdir=", &upper),
            (",workdir=", &work),
        ] {
            let text = path
                .to_str()
                .filter(|t| !t.contains([',', ':', '\\']))
                .ok_or_else(|| LayerError::Unnameable(path.clone()))?;
            options.push_str(key);
            options.push_str(text);
        }
        // No inode index (it would lock the shared lower layer to one mount), and none of
        // the features that let an upper layer point elsewhere.
        options.push_str(",index=off,redirect_dir=off,metacopy=off");
        nix::mount::mount(
            Some("dea-home"),
            &home,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|source| LayerError::Mount {
            path: home.clone(),
            source,
        })?;
        Ok(tree)
    }

    /// Stops layering homes, after the first failure to (the warning says why once).
    pub(super) fn give_up(&self, error: &LayerError) {
        if self.usable.swap(false, Ordering::Relaxed) {
            tracing::warn!("unpacking each instance's droplet instead of sharing it: {error}");
        }
    }

    /// The tree of droplet `sha1`, unpacked from `droplet` if this host has none.
    fn tree(
        &self,
        sha1: &str,
        droplet: &Path,
        limits: UnpackLimits,
        owner: (u32, u32),
    ) -> Result<Tree, LayerError> {
        let gate = self
            .unpacking
            .lock()
            .entry(sha1.to_string())
            .or_default()
            .clone();
        let found = {
            let _only = gate.lock();
            self.find_or_unpack(sha1, droplet, limits, owner)
        };
        let mut unpacking = self.unpacking.lock();
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&gate) == 2 {
            unpacking.remove(sha1);
        }
        found
    }

    fn find_or_unpack(
        &self,
        sha1: &str,
        droplet: &Path,
        limits: UnpackLimits,
        owner: (u32, u32),
    ) -> Result<Tree, LayerError> {
        let entry = self.dir.join(sha1);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Io { path, source }
        };
        if let Ok(command) = std::fs::read(entry.join(COMMAND_FILE)) {
            // Most recently used: the last to be evicted.
            if let Ok(file) = std::fs::File::open(entry.join(COMMAND_FILE)) {
                let _ = file.set_modified(SystemTime::now());
            }
            return Ok(Tree {
                path: entry.join("tree"),
                staged_command: decode_command(&command),
            });
        }
        // Root's alone: the trees hold tenants' code, and apps reach theirs only through their
        // overlay (whose lower layer is not looked up through this path).
        crate::private_dir::ensure(&self.dir).map_err(io(&self.dir))?;
        let scratch_name = std::ffi::OsString::from(format!(".unpacking-{sha1}"));
        let scratch = self.dir.join(&scratch_name);
        let _ = crate::tenant_fs::remove_tree(&self.dir, &scratch_name);
        let _ = crate::tenant_fs::remove_tree(&self.dir, std::ffi::OsStr::new(sha1));
        let unpacked = (|| -> Result<Option<String>, LayerError> {
            std::fs::create_dir(&scratch).map_err(io(&scratch))?;
            let tree = scratch.join("tree");
            droplet::unpack_source(droplet, &tree, limits).map_err(InstanceError::from)?;
            let command = prepare_tree(&tree, owner.0, owner.1)?;
            let file = scratch.join(COMMAND_FILE);
            std::fs::write(&file, encode_command(command.as_deref())).map_err(io(&file))?;
            std::fs::rename(&scratch, &entry).map_err(io(&entry))?;
            Ok(command)
        })();
        match unpacked {
            Ok(staged_command) => Ok(Tree {
                path: entry.join("tree"),
                staged_command,
            }),
            Err(e) => {
                let _ = crate::tenant_fs::remove_tree(&self.dir, &scratch_name);
                Err(e)
            }
        }
    }

    /// Removes the trees that no instance in `live()` (droplet SHA-1s of the instances that
    /// hold resources, asked once no start can be between its lookup and its mount) uses,
    /// past the [`KEEP_UNUSED`] most recently used. Blocking.
    pub(super) fn evict(&self, live: impl FnOnce() -> HashSet<String>) {
        let _alone = self.evicting.write();
        let live = live();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut unused: Vec<(SystemTime, std::ffi::OsString)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.len() == 40 && !live.contains(name.as_ref())
            })
            .map(|e| {
                let used = std::fs::metadata(e.path().join(COMMAND_FILE))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (used, e.file_name())
            })
            .collect();
        unused.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        for (_, name) in unused.into_iter().skip(KEEP_UNUSED) {
            if let Err(e) = crate::tenant_fs::remove_tree(&self.dir, &name) {
                tracing::warn!("removing unpacked droplet {}: {e}", name.to_string_lossy());
            }
        }
    }
}

/// Unmounts an instance's overlay home, if it has one (a home unpacked in place is not a
/// mount: nothing to do). Detached, so a process still inside cannot keep it. Blocking.
pub(super) fn unmount_home(instance_dir: &Path) {
    let home = instance_dir.join("home");
    match nix::mount::umount2(&home, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(e) => tracing::warn!("unmounting {}: {e}", home.display()),
    }
}

/// The start command file: `-` alone for none, else `+` and the command (which may be
/// empty or span lines).
fn encode_command(command: Option<&str>) -> Vec<u8> {
    match command {
        None => b"-".to_vec(),
        Some(command) => [b"+", command.as_bytes()].concat(),
    }
}

fn decode_command(bytes: &[u8]) -> Option<String> {
    bytes
        .strip_prefix(b"+")
        .map(|command| String::from_utf8_lossy(command).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees in use always stay; of the others, the most recently used stay.
    #[test]
    fn eviction_keeps_trees_in_use_and_the_most_recent_unused_ones() {
        let base = tempfile::tempdir().expect("tempdir");
        let layers = Layers::new(base.path(), true);
        let now = SystemTime::now();
        let name = |i: usize| format!("{i:040x}");
        // Tree 0 is the oldest; tree 0 and tree 3 are in use.
        for i in 0..12 {
            let entry = base.path().join("layers").join(name(i));
            std::fs::create_dir_all(entry.join("tree")).expect("tree");
            let file = entry.join(COMMAND_FILE);
            std::fs::write(&file, "-").expect("command");
            let used = now - std::time::Duration::from_secs(100 - i as u64);
            let file = std::fs::File::options()
                .write(true)
                .open(&file)
                .expect("open");
            file.set_modified(used).expect("mtime");
        }
        // A scratch tree and a stray file are not trees.
        std::fs::create_dir_all(base.path().join("layers/.unpacking-x")).expect("scratch");
        layers.evict(|| [name(0), name(3)].into_iter().collect());
        let mut left: Vec<String> = std::fs::read_dir(base.path().join("layers"))
            .expect("layers")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = [0, 3, 5, 6, 7, 8, 9, 10, 11, 4]
            .into_iter()
            .map(name)
            .collect();
        expected.push(".unpacking-x".into());
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn a_start_command_round_trips_including_none_and_empty() {
        for command in [None, Some(""), Some("bin/run --flag\nsecond line")] {
            assert_eq!(decode_command(&encode_command(command)).as_deref(), command);
        }
    }
}
