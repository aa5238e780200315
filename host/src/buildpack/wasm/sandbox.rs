//! One phase's sandbox: the store state behind a guest, and the host imports it may call.
//!
//! The WASI context starts from nothing and is given only: the phase's directories at fixed,
//! disjoint guest paths (`/app`, `/cache`, `/buildpack`, `/tmp`; see [`super::mounts`]), the
//! app's environment, stdout and stderr into the staging log, clocks and random. No network
//! (`wasi:sockets` is linked for toolchains that import it, but every socket call is denied),
//! no name lookups, no inherited environment or stdin.

use super::Phase;
use super::bindings::dea::buildpack::host::{self, FetchError, FetchRequest, FetchResult, LogKind};
use super::limiter::PhaseLimiter;
use super::mounts::{ReadOnlyDir, SandboxError, open_dir};
use super::output::{LogOutput, OutputBudget};
use crate::config::WasmConfig;
use crate::fetch::{FetchGrant, FetchService};
use crate::phase::StagingLog;
use crate::tenant_fs::{Kind, Links, TenantDir, TenantFsError};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::Dir;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Host directories for a phase. Which are mounted, and how, depends on the phase.
#[derive(Debug, Clone)]
pub struct PhaseDirs {
    pub app: PathBuf,
    pub cache: PathBuf,
    pub buildpack: PathBuf,
    /// Scratch for compile; created empty by the caller and removed afterwards.
    pub tmp: PathBuf,
}

/// Read-only mounts opened beforehand ([`ReadOnlyDir`]): detect and release mount these
/// instead of opening [`PhaseDirs::app`] and [`PhaseDirs::buildpack`] again (one opened from
/// another path is not used). Compile, which writes, always opens its own.
#[derive(Debug, Clone, Default)]
pub struct OpenedDirs {
    pub app: Option<ReadOnlyDir>,
    pub buildpack: Option<ReadOnlyDir>,
}

/// Everything a phase is given.
#[derive(Clone)]
pub struct SandboxSpec {
    pub dirs: PhaseDirs,
    /// Environment variables, in order (later wins).
    pub env: Vec<(String, String)>,
    pub log: StagingLog,
    /// The fetch service and what this buildpack may ask of it (compile only).
    pub fetch: Option<(Arc<FetchService>, FetchGrant)>,
    /// Caps for archives the host unpacks for the buildpack.
    pub unpack_limits: crate::droplet::UnpackLimits,
}

