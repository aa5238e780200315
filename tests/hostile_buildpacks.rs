//! Buildpacks that misbehave: each ends its staging with a clear error, and the host goes
//! on staging other apps (even at the same time).

use dea::buildpack::wasm::{Phase, PhaseError, WasmRuntime};
use dea::staging::StagingError;
use dea_tests::*;
use std::path::Path;

/// Stages an index.html app with the hostile buildpack in `mode`. In detect the hostile
/// buildpack runs ahead of staticfile; in other phases it is named explicitly.
async fn stage_hostile(
    base: &Path,
    mode: &str,
    phase: &str,
    extra_env: &[(&str, &str)],
) -> (Result<dea::staging::Staged, StagingError>, String) {
    let stager = stager(
        test_config(base),
        vec![buildpack("hostile"), buildpack("staticfile")],
    );
    let app = base.join(format!("app-{mode}-{phase}"));
    write_app(&app, &[("index.html", "x")]);
    let mut req = request(&app, &base.join(format!("{mode}-{phase}.tgz")));
    req.env = vec![
        ("HOSTILE".into(), mode.into()),
        ("HOSTILE_PHASE".into(), phase.into()),
    ];
    req.env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    if phase != "detect" {
        req.buildpacks = vec!["hostile".into()];
    }
    stage(&stager, req).await
}

fn phase_error(error: &StagingError) -> &PhaseError {
    match error {
        StagingError::DetectFailed { source, .. }
        | StagingError::CompileFailed { source, .. }
        | StagingError::ReleaseFailed { source, .. } => source,
        other => panic!("expected a phase failure, got {other:?}"),
    }
}

#[tokio::test]
async fn infinite_loop_hits_the_cpu_limit() {
    let base = tempfile::tempdir().expect("tempdir");
    for phase in ["detect", "compile"] {
        let (result, log) = stage_hostile(base.path(), "loop", phase, &[]).await;
        let error = result.expect_err("a loop cannot succeed");
        assert!(
            matches!(phase_error(&error), PhaseError::CpuLimit { .. }),
            "{phase}: {error:?}"
        );
        assert!(error.to_string().contains("CPU-time limit"), "{error}");
        assert!(log.contains("Staging failed"), "{log}");
    }
}

