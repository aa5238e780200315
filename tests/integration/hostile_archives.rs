//! Hostile app archives: each is refused with a clear error and nothing is written outside
//! the staging workspace.

use dea::droplet::{UnpackError, UnpackLimits, unpack_source};
use dea_tests::*;
use std::io::Write;
use std::path::Path;

const LIMITS: UnpackLimits = UnpackLimits {
    max_bytes: 1 << 20,
    max_files: 100,
    max_depth: 64,
};

/// A raw tar entry, built by hand so that names and types are exactly as hostile as wanted.
struct Entry<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: Option<&'a str>,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        name,
        kind: tar::EntryType::Regular,
        link: None,
        data,
    }
}

fn link<'a>(name: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        name,
        kind: tar::EntryType::Symlink,
        link: Some(target),
        data: b"",
    }
}

fn hostile_tgz(path: &Path, entries: &[Entry]) {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::best(),
    ));
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let name = entry.name.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(entry.kind);
        header.set_mode(0o644);
        header.set_size(entry.data.len() as u64);
        if let Some(target) = entry.link {
            let t = target.as_bytes();
            header.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        }
        header.set_cksum();
        builder.append(&header, entry.data).expect("append");
    }
    let bytes = builder.into_inner().expect("tar").finish().expect("gz");
    std::fs::write(path, bytes).expect("write tgz");
}

/// Unpacks into `<base>/ws/app` and checks nothing appeared outside `<base>/ws`.
fn unpack_guarded(base: &Path, archive: &Path) -> Result<(), UnpackError> {
    let before = snapshot(base);
    let result = unpack_source(archive, &base.join("ws/app"), LIMITS).map(|_| ());
    let after = snapshot(base);
    let new_outside: Vec<_> = after
        .difference(&before)
        .filter(|p| !p.starts_with(base.join("ws")))
        .collect();
    assert!(
        new_outside.is_empty(),
        "written outside the workspace: {new_outside:?}"
    );
    let _ = std::fs::remove_dir_all(base.join("ws"));
    result
}

fn snapshot(dir: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p.clone());
                }
                out.insert(p);
            }
        }
    }
    out
}

#[test]
fn tar_path_traversal_and_absolute_paths_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let archive = base.path().join("a.tgz");
    hostile_tgz(
        &archive,
        &[file("ok.txt", b"x"), file("../escaped.txt", b"pwned")],
    );
    let error = unpack_guarded(base.path(), &archive).expect_err("traversal refused");
    assert!(matches!(error, UnpackError::PathTraversal(_)), "{error:?}");
    assert!(error.to_string().contains("climbs out"), "{error}");

    let escape_target = base.path().join("abs-escaped.txt");
    let abs = escape_target.display().to_string();
    hostile_tgz(&archive, &[file(&abs, b"pwned")]);
    let error = unpack_guarded(base.path(), &archive).expect_err("absolute refused");
    assert!(matches!(error, UnpackError::AbsolutePath(_)), "{error:?}");
    assert!(!escape_target.exists());
}

#[test]
fn links_that_escape_or_are_written_through_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let archive = base.path().join("l.tgz");
    hostile_tgz(&archive, &[link("up", "../../..")]);
    let error = unpack_guarded(base.path(), &archive).expect_err("escaping link refused");
    assert!(
        matches!(error, UnpackError::LinkEscapes { .. }),
        "{error:?}"
    );

    hostile_tgz(&archive, &[link("etc", "/etc")]);
    let error = unpack_guarded(base.path(), &archive).expect_err("absolute link refused");
    assert!(
        matches!(error, UnpackError::LinkEscapes { .. }),
        "{error:?}"
    );

    // A link that stays inside, then an entry written through it: refused, nothing written.
    hostile_tgz(
        &archive,
        &[
            Entry {
                name: "real/",
                kind: tar::EntryType::Directory,
                link: None,
                data: b"",
            },
            link("alias", "real"),
            file("alias/through.txt", b"x"),
        ],
    );
    let error = unpack_guarded(base.path(), &archive).expect_err("write-through refused");
    assert!(
        matches!(error, UnpackError::ThroughLink { .. }),
        "{error:?}"
    );

    // A link inside the tree is fine.
    hostile_tgz(
        &archive,
        &[file("a/target.txt", b"x"), link("a/l", "target.txt")],
    );
    unpack_guarded(base.path(), &archive).expect("inner link is fine");
}

#[test]
fn device_files_and_fifos_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let archive = base.path().join("d.tgz");
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        hostile_tgz(
            &archive,
            &[Entry {
                name: "dev",
                kind,
                link: None,
                data: b"",
            }],
        );
        let error = unpack_guarded(base.path(), &archive).expect_err("device refused");
        assert!(
            matches!(error, UnpackError::SpecialFile { .. }),
            "{error:?}"
        );
    }
}