/// Why a host call may not write at a guest path (`fetch`'s destination, `make-executable`).
/// Its text is what the guest is told (the contract carries a string there).
#[derive(Debug, thiserror::Error)]
pub(super) enum GuestPathError {
    #[error("{guest} is not under /app, /cache or /tmp")]
    NotWritable { guest: String },
    #[error("{guest} names a directory, not a file")]
    Root { guest: String },
    #[error("{guest} must not contain '..' or '.'")]
    DotSegment { guest: String },
    #[error("{guest}: the file name must be UTF-8")]
    NotUtf8 { guest: String },
    #[error("{guest} goes through a symbolic link")]
    Link {
        guest: String,
        /// The link the walk refused, when the walk found it (not when the name itself is
        /// one).
        #[source]
        source: Option<TenantFsError>,
    },
    #[error("{guest} is not a directory")]
    NotDirectory {
        guest: String,
        #[source]
        source: TenantFsError,
    },
    #[error("{guest}: a parent is not a directory")]
    ParentNotDirectory {
        guest: String,
        #[source]
        source: TenantFsError,
    },
    #[error("{guest} is a directory")]
    IsDirectory { guest: String },
    #[error("{guest} is not a regular file")]
    NotRegularFile {
        guest: String,
        #[source]
        source: Option<TenantFsError>,
    },
    #[error("{guest}: {source}")]
    Tenant {
        guest: String,
        source: TenantFsError,
    },
    #[error("{guest}: {source}")]
    Io { guest: String, source: io::Error },
    #[error("make-executable {guest}: only allowed during compile, not {phase}")]
    NotCompile { guest: String, phase: &'static str },
}

/// Why a fetched blob could not be put where the guest asked.
#[derive(Debug, thiserror::Error)]
enum PlaceError {
    #[error(transparent)]
    Copy(io::Error),
    #[error(transparent)]
    Unpack(crate::droplet::UnpackError),
    #[error(transparent)]
    Task(tokio::task::JoinError),
    /// `unpack` asks for a directory, a plain fetch for a file; the destination was checked
    /// as one of them.
    #[error("destination does not match the request")]
    Mismatch,
}

pub struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// What the guest's `wasi:filesystem/preopens` returns (the `WasiCtx` has none).
    mounts: Vec<(Dir, &'static str)>,
    pub(super) limits: PhaseLimiter,
    phase: Phase,
    log: StagingLog,
    budget: Arc<OutputBudget>,
    fetch: Option<(Arc<FetchService>, FetchGrant)>,
    /// Guest path → host path of the directories the guest may write to.
    writable: Vec<(&'static str, PathBuf)>,
    pub(super) cpu_ticks: u64,
    pub(super) cpu_tick_limit: u64,
    pub(super) cpu_exceeded: bool,
    /// Caps for archives unpacked by `fetch`.
    unpack_limits: crate::droplet::UnpackLimits,
    /// The last `lstat` of a `metadata-hash-at`, for the `stat-at` that follows it (see
    /// [`super::stat`]).
    pub(super) last_lstat: Option<Lstat>,
}

/// The last `lstat` `metadata-hash-at` made of a name under a read-only directory, for the
/// `stat-at` of that name which follows it (kept here, with the rest of a phase's state;
/// [`super::stat`] makes and reads it). Holding the directory's handle keeps it from being
/// closed and its address reused by another while this is kept.
pub(super) struct Lstat {
    pub(super) dir: std::sync::Arc<std::fs::File>,
    pub(super) name: String,
    pub(super) stat: rustix::fs::Statx,
}

impl SandboxState {
    pub(super) fn new(
        phase: Phase,
        spec: SandboxSpec,
        opened: OpenedDirs,
        limits: &WasmConfig,
        budget: Arc<OutputBudget>,
        cpu_limit: Duration,
    ) -> Result<SandboxState, SandboxError> {
        let mut builder = WasiCtxBuilder::new();
        let compile = phase == Phase::Compile;
        // Small phases do their few file calls inline instead of hopping to the blocking
        // pool (about 5x faster detect); compile may do heavy I/O, so it keeps the pool.
        builder.allow_blocking_current_thread(!compile);
        // Compile's writable roots are resolved once, as the host calls that write for the
        // guest (`fetch`, `make-executable`) open them again by path. Detect and release only
        // mount, from handles opened for the whole staging when the caller has them.
        let mut mounts = Vec::with_capacity(4);
        let mut writable = Vec::new();
        if compile {
            let resolve = |dir: &Path| -> Result<PathBuf, SandboxError> {
                dir.canonicalize().map_err(|source| SandboxError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })
            };
            let app = resolve(&spec.dirs.app)?;
            let buildpack = resolve(&spec.dirs.buildpack)?;
            let cache = resolve(&spec.dirs.cache)?;
            let tmp = resolve(&spec.dirs.tmp)?;
            mounts.push((open_dir(&app, FsPerms::ReadWrite, false)?, "/app"));
            mounts.push((
                open_dir(&buildpack, FsPerms::ReadOnly, false)?,
                "/buildpack",
            ));
            mounts.push((open_dir(&cache, FsPerms::ReadWrite, false)?, "/cache"));
            mounts.push((open_dir(&tmp, FsPerms::ReadWrite, false)?, "/tmp"));
            writable = vec![("/app", app), ("/cache", cache), ("/tmp", tmp)];
        } else {
            let read_only = |opened: &Option<ReadOnlyDir>, path: &Path| match opened {
                Some(dir) if dir.opened_from(path) => Ok(dir.dir().clone()),
                _ => open_dir(path, FsPerms::ReadOnly, true),
            };
            mounts.push((read_only(&opened.app, &spec.dirs.app)?, "/app"));
            mounts.push((
                read_only(&opened.buildpack, &spec.dirs.buildpack)?,
                "/buildpack",
            ));
        }
        // Deny-all network, spelled out rather than left to defaults: creating a TCP or UDP
        // socket fails with access-denied, no address passes the check, no name lookups.
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        builder.envs(&spec.env);
        builder.env("DEA_PHASE", phase.name());
        builder.env("HOME", "/app");
        if compile {
            builder.env("TMPDIR", "/tmp");
        }
        let output = LogOutput::new(spec.log.clone(), budget.clone());
        builder.stdout(output.clone());
        builder.stderr(output);
        let memory_limit = (limits.memory_limit_mb << 20) as usize;
        let ticks = (cpu_limit.as_millis() / super::EPOCH_TICK.as_millis()).max(1) as u64;
        Ok(SandboxState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            mounts,
            limits: PhaseLimiter::new(memory_limit),
            phase,
            log: spec.log,
            budget,
            fetch: if compile { spec.fetch } else { None },
            writable,
            cpu_ticks: 0,
            cpu_tick_limit: ticks,
            cpu_exceeded: false,
            unpack_limits: spec.unpack_limits,
            last_lstat: None,
        })
    }

    /// Whether every mount of the phase is read-only, and its file calls run on the calling
    /// thread (detect and release).
    pub(super) fn read_only(&self) -> bool {
        self.phase != Phase::Compile
    }

