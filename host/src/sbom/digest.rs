//! Digests for the bill of materials: of a file as received, and of a directory tree.
//!
//! A directory (an app pushed as one, a classic buildpack) has no bytes of its own to hash,
//! so it gets a canonical tree digest, `dea-tree-v1`: SHA-256 over one record per entry, in
//! depth-first order with the children of each directory sorted by name (bytes):
//!
//! ```text
//! d <path>\0\n                      a directory
//! f <path>\0<sha256 of content>\n   a regular file
//! x <path>\0<sha256 of content>\n   a regular file its owner may execute
//! l <path>\0<link target>\n         a symbolic link (not followed)
//! ```
//!
//! `<path>` is relative to the root, `/`-separated. Times, owners and the other mode bits
//! are left out (a checkout or an unpacked archive does not keep them alike); the execute
//! bit stays because it changes what runs. FIFOs, sockets and devices are skipped: nothing
//! stages or packs them.
//!
//! The trees are a tenant's, so they are walked descriptor-relative without following
//! links ([`crate::tenant_fs`]), within the caps given.

use crate::tenant_fs::{Flow, Kind, Links, TenantDir, TenantFsError, WalkLimits};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The SHA-256 (hex) of everything `reader` yields.
pub fn reader_sha256(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The SHA-256 of the file `rel` beneath `root` (links followed only while beneath it).
pub fn file_beneath_sha256(root: &Path, rel: &Path) -> Result<String, TenantFsError> {
    let file = TenantDir::open(root)?.open_file(rel, Links::Beneath)?;
    reader_sha256(file).map_err(|source| TenantFsError::Io {
        path: root.join(rel),
        source,
    })
}

/// The `dea-tree-v1` digest of the tree at `root` (see the module's documentation).
pub fn tree_sha256(root: &Path, limits: WalkLimits) -> Result<String, TenantFsError> {
    let dir = TenantDir::open(root)?;
    let mut hasher = Sha256::new();
    dir.walk::<TenantFsError>(limits, true, |entry| {
        let (tag, payload) = match entry.meta.kind {
            Kind::Dir => ("d", String::new()),
            Kind::File => {
                let file = entry.open_file()?;
                let digest = reader_sha256(file).map_err(|source| TenantFsError::Io {
                    path: root.join(entry.rel),
                    source,
                })?;
                let tag = if entry.meta.mode & 0o100 != 0 {
                    "x"
                } else {
                    "f"
                };
                (tag, digest)
            }
            Kind::Symlink => ("l", entry.read_link()?.to_string_lossy().into_owned()),
            Kind::Special(_) => return Ok(Flow::Skip),
        };
        hasher.update(tag.as_bytes());
        hasher.update(b" ");
        hasher.update(entry.rel.as_os_str().as_bytes());
        hasher.update(b"\0");
        hasher.update(payload.as_bytes());
        hasher.update(b"\n");
        Ok(Flow::Descend)
    })?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_digest_sees_content_names_links_and_the_execute_bit_only() {
        use std::os::unix::fs::PermissionsExt;
        let make = |root: &Path, mode: u32| {
            std::fs::create_dir_all(root.join("bin")).expect("mkdir");
            std::fs::write(root.join("bin/run"), "#!/bin/sh\n").expect("write");
            std::fs::write(root.join("a.txt"), "a").expect("write");
            std::os::unix::fs::symlink("a.txt", root.join("link")).expect("link");
            std::fs::set_permissions(root.join("bin/run"), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        };
        let base = tempfile::tempdir().expect("tempdir");
        let (one, two, three) = (
            base.path().join("one"),
            base.path().join("two"),
            base.path().join("three"),
        );
        make(&one, 0o755);
        make(&two, 0o700);
        make(&three, 0o644);
        let digest = |p: &Path| tree_sha256(p, WalkLimits::default()).expect("digest");
        assert_eq!(
            digest(&one),
            digest(&two),
            "group and other bits do not count"
        );
        assert_ne!(digest(&one), digest(&three), "the execute bit does");
        std::fs::write(two.join("a.txt"), "b").expect("write");
        assert_ne!(digest(&one), digest(&two), "content does");
        std::fs::write(two.join("a.txt"), "a").expect("write");
        std::fs::rename(two.join("link"), two.join("link2")).expect("rename");
        assert_ne!(digest(&one), digest(&two), "names do");
    }

    #[test]
    fn a_file_digest_is_of_its_bytes() {
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::write(base.path().join("c.wasm"), b"content").expect("write");
        assert_eq!(
            file_beneath_sha256(base.path(), Path::new("c.wasm")).expect("digest"),
            hex::encode(Sha256::digest(b"content"))
        );
    }
}
