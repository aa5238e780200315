//! The staging's side of the bill of materials: digesting what it was given (the app
//! source, the buildpacks that compiled) and writing `sbom.cdx.json` into the staged tree.
//! What the facts mean and how they are written is [`crate::sbom`]'s.

use crate::buildpack::{Buildpack, BuildpackKind};
use crate::sbom::cyclonedx::{self, Bom};
use crate::sbom::{AppSource, BuildpackUsed, Dependencies, DigestOf, digest};
use crate::tenant_fs::{TenantFsError, WalkLimits};
use std::path::Path;

/// The app source as received: the bytes of a `.zip`/`.tgz`, or the tree of a directory.
pub(super) fn app_source(source: &Path, limits: WalkLimits) -> Result<AppSource, TenantFsError> {
    let io = |source_err| TenantFsError::Io {
        path: source.to_path_buf(),
        source: source_err,
    };
    if std::fs::metadata(source).map_err(io)?.is_dir() {
        return Ok(AppSource {
            sha256: digest::tree_sha256(source, limits)?,
            digest_of: DigestOf::Tree,
        });
    }
    let file = std::fs::File::open(source).map_err(io)?;
    Ok(AppSource {
        sha256: digest::reader_sha256(file).map_err(io)?,
        digest_of: DigestOf::File,
    })
}

/// A buildpack that compiled: a wasm one by its component file, a classic one by its tree.
pub(super) fn buildpack(
    bp: &Buildpack,
    limits: WalkLimits,
) -> Result<BuildpackUsed, TenantFsError> {
    let (kind, sha256, digest_of) = match &bp.kind {
        BuildpackKind::Wasm { component } => {
            // Loading checked that the component lies beneath the buildpack.
            let rel = component.strip_prefix(&bp.dir).unwrap_or(component);
            let sha = digest::file_beneath_sha256(&bp.dir, rel)?;
            ("wasm", sha, DigestOf::File)
        }
        BuildpackKind::Classic { .. } => (
            "classic",
            digest::tree_sha256(&bp.dir, limits)?,
            DigestOf::Tree,
        ),
    };
    Ok(BuildpackUsed {
        id: bp.id.clone(),
        version: bp.version.clone(),
        kind: kind.to_string(),
        sha256,
        digest_of,
    })
}

/// Writes `deps` as `sbom.cdx.json` at the top of the staged tree.
pub(super) fn write(staged: &Path, deps: &Dependencies) -> std::io::Result<()> {
    // The one outside input the document takes: reproducible builds name their time so.
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let bom = Bom::new(deps, env!("CARGO_PKG_VERSION"), epoch.as_deref());
    std::fs::write(staged.join(cyclonedx::FILE_NAME), bom.to_json())
}