    /// The phase's mounts and the table their descriptors go into, for
    /// [`super::preopens`]' `wasi:filesystem/preopens`.
    pub(super) fn mounts_and_table(&mut self) -> (&[(Dir, &'static str)], &mut ResourceTable) {
        (&self.mounts, &mut self.table)
    }

    /// Opens the place an absolute guest path under a writable directory names, creating
    /// missing parent directories. Everything is resolved from the writable root's
    /// descriptor, never through a link (the guest wrote that tree). Refuses `..`, unknown
    /// roots, and links anywhere. The path itself must be a file (or not exist) unless
    /// `directory` is set.
    fn host_destination(
        &self,
        guest: &str,
        directory: bool,
    ) -> Result<Destination, GuestPathError> {
        let path = Path::new(guest);
        let owned = || guest.to_string();
        let (root_guest, root_host, relative) = self
            .writable
            .iter()
            .find_map(|(root, host)| {
                let relative = path.strip_prefix(root).ok()?;
                Some((root, host, relative))
            })
            .ok_or_else(|| GuestPathError::NotWritable { guest: owned() })?;
        if relative.as_os_str().is_empty() {
            return Err(GuestPathError::Root { guest: owned() });
        }
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(GuestPathError::DotSegment { guest: owned() });
        }
        let explain = |source: TenantFsError| match source {
            TenantFsError::Link { .. } => GuestPathError::Link {
                guest: owned(),
                source: Some(source),
            },
            TenantFsError::WrongKind { .. } if directory => GuestPathError::NotDirectory {
                guest: owned(),
                source,
            },
            TenantFsError::WrongKind { .. } => GuestPathError::ParentNotDirectory {
                guest: owned(),
                source,
            },
            source => GuestPathError::Tenant {
                guest: owned(),
                source,
            },
        };
        let root = TenantDir::open(root_host)
            .map_err(explain)?
            .labeled(*root_guest);
        if directory {
            return root
                .ensure_dir(relative)
                .map(Destination::Dir)
                .map_err(explain);
        }
        let parent = relative.parent().unwrap_or(Path::new(""));
        let dir = if parent.as_os_str().is_empty() {
            root
        } else {
            root.ensure_dir(parent).map_err(explain)?
        };
        let name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| GuestPathError::NotUtf8 { guest: owned() })?
            .to_string();
        match dir.meta(Path::new(&name), Links::Refuse).map_err(explain)? {
            Some(meta) if meta.kind == Kind::Symlink => Err(GuestPathError::Link {
                guest: owned(),
                source: None,
            }),
            Some(meta) if meta.kind == Kind::Dir => {
                Err(GuestPathError::IsDirectory { guest: owned() })
            }
            _ => Ok(Destination::File { dir, name }),
        }
    }
}

/// Where a host call writes for the guest: a directory, or a name in one.
enum Destination {
    Dir(TenantDir),
    File { dir: TenantDir, name: String },
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl super::bindings::dea::buildpack::types::Host for SandboxState {}

impl host::Host for SandboxState {
    async fn log(&mut self, kind: LogKind, message: String) -> wasmtime::Result<()> {
        let mut text = String::with_capacity(message.len() + 16);
        for line in message.lines() {
            let prefix = match kind {
                LogKind::Step => "-----> ",
                LogKind::Detail => "       ",
                LogKind::Warning => " !     ",
            };
            text.push_str(prefix);
            text.push_str(line);
            text.push('\n');
        }
        self.budget.charge(text.len())?;
        self.log.write_raw(text.as_bytes());
        Ok(())
    }

    async fn fetch(
        &mut self,
        request: FetchRequest,
    ) -> wasmtime::Result<Result<FetchResult, FetchError>> {
        let Some((service, grant)) = self.fetch.clone() else {
            return Ok(Err(FetchError::Denied(format!(
                "fetch of {} refused: downloads are only allowed during compile, not {}",
                request.url,
                self.phase.name()
            ))));
        };
        let destination =
            match self.host_destination(&request.destination, request.unpack.is_some()) {
                Ok(path) => path,
                Err(error) => return Ok(Err(FetchError::InvalidDestination(error.to_string()))),
            };
        let fetched = match service
            .fetch(&request.url, request.sha256.as_deref(), &grant)
            .await
        {
            Ok(fetched) => fetched,
            Err(error) => {
                self.log.warning(&format!("fetch failed: {error}"));
                return Ok(Err(to_guest_error(error)));
            }
        };
        self.log.detail(&fetched.log_line(&request.url));
        let placed = match (request.unpack, destination) {
            (None, Destination::File { dir, name }) => {
                copy_into_place(&fetched.blob, &dir, &name).map_err(PlaceError::Copy)
            }
            (Some(strip), Destination::Dir(dir)) => {
                let blob = fetched.blob.clone();
                let limits = self.unpack_limits;
                tokio::task::spawn_blocking(move || {
                    crate::droplet::unpack_into(&blob, &dir, limits, strip as usize)
                })
                .await
                .map_err(PlaceError::Task)
                .and_then(|r| r.map(|_| ()).map_err(PlaceError::Unpack))
            }
            _ => Err(PlaceError::Mismatch),
        };
        if let Err(e) = placed {
            return Ok(Err(FetchError::InvalidDestination(format!(
                "placing {} at {}: {e}",
                request.url, request.destination
            ))));
        }
        Ok(Ok(FetchResult {
            url_used: fetched.url_used,
            sha256: fetched.sha256,
            size: fetched.size,
            cached: fetched.cached,
        }))
    }

