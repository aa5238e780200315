//! Tools for writing buildpacks, as `dea buildpack new|check|componentize|bindings|wit` offers
//! them: none of it runs a buildpack, so none of it is in the agent's library.
//!
//! - [`contract`]: the buildpack contract (`wit/`), built in, parsed, written out.
//! - [`scaffold`]: a new buildpack project in Rust, Python or C that builds and passes its
//!   own test as generated.
//! - [`check`]: a component held to the buildpack world before it is installed (and
//!   [`check::WorldCheck`], the check `dea buildpacks add` hands to the store).
//! - [`componentize`]: a WASI preview 1 core module (C, Zig, ...) made into a component with
//!   the preview 1 adapter.
//! - [`bindings`]: C guest bindings for the world, from `wit-bindgen`'s C backend.
//!
//! # Why a crate of its own, and why it depends on `dea`
//!
//! These are the only users of `wit-component`, `wit-parser`, `wit-bindgen-c`, `wasmparser`
//! and the preview 1 adapter: parsing and encoding WIT is authoring work, while the agent
//! loads components with wasmtime alone. Kept here, the `dea` library (the agent) compiles
//! without them.
//!
//! The check must agree with the runtime, so this crate depends on `dea` rather than the
//! other way round: it reads the runtime's allow-list of imports
//! ([`dea::buildpack::wasm::ALLOWED_IMPORTS`]) instead of copying it, and implements the
//! store's [`dea::buildpack::store::ComponentCheck`] hook. `dea buildpack check` then links
//! the component with the runtime itself ([`dea::buildpack::wasm::WasmRuntime::load`]).
//!
//! The `dea` binary needs both crates, and a package's dependencies are shared by its
//! library and its binaries: a binary in the `dea` package depending on this crate would be
//! a cycle (`dea` → `dea-buildpack-tools` → `dea`) and would make the tools a dependency of
//! the library again. So the binary is a package of its own, `dea-cli` (`cli/`, installed
//! with `cargo install --path cli`), depending on `dea` and on this crate.

pub mod bindings;
pub mod check;
pub mod componentize;
pub mod contract;
pub mod scaffold;
