//! Directory listings in the Go directory server's plain-text format (reference dea_ng.md
//! §5.5): one line per entry, `%-35s %10s`, the name with `/` for directories, the size `-`
//! for directories and `NB`, `N.NK`, `N.NM`, `N.NG` or `N.NT` (1024 base) otherwise, sorted by
//! name as Go's `ioutil.ReadDir` sorts.

use crate::units::human_size;
use rustix::fs::{AtFlags, Dir, FileType};
use std::os::fd::AsFd;

/// The listing of an open directory. Entries are `lstat`ed, as Go does: a symlink is listed
/// with its own size, never followed. An entry that vanishes while listing is left out.
pub(crate) fn list(dir: impl AsFd) -> std::io::Result<String> {
    let mut entries = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        entries.push((name.to_bytes().to_vec(), is_dir, size));
    }
    entries.sort();
    let mut out = String::new();
    for (name, is_dir, size) in entries {
        out.push_str(&line(&String::from_utf8_lossy(&name), is_dir, size));
    }
    Ok(out)
}

/// One listing line.
pub(crate) fn line(name: &str, is_dir: bool, size: u64) -> String {
    if is_dir {
        format!("{:<35} {:>10}\n", format!("{name}/"), "-")
    } else {
        format!("{name:<35} {:>10}\n", human_size(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_padded_like_go() {
        assert_eq!(
            line("app", true, 4096),
            "app/                                         -\n"
        );
        assert_eq!(
            line("staging_task.log", false, 1536),
            "staging_task.log                          1.5K\n"
        );
        // Longer names push the size column out instead of being cut.
        let long = "x".repeat(40);
        assert_eq!(line(&long, false, 1), format!("{long}         1B\n"));
    }

    #[test]
    fn lists_a_directory_sorted_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("b")).expect("mkdir");
        std::fs::write(dir.path().join("a.txt"), [0u8; 10]).expect("write");
        std::os::unix::fs::symlink("b", dir.path().join("c")).expect("symlink");
        let file = std::fs::File::open(dir.path()).expect("open dir");
        assert_eq!(
            list(&file).expect("lists"),
            format!(
                "{}{}{}",
                line("a.txt", false, 10),
                line("b", true, 0),
                line("c", false, 1)
            )
        );
    }
}
