//! Detection without cold stalls: the answer comes as soon as the first match in order is
//! known (a later buildpack still running is cancelled, one that would first have to be
//! compiled never is), a component is compiled once however many want it at the same time,
//! and a wasm buildpack is compiled when it is installed rather than by its first staging.
//! Every assertion is on what happened (counters, cache entries, the answer), never on how
//! long it took.

use dea::buildpack::store::BuildpackStore;
use dea::buildpack::wasm::{CodeOrigin, WasmRuntime};
use dea::buildpack::{Buildpack, BuildpackKind, BuildpackSet};
use dea::config::Config;
use dea::fetch::FetchService;
use dea::staging::Stager;
use dea_tests::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn component(bp: &Buildpack) -> PathBuf {
    match &bp.kind {
        BuildpackKind::Wasm { component } => component.clone(),
        _ => panic!("{} is a wasm buildpack", bp.id),
    }
}

/// A copy of test buildpack `from` named `id`, with `env` in its manifest.
fn variant(dir: &Path, from: &str, id: &str, env: &[(&str, &str)]) -> Buildpack {
    let original = buildpack(from);
    let dir = dir.join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(component(&original), dir.join("buildpack.wasm")).expect("copy component");
    let mut manifest = format!("[buildpack]\nid = \"{id}\"\nname = \"{id}\"\nversion = \"1\"\n");
    if !env.is_empty() {
        manifest.push_str("[env]\n");
        for (key, value) in env {
            manifest.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    std::fs::write(dir.join("buildpack.toml"), manifest).expect("manifest");
    Buildpack::load(&dir).expect("buildpack loads")
}

/// A stager over `buildpacks` on `runtime`, whose counters the tests read.
fn stager_on(config: Config, buildpacks: Vec<Buildpack>, runtime: &Arc<WasmRuntime>) -> Stager {
    let fetch =
        Arc::new(FetchService::new(config.fetch.clone(), config.fetch_cache_dir()).expect("fetch"));
    Stager::new(
        config,
        BuildpackSet::from_list(buildpacks),
        runtime.clone(),
        fetch,
    )
}

fn cached_code(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
        .unwrap_or(0)
}

/// The matching buildpack comes first but must be compiled (its first poll waits), so the
/// second one, loaded already, is running its detect (asleep, for as long as its timeout
/// allows: a minute) when the match is known. The staging answers with the match, and the
/// sleeping detect is abandoned: had detection waited for every buildpack, it would have
/// ended by its timeout instead, and no phase would have been abandoned.
#[tokio::test]
async fn a_match_answers_while_a_later_detect_still_runs() {
    let base = tempfile::tempdir().expect("tempdir");
    let bps = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(base.path());
    config.wasm.detect_timeout_ms = 60_000;
    let marker = variant(bps.path(), "marker", "first", &[]);
    let sleeper = variant(bps.path(), "hostile", "sleeper", &[("HOSTILE", "sleep")]);
    let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    runtime.load(&component(&sleeper)).expect("sleeper loads");
    let stager = stager_on(config, vec![marker, sleeper], &runtime);

    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path(), &[("marker", "")]);
    let out = tempfile::tempdir().expect("tempdir");
    let (staged, log) = stage(&stager, request(app.path(), &out.path().join("d.tgz"))).await;
    let staged = staged.expect("stages with the first buildpack");

    assert_eq!(staged.info.buildpack_key, "first");
    assert_eq!(staged.info.detected_buildpack, "marker:marker");
    assert_eq!(
        runtime.abandoned_phases(),
        1,
        "the sleeping detect was cancelled, not waited for"
    );
    assert!(!log.contains("sleeper"), "{log}");
    // Its instance slot came back: the same stager stages again.
    let (again, _) = stage(&stager, request(app.path(), &out.path().join("e.tgz"))).await;
    again.expect("stages again");
}

/// A static site's first staging on a fresh state directory: the matching buildpack comes
/// first, the Python buildpack (18 MB, seconds to compile) after it. Detection answers with
/// the match and never compiles Python: a candidate is compiled only once every buildpack
/// ahead of it has said no.
#[tokio::test]
async fn a_later_buildpack_is_not_compiled_when_an_earlier_one_matches() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let cache = config.wasm_cache_dir();
    let runtime = WasmRuntime::new(config.wasm.clone(), cache.clone()).expect("runtime");
    let stager = stager_on(
        config,
        vec![buildpack("staticfile"), buildpack("python")],
        &runtime,
    );

    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path(), &[("index.html", "<h1>hi</h1>")]);
    let out = tempfile::tempdir().expect("tempdir");
    let (staged, log) = stage(&stager, request(app.path(), &out.path().join("d.tgz"))).await;
    let staged = staged.unwrap_or_else(|e| panic!("stages: {e}\n{log}"));

    assert_eq!(staged.info.buildpack_key, "staticfile");
    assert_eq!(runtime.compilations(), 1, "only staticfile was compiled");
    assert_eq!(cached_code(&cache), 1);
    assert!(runtime.loaded(&component(&buildpack("python"))).is_none());
}

