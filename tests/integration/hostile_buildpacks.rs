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
    assert_eq!(error.cf_type().as_str(), "BuildpackCompileFailed");
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
    assert_eq!(error.cf_type().as_str(), "BuildpackReleaseFailed");

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
    assert_eq!(
        failure.kind,
        dea::phase::FailureKind::Io,
        "expected an i/o error, got {error}"
    );
    let message = &failure.message;
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

/// Measures how late a 20 ms tick runs on the test's runtime: the stand-in for "does the
/// agent still answer" at the stager's level. An async worker blocked by a read of a FIFO
/// (or of /dev/zero) shows as a gap of seconds, or forever.
struct Liveness {
    ticks: std::sync::Arc<std::sync::atomic::AtomicU64>,
    worst_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Liveness {
    fn start() -> Liveness {
        use std::sync::atomic::Ordering;
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let worst_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (t, w) = (ticks.clone(), worst_ms.clone());
        let task = tokio::spawn(async move {
            loop {
                let before = std::time::Instant::now();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let late = before.elapsed().as_millis() as u64;
                w.fetch_max(late, Ordering::SeqCst);
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        Liveness {
            ticks,
            worst_ms,
            task,
        }
    }

    /// Stops the probe; panics if it did not run, or if it was ever held up for a second.
    fn check(self) {
        use std::sync::atomic::Ordering;
        self.task.abort();
        let (ticks, worst) = (
            self.ticks.load(Ordering::SeqCst),
            self.worst_ms.load(Ordering::SeqCst),
        );
        assert!(ticks > 10, "the probe hardly ran ({ticks} ticks)");
        assert!(
            worst < 1_000,
            "an async worker was blocked: a 20 ms tick took {worst} ms"
        );
    }
}

/// Stages a `plant.txt` app with the planter classic buildpack planting `attack`.
async fn stage_planted(
    stager: &dea::staging::Stager,
    base: &Path,
    attack: &str,
) -> (
    Result<dea::staging::Staged, StagingError>,
    String,
    std::path::PathBuf,
) {
    let app = base.join(format!("app-{attack}"));
    write_app(&app, &[("plant.txt", "x")]);
    let out = base.join(format!("{attack}.tgz"));
    let mut req = request(&app, &out);
    req.env = vec![("PLANT".into(), attack.into())];
    let (result, log) = stage(stager, req).await;
    (result, log, out)
}

/// After compile the agent reads the app's Procfile and the buildpack's `export` as root, and
/// packs the tree the buildpack left. A buildpack can make each of those a link to the
/// host's /etc/shadow, /dev/zero, a FIFO, a chain of links out of the tree, a file too large,
/// a tree too deep or a 100 GB sparse file. Every one fails its staging with a clear error,
/// nothing of /etc/shadow gets out, no workspace is left, and the runtime never stalls, with
/// all the attacks running at once on two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_links_fifos_and_huge_trees_fail_the_staging_not_the_agent() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), vec![classic_buildpack("planter")]);
    let attacks: &[(&str, &[&str])] = &[
        (
            "procfile-shadow",
            &["Procfile", "leads out of its directory"],
        ),
        ("procfile-zero", &["Procfile", "leads out of its directory"]),
        (
            "procfile-fifo",
            &["Procfile", "is a FIFO, not a regular file"],
        ),
        (
            "procfile-chain",
            &["Procfile", "leads out of its directory"],
        ),
        (
            "procfile-huge",
            &["Procfile", "larger than the limit of 1048576 bytes"],
        ),
        ("export-shadow", &["export", "leads out of its directory"]),
        ("export-fifo", &["export", "is a FIFO"]),
        ("deep-tree", &["deeper than the limit of 256"]),
        ("sparse", &["holds more than the limit of 4096 MiB"]),
        (
            "fifo-in-app",
            &["is a FIFO; droplets hold files, directories and links only"],
        ),
    ];
    let shadow_line = std::fs::read_to_string("/etc/shadow")
        .ok()
        .and_then(|text| text.lines().next().map(str::to_string))
        .filter(|line| line.len() > 4);
    let probe = Liveness::start();
    let runs = attacks
        .iter()
        .map(|(attack, _)| stage_planted(&stager, base.path(), attack));
    let results = futures_util::future::join_all(runs).await;
    probe.check();
    for ((attack, expected), (result, log, out)) in attacks.iter().zip(results) {
        let error = match result {
            Ok(staged) => panic!("{attack}: staged anyway: {:?}\n{log}", staged.info),
            Err(error) => error.to_string(),
        };
        for phrase in *expected {
            assert!(error.contains(phrase), "{attack}: {error}\n{log}");
        }
        assert!(
            log.contains(&format!("Planting {attack}")),
            "{attack} never ran:\n{log}"
        );
        assert!(!out.exists(), "{attack}: a droplet was written");
        if let Some(line) = &shadow_line {
            assert!(
                !log.contains(line.as_str()),
                "{attack}: /etc/shadow in the log"
            );
        }
    }
    let left: Vec<_> = std::fs::read_dir(base.path().join("staging"))
        .expect("staging dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "workspaces left behind: {left:?}");

    // The same buildpack planting nothing stages: the refusals above are the attacks'.
    let (result, log, out) = stage_planted(&stager, base.path(), "none").await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.start_command.as_deref(), Some("sleep 1"));
    assert!(out.is_file());
}
