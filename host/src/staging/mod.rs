//! A staging task: app source in, droplet out.
//!
//! The source is unpacked safely into a fresh workspace, the buildpacks' detects run (the
//! first match in order wins, answered as soon as it is known: `detect.rs`; unless
//! buildpacks are named, when a named Heroku-style classic buildpack still runs its own
//! detect), the chosen buildpacks compile in order, the last one releases, and the staged
//! tree is packed into a droplet laid out like Cloud Foundry's. Everything the user should
//! see goes to the staging log, which ships inside the droplet; a failure is its last line.
//! The workspace is removed whatever happens.

mod bom;
mod detect;
mod error;
pub mod procfile;
pub mod remote;
mod workspace;

pub use crate::phase::{LogWatcher, StagingLog};
pub use error::{CfErrorType, FAILURE_LINE_PREFIX, SetupError, StagingError, failure_line};

use crate::buildpack::runners::Runners;
use crate::buildpack::wasm::WasmRuntime;
use crate::buildpack::{Buildpack, BuildpackKind, BuildpackSet};
use crate::config::Config;
use crate::droplet::{self, PackedDroplet, StagingInfo, UnpackLimits};
use crate::fetch::{FetchRecord, FetchRecorder, FetchService};
use crate::phase::{
    Detection, Phase, PhaseError, PhaseOutput, PhaseRunner, Position, ReleaseInfo, StagingContext,
};
use crate::sbom::Dependencies;
use crate::tenant_fs::{self, Links, TenantDir, WalkLimits};
use crate::units::human_size;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace::Workspace;

/// Largest Procfile, buildpack `export` file or `VERSION` the agent reads from a tenant.
const MAX_SMALL_FILE: u64 = 1 << 20;

/// What to stage.
pub struct StagingRequest {
    /// A directory, `.zip` or `.tgz`.
    pub source: PathBuf,
    /// Where the droplet goes.
    pub output: PathBuf,
    /// Buildpacks to use, by id or directory, skipping detection. Several: all compile in
    /// order and the last one releases.
    pub buildpacks: Vec<String>,
    /// The app's configuration, given to every phase.
    pub env: Vec<(String, String)>,
    pub stack: Option<String>,
    /// Kept between stagings of one app; a fresh one is used when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Overrides the start command (like `cf push -c`).
    pub start_command: Option<String>,
    /// Sees every log line as it is written.
    pub watcher: Option<LogWatcher>,
    /// Detect among these (in order) instead of the installed buildpacks: a controller's
    /// admin buildpacks. Named `buildpacks` are looked up here first, too.
    pub candidates: Option<Vec<Buildpack>>,
}

impl StagingRequest {
    /// Stage `source` into `output`, detecting the buildpack, with no app variables.
    pub fn new(source: impl Into<PathBuf>, output: impl Into<PathBuf>) -> StagingRequest {
        StagingRequest {
            source: source.into(),
            output: output.into(),
            buildpacks: Vec::new(),
            env: Vec::new(),
            stack: None,
            cache_dir: None,
            start_command: None,
            watcher: None,
            candidates: None,
        }
    }
}

/// A finished staging.
#[derive(Debug)]
pub struct Staged {
    pub droplet: PackedDroplet,
    pub info: StagingInfo,
    pub detected_version: Option<String>,
    /// What went into the droplet (also in it, as `sbom.cdx.json` and in `staging_info.yml`).
    pub dependencies: Dependencies,
    /// Every download of this run, in a stable order, with whether the cache answered: a
    /// fact of the run for its reports, not of the droplet.
    pub fetches: Vec<FetchRecord>,
}

/// Stages apps. One per agent; share it behind an `Arc`.
pub struct Stager {
    config: Config,
    buildpacks: BuildpackSet,
    /// What runs each buildpack's phases (the only place that knows their kinds).
    runners: Runners,
}