#[test]
fn archives_that_expand_past_the_limit_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    // 8 MiB of zeros compresses to a few KiB: a small bomb against a 1 MiB limit.
    let zeros = vec![0u8; 8 << 20];
    let archive = base.path().join("bomb.tgz");
    hostile_tgz(&archive, &[file("zeros", &zeros)]);
    assert!(std::fs::metadata(&archive).expect("meta").len() < 64 * 1024);
    let error = unpack_guarded(base.path(), &archive).expect_err("bomb refused");
    assert!(
        matches!(error, UnpackError::TooLarge { limit_mb: 1 }),
        "{error:?}"
    );

    let zip_path = base.path().join("bomb.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).expect("zip"));
        zip.start_file("zeros", zip::write::SimpleFileOptions::default())
            .expect("entry");
        zip.write_all(&zeros).expect("write");
        zip.finish().expect("finish");
    }
    let error = unpack_guarded(base.path(), &zip_path).expect_err("zip bomb refused");
    assert!(matches!(error, UnpackError::TooLarge { .. }), "{error:?}");

    let names: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = names.iter().map(|n| file(n, b"x")).collect();
    hostile_tgz(&archive, &entries);
    let error = unpack_guarded(base.path(), &archive).expect_err("too many files");
    assert!(
        matches!(error, UnpackError::TooManyFiles { limit: 100 }),
        "{error:?}"
    );
}

#[test]
fn zip_traversal_is_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let zip_path = base.path().join("t.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).expect("zip"));
        zip.start_file(
            "../../zip-escaped.txt",
            zip::write::SimpleFileOptions::default(),
        )
        .expect("entry");
        zip.write_all(b"pwned").expect("write");
        zip.finish().expect("finish");
    }
    let error = unpack_guarded(base.path(), &zip_path).expect_err("zip traversal refused");
    assert!(matches!(error, UnpackError::PathTraversal(_)), "{error:?}");
}

#[test]
fn unknown_formats_and_missing_sources_are_clear_errors() {
    let base = tempfile::tempdir().expect("tempdir");
    let junk = base.path().join("junk.bin");
    std::fs::write(&junk, b"not an archive").expect("write");
    let error = unpack_guarded(base.path(), &junk).expect_err("junk refused");
    assert!(matches!(error, UnpackError::UnknownFormat(_)), "{error:?}");
    let error = unpack_guarded(base.path(), &base.path().join("nope")).expect_err("missing");
    assert!(matches!(error, UnpackError::Missing(_)), "{error:?}");
}

#[tokio::test]
async fn a_hostile_archive_fails_staging_and_leaves_no_workspace() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());
    let archive = base.path().join("evil.tgz");
    hostile_tgz(
        &archive,
        &[file("index.html", b"x"), file("../../x", b"pwned")],
    );
    let (result, _) = stage(&stager, request(&archive, &base.path().join("d.tgz"))).await;
    let error = result.expect_err("refused");
    assert!(error.to_string().contains("invalid app source"), "{error}");
    let leftovers: Vec<_> = std::fs::read_dir(base.path().join("staging"))
        .expect("staging dir")
        .collect();
    assert!(leftovers.is_empty());
}

/// A tar entry with any name length (GNU long names), through the `tar` crate.
fn append_long(
    builder: &mut tar::Builder<impl Write>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(0o755);
    header.set_size(0);
    match link {
        Some(target) => builder
            .append_link(&mut header, name, target)
            .expect("append link"),
        None => builder
            .append_data(&mut header, name, std::io::empty())
            .expect("append"),
    }
}

fn finish_tgz(builder: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>, path: &Path) {
    let bytes = builder.into_inner().expect("tar").finish().expect("gz");
    std::fs::write(path, bytes).expect("write tgz");
}

fn new_tgz() -> tar::Builder<flate2::write::GzEncoder<Vec<u8>>> {
    tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::best(),
    ))
}

