//! The classic adapter behind the phase contract: a classic buildpack as a
//! [`PhaseRunner`], so that staging drives it exactly as it drives a wasm one.
//!
//! What only classic buildpacks need happens here: the directories their scripts see (and who
//! owns them), a per-staging copy of each buildpack (its own `export` file is written there,
//! never into the installed buildpack), the `export` files passed down the order, which build
//! script runs at which place (Cloud Foundry's supply/finalize), detect for a buildpack named
//! outright (Heroku's protocol), and the stack's root filesystem for the containers.

use super::{ClassicDirs, ClassicLimits, ClassicMode, ProxyAccess, Script, ScriptRun};
use crate::buildpack::Buildpack;
use crate::container::Runc;
use crate::fetch::FetchService;
use crate::phase::{
    HookFuture, Phase, PhaseError, PhaseFuture, PhaseOutput, PhaseRunner, Position, StagingContext,
};
use crate::proxy::CertificateAuthority;
use crate::tenant_fs::{Links, TenantDir, TenantFsError, WalkLimits};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest `export` file read from a buildpack.
const MAX_EXPORT: u64 = 1 << 20;

/// What every classic buildpack of an agent shares: the container runtime, limits, the
/// download proxy's certificate authority.
pub struct ClassicRuntime {
    pub runc: Arc<Runc>,
    pub limits: ClassicLimits,
    /// Downloads for build scripts (`None`: no network at all).
    pub proxy: Option<(Arc<FetchService>, Arc<CertificateAuthority>)>,
    /// Buildpack ids run in Cloud Foundry mode even without `bin/supply`/`bin/finalize`.
    pub cloud_foundry: Vec<String>,
    /// Caps on walking what buildpacks wrote.
    pub max_depth: usize,
    pub max_entries: u64,
}

impl ClassicRuntime {
    fn walk_limits(&self, deadline: std::time::Instant) -> WalkLimits {
        WalkLimits {
            max_depth: self.max_depth,
            max_entries: self.max_entries,
            deadline: Some(deadline),
        }
    }

    /// The runner for one classic buildpack.
    pub fn runner(self: &Arc<Self>, buildpack: &Buildpack, mode: ClassicMode) -> ClassicRunner {
        let mode = if self.cloud_foundry.contains(&buildpack.id) {
            ClassicMode::CloudFoundry
        } else {
            mode
        };
        ClassicRunner {
            buildpack: buildpack.clone(),
            mode,
            runtime: self.clone(),
        }
    }

    /// The staging's shared set-up for classic scripts, once per workspace: ENV_DIR, the
    /// exports and buildpack-copy directories, the proxy's CA file, and (for a staging's own
    /// copy of the app) the app and cache handed to the build user.
    async fn prepare_workspace(&self, ctx: &StagingContext) -> Result<(), PhaseError> {
        let fail = |message: String| PhaseError::Instantiate {
            phase: "prepare",
            message,
        };
        let ready = ctx.workspace.join(".classic-ready");
        if ready.exists() {
            return Ok(());
        }
        let user_env: Vec<(String, String)> = ctx
            .env
            .iter()
            .filter(|(k, _)| k != "STACK" && k != "CF_STACK")
            .cloned()
            .collect();
        let io = |e: std::io::Error| fail(e.to_string());
        super::write_env_dir(&ctx.workspace.join("env"), &user_env).map_err(io)?;
        for dir in ["exports", "buildpacks"] {
            std::fs::create_dir_all(ctx.workspace.join(dir)).map_err(io)?;
        }
        if let Some((_, ca)) = &self.proxy {
            std::fs::write(ctx.workspace.join("proxy-ca.pem"), ca.pem()).map_err(io)?;
        }
        // `dea detect` reads the user's directory in place (read-only) and must not change
        // its owner; a staging's own copy is handed over.
        if ctx.app_is_copy {
            let (uid, gid) = (self.limits.uid, self.limits.gid);
            let dirs = [(ctx.app.clone(), "app"), (ctx.cache.clone(), "cache")];
            let limits = self.walk_limits(ctx.deadline);
            blocking("prepare", move || {
                dirs.iter().try_for_each(|(dir, label)| {
                    TenantDir::open(dir)?
                        .labeled(*label)
                        .chown_tree(uid, gid, limits)
                })
            })
            .await?;
        }
        std::fs::write(&ready, b"").map_err(io)
    }
}

