//! Installed buildpacks: the agent's own copies in `<base_dir>/buildpacks/`, kept in an order
//! the operator manages, as Cloud Foundry's `cf create-buildpack`, `delete-buildpack` and
//! `update-buildpack -i` do (`dea buildpacks add|remove|move`).
//!
//! Layout: one directory per buildpack, named by its id, and `order.json` listing the ids in
//! detection order. The order file is the truth: it is replaced atomically (written beside,
//! synced, renamed), so a reader sees the old order or the new one, never half of either; a
//! directory it does not name is a leftover of an interrupted change, never detected, and
//! replaced by the next `add` of that id. Every change holds an exclusive `flock` on `.lock`,
//! so two `dea buildpacks` commands cannot interleave their read-modify-write of the order.
//!
//! A buildpack comes in the way an app does: a directory, `.zip` or `.tgz` goes through
//! [`unpack_source`], which walks a directory beneath its descriptor without following links
//! and refuses links that lead out of the tree, FIFOs and devices, so nothing outside the
//! buildpack is read or kept. The copy is checked (it loads as a buildpack; a wasm component
//! implements the buildpack world) in a scratch directory inside the store, then renamed into
//! place: a half-copied buildpack is never visible.

use super::wasm::{LoadError, WasmRuntime};
use super::{Buildpack, BuildpackError, BuildpackKind, BuildpackSet};
use crate::droplet::{UnpackError, UnpackLimits, unpack_source};
use crate::transfer::{TransferError, Transfers};
use rustix::fs::{CWD, FlockOperation, RenameFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The order file's name in the store.
pub const ORDER_FILE: &str = "order.json";
const LOCK_FILE: &str = ".lock";

/// What a buildpack being installed may hold: the limits of a classic buildpack archive
/// named in a staging request (see [`Buildpack::load_archive`]).
const INSTALL_LIMITS: UnpackLimits = UnpackLimits {
    max_bytes: 1 << 30,
    max_files: 100_000,
    max_depth: 128,
};

/// A buildpack that ships inside the `dea` binary: its files (all at its top level) by name.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBuildpack<'a> {
    pub id: &'a str,
    pub files: &'a [(&'a str, &'a [u8])],
}

/// What [`BuildpackStore::add`] asks of a wasm buildpack's component before installing it: that
/// it implements the buildpack world, so one that could never be staged with is refused now
/// rather than at its first staging. Deciding that means reading the component's WIT, which
/// the agent itself never needs; the caller brings the check (`dea buildpacks add` passes
/// `dea_buildpack_tools::check::WorldCheck`) so that this library carries no WIT parser.
pub trait ComponentCheck {
    /// The ways `component` differs from the buildpack world, one sentence each (none: it may
    /// be installed), or why it could not be checked at all (not a component, say).
    fn problems(&self, component: &[u8]) -> Result<Vec<String>, ComponentCheckError>;
}

/// Why a [`ComponentCheck`] could not check a component: the checker's own error, kept as
/// the source of [`StoreError::Component`].
pub type ComponentCheckError = Box<dyn std::error::Error + Send + Sync>;

impl<T: ComponentCheck + ?Sized> ComponentCheck for &T {
    fn problems(&self, component: &[u8]) -> Result<Vec<String>, ComponentCheckError> {
        (**self).problems(component)
    }
}

/// Two checks in turn: the second runs only on a component the first found nothing wrong
/// with (`dea buildpacks add` checks the world, then compiles).
impl<A: ComponentCheck, B: ComponentCheck> ComponentCheck for (A, B) {
    fn problems(&self, component: &[u8]) -> Result<Vec<String>, ComponentCheckError> {
        let problems = self.0.problems(component)?;
        if !problems.is_empty() {
            return Ok(problems);
        }
        self.1.problems(component)
    }
}

/// Compiling the component into the runtime's on-disk cache, as a check: a component the
/// agent would refuse to load (an import it does not give) is refused now, and one it would
/// load is compiled once, at install time, so the agent's first staging with it reads
/// compiled code instead of compiling (seconds for the Python buildpack). The agent shares
/// the cache when it runs with the same configuration (`wasm.cache_dir` and the engine
/// settings, which are part of the cache key).
impl ComponentCheck for WasmRuntime {
    fn problems(&self, component: &[u8]) -> Result<Vec<String>, ComponentCheckError> {
        match self.precompile(component, Path::new("the component")) {
            Ok(_) => Ok(Vec::new()),
            Err(error @ LoadError::ForbiddenImport { .. }) => Ok(vec![error.to_string()]),
            Err(error) => Err(Box::new(error)),
        }
    }
}

