//! Installed buildpacks and their order.
//!
//! A buildpack is a directory with a `buildpack.toml` (id, name, version, what it may fetch,
//! extra environment) and, for a wasm buildpack, its component (`buildpack.wasm`). The
//! configured directories are scanned in order; `buildpack_order` can put ids first. Detection
//! runs in that order and the first match wins.

pub mod bindings;
pub mod check;
pub mod classic;
pub mod componentize;
pub mod contract;
pub mod scaffold;
pub mod store;
pub mod wasm;

use crate::tenant_fs::{Links, TenantDir};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Largest `buildpack.toml` or `VERSION` read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

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
    #[error("{path} is neither a wasm buildpack (buildpack.toml) nor a classic one (bin/detect)")]
    NotABuildpack { path: PathBuf },
    #[error("unpacking buildpack archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("no buildpack named {name:?} is installed (installed: {installed})")]
    NotFound { name: String, installed: String },
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
    /// Reads the buildpack in `dir`: a wasm buildpack if it has a `buildpack.toml`, else a
    /// classic one if it has `bin/detect`.
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
        let text = root
            .read_string(
                Path::new("buildpack.toml"),
                Links::Beneath,
                MAX_MANIFEST_BYTES,
            )
            .map_err(read_err)?;
        let Some(text) = text else {
            return Self::load_classic(dir, &root);
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

    fn load_classic(dir: &Path, root: &TenantDir) -> Result<Buildpack, BuildpackError> {
        let has = |script: &str| root.open_file(Path::new(script), Links::Beneath).is_ok();
        if !has("bin/detect") {
            return Err(BuildpackError::NotABuildpack {
                path: dir.to_path_buf(),
            });
        }
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "classic".into());
        let version = root
            .read_string(Path::new("VERSION"), Links::Beneath, MAX_MANIFEST_BYTES)
            .ok()
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let mode = if has("bin/supply") || has("bin/finalize") {
            classic::ClassicMode::CloudFoundry
        } else {
            classic::ClassicMode::Heroku
        };
        Ok(Buildpack {
            name: id.clone(),
            id,
            version,
            description: String::new(),
            dir: dir.to_path_buf(),
            kind: BuildpackKind::Classic { mode },
            fetch_allow: Vec::new(),
            env: Vec::new(),
        })
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
            buildpack.id = stem.clone();
            buildpack.name = stem;
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
}

/// The installed buildpacks, in detection order.
#[derive(Debug, Clone, Default)]
pub struct BuildpackSet {
    buildpacks: Vec<Buildpack>,
}

impl BuildpackSet {
    /// Scans `dirs` (each holding one sub-directory per buildpack, in name order), then moves
    /// the ids in `order` to the front. A later buildpack with an id already seen is skipped.
    pub fn discover(
        dirs: &[PathBuf],
        order: &[String],
        unpack_root: &Path,
    ) -> Result<BuildpackSet, BuildpackError> {
        let mut buildpacks: Vec<Buildpack> = Vec::new();
        for dir in dirs {
            if dir.join("buildpack.toml").is_file() || dir.join("bin/detect").is_file() {
                push_unique(&mut buildpacks, Buildpack::load(dir)?);
                continue;
            }
            let entries = std::fs::read_dir(dir).map_err(|source| BuildpackError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut subdirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.join("buildpack.toml").is_file()
                        || p.join("bin/detect").is_file()
                        || Buildpack::is_archive(p)
                })
                .collect();
            subdirs.sort();
            for subdir in subdirs {
                let buildpack = if Buildpack::is_archive(&subdir) {
                    Buildpack::load_archive(&subdir, unpack_root)?
                } else {
                    Buildpack::load(&subdir)?
                };
                push_unique(&mut buildpacks, buildpack);
            }
        }
        let rank = |bp: &Buildpack| {
            order
                .iter()
                .position(|id| *id == bp.id)
                .unwrap_or(order.len())
        };
        // Stable sort: unnamed buildpacks keep directory order.
        buildpacks.sort_by_key(rank);
        Ok(BuildpackSet { buildpacks })
    }

    pub fn from_list(buildpacks: Vec<Buildpack>) -> BuildpackSet {
        BuildpackSet { buildpacks }
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
        if path.join("buildpack.toml").is_file() || path.join("bin/detect").is_file() {
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

fn push_unique(list: &mut Vec<Buildpack>, buildpack: Buildpack) {
    if let Some(existing) = list.iter().find(|bp| bp.id == buildpack.id) {
        tracing::warn!(
            id = %buildpack.id,
            kept = %existing.dir.display(),
            skipped = %buildpack.dir.display(),
            "duplicate buildpack id"
        );
        return;
    }
    list.push(buildpack);
}
