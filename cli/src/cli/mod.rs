//! The command line's own pieces, wired in by `main.rs`: installed-buildpack management
//! (`dea buildpacks ...`), the default buildpacks built into the binary, and telling systemd
//! when `dea serve` is ready.

pub mod buildpacks;
pub mod defaults;
pub mod notify;
