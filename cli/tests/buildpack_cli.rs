//! `dea buildpack ...` as a buildpack author uses it: scaffold a project in Rust, Python and
//! C, build it with the real toolchains (cargo for wasm32-wasip2, componentize-py, clang +
//! wasi-libc + `dea buildpack componentize`) and
//! run the project's own test (which checks the component and stages its sample app);
//! `check` on a component built for another world; `componentize` on a component.

mod common;

use common::{both, root};
use std::path::Path;
use std::process::{Command, Output};

fn dea(base: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .env("DEA_BASE_DIR", base.join("state"))
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .expect("dea runs")
}

/// Scaffolds `name` in `lang`, then runs its `test.sh` as its author would.
fn scaffold_builds_and_passes_its_own_test(lang: &str) {
    let base = tempfile::tempdir().expect("tempdir");
    let name = format!("hello-{lang}");
    let dir = base.path().join(&name);
    let dir_arg = dir.display().to_string();
    let out = dea(
        base.path(),
        &["buildpack", "new", &name, "--lang", lang, "--dir", &dir_arg],
    );
    assert!(out.status.success(), "{}", both(&out));
    assert!(dir.join("buildpack.toml").is_file());
    assert!(dir.join("test/app/hello.txt").is_file());

    let test = Command::new(dir.join("test.sh"))
        .env("DEA", env!("CARGO_BIN_EXE_dea"))
        .env("DEA_BASE_DIR", base.path().join("state"))
        .env("RUST_BACKTRACE", "0")
        // Reuse one target directory across runs: the generated crate's dependencies
        // (wit-bindgen, serde, toml) are then built once.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"),
        )
        .output()
        .expect("test.sh runs");
    let log = both(&test);
    assert!(test.status.success(), "{log}");
    assert!(
        log.contains("world:   implements dea:buildpack/buildpack@0.1.0"),
        "{log}"
    );
    assert!(log.contains(&format!("-----> Detected {name}")), "{log}");
    assert!(log.contains("-----> Saying hello"), "{log}");
    assert!(log.contains("test.sh: 1 passed, 0 failed"), "{log}");
}

#[test]
fn a_new_rust_buildpack_builds_and_passes_its_own_test() {
    scaffold_builds_and_passes_its_own_test("rust");
}

#[test]
fn a_new_python_buildpack_builds_and_passes_its_own_test() {
    scaffold_builds_and_passes_its_own_test("python");
}

#[test]
fn a_new_c_buildpack_builds_and_passes_its_own_test() {
    scaffold_builds_and_passes_its_own_test("c");
}

#[test]
fn new_refuses_bad_names_and_non_empty_directories() {
    let base = tempfile::tempdir().expect("tempdir");
    let out = dea(
        base.path(),
        &["buildpack", "new", "Bad_Name", "--lang", "rust"],
    );
    assert!(!out.status.success());
    assert!(
        both(&out).contains("invalid buildpack name \"Bad_Name\""),
        "{}",
        both(&out)
    );
    let dir = base.path().join("taken");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("file"), "x").expect("write");
    let dir_arg = dir.display().to_string();
    let out = dea(
        base.path(),
        &[
            "buildpack",
            "new",
            "x",
            "--lang",
            "python",
            "--dir",
            &dir_arg,
        ],
    );
    assert!(!out.status.success());
    assert!(
        both(&out).contains("exists and is not empty"),
        "{}",
        both(&out)
    );
}

#[test]
fn check_rejects_a_component_of_another_world_and_names_the_differences() {
    let wrong = root().join("target/test-buildpacks/wrong-world/buildpack.wasm");
    assert!(wrong.is_file(), "run scripts/build-plugins first");
    let base = tempfile::tempdir().expect("tempdir");
    let out = dea(
        base.path(),
        &["buildpack", "check", &wrong.display().to_string()],
    );
    let log = both(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("problem: missing export `release`"), "{log}");
    assert!(
        log.contains("problem: export `detect` has type func() -> result<bool, error>, the buildpack world expects func() -> result<option<detection>, error>"),
        "{log}"
    );
    assert!(
        log.contains("does not implement dea:buildpack/buildpack@0.1.0"),
        "{log}"
    );

    // A real one passes, by directory, including the link against this host.
    let shell = root().join("target/buildpacks/shell");
    let out = dea(
        base.path(),
        &["buildpack", "check", &shell.display().to_string()],
    );
    let log = both(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("link:    ok (compiled"), "{log}");

    // Componentizing something that already is a component says so.
    let staticfile = root().join("target/buildpacks/staticfile/buildpack.wasm");
    let out = dea(
        base.path(),
        &[
            "buildpack",
            "componentize",
            &staticfile.display().to_string(),
            "-o",
            "/dev/null",
        ],
    );
    assert!(!out.status.success());
    assert!(both(&out).contains("already a component"), "{}", both(&out));
}
