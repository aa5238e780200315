//! The agent's own state on disk (the instance registry, the directory server's key) lives in
//! directories only root can read.

use std::path::Path;

/// Creates `dir` (and its parents) for the agent's own state — the instance registry, the
/// directory server's key — readable by root alone. Defence in depth: the agent never
/// copies or serves through links (see `tenant_fs`), and nothing here is ever mounted into a
/// container or under a directory-server root.
pub fn ensure(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_for_root_alone_even_when_it_existed() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("a/db");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        super::ensure(&dir).expect("ensure");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