/// One classic buildpack, ready to run in stagings.
pub struct ClassicRunner {
    buildpack: Buildpack,
    mode: ClassicMode,
    runtime: Arc<ClassicRuntime>,
}

impl ClassicRunner {
    /// Where this buildpack's copy lives in a staging, by its place in the order.
    fn copy_dir(&self, ctx: &StagingContext, at: Position) -> PathBuf {
        ctx.workspace
            .join("buildpacks")
            .join(format!("{:02}-{}", at.index, self.buildpack.id))
    }

    fn dirs(&self, ctx: &StagingContext, at: Position) -> ClassicDirs {
        ClassicDirs {
            app: ctx.app.clone(),
            cache: ctx.cache.clone(),
            env_dir: ctx.workspace.join("env"),
            deps: ctx.staged.join("deps"),
            profile_d: ctx.staged.join("profile.d"),
            exports: ctx.workspace.join("exports"),
            buildpack_copy: self.copy_dir(ctx, at),
        }
    }

    /// The build script at this place in the order: in Cloud Foundry mode earlier
    /// buildpacks `supply` and the last one `finalize`s (or `compile`s if it has no
    /// finalize); Heroku-mode buildpacks always `compile`.
    fn build_script(&self, last: bool) -> Script {
        let has = |script: &str| {
            TenantDir::open(&self.buildpack.dir)
                .and_then(|dir| dir.open_file(&Path::new("bin").join(script), Links::Beneath))
                .is_ok()
        };
        match (self.mode, last) {
            (ClassicMode::CloudFoundry, false) if has("supply") => Script::Supply,
            (ClassicMode::CloudFoundry, true) if has("finalize") => Script::Finalize,
            _ => Script::Compile,
        }
    }

    /// Copies the buildpack into the staging (the first time), makes the CF directories,
    /// and hands them to the build user: on the blocking pool, descriptor-relative.
    async fn prepare_copy(&self, ctx: &StagingContext, at: Position) -> Result<(), PhaseError> {
        let dirs = self.dirs(ctx, at);
        let source = self.buildpack.dir.clone();
        let id = self.buildpack.id.clone();
        let (uid, gid) = (self.runtime.limits.uid, self.runtime.limits.gid);
        let cf_index = (self.mode == ClassicMode::CloudFoundry).then_some(at.index);
        let limits = self.runtime.walk_limits(ctx.deadline);
        let copied = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let copy = &dirs.buildpack_copy;
            if !copy.exists() {
                let parent = copy.parent().unwrap_or(Path::new("."));
                let temp = tempfile::Builder::new()
                    .prefix(".copy-")
                    .tempdir_in(parent)
                    .map_err(|e| e.to_string())?;
                let target = TenantDir::open(temp.path()).map_err(|e| e.to_string())?;
                TenantDir::open(&source)
                    .and_then(|from| from.copy_tree_into(&target, limits, 1 << 30))
                    .and_then(|_| target.chown_tree(uid, gid, limits))
                    .map_err(|e| format!("copying buildpack {id}: {e}"))?;
                match std::fs::rename(temp.path(), copy) {
                    Ok(()) => {
                        let _ = temp.keep();
                    }
                    // Another phase copied it first.
                    Err(_) if copy.is_dir() => {}
                    Err(e) => return Err(format!("copying buildpack {id}: {e}")),
                }
            }
            if let Some(index) = cf_index {
                let deps = TenantDir::create(&dirs.deps).map_err(|e| e.to_string())?;
                deps.ensure_dir(Path::new(&index.to_string()))
                    .map_err(|e| e.to_string())?;
                let profile_d = TenantDir::create(&dirs.profile_d).map_err(|e| e.to_string())?;
                for dir in [deps, profile_d] {
                    dir.chown_tree(uid, gid, limits)
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })
        .await;
        match copied {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(PhaseError::Instantiate {
                phase: "prepare",
                message,
            }),
            Err(e) => Err(PhaseError::Instantiate {
                phase: "prepare",
                message: e.to_string(),
            }),
        }
    }
}