/// Why installed buildpacks could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    OrderFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} names {id:?}, which is not a valid buildpack id", path.display())]
    OrderEntry { path: PathBuf, id: String },
    #[error("copying buildpack {}: {source}", path.display())]
    Copy { path: PathBuf, source: UnpackError },
    #[error("{} is neither a wasm buildpack (buildpack.toml) nor a classic one (bin/detect)", path.display())]
    NotABuildpack { path: PathBuf },
    #[error("{} cannot be installed: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: BuildpackError,
    },
    #[error("{} cannot be installed: {source}", path.display())]
    Component {
        path: PathBuf,
        source: ComponentCheckError,
    },
    #[error("{} does not implement the buildpack world: {problems}", path.display())]
    WrongWorld { path: PathBuf, problems: String },
    #[error("a wasm buildpack is named by its buildpack.toml ({id}), not --name {name}")]
    NameMismatch { id: String, name: String },
    #[error("buildpack {id} is already installed (dea buildpacks remove {id} first)")]
    AlreadyInstalled { id: String },
    #[error("no buildpack {id} is installed (installed: {installed})")]
    NotInstalled { id: String, installed: String },
    #[error(
        "{id:?} cannot name an installed buildpack: use letters, digits, '.', '_' and '-' \
         (64 at most), starting with a letter or digit"
    )]
    InvalidId { id: String },
    #[error("position {0} is not valid: positions start at 1")]
    Position(usize),
    #[error("downloading buildpack: {source}")]
    Download { url: String, source: TransferError },
    #[error(transparent)]
    Discover(#[from] BuildpackError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An id a store can hold: it becomes a directory name, so no separators, no dot files (the
/// store's own files start with a dot or are `order.json`), and a sane length.
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && id != ORDER_FILE
}

fn checked_id(id: &str) -> Result<(), StoreError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidId { id: id.to_string() })
    }
}

/// `order.json`: the installed ids in detection order.
#[derive(serde::Serialize, serde::Deserialize)]
struct OrderFile {
    buildpacks: Vec<String>,
}

/// Held while the store changes; the lock goes with the descriptor.
struct StoreLock {
    _file: File,
}

/// A buildpack downloaded for installation, kept until it is installed or dropped.
pub struct Downloaded {
    _scratch: tempfile::TempDir,
    pub path: PathBuf,
    /// The name the URL gives (its last path segment without the archive suffix).
    pub name: Option<String>,
}

/// One entry of the order, loaded or not.
pub struct Installed {
    pub id: String,
    pub buildpack: Result<Buildpack, BuildpackError>,
}

/// The installed buildpacks of one state directory.
#[derive(Debug, Clone)]
pub struct BuildpackStore {
    dir: PathBuf,
}

