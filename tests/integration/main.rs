//! The end-to-end tests, in one test binary: each module was once a binary of its own, and
//! every binary linked the whole agent (wasmtime included) again. One link instead of eleven
//! keeps `cargo test` quick on small machines; `cargo test -p dea-tests --test integration
//! agent::` runs one module's tests (test names are `module::test_name`).
//!
//! The soak (`tests/soak.rs`) stays a binary of its own: it counts the whole process and
//! host, so nothing else may run in its process meanwhile.

mod agent;
mod classic;
mod detect;
mod fetch;
mod files;
mod guests;
mod hostile_archives;
mod hostile_buildpacks;
mod instances;
mod layered_homes;
mod mirrors;
mod reproducible;
mod restarts;
mod sbom;
mod stacks;
mod staging;
