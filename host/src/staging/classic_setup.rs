//! The classic-buildpack side of a staging: the directories its scripts see (and who owns
//! them), the per-staging copy of each buildpack, the `export` files passed down the order,
//! which build script runs at which place, and detect for buildpacks named outright.

use super::{MAX_SMALL_FILE, PhaseContext, Stager, StagingError, blocking};
use crate::buildpack::classic::{self, ClassicDirs, ClassicMode, Script};
use crate::buildpack::wasm::{Phase, PhaseError, PhaseOutput};
use crate::buildpack::{Buildpack, BuildpackKind};
use crate::tenant_fs::{Links, TenantDir, WalkLimits};
use std::path::{Path, PathBuf};

impl Stager {
    /// A classic buildpack's protocol: its own, unless `classic.cloud_foundry` names it.
    pub(super) fn classic_mode(&self, buildpack: &Buildpack) -> Option<ClassicMode> {
        match buildpack.kind {
            BuildpackKind::Classic { .. }
                if self.config.classic.cloud_foundry.contains(&buildpack.id) =>
            {
                Some(ClassicMode::CloudFoundry)
            }
            BuildpackKind::Classic { mode } => Some(mode),
            BuildpackKind::Wasm { .. } => None,
        }
    }

    pub(super) fn has_classic(&self) -> bool {
        self.buildpacks
            .iter()
            .any(|bp| matches!(bp.kind, BuildpackKind::Classic { .. }))
    }

    /// Creates the directories classic scripts see and hands them to the build user.
    pub(super) async fn prepare_classic(
        &self,
        ctx: &PhaseContext<'_>,
        own_app: bool,
    ) -> Result<(), StagingError> {
        let user_env: Vec<(String, String)> = ctx
            .env
            .iter()
            .filter(|(k, _)| k != "STACK" && k != "CF_STACK")
            .cloned()
            .collect();
        classic::write_env_dir(&ctx.workspace.join("env"), &user_env)?;
        for dir in ["exports", "buildpacks"] {
            std::fs::create_dir_all(ctx.workspace.join(dir))?;
        }
        if let Some(ca) = &self.proxy_ca {
            std::fs::write(ctx.workspace.join("proxy-ca.pem"), ca.pem())?;
        }
        // Only a staging's own copy of the app is handed over; `dea detect` reads the
        // user's directory in place (read-only) and must not change its owner.
        if own_app {
            let (uid, gid) = (self.config.classic.uid, self.config.classic.gid);
            let dirs = [
                (ctx.app.to_path_buf(), "app"),
                (ctx.cache.to_path_buf(), "cache"),
            ];
            let limits = self.walk_limits(ctx.deadline);
            blocking(move || {
                dirs.iter().try_for_each(|(dir, label)| {
                    TenantDir::open(dir)?
                        .labeled(*label)
                        .chown_tree(uid, gid, limits)
                })
            })
            .await?
            .map_err(|source| StagingError::TenantFile {
                what: "handing the app and cache to the build user",
                source,
            })?;
        }
        Ok(())
    }

    /// This staging's directories for the classic buildpack at `index`; the buildpack is
    /// copied into the workspace (once) when they are prepared.
    pub(super) fn classic_dirs(
        &self,
        ctx: &PhaseContext<'_>,
        index: usize,
        buildpack: &Buildpack,
    ) -> ClassicSetup {
        let copy = ctx
            .workspace
            .join("buildpacks")
            .join(format!("{index:02}-{}", buildpack.id));
        let dirs = ClassicDirs {
            app: ctx.app.to_path_buf(),
            cache: ctx.cache.to_path_buf(),
            env_dir: ctx.workspace.join("env"),
            deps: ctx.staged.join("deps"),
            profile_d: ctx.staged.join("profile.d"),
            exports: ctx.workspace.join("exports"),
            buildpack_copy: copy,
        };
        ClassicSetup {
            dirs,
            source: buildpack.dir.clone(),
            buildpack_id: buildpack.id.clone(),
            uid: self.config.classic.uid,
            gid: self.config.classic.gid,
            cf_index: (self.classic_mode(buildpack) == Some(ClassicMode::CloudFoundry))
                .then_some(index),
        }
    }

