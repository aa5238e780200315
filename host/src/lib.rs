//! `dea`: a droplet execution agent whose buildpacks are WebAssembly components.
//!
//! The library holds everything the `dea` binary does, one module per concept:
//! [`config`] (one typed YAML config), [`buildpack`] (installed buildpacks and the wasm
//! runtime), [`fetch`] (the only road from a buildpack to the network), [`staging`] (source to
//! droplet) and [`droplet`] (safe unpacking, packing, `staging_info.yml`).

pub mod buildpack;
pub mod config;
pub mod container;
pub mod download;
pub mod droplet;
pub mod fetch;
pub mod files;
pub mod instance;
pub mod nats;
pub mod netns;
pub mod node;
pub mod phase;
pub mod private_dir;
pub mod proxy;
pub mod stack;
pub mod staging;
pub mod tenant_fs;
pub mod transfer;
pub mod units;