#[tokio::test]
async fn blocking_sleep_hits_the_wall_clock_timeout() {
    let base = tempfile::tempdir().expect("tempdir");
    let (result, _) = stage_hostile(base.path(), "sleep", "detect", &[]).await;
    let error = result.expect_err("sleeping forever cannot succeed");
    assert!(
        matches!(phase_error(&error), PhaseError::Timeout { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let base = tempfile::tempdir().expect("tempdir");
    let (result, _) = stage_hostile(base.path(), "memory", "compile", &[]).await;
    let error = result.expect_err("memory bomb cannot succeed");
    assert!(
        matches!(
            phase_error(&error),
            PhaseError::MemoryLimit { limit_mb: 64, .. }
        ),
        "{error:?}"
    );
    assert_eq!(error.cf_type(), "BuildpackCompileFailed");
}

#[tokio::test]
async fn endless_output_hits_the_output_limit() {
    let base = tempfile::tempdir().expect("tempdir");
    for mode in ["output", "log"] {
        let (result, log) = stage_hostile(base.path(), mode, "compile", &[]).await;
        let error = result.expect_err("endless output cannot succeed");
        assert!(
            matches!(phase_error(&error), PhaseError::OutputLimit { .. }),
            "{mode}: {error:?}"
        );
        // The log holds about the limit, not an unbounded amount.
        assert!(
            log.len() < 2 * 256 * 1024,
            "{mode}: log is {} bytes",
            log.len()
        );
    }
}

#[tokio::test]
async fn traps_and_exits_are_reported() {
    let base = tempfile::tempdir().expect("tempdir");
    let (result, _) = stage_hostile(base.path(), "trap", "release", &[]).await;
    let error = result.expect_err("a trap cannot succeed");
    assert!(
        matches!(phase_error(&error), PhaseError::Trap { .. }),
        "{error:?}"
    );
    assert_eq!(error.cf_type(), "BuildpackReleaseFailed");

    let (result, _) = stage_hostile(base.path(), "exit", "compile", &[]).await;
    // WASI p2's exit carries only success or failure, so exit(3) arrives as status 1.
    let error = result.expect_err("exit(3) cannot succeed");
    assert!(
        matches!(phase_error(&error), PhaseError::Exit { status: 1, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn writes_outside_the_sandbox_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let target = base.path().join("escaped.txt");
    let target_str = target.display().to_string();
    let (result, _) = stage_hostile(
        base.path(),
        "escape",
        "compile",
        &[("HOSTILE_TARGET", target_str.as_str())],
    )
    .await;
    let error = result.expect_err("the hostile buildpack reports what it managed");
    assert!(
        error
            .to_string()
            .contains("every write outside the sandbox was refused"),
        "{error}"
    );
    assert!(!target.exists());
    assert!(!base.path().join("escaped").exists());
    assert!(!Path::new("/escaped").exists());

    // The app directory is read-only during detect.
    let (result, _) = stage_hostile(base.path(), "write-app", "detect", &[]).await;
    let error = result.expect_err("detect may not write the app");
    assert!(
        matches!(phase_error(&error), PhaseError::Buildpack(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn fetch_outside_the_manifest_is_denied() {
    let base = tempfile::tempdir().expect("tempdir");
    let (result, log) = stage_hostile(base.path(), "fetch-denied", "compile", &[]).await;
    let error = result.expect_err("undeclared fetch fails");
    assert!(error.to_string().contains("not-allowed.invalid"), "{error}");
    assert!(log.contains("fetch failed"), "{log}");
}

#[tokio::test]
async fn host_keeps_staging_while_a_hostile_buildpack_spins() {
    let base = tempfile::tempdir().expect("tempdir");
    let good_base = base.path().join("good");
    let good = stager(test_config(&good_base), default_buildpacks());
    let app = base.path().join("good-app");
    write_app(&app, &[("index.html", "ok")]);
    let hostile = stage_hostile(base.path(), "loop", "compile", &[]);
    let healthy = stage(&good, request(&app, &base.path().join("good.tgz")));
    let ((bad, _), (ok, log)) = tokio::join!(hostile, healthy);
    assert!(bad.is_err());
    ok.unwrap_or_else(|e| panic!("healthy staging failed beside a hostile one: {e}\n{log}"));
}

/// A component importing `wasi:sockets` loads (guest toolchains import it whether or not the
/// buildpack uses it), but its phases have no network: a connect to a real listener on
/// 127.0.0.1 fails inside the guest and the listener never sees a connection.
#[tokio::test]
async fn components_that_import_sockets_load_but_every_socket_call_is_denied() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let sockets = buildpack("sockets");
    let dea::buildpack::BuildpackKind::Wasm { component } = &sockets.kind else {
        panic!("sockets is a wasm buildpack");
    };
    let loaded = runtime
        .load(component)
        .expect("a sockets import is linked, not refused");
    let listener = CountingListener::start().await;
    let target = format!("127.0.0.1:{}", listener.port);
    let app = base.path().join("app");
    write_app(&app, &[("index.html", "x")]);
    let spec = phase_spec(
        &app,
        &sockets.dir,
        vec![("SOCKETS_CONNECT".into(), target.clone())],
    );
    let error = runtime
        .run(&loaded, Phase::Detect, spec)
        .await
        .expect_err("no socket call succeeds");
    let PhaseError::Buildpack(failure) = &error else {
        panic!("expected the guest's own error, got {error}");
    };
    let dea::buildpack::wasm::GuestError::Io(message) = &failure.error else {
        panic!("expected an i/o error, got {error}");
    };
    assert!(
        message.starts_with(&format!("connect {target}:")),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("denied") || message.contains("not permitted"),
        "{message}"
    );
    // Give a stray connection time to be accepted before counting.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(listener.hits(), 0, "the guest reached the listener");
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let marker = buildpack("marker");
    let dea::buildpack::BuildpackKind::Wasm { component } = &marker.kind else {
        panic!("marker is a wasm buildpack");
    };
    let first = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let loaded = first.load(component).expect("loads");
    assert!(compiled_code_cached(&config, &loaded.digest));

    // A new runtime (a restarted host) loads the cached code and runs it.
    let second = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let reloaded = second.load(component).expect("loads from cache");
    let app = base.path().join("app");
    write_app(&app, &[("marker", "")]);
    let spec = phase_spec(&app, &marker.dir, Vec::new());
    let output = second
        .run(&reloaded, Phase::Detect, spec)
        .await
        .expect("detect runs");
    assert!(
        matches!(output, dea::buildpack::wasm::PhaseOutput::Detect(Some(ref d)) if d.name == "marker:marker"),
        "{output:?}"
    );
}