impl BuildpackStore {
    /// The store in `dir` (`<base_dir>/buildpacks`); nothing is created until it changes.
    pub fn new(dir: impl Into<PathBuf>) -> BuildpackStore {
        BuildpackStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn order_path(&self) -> PathBuf {
        self.dir.join(ORDER_FILE)
    }

    /// The installed ids in detection order; `None` for a store never set up.
    pub fn order(&self) -> Result<Option<Vec<String>>, StoreError> {
        let path = self.order_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let file: OrderFile =
            serde_json::from_str(&text).map_err(|source| StoreError::OrderFile {
                path: path.clone(),
                source,
            })?;
        // The ids become paths: a hand-edited file must not lead anywhere else.
        if let Some(bad) = file.buildpacks.iter().find(|id| !valid_id(id)) {
            return Err(StoreError::OrderEntry {
                path,
                id: bad.clone(),
            });
        }
        Ok(Some(file.buildpacks))
    }

    /// Every entry of the order with its buildpack, or why that did not load.
    pub fn installed(&self) -> Result<Vec<Installed>, StoreError> {
        Ok(self
            .order()?
            .unwrap_or_default()
            .into_iter()
            .map(|id| Installed {
                buildpack: Buildpack::load(&self.dir.join(&id)),
                id,
            })
            .collect())
    }

    /// The installed buildpacks that load, in order; one that does not is skipped with a
    /// warning (`dea buildpacks` shows why), so it cannot keep the others from staging.
    pub fn buildpacks(&self) -> Result<Vec<Buildpack>, StoreError> {
        let mut loaded = Vec::new();
        for entry in self.installed()? {
            match entry.buildpack {
                Ok(buildpack) => loaded.push(buildpack),
                Err(error) => {
                    tracing::warn!(id = %entry.id, "installed buildpack skipped: {error}")
                }
            }
        }
        Ok(loaded)
    }

    fn lock(&self) -> Result<StoreLock, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive).map_err(|e| StoreError::Io {
            path,
            source: e.into(),
        })?;
        self.sweep_leftovers();
        Ok(StoreLock { _file: file })
    }

    /// Scratch copies and order files are only made under the lock, so any found by the
    /// holder of the lock were left by a command that was killed midway. Downloads happen
    /// before the lock is taken: one a day old is surely abandoned.
    fn sweep_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let day_old = |entry: &std::fs::DirEntry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 24 * 3600)
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let stale = name.to_str().is_some_and(|n| {
                n.starts_with(".incoming-")
                    || n.starts_with(".order-")
                    || (n.starts_with(".download-") && day_old(&entry))
            });
            if stale && let Err(error) = crate::tenant_fs::remove_tree(&self.dir, &name) {
                tracing::warn!("removing leftover {}: {error}", entry.path().display());
            }
        }
    }

    /// A scratch directory inside the store: on its file system, so what is made there is
    /// renamed into place, and removed with whatever is left when dropped.
    fn scratch(&self, prefix: &str) -> Result<tempfile::TempDir, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.dir)
            .map_err(io_err(&self.dir))
    }

    /// Replaces `order.json`: written beside it, synced, renamed over it, and the rename
    /// synced, so a crash leaves the old order or the new one.
    fn write_order(&self, ids: &[String]) -> Result<(), StoreError> {
        let path = self.order_path();
        let mut temp = tempfile::Builder::new()
            .prefix(".order-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let text = serde_json::to_string_pretty(&OrderFile {
            buildpacks: ids.to_vec(),
        })
        .map_err(|source| StoreError::OrderFile {
            path: path.clone(),
            source,
        })?;
        // Readable like the buildpacks it lists (tempfile makes files 0600).
        let readable = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        temp.write_all(format!("{text}\n").as_bytes())
            .and_then(|()| temp.as_file().set_permissions(readable))
            .and_then(|()| temp.as_file().sync_all())
            .map_err(io_err(temp.path()))?;
        temp.persist(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Moves the checked buildpack at `ready` to `<store>/<id>`. An existing directory there
    /// (the same buildpack being updated, or a leftover) is swapped out in one step
    /// (`RENAME_EXCHANGE`), so the id never points at nothing, and then removed.
    fn put_in_place(&self, ready: &Path, id: &str) -> Result<PathBuf, StoreError> {
        let target = self.dir.join(id);
        match rustix::fs::renameat_with(CWD, ready, CWD, &target, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // `ready` now holds the old buildpack.
                if let (Some(parent), Some(name)) = (ready.parent(), ready.file_name()) {
                    crate::tenant_fs::remove_tree(parent, name).map_err(|e| StoreError::Io {
                        path: ready.to_path_buf(),
                        source: std::io::Error::other(e),
                    })?;
                }
            }
            Err(Errno::NOENT) => std::fs::rename(ready, &target).map_err(io_err(&target))?,
            Err(e) => {
                return Err(StoreError::Io {
                    path: target,
                    source: e.into(),
                });
            }
        }
        Ok(target)
    }

    /// Writes an embedded buildpack into a scratch directory, loads it there and puts it in
    /// place. The caller holds the lock.
    fn place_embedded(&self, embedded: &EmbeddedBuildpack<'_>) -> Result<Buildpack, StoreError> {
        checked_id(embedded.id)?;
        let scratch = self.scratch(".incoming-")?;
        let root = scratch.path().join(embedded.id);
        std::fs::create_dir(&root).map_err(io_err(&root))?;
        for (name, bytes) in embedded.files {
            // Names come from the build, one level only.
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(StoreError::InvalidId {
                    id: format!("{}/{name}", embedded.id),
                });
            }
            let path = root.join(name);
            std::fs::write(&path, bytes).map_err(io_err(&path))?;
        }
        let loaded = Buildpack::load(&root).map_err(|source| StoreError::Invalid {
            path: PathBuf::from(embedded.id),
            source,
        })?;
        if loaded.id != embedded.id {
            return Err(StoreError::NameMismatch {
                id: loaded.id,
                name: embedded.id.to_string(),
            });
        }
        let target = self.put_in_place(&root, embedded.id)?;
        Ok(Buildpack::load(&target)?)
    }

    /// Sets up a store never set up before with `defaults`, in their order. Does nothing
    /// when the store has an order already (the operator's, even an empty one) or there
    /// are no defaults (a later binary that has them may then still set the store up).
    /// Returns what it installed.
    pub fn seed(&self, defaults: &[EmbeddedBuildpack<'_>]) -> Result<Vec<Buildpack>, StoreError> {
        if defaults.is_empty() || self.order_path().exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        // Another command may have set it up while this one waited for the lock.
        if self.order()?.is_some() {
            return Ok(Vec::new());
        }
        let mut installed = Vec::new();
        for embedded in defaults {
            installed.push(self.place_embedded(embedded)?);
        }
        let ids: Vec<String> = installed.iter().map(|bp| bp.id.clone()).collect();
        self.write_order(&ids)?;
        Ok(installed)
    }

    /// Installs `defaults` again (after an upgrade of `dea`, or to bring back one that was
    /// removed): one already installed is replaced in its position, a missing one goes last.
    /// Returns each with whether it replaced an installed one.
    pub fn install_defaults(
        &self,
        defaults: &[EmbeddedBuildpack<'_>],
    ) -> Result<Vec<(Buildpack, bool)>, StoreError> {
        let _lock = self.lock()?;
        let mut order = self.order()?.unwrap_or_default();
        let mut done = Vec::new();
        for embedded in defaults {
            let buildpack = self.place_embedded(embedded)?;
            let replaced = order.contains(&buildpack.id);
            if !replaced {
                order.push(buildpack.id.clone());
            }
            done.push((buildpack, replaced));
        }
        self.write_order(&order)?;
        Ok(done)
    }

    /// Installs the buildpack at `source` (a directory, `.zip` or `.tgz`) at `position`
    /// (1-based; past the end, or none, means last). A wasm buildpack is named by its
    /// `buildpack.toml`; a classic one by `name`, else by the directory or archive it came in.
    /// A wasm buildpack's component must pass `check` first.
    pub fn add(
        &self,
        source: &Path,
        name: Option<&str>,
        position: Option<usize>,
        check: &dyn ComponentCheck,
    ) -> Result<Buildpack, StoreError> {
        if position == Some(0) {
            return Err(StoreError::Position(0));
        }
        let _lock = self.lock()?;
        let mut order = self.order()?.unwrap_or_default();
        let scratch = self.scratch(".incoming-")?;
        let copy = scratch.path().join("copy");
        unpack_source(source, &copy, INSTALL_LIMITS).map_err(|e| match e {
            UnpackError::Missing(_) => StoreError::Io {
                path: source.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            },
            e => StoreError::Copy {
                path: source.to_path_buf(),
                source: e,
            },
        })?;
        let root = if source.is_dir() {
            copy
        } else {
            look_through(&copy)?
        };
        let loaded = Buildpack::load(&root).map_err(|e| match e {
            BuildpackError::NotABuildpack { .. } => StoreError::NotABuildpack {
                path: source.to_path_buf(),
            },
            e => StoreError::Invalid {
                path: source.to_path_buf(),
                source: e,
            },
        })?;
        let id = match &loaded.kind {
            BuildpackKind::Wasm { component } => {
                if let Some(name) = name.filter(|name| *name != loaded.id) {
                    return Err(StoreError::NameMismatch {
                        id: loaded.id,
                        name: name.to_string(),
                    });
                }
                check_component(component, source, check)?;
                loaded.id.clone()
            }
            BuildpackKind::Classic { .. } => match name {
                Some(name) => name.to_string(),
                None => source_name(source).ok_or_else(|| StoreError::InvalidId {
                    id: source.display().to_string(),
                })?,
            },
        };
        checked_id(&id)?;
        if order.contains(&id) {
            return Err(StoreError::AlreadyInstalled { id });
        }
        let target = self.put_in_place(&root, &id)?;
        let at = position.map_or(order.len(), |p| (p - 1).min(order.len()));
        order.insert(at, id);
        self.write_order(&order)?;
        Ok(Buildpack::load(&target)?)
    }

    /// Downloads a buildpack archive from an http(s) `url` into the store's scratch space,
    /// refusing anything over `max_bytes`; [`BuildpackStore::add`] installs it from there.
    pub async fn download(&self, url: &str, max_bytes: u64) -> Result<Downloaded, StoreError> {
        let file_name = url_file_name(url);
        let scratch = self.scratch(".download-")?;
        let path = scratch.path().join(&file_name);
        Transfers::new()
            .download(url, &path, max_bytes)
            .await
            .map_err(|source| StoreError::Download {
                url: url.to_string(),
                source,
            })?;
        Ok(Downloaded {
            _scratch: scratch,
            name: source_name(Path::new(&file_name)),
            path,
        })
    }

    /// Uninstalls `id`: out of the order first, then its files, so an interruption leaves a
    /// leftover directory, never a listed buildpack without its files.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut order = self.order()?.unwrap_or_default();
        let at = self.position_of(&order, id)?;
        order.remove(at);
        self.write_order(&order)?;
        crate::tenant_fs::remove_tree(&self.dir, OsStr::new(id)).map_err(|e| StoreError::Io {
            path: self.dir.join(id),
            source: std::io::Error::other(e),
        })
    }

    /// Moves `id` to `position` (1-based; past the end means last).
    pub fn move_to(&self, id: &str, position: usize) -> Result<(), StoreError> {
        if position == 0 {
            return Err(StoreError::Position(0));
        }
        let _lock = self.lock()?;
        let mut order = self.order()?.unwrap_or_default();
        let at = self.position_of(&order, id)?;
        let id = order.remove(at);
        order.insert((position - 1).min(order.len()), id);
        self.write_order(&order)
    }

    fn position_of(&self, order: &[String], id: &str) -> Result<usize, StoreError> {
        order
            .iter()
            .position(|installed| installed == id)
            .ok_or_else(|| StoreError::NotInstalled {
                id: id.to_string(),
                installed: order.join(", "),
            })
    }
}

