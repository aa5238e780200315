//! Paths from the user, made absolute at the edge of the command line (a module of the
//! `dea` binary, not of the library).

use crate::{Cli, Command};
use anyhow::{Context, Result};
use dea::buildpack::BuildpackSet;
use dea::config::Config;
use std::path::{Path, PathBuf};

/// `path` made absolute against the current directory. runc resolves a relative mount
/// source against its bundle, and the agent hands user paths on to it (an app `dea detect`
/// mounts as it is, a buildpack, a rootfs), so every path from the user is absolute from the
/// edge on, whatever part of the agent ends up using it.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn absolute_in_place(path: &mut PathBuf) -> Result<()> {
    *path = absolute(path)?;
    Ok(())
}

/// Makes the paths given on the command line absolute (see [`absolute`]). `--buildpack`
/// values are names or paths, and are seen to once the installed ids are known.
pub fn absolute_cli_paths(cli: &mut Cli) -> Result<()> {
    let global = cli.config.iter_mut().chain(cli.base_dir.iter_mut());
    for path in global.chain(cli.buildpack_dirs.iter_mut()) {
        absolute_in_place(path)?;
    }
    match &mut cli.command {
        Command::Stage(args) => {
            let more = args.output.iter_mut().chain(args.verify.iter_mut());
            for path in std::iter::once(&mut args.app)
                .chain(more)
                .chain(args.cache.iter_mut())
            {
                absolute_in_place(path)?;
            }
        }
        Command::Detect { app, .. } => absolute_in_place(app)?,
        Command::Run(args) if !args.droplet.contains("://") => {
            args.droplet = absolute(Path::new(&args.droplet))?.display().to_string();
        }
        _ => {}
    }
    Ok(())
}

/// A `--buildpack NAME`: an installed id stays a name (ids win, as in
/// [`BuildpackSet::find`]); anything else that exists is a path, made absolute.
pub fn buildpack_arg(name: String, installed: &BuildpackSet) -> Result<String> {
    if installed.iter().any(|bp| bp.id == name) || !Path::new(&name).exists() {
        return Ok(name);
    }
    Ok(absolute(Path::new(&name))?.display().to_string())
}

/// Paths in the configuration file count from the current directory, as before; they are
/// made absolute for the same reason as the command line's. (`classic.runc` is a command
/// looked up in PATH, not a path.)
pub fn absolute_config_paths(config: &mut Config) -> Result<()> {
    let paths = [&mut config.base_dir]
        .into_iter()
        .chain(config.buildpack_dirs.iter_mut())
        .chain(config.classic.rootfs.iter_mut())
        .chain(config.wasm.cache_dir.iter_mut())
        .chain(config.fetch.cache_dir.iter_mut());
    for path in paths {
        absolute_in_place(path)?;
    }
    Ok(())
}
