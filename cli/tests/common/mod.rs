//! What every CLI test file needs: where the workspace is, and a command's output as text.
//! Each test file is a crate of its own and uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// The workspace root (examples, plugins and `target/buildpacks` are found from it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Bytes of a command's output, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's standard output, then its standard error.
pub fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// A port nothing listens on at the moment, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
