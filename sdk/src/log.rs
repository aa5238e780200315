//! Heroku-style staging-log lines: `-----> step`, indented detail, ` !     warning`.
//!
//! These go through the host's `log` import, so they reach the user live and land in the
//! droplet's `logs/staging_task.log`. Plain `println!` works too and is shown as-is.

use crate::bindings::dea::buildpack::host::{self, LogKind};

/// A step heading: `-----> message`.
pub fn step(message: &str) {
    host::log(LogKind::Step, message);
}

/// Detail under a step, indented by seven spaces.
pub fn detail(message: &str) {
    host::log(LogKind::Detail, message);
}

/// A warning: ` !     message`.
pub fn warn(message: &str) {
    host::log(LogKind::Warning, message);
}
