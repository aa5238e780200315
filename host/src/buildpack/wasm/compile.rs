//! Compiling a component to native code, away from the engine that runs it.
//!
//! Cranelift is the biggest thing the agent ever does in memory: the 18 MB Python buildpack
//! takes hundreds of MB at the peak, and what a compile leaves behind stays for the agent's
//! life. The engine keeps its compiler's scratch contexts for reuse (tens of MB), and the
//! binary's Cranelift code pages, once touched, count in the agent's RSS. So:
//!
//! - where the program can compile in a child of its own ([`compile_in_child`], which the
//!   `dea` binary calls with itself), a compile is `PROGRAM compile-component LIMITS`: the
//!   component's bytes on stdin, the compiled code on stdout. The agent never runs
//!   Cranelift, and a component built to blow up the compiler takes down only the child.
//! - otherwise (the library's own tests, programs that embed it) the compile runs on an
//!   engine made for it and dropped after, so its contexts go with it.
//!
//! The child gets the bytes the parent read and hashed, never the path: a file swapped
//! between the hash and the compile would otherwise put another component's code under the
//! first one's digest in the cache.

use super::{LoadError, build_engine};
use crate::config::WasmConfig;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The program that compiles components when run as `PROGRAM compile-component LIMITS`.
static CHILD: OnceLock<PathBuf> = OnceLock::new();

/// The subcommand [`compile_in_child`]'s program must answer.
pub const SUBCOMMAND: &str = "compile-component";

/// Most of a failed child's stderr kept for the error (the rest is cut).
const MAX_ERROR_TEXT: u64 = 8 << 10;

/// From now on, this process compiles components by running `program compile-component`,
/// which must call [`serve_compile`]. Set once (by `dea` itself, before any runtime loads a
/// component); later calls change nothing.
pub fn compile_in_child(program: PathBuf) {
    let _ = CHILD.set(program);
}

/// The child's side: compiles the component on `input` for an engine configured by
/// `limits` (JSON of [`WasmConfig`]) and writes the code to `output`.
pub fn serve_compile(
    limits: &str,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<(), CompileError> {
    let limits: WasmConfig = serde_json::from_str(limits).map_err(CompileError::Limits)?;
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(CompileError::Io)?;
    let code = compile_here(&limits, &bytes)?;
    output.write_all(&code).map_err(CompileError::Io)?;
    output.flush().map_err(CompileError::Io)
}

/// Compiles `bytes` (the component at `label`) into `dest`, written atomically: in the
/// child when one is set, else here on a throwaway engine.
pub(super) fn compile_to(
    limits: &WasmConfig,
    bytes: &[u8],
    label: &Path,
    dest: &Path,
) -> Result<(), LoadError> {
    let cache = |source| LoadError::Cache {
        path: dest.to_path_buf(),
        source,
    };
    let invalid = |source| LoadError::Invalid {
        path: label.to_path_buf(),
        source,
    };
    let Some(program) = CHILD.get() else {
        let code = compile_here(limits, bytes).map_err(|e| invalid(e.into()))?;
        return crate::fetch::write_atomic(dest, &code).map_err(cache);
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(cache)?;
    match run_child(program, limits, bytes, temp.as_file_mut()) {
        Ok(()) => {}
        Err(ChildError::Spawn(e)) => {
            // The program is gone (an upgrade in place): compiling here is slower on memory,
            // not wrong.
            tracing::warn!(program = %program.display(), "compiling in this process: {e}");
            let code = compile_here(limits, bytes).map_err(|e| invalid(e.into()))?;
            return crate::fetch::write_atomic(dest, &code).map_err(cache);
        }
        Err(ChildError::Io(e)) => return Err(cache(e)),
        Err(ChildError::Failed(text)) => return Err(invalid(wasmtime::Error::msg(text))),
    }
    temp.persist(dest).map_err(|e| cache(e.error))?;
    tracing::debug!(program = %program.display(), label = %label.display(), "compiled in a child process");
    Ok(())
}

/// Compiles on an engine made for this compile alone.
fn compile_here(limits: &WasmConfig, bytes: &[u8]) -> Result<Vec<u8>, CompileError> {
    let engine = build_engine(limits).map_err(CompileError::Engine)?;
    engine
        .precompile_component(bytes)
        .map_err(CompileError::Compile)
}

enum ChildError {
    Spawn(std::io::Error),
    Io(std::io::Error),
    /// The child ran and refused, with its stderr.
    Failed(String),
}

fn run_child(
    program: &Path,
    limits: &WasmConfig,
    bytes: &[u8],
    out: &mut std::fs::File,
) -> Result<(), ChildError> {
    let limits =
        serde_json::to_string(limits).map_err(|e| ChildError::Failed(format!("limits: {e}")))?;
    let mut child = Command::new(program)
        .arg(SUBCOMMAND)
        .arg(limits)
        .env("DEA_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ChildError::Spawn)?;
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ChildError::Failed("child without its pipes".into()));
    };
    // stderr is drained beside stdout, so neither pipe can fill and stall the child; the
    // child reads all its input before it writes anything.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.take(MAX_ERROR_TEXT).read_to_string(&mut text);
        text
    });
    let fed = stdin.write_all(bytes);
    drop(stdin);
    let copied = std::io::copy(&mut stdout, out);
    let status = child.wait().map_err(ChildError::Io)?;
    let text = errors.join().unwrap_or_default();
    if !status.success() {
        let text = text.trim();
        return Err(ChildError::Failed(if text.is_empty() {
            format!("the compiler process ended with {status}")
        } else {
            text.to_string()
        }));
    }
    fed.map_err(ChildError::Io)?;
    copied.map_err(ChildError::Io)?;
    Ok(())
}

/// Why a compile failed, in the process that ran it.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("compile limits: {0}")]
    Limits(#[source] serde_json::Error),
    #[error("compile: {0}")]
    Io(#[source] std::io::Error),
    #[error("wasm engine: {0:#}")]
    Engine(#[source] LoadError),
    #[error("{0:#}")]
    Compile(#[source] wasmtime::Error),
}