/// The component against the buildpack world, before it is installed: one that could never
/// be staged with is refused now rather than at its first staging.
fn check_component(
    component: &Path,
    source: &Path,
    check: &dyn ComponentCheck,
) -> Result<(), StoreError> {
    let bytes = std::fs::read(component).map_err(io_err(component))?;
    let problems = check
        .problems(&bytes)
        .map_err(|source_error| StoreError::Component {
            path: source.to_path_buf(),
            source: source_error,
        })?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(StoreError::WrongWorld {
        path: source.to_path_buf(),
        problems: problems.join("; "),
    })
}

/// An archive's buildpack may sit in one top-level folder (as GitHub and `zip -r` make
/// them): that folder is the buildpack when the top level has nothing else.
fn look_through(copy: &Path) -> Result<PathBuf, StoreError> {
    if copy.join("buildpack.toml").exists() || copy.join("bin").exists() {
        return Ok(copy.to_path_buf());
    }
    let entries: Vec<_> = std::fs::read_dir(copy)
        .map_err(io_err(copy))?
        .filter_map(Result::ok)
        .collect();
    match entries.as_slice() {
        // `file_type` does not follow links: a link to a folder is not looked through.
        [only] if only.file_type().is_ok_and(|t| t.is_dir()) => Ok(only.path()),
        _ => Ok(copy.to_path_buf()),
    }
}

