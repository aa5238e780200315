//! The platform around `dea` agents, on NATS as the one distributed engine (issue 16):
//! shared state on JetStream (the blobstore for app packages and droplets, desired app state
//! in a key-value bucket), the controller that stages and places apps through agents, the
//! router that proxies HTTP to instances from `router.register`, and `dea ctl`.
//!
//! It depends on the agents only through the wire contract in `dea-protocol`.

pub mod blobs;
pub mod config;
pub mod controller;
pub mod ctl;
pub mod desired;
pub mod error;
pub mod events;
pub mod jetstream;
pub mod lease;
pub mod names;
pub mod router;
pub mod streams;
