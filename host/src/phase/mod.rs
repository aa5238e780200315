//! The phase contract: what staging asks of any buildpack, whatever it is made of.
//!
//! A buildpack runs three phases — detect, compile, release — and answers each with a
//! [`PhaseOutput`] or a [`PhaseError`]. Staging drives every buildpack through one trait,
//! [`PhaseRunner`], which the wasm runtime (a component in a sandbox) and the classic adapter
//! (scripts in containers) both implement; staging never learns which kind it drives. The
//! staging log ([`StagingLog`]) lives here too, below both backends and the fetch proxy that
//! write to it, so that data flows one way: staging → runners → (sandbox | containers) → log.

mod log;

pub use log::{LogWatcher, StagingLog};

use crate::tenant_fs::TenantFsError;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The three phases of a buildpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Detect,
    Compile,
    Release,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Detect => "detect",
            Phase::Compile => "compile",
            Phase::Release => "release",
        }
    }
}

/// What detect found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Shown as `-----> <name> app detected` and recorded as `detected_buildpack`.
    pub name: String,
    /// The runtime or framework version that will be used, if known.
    pub version: Option<String>,
}

/// How the built app runs, from release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// Process types and their commands; the app's Procfile overrides them.
    pub process_types: Vec<(String, String)>,
    /// Variables the app should have at run time.
    pub config_vars: Vec<(String, String)>,
    /// Add-ons (informational, as in Heroku's release).
    pub addons: Vec<String>,
}

/// What a phase returned.
#[derive(Debug, Clone)]
pub enum PhaseOutput {
    Detect(Option<Detection>),
    Compile,
    Release(ReleaseInfo),
}

/// How a buildpack said its phase failed (the contract's `error` variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Unsupported,
    Failed,
    Io,
    Denied,
}

/// A buildpack's own failure, with the phase it came from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{phase} {}: {message}", kind_text(*.kind))]
pub struct BuildpackFailure {
    pub phase: &'static str,
    pub kind: FailureKind,
    pub message: String,
}

fn kind_text(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Unsupported => "not supported",
        FailureKind::Failed => "build failed",
        FailureKind::Io => "i/o error",
        FailureKind::Denied => "denied",
    }
}

