//! Reading the bill of materials out of a droplet without unpacking it (`dea sbom`).
//!
//! A droplet may come from anywhere, so this reads one entry and nothing else: the archive
//! is streamed, no file is written, only a regular-file entry named `sbom.cdx.json` at the
//! top is read, and both the number of entries looked at and the bytes read are capped.

use super::cyclonedx::{Bom, FILE_NAME};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest `sbom.cdx.json` read.
pub const MAX_SBOM_BYTES: u64 = 16 << 20;
/// Entries looked at before giving up.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Why a droplet's bill of materials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading droplet {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("droplet {} has no {FILE_NAME} (staged before dea wrote one?)", path.display())]
    Missing { path: PathBuf },
    #[error("droplet {}: {FILE_NAME} is larger than {MAX_SBOM_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("droplet {}: more than {MAX_ENTRIES} entries before {FILE_NAME}", path.display())]
    TooManyEntries { path: PathBuf },
    #[error("droplet {}: {FILE_NAME} is not CycloneDX JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The bill of materials of the droplet (`.tgz`) at `path`.
pub fn from_droplet(path: &Path) -> Result<Bom, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    for (seen, entry) in archive.entries().map_err(io)?.enumerate() {
        if seen as u64 >= MAX_ENTRIES {
            return Err(ReadError::TooManyEntries {
                path: path.to_path_buf(),
            });
        }
        let entry = entry.map_err(io)?;
        let name = entry.path_bytes();
        let top = name.strip_prefix(b"./").unwrap_or(&name);
        if top != FILE_NAME.as_bytes() || !entry.header().entry_type().is_file() {
            continue;
        }
        let mut json = Vec::new();
        entry
            .take(MAX_SBOM_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(io)?;
        if json.len() as u64 > MAX_SBOM_BYTES {
            return Err(ReadError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        return Bom::parse(&json).map_err(|source| ReadError::Json {
            path: path.to_path_buf(),
            source,
        });
    }
    Err(ReadError::Missing {
        path: path.to_path_buf(),
    })
}