impl Stager {
    pub fn new(
        config: Config,
        buildpacks: BuildpackSet,
        wasm: Arc<WasmRuntime>,
        fetch: Arc<FetchService>,
    ) -> Stager {
        let mut config = config;
        // Workspace paths become bind-mount sources, which runc needs absolute.
        if let Ok(absolute) = std::path::absolute(&config.base_dir) {
            config.base_dir = absolute;
        }
        crate::netns::remove_stale();
        workspace::remove_stale(&config.staging_dir());
        let runners = Runners::new(&config, wasm, fetch);
        Stager {
            config,
            buildpacks,
            runners,
        }
    }

    /// A stager with the wasm runtime and fetch service `config` describes.
    pub fn from_config(config: Config, buildpacks: BuildpackSet) -> Result<Stager, SetupError> {
        let wasm = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir())?;
        let fetch = Arc::new(FetchService::new(
            config.fetch.clone(),
            config.fetch_cache_dir(),
        )?);
        Ok(Stager::new(config, buildpacks, wasm, fetch))
    }

    fn unpack_limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_bytes: self.config.staging.max_app_size_mb << 20,
            max_files: self.config.staging.max_app_files,
            max_depth: self.config.staging.max_dir_depth,
        }
    }

    pub fn buildpacks(&self) -> &BuildpackSet {
        &self.buildpacks
    }

    /// Loads every installed wasm buildpack (compiling it into the disk cache the first
    /// time); blocking. Returns how many loaded.
    pub fn preload(&self) -> usize {
        self.runners.preload(self.buildpacks.iter())
    }

    /// Stages `request` within the configured staging time limit. Once the staging log
    /// exists, a failure is its last line ([`failure_line`]), so that the log read alone
    /// (in the droplet's directory, or streamed to a controller) says how it ended.
    pub async fn stage(&self, request: StagingRequest) -> Result<Staged, StagingError> {
        let limit = self.config.staging.max_staging_duration_secs;
        let deadline = Instant::now() + Duration::from_secs(limit);
        let memory = workspace::memory_caps(
            &self.config,
            &self.buildpacks,
            &request,
            self.walk_limits(deadline),
        );
        let workspace = Workspace::create(&self.config.staging_dir(), memory)?;
        tracing::debug!(
            workspace = %workspace.path().display(),
            in_memory = workspace.in_memory(),
            "staging"
        );
        let result = self.stage_in(workspace.path(), request, deadline).await;
        // Buildpacks wrote into the workspace, so it goes the way every tenant tree goes:
        // without following links, however deep, off the async workers.
        workspace.remove().await;
        result
    }

    async fn stage_in(
        &self,
        workspace: &Path,
        request: StagingRequest,
        deadline: Instant,
    ) -> Result<Staged, StagingError> {
        let stack = request
            .stack
            .clone()
            .unwrap_or_else(|| self.config.default_stack().to_string());
        if !self.config.stacks.contains(&stack) {
            return Err(StagingError::UnknownStack(stack));
        }
        let staged = workspace.join("staged");
        let app = staged.join("app");
        std::fs::create_dir_all(staged.join("tmp"))?;
        let log = StagingLog::create_capped(
            &staged.join("logs").join("staging_task.log"),
            request.watcher.clone(),
            self.config.staging.max_log_mb << 20,
        )?;
        // The time limit is applied here, inside the log's life, so that a staging that ran
        // out of time says so in its log like any other failure.
        let limit = self.config.staging.max_staging_duration_secs;
        let result = tokio::time::timeout_at(
            deadline.into(),
            self.run_buildpacks(workspace, &staged, &app, &stack, &request, &log, deadline),
        )
        .await
        .unwrap_or(Err(StagingError::Timeout(limit)));
        if let Err(error) = &result {
            log.write_raw(failure_line(error).as_bytes());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_buildpacks(
        &self,
        workspace: &Path,
        staged: &Path,
        app: &Path,
        stack: &str,
        request: &StagingRequest,
        log: &StagingLog,
        deadline: Instant,
    ) -> Result<Staged, StagingError> {
        let limits = self.unpack_limits();
        let source = request.source.clone();
        let unpack_into = app.to_path_buf();
        let walk = self.walk_limits(deadline);
        let (stats, app_source) = tokio::task::spawn_blocking(move || {
            let stats = droplet::unpack_source(&source, &unpack_into, limits)?;
            let app_source = bom::app_source(&source, walk);
            Ok::<_, StagingError>((stats, app_source))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        let app_source = app_source.map_err(|source| StagingError::TenantFile {
            what: "digesting the app source",
            source,
        })?;
        log.step(&format!(
            "Downloaded app package ({}, {} files)",
            human_size(stats.bytes),
            stats.files
        ));

        let cache = match &request.cache_dir {
            Some(dir) => dir.clone(),
            None => workspace.join("cache"),
        };
        std::fs::create_dir_all(&cache)?;
        let mut env: Vec<(String, String)> = vec![
            ("STACK".into(), stack.to_string()),
            ("CF_STACK".into(), stack.to_string()),
        ];
        env.extend(request.env.iter().cloned());
        let ctx = Arc::new(StagingContext {
            workspace: workspace.to_path_buf(),
            app: app.to_path_buf(),
            cache,
            staged: staged.to_path_buf(),
            env,
            log: log.clone(),
            stack: stack.to_string(),
            stack_rootfs: self.stack_rootfs(stack),
            app_is_copy: true,
            deadline,
            fetches: FetchRecorder::default(),
            detect_logs: Default::default(),
        });
        let installed: Vec<Buildpack>;
        let candidates: &[Buildpack] = match &request.candidates {
            Some(list) => list,
            None => {
                installed = self.buildpacks.iter().cloned().collect();
                &installed
            }
        };
        let named = |name: &str| match candidates.iter().find(|bp| bp.id == name) {
            Some(bp) => Ok(bp.clone()),
            None => self
                .buildpacks
                .find(name, &self.config.buildpack_unpack_dir()),
        };
        let named: Vec<Buildpack> = request
            .buildpacks
            .iter()
            .map(|name| named(name))
            .collect::<Result<_, _>>()?;

        // Choose: the first match in order, or the named buildpacks. Of those, the ones that
        // run detect anyway (Heroku-style classic) name the app when they do, each right
        // before its compile; the others are named after their id.
        let explicit = !named.is_empty();
        let (chosen, mut detection_name, detected_version) = if named.is_empty() {
            let (buildpack, detection) = self.detect(&ctx, candidates).await?;
            (vec![buildpack], detection.name, detection.version)
        } else {
            let last = named.last().map(|bp| bp.id.clone()).unwrap_or_default();
            (named, last, None)
        };
        let final_buildpack = chosen.last().cloned().ok_or(StagingError::NoAppDetected)?;
        let runners: Vec<Arc<dyn PhaseRunner>> =
            chosen.iter().map(|bp| self.runners.runner(bp)).collect();
        let final_detects = explicit && runners.last().is_some_and(|r| r.detects_when_named());
        if !final_detects {
            log.step(&format!(
                "Detected {detection_name}{} (buildpack {} {})",
                detected_version
                    .as_deref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                final_buildpack.id,
                final_buildpack.version
            ));
        }

        for (index, runner) in runners.iter().enumerate() {
            let started = Instant::now();
            let at = Position {
                index,
                last: index + 1 == runners.len(),
            };
            let compile_failed = |source| StagingError::CompileFailed {
                buildpack: runner.id().to_string(),
                source,
            };
            runner
                .clone()
                .prepare(ctx.clone(), at)
                .await
                .map_err(compile_failed)?;
            if explicit
                && runner.detects_when_named()
                && let Some(name) = detect_named(runner, &ctx, at).await?
                && at.last
            {
                detection_name = name;
            }
            runner
                .clone()
                .run(Phase::Compile, ctx.clone(), at)
                .await
                .map_err(compile_failed)?;
            runner
                .clone()
                .after_compile(ctx.clone(), at)
                .await
                .map_err(compile_failed)?;
            tracing::debug!(buildpack = %runner.id(), elapsed = ?started.elapsed(), "compiled");
        }

        let last = Position {
            index: runners.len() - 1,
            last: true,
        };
        let release = match runners[last.index]
            .clone()
            .run(Phase::Release, ctx.clone(), last)
            .await
        {
            Ok(PhaseOutput::Release(release)) => release,
            Ok(_) => ReleaseInfo::default(),
            Err(source) => {
                return Err(StagingError::ReleaseFailed {
                    buildpack: final_buildpack.id.clone(),
                    source,
                });
            }
        };

        // The Procfile was last written by the buildpacks: read beneath the app, capped.
        let app_dir = app.to_path_buf();
        let procfile = blocking(move || {
            TenantDir::open(&app_dir)?.labeled("app").read_string(
                Path::new("Procfile"),
                Links::Beneath,
                MAX_SMALL_FILE,
            )
        })
        .await?
        .map_err(|source| StagingError::TenantFile {
            what: "reading the app's Procfile",
            source,
        })?;
        let used = chosen.clone();
        let walk = self.walk_limits(deadline);
        let buildpacks = blocking(move || {
            used.iter()
                .map(|bp| bom::buildpack(bp, walk))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|source| StagingError::TenantFile {
            what: "digesting the buildpacks",
            source,
        })?;
        let fetches = ctx.fetches.records();
        let dependencies = Dependencies::new(
            app_source,
            stack,
            buildpacks,
            &fetches,
            self.config.fetch.require_pins,
        );
        bom::write(staged, &dependencies)?;
        log.step(&format!(
            "Bill of materials: {} buildpack(s), {} download(s){}",
            dependencies.buildpacks.len(),
            dependencies.downloads.len(),
            if dependencies.fully_pinned {
                ", all pinned"
            } else {
                ""
            }
        ));
        let mut info = staging_info(
            procfile.as_deref(),
            &final_buildpack,
            &detection_name,
            &release,
            request.start_command.as_deref(),
        )?;
        info.dependencies = Some(dependencies.clone());
        let yaml = serde_yaml_ng::to_string(&info).map_err(std::io::Error::other)?;
        std::fs::write(staged.join("staging_info.yml"), yaml)?;
        match &info.start_command {
            Some(command) => log.step(&format!("Start command: {command}")),
            None => log.warning("No start command: add a Procfile with a web: entry"),
        }

        let tree = staged.to_path_buf();
        let output = request.output.clone();
        let level = self.config.staging.droplet_compression_level;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let limits = self.pack_limits(deadline);
        let stamp = droplet::Stamp::for_config(&self.config);
        let options = droplet::PackOptions {
            level,
            threads,
            limits,
            stamp,
        };
        let droplet = blocking(move || droplet::pack_tree_with(&tree, &output, &options)).await??;
        log.step(&format!("Uploading droplet ({})", human_size(droplet.size)));
        Ok(Staged {
            droplet,
            info,
            detected_version,
            dependencies,
            fetches,
        })
    }

    /// The root filesystem of stack `name`, if it has one of its own.
    fn stack_rootfs(&self, name: &str) -> Option<PathBuf> {
        self.config
            .stacks()
            .get(name)
            .and_then(|s| s.rootfs.clone())
    }

    /// Detects which installed buildpack would build the app in `app` (a directory), without
    /// staging it: what `dea detect` shows.
    pub async fn detect_app(
        &self,
        app: &Path,
        env: &[(String, String)],
    ) -> Result<(Buildpack, Detection), StagingError> {
        // Classic detect bind-mounts the app as it is, and runc resolves a relative mount
        // source against the bundle, not the caller's directory.
        let app = std::path::absolute(app)?;
        let stack = self.config.default_stack().to_string();
        let mut full_env = vec![
            ("STACK".to_string(), stack.clone()),
            ("CF_STACK".to_string(), stack.clone()),
        ];
        full_env.extend(env.iter().cloned());
        // A scratch workspace for whatever a classic buildpack's detect needs beside the app
        // (the adapter's buildpack copies); the app itself is read in place. A wasm detect
        // sees only the app and its buildpack, so a set of wasm buildpacks gets none: making
        // and removing the directory cost more than all their detects together. Its path is
        // then one that is never created.
        let installed: Vec<Buildpack> = self.buildpacks.iter().cloned().collect();
        let classic = installed
            .iter()
            .any(|bp| !matches!(bp.kind, BuildpackKind::Wasm { .. }));
        let scratch = if classic {
            std::fs::create_dir_all(self.config.staging_dir())?;
            Some(
                tempfile::Builder::new()
                    .prefix("detect-")
                    .tempdir_in(self.config.staging_dir())?
                    .keep(),
            )
        } else {
            None
        };
        let workspace = scratch
            .clone()
            .unwrap_or_else(|| self.config.staging_dir().join("detect-without-scratch"));
        let ctx = Arc::new(StagingContext {
            workspace: workspace.clone(),
            app,
            cache: workspace.clone(),
            staged: workspace,
            env: full_env,
            log: StagingLog::detached(None),
            stack_rootfs: self.stack_rootfs(&stack),
            stack,
            app_is_copy: false,
            deadline: Instant::now()
                + Duration::from_secs(self.config.staging.max_staging_duration_secs),
            fetches: FetchRecorder::default(),
            detect_logs: Default::default(),
        });
        let result = self.detect(&ctx, &installed).await;
        if let Some(scratch) = scratch {
            tenant_fs::remove_tree_off_thread(scratch).await;
        }
        result
    }

    /// Caps for walking a tree buildpacks wrote, ending at the staging's deadline.
    fn walk_limits(&self, deadline: Instant) -> WalkLimits {
        WalkLimits {
            max_depth: self.config.staging.max_dir_depth,
            max_entries: self.config.staging.max_app_files.max(1_000_000),
            deadline: Some(deadline),
        }
    }

    /// Caps for packing the staged tree: what an instance here would accept.
    fn pack_limits(&self, deadline: Instant) -> droplet::PackLimits {
        droplet::PackLimits {
            max_bytes: self.config.instances.max_droplet_mb << 20,
            walk: self.walk_limits(deadline),
        }
    }
}

/// Runs blocking filesystem work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StagingError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StagingError::Workspace(std::io::Error::other(e.to_string())))
}

type DetectResult = Result<PhaseOutput, PhaseError>;

/// Detect for a buildpack the request names, run right before its compile so that it sees
/// the app as the earlier buildpacks left it. Heroku runs it even for buildpacks set
/// explicitly: its stdout names the app, and "no" fails the build rather than compiling an
/// app the buildpack does not support. The detected name.
async fn detect_named(
    runner: &Arc<dyn PhaseRunner>,
    ctx: &Arc<StagingContext>,
    at: Position,
) -> Result<Option<String>, StagingError> {
    match runner.clone().run(Phase::Detect, ctx.clone(), at).await {
        Ok(PhaseOutput::Detect(Some(detection))) => {
            ctx.log.step(&format!("{} app detected", detection.name));
            Ok(Some(detection.name))
        }
        Ok(_) => Err(StagingError::NotCompatible {
            buildpack: runner.id().to_string(),
        }),
        Err(source) => Err(StagingError::DetectFailed {
            buildpack: runner.id().to_string(),
            source,
        }),
    }
}

/// Combines the release's process types with the app's Procfile (which wins) and picks the
/// start command: an explicit one, else the `web` process.
fn staging_info(
    procfile: Option<&str>,
    buildpack: &Buildpack,
    detected: &str,
    release: &ReleaseInfo,
    start_command: Option<&str>,
) -> Result<StagingInfo, StagingError> {
    let mut processes: BTreeMap<String, String> = release.process_types.iter().cloned().collect();
    if let Some(text) = procfile {
        processes.extend(procfile::parse(text));
    }
    let start_command = start_command
        .map(str::to_string)
        .or_else(|| processes.get("web").cloned());
    Ok(StagingInfo {
        detected_buildpack: detected.to_string(),
        start_command,
        // Where the DEA's staging container had it (`/tmp/buildpacks/<name>`), not where it
        // lies on this host: the droplet must not depend on the agent's state directory.
        buildpack_path: format!("/tmp/buildpacks/{}", buildpack.id),
        buildpack_key: buildpack.id.clone(),
        effective_procfile: processes,
        config_vars: release.config_vars.iter().cloned().collect(),
        dependencies: None,
    })
}
