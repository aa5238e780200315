//! Comparing two droplets entry by entry: what `dea diff` and `dea stage --verify` say when
//! two droplets that should be byte-identical are not.
//!
//! A digest only says *that* two droplets differ; finding the file a buildpack stamped with
//! the time means reading both. Each droplet is read once as a gzip'd tar stream, nothing is
//! extracted, and each entry is kept as a summary (kind, mode, owner, time, size, content
//! SHA-256, link target), so memory grows with the number of entries, not their size.
//! Droplets come from buildpacks, so both the entries and the bytes read are capped
//! ([`DiffLimits`]), and names are escaped before anyone prints them.

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// Why two droplets could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("reading droplet {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("droplet {path} holds more than {limit} entries")]
    TooManyEntries { path: PathBuf, limit: usize },
    #[error("droplet {path} holds more than {limit_mb} MiB once uncompressed")]
    TooLarge { path: PathBuf, limit_mb: u64 },
}

/// Caps on reading one droplet.
#[derive(Debug, Clone, Copy)]
pub struct DiffLimits {
    pub max_entries: usize,
    /// Bytes of entry content, uncompressed (a small droplet can inflate to a great deal).
    pub max_bytes: u64,
}

impl Default for DiffLimits {
    fn default() -> Self {
        DiffLimits {
            max_entries: 1_000_000,
            max_bytes: 16 << 30,
        }
    }
}

/// What one entry is, as far as a comparison cares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    kind: &'static str,
    mode: Option<u32>,
    owner: (Option<u64>, Option<u64>),
    mtime: Option<u64>,
    size: u64,
    sha256: [u8; 32],
    link: Option<Vec<u8>>,
}

/// A header field's value, `None` where the droplet's header does not hold a number.
pub type Field<T> = Option<T>;

/// One way an entry differs between the droplets: what it is in the first and the second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Kind(&'static str, &'static str),
    Mode(Field<u32>, Field<u32>),
    Owner((Field<u64>, Field<u64>), (Field<u64>, Field<u64>)),
    Mtime(Field<u64>, Field<u64>),
    Size(u64, u64),
    /// Content SHA-256s, hex.
    Content(String, String),
    LinkTarget(String, String),
}

impl Difference {
    /// The attribute's name, as reports say it.
    pub fn attribute(&self) -> &'static str {
        match self {
            Difference::Kind(..) => "type",
            Difference::Mode(..) => "mode",
            Difference::Owner(..) => "owner",
            Difference::Mtime(..) => "mtime",
            Difference::Size(..) => "size",
            Difference::Content(..) => "content",
            Difference::LinkTarget(..) => "link target",
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.attribute();
        match self {
            Difference::Kind(a, b) => write!(f, "{name} differs ({a} vs {b})"),
            Difference::Mode(a, b) => {
                let mode = |m: &Field<u32>| m.map_or("unreadable".into(), |m| format!("{m:04o}"));
                write!(f, "{name} differs ({} vs {})", mode(a), mode(b))
            }
            Difference::Owner(a, b) => write!(
                f,
                "{name} differs ({}:{} vs {}:{})",
                number(a.0),
                number(a.1),
                number(b.0),
                number(b.1)
            ),
            Difference::Mtime(a, b) => {
                write!(f, "{name} differs ({} vs {})", number(*a), number(*b))
            }
            Difference::Size(a, b) => write!(f, "{name} differs ({a} vs {b})"),
            // A prefix tells the two apart; the whole digest is in the struct.
            Difference::Content(a, b) => write!(
                f,
                "{name} differs (sha256 {}… vs {}…)",
                &a[..a.len().min(12)],
                &b[..b.len().min(12)]
            ),
            Difference::LinkTarget(a, b) => write!(f, "{name} differs ({a} vs {b})"),
        }
    }
}

fn number(value: Field<u64>) -> String {
    value.map_or("unreadable".into(), |v| v.to_string())
}

/// How two droplets differ. Names are as in the droplets without their leading `./` (the
/// root is `.`), escaped for printing.
#[derive(Debug, Clone, Default)]
pub struct DropletDiff {
    pub only_in_first: Vec<String>,
    pub only_in_second: Vec<String>,
    /// Entries in both, with every attribute that differs.
    pub changed: Vec<(String, Vec<Difference>)>,
    /// The same entries, in another order.
    pub order_differs: bool,
    /// Entry names that a droplet holds more than once (the last one counts, as when
    /// extracting): equal droplets have none, and a reader may not see what tar extracts.
    pub duplicates: Vec<String>,
}

