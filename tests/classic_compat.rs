//! Classic buildpacks that behave like the public ones people use (a module of the `classic`
//! test target): Heroku's own `buildpack.toml` beside `bin/`, and a buildpack directory
//! holding a broken buildpack.

use dea::buildpack::{Buildpack, BuildpackSet};
use dea_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `tests/classic/<name>` copied (modes kept) to `into/<as_name>`.
fn copy_buildpack(name: &str, into: &Path, as_name: &str) -> PathBuf {
    let target = into.join(as_name);
    std::fs::create_dir_all(into).expect("mkdir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("tests/classic").join(name))
        .arg(&target)
        .status()
        .expect("cp runs");
    assert!(status.success(), "copying {name}");
    target
}

fn make_executable(paths: &[PathBuf]) {
    for path in paths {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn heroku_buildpack_toml_never_makes_a_classic_buildpack_fail_to_load() {
    let apt = Buildpack::load(&repo_root().join("tests/classic/apt")).expect("apt loads");
    assert_eq!(apt.kind_name(), "classic");
    assert_eq!((apt.id.as_str(), apt.name.as_str()), ("apt", "Apt"));

    let base = tempfile::tempdir().expect("tempdir");
    // Not TOML at all, or a wasm-looking manifest naming a component that is not there:
    // with an executable bin/detect beside it, still a classic buildpack.
    for (name, manifest) in [
        ("junk", "this is [not toml"),
        (
            "wasm-looking",
            "[buildpack]\nid = \"x\"\nname = \"X\"\nversion = \"1\"\ncomponent = \"missing.wasm\"\n",
        ),
    ] {
        let dir = copy_buildpack("hello", base.path(), name);
        std::fs::write(dir.join("buildpack.toml"), manifest).expect("manifest");
        let bp = Buildpack::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bp.kind_name(), "classic", "{name}");
        assert_eq!(bp.id, name);
    }
    // A Cloud Foundry buildpack may have no detect at all.
    let cf = base.path().join("supply-only");
    write_app(
        &cf,
        &[
            ("bin/supply", "#!/bin/sh\n"),
            ("bin/finalize", "#!/bin/sh\n"),
        ],
    );
    make_executable(&[cf.join("bin/supply"), cf.join("bin/finalize")]);
    assert_eq!(Buildpack::load(&cf).expect("loads").kind_name(), "cf");
}

#[tokio::test]
async fn a_broken_buildpack_is_skipped_and_the_others_still_stage() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("buildpacks");
    copy_buildpack("hello", &dir, "hello");
    copy_buildpack("apt", &dir, "apt");
    write_app(
        &dir,
        &[
            ("broken/buildpack.toml", "this is [not toml"),
            ("no-id/buildpack.toml", "[buildpack]\nname = \"No Id\"\n"),
        ],
    );
    // The same id in a later directory: the first is kept.
    let other = base.path().join("more");
    copy_buildpack("hello", &other, "hello");

    let set = BuildpackSet::discover(
        &[dir.clone(), other.clone()],
        &[],
        &base.path().join("unpacked"),
    )
    .expect("one broken buildpack does not fail discovery");
    let ids: Vec<&str> = set.iter().map(|bp| bp.id.as_str()).collect();
    assert_eq!(ids, ["apt", "hello"]);
    let skipped: Vec<(PathBuf, String)> = set
        .skipped()
        .iter()
        .map(|s| (s.path.clone(), s.reason.to_string()))
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert_eq!(skipped[0].0, dir.join("broken"));
    assert!(skipped[0].1.contains("TOML parse error"), "{skipped:?}");
    assert_eq!(skipped[1].0, dir.join("no-id"));
    assert!(skipped[1].1.contains("missing field `id`"), "{skipped:?}");
    assert_eq!(skipped[2].0, other.join("hello"));
    assert!(
        skipped[2]
            .1
            .contains("another buildpack has the id \"hello\""),
        "{skipped:?}"
    );

    let stager = stager(test_config(base.path()), set.iter().cloned().collect());
    let app = base.path().join("app");
    write_app(&app, &[("hello.txt", "hi")]);
    let (result, log) = stage(&stager, request(&app, &base.path().join("d.tgz"))).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.detected_buildpack, "Hello");
}
