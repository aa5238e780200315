//! A wasm buildpack behind the phase contract: each phase is a call into the component in a
//! fresh sandbox that sees the app, the cache, the buildpack and (in compile) a scratch
//! directory, with downloads through the host's fetch service as its manifest allows.

use super::{PhaseDirs, SandboxSpec, StartError, WasmRuntime, start_error};
use crate::buildpack::Buildpack;
use crate::droplet::UnpackLimits;
use crate::fetch::{FetchGrant, FetchService};
use crate::phase::{Phase, PhaseFuture, PhaseRunner, Position, StagingContext};
use std::path::PathBuf;
use std::sync::Arc;

/// One wasm buildpack, ready to run in stagings.
pub struct WasmRunner {
    buildpack: Buildpack,
    component: PathBuf,
    runtime: Arc<WasmRuntime>,
    fetch: Arc<FetchService>,
    /// Caps for archives the host unpacks for the buildpack (`fetch` with `unpack`).
    unpack_limits: UnpackLimits,
}

impl WasmRunner {
    pub fn new(
        buildpack: &Buildpack,
        component: PathBuf,
        runtime: Arc<WasmRuntime>,
        fetch: Arc<FetchService>,
        unpack_limits: UnpackLimits,
    ) -> WasmRunner {
        WasmRunner {
            buildpack: buildpack.clone(),
            component,
            runtime,
            fetch,
            unpack_limits,
        }
    }
}

impl PhaseRunner for WasmRunner {
    fn id(&self) -> &str {
        &self.buildpack.id
    }

    fn run(self: Arc<Self>, phase: Phase, ctx: Arc<StagingContext>, _at: Position) -> PhaseFuture {
        Box::pin(async move {
            // Reading and (the first time) compiling a component takes milliseconds to
            // seconds: the blocking pool's work, not an async worker's.
            let (runtime, path) = (self.runtime.clone(), self.component.clone());
            let loaded = tokio::task::spawn_blocking(move || runtime.load(&path))
                .await
                .map_err(StartError::LoadTask)
                .and_then(|r| r.map_err(StartError::Load))
                .map_err(|e| start_error(phase.name(), e))?;
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
                log: ctx.log.clone(),
                unpack_limits: self.unpack_limits,
                fetch: Some((
                    self.fetch.clone(),
                    FetchGrant {
                        buildpack: self.buildpack.id.clone(),
                        declared: self.buildpack.fetch_allow.clone(),
                        any_request: false,
                    },
                )),
            };
            let result = self.runtime.run(&loaded, phase, spec).await;
            if let Some(tmp) = tmp {
                crate::tenant_fs::remove_tree_off_thread(tmp).await;
            }
            result
        })
    }
}