/// Links that are each harmless by name can chain out of the tree: `a/b/c/up -> ../..` is
/// `a`, so `Procfile -> a/b/c/up/../../../../etc/passwd` climbs above the root although,
/// counted name by name, it never does. Only the extracted tree says where a chain goes.
#[test]
fn link_chains_that_resolve_outside_are_refused_in_tgz_and_zip() {
    let base = tempfile::tempdir().expect("tempdir");
    let chain = "a/b/c/up/../../../../etc/passwd";
    let archive = base.path().join("chain.tgz");
    let mut tgz = new_tgz();
    for dir in ["a/", "a/b/", "a/b/c/"] {
        append_long(&mut tgz, dir, tar::EntryType::Directory, None);
    }
    append_long(&mut tgz, "a/b/c/up", tar::EntryType::Symlink, Some("../.."));
    append_long(&mut tgz, "Procfile", tar::EntryType::Symlink, Some(chain));
    finish_tgz(tgz, &archive);
    let error = unpack_guarded(base.path(), &archive).expect_err("chain refused");
    assert!(
        matches!(&error, UnpackError::LinkEscapes { entry, .. } if entry == "Procfile"),
        "{error:?}"
    );

    let zip_path = base.path().join("chain.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).expect("zip"));
        let options = zip::write::SimpleFileOptions::default();
        zip.add_directory("a/b/c/", options).expect("dirs");
        zip.add_symlink("a/b/c/up", "../..", options)
            .expect("up link");
        zip.add_symlink("Procfile", chain, options)
            .expect("chain link");
        zip.finish().expect("finish");
    }
    let error = unpack_guarded(base.path(), &zip_path).expect_err("zip chain refused");
    assert!(
        matches!(&error, UnpackError::LinkEscapes { entry, .. } if entry == "Procfile"),
        "{error:?}"
    );

    // The same chain ending inside the tree is an ordinary link.
    let mut tgz = new_tgz();
    for dir in ["a/", "a/b/", "a/b/c/"] {
        append_long(&mut tgz, dir, tar::EntryType::Directory, None);
    }
    append_long(&mut tgz, "a/b/c/up", tar::EntryType::Symlink, Some("../.."));
    append_long(
        &mut tgz,
        "inside",
        tar::EntryType::Symlink,
        Some("a/b/c/up/b/c"),
    );
    finish_tgz(tgz, &archive);
    unpack_guarded(base.path(), &archive).expect("a chain that stays inside is fine");
}

/// A 20 KB archive can name a file 10,000 directories deep, and 1,000 nested directory
/// entries used to take seconds to unpack (every entry re-walked every parent): both are
/// refused at the depth cap, with the entry named, and a tree within the cap still unpacks.
#[test]
fn deep_nesting_is_refused_at_the_cap() {
    let base = tempfile::tempdir().expect("tempdir");
    let archive = base.path().join("deep.tgz");
    let mut tgz = new_tgz();
    append_long(
        &mut tgz,
        &format!("{}f", "d/".repeat(10_000)),
        tar::EntryType::Regular,
        None,
    );
    finish_tgz(tgz, &archive);
    assert!(std::fs::metadata(&archive).expect("meta").len() < 20 * 1024);
    let error = unpack_guarded(base.path(), &archive).expect_err("too deep");
    assert!(
        matches!(error, UnpackError::TooDeep { limit: 64, .. }),
        "{error:?}"
    );

    let mut tgz = new_tgz();
    let mut path = String::new();
    for _ in 0..1_000 {
        path.push_str("d/");
        append_long(&mut tgz, &path, tar::EntryType::Directory, None);
    }
    finish_tgz(tgz, &archive);
    let limits = UnpackLimits {
        max_files: 10_000,
        ..UnpackLimits::default()
    };
    let error = unpack_source(&archive, &base.path().join("ws/app"), limits)
        .expect_err("deeper than the default cap");
    assert!(
        matches!(error, UnpackError::TooDeep { limit: 256, .. }),
        "{error:?}"
    );
    let _ = std::fs::remove_dir_all(base.path().join("ws"));

    let mut tgz = new_tgz();
    append_long(
        &mut tgz,
        &format!("{}f", "d/".repeat(60)),
        tar::EntryType::Regular,
        None,
    );
    finish_tgz(tgz, &archive);
    unpack_guarded(base.path(), &archive).expect("60 levels are within the cap");
}

/// A directory source (what `dea stage DIR` copies) is walked without recursion and under
/// the same caps: a tree too deep is refused instead of overflowing the stack.
#[test]
fn deep_directory_sources_are_refused_not_recursed() {
    let base = tempfile::tempdir().expect("tempdir");
    let source = base.path().join("src");
    let mut dir = source.clone();
    std::fs::create_dir(&dir).expect("mkdir");
    // Made through relative mkdirs, as a program would, since the path outgrows PATH_MAX.
    let root = dea::tenant_fs::TenantDir::open(&dir).expect("open");
    let mut current = root.ensure_dir(Path::new("d")).expect("d");
    for _ in 0..1_000 {
        current = current.ensure_dir(Path::new("d")).expect("nest");
    }
    dir.push("d");
    let error = unpack_guarded(base.path(), &source).expect_err("too deep");
    assert!(matches!(error, UnpackError::TooDeep { .. }), "{error:?}");
    dea::tenant_fs::remove_tree(base.path(), std::ffi::OsStr::new("src")).expect("removed");
}
