//! Turning buildpacks into [`PhaseRunner`]s: the one place that knows which backend runs
//! which kind of buildpack. Staging asks for runners and drives them through the contract.

use super::classic::ClassicLimits;
use super::classic::runner::ClassicRuntime;
use super::wasm::runner::{DetectTurn, Shared, WasmRunner};
use super::wasm::{SharedApp, WasmRuntime};
use super::{Buildpack, BuildpackKind};
use crate::config::Config;
use crate::container::Runc;
use crate::droplet::UnpackLimits;
use crate::fetch::FetchService;
use crate::phase::PhaseRunner;
use std::sync::Arc;
use std::time::Duration;

/// The backends of one agent: the wasm runtime and the classic adapter's runtime.
pub struct Runners {
    wasm: Arc<WasmRuntime>,
    classic: Arc<ClassicRuntime>,
    fetch: Arc<FetchService>,
    unpack_limits: UnpackLimits,
}

impl Runners {
    /// The backends `config` describes, on `wasm` and `fetch`. Makes the download proxy's
    /// certificate authority (classic build scripts get no network without it).
    pub fn new(config: &Config, wasm: Arc<WasmRuntime>, fetch: Arc<FetchService>) -> Runners {
        let classic = &config.classic;
        let proxy = match crate::proxy::CertificateAuthority::generate() {
            Ok(ca) => Some((fetch.clone(), Arc::new(ca))),
            Err(e) => {
                tracing::warn!("classic buildpacks will have no download proxy: {e}");
                None
            }
        };
        let runtime = ClassicRuntime {
            runc: Arc::new(Runc::from_config(config)),
            limits: ClassicLimits {
                uid: classic.uid,
                gid: classic.gid,
                memory_limit_mb: classic.memory_limit_mb,
                pids_limit: classic.pids_limit,
                detect_timeout: Duration::from_secs(classic.detect_timeout_secs),
                compile_timeout: Duration::from_secs(classic.compile_timeout_secs),
                tmp_size_mb: classic.tmp_size_mb,
            },
            proxy,
            cloud_foundry: classic.cloud_foundry.clone(),
            max_depth: config.staging.max_dir_depth,
            max_entries: config.staging.max_app_files.max(1_000_000),
        };
        Runners {
            wasm,
            classic: Arc::new(runtime),
            fetch,
            unpack_limits: UnpackLimits {
                max_bytes: config.staging.max_app_size_mb << 20,
                max_files: config.staging.max_app_files,
                max_depth: config.staging.max_dir_depth,
            },
        }
    }

    /// The runner for `buildpack`.
    pub fn runner(&self, buildpack: &Buildpack) -> Arc<dyn PhaseRunner> {
        self.runner_sharing(buildpack, Shared::default())
    }

    /// Runners for one detect over `candidates`: the wasm ones open the staging's app
    /// directory once between them, and compile a component only on their `turn`.
    pub fn detect_runners(
        &self,
        candidates: &[Buildpack],
        turn: DetectTurn,
    ) -> Vec<Arc<dyn PhaseRunner>> {
        let shared = Shared {
            app: SharedApp::new(),
            turn: Some(turn),
        };
        candidates
            .iter()
            .map(|buildpack| self.runner_sharing(buildpack, shared.clone()))
            .collect()
    }

    fn runner_sharing(&self, buildpack: &Buildpack, shared: Shared) -> Arc<dyn PhaseRunner> {
        match &buildpack.kind {
            BuildpackKind::Wasm { component } => Arc::new(WasmRunner::new(
                buildpack,
                component.clone(),
                self.wasm.clone(),
                self.fetch.clone(),
                self.unpack_limits,
                shared,
            )),
            BuildpackKind::Classic { mode } => Arc::new(self.classic.runner(buildpack, *mode)),
        }
    }

    /// Loads every wasm buildpack of `buildpacks`, in order (compiling it into the disk
    /// cache the first time); blocking. Returns how many loaded; failures are logged, and a
    /// staging that needs a broken buildpack reports it then. A staging that needs a
    /// component while this compiles it waits for that compile (one per digest) instead of
    /// running its own.
    pub fn preload<'a>(&self, buildpacks: impl Iterator<Item = &'a Buildpack>) -> usize {
        let started = std::time::Instant::now();
        let compiled_before = self.wasm.compilations();
        let mut loaded = 0;
        for buildpack in buildpacks {
            if let BuildpackKind::Wasm { component } = &buildpack.kind {
                match self.wasm.load(component) {
                    Ok(_) => {
                        loaded += 1;
                        // Its directory too, as a detect keeps it: what the agent holds
                        // open is then fixed once it has started, not by which detects a
                        // staging happened to begin before its match was known.
                        let _ = self.wasm.loaded_in(component, &buildpack.dir);
                    }
                    Err(e) => tracing::warn!(buildpack = %buildpack.id, "preloading: {e}"),
                }
            }
        }
        tracing::info!(
            loaded,
            compiled = self.wasm.compilations() - compiled_before,
            elapsed = ?started.elapsed(),
            "preloaded wasm buildpacks"
        );
        loaded
    }
}