impl DropletDiff {
    /// Whether the droplets hold the same entries, in the same order.
    pub fn is_empty(&self) -> bool {
        self.only_in_first.is_empty()
            && self.only_in_second.is_empty()
            && self.changed.is_empty()
            && !self.order_differs
            && self.duplicates.is_empty()
    }

    /// The report, one line per entry, naming the droplets `first` and `second`.
    pub fn report(&self, first: &str, second: &str) -> String {
        let mut out = String::new();
        for name in &self.only_in_first {
            out.push_str(&format!("{name}: only in {first}\n"));
        }
        for name in &self.only_in_second {
            out.push_str(&format!("{name}: only in {second}\n"));
        }
        for (name, differences) in &self.changed {
            let said: Vec<String> = differences.iter().map(|d| d.to_string()).collect();
            out.push_str(&format!("{name}: {}\n", said.join(", ")));
        }
        for name in &self.duplicates {
            out.push_str(&format!("{name}: more than once in a droplet\n"));
        }
        if self.order_differs {
            out.push_str("the entries are the same but in another order\n");
        }
        out
    }
}

/// Compares the droplets at `first` and `second` within `limits` each.
pub fn diff_droplets(
    first: &Path,
    second: &Path,
    limits: DiffLimits,
) -> Result<DropletDiff, DiffError> {
    let a = read_listing(first, limits)?;
    let b = read_listing(second, limits)?;
    Ok(compare(&a, &b))
}

/// A droplet file's SHA-1 and SHA-256, hex: what staging reports and a controller keeps.
pub fn droplet_digests(path: &Path) -> Result<(String, String), DiffError> {
    let read_err = |source| DiffError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let (mut sha1, mut sha256) = (sha1::Sha1::new(), Sha256::new());
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        sha1.update(&buf[..n]);
        sha256.update(&buf[..n]);
    }
    Ok((hex::encode(sha1.finalize()), hex::encode(sha256.finalize())))
}

/// The time a droplet's first entry (its root, `./`) is dated: for a reproducible droplet,
/// the `SOURCE_DATE_EPOCH` it was staged with, which a rebuild must use again. `None` when
/// the droplet has no entry or its header no time.
pub fn droplet_epoch(path: &Path) -> Result<Option<u64>, DiffError> {
    let read_err = |source| DiffError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
    let mut entries = archive.entries().map_err(read_err)?;
    match entries.next() {
        Some(entry) => Ok(entry.map_err(read_err)?.header().mtime().ok()),
        None => Ok(None),
    }
}

/// A droplet's entries, by name, and their order.
struct Listing {
    entries: BTreeMap<Vec<u8>, Summary>,
    order: Vec<Vec<u8>>,
    duplicates: Vec<Vec<u8>>,
}

fn read_listing(path: &Path, limits: DiffLimits) -> Result<Listing, DiffError> {
    let read_err = |source| DiffError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
    let mut listing = Listing {
        entries: BTreeMap::new(),
        order: Vec::new(),
        duplicates: Vec::new(),
    };
    let mut total = 0u64;
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if listing.order.len() >= limits.max_entries {
            return Err(DiffError::TooManyEntries {
                path: path.to_path_buf(),
                limit: limits.max_entries,
            });
        }
        let name = normalized(&entry.path_bytes());
        let header = entry.header();
        let kind = kind_name(header.entry_type());
        // A field that is not a number is compared as such rather than failing the diff:
        // a broken header is a finding in itself.
        let mode = header.mode().ok().map(|m| m & 0o7777);
        let owner = (header.uid().ok(), header.gid().ok());
        let mtime = header.mtime().ok();
        let size = header.size().map_err(read_err)?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        // Only what is read counts, so a header claiming a huge size costs nothing unless
        // the bytes are really there; the cap stops a bomb before it has all been inflated.
        let room = limits.max_bytes.saturating_sub(total);
        let mut hasher = Sha256::new();
        let copied = io::copy(
            &mut (&mut entry).take(room.saturating_add(1)),
            &mut HashWriter(&mut hasher),
        )
        .map_err(read_err)?;
        total = total.saturating_add(copied);
        if copied > room {
            return Err(DiffError::TooLarge {
                path: path.to_path_buf(),
                limit_mb: limits.max_bytes >> 20,
            });
        }
        let summary = Summary {
            kind,
            mode,
            owner,
            mtime,
            size,
            sha256: hasher.finalize().into(),
            link,
        };
        if listing.entries.insert(name.clone(), summary).is_some() {
            listing.duplicates.push(name.clone());
        }
        listing.order.push(name);
    }
    Ok(listing)
}