/// Why a phase did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PhaseError {
    #[error("{phase} did not finish within {limit:?}")]
    Timeout {
        phase: &'static str,
        limit: Duration,
    },
    #[error("{phase} used more than its CPU-time limit of {limit:?}")]
    CpuLimit {
        phase: &'static str,
        limit: Duration,
    },
    #[error("{phase} used more than its memory limit of {limit_mb} MiB")]
    MemoryLimit { phase: &'static str, limit_mb: u64 },
    #[error("{phase} wrote more than its output limit of {limit} bytes")]
    OutputLimit { phase: &'static str, limit: u64 },
    #[error("{phase} exited with status {status}")]
    Exit { phase: &'static str, status: i32 },
    #[error("{phase}: bin/{script} exited with status {status}")]
    ScriptFailed {
        phase: &'static str,
        script: &'static str,
        status: i32,
    },
    #[error("{phase} crashed: {message}")]
    Trap {
        phase: &'static str,
        message: String,
    },
    #[error("{phase} could not start: {message}")]
    Instantiate {
        phase: &'static str,
        message: String,
    },
    /// The runtime could not set the phase up. The cause is the runtime's own error type (a
    /// wasm buildpack's `buildpack::wasm::StartError`), behind `dyn` so the contract does
    /// not depend on a runtime; `Arc` keeps the error `Clone`.
    #[error("{phase} could not start: {source}")]
    Start {
        phase: &'static str,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A file the buildpack left, read by the host, that it may not use as it is.
    #[error("{phase}: {source}")]
    TenantFile {
        phase: &'static str,
        #[source]
        source: Arc<TenantFsError>,
    },
    #[error("{0}")]
    Buildpack(BuildpackFailure),
}

/// Where one staging stands: what every phase of every buildpack in it shares.
#[derive(Clone)]
pub struct StagingContext {
    /// The staging's private directory (scratch, copies, env files); removed at the end.
    pub workspace: PathBuf,
    /// The app being built (`/app`, `/tmp/app` or BUILD_DIR to the buildpack).
    pub app: PathBuf,
    pub cache: PathBuf,
    /// Where the droplet's tree is assembled (the app is `app/` in it).
    pub staged: PathBuf,
    /// The app's configuration, `STACK` and `CF_STACK` first.
    pub env: Vec<(String, String)>,
    pub log: StagingLog,
    pub stack: String,
    /// The stack's root filesystem (`None`: the host's directories).
    pub stack_rootfs: Option<PathBuf>,
    /// Whether the app directory is the staging's own copy (a buildpack may be given it);
    /// `dea detect` runs on a user's directory in place, which must stay untouched.
    pub app_is_copy: bool,
    /// When the staging's time is up: walks of tenant trees give up then.
    pub deadline: Instant,
    /// What this staging's buildpacks downloaded (for its bill of materials).
    pub fetches: crate::fetch::FetchRecorder,
    /// While candidates detect: one held log per candidate, so that their output reaches
    /// the staging log (which ships in the droplet) in candidate order, not in the order
    /// concurrent detects happened to write. Empty otherwise.
    pub detect_logs: DetectLogs,
}

/// The held logs of one detection (see [`StagingContext::detect_logs`]).
#[derive(Default, Clone)]
pub struct DetectLogs(Arc<std::sync::Mutex<Vec<StagingLog>>>);

impl DetectLogs {
    /// Holds the output of `candidates` detects from now on, each up to `limit` bytes.
    pub fn hold(&self, candidates: usize, limit: u64) {
        if let Ok(mut logs) = self.0.lock() {
            *logs = (0..candidates).map(|_| StagingLog::held(limit)).collect();
        }
    }

    /// Where the detect of candidate `index` writes: its held log, else `log`.
    pub fn for_candidate(&self, index: usize, log: &StagingLog) -> StagingLog {
        self.0
            .lock()
            .ok()
            .and_then(|logs| logs.get(index).cloned())
            .unwrap_or_else(|| log.clone())
    }

    /// Writes candidate `index`'s output into `log`.
    pub fn release(&self, index: usize, log: &StagingLog) {
        let held = self.0.lock().ok().and_then(|logs| logs.get(index).cloned());
        if let Some(held) = held {
            held.release_into(log);
        }
    }

    /// Stops holding; output of detects not released is dropped (they lost, or never
    /// mattered to the answer).
    pub fn end(&self) {
        if let Ok(mut logs) = self.0.lock() {
            logs.clear();
        }
    }
}

impl StagingContext {
    /// The log a phase of the buildpack at `at` writes to.
    pub fn log_for(&self, phase: Phase, at: Position) -> StagingLog {
        match phase {
            Phase::Detect => self.detect_logs.for_candidate(at.index, &self.log),
            Phase::Compile | Phase::Release => self.log.clone(),
        }
    }
}

/// A buildpack's place in the order of one staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 0 for the first buildpack that compiles.
    pub index: usize,
    /// The last one compiles last and releases.
    pub last: bool,
}

/// A future a runner returns: owned, so staging can run detects as tasks of their own.
pub type PhaseFuture = Pin<Box<dyn Future<Output = Result<PhaseOutput, PhaseError>> + Send>>;
/// The same for the runner's hooks, which return nothing on success.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<(), PhaseError>> + Send>>;

/// One buildpack, ready to run its phases in stagings. Implemented by the wasm runtime
/// (`buildpack::wasm`) and the classic adapter (`buildpack::classic`).
pub trait PhaseRunner: Send + Sync {
    /// The buildpack's id, for messages.
    fn id(&self) -> &str;

    /// Runs `phase` for the buildpack at `at` in the staging `ctx`.
    fn run(self: Arc<Self>, phase: Phase, ctx: Arc<StagingContext>, at: Position) -> PhaseFuture;

    /// Once per staging, before any phase of this buildpack (and safe to call more than
    /// once): sets up what its phases need in the workspace.
    fn prepare(self: Arc<Self>, _ctx: Arc<StagingContext>, _at: Position) -> HookFuture {
        Box::pin(async { Ok(()) })
    }

    /// After this buildpack's compile: keeps what later buildpacks are to see of it.
    fn after_compile(self: Arc<Self>, _ctx: Arc<StagingContext>, _at: Position) -> HookFuture {
        Box::pin(async { Ok(()) })
    }

    /// Whether detect still runs when the buildpack is named outright (Heroku's classic
    /// protocol: detect names the app, and "no" fails the staging).
    fn detects_when_named(&self) -> bool {
        false
    }
}
