//! The buildpack contract (`wit/buildpack.wit` and its vendored WASI deps), built into the
//! binary so that `dea buildpack check`, `componentize`, `bindings` and `new` work anywhere,
//! not only inside a source checkout.

use std::path::{Path, PathBuf};
use wit_parser::{PackageId, Resolve, WorldId};

/// The world every buildpack implements.
pub const WORLD: &str = "dea:buildpack/buildpack@0.1.0";

/// The WIT files as they sit under `wit/`, dependencies before their users (the order
/// [`resolve`] pushes them in).
pub const FILES: &[(&str, &str)] = &[
    ("deps/io/io.wit", include_str!("../../wit/deps/io/io.wit")),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../wit/deps/random/random.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../wit/deps/sockets/sockets.wit"),
    ),
    (
        "deps/cli/cli.wit",
        include_str!("../../wit/deps/cli/cli.wit"),
    ),
    ("buildpack.wit", include_str!("../../wit/buildpack.wit")),
];

/// Why a WIT contract could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("reading WIT from {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("WIT in {path} has no world {world}: {message}")]
    World {
        path: PathBuf,
        world: String,
        message: String,
    },
    #[error("writing WIT to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The built-in contract, parsed, with its `buildpack` world.
pub fn resolve() -> Result<(Resolve, WorldId), ContractError> {
    let mut resolve = Resolve::default();
    let mut main = None;
    for (path, text) in FILES {
        let id = resolve
            .push_str(path, text)
            .map_err(|e| ContractError::Parse {
                path: PathBuf::from(path),
                message: format!("{e:#}"),
            })?;
        main = Some(id);
    }
    select(
        resolve,
        main.into_iter().collect(),
        Path::new("(built-in)"),
        WORLD,
    )
}

/// A contract read from a `wit` directory (with its `deps/`), and the world named `world`.
pub fn resolve_dir(dir: &Path, world: &str) -> Result<(Resolve, WorldId), ContractError> {
    let mut resolve = Resolve::default();
    let (main, _) = resolve.push_path(dir).map_err(|e| ContractError::Parse {
        path: dir.to_path_buf(),
        message: format!("{e:#}"),
    })?;
    select(resolve, vec![main], dir, world)
}

fn select(
    resolve: Resolve,
    main: Vec<PackageId>,
    path: &Path,
    world: &str,
) -> Result<(Resolve, WorldId), ContractError> {
    let id = resolve
        .select_world(&main, Some(world))
        .map_err(|e| ContractError::World {
            path: path.to_path_buf(),
            world: world.to_string(),
            message: format!("{e:#}"),
        })?;
    Ok((resolve, id))
}

/// Writes the contract's files under `dir` (as `dir/buildpack.wit`, `dir/deps/...`), for
/// tools such as componentize-py that read WIT from disk.
pub fn write_to(dir: &Path) -> Result<(), ContractError> {
    for (path, text) in FILES {
        let target = dir.join(path);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, text)
        };
        write().map_err(|source| ContractError::Write {
            path: target.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_contract_parses_and_has_the_buildpack_world() {
        let (resolve, world) = resolve().expect("built-in WIT parses");
        let world = &resolve.worlds[world];
        assert_eq!(world.name, "buildpack");
        let exports: Vec<String> = world
            .exports
            .keys()
            .map(|key| resolve.name_world_key(key))
            .collect();
        assert_eq!(exports, ["detect", "compile", "release"]);
    }

    #[test]
    fn the_built_in_contract_matches_the_wit_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let (resolve, world) = resolve_dir(&dir, WORLD).expect("wit/ parses");
        assert_eq!(resolve.worlds[world].name, "buildpack");
        let mut on_disk = Vec::new();
        for entry in walk(&dir) {
            let relative = entry
                .strip_prefix(&dir)
                .expect("under wit/")
                .to_string_lossy()
                .into_owned();
            on_disk.push(relative);
        }
        on_disk.sort();
        let mut built_in: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        built_in.sort();
        assert_eq!(
            on_disk, built_in,
            "a WIT file was added or removed: update FILES"
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read wit dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