impl PhaseRunner for ClassicRunner {
    fn id(&self) -> &str {
        &self.buildpack.id
    }

    fn detects_when_named(&self) -> bool {
        self.mode == ClassicMode::Heroku
    }

    fn prepare(self: Arc<Self>, ctx: Arc<StagingContext>, at: Position) -> HookFuture {
        Box::pin(async move {
            self.runtime.prepare_workspace(&ctx).await?;
            self.prepare_copy(&ctx, at).await
        })
    }

    fn run(self: Arc<Self>, phase: Phase, ctx: Arc<StagingContext>, at: Position) -> PhaseFuture {
        Box::pin(async move {
            // A buildpack may be run without having been prepared (detect over every
            // candidate): both steps are idempotent.
            self.runtime.prepare_workspace(&ctx).await?;
            self.prepare_copy(&ctx, at).await?;
            let script = match phase {
                Phase::Detect => Script::Detect,
                Phase::Compile => self.build_script(at.last),
                Phase::Release => Script::Release,
            };
            let dirs = self.dirs(&ctx, at);
            let proxy = self.runtime.proxy.as_ref().map(|(fetch, ca)| ProxyAccess {
                fetch: fetch.clone(),
                ca: ca.clone(),
                ca_file: ctx.workspace.join("proxy-ca.pem"),
            });
            let log = ctx.log_for(phase, at);
            let run = ScriptRun {
                proxy: proxy.as_ref(),
                buildpack_id: &self.buildpack.id,
                runc: &self.runtime.runc,
                limits: &self.runtime.limits,
                dirs: &dirs,
                script,
                mode: self.mode,
                index: at.index,
                stack: &ctx.stack,
                rootfs: ctx.stack_rootfs.as_deref(),
                app_env: &ctx.env,
                log: &log,
                fetches: &ctx.fetches,
            };
            let mut output = run.run().await?;
            // Classic detect with empty stdout is named after the buildpack.
            if let PhaseOutput::Detect(Some(detection)) = &mut output
                && detection.name.is_empty()
            {
                detection.name = self.buildpack.id.clone();
            }
            Ok(output)
        })
    }

    /// After a Heroku-style compile, keeps the buildpack's `export` file for later ones. The
    /// file is the buildpack's to write, so it is read beneath its copy, capped.
    fn after_compile(self: Arc<Self>, ctx: Arc<StagingContext>, at: Position) -> HookFuture {
        Box::pin(async move {
            let copy = self.copy_dir(&ctx, at);
            let export = blocking("compile", move || {
                TenantDir::open(&copy)?.labeled("buildpack").read(
                    Path::new("export"),
                    Links::Beneath,
                    MAX_EXPORT,
                )
            })
            .await?;
            if let Some(bytes) = export {
                let name = format!("{:02}-{}", at.index, self.buildpack.id);
                std::fs::write(ctx.workspace.join("exports").join(name), bytes).map_err(|e| {
                    PhaseError::Instantiate {
                        phase: "compile",
                        message: format!("keeping the buildpack's export file: {e}"),
                    }
                })?;
            }
            Ok(())
        })
    }
}

/// Runs filesystem work on a tenant's tree on the blocking pool.
async fn blocking<T: Send + 'static>(
    phase: &'static str,
    work: impl FnOnce() -> Result<T, TenantFsError> + Send + 'static,
) -> Result<T, PhaseError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(PhaseError::TenantFile {
            phase,
            source: Arc::new(source),
        }),
        Err(e) => Err(PhaseError::Instantiate {
            phase,
            message: e.to_string(),
        }),
    }
}
