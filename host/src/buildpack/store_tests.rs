//! The store on real files: classic buildpacks from `tests/classic`, made-up wasm ones (their
//! component is only checked on `add`, here by a check with a fixed answer), archives built
//! here.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn classic(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/classic")
        .join(name)
}

/// A component check with a fixed answer: how the store acts on one is tested here, the world
/// check itself with `dea-buildpack-tools` (which also tests `add` with it on real components).
struct Answer(Result<&'static [&'static str], &'static str>);

impl ComponentCheck for Answer {
    fn problems(&self, _component: &[u8]) -> Result<Vec<String>, ComponentCheckError> {
        match self.0 {
            Ok(problems) => Ok(problems.iter().map(|p| p.to_string()).collect()),
            Err(message) => Err(message.into()),
        }
    }
}

/// Passes every component (classic buildpacks never reach it).
const ACCEPT: Answer = Answer(Ok(&[]));

fn store(base: &Path) -> BuildpackStore {
    BuildpackStore::new(base.join("buildpacks"))
}

fn ids(store: &BuildpackStore) -> Vec<String> {
    store.order().expect("order").unwrap_or_default()
}

/// A wasm buildpack as the binary embeds one; the component is not parsed when seeding.
fn embedded(id: &'static str, version: &str) -> (String, Vec<u8>) {
    let toml = format!("[buildpack]\nid = \"{id}\"\nname = \"{id}\"\nversion = \"{version}\"\n");
    (toml, b"\0asm not really".to_vec())
}

/// Entries of the store directory other than buildpacks (scratch space must not linger).
fn scratch_left(store: &BuildpackStore) -> Vec<String> {
    std::fs::read_dir(store.dir())
        .expect("store dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".incoming") || name.starts_with(".download"))
        .collect()
}

#[test]
fn add_move_remove_keep_the_order_in_the_order_file() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store(base.path());
    assert_eq!(
        store.order().expect("order"),
        None,
        "a new store is not set up"
    );

    let hello = store
        .add(&classic("hello"), None, None, &ACCEPT)
        .expect("add hello");
    assert_eq!(
        (hello.id.as_str(), hello.version.as_str()),
        ("hello", "1.2.3")
    );
    assert_eq!(
        hello.dir,
        store.dir().join("hello").canonicalize().expect("dir")
    );
    store
        .add(&classic("cf-final"), None, Some(1), &ACCEPT)
        .expect("add cf-final first");
    store
        .add(&classic("hello"), Some("hello-again"), Some(99), &ACCEPT)
        .expect("add under another name, past the end");
    assert_eq!(ids(&store), ["cf-final", "hello", "hello-again"]);
    // The scripts keep their modes (a classic buildpack is run, not read).
    let mode = std::fs::metadata(store.dir().join("hello/bin/detect"))
        .expect("detect")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "{mode:o}");

    assert!(matches!(
        store.add(&classic("hello"), None, None, &ACCEPT),
        Err(StoreError::AlreadyInstalled { id }) if id == "hello"
    ));
    store.move_to("hello-again", 1).expect("move");
    assert_eq!(ids(&store), ["hello-again", "cf-final", "hello"]);
    store.move_to("hello-again", 7).expect("move past the end");
    assert_eq!(ids(&store), ["cf-final", "hello", "hello-again"]);
    assert!(matches!(
        store.move_to("hello", 0),
        Err(StoreError::Position(0))
    ));

    store.remove("cf-final").expect("remove");
    assert_eq!(ids(&store), ["hello", "hello-again"]);
    assert!(!store.dir().join("cf-final").exists());
    assert!(matches!(
        store.remove("cf-final"),
        Err(StoreError::NotInstalled { id, installed }) if id == "cf-final" && installed == "hello, hello-again"
    ));
    let loaded: Vec<String> = store
        .buildpacks()
        .expect("buildpacks")
        .into_iter()
        .map(|bp| bp.id)
        .collect();
    assert_eq!(loaded, ["hello", "hello-again"]);
    assert!(
        scratch_left(&store).is_empty(),
        "{:?}",
        scratch_left(&store)
    );

    // A command killed midway leaves its scratch copy; the next change sweeps it.
    let left = store.dir().join(".incoming-killed");
    std::fs::create_dir_all(left.join("copy/bin")).expect("leftover");
    store.move_to("hello", 1).expect("move");
    assert!(!left.exists(), "leftover scratch copy swept");

    // The file itself, as a reader (or an operator) sees it.
    let text = std::fs::read_to_string(store.dir().join(ORDER_FILE)).expect("order file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        json["buildpacks"],
        serde_json::json!(["hello", "hello-again"])
    );
}

