//! The world check on real components, built by `scripts/build-plugins` (run it first): the
//! buildpacks in every language pass and link with the runtime, one built for another world
//! is told what differs, and `dea buildpacks add` (the store with [`WorldCheck`]) installs
//! only what passes.

use dea::buildpack::store::{BuildpackStore, StoreError};
use dea::buildpack::wasm::WasmRuntime;
use dea::buildpack::{Buildpack, BuildpackKind};
use dea_buildpack_tools::check::{self, CheckError, Problem, WorldCheck};
use dea_tests::{buildpack, test_config};
use std::path::{Path, PathBuf};

fn component(bp: &Buildpack) -> PathBuf {
    match &bp.kind {
        BuildpackKind::Wasm { component } => component.clone(),
        _ => panic!("{} is a wasm buildpack", bp.id),
    }
}

/// Compiled code shared with the other test binaries (`tests/integration/guests.rs`): keyed by digest and
/// engine, so always valid, and the 18 MB Python guest is compiled once, not per run.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests-wasm-cache")
}

#[test]
fn the_real_buildpacks_in_every_language_pass_and_link_with_the_runtime() {
    let base = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(base.path());
    config.wasm.cache_dir = Some(shared_cache());
    let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    for id in ["staticfile", "node", "procfile", "python", "shell"] {
        let path = component(&buildpack(id));
        let report = check::check(&std::fs::read(&path).expect("read")).expect("checks");
        assert!(report.ok(), "{id}: {:?}", report.problems);
        for export in ["detect", "compile", "release"] {
            assert!(
                report.exports.iter().any(|e| e == export),
                "{id}: {report:?}"
            );
        }
        runtime.load(&path).expect("links against the host");
    }
}

#[test]
fn a_component_built_for_another_world_is_told_what_differs() {
    let wrong = component(&buildpack("wrong-world"));
    let report = check::check(&std::fs::read(&wrong).expect("read")).expect("checks");
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems.contains(&"export `detect` has type func() -> result<bool, error>, the buildpack world expects func() -> result<option<detection>, error>".to_string()),
        "{problems:#?}"
    );
    assert!(
        report.problems.contains(&Problem::MissingExport {
            name: "release".into(),
            expected: "func() -> result<release-info, error>".into(),
        }),
        "{problems:#?}"
    );
    // Named from the runtime's own allow-list, which refuses it at load as well
    // (tests/integration/guests.rs).
    assert!(
        report.problems.contains(&Problem::UnknownImport {
            name: "wasi:http/outgoing-handler@0.3.0".into()
        }),
        "{problems:#?}"
    );
    // `compile` has the contract's type (structurally), so it is not listed.
    assert!(
        !problems.iter().any(|p| p.contains("`compile`")),
        "{problems:#?}"
    );

    // A core module is told to componentize first: the smallest one, magic and version.
    let core = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    assert!(matches!(check::check(&core), Err(CheckError::CoreModule)));
}

/// `dir` as a wasm buildpack named `id` holding `component`.
fn wasm_buildpack(dir: &Path, id: &str, component: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let manifest = format!("[buildpack]\nid = \"{id}\"\nname = \"{id}\"\nversion = \"1.0.0\"\n");
    std::fs::write(dir.join("buildpack.toml"), manifest).expect("manifest");
    std::fs::write(dir.join("buildpack.wasm"), component).expect("component");
    dir.to_path_buf()
}

#[test]
fn the_store_installs_only_components_that_pass_the_world_check() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = BuildpackStore::new(base.path().join("buildpacks"));

    let not_wasm = wasm_buildpack(&base.path().join("fake"), "fake", b"\0asm not really");
    let error = store
        .add(&not_wasm, None, None, &WorldCheck)
        .expect_err("not a component");
    assert!(
        matches!(&error, StoreError::Component { source, .. }
            if source.downcast_ref::<CheckError>().is_some_and(|e| matches!(e, CheckError::NotAComponent(_)))),
        "{error}"
    );

    let wrong_bytes = std::fs::read(component(&buildpack("wrong-world"))).expect("read");
    let wrong = wasm_buildpack(&base.path().join("wrong"), "wrong", &wrong_bytes);
    let error = store
        .add(&wrong, None, None, &WorldCheck)
        .expect_err("wrong world");
    let StoreError::WrongWorld { problems, .. } = &error else {
        panic!("{error}");
    };
    assert!(problems.contains("missing export `release`"), "{problems}");
    assert!(
        problems.contains("imports `wasi:http/outgoing-handler@0.3.0`"),
        "{problems}"
    );
    assert_eq!(store.order().expect("order"), None, "nothing installed");

    let staticfile = buildpack("staticfile");
    let installed = store
        .add(&staticfile.dir, None, None, &WorldCheck)
        .expect("a real buildpack is installed");
    assert_eq!(installed.id, staticfile.id);
    assert_eq!(
        store.order().expect("order"),
        Some(vec![staticfile.id.clone()])
    );
}
