//! Why a wasm buildpack could not be loaded, or one of its phases could not start. Each
//! keeps the error underneath as its source; the texts read as they always have.

use super::mounts::SandboxError;
use crate::tenant_fs::TenantFsError;
use std::io;
use std::path::PathBuf;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading component {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Read as a tenant's file (it may come from an admin buildpack archive): a link out of
    /// its directory, something other than a regular file, or too large.
    #[error("reading component {path}: {source}")]
    Tenant {
        path: PathBuf,
        source: TenantFsError,
    },
    #[error("reading component {path}: no such file")]
    Missing { path: PathBuf },
    #[error("reading component {path}: not a file path")]
    NotAFile { path: PathBuf },
    /// wasmtime's error with its causes on one line.
    #[error("{path} is not a valid buildpack component: {source:#}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: wasmtime::Error,
    },
    #[error(
        "{path} imports {import}, which the host does not give buildpacks (only WASI cli, io, clocks, filesystem, random, sockets without network, and dea:buildpack; downloads go through the host's fetch)"
    )]
    ForbiddenImport { path: PathBuf, import: String },
    /// Loading was asked not to compile, and the component has no compiled code yet.
    #[error("{path} has not been compiled")]
    NotCompiled { path: PathBuf },
    #[error("component cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
    /// Building the engine or linking the host's imports.
    #[error("wasm engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
    /// Starting the epoch ticker thread.
    #[error("wasm engine: {0}")]
    Ticker(#[source] io::Error),
}

/// Why a phase of a wasm buildpack could not start: the source of
/// [`crate::phase::PhaseError::Start`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The blocking task that loads the component ended without an answer (it panicked).
    #[error(transparent)]
    LoadTask(tokio::task::JoinError),
    #[error("scratch directory: {0}")]
    Scratch(#[source] io::Error),
    /// The instance slots are closed (never, while the runtime lives).
    #[error(transparent)]
    Slots(tokio::sync::AcquireError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// wasmtime's error with its causes on one line.
    #[error("{0:#}")]
    Instantiate(#[source] wasmtime::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::PhaseError;
    use std::error::Error;

    #[test]
    fn load_errors_read_as_before_and_keep_their_cause() {
        let cause = wasmtime::Error::new(io::Error::other("bad magic")).context("decoding");
        let error = LoadError::Invalid {
            path: "/bp/buildpack.wasm".into(),
            source: cause,
        };
        assert_eq!(
            error.to_string(),
            "/bp/buildpack.wasm is not a valid buildpack component: decoding: bad magic"
        );
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("decoding")
        );
        assert_eq!(
            LoadError::Missing {
                path: "x.wasm".into()
            }
            .to_string(),
            "reading component x.wasm: no such file"
        );
    }

    #[test]
    fn a_phase_that_could_not_start_keeps_the_runtime_s_error() {
        let error = super::super::start_error(
            "compile",
            StartError::Scratch(io::Error::new(io::ErrorKind::StorageFull, "disk full")),
        );
        assert_eq!(
            error.to_string(),
            "compile could not start: scratch directory: disk full"
        );
        let PhaseError::Start { source, .. } = &error else {
            panic!("{error:?}");
        };
        let start = source
            .downcast_ref::<StartError>()
            .expect("the runtime's own error");
        assert!(matches!(start, StartError::Scratch(e) if e.kind() == io::ErrorKind::StorageFull));
        // Clones share the cause.
        let PhaseError::Start { source: copy, .. } = error.clone() else {
            unreachable!()
        };
        assert!(std::sync::Arc::ptr_eq(source, &copy));
    }
}