/// Feeds what is written to a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compare(a: &Listing, b: &Listing) -> DropletDiff {
    let mut diff = DropletDiff::default();
    for (name, left) in &a.entries {
        match b.entries.get(name) {
            None => diff.only_in_first.push(shown(name)),
            Some(right) => {
                let differences = differences(left, right);
                if !differences.is_empty() {
                    diff.changed.push((shown(name), differences));
                }
            }
        }
    }
    diff.only_in_second = b
        .entries
        .keys()
        .filter(|name| !a.entries.contains_key(*name))
        .map(|name| shown(name))
        .collect();
    let mut duplicates: Vec<String> = a
        .duplicates
        .iter()
        .chain(&b.duplicates)
        .map(|n| shown(n))
        .collect();
    duplicates.sort();
    duplicates.dedup();
    diff.duplicates = duplicates;
    diff.order_differs =
        diff.only_in_first.is_empty() && diff.only_in_second.is_empty() && a.order != b.order;
    diff
}

fn differences(a: &Summary, b: &Summary) -> Vec<Difference> {
    let mut out = Vec::new();
    if a.kind != b.kind {
        out.push(Difference::Kind(a.kind, b.kind));
    }
    if a.mode != b.mode {
        out.push(Difference::Mode(a.mode, b.mode));
    }
    if a.owner != b.owner {
        out.push(Difference::Owner(a.owner, b.owner));
    }
    if a.mtime != b.mtime {
        out.push(Difference::Mtime(a.mtime, b.mtime));
    }
    if a.size != b.size {
        out.push(Difference::Size(a.size, b.size));
    }
    if a.sha256 != b.sha256 {
        out.push(Difference::Content(
            hex::encode(a.sha256),
            hex::encode(b.sha256),
        ));
    }
    if a.link != b.link {
        let target = |link: &Option<Vec<u8>>| link.as_deref().map_or("none".into(), shown);
        out.push(Difference::LinkTarget(target(&a.link), target(&b.link)));
    }
    out
}

/// An entry's name without the `./` droplets start with or a directory's trailing `/`, so
/// that droplets packed by other tools (`tar czf x.tgz app`) compare too.
fn normalized(name: &[u8]) -> Vec<u8> {
    let mut name = name;
    while let Some(rest) = name.strip_prefix(b"./") {
        name = rest;
    }
    while let Some(rest) = name.strip_suffix(b"/") {
        name = rest;
    }
    if name.is_empty() || name == b"." {
        return b".".to_vec();
    }
    name.to_vec()
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => "file",
        tar::EntryType::Directory => "directory",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        _ => "other",
    }
}

