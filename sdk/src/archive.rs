//! Unpacking downloaded `.tgz` files inside the sandbox.
//!
//! The sandbox already stops an archive from escaping the writable directories; this also
//! refuses entries that would climb out of `dest` so a bad tarball fails loudly instead of
//! scattering files around `/app`.

use crate::Error;
use std::path::{Component, Path, PathBuf};

/// Unpacks the gzip tarball at `archive` into `dest`, dropping `strip_components` leading
/// path components from each entry (like `tar --strip-components`). Returns the number of
/// entries written.
pub fn unpack_tgz(
    archive: impl AsRef<Path>,
    dest: impl AsRef<Path>,
    strip_components: usize,
) -> Result<usize, Error> {
    let archive = archive.as_ref();
    let dest = dest.as_ref();
    let file = std::fs::File::open(archive)
        .map_err(|e| Error::Io(format!("opening {}: {e}", archive.display())))?;
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    tar.set_preserve_permissions(true);
    std::fs::create_dir_all(dest)?;
    let mut count = 0;
    let entries = tar
        .entries()
        .map_err(|e| Error::Failed(format!("reading {}: {e}", archive.display())))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::Failed(format!("reading {}: {e}", archive.display())))?;
        let path = entry
            .path()
            .map_err(|e| Error::Failed(format!("bad entry in {}: {e}", archive.display())))?
            .into_owned();
        let Some(relative) = stripped(&path, strip_components)? else {
            continue;
        };
        let target = dest.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        entry
            .unpack(&target)
            .map_err(|e| Error::Io(format!("unpacking {}: {e}", relative.display())))?;
        count += 1;
    }
    Ok(count)
}

/// The entry path with `strip` components removed; `None` if nothing is left.
fn stripped(path: &Path, strip: usize) -> Result<Option<PathBuf>, Error> {
    let mut out = PathBuf::new();
    let mut skipped = 0;
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                if skipped < strip {
                    skipped += 1;
                } else {
                    out.push(part);
                }
            }
            Component::CurDir => {}
            _ => {
                return Err(Error::Denied(format!(
                    "archive entry {} leaves the target directory",
                    path.display()
                )));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}