#[test]
fn a_link_out_of_the_buildpack_is_refused_and_nothing_is_installed() {
    let base = tempfile::tempdir().expect("tempdir");
    let source = base.path().join("sneaky");
    std::fs::create_dir_all(source.join("bin")).expect("bin");
    for script in ["detect", "compile"] {
        std::fs::copy(
            classic("hello").join("bin").join(script),
            source.join("bin").join(script),
        )
        .expect("script");
    }
    std::os::unix::fs::symlink("/etc/passwd", source.join("passwords")).expect("link");
    let store = store(base.path());
    let error = store
        .add(&source, None, None, &ACCEPT)
        .expect_err("refused");
    assert!(
        matches!(
            &error,
            StoreError::Copy {
                source: UnpackError::LinkEscapes { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(!store.dir().join("sneaky").exists());
    assert_eq!(store.order().expect("order"), None);
    assert!(
        scratch_left(&store).is_empty(),
        "{:?}",
        scratch_left(&store)
    );

    // A link that stays inside is kept as a link, not followed into a copy of its target.
    std::fs::remove_file(source.join("passwords")).expect("unlink");
    std::os::unix::fs::symlink("bin/detect", source.join("detect-link")).expect("link");
    store.add(&source, None, None, &ACCEPT).expect("add");
    let kept = std::fs::symlink_metadata(store.dir().join("sneaky/detect-link")).expect("link");
    assert!(kept.file_type().is_symlink());
}

#[test]
fn an_archive_in_one_folder_is_named_after_the_archive() {
    let base = tempfile::tempdir().expect("tempdir");
    let archive = base.path().join("ruby_buildpack-v1.2.tgz");
    {
        let file = File::create(&archive).expect("archive");
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("ruby_buildpack-main", classic("hello"))
            .expect("append");
        tar.into_inner()
            .expect("tar")
            .finish()
            .expect("gz")
            .sync_all()
            .expect("sync");
    }
    let store = store(base.path());
    let installed = store
        .add(&archive, None, None, &ACCEPT)
        .expect("add archive");
    assert_eq!(installed.id, "ruby_buildpack-v1.2");
    assert_eq!(installed.kind_name(), "classic");
    assert!(store.dir().join("ruby_buildpack-v1.2/bin/detect").is_file());

    // Not a buildpack at all: said so, naming what was given.
    let empty = base.path().join("empty");
    std::fs::create_dir(&empty).expect("dir");
    let error = store
        .add(&empty, None, None, &ACCEPT)
        .expect_err("not a buildpack");
    assert!(
        matches!(&error, StoreError::NotABuildpack { path } if *path == empty),
        "{error}"
    );
}

#[test]
fn a_wasm_buildpack_is_installed_only_when_its_component_passes_the_check() {
    let base = tempfile::tempdir().expect("tempdir");
    let source = base.path().join("fake");
    std::fs::create_dir(&source).expect("dir");
    let (toml, wasm) = embedded("fake", "1.0.0");
    std::fs::write(source.join("buildpack.toml"), toml).expect("toml");
    std::fs::write(source.join("buildpack.wasm"), wasm).expect("wasm");
    let store = store(base.path());
    let unreadable = Answer(Err("not a WebAssembly component"));
    let error = store
        .add(&source, None, None, &unreadable)
        .expect_err("not a component");
    assert!(
        matches!(&error, StoreError::Component { path, .. } if *path == source),
        "{error}"
    );
    assert!(error.to_string().ends_with("not a WebAssembly component"));
    let wrong = Answer(Ok(&[
        "missing export `release`",
        "imports `wasi:http/types`",
    ]));
    let error = store
        .add(&source, None, None, &wrong)
        .expect_err("wrong world");
    assert!(
        matches!(&error, StoreError::WrongWorld { problems, .. }
            if problems == "missing export `release`; imports `wasi:http/types`"),
        "{error}"
    );
    assert!(matches!(
        store.add(&source, Some("other"), None, &ACCEPT),
        Err(StoreError::NameMismatch { id, name }) if id == "fake" && name == "other"
    ));
    assert_eq!(store.order().expect("order"), None);
    assert!(
        scratch_left(&store).is_empty(),
        "{:?}",
        scratch_left(&store)
    );
    let installed = store.add(&source, None, None, &ACCEPT).expect("passes");
    assert_eq!(installed.id, "fake");
}

#[test]
fn defaults_seed_a_new_store_once_and_install_defaults_updates_in_place() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store(base.path());
    let (a_toml, a_wasm) = embedded("alpha", "1.0.0");
    let (b_toml, b_wasm) = embedded("beta", "1.0.0");
    let a_files = [
        ("buildpack.toml", a_toml.as_bytes()),
        ("buildpack.wasm", &a_wasm[..]),
    ];
    let b_files = [
        ("buildpack.toml", b_toml.as_bytes()),
        ("buildpack.wasm", &b_wasm[..]),
    ];
    let defaults = [
        EmbeddedBuildpack {
            id: "alpha",
            files: &a_files,
        },
        EmbeddedBuildpack {
            id: "beta",
            files: &b_files,
        },
    ];
    let seeded = store.seed(&defaults).expect("seed");
    assert_eq!(seeded.len(), 2);
    assert_eq!(ids(&store), ["alpha", "beta"]);
    assert!(store.seed(&defaults).expect("seed again").is_empty());

    // The operator's choices stand: a removed default is not brought back by seeding.
    store
        .add(&classic("hello"), None, Some(1), &ACCEPT)
        .expect("add");
    store.remove("alpha").expect("remove");
    assert!(store.seed(&defaults).expect("seed again").is_empty());
    assert_eq!(ids(&store), ["hello", "beta"]);

    // install-defaults: beta updated where it is, alpha back at the end.
    let (b2_toml, _) = embedded("beta", "2.0.0");
    let b2_files = [
        ("buildpack.toml", b2_toml.as_bytes()),
        ("buildpack.wasm", &b_wasm[..]),
    ];
    let newer = [
        EmbeddedBuildpack {
            id: "beta",
            files: &b2_files,
        },
        defaults[0],
    ];
    let done = store.install_defaults(&newer).expect("install defaults");
    let summary: Vec<(String, String, bool)> = done
        .into_iter()
        .map(|(bp, replaced)| (bp.id, bp.version, replaced))
        .collect();
    assert_eq!(
        summary,
        [
            ("beta".to_string(), "2.0.0".to_string(), true),
            ("alpha".to_string(), "1.0.0".to_string(), false)
        ]
    );
    assert_eq!(ids(&store), ["hello", "beta", "alpha"]);
    let listed: Vec<(String, String)> = store
        .buildpacks()
        .expect("buildpacks")
        .into_iter()
        .map(|bp| (bp.id, bp.version))
        .collect();
    assert_eq!(listed[1], ("beta".to_string(), "2.0.0".to_string()));
    assert!(
        scratch_left(&store).is_empty(),
        "{:?}",
        scratch_left(&store)
    );

    // No defaults (a binary built without them): nothing is set up.
    let other = BuildpackStore::new(base.path().join("other"));
    assert!(other.seed(&[]).expect("seed").is_empty());
    assert_eq!(other.order().expect("order"), None);
}

#[test]
fn an_order_file_naming_a_path_is_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store(base.path());
    std::fs::create_dir_all(store.dir()).expect("dir");
    std::fs::write(
        store.dir().join(ORDER_FILE),
        r#"{"buildpacks": ["ok", "../../etc"]}"#,
    )
    .expect("order");
    assert!(matches!(
        store.order(),
        Err(StoreError::OrderEntry { id, .. }) if id == "../../etc"
    ));
}

#[test]
fn installed_buildpacks_come_before_extra_directories_and_win_on_ids() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store(base.path());
    store
        .add(&classic("hello"), None, None, &ACCEPT)
        .expect("add");
    let set = detection_set(
        Some(&store),
        &[classic(""), base.path().join("missing")],
        &["cf-final".to_string()],
        &base.path().join("unpack"),
    )
    .expect("set");
    let ids: Vec<&str> = set.iter().map(|bp| bp.id.as_str()).collect();
    assert_eq!(ids[0], "hello");
    assert_eq!(ids[1], "cf-final", "buildpack_order applies to extra dirs");
    assert_eq!(ids.iter().filter(|id| **id == "hello").count(), 1);
    let hello = set.iter().next().expect("first");
    assert!(
        hello
            .dir
            .starts_with(store.dir().canonicalize().expect("dir"))
    );
}

#[test]
fn names_and_ids() {
    assert!(valid_id("ruby_buildpack-v1.2"));
    for bad in [
        "",
        ".hidden",
        "-x",
        "a/b",
        "..",
        "order.json",
        &"x".repeat(65),
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
    assert_eq!(
        url_file_name("https://cc.example/bp/ruby_buildpack-v1.2.zip?x=1"),
        "ruby_buildpack-v1.2.zip"
    );
    assert_eq!(url_file_name("https://cc.example/"), "buildpack.zip");
    assert_eq!(url_file_name("https://cc.example/..%2f..%2fx"), "2f..2fx");
    assert_eq!(
        source_name(Path::new("/x/go_buildpack.tar.gz")).as_deref(),
        Some("go_buildpack")
    );
}