/// A name as it may be printed: a buildpack chose it, so control characters (a terminal's
/// escape sequences, a newline that would forge a report line) and bytes that are not UTF-8
/// are escaped.
fn shown(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::droplet::{PackLimits, PackOptions, Stamp, pack_tree_with};
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn pack(tree: &Path, dest: &Path, mtime: u64) {
        let options = PackOptions {
            level: 6,
            threads: 2,
            limits: PackLimits::default(),
            stamp: Stamp::Reproducible {
                mtime,
                uid: 2000,
                gid: 2000,
            },
        };
        pack_tree_with(tree, dest, &options).expect("packs");
    }

    fn app(tree: &Path, built_at: &str) {
        fs::create_dir_all(tree.join("app/lib")).expect("dirs");
        fs::write(tree.join("app/lib/same.txt"), "same").expect("same");
        fs::write(tree.join("app/built-at.txt"), built_at).expect("stamp");
        fs::write(tree.join("app/run"), "#!/bin/sh\n").expect("run");
        symlink("lib/same.txt", tree.join("app/link")).expect("link");
    }

    #[test]
    fn equal_droplets_have_no_differences_and_changed_entries_are_named() {
        let base = tempfile::tempdir().expect("tempdir");
        let (one, two) = (base.path().join("one"), base.path().join("two"));
        app(&one, "1700000000");
        app(&two, "1700000000");
        let (a, b) = (base.path().join("a.tgz"), base.path().join("b.tgz"));
        pack(&one, &a, 10);
        pack(&two, &b, 10);
        let diff = diff_droplets(&a, &b, DiffLimits::default()).expect("diff");
        assert!(diff.is_empty(), "{}", diff.report("a", "b"));

        fs::write(two.join("app/built-at.txt"), "1700000001").expect("stamp");
        fs::set_permissions(two.join("app/run"), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::remove_file(two.join("app/link")).expect("unlink");
        symlink("run", two.join("app/link")).expect("link");
        fs::write(two.join("app/extra"), "").expect("extra");
        fs::remove_file(two.join("app/lib/same.txt")).expect("remove");
        pack(&two, &b, 10);
        let diff = diff_droplets(&a, &b, DiffLimits::default()).expect("diff");
        let report = diff.report("a.tgz", "b.tgz");
        assert_eq!(diff.only_in_first, vec!["app/lib/same.txt"], "{report}");
        assert_eq!(diff.only_in_second, vec!["app/extra"], "{report}");
        let changed: BTreeMap<_, Vec<_>> = diff
            .changed
            .iter()
            .map(|(name, d)| (name.as_str(), d.iter().map(Difference::attribute).collect()))
            .collect();
        assert_eq!(changed["app/built-at.txt"], vec!["content"], "{report}");
        assert_eq!(changed["app/run"], vec!["mode"], "{report}");
        assert_eq!(changed["app/link"], vec!["link target"], "{report}");
        assert!(
            report.contains("app/built-at.txt: content differs (sha256 "),
            "{report}"
        );
        assert!(
            report.contains("app/run: mode differs (0644 vs 0755)"),
            "{report}"
        );
        assert!(report.contains("app/extra: only in b.tgz"), "{report}");

        // Dated differently, everything differs in time only.
        pack(&one, &b, 11);
        let diff = diff_droplets(&a, &b, DiffLimits::default()).expect("diff");
        assert!(
            diff.changed
                .iter()
                .all(|(_, d)| d == &vec![Difference::Mtime(Some(10), Some(11))]),
            "{}",
            diff.report("a", "b")
        );
    }

    /// A `.tgz` of `entries` (name, content) written by the `tar` crate, names as given;
    /// entries named `*garbage` have no owner or time, only blanks.
    fn raw_tgz(path: &Path, entries: &[(&[u8], &[u8])]) {
        let file = fs::File::create(path).expect("create");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        for (name, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            if !name.ends_with(b"garbage") {
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
            }
            header.set_cksum();
            builder.append(&header, *content).expect("append");
        }
        builder.into_inner().expect("tar").finish().expect("gzip");
    }

    #[test]
    fn hostile_droplets_are_capped_and_their_names_escaped() {
        let base = tempfile::tempdir().expect("tempdir");
        let (a, b) = (base.path().join("a.tgz"), base.path().join("b.tgz"));
        raw_tgz(&a, &[(b"./app/x", b"1"), (b"./app/garbage", b"")]);
        let forged: &[u8] = b"./app/\x1b[2J\nsame: fine\xff";
        raw_tgz(
            &b,
            &[
                (b"./app/garbage", b""),
                (b"./app/x", b"1"),
                (forged, b""),
                (b"./app/x", b"2"),
            ],
        );
        let diff = diff_droplets(&a, &b, DiffLimits::default()).expect("diff");
        let report = diff.report("a", "b");
        assert_eq!(
            diff.only_in_second,
            vec!["app/\\u{1b}[2J\\nsame: fine\\xff"],
            "{report}"
        );
        assert_eq!(diff.duplicates, vec!["app/x"], "{report}");
        // Blank fields compare equal to blank fields: only the duplicated entry differs.
        let changed: Vec<_> = diff.changed.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(changed, vec!["app/x"], "{report}");
        assert!(!report.contains('\x1b'), "{report}");

        raw_tgz(&b, &[(b"./app/x", b"1"), (b"./app/garbage", b"")]);
        let diff = diff_droplets(&a, &b, DiffLimits::default()).expect("diff");
        assert!(diff.is_empty(), "{}", diff.report("a", "b"));
        raw_tgz(&b, &[(b"./app/garbage", b""), (b"./app/x", b"1")]);
        let diff = diff_droplets(&a, &b, DiffLimits::default()).expect("diff");
        assert!(diff.order_differs && diff.changed.is_empty(), "{diff:?}");

        let few = DiffLimits {
            max_entries: 1,
            ..DiffLimits::default()
        };
        let error = diff_droplets(&a, &b, few).expect_err("too many");
        assert!(
            matches!(error, DiffError::TooManyEntries { limit: 1, .. }),
            "{error}"
        );

        // A megabyte of zeros inflates past a cap of a few bytes.
        let zeros = vec![0u8; 1 << 20];
        raw_tgz(&b, &[(b"./app/bomb", &zeros)]);
        let small = DiffLimits {
            max_bytes: 1000,
            ..DiffLimits::default()
        };
        let error = diff_droplets(&a, &b, small).expect_err("too large");
        assert!(matches!(error, DiffError::TooLarge { .. }), "{error}");

        fs::write(&b, b"not a droplet").expect("write");
        let error = diff_droplets(&a, &b, DiffLimits::default()).expect_err("garbage");
        assert!(error.to_string().contains("b.tgz"), "{error}");
    }
}
