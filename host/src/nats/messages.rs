//! The DEA's NATS messages: the wire contract lives in the `dea-protocol` crate, shared with
//! the platform (controller, router, `dea ctl`) that sends them.

pub use dea_protocol::*;