/// What a classic buildpack is called when not named: its directory's name, or its
/// archive's without the suffix.
fn source_name(source: &Path) -> Option<String> {
    let named = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let name = named.file_name()?.to_string_lossy().into_owned();
    let stem = [".tar.gz", ".tgz", ".zip"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(&name);
    (!stem.is_empty()).then(|| stem.to_string())
}

/// A safe local file name for a download: the URL's last path segment, reduced to the
/// characters an id may hold (the format is told by content, not by this name).
fn url_file_name(url: &str) -> String {
    let segment = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut segments| segments.next_back().map(str::to_string))
        })
        .unwrap_or_default();
    let cleaned: String = segment
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "buildpack.zip".to_string()
    } else {
        cleaned.to_string()
    }
}

/// The buildpacks detection runs over, in order: the installed ones (`store`) in their
/// positions, then those found in `extra_dirs`, ordered among themselves by `order`. A
/// missing extra directory is skipped with a warning; a buildpack whose id came earlier is
/// skipped too (the installed copy wins).
pub fn detection_set(
    store: Option<&BuildpackStore>,
    extra_dirs: &[PathBuf],
    order: &[String],
    unpack_root: &Path,
) -> Result<BuildpackSet, StoreError> {
    let mut all = match store {
        Some(store) => store.buildpacks()?,
        None => Vec::new(),
    };
    let existing: Vec<PathBuf> = extra_dirs
        .iter()
        .filter(|dir| {
            let exists = dir.exists();
            if !exists {
                tracing::warn!(dir = %dir.display(), "buildpack directory does not exist");
            }
            exists
        })
        .cloned()
        .collect();
    let extra = BuildpackSet::discover(&existing, order, unpack_root)?;
    for buildpack in extra.iter() {
        match all.iter().find(|seen| seen.id == buildpack.id) {
            Some(kept) => tracing::warn!(
                id = %buildpack.id,
                kept = %kept.dir.display(),
                skipped = %buildpack.dir.display(),
                "duplicate buildpack id"
            ),
            None => all.push(buildpack.clone()),
        }
    }
    Ok(BuildpackSet::with_skipped(all, extra.skipped().to_vec()))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
