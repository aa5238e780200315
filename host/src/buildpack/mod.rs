//! Installed buildpacks and their order.
//!
//! A buildpack is a directory with a `buildpack.toml` (id, name, version, what it may fetch,
//! extra environment) and, for a wasm buildpack, its component (`buildpack.wasm`). The
//! configured directories are scanned in order; `buildpack_order` can put ids first. Detection
//! runs in that order and the first match wins.

pub mod wasm;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Reads the buildpack in `dir`.
    pub fn load(dir: &Path) -> Result<Buildpack, BuildpackError> {
        let dir = &dir.canonicalize().map_err(|source| BuildpackError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let manifest_path = dir.join("buildpack.toml");
        let text =
            std::fs::read_to_string(&manifest_path).map_err(|source| BuildpackError::Read {
                path: manifest_path.clone(),
                source,
            })?;
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
        let component = dir.join(&manifest.buildpack.component);
        if !component.is_file() {
            return Err(BuildpackError::MissingComponent {
                path: dir.to_path_buf(),
                component: manifest.buildpack.component,
            });
        }
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

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            BuildpackKind::Wasm { .. } => "wasm",
        }
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
    pub fn discover(dirs: &[PathBuf], order: &[String]) -> Result<BuildpackSet, BuildpackError> {
        let mut buildpacks: Vec<Buildpack> = Vec::new();
        for dir in dirs {
            if dir.join("buildpack.toml").is_file() {
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
                .filter(|p| p.join("buildpack.toml").is_file())
                .collect();
            subdirs.sort();
            for subdir in subdirs {
                push_unique(&mut buildpacks, Buildpack::load(&subdir)?);
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

    /// A buildpack by id, or by the path of its directory.
    pub fn find(&self, name: &str) -> Result<Buildpack, BuildpackError> {
        if let Some(bp) = self.buildpacks.iter().find(|bp| bp.id == name) {
            return Ok(bp.clone());
        }
        let path = Path::new(name);
        if path.join("buildpack.toml").is_file() {
            return Buildpack::load(path);
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
