//! Why a staging failed, and how its log says so.

use crate::buildpack::BuildpackError;
use crate::droplet::{PackError, UnpackError};
use crate::phase::PhaseError;
use crate::tenant_fs::TenantFsError;

/// Why a staging failed. `cf_type` gives Cloud Foundry's error type for the controller.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("An application could not be detected by any available buildpack")]
    NoAppDetected,
    /// A buildpack named outright said no in its detect (Heroku fails the build then).
    #[error("App not compatible with buildpack: {buildpack}")]
    NotCompatible { buildpack: String },
    #[error("detect of buildpack {buildpack} failed: {source}")]
    DetectFailed {
        buildpack: String,
        source: PhaseError,
    },
    #[error("Buildpack compilation step failed: buildpack {buildpack}: {source}")]
    CompileFailed {
        buildpack: String,
        source: PhaseError,
    },
    #[error("Release info failed:\nbuildpack {buildpack}: {source}")]
    ReleaseFailed {
        buildpack: String,
        source: PhaseError,
    },
    #[error("Stack {0} does not exist")]
    UnknownStack(String),
    #[error("invalid app source: {0}")]
    Source(#[from] UnpackError),
    #[error(transparent)]
    Buildpack(#[from] BuildpackError),
    #[error("writing droplet: {0}")]
    Pack(#[from] PackError),
    #[error("staging workspace: {0}")]
    Workspace(#[from] std::io::Error),
    #[error("{what}: {source}")]
    TenantFile {
        what: &'static str,
        source: TenantFsError,
    },
    #[error("Staging timed out after {0} seconds")]
    Timeout(u64),
}

/// How the line that ends a failed staging's log starts. A watcher that reports the error
/// itself (the CLI, on stderr) leaves that line out of what it shows.
pub const FAILURE_LINE_PREFIX: &str = "Staging failed (";

/// The line that ends a failed staging's log: the Cloud Foundry error type and the error.
pub fn failure_line(error: &StagingError) -> String {
    format!("{FAILURE_LINE_PREFIX}{}): {error}\n", error.cf_type())
}

/// Cloud Foundry's error types for a failed staging (`error_info.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfErrorType {
    NoAppDetectedError,
    BuildpackCompileFailed,
    BuildpackReleaseFailed,
    /// Anything else: the platform's fault rather than the buildpacks' (no `error_info`).
    StagingError,
}

impl CfErrorType {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CfErrorType::NoAppDetectedError => "NoAppDetectedError",
            CfErrorType::BuildpackCompileFailed => "BuildpackCompileFailed",
            CfErrorType::BuildpackReleaseFailed => "BuildpackReleaseFailed",
            CfErrorType::StagingError => "StagingError",
        }
    }
}

impl std::fmt::Display for CfErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StagingError {
    /// Cloud Foundry's `error_info.type` for this failure.
    pub fn cf_type(&self) -> CfErrorType {
        match self {
            StagingError::NoAppDetected
            | StagingError::NotCompatible { .. }
            | StagingError::DetectFailed { .. } => CfErrorType::NoAppDetectedError,
            StagingError::CompileFailed { .. } => CfErrorType::BuildpackCompileFailed,
            StagingError::ReleaseFailed { .. } => CfErrorType::BuildpackReleaseFailed,
            _ => CfErrorType::StagingError,
        }
    }
}

/// Why a stager could not be assembled from its config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("wasm runtime: {0}")]
    Wasm(#[from] crate::buildpack::wasm::LoadError),
    #[error("fetch service: {0}")]
    Fetch(#[from] crate::fetch::FetchError),
}
