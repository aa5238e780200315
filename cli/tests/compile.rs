//! Components are compiled by a child `dea compile-component`, never in the process that
//! runs them: the compiled code lands in the state directory's cache, the child refuses
//! what is not a component with wasmtime's reason (and writes nothing a parent could take
//! for code), and a broken component is not installed.

mod common;

use common::{both, root};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dea(base: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .env("DEA_BASE_DIR", base.join("state"))
        .env("DEA_LOG", "dea=debug")
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .expect("dea runs")
}

/// `dea compile-component LIMITS` with `input` on stdin.
fn compile_component(input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dea"))
        .args(["compile-component", r#"{"pooling": false}"#])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dea runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("input written");
    drop(stdin);
    child.wait_with_output().expect("dea ends")
}

fn marker() -> PathBuf {
    let dir = root().join("target/test-buildpacks/marker");
    assert!(
        dir.join("buildpack.wasm").is_file(),
        "run scripts/build-plugins first"
    );
    dir
}

#[test]
fn an_added_buildpack_is_compiled_by_a_child_into_the_cache() {
    let base = tempfile::tempdir().expect("tempdir");
    let out = dea(
        base.path(),
        &["buildpacks", "add", &marker().display().to_string()],
    );
    let said = both(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("compiled in a child process"), "{said}");
    let cache = base.path().join("state/wasm-cache");
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    assert!(
        !entries.is_empty(),
        "nothing compiled into {}",
        cache.display()
    );
    for entry in &entries {
        let code = std::fs::read(entry).expect("cache entry");
        assert_eq!(
            &code[..4],
            b"\x7fELF",
            "{} is compiled code",
            entry.display()
        );
    }
    // The next command reads the cache: it compiles nothing.
    let app = base.path().join("app");
    std::fs::create_dir_all(&app).expect("app dir");
    std::fs::write(app.join("marker"), "").expect("marker");
    let out = dea(base.path(), &["detect", &app.display().to_string()]);
    let said = both(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("marker"), "{said}");
    let recompiled = said
        .lines()
        .any(|line| line.contains("compiled in a child") && line.contains("buildpacks/marker/"));
    assert!(!recompiled, "the marker was compiled again: {said}");
}

#[test]
fn the_compiler_process_turns_a_component_into_code_and_refuses_anything_else() {
    let component = std::fs::read(marker().join("buildpack.wasm")).expect("component");
    let out = compile_component(&component);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(&out.stdout[..4], b"\x7fELF");

    // Not wasm at all, a core module cut short, bad limits: a failure with the reason, and
    // nothing on stdout that a parent could take for code.
    for input in [&b"not wasm"[..], &component[..component.len() / 2]] {
        let out = compile_component(input);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        assert!(!out.stderr.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dea"))
        .args(["compile-component", "{\"no_such_limit\": 1}"])
        .stdin(Stdio::null())
        .output()
        .expect("dea runs");
    assert!(!out.status.success());
    assert!(both(&out).contains("no_such_limit"), "{}", both(&out));
}

#[test]
fn a_broken_component_is_refused_with_the_reason_and_not_installed() {
    let base = tempfile::tempdir().expect("tempdir");
    let broken = base.path().join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::copy(
        marker().join("buildpack.toml"),
        broken.join("buildpack.toml"),
    )
    .expect("manifest");
    let component = std::fs::read(marker().join("buildpack.wasm")).expect("component");
    std::fs::write(
        broken.join("buildpack.wasm"),
        &component[..component.len() / 2],
    )
    .expect("half a component");
    let out = dea(
        base.path(),
        &["buildpacks", "add", &broken.display().to_string()],
    );
    let said = both(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("broken cannot be installed") && said.contains("end-of-file"),
        "names the buildpack and the reason: {said}"
    );
    let listed = dea(base.path(), &["buildpacks"]);
    assert!(
        !both(&listed).contains("broken"),
        "not installed: {}",
        both(&listed)
    );
}
