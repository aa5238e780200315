//! Guest bindings for languages without their own generator here: C (and anything that can
//! call C, such as Zig), produced by `wit-bindgen`'s C backend from the built-in contract.
//!
//! The output is `buildpack.h`, `buildpack.c` and `buildpack_component_type.o` (the world,
//! as a custom section the linker keeps, so `componentize` knows what the module exports).

use std::path::{Path, PathBuf};
use wit_bindgen_core::Files;

/// Why bindings could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BindingsError {
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractError),
    #[error("generating C bindings: {0}")]
    Generate(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes C bindings for the buildpack world (or `world` in the `wit` directory `dir`) into
/// `out`, returning the files written.
pub fn write_c(out: &Path, wit: Option<(&Path, &str)>) -> Result<Vec<PathBuf>, BindingsError> {
    let (mut resolve, world) = match wit {
        Some((dir, world)) => crate::contract::resolve_dir(dir, world)?,
        None => crate::contract::resolve()?,
    };
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| BindingsError::Generate(format!("{e:#}")))?;
    std::fs::create_dir_all(out).map_err(|source| BindingsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents).map_err(|source| BindingsError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}
