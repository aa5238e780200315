//! An instance's home (`/home/vcap` in its container): unpacked from a droplet, then written
//! by the app for as long as it runs. Both make it a tenant's tree, so the agent's own uses of
//! it — the directories it bind-mounts, `staging_info.yml`, the log files it opens for the
//! container, the exit status, the crash logs it keeps — go through [`TenantDir`]: beneath the
//! home, never through a link, regular files only, every read capped.

use super::InstanceError;
use crate::tenant_fs::{Kind, Links, TenantDir, TenantFsError, WalkLimits};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest `staging_info.yml` read from a droplet.
const MAX_STAGING_INFO: u64 = 1 << 20;
/// Crash logs kept per instance: this many files, the last this many bytes of each.
const CRASH_LOG_FILES: usize = 32;
const CRASH_LOG_TAIL: u64 = 16 << 20;

/// What the agent takes from a freshly unpacked home before the container starts.
pub(super) struct PreparedHome {
    /// `staging_info.yml`'s `start_command`.
    pub staged_command: Option<String>,
    /// `logs/stdout.log` and `logs/stderr.log`, open for the container's output.
    pub stdout: File,
    pub stderr: File,
}

impl PreparedHome {
    /// Checks and prepares the home at `home` (unpacked from the droplet, nothing running in
    /// it yet) and hands it to the app's user.
    pub(super) fn new(home: &Path, uid: u32, gid: u32) -> Result<PreparedHome, InstanceError> {
        let dir = open_home(home)?;
        let staged_command = check_tree(&dir)?;
        let (stdout, stderr) = open_logs(&dir)?;
        dir.chown_tree(uid, gid, chown_limits())?;
        Ok(PreparedHome {
            staged_command,
            stdout,
            stderr,
        })
    }

    /// Prepares a home layered over a droplet's shared tree, which [`prepare_tree`] checked
    /// and handed to the app's user when it was unpacked: only what this instance adds (its
    /// log files) is new. Nothing else is touched, since a change to a shared file would
    /// copy it up into the instance's own layer.
    pub(super) fn layered(
        home: &Path,
        staged_command: Option<String>,
        uid: u32,
        gid: u32,
    ) -> Result<PreparedHome, InstanceError> {
        let dir = open_home(home)?;
        let (stdout, stderr) = open_logs(&dir)?;
        for file in [&stdout, &stderr] {
            rustix::fs::fchown(
                file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| InstanceError::Setup(format!("handing the logs to the app: {e}")))?;
        }
        Ok(PreparedHome {
            staged_command,
            stdout,
            stderr,
        })
    }
}

/// Checks a droplet's freshly unpacked tree (to be shared by the instances that layer
/// their homes over it) and hands it to the app's user; returns its staged start command.
pub(super) fn prepare_tree(
    tree: &Path,
    uid: u32,
    gid: u32,
) -> Result<Option<String>, InstanceError> {
    let dir = open_home(tree)?;
    let staged_command = check_tree(&dir)?;
    dir.remove_file("exit_status")?;
    dir.chown_tree(uid, gid, chown_limits())?;
    Ok(staged_command)
}

fn open_home(home: &Path) -> Result<TenantDir, InstanceError> {
    // Named as the app sees it in errors (which reach the controller and the user).
    Ok(TenantDir::open(home)?.labeled("/home/vcap"))
}

fn chown_limits() -> WalkLimits {
    WalkLimits {
        max_entries: 2_000_000,
        ..WalkLimits::default()
    }
}

/// The directories the agent relies on are real ones; returns `staging_info.yml`'s
/// `start_command`.
fn check_tree(dir: &TenantDir) -> Result<Option<String>, InstanceError> {
    // `app` is bind-mounted read-write at /app and `logs` receives the output: a droplet
    // whose `./app` or `./logs` is a link (to another instance's app, to /etc...) would
    // make runc or the agent follow it as root. They must be real directories.
    for name in ["app", "tmp", "logs"] {
        dir.ensure_dir(Path::new(name)).map_err(|e| match e {
            TenantFsError::Link { .. } | TenantFsError::WrongKind { .. } => InstanceError::Setup(
                format!("the droplet's ./{name} must be a directory, not a link or a file"),
            ),
            e => e.into(),
        })?;
    }
    Ok(dir
        .read_string(
            Path::new("staging_info.yml"),
            Links::Beneath,
            MAX_STAGING_INFO,
        )?
        .and_then(|text| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).ok())
        .and_then(|v| v["start_command"].as_str().map(str::to_string)))
}

/// Clears a droplet's stale `exit_status` and opens `logs/stdout.log` and `logs/stderr.log`
/// for the container's output.
fn open_logs(dir: &TenantDir) -> Result<(File, File), InstanceError> {
    dir.remove_file("exit_status")?;
    let logs = dir.open_dir(Path::new("logs"), Links::Refuse)?;
    let stdout = logs.create_file("stdout.log", 0o644)?;
    let stderr = logs.create_file("stderr.log", 0o644)?;
    Ok((stdout, stderr))
}

/// Copies the regular files of `home/logs` into `target` (an empty directory of the
/// agent's), as the DEA keeps a crashed instance's logs. The app could have replaced `logs`
/// or any file in it with a link (to the agent's state, whose copy the directory server
/// would then serve), a FIFO or something endless: only regular files directly in a real
/// `logs` directory are copied, and only their last [`CRASH_LOG_TAIL`] bytes.
pub(super) fn keep_crash_logs(home: &Path, target: &Path) -> Result<usize, TenantFsError> {
    let home = TenantDir::open(home)?;
    let logs = home.open_dir(Path::new("logs"), Links::Refuse)?;
    let target = TenantDir::create(target)?;
    let mut names = Vec::new();
    let single_level = WalkLimits {
        max_depth: 1,
        max_entries: 10_000,
        deadline: None,
    };
    logs.walk(single_level, true, |entry| {
        if entry.meta.kind == Kind::File && names.len() < CRASH_LOG_FILES {
            names.push(entry.name.to_string_lossy().into_owned());
        }
        Ok::<_, TenantFsError>(crate::tenant_fs::Flow::Skip)
    })?;
    let mut kept = 0;
    for name in names {
        let mut from = match logs.open_file(Path::new(&name), Links::Refuse) {
            Ok(file) => file,
            // Swapped for something else since it was listed: not copied.
            Err(_) => continue,
        };
        let size = from.metadata().map(|m| m.len()).unwrap_or(0);
        if size > CRASH_LOG_TAIL {
            let _ = from.seek(SeekFrom::Start(size - CRASH_LOG_TAIL));
        }
        let mut to = target.create_file(&name, 0o644)?;
        std::io::copy(&mut from.take(CRASH_LOG_TAIL), &mut to).map_err(|source| {
            TenantFsError::Io {
                path: target.path().join(&name),
                source,
            }
        })?;
        kept += 1;
    }
    Ok(kept)
}
