//! A staging task: app source in, droplet out.
//!
//! The source is unpacked safely into a fresh workspace, every buildpack's detect runs at
//! once (the first match in order wins, unless buildpacks are named; a named Heroku-style
//! classic buildpack still runs its own detect), the chosen buildpacks compile in order, the
//! last one releases, and the staged tree is packed into a droplet laid out like Cloud
//! Foundry's. Everything the user should see goes to the staging log, which ships inside
//! the droplet; a failure is its last line. The workspace is removed whatever happens.

mod classic_setup;
mod error;
mod log;
pub mod procfile;

pub use error::{FAILURE_LINE_PREFIX, StagingError, failure_line};
pub use log::{LogWatcher, StagingLog};

use crate::buildpack::classic::{self, ClassicLimits, ClassicMode, Script};
use crate::buildpack::wasm::{
    PhaseDirs, PhaseError, PhaseOutput, ReleaseInfo, SandboxSpec, WasmRuntime,
};
use crate::buildpack::{Buildpack, BuildpackKind, BuildpackSet};
use crate::config::Config;
use crate::container::Runc;
use crate::droplet::{self, PackedDroplet, StagingInfo, UnpackLimits};
use crate::fetch::{FetchGrant, FetchService};
use crate::tenant_fs::{self, Links, TenantDir, WalkLimits};
use classic_setup::classic_build_script;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// Stages apps. One per agent; share it behind an `Arc`.
pub struct Stager {
    config: Config,
    buildpacks: BuildpackSet,
    wasm: Arc<WasmRuntime>,
    fetch: Arc<FetchService>,
    runc: Arc<Runc>,
    classic_limits: Arc<ClassicLimits>,
    /// Signs the fetch proxy's per-host certificates; made once per agent.
    proxy_ca: Option<Arc<crate::proxy::CertificateAuthority>>,
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
        let runc = Arc::new(Runc {
            binary: config.classic.runc.clone(),
            state_dir: config.base_dir.join("runc"),
            bundles_dir: config.base_dir.join("bundles"),
            rootfs: config.classic.rootfs.clone(),
        });
        let classic_limits = Arc::new(ClassicLimits {
            uid: config.classic.uid,
            gid: config.classic.gid,
            memory_limit_mb: config.classic.memory_limit_mb,
            pids_limit: config.classic.pids_limit,
            detect_timeout: std::time::Duration::from_secs(config.classic.detect_timeout_secs),
            compile_timeout: std::time::Duration::from_secs(config.classic.compile_timeout_secs),
            tmp_size_mb: config.classic.tmp_size_mb,
        });
        crate::netns::remove_stale();
        let proxy_ca = match crate::proxy::CertificateAuthority::generate() {
            Ok(ca) => Some(Arc::new(ca)),
            Err(e) => {
                tracing::warn!("classic buildpacks will have no download proxy: {e}");
                None
            }
        };
        Stager {
            config,
            buildpacks,
            wasm,
            fetch,
            runc,
            classic_limits,
            proxy_ca,
        }
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
    /// time); blocking. Returns how many loaded; failures are logged, and a staging that
    /// needs a broken buildpack reports it then.
    pub fn preload(&self) -> usize {
        let mut loaded = 0;
        for buildpack in self.buildpacks.iter() {
            if let BuildpackKind::Wasm { component } = &buildpack.kind {
                match self.wasm.load(component) {
                    Ok(_) => loaded += 1,
                    Err(e) => tracing::warn!(buildpack = %buildpack.id, "preloading: {e}"),
                }
            }
        }
        loaded
    }

