//! `dea buildpacks`: the installed buildpacks of the state directory, managed as Cloud
//! Foundry's `cf buildpacks`, `create-buildpack`, `delete-buildpack` and `update-buildpack
//! -i` do, plus the detection set every other command stages with.

use super::defaults::{DEFAULT_BUILDPACKS, SOURCE};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dea::buildpack::store::{BuildpackStore, detection_set};
use dea::buildpack::wasm::WasmRuntime;
use dea::buildpack::{BuildpackKind, BuildpackSet};
use dea::config::Config;
use dea_buildpack_tools::check::WorldCheck;
use std::path::Path;

#[derive(Subcommand)]
pub enum BuildpacksCommand {
    /// Install a buildpack: a wasm buildpack directory (buildpack.toml and its component),
    /// or a classic one (a directory with bin/detect, a .zip or a .tgz), by path or by
    /// http(s) URL. It is copied into the state directory.
    Add {
        /// A directory, .zip or .tgz, or an http(s) URL of an archive.
        source: String,
        /// Its place in the detection order, 1 being first [default: last].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        position: Option<u64>,
        /// The id of a classic buildpack [default: its directory or archive name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Uninstall a buildpack.
    Remove { id: String },
    /// Move a buildpack to another place in the detection order.
    Move {
        id: String,
        /// Its new place, 1 being first (past the end: last).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        position: u64,
    },
    /// Install the buildpacks built into this binary again: each replaces the installed
    /// one of its id where it stands (after an upgrade of dea), a missing one goes last.
    InstallDefaults,
}

/// The store of `config`'s state directory.
pub fn store(config: &Config) -> BuildpackStore {
    BuildpackStore::new(config.installed_buildpacks_dir())
}

/// A store never set up gets the built-in buildpacks on first use, as a new Cloud Foundry
/// has its system buildpacks: a fresh install stages apps at once.
fn seed(store: &BuildpackStore) -> Result<()> {
    let installed = store.seed(DEFAULT_BUILDPACKS).with_context(|| {
        format!(
            "installing the default buildpacks into {}",
            store.dir().display()
        )
    })?;
    if !installed.is_empty() {
        super::defaults::page_out();
        let names: Vec<String> = installed
            .iter()
            .map(|bp| format!("{} {}", bp.id, bp.version))
            .collect();
        eprintln!(
            "Installed the default buildpacks into {}: {}",
            store.dir().display(),
            names.join(", ")
        );
    }
    Ok(())
}

/// The buildpacks to detect with. `--buildpacks DIR` (`only_dirs`) means exactly those
/// directories; otherwise the installed buildpacks in their order, then `buildpack_dirs`.
pub fn detection_buildpacks(config: &Config, only_dirs: bool) -> Result<BuildpackSet> {
    let store = store(config);
    let installed = if only_dirs {
        None
    } else {
        seed(&store)?;
        Some(&store)
    };
    detection_set(
        installed,
        &config.buildpack_dirs,
        &config.buildpack_order,
        &config.buildpack_unpack_dir(),
    )
    .context("reading installed buildpacks")
}

/// What to tell someone who has no buildpacks.
pub fn none_found(config: &Config) -> String {
    let mut message = format!(
        "no buildpacks: none installed in {}",
        config.installed_buildpacks_dir().display()
    );
    if !config.buildpack_dirs.is_empty() {
        message.push_str(&format!(" or found in {:?}", config.buildpack_dirs));
    }
    message.push_str("; install one with `dea buildpacks add PATH|URL`");
    if DEFAULT_BUILDPACKS.is_empty() {
        message.push_str(&format!(
            " (this dea was built without default buildpacks, looked for in {SOURCE}: \
             run scripts/build-plugins in a dea checkout, then build dea again)"
        ));
    } else {
        message.push_str(", or the built-in ones with `dea buildpacks install-defaults`");
    }
    message
}

/// `dea buildpacks`: the detection order, installed buildpacks and extra directories alike,
/// and why an installed one does not load.
pub fn list(config: &Config, buildpacks: &BuildpackSet, only_dirs: bool) -> Result<()> {
    println!(
        "{:<4} {:<16} {:<10} {:<7} PATH",
        "#", "ID", "VERSION", "KIND"
    );
    for (index, bp) in buildpacks.iter().enumerate() {
        println!(
            "{:<4} {:<16} {:<10} {:<7} {}",
            index + 1,
            bp.id,
            bp.version,
            bp.kind_name(),
            bp.dir.display()
        );
    }
    // What could not be read is listed too: an operator looking for a buildpack that is not
    // used should find out why here.
    for skipped in buildpacks.skipped() {
        println!("skipped {}:", skipped.path.display());
        for line in skipped.reason.to_string().lines() {
            println!("    {line}");
        }
    }
    if !only_dirs {
        for entry in store(config).installed()? {
            if let Err(error) = entry.buildpack {
                eprintln!(
                    "installed buildpack {} does not load (dea buildpacks remove {} to drop it): {error}",
                    entry.id, entry.id
                );
            }
        }
    }
    if buildpacks.is_empty() {
        bail!("{}", none_found(config));
    }
    Ok(())
}

/// `dea buildpacks add|remove|move|install-defaults`.
pub async fn manage(config: &Config, command: &BuildpacksCommand) -> Result<()> {
    let store = store(config);
    // Changes apply to a store that has its defaults, or the first `add` would leave a
    // fresh install with that one buildpack and never the built-in ones.
    if !matches!(command, BuildpacksCommand::InstallDefaults) {
        seed(&store)?;
    }
    match command {
        BuildpacksCommand::Add {
            source,
            position,
            name,
        } => {
            let position = position.map(|p| usize::try_from(p).unwrap_or(usize::MAX));
            // A wasm buildpack's component is compiled into the agent's cache now, once,
            // rather than by the first staging that needs it (seconds for a large one).
            let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir())
                .context("starting the wasm engine to compile the buildpack")?;
            let check = (WorldCheck, &*runtime);
            let buildpack = if source.contains("://") {
                let scheme = source.split("://").next().unwrap_or_default();
                if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                    bail!("{source}: only http(s) URLs are downloaded; give a local path instead");
                }
                let downloaded = store
                    .download(source, config.agent.max_download_mb << 20)
                    .await?;
                let name = name.clone().or_else(|| downloaded.name.clone());
                store.add(&downloaded.path, name.as_deref(), position, &check)?
            } else {
                store.add(Path::new(source), name.as_deref(), position, &check)?
            };
            let at = store
                .order()?
                .unwrap_or_default()
                .iter()
                .position(|id| *id == buildpack.id)
                .map_or(0, |at| at + 1);
            println!(
                "Installed {} {} ({}) at position {at}: {}",
                buildpack.id,
                buildpack.version,
                buildpack.kind_name(),
                buildpack.dir.display()
            );
        }
        BuildpacksCommand::Remove { id } => {
            store.remove(id)?;
            println!("Removed {id}");
        }
        BuildpacksCommand::Move { id, position } => {
            store.move_to(id, usize::try_from(*position).unwrap_or(usize::MAX))?;
            let order = store.order()?.unwrap_or_default();
            println!("Order: {}", order.join(", "));
        }
        BuildpacksCommand::InstallDefaults => {
            if DEFAULT_BUILDPACKS.is_empty() {
                bail!(
                    "this dea was built without default buildpacks, looked for in {SOURCE}: \
                     run scripts/build-plugins in a dea checkout, then build dea again"
                );
            }
            let installed = store.install_defaults(DEFAULT_BUILDPACKS)?;
            super::defaults::page_out();
            let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir())
                .context("starting the wasm engine to compile the buildpacks")?;
            for (buildpack, replaced) in installed {
                println!(
                    "{} {} {}",
                    if replaced { "Updated" } else { "Installed" },
                    buildpack.id,
                    buildpack.version
                );
                // Compiled into the agent's cache now, not by the first staging.
                if let BuildpackKind::Wasm { component } = &buildpack.kind
                    && let Err(e) = runtime.load(component)
                {
                    eprintln!("warning: compiling {}: {e}", buildpack.id);
                }
            }
        }
    }
    Ok(())
}
