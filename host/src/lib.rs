//! `dea`: a droplet execution agent whose buildpacks are WebAssembly components.
//!
//! The library holds everything a node does; the `dea` binary (crate `dea-cli`) and the NATS
//! agent sit on top. One module per concept, listed in the order data flows — source →
//! workspace → buildpacks → droplet → instance → files — each using only those before it
//! (and [`config`], whose sections they read):
//!
//! - Ground floor: [`units`] (sizes as people read them), [`private_dir`] (the agent's own
//!   0700 state), [`tenant_fs`] (files in trees a tenant could have written, opened without
//!   following its links), [`download`] (one streaming HTTP download with size cap, timeouts
//!   and checksum).
//! - Isolation: [`netns`] (network namespaces), [`container`] (OCI bundles run with `runc`),
//!   [`stack`] (the root filesystems scripts and apps run on).
//! - Archives: [`droplet`] (safe unpacking, packing, `staging_info.yml`), [`blobstore`] (the
//!   platform's JetStream object stores) and [`transfer`] (files to and from a Cloud
//!   Controller or the blobstore).
//! - Staging: [`phase`] (the contract any buildpack meets, whatever it is made of),
//!   [`fetch`] (the one road from a buildpack to the network: mirrors, allowlist, checksums,
//!   cache) with [`proxy`] (how unmodified classic buildpacks reach it), [`buildpack`]
//!   (installed buildpacks; the wasm runtime and the classic adapter both implement the phase
//!   contract) and [`staging`] (a staging task end to end, local or for a controller).
//! - Running: [`instance`] (droplets as instances: registry, start, monitor, capacity,
//!   snapshot and recovery, ports the kernel publishes) and [`files`] (the directory server:
//!   instance and staging files behind HMAC-signed URLs).
//! - On top: [`config`] (one typed YAML config made of each module's section, with defaults
//!   that work), [`nats`] (Cloud Foundry's DEA protocol: parse, validate, call, reply) and
//!   [`node`] (one node assembled from one [`config::Config`]).

pub mod blobstore;
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
pub mod sbom;
pub mod stack;
pub mod staging;
pub mod tenant_fs;
pub mod transfer;
pub mod units;
