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

#[cfg(test)]
mod tests {
    use super::*;

    fn droplet(entries: &[(&str, tar::EntryType, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp");
        let gz = flate2::write::GzEncoder::new(
            file.reopen().expect("reopen"),
            flate2::Compression::fast(),
        );
        let mut builder = tar::Builder::new(gz);
        for (name, kind, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                header.set_link_name("/etc/passwd").expect("link");
                header.set_cksum();
                builder
                    .append_data(&mut header, name, &[][..])
                    .expect("append");
                continue;
            }
            header.set_cksum();
            builder
                .append_data(&mut header, name, *content)
                .expect("append");
        }
        builder.into_inner().expect("tar").finish().expect("gzip");
        file
    }

    #[test]
    fn only_a_top_level_regular_file_is_read_and_only_so_much() {
        use tar::EntryType::{Regular, Symlink};
        let bom = br#"{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,
            "metadata":{"tools":{"components":[]},"component":{"type":"application","name":"app"}}}"#;
        let elsewhere = droplet(&[
            ("./sbom.cdx.json", Symlink, b""),
            ("./app/sbom.cdx.json", Regular, bom),
        ]);
        assert!(matches!(
            from_droplet(elsewhere.path()),
            Err(ReadError::Missing { .. })
        ));
        let found = droplet(&[("./app/x", Regular, b"x"), ("sbom.cdx.json", Regular, bom)]);
        let read = from_droplet(found.path()).expect("read");
        assert_eq!(read.spec_version, "1.5");
        let huge = vec![b' '; (MAX_SBOM_BYTES + 2) as usize];
        let large = droplet(&[("./sbom.cdx.json", Regular, &huge)]);
        assert!(matches!(
            from_droplet(large.path()),
            Err(ReadError::TooLarge { .. })
        ));
    }
}
