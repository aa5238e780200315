//! A wasm buildpack behind the phase contract: each phase is a call into the component in a
//! fresh sandbox that sees the app, the cache, the buildpack and (in compile) a scratch
//! directory, with downloads through the host's fetch service as its manifest allows.

use super::{
    LoadError, LoadedComponent, OpenedDirs, PhaseDirs, SandboxSpec, SharedApp, StartError,
    WasmRuntime, start_error,
};
use crate::buildpack::Buildpack;
use crate::droplet::UnpackLimits;
use crate::fetch::{FetchGrant, FetchService, Recording};
use crate::phase::{Phase, PhaseError, PhaseFuture, PhaseRunner, Position, StagingContext};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// How far one detect has got: how many candidates at the front of the order have said no.
///
/// A detect whose component is neither loaded nor compiled in the disk cache waits for its
/// turn (every candidate ahead of it said no) before it compiles: an earlier match makes
/// the compile pointless, and compiling every candidate at once is what stalled a static
/// site's first staging behind the 18 MB Python buildpack (seconds of both cores, and a
/// `dea stage` that could not exit until the abandoned compile ended).
#[derive(Clone)]
pub struct DetectTurn(watch::Receiver<usize>);

impl DetectTurn {
    /// The turn, and the sender through which the detect tells it how many said no.
    pub fn channel() -> (watch::Sender<usize>, DetectTurn) {
        let (sender, receiver) = watch::channel(0);
        (sender, DetectTurn(receiver))
    }

    /// Until the candidate at `index` is next in order (or the detect is over).
    async fn wait_for(mut self, index: usize) {
        // An error means the detect ended: this phase is about to be dropped anyway.
        let _ = self.0.wait_for(|refused| *refused >= index).await;
    }
}

/// What the wasm runners of one staging share.
#[derive(Clone, Default)]
pub struct Shared {
    /// The staging's app directory, opened once for all the runners of one detect.
    pub app: Arc<SharedApp>,
    /// Set for a detect's runners (see [`DetectTurn`]).
    pub turn: Option<DetectTurn>,
}

/// One wasm buildpack, ready to run in stagings.
pub struct WasmRunner {
    buildpack: Buildpack,
    component: PathBuf,
    runtime: Arc<WasmRuntime>,
    fetch: Arc<FetchService>,
    /// Caps for archives the host unpacks for the buildpack (`fetch` with `unpack`).
    unpack_limits: UnpackLimits,
    shared: Shared,
}

impl WasmRunner {
    pub fn new(
        buildpack: &Buildpack,
        component: PathBuf,
        runtime: Arc<WasmRuntime>,
        fetch: Arc<FetchService>,
        unpack_limits: UnpackLimits,
        shared: Shared,
    ) -> WasmRunner {
        WasmRunner {
            buildpack: buildpack.clone(),
            component,
            runtime,
            fetch,
            unpack_limits,
            shared,
        }
    }

    /// Loads the component on the blocking pool: reading, hashing and (the first time)
    /// compiling take milliseconds to seconds. A detect compiles only on its turn.
    async fn load(&self, phase: Phase, at: Position) -> Result<Arc<LoadedComponent>, PhaseError> {
        let load = |compile: bool| {
            let (runtime, path) = (self.runtime.clone(), self.component.clone());
            async move {
                tokio::task::spawn_blocking(move || match compile {
                    true => runtime.load(&path).map(Some),
                    false => runtime.load_without_compiling(&path),
                })
                .await
                .map_err(StartError::LoadTask)
                .and_then(|r| r.map_err(StartError::Load))
                .map_err(|e| start_error(phase.name(), e))
            }
        };
        if let (Phase::Detect, Some(turn)) = (phase, &self.shared.turn) {
            if let Some(loaded) = load(false).await? {
                return Ok(loaded);
            }
            turn.clone().wait_for(at.index).await;
        }
        load(true).await?.ok_or_else(|| {
            let path = self.component.clone();
            start_error(
                phase.name(),
                StartError::Load(LoadError::NotCompiled { path }),
            )
        })
    }
}

impl PhaseRunner for WasmRunner {
    fn id(&self) -> &str {
        &self.buildpack.id
    }

    fn run(self: Arc<Self>, phase: Phase, ctx: Arc<StagingContext>, at: Position) -> PhaseFuture {
        Box::pin(async move {
            // A component already loaded costs a stat: the hop to the blocking pool would
            // cost more than the call.
            let (loaded, buildpack_dir) =
                match self.runtime.loaded_in(&self.component, &self.buildpack.dir) {
                    Some(cached) => cached,
                    None => (self.load(phase, at).await?, None),
                };
            // Detect and release mount the app and the buildpack read-only, from handles
            // opened once: the app's for every runner of the staging, the buildpack's with
            // its component.
            let opened = match phase {
                Phase::Compile => OpenedDirs::default(),
                Phase::Detect | Phase::Release => OpenedDirs {
                    app: Some(
                        self.shared
                            .app
                            .get(&ctx.app)
                            .map_err(|e| start_error(phase.name(), StartError::Sandbox(e)))?,
                    ),
                    buildpack: buildpack_dir,
                },
            };
            // Compile gets a private scratch directory, removed when it ends (with the
            // workspace, should the phase be abandoned).
            let tmp = match phase {
                Phase::Compile => Some(
                    tempfile::Builder::new()
                        .prefix("phase-tmp-")
                        .tempdir_in(&ctx.workspace)
                        .map_err(|e| start_error(phase.name(), StartError::Scratch(e)))?
                        .keep(),
                ),
                _ => None,
            };
            let mut env = ctx.env.clone();
            env.extend(self.buildpack.env.iter().cloned());
            let spec = SandboxSpec {
                dirs: PhaseDirs {
                    tmp: tmp.clone().unwrap_or_else(|| ctx.app.clone()),
                    app: ctx.app.clone(),
                    cache: ctx.cache.clone(),
                    buildpack: self.buildpack.dir.clone(),
                },
                env,
                log: ctx.log_for(phase, at),
                unpack_limits: self.unpack_limits,
                // Downloads are for compile only: the sandbox of another phase has no fetch.
                fetch: (phase == Phase::Compile).then(|| {
                    let grant = FetchGrant {
                        buildpack: self.buildpack.id.clone(),
                        declared: self.buildpack.fetch_allow.clone(),
                        any_request: false,
                        record: Some(Recording {
                            to: ctx.fetches.clone(),
                            phase: Phase::Compile.name(),
                        }),
                    };
                    (self.fetch.clone(), grant)
                }),
            };
            let result = self.runtime.run_opened(&loaded, phase, spec, opened).await;
            if let Some(tmp) = tmp {
                crate::tenant_fs::remove_tree_off_thread(tmp).await;
            }
            result
        })
    }
}
