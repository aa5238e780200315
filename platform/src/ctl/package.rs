//! The app package `dea ctl push` uploads: a `.zip` as given, or a directory zipped as
//! Cloud Foundry's CLI does (files with their modes, empty directories kept, symlinks as
//! links — never followed, so a link out of the app cannot pull a file into the upload).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use zip::write::SimpleFileOptions;

/// Most entries a pushed directory may hold; deeper trees are refused, not walked forever.
const MAX_ENTRIES: usize = 200_000;
const MAX_DEPTH: usize = 256;

/// Writes the package for `source` into `dest`; returns how many entries it holds.
pub(super) fn package(source: &Path, dest: &Path) -> std::io::Result<usize> {
    let meta = std::fs::symlink_metadata(source)?;
    if meta.is_file() {
        std::fs::copy(source, dest)?;
        return Ok(1);
    }
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory or a .zip file"));
    }
    let mut zip = zip::ZipWriter::new(BufWriter::new(File::create(dest)?));
    let mut count = 0;
    add_dir(&mut zip, source, "", 0, &mut count)?;
    zip.finish()?.flush()?;
    Ok(count)
}

fn add_dir(
    zip: &mut zip::ZipWriter<BufWriter<File>>,
    dir: &Path,
    prefix: &str,
    depth: usize,
    count: &mut usize,
) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other(format!(
            "deeper than {MAX_DEPTH} directories"
        )));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        *count += 1;
        if *count > MAX_ENTRIES {
            return Err(std::io::Error::other(format!(
                "more than {MAX_ENTRIES} files"
            )));
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!(
                "{}: a file name that is not UTF-8",
                entry.path().display()
            )));
        };
        let path = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(entry.path())?;
        let mode = meta.permissions().mode() & 0o777;
        let options = SimpleFileOptions::default().unix_permissions(mode);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            zip.add_symlink(path, target.to_string_lossy(), options)?;
        } else if meta.is_dir() {
            zip.add_directory(format!("{path}/"), options)?;
            add_dir(zip, &entry.path(), &format!("{path}/"), depth + 1, count)?;
        } else if meta.is_file() {
            zip.start_file(path, options)?;
            std::io::copy(&mut File::open(entry.path())?, zip)?;
        }
        // Sockets, FIFOs and devices are not app files.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_zipped_with_modes_and_links_left_as_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("bin")).expect("mkdir");
        std::fs::write(app.join("index.html"), "hello").expect("write");
        std::fs::write(app.join("bin/start"), "#!/bin/sh").expect("write");
        std::fs::set_permissions(
            app.join("bin/start"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("/etc/shadow", app.join("leak")).expect("symlink");
        let out = dir.path().join("app.zip");
        package(&app, &out).expect("zipped");
        let mut archive = zip::ZipArchive::new(File::open(&out).expect("open")).expect("zip");
        let start = archive.by_name("bin/start").expect("bin/start");
        assert_eq!(start.unix_mode().map(|m| m & 0o777), Some(0o755));
        drop(start);
        let leak = archive.by_name("leak").expect("leak");
        assert!(leak.is_symlink());
        assert_eq!(
            leak.size(),
            "/etc/shadow".len() as u64,
            "the link, not the file"
        );
    }
}