/// The agent's preload and a staging (or two stagings) want the same component at the same
/// moment: it is compiled once, and every caller gets that one.
#[test]
fn a_component_wanted_by_many_at_once_is_compiled_once() {
    let base = tempfile::tempdir().expect("tempdir");
    let bps = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    // Four buildpacks with the same component (one digest), each at its own path.
    let paths: Vec<PathBuf> = (0..4)
        .map(|i| component(&variant(bps.path(), "marker", &format!("copy{i}"), &[])))
        .collect();
    let start = std::sync::Barrier::new(paths.len());
    let loaded: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                let (runtime, start) = (&runtime, &start);
                scope.spawn(move || {
                    start.wait();
                    runtime.load(path).expect("loads")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });

    assert_eq!(runtime.compilations(), 1);
    assert!(loaded.iter().all(|l| Arc::ptr_eq(l, &loaded[0])));
    assert_eq!(
        loaded
            .iter()
            .filter(|l| l.origin == CodeOrigin::Compiled)
            .count(),
        4,
        "all four got the component the one compile produced"
    );
}

/// `dea buildpacks add` of a wasm buildpack compiles its component into the cache the agent
/// reads (the runtime is one of the install's checks): the agent's first staging with it
/// loads compiled code, with no compile of its own.
#[test]
fn an_installed_wasm_buildpack_is_compiled_at_install_time() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let installer =
        WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let store = BuildpackStore::new(config.installed_buildpacks_dir());
    let installed = store
        .add(&buildpack("marker").dir, None, None, &*installer)
        .expect("installs");
    assert_eq!(installer.compilations(), 1);

    // The agent, later: a runtime of its own on the same configuration.
    let agent = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let loaded = agent.load(&component(&installed)).expect("loads");
    assert_eq!(loaded.origin, CodeOrigin::DiskCache);
    assert_eq!(agent.compilations(), 0);
}

/// What a component that is not a buildpack component at all gets from the install-time
/// compile: the install is refused, and nothing is installed.
#[test]
fn a_component_that_does_not_compile_is_not_installed() {
    let base = tempfile::tempdir().expect("tempdir");
    let bps = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let dir = bps.path().join("broken");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("buildpack.wasm"), b"\0asm not really").expect("component");
    std::fs::write(
        dir.join("buildpack.toml"),
        "[buildpack]\nid = \"broken\"\nname = \"broken\"\nversion = \"1\"\n",
    )
    .expect("manifest");
    let store = BuildpackStore::new(config.installed_buildpacks_dir());

    let error = store.add(&dir, None, None, &*runtime).expect_err("refused");
    assert!(error.to_string().contains("cannot be installed"), "{error}");
    assert!(store.order().expect("order").unwrap_or_default().is_empty());
    assert_eq!(runtime.compilations(), 0);
}

/// A classic buildpack in `dir/<id>` whose scripts are `detect` (the rest trivial).
fn classic_script(dir: &Path, id: &str, detect: &str) -> Buildpack {
    classic_scripts(dir, id, detect, "exit 0")
}

/// [`classic_script`] with `compile` too.
pub(super) fn classic_scripts(dir: &Path, id: &str, detect: &str, compile: &str) -> Buildpack {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(id).join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    for (name, body) in [
        ("detect", detect),
        ("compile", compile),
        (
            "release",
            "printf -- '---\\ndefault_process_types:\\n  web: sleep 1\\n'",
        ),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    Buildpack::load(&dir.join(id)).expect("classic buildpack loads")
}

/// Detects run at once, but their output reaches the staging log (which ships in the
/// droplet) in the candidates' order: the first candidate's, written a second after the
/// second's, still comes first; a later candidate's, written before either, is left out (it
/// had no part in the answer). Written as it came, the log would differ from run to run.
#[tokio::test]
async fn detect_output_reaches_the_log_in_candidate_order() {
    let base = tempfile::tempdir().expect("tempdir");
    let bps = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![
            classic_script(
                bps.path(),
                "slow-no",
                "sleep 1; echo 'slow-no looked' >&2; exit 1",
            ),
            classic_script(
                bps.path(),
                "quick-yes",
                "echo 'quick-yes looked' >&2; echo quick",
            ),
            classic_script(bps.path(), "late", "echo 'late looked' >&2; echo late"),
        ],
    );
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path(), &[("index.html", "hi")]);
    let out = tempfile::tempdir().expect("tempdir");
    let (staged, log) = stage(&stager, request(app.path(), &out.path().join("d.tgz"))).await;
    let staged = staged.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "quick-yes");
    let slow = log.find("slow-no looked").expect(&log);
    let quick = log.find("quick-yes looked").expect(&log);
    assert!(slow < quick, "not in candidate order:\n{log}");
    assert!(!log.contains("late looked"), "{log}");
}