    /// After a Heroku-style compile, keeps the buildpack's `export` file for later ones. The
    /// file is the buildpack's to write, so it is read beneath its copy, capped.
    pub(super) async fn collect_export(
        &self,
        ctx: &PhaseContext<'_>,
        index: usize,
        buildpack: &Buildpack,
    ) -> Result<(), StagingError> {
        if !matches!(buildpack.kind, BuildpackKind::Classic { .. }) {
            return Ok(());
        }
        let name = format!("{index:02}-{}", buildpack.id);
        let copy = ctx.workspace.join("buildpacks").join(&name);
        let export = blocking(move || {
            TenantDir::open(&copy)?.labeled("buildpack").read(
                Path::new("export"),
                Links::Beneath,
                MAX_SMALL_FILE,
            )
        })
        .await?
        .map_err(|source| StagingError::TenantFile {
            what: "reading the buildpack's export file",
            source,
        })?;
        if let Some(bytes) = export {
            std::fs::write(ctx.workspace.join("exports").join(name), bytes)?;
        }
        Ok(())
    }

    /// Detect for a buildpack the request names, run right before its compile so that it
    /// sees the app as the earlier buildpacks left it. Heroku runs it even for buildpacks set
    /// explicitly: its stdout names the app, and "no" fails the build rather than compiling
    /// an app the buildpack does not support. Cloud Foundry skips it (`cf push -b`), and so
    /// does a wasm buildpack named outright. The detected name, when detect ran.
    pub(super) async fn detect_named(
        &self,
        ctx: &PhaseContext<'_>,
        index: usize,
        buildpack: &Buildpack,
    ) -> Result<Option<String>, StagingError> {
        if self.classic_mode(buildpack) != Some(ClassicMode::Heroku) {
            return Ok(None);
        }
        match self
            .phase_task(buildpack, Phase::Detect, ctx, index, Some(Script::Detect))
            .await
        {
            Ok(PhaseOutput::Detect(Some(detection))) => {
                ctx.log.step(&format!("{} app detected", detection.name));
                Ok(Some(detection.name))
            }
            Ok(_) => Err(StagingError::NotCompatible {
                buildpack: buildpack.id.clone(),
            }),
            Err(source) => Err(StagingError::DetectFailed {
                buildpack: buildpack.id.clone(),
                source,
            }),
        }
    }
}

/// The directories of one classic buildpack in one staging, before they exist.
pub(super) struct ClassicSetup {
    dirs: ClassicDirs,
    /// The installed buildpack, copied to `dirs.buildpack_copy`.
    source: PathBuf,
    buildpack_id: String,
    uid: u32,
    gid: u32,
    /// Cloud Foundry mode: this buildpack's index under `deps/`.
    cf_index: Option<usize>,
}

impl ClassicSetup {
    /// Copies the buildpack (the first time), makes the CF directories, and hands them to
    /// the build user: all on the blocking pool, descriptor-relative.
    pub(super) async fn prepare(self, limits: WalkLimits) -> Result<ClassicDirs, PhaseError> {
        let fail = |message: String| PhaseError::Instantiate {
            phase: "prepare",
            message,
        };
        let ClassicSetup {
            dirs,
            source,
            buildpack_id,
            uid,
            gid,
            cf_index,
        } = self;
        let result = tokio::task::spawn_blocking(move || -> Result<ClassicDirs, String> {
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
                    .map_err(|e| format!("copying buildpack {buildpack_id}: {e}"))?;
                match std::fs::rename(temp.path(), copy) {
                    Ok(()) => {
                        let _ = temp.keep();
                    }
                    // Another phase copied it first.
                    Err(_) if copy.is_dir() => {}
                    Err(e) => return Err(format!("copying buildpack {buildpack_id}: {e}")),
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
            Ok(dirs)
        })
        .await;
        match result {
            Ok(Ok(dirs)) => Ok(dirs),
            Ok(Err(message)) => Err(fail(message)),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

/// The build script a classic buildpack runs at its place in the order: in Cloud Foundry
/// mode earlier buildpacks `supply` and the last one `finalize`s (or `compile`s if it has no
/// finalize); Heroku-mode buildpacks always `compile`.
pub(super) fn classic_build_script(buildpack: &Buildpack, mode: ClassicMode, last: bool) -> Script {
    let has = |script: &str| {
        TenantDir::open(&buildpack.dir)
            .and_then(|dir| dir.open_file(&Path::new("bin").join(script), Links::Beneath))
            .is_ok()
    };
    match (mode, last) {
        (ClassicMode::CloudFoundry, false) if has("supply") => Script::Supply,
        (ClassicMode::CloudFoundry, true) if has("finalize") => Script::Finalize,
        _ => Script::Compile,
    }
}
