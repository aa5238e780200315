//! Stacks: the root filesystems buildpack scripts and apps run on.
//!
//! A stack is a name (what `STACK` says, what the controller asks for, what `dea.advertise`
//! lists) and a root filesystem. A name in `stacks` with no root filesystem of its own runs on
//! the host's `/usr`, `/bin`, `/lib*` and `/etc`, read-only (the default `cflinuxfs4`, and the
//! old behaviour). A real one is built from Debian's packages with `mmdebstrap` by
//! `dea stack build NAME` into `<base_dir>/stacks/<NAME>/rootfs`, or given by path in
//! `stack_rootfs`. Containers get it read-only, so one tree serves every staging and instance.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a stack could not be built or found.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid stack name {0:?} (letters, digits, '.', '-' and '_')")]
    BadName(String),
    #[error("stack {name} already exists at {path} (remove it first to rebuild)")]
    Exists { name: String, path: PathBuf },
    #[error("building stack {name}: {message}")]
    Build { name: String, message: String },
    #[error("stack {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The packages a stack gets unless told otherwise: what classic buildpacks expect of a
/// build image (Heroku's and Cloud Foundry's stacks carry these and more).
pub const DEFAULT_PACKAGES: &[&str] = &[
    "bash",
    "curl",
    "wget",
    "ca-certificates",
    "git",
    "tar",
    "gzip",
    "zstd",
    "xz-utils",
    "unzip",
    "build-essential",
    "libssl-dev",
    "python3",
    "ruby",
    "procps",
    "locales",
];

/// How to build a stack.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    pub packages: Vec<String>,
    /// An apt mirror URL; default: the host's apt sources.
    pub mirror: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            suite: "bookworm".into(),
            packages: DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect(),
            mirror: None,
        }
    }
}

/// What `dea stack build` records beside a stack's root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackManifest {
    pub name: String,
    pub suite: String,
    pub packages: Vec<String>,
    /// Seconds since the epoch when it was built.
    pub built_at: u64,
}

/// One stack this agent can stage for and run on.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub name: String,
    /// `None`: the host's own directories, read-only.
    pub rootfs: Option<PathBuf>,
}

/// The configured stacks, in order (the first is the default).
#[derive(Debug, Clone, Default)]
pub struct Stacks {
    stacks: Vec<Stack>,
}

/// Where built stacks live.
pub fn stacks_dir(base_dir: &Path) -> PathBuf {
    base_dir.join("stacks")
}

impl Stacks {
    /// The stacks `names` (config `stacks`) resolve to: an explicit `rootfs` entry, else a
    /// stack built under `<base_dir>/stacks/<name>/rootfs`, else the host.
    pub fn resolve(
        names: &[String],
        rootfs: &BTreeMap<String, PathBuf>,
        base_dir: &Path,
    ) -> Stacks {
        let stacks = names
            .iter()
            .map(|name| {
                let built = stacks_dir(base_dir).join(name).join("rootfs");
                let rootfs = rootfs
                    .get(name)
                    .cloned()
                    .or_else(|| built.join("usr").is_dir().then_some(built));
                Stack {
                    name: name.clone(),
                    rootfs,
                }
            })
            .collect();
        Stacks { stacks }
    }

    pub fn get(&self, name: &str) -> Option<&Stack> {
        self.stacks.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<String> {
        self.stacks.iter().map(|s| s.name.clone()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stack> {
        self.stacks.iter()
    }
}

fn check_name(name: &str) -> Result<(), StackError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StackError::BadName(name.to_string()))
    }
}

/// Builds stack `name` with `mmdebstrap` into `<base_dir>/stacks/<name>/rootfs` (through a
/// temporary directory renamed into place, so a half-built stack is never used). Blocking,
/// and minutes long; needs root and `mmdebstrap`.
pub fn build(base_dir: &Path, name: &str, options: &BuildOptions) -> Result<PathBuf, StackError> {
    check_name(name)?;
    let dir = stacks_dir(base_dir).join(name);
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        return Err(StackError::Exists {
            name: name.to_string(),
            path: rootfs,
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StackError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let partial = dir.join("rootfs.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let mut command = Command::new("mmdebstrap");
    command
        .arg("--variant=minbase")
        .arg("--quiet")
        .arg(format!("--include={}", options.packages.join(",")))
        // A marker the stack's users can read (`/etc/dea-stack`), and no apt caches kept.
        .arg(format!(
            "--customize-hook=echo {name} > \"$1/etc/dea-stack\"; rm -rf \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/lib/apt/lists/*"
        ))
        .arg(&options.suite)
        .arg(&partial);
    if let Some(mirror) = &options.mirror {
        command.arg(mirror);
    }
    let output = command.output().map_err(|e| StackError::Build {
        name: name.to_string(),
        message: format!("running mmdebstrap: {e} (apt-get install mmdebstrap)"),
    })?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(StackError::Build {
            name: name.to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let manifest = StackManifest {
        name: name.to_string(),
        suite: options.suite.clone(),
        packages: options.packages.clone(),
        built_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let text = toml::to_string(&manifest).map_err(|e| StackError::Build {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    let manifest_path = dir.join("stack.toml");
    std::fs::write(&manifest_path, text).map_err(io(&manifest_path))?;
    std::fs::rename(&partial, &rootfs).map_err(io(&rootfs))?;
    Ok(rootfs)
}

/// The stacks built under `base_dir`, with their manifests.
pub fn built(base_dir: &Path) -> Vec<(StackManifest, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(stacks_dir(base_dir)) else {
        return Vec::new();
    };
    let mut found: Vec<(StackManifest, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path().join("stack.toml")).ok()?;
            let manifest: StackManifest = toml::from_str(&text).ok()?;
            let rootfs = entry.path().join("rootfs");
            rootfs.is_dir().then_some((manifest, rootfs))
        })
        .collect();
    found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_resolution_prefers_explicit_then_built_then_host() {
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("heroku-22").expect("valid");
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(base.path().join("stacks/built/rootfs/usr")).expect("mkdir");
        let explicit = BTreeMap::from([("mine".to_string(), PathBuf::from("/srv/mine"))]);
        let names = ["cflinuxfs4", "built", "mine"].map(String::from);
        let stacks = Stacks::resolve(&names, &explicit, base.path());
        assert_eq!(stacks.get("cflinuxfs4").expect("host").rootfs, None);
        assert_eq!(
            stacks.get("built").expect("built").rootfs,
            Some(base.path().join("stacks/built/rootfs"))
        );
        assert_eq!(
            stacks.get("mine").expect("explicit").rootfs,
            Some(PathBuf::from("/srv/mine"))
        );
        assert!(stacks.get("other").is_none());
    }
}
