//! Why a staging failed, and how its log says so.

use crate::buildpack::BuildpackError;
use crate::buildpack::wasm::PhaseError;
use crate::droplet::{PackError, UnpackError};
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
    #[error("Error staging: Stack {0} does not exist")]
    UnknownStack(String),
    #[error("invalid app source: {0}")]
    Source(#[from] UnpackError),
    #[error(transparent)]
    Buildpack(#[from] BuildpackError),
    #[error("loading buildpack {buildpack}: {message}")]
    Load { buildpack: String, message: String },
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

impl StagingError {
    /// Cloud Foundry's `error_info.type` for this failure.
    pub fn cf_type(&self) -> &'static str {
        match self {
            StagingError::NoAppDetected
            | StagingError::NotCompatible { .. }
            | StagingError::DetectFailed { .. } => "NoAppDetectedError",
            StagingError::CompileFailed { .. } => "BuildpackCompileFailed",
            StagingError::ReleaseFailed { .. } => "BuildpackReleaseFailed",
            _ => "StagingError",
        }
    }
}
