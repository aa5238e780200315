//! Installed buildpacks and their order.
//!
//! A directory with an executable `bin/detect`, `bin/supply` or `bin/finalize` is a classic
//! buildpack, whatever else it holds: many public Heroku buildpacks ship a `buildpack.toml` of
//! Heroku's own (`[buildpack] name`, `[publish.Ignore]`, no `id`), which may give the name and
//! version but never decides the kind. Otherwise a directory with a `buildpack.toml` naming a
//! component (id, name, version, what it may fetch, extra environment) is a wasm buildpack.
//! The configured directories are scanned in order; `buildpack_order` can put ids first.
//! Detection runs in that order and the first match wins. A buildpack that cannot be read is
//! skipped (and reported) rather than failing every staging.

pub mod classic;
pub mod runners;
pub mod store;
pub mod wasm;

use crate::tenant_fs::{Links, TenantDir};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Largest `buildpack.toml` or `VERSION` read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The scripts whose presence makes a directory a classic buildpack (Heroku's `detect`,
/// Cloud Foundry's `supply`/`finalize`; a CF buildpack may have no detect at all).
const CLASSIC_SCRIPTS: [&str; 3] = ["bin/detect", "bin/supply", "bin/finalize"];

/// Why the installed buildpacks could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BuildpackError {
    #[error("reading buildpack directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("buildpack {path} has no component {component}")]
    MissingComponent { path: PathBuf, component: String },
    #[error(
        "{path} is neither a wasm buildpack (buildpack.toml) nor a classic one (bin/detect, bin/supply or bin/finalize)"
    )]
    NotABuildpack { path: PathBuf },
    #[error("unpacking buildpack archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("no buildpack named {name:?} is installed (installed: {installed})")]
    NotFound { name: String, installed: String },
    #[error("another buildpack has the id {id:?} ({kept})", kept = kept.display())]
    Duplicate { id: String, kept: PathBuf },
}

/// `buildpack.toml` as the host reads it. Buildpacks may keep more tables (such as
/// `[[dependencies]]`) for themselves.
#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    buildpack: Identity,
    #[serde(default)]
    fetch: FetchSection,
    /// Variables set in every phase of this buildpack.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Identity {
    id: String,
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    /// The component file, relative to the buildpack directory.
    #[serde(default = "default_component")]
    component: String,
}

