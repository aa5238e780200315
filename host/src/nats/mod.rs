//! Cloud Foundry's DEA protocol over NATS.
//!
//! So far: the message types ([`messages`]), one serde struct per message, in the wire
//! format of dea_ng (reference dea_ng.md §2–§4). The agent loop that subscribes and answers
//! comes with the NATS issue.

pub mod messages;
