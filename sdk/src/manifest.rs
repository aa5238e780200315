//! `buildpack.toml`: who the buildpack is, what it may download, and the pinned dependencies
//! it installs. The host reads the same file; keeping dependencies here (not in code) lets an
//! operator pin other versions without rebuilding the component.

use crate::Error;
use serde::Deserialize;
use std::path::Path;

/// A buildpack's manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub buildpack: Identity,
    #[serde(default)]
    pub fetch: FetchPolicy,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

/// The `[buildpack]` table.
#[derive(Debug, Clone, Deserialize)]
pub struct Identity {
    pub id: String,
    pub name: String,
    pub version: String,
}

/// The `[fetch]` table: URL prefixes this buildpack may download from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FetchPolicy {
    #[serde(default)]
    pub allow: Vec<String>,
}

/// One `[[dependencies]]` entry: a pinned download.
#[derive(Debug, Clone, Deserialize)]
pub struct Dependency {
    pub name: String,
    pub version: String,
    pub uri: String,
    pub sha256: String,
    /// Leading path components to drop when unpacking (like `tar --strip-components`).
    #[serde(default)]
    pub strip_components: usize,
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Failed(format!("invalid {}: {e}", path.display())))
    }

    /// The dependency called `name` whose version starts with `version_prefix` (so `"20"`
    /// matches `20.11.1`), preferring the highest version.
    pub fn dependency(&self, name: &str, version_prefix: &str) -> Option<&Dependency> {
        self.dependencies
            .iter()
            .filter(|d| d.name == name && version_matches(&d.version, version_prefix))
            .max_by(|a, b| version_key(&a.version).cmp(&version_key(&b.version)))
    }
}

fn version_matches(version: &str, prefix: &str) -> bool {
    let prefix = prefix.trim().trim_start_matches(['v', '^', '~', '=']);
    let prefix = prefix.trim_end_matches(".x").trim_end_matches(".*");
    prefix.is_empty()
        || version == prefix
        || version
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

fn version_key(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_matching_version() {
        let manifest: Manifest = toml::from_str(
            r#"
            [buildpack]
            id = "node"
            name = "Node.js"
            version = "1.0.0"
            [[dependencies]]
            name = "node"
            version = "14.3.0"
            uri = "https://example.com/a.tgz"
            sha256 = "aa"
            [[dependencies]]
            name = "node"
            version = "14.10.0"
            uri = "https://example.com/b.tgz"
            sha256 = "bb"
            [[dependencies]]
            name = "node"
            version = "140.0.0"
            uri = "https://example.com/c.tgz"
            sha256 = "cc"
            "#,
        )
        .expect("manifest parses");
        let pick = |p: &str| manifest.dependency("node", p).map(|d| d.version.as_str());
        assert_eq!(pick("14"), Some("14.10.0"));
        assert_eq!(pick("14.x"), Some("14.10.0"));
        assert_eq!(pick("14.3"), Some("14.3.0"));
        assert_eq!(pick(""), Some("140.0.0"));
        assert_eq!(pick("15"), None);
    }
}
