//! Turning a core WebAssembly module into a buildpack component.
//!
//! Languages whose toolchains stop at a WASI preview 1 core module (C with clang and
//! wasi-libc, Zig, plain Go) become buildpacks here: the module's imports from
//! `wasi_snapshot_preview1` are satisfied by the preview 1 adapter that matches this host's
//! wasmtime, and its exports are lifted to the `buildpack` world. This is what
//! `wasm-tools component new --adapt` does, without a download outside the registries.

use std::path::Path;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::{ComponentEncoder, StringEncoding};

/// Why a module could not be made into a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    #[error("this is already a component; `dea buildpack check` it instead")]
    AlreadyComponent,
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractError),
    #[error("embedding the world in the module: {0}")]
    Embed(String),
    #[error("building the component: {0}")]
    Encode(String),
}

/// Where the world the module implements comes from.
#[derive(Debug, Clone, Copy)]
pub enum WorldSource<'a> {
    /// The module carries it (a `component-type` custom section, as `wit-bindgen c` emits);
    /// falls back to the built-in buildpack world when it does not.
    Embedded,
    /// A `wit` directory and the world in it to use.
    Dir { dir: &'a Path, world: &'a str },
}

/// What [`componentize`] learned about the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Componentized {
    pub component: Vec<u8>,
    /// Whether the module was a command (`_start`) rather than a reactor.
    pub command: bool,
    /// Whether the world came from outside the module (no `component-type` section).
    pub embedded_world: bool,
}

/// Adapts `module` (a WASI preview 1 core module) into a component.
pub fn componentize(
    module: &[u8],
    world: WorldSource<'_>,
) -> Result<Componentized, ComponentizeError> {
    let shape = inspect(module)?;
    let mut module = module.to_vec();
    let embed = match world {
        WorldSource::Embedded if shape.has_component_type => None,
        WorldSource::Embedded => Some(crate::contract::resolve()?),
        WorldSource::Dir { dir, world } => Some(crate::contract::resolve_dir(dir, world)?),
    };
    let embedded_world = embed.is_some();
    if let Some((resolve, world)) = embed {
        wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
            .map_err(|e| ComponentizeError::Embed(format!("{e:#}")))?;
    }
    // A buildpack is a library of three exports, so the reactor adapter; a module with a
    // `_start` is a command and needs the command adapter's start-up.
    let adapter = if shape.command {
        WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    let encode = || -> anyhow::Result<Vec<u8>> {
        let mut encoder = ComponentEncoder::default();
        encoder.validate(true).module(&module)?;
        if shape.imports_preview1 {
            encoder.adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)?;
        }
        encoder.encode()
    };
    let component = encode().map_err(|e| ComponentizeError::Encode(format!("{e:#}")))?;
    Ok(Componentized {
        component,
        command: shape.command,
        embedded_world,
    })
}

struct Shape {
    has_component_type: bool,
    command: bool,
    imports_preview1: bool,
}

fn inspect(bytes: &[u8]) -> Result<Shape, ComponentizeError> {
    use wasmparser::{Encoding, Payload};
    let mut shape = Shape {
        has_component_type: false,
        command: false,
        imports_preview1: false,
    };
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| ComponentizeError::NotWasm(e.to_string()))? {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => return Err(ComponentizeError::AlreadyComponent),
            Payload::CustomSection(section) if section.name().starts_with("component-type") => {
                shape.has_component_type = true;
            }
            Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    let import = import.map_err(|e| ComponentizeError::NotWasm(e.to_string()))?;
                    shape.imports_preview1 |= import.module == WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME;
                }
            }
            Payload::ExportSection(exports) => {
                for export in exports {
                    let export = export.map_err(|e| ComponentizeError::NotWasm(e.to_string()))?;
                    shape.command |= export.name == "_start";
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}