    async fn make_executable(&mut self, path: String) -> wasmtime::Result<Result<(), String>> {
        // The contract's error is a string: the refusal's words.
        Ok(self.make_executable_at(&path).map_err(|e| e.to_string()))
    }
}

impl SandboxState {
    fn make_executable_at(&self, guest: &str) -> Result<(), GuestPathError> {
        use std::os::unix::fs::PermissionsExt;
        let owned = || guest.to_string();
        if self.writable.is_empty() {
            return Err(GuestPathError::NotCompile {
                guest: owned(),
                phase: self.phase.name(),
            });
        }
        let Destination::File { dir, name } = self.host_destination(guest, false)? else {
            return Err(GuestPathError::NotRegularFile {
                guest: owned(),
                source: None,
            });
        };
        // Changed through the descriptor that was checked to be a regular file.
        let file =
            dir.open_file(Path::new(&name), Links::Refuse)
                .map_err(|source| match source {
                    TenantFsError::WrongKind { .. } => GuestPathError::NotRegularFile {
                        guest: owned(),
                        source: Some(source),
                    },
                    source => GuestPathError::Tenant {
                        guest: owned(),
                        source,
                    },
                })?;
        let io = |source| GuestPathError::Io {
            guest: owned(),
            source,
        };
        let mode = file.metadata().map_err(io)?.permissions().mode();
        file.set_permissions(std::fs::Permissions::from_mode((mode & 0o777) | 0o755))
            .map_err(io)
    }
}

fn to_guest_error(error: crate::fetch::FetchError) -> FetchError {
    use crate::fetch::FetchError as E;
    let message = error.to_string();
    match error {
        E::NotDeclared { .. }
        | E::Denied { .. }
        | E::Offline { .. }
        | E::BadUrl { .. }
        | E::Unpinned { .. } => FetchError::Denied(message),
        E::ChecksumMismatch { .. } => FetchError::ChecksumMismatch(message),
        E::Status { .. } => FetchError::NotFound(message),
        E::TooLarge { .. } => FetchError::TooLarge(message),
        E::Network { .. } | E::Cache(_) | E::Config { .. } | E::Client(_) => {
            FetchError::Network(message)
        }
    }
}

/// Copies a cached blob to `name` in `dir` via a temporary file in the same directory, so the
/// guest never sees a partial file and a link planted at `name` is replaced, not followed.
fn copy_into_place(blob: &Path, dir: &TenantDir, name: &str) -> io::Result<()> {
    let temp = format!(".dea-fetch-{}", uuid::Uuid::new_v4().simple());
    let mut to = dir.create_file(&temp, 0o644).map_err(io::Error::other)?;
    let copied = std::fs::File::open(blob).and_then(|mut from| io::copy(&mut from, &mut to));
    if let Err(e) = copied {
        let _ = dir.remove_file(&temp);
        return Err(e);
    }
    rustix::fs::renameat(dir.as_fd(), temp.as_str(), dir.as_fd(), name).map_err(|e| {
        let _ = dir.remove_file(&temp);
        io::Error::from(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a guest is told when a host call may not write where it asked (the contract
    /// carries these words as its error string).
    #[test]
    fn guest_path_refusals_read_as_before() {
        let guest = || "/app/../etc".to_string();
        for (error, text) in [
            (
                GuestPathError::NotWritable {
                    guest: "/etc/x".into(),
                },
                "/etc/x is not under /app, /cache or /tmp",
            ),
            (
                GuestPathError::DotSegment { guest: guest() },
                "/app/../etc must not contain '..' or '.'",
            ),
            (
                GuestPathError::Root {
                    guest: "/cache".into(),
                },
                "/cache names a directory, not a file",
            ),
            (
                GuestPathError::Link {
                    guest: "/app/l".into(),
                    source: None,
                },
                "/app/l goes through a symbolic link",
            ),
            (
                GuestPathError::NotCompile {
                    guest: "/app/x".into(),
                    phase: "detect",
                },
                "make-executable /app/x: only allowed during compile, not detect",
            ),
        ] {
            assert_eq!(error.to_string(), text);
        }
        assert_eq!(
            PlaceError::Mismatch.to_string(),
            "destination does not match the request"
        );
    }
}