fn default_component() -> String {
    "buildpack.wasm".to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
struct FetchSection {
    #[serde(default)]
    allow: Vec<String>,
}

/// How a buildpack runs.
#[derive(Debug, Clone)]
pub enum BuildpackKind {
    /// A WebAssembly component.
    Wasm { component: PathBuf },
    /// Executables in `bin/`, run in containers.
    Classic { mode: classic::ClassicMode },
}

/// One installed buildpack.
#[derive(Debug, Clone)]
pub struct Buildpack {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    /// The buildpack's directory, mounted read-only at `/buildpack`.
    pub dir: PathBuf,
    pub kind: BuildpackKind,
    /// URL prefixes the buildpack declares it downloads from.
    pub fetch_allow: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Buildpack {
    /// Reads the buildpack in `dir`: a classic one if it has an executable `bin/detect`,
    /// `bin/supply` or `bin/finalize`; else a wasm one if it has a `buildpack.toml`; else a
    /// classic one if it has those scripts at all (not executable: running them says so).
    pub fn load(dir: &Path) -> Result<Buildpack, BuildpackError> {
        let dir = &dir.canonicalize().map_err(|source| BuildpackError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        // An admin buildpack's files are a tenant's: read beneath its directory, capped.
        let manifest_path = dir.join("buildpack.toml");
        let read_err = |e: crate::tenant_fs::TenantFsError| BuildpackError::Read {
            path: manifest_path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let root = TenantDir::open(dir).map_err(read_err)?;
        let scripts = classic_scripts(&root);
        if scripts.executable {
            return Ok(Self::load_classic(dir, &root));
        }
        let text = root
            .read_string(
                Path::new("buildpack.toml"),
                Links::Beneath,
                MAX_MANIFEST_BYTES,
            )
            .map_err(read_err)?;
        let Some(text) = text else {
            if scripts.present {
                return Ok(Self::load_classic(dir, &root));
            }
            return Err(BuildpackError::NotABuildpack {
                path: dir.to_path_buf(),
            });
        };
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BuildpackError::Manifest {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        let id = manifest.buildpack.id.trim().to_string();
        if id.is_empty() || id.contains(['/', '\\']) {
            return Err(BuildpackError::Manifest {
                path: manifest_path,
                message: format!("invalid buildpack id {id:?}"),
            });
        }
        // The component is named relative to the buildpack and stays inside it.
        let plain = Path::new(&manifest.buildpack.component)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(BuildpackError::Manifest {
                path: manifest_path,
                message: format!(
                    "component {:?} must be a path inside the buildpack",
                    manifest.buildpack.component
                ),
            });
        }
        let is_file = root
            .open_file(Path::new(&manifest.buildpack.component), Links::Beneath)
            .is_ok();
        if !is_file {
            return Err(BuildpackError::MissingComponent {
                path: dir.to_path_buf(),
                component: manifest.buildpack.component,
            });
        }
        let component = dir.join(&manifest.buildpack.component);
        Ok(Buildpack {
            id,
            name: manifest.buildpack.name,
            version: manifest.buildpack.version,
            description: manifest.buildpack.description,
            dir: dir.to_path_buf(),
            kind: BuildpackKind::Wasm { component },
            fetch_allow: manifest.fetch.allow,
            env: manifest.env.into_iter().collect(),
        })
    }

    /// A classic buildpack: named after its directory; a `buildpack.toml` (Heroku's own
    /// format) or `VERSION` may add a display name and version, and nothing in them can make
    /// loading fail.
    fn load_classic(dir: &Path, root: &TenantDir) -> Buildpack {
        let has = |script: &str| root.open_file(Path::new(script), Links::Beneath).is_ok();
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "classic".into());
        let heroku = heroku_manifest(dir, root);
        let version = root
            .read_string(Path::new("VERSION"), Links::Beneath, MAX_MANIFEST_BYTES)
            .ok()
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or(heroku.version)
            .unwrap_or_else(|| "unknown".into());
        let mode = if has("bin/supply") || has("bin/finalize") {
            classic::ClassicMode::CloudFoundry
        } else {
            classic::ClassicMode::Heroku
        };
        Buildpack {
            name: heroku.name.unwrap_or_else(|| id.clone()),
            id,
            version,
            description: heroku.description.unwrap_or_default(),
            dir: dir.to_path_buf(),
            kind: BuildpackKind::Classic { mode },
            fetch_allow: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Unpacks a classic buildpack archive (`.zip`, `.tgz`) into `unpack_root/<sha256>`
    /// (once) and loads it; a single top-level folder is looked through.
    pub fn load_archive(archive: &Path, unpack_root: &Path) -> Result<Buildpack, BuildpackError> {
        use sha2::Digest;
        let archive_err = |message: String| BuildpackError::Archive {
            path: archive.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(archive).map_err(|e| archive_err(e.to_string()))?;
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        let target = unpack_root.join(&digest[..32]);
        if !target.is_dir() {
            std::fs::create_dir_all(unpack_root).map_err(|e| archive_err(e.to_string()))?;
            let temp = tempfile::Builder::new()
                .prefix(".unpack-")
                .tempdir_in(unpack_root)
                .map_err(|e| archive_err(e.to_string()))?;
            let limits = crate::droplet::UnpackLimits {
                max_bytes: 1 << 30,
                max_files: 100_000,
                max_depth: 128,
            };
            crate::droplet::unpack_source(archive, &temp.path().join("bp"), limits)
                .map_err(|e| archive_err(e.to_string()))?;
            std::fs::rename(temp.path().join("bp"), &target)
                .map_err(|e| archive_err(e.to_string()))?;
        }
        let mut root = target.clone();
        let entries: Vec<_> = std::fs::read_dir(&target)
            .map_err(|e| archive_err(e.to_string()))?
            .filter_map(Result::ok)
            .collect();
        // One real top-level directory (not a link) is looked through.
        if entries.len() == 1
            && entries[0].file_type().is_ok_and(|t| t.is_dir())
            && !target.join("bin").exists()
        {
            root = entries[0].path();
        }
        let mut buildpack = Self::load(&root)?;
        if matches!(buildpack.kind, BuildpackKind::Classic { .. }) {
            let stem = archive
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = stem
                .trim_end_matches(".zip")
                .trim_end_matches(".tgz")
                .trim_end_matches(".tar.gz")
                .to_string();
            // A name from the buildpack's own manifest is kept; the unpacked directory's
            // (a digest) is not a name.
            if buildpack.name == buildpack.id {
                buildpack.name = stem.clone();
            }
            buildpack.id = stem;
        }
        Ok(buildpack)
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            BuildpackKind::Wasm { .. } => "wasm",
            BuildpackKind::Classic {
                mode: classic::ClassicMode::Heroku,
            } => "classic",
            BuildpackKind::Classic {
                mode: classic::ClassicMode::CloudFoundry,
            } => "cf",
        }
    }

    fn is_archive(path: &Path) -> bool {
        let name = path.to_string_lossy();
        path.is_file()
            && (name.ends_with(".zip") || name.ends_with(".tgz") || name.ends_with(".tar.gz"))
    }

    /// Whether `dir` looks like a buildpack directory of either kind (a cheap check before
    /// [`Buildpack::load`], which decides).
    fn looks_like_dir(dir: &Path) -> bool {
        dir.join("buildpack.toml").is_file()
            || CLASSIC_SCRIPTS
                .iter()
                .any(|script| dir.join(script).is_file())
    }
}

/// Which classic scripts a directory holds.
struct ClassicScripts {
    /// At least one is a regular file (beneath the directory).
    present: bool,
    /// At least one of those is executable.
    executable: bool,
}

fn classic_scripts(root: &TenantDir) -> ClassicScripts {
    let mut found = ClassicScripts {
        present: false,
        executable: false,
    };
    for script in CLASSIC_SCRIPTS {
        if let Ok(file) = root.open_file(Path::new(script), Links::Beneath) {
            found.present = true;
            found.executable |= file
                .metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
        }
    }
    found
}

/// What a classic buildpack's optional `buildpack.toml` may say about it.
#[derive(Default)]
struct HerokuManifest {
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
}

/// Reads the `[buildpack]` table of a classic buildpack's `buildpack.toml` (Heroku's format:
/// `name`, maybe `version`, `description`, beside tables such as `[publish.Ignore]`). The
/// file is the buildpack author's, not a contract with this host: anything unreadable in it
/// is ignored (and logged), never a reason to refuse the buildpack.
fn heroku_manifest(dir: &Path, root: &TenantDir) -> HerokuManifest {
    let text = match root.read_string(
        Path::new("buildpack.toml"),
        Links::Beneath,
        MAX_MANIFEST_BYTES,
    ) {
        Ok(Some(text)) => text,
        Ok(None) => return HerokuManifest::default(),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "ignoring the classic buildpack's buildpack.toml: {e}");
            return HerokuManifest::default();
        }
    };
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "ignoring the classic buildpack's buildpack.toml: {e}");
            return HerokuManifest::default();
        }
    };
    let Some(buildpack) = table.get("buildpack").and_then(toml::Value::as_table) else {
        return HerokuManifest::default();
    };
    let field = |key: &str| {
        buildpack
            .get(key)
            .and_then(toml::Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    HerokuManifest {
        name: field("name"),
        version: field("version"),
        description: field("description"),
    }
}

/// A buildpack in a buildpack directory that could not be read: left out, with the reason.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: Arc<BuildpackError>,
}

/// The installed buildpacks, in detection order, and those left out.
#[derive(Debug, Clone, Default)]
pub struct BuildpackSet {
    buildpacks: Vec<Buildpack>,
    skipped: Vec<Skipped>,
}

impl BuildpackSet {
    /// Scans `dirs` (each holding one sub-directory or archive per buildpack, in name order,
    /// or being one buildpack itself), then moves the ids in `order` to the front. A
    /// buildpack that cannot be read, or whose id was already seen, is logged and skipped:
    /// one broken buildpack must not stop every app from staging. Only a directory that
    /// cannot be listed at all is an error.
    pub fn discover(
        dirs: &[PathBuf],
        order: &[String],
        unpack_root: &Path,
    ) -> Result<BuildpackSet, BuildpackError> {
        let mut set = BuildpackSet::default();
        for dir in dirs {
            if Buildpack::looks_like_dir(dir) {
                set.add(dir, Buildpack::load(dir));
                continue;
            }
            let entries = std::fs::read_dir(dir).map_err(|source| BuildpackError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut subdirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| Buildpack::looks_like_dir(p) || Buildpack::is_archive(p))
                .collect();
            subdirs.sort();
            for subdir in subdirs {
                let loaded = if Buildpack::is_archive(&subdir) {
                    Buildpack::load_archive(&subdir, unpack_root)
                } else {
                    Buildpack::load(&subdir)
                };
                set.add(&subdir, loaded);
            }
        }
        let mut buildpacks = std::mem::take(&mut set.buildpacks);
        let rank = |bp: &Buildpack| {
            order
                .iter()
                .position(|id| *id == bp.id)
                .unwrap_or(order.len())
        };
        // Stable sort: unnamed buildpacks keep directory order.
        buildpacks.sort_by_key(rank);
        set.buildpacks = buildpacks;
        Ok(set)
    }

    /// Keeps a loaded buildpack, or records (and logs) why `path` was left out.
    fn add(&mut self, path: &Path, loaded: Result<Buildpack, BuildpackError>) {
        let reason = match loaded {
            Ok(buildpack) => match self.buildpacks.iter().find(|bp| bp.id == buildpack.id) {
                None => {
                    self.buildpacks.push(buildpack);
                    return;
                }
                Some(existing) => BuildpackError::Duplicate {
                    id: buildpack.id,
                    kept: existing.dir.clone(),
                },
            },
            Err(error) => error,
        };
        tracing::warn!(path = %path.display(), "skipping buildpack: {reason}");
        self.skipped.push(Skipped {
            path: path.to_path_buf(),
            reason: Arc::new(reason),
        });
    }

    pub fn from_list(buildpacks: Vec<Buildpack>) -> BuildpackSet {
        BuildpackSet {
            buildpacks,
            skipped: Vec::new(),
        }
    }

    /// `buildpacks`, with what a discovery left out carried along (for listings).
    pub fn with_skipped(buildpacks: Vec<Buildpack>, skipped: Vec<Skipped>) -> BuildpackSet {
        BuildpackSet {
            buildpacks,
            skipped,
        }
    }

    /// The buildpacks [`BuildpackSet::discover`] left out, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    pub fn iter(&self) -> impl Iterator<Item = &Buildpack> {
        self.buildpacks.iter()
    }

    pub fn len(&self) -> usize {
        self.buildpacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buildpacks.is_empty()
    }

    /// A buildpack by id, or by the path of its directory or archive.
    pub fn find(&self, name: &str, unpack_root: &Path) -> Result<Buildpack, BuildpackError> {
        if let Some(bp) = self.buildpacks.iter().find(|bp| bp.id == name) {
            return Ok(bp.clone());
        }
        let path = Path::new(name);
        if Buildpack::looks_like_dir(path) {
            return Buildpack::load(path);
        }
        if Buildpack::is_archive(path) {
            return Buildpack::load_archive(path, unpack_root);
        }
        Err(BuildpackError::NotFound {
            name: name.to_string(),
            installed: self
                .buildpacks
                .iter()
                .map(|bp| bp.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}