    /// Stages `request` within the configured staging time limit. Once the staging log
    /// exists, a failure is its last line ([`failure_line`]), so that the log read alone
    /// (in the droplet's directory, or streamed to a controller) says how it ended.
    pub async fn stage(&self, request: StagingRequest) -> Result<Staged, StagingError> {
        let limit = self.config.staging.max_staging_duration_secs;
        let deadline = Instant::now() + Duration::from_secs(limit);
        std::fs::create_dir_all(self.config.staging_dir())?;
        let workspace = tempfile::Builder::new()
            .prefix("task-")
            .tempdir_in(self.config.staging_dir())?
            .keep();
        let result = self.stage_in(&workspace, request, deadline).await;
        // Buildpacks wrote into the workspace, so it goes the way every tenant tree goes:
        // without following links, however deep, off the async workers.
        tenant_fs::remove_tree_off_thread(workspace).await;
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
        let stats = tokio::task::spawn_blocking(move || {
            droplet::unpack_source(&source, &unpack_into, limits)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
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
        let installed: Vec<Buildpack>;
        let candidates: &[Buildpack] = match &request.candidates {
            Some(list) => list,
            None => {
                installed = self.buildpacks.iter().cloned().collect();
                &installed
            }
        };
        let ctx = PhaseContext {
            workspace,
            app,
            cache: &cache,
            env: &env,
            log,
            stack,
            staged,
            candidates,
            deadline,
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
        let is_classic = |bp: &Buildpack| matches!(bp.kind, BuildpackKind::Classic { .. });
        let uses_classic = if named.is_empty() {
            candidates.iter().any(is_classic)
        } else {
            named.iter().any(is_classic)
        };
        if uses_classic {
            self.prepare_classic(&ctx, true).await?;
        }

        // Choose: the first match in order, or the named buildpacks. Of those, the ones that
        // run detect anyway (Heroku-style classic) name the app when they do, each right
        // before its compile; the others are named after their id.
        let (chosen, mut detection_name, detected_version) = if named.is_empty() {
            let (buildpack, detection) = self.detect(&ctx).await?;
            (vec![buildpack], detection.name, detection.version)
        } else {
            let last = named.last().map(|bp| bp.id.clone()).unwrap_or_default();
            (named, last, None)
        };
        let explicit = !request.buildpacks.is_empty();
        let final_buildpack = chosen.last().cloned().ok_or(StagingError::NoAppDetected)?;
        let final_detects =
            explicit && self.classic_mode(&final_buildpack) == Some(ClassicMode::Heroku);
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

        for (index, buildpack) in chosen.iter().enumerate() {
            let started = Instant::now();
            let last = index + 1 == chosen.len();
            if explicit
                && let Some(name) = self.detect_named(&ctx, index, buildpack).await?
                && last
            {
                detection_name = name;
            }
            let script = self
                .classic_mode(buildpack)
                .map(|mode| classic_build_script(buildpack, mode, last));
            self.phase_task(
                buildpack,
                crate::buildpack::wasm::Phase::Compile,
                &ctx,
                index,
                script,
            )
            .await
            .map_err(|source| StagingError::CompileFailed {
                buildpack: buildpack.id.clone(),
                source,
            })?;
            self.collect_export(&ctx, index, buildpack).await?;
            tracing::debug!(buildpack = %buildpack.id, elapsed = ?started.elapsed(), "compiled");
        }

        let release = match self
            .phase_task(
                &final_buildpack,
                crate::buildpack::wasm::Phase::Release,
                &ctx,
                chosen.len() - 1,
                Some(Script::Release),
            )
            .await
        {
            Ok(PhaseOutput::Release(release)) => release,
            Ok(_) => ReleaseInfo {
                process_types: Vec::new(),
                config_vars: Vec::new(),
                addons: Vec::new(),
            },
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
        let info = staging_info(
            procfile.as_deref(),
            &final_buildpack,
            &detection_name,
            &release,
            request.start_command.as_deref(),
        )?;
        let yaml = serde_yaml::to_string(&info).map_err(std::io::Error::other)?;
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
        let droplet =
            blocking(move || droplet::pack_tree_limited(&tree, &output, level, threads, limits))
                .await??;
        log.step(&format!("Uploading droplet ({})", human_size(droplet.size)));
        Ok(Staged {
            droplet,
            info,
            detected_version,
        })
    }

    /// Detects which installed buildpack would build the app in `app` (a directory), without
    /// staging it: what `dea detect` shows.
    pub async fn detect_app(
        &self,
        app: &Path,
        env: &[(String, String)],
    ) -> Result<(Buildpack, crate::buildpack::wasm::Detection), StagingError> {
        // Classic detect bind-mounts the app as it is, and runc resolves a relative mount
        // source against the bundle, not the caller's directory.
        let app = std::path::absolute(app)?;
        let app = app.as_path();
        let mut full_env = vec![
            ("STACK".to_string(), self.config.default_stack().to_string()),
            (
                "CF_STACK".to_string(),
                self.config.default_stack().to_string(),
            ),
        ];
        full_env.extend(env.iter().cloned());
        let log = StagingLog::detached(None);
        let installed: Vec<Buildpack> = self.buildpacks.iter().cloned().collect();
        // Wasm detect mounts only the app and the buildpack; classic detect needs a
        // workspace for its buildpack copies.
        let scratch = if self.has_classic() {
            std::fs::create_dir_all(self.config.staging_dir())?;
            Some(
                tempfile::Builder::new()
                    .prefix("detect-")
                    .tempdir_in(self.config.staging_dir())?,
            )
        } else {
            None
        };
        let workspace = scratch.as_ref().map_or(app, |s| s.path());
        let ctx = PhaseContext {
            workspace,
            app,
            cache: workspace,
            env: &full_env,
            log: &log,
            stack: self.config.default_stack(),
            staged: workspace,
            candidates: &installed,
            deadline: Instant::now()
                + Duration::from_secs(self.config.staging.max_staging_duration_secs),
        };
        if scratch.is_some() {
            self.prepare_classic(&ctx, false).await?;
        }
        self.detect(&ctx).await
    }

    /// Runs every buildpack's detect at once and picks the first match in order. A detect
    /// that fails (rather than saying no) ahead of the match fails the staging: the order
    /// would otherwise depend on a broken buildpack.
    async fn detect(
        &self,
        ctx: &PhaseContext<'_>,
    ) -> Result<(Buildpack, crate::buildpack::wasm::Detection), StagingError> {
        let buildpacks: Vec<Buildpack> = ctx.candidates.to_vec();
        let results = Arc::new(std::sync::Mutex::new(
            (0..buildpacks.len())
                .map(|_| None)
                .collect::<Vec<Option<DetectResult>>>(),
        ));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // One worker per core, taking buildpacks in order: more concurrency than cores only
        // adds cold instance slots and stacks. A buildpack after a match is skipped, since
        // the first match in order wins anyway.
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(buildpacks.len().max(1));
        let runs: Vec<Option<_>> = buildpacks
            .iter()
            .enumerate()
            .map(|(i, bp)| {
                Some(self.phase_task(
                    bp,
                    crate::buildpack::wasm::Phase::Detect,
                    ctx,
                    i,
                    Some(Script::Detect),
                ))
            })
            .collect();
        let runs = Arc::new(std::sync::Mutex::new(runs));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let runs = runs.clone();
            let results = results.clone();
            let next = next.clone();
            tasks.spawn(async move {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(run) = lock(&runs).get_mut(index).and_then(Option::take) else {
                        return;
                    };
                    let matched_before = lock(&results)[..index]
                        .iter()
                        .any(|r| matches!(r, Some(Ok(PhaseOutput::Detect(Some(_))))));
                    if matched_before {
                        continue;
                    }
                    let result = run.await;
                    lock(&results)[index] = Some(result);
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!("detect worker failed: {e}");
            }
        }
        let results = std::mem::take(&mut *lock(&results));
        let mut first_failure = None;
        for (buildpack, result) in buildpacks.into_iter().zip(results) {
            match result {
                Some(Ok(PhaseOutput::Detect(Some(detection)))) => {
                    if let Some(error) = first_failure {
                        return Err(error);
                    }
                    return Ok((buildpack, detection));
                }
                Some(Ok(_)) => {}
                Some(Err(source)) => {
                    ctx.log
                        .warning(&format!("buildpack {}: {source}", buildpack.id));
                    first_failure.get_or_insert(StagingError::DetectFailed {
                        buildpack: buildpack.id.clone(),
                        source,
                    });
                }
                None => {
                    first_failure.get_or_insert(StagingError::DetectFailed {
                        buildpack: buildpack.id.clone(),
                        source: PhaseError::Instantiate {
                            phase: "detect",
                            message: "detect did not run".into(),
                        },
                    });
                }
            }
        }
        Err(first_failure.unwrap_or(StagingError::NoAppDetected))
    }

    /// A phase run as an owned future (so detect can spawn one task per buildpack).
    fn phase_task(
        &self,
        buildpack: &Buildpack,
        phase: crate::buildpack::wasm::Phase,
        ctx: &PhaseContext<'_>,
        index: usize,
        script: Option<Script>,
    ) -> impl std::future::Future<Output = Result<PhaseOutput, PhaseError>> + Send + 'static {
        let runc = self.runc.clone();
        let classic_limits = self.classic_limits.clone();
        let classic_mode = self.classic_mode(buildpack);
        let classic_dirs = classic_mode.map(|_| self.classic_dirs(ctx, index, buildpack));
        let walk_limits = self.walk_limits(ctx.deadline);
        let stack = ctx.stack.to_string();
        // Classic scripts run on the stack's root filesystem (wasm buildpacks see only
        // `STACK`: their sandbox has no stack).
        let stack_rootfs = self
            .config
            .stacks()
            .get(&stack)
            .and_then(|s| s.rootfs.clone());
        let app_env: Vec<(String, String)> = ctx.env.to_vec();
        let proxy = self.proxy_ca.as_ref().map(|ca| classic::ProxyAccess {
            fetch: self.fetch.clone(),
            ca: ca.clone(),
            ca_file: ctx.workspace.join("proxy-ca.pem"),
        });
        let wasm = self.wasm.clone();
        let fetch = self.fetch.clone();
        let unpack_limits = self.unpack_limits();
        let buildpack = buildpack.clone();
        let workspace = ctx.workspace.to_path_buf();
        let app = ctx.app.to_path_buf();
        let cache = ctx.cache.to_path_buf();
        let mut env = ctx.env.to_vec();
        let log = ctx.log.clone();
        async move {
            match &buildpack.kind {
                BuildpackKind::Wasm { component } => {
                    // Reading and (the first time) compiling a component takes milliseconds
                    // to seconds: the blocking pool's work, not an async worker's.
                    let (runtime, path) = (wasm.clone(), component.clone());
                    let loaded = tokio::task::spawn_blocking(move || runtime.load(&path))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .map_err(|message| PhaseError::Instantiate {
                            phase: phase.name(),
                            message,
                        })?;
                    // Compile gets a private scratch directory, removed when it ends (with
                    // the workspace, should the phase be abandoned).
                    let tmp = match phase {
                        crate::buildpack::wasm::Phase::Compile => Some(
                            tempfile::Builder::new()
                                .prefix("phase-tmp-")
                                .tempdir_in(&workspace)
                                .map_err(|e| PhaseError::Instantiate {
                                    phase: phase.name(),
                                    message: format!("scratch directory: {e}"),
                                })?
                                .keep(),
                        ),
                        _ => None,
                    };
                    env.extend(buildpack.env.iter().cloned());
                    let spec = SandboxSpec {
                        dirs: PhaseDirs {
                            tmp: tmp.clone().unwrap_or_else(|| app.clone()),
                            app,
                            cache,
                            buildpack: buildpack.dir.clone(),
                        },
                        env,
                        log,
                        unpack_limits,
                        fetch: Some((
                            fetch,
                            FetchGrant {
                                buildpack: buildpack.id.clone(),
                                declared: buildpack.fetch_allow.clone(),
                                any_request: false,
                            },
                        )),
                    };
                    let result = wasm.run(&loaded, phase, spec).await;
                    if let Some(tmp) = tmp {
                        tenant_fs::remove_tree_off_thread(tmp).await;
                    }
                    result
                }
                BuildpackKind::Classic { .. } => {
                    let script = script.unwrap_or(match phase {
                        crate::buildpack::wasm::Phase::Detect => Script::Detect,
                        crate::buildpack::wasm::Phase::Compile => Script::Compile,
                        crate::buildpack::wasm::Phase::Release => Script::Release,
                    });
                    let mode = classic_mode.unwrap_or(ClassicMode::Heroku);
                    let dirs = classic_dirs.ok_or_else(|| PhaseError::Instantiate {
                        phase: phase.name(),
                        message: "classic directories missing".into(),
                    })?;
                    let dirs = dirs.prepare(walk_limits).await?;
                    let run = classic::ScriptRun {
                        proxy: proxy.as_ref(),
                        buildpack_id: &buildpack.id,
                        runc: &runc,
                        limits: &classic_limits,
                        dirs: &dirs,
                        script,
                        mode,
                        index,
                        stack: &stack,
                        rootfs: stack_rootfs.as_deref(),
                        app_env: &app_env,
                        log: &log,
                    };
                    let mut output = run.run().await?;
                    // Classic detect with empty stdout is named after the buildpack.
                    if let PhaseOutput::Detect(Some(detection)) = &mut output
                        && detection.name.is_empty()
                    {
                        detection.name = buildpack.id.clone();
                    }
                    Ok(output)
                }
            }
        }
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

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// What every phase of one staging shares.
struct PhaseContext<'a> {
    workspace: &'a Path,
    app: &'a Path,
    cache: &'a Path,
    env: &'a [(String, String)],
    log: &'a StagingLog,
    stack: &'a str,
    /// Where the droplet's tree is assembled (`deps/` and `profile.d/` for CF buildpacks).
    staged: &'a Path,
    /// The buildpacks detection runs over, in order.
    candidates: &'a [Buildpack],
    /// When the staging's time is up: walks of tenant trees give up then.
    deadline: Instant,
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
        buildpack_path: buildpack.dir.display().to_string(),
        buildpack_key: buildpack.id.clone(),
        effective_procfile: processes,
        config_vars: release.config_vars.iter().cloned().collect(),
    })
}

/// `1.2M`-style sizes, as `du -h` prints them in Cloud Foundry's log lines.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}
