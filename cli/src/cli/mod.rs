//! The command line, one module per command (wired in by `main.rs`): `serve`, `run`,
//! `stage`, `diff`, `files`, `stack`, `buildpack` (guest tooling), installed-buildpack
//! management (`dea buildpacks ...`), the default buildpacks built into the binary, and telling systemd
//! when `dea serve` is ready; and the platform's `controller`, `router` and `ctl`.

pub mod buildpack;
pub mod buildpacks;
pub mod defaults;
pub mod diff;
pub mod files;
pub mod notify;
pub mod pin;
pub mod platform;
pub mod run;
pub mod sbom;
pub mod serve;
pub mod stack;
pub mod stage;

/// A `--env KEY=VALUE` argument.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}
