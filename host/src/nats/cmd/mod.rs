//! One file per command the agent takes from the bus, as mini-redis does: each parses what it
//! needs, checks it whole, applies it, and replies.

pub(super) mod filter;
pub(super) mod find;
pub(super) mod start;
pub(super) mod status;
pub(super) mod stop;
pub(super) mod update;
