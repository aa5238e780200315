//! Classic buildpacks run unchanged in real runc containers: the Heroku and Cloud Foundry
//! contracts, mixed orders with wasm buildpacks, and containment.

use dea::buildpack::wasm::PhaseError;
use dea::staging::StagingError;
use dea_tests::*;
use std::path::Path;

mod compat;

fn report(droplet: &Path, file: &str) -> String {
    droplet_file(droplet, &format!("./app/{file}")).unwrap_or_else(|| {
        panic!(
            "{file} missing from droplet: {:?}",
            droplet_entries(droplet)
        )
    })
}

#[tokio::test]
async fn heroku_contract_detect_compile_release() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![classic_buildpack("norelease"), classic_buildpack("hello")],
    );
    let app = base.path().join("app");
    write_app(&app, &[("hello.txt", "hi")]);
    let out = base.path().join("hello.tgz");
    let mut req = request(&app, &out);
    req.env = vec![("GREETING".into(), "hello\nworld".into())];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));

    // Detect: first match in order, named by its stdout.
    assert_eq!(staged.info.detected_buildpack, "Hello");
    assert_eq!(staged.info.buildpack_key, "hello");
    // Compile: three arguments, cwd = the buildpack, ENV_DIR files not exported, non-root.
    let compile = report(&out, "compile-report.txt");
    assert!(compile.contains("args=3"), "{compile}");
    assert!(compile.contains("cwd=/tmp/buildpack"), "{compile}");
    assert!(compile.contains("stack=cflinuxfs4"), "{compile}");
    assert!(compile.contains("env_files=GREETING"), "{compile}");
    assert!(compile.contains("greeting_file=hello\nworld"), "{compile}");
    assert!(compile.contains("greeting_exported=unset"), "{compile}");
    assert!(compile.contains("user=2000"), "{compile}");
    // Release YAML: process types and config vars; .profile.d kept for run time.
    assert_eq!(
        staged.info.start_command.as_deref(),
        Some("./hello-server --port $PORT")
    );
    assert_eq!(
        staged
            .info
            .config_vars
            .get("HELLO_MODE")
            .map(String::as_str),
        Some("production")
    );
    assert!(droplet_file(&out, "./app/.profile.d/hello.sh").is_some());
    // Output streamed into the log.
    assert!(log.contains("-----> Hello compile"), "{log}");
    assert!(log.contains("report written"), "{log}");
}

#[tokio::test]
async fn missing_release_is_fine_and_detect_stderr_is_shown() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![classic_buildpack("hello"), classic_buildpack("norelease")],
    );
    let app = base.path().join("app");
    write_app(&app, &[("norelease.txt", ""), ("Procfile", "web: ./run\n")]);
    let out = base.path().join("nr.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.detected_buildpack, "No Release");
    assert_eq!(staged.info.start_command.as_deref(), Some("./run"));
    assert!(report(&out, "norelease-compiled.txt").contains("compiled"));
    // hello's detect said no on stderr, which reaches the user.
    assert!(log.contains("no hello.txt here"), "{log}");

    // Nothing detects: CF's error.
    let empty = base.path().join("empty");
    write_app(&empty, &[("README", "x")]);
    let (result, _) = stage(&stager, request(&empty, &base.path().join("e.tgz"))).await;
    let error = result.expect_err("nothing detects");
    assert!(matches!(error, StagingError::NoAppDetected), "{error:?}");
}

#[tokio::test]
async fn export_passes_env_to_later_buildpacks_in_mixed_orders() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![
            classic_buildpack("hello"),
            classic_buildpack("reads-export"),
            buildpack("staticfile"),
        ],
    );
    let app = base.path().join("app");
    write_app(&app, &[("hello.txt", "hi"), ("index.html", "<p>x</p>")]);

    // classic, classic, then wasm last (it releases).
    let out = base.path().join("mixed.tgz");
    let mut req = request(&app, &out);
    req.buildpacks = vec!["hello".into(), "reads-export".into(), "staticfile".into()];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        report(&out, "export-seen.txt").trim(),
        "HELLO_FROM_EXPORT=yes"
    );
    assert_eq!(staged.info.buildpack_key, "staticfile");
    assert!(report(&out, "compile-report.txt").contains("args=3"));

    // wasm first, then classic last (it releases).
    let out = base.path().join("mixed2.tgz");
    let mut req = request(&app, &out);
    req.buildpacks = vec!["staticfile".into(), "hello".into()];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "hello");
    assert!(log.contains("Setting up static file server"), "{log}");
    assert!(log.contains("Hello compile"), "{log}");
}

#[tokio::test]
async fn cloud_foundry_supply_then_finalize() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![
            classic_buildpack("cf-supply"),
            classic_buildpack("cf-final"),
        ],
    );
    let app = base.path().join("app");
    write_app(&app, &[("cf.txt", "")]);
    let out = base.path().join("cf.tgz");
    let mut req = request(&app, &out);
    req.buildpacks = vec!["cf-supply".into(), "cf-final".into()];
    req.env = vec![("GREETING".into(), "hey".into())];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let finalize = report(&out, "finalize-report.txt");
    assert!(finalize.contains("args=5"), "{finalize}");
    assert!(finalize.contains("index=1"), "{finalize}");
    assert!(finalize.contains("./0/supplied.txt"), "{finalize}");
    // CF exports the app's environment.
    assert!(finalize.contains("greeting_exported=hey"), "{finalize}");
    let supplied = droplet_file(&out, "./deps/0/supplied.txt").expect("deps/0 in droplet");
    assert!(
        supplied.contains("index 0") && supplied.contains("args=4"),
        "{supplied}"
    );
    assert!(droplet_file(&out, "./profile.d/finalize.sh").is_some());
    assert_eq!(staged.info.start_command.as_deref(), Some("./cf-server"));
}

async fn stage_hostile_classic(
    base: &Path,
    mode: &str,
    extra_env: &[(&str, String)],
) -> (Result<dea::staging::Staged, StagingError>, String) {
    let stager = stager(test_config(base), vec![classic_buildpack("hostile")]);
    let app = base.join(format!("app-{mode}"));
    write_app(&app, &[("hostile.txt", "")]);
    let mut req = request(&app, &base.join(format!("{mode}.tgz")));
    req.env = vec![("MODE".into(), mode.into())];
    req.env
        .extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    stage(&stager, req).await
}

#[tokio::test]
async fn writes_outside_and_unmounted_host_files_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let target = base.path().join("escaped-by-classic");
    let (result, log) = stage_hostile_classic(
        base.path(),
        "write-outside",
        &[("TARGET", target.display().to_string())],
    )
    .await;
    let error = result.expect_err("writes outside fail");
    assert_eq!(error.cf_type().as_str(), "BuildpackCompileFailed");
    assert!(log.contains("all writes outside were refused"), "{log}");
    assert!(!log.contains("ESCAPED"), "{log}");
    assert!(!target.exists());
    assert!(!Path::new("/etc/dea-escape").exists());

    let secret = base.path().join("host-secret.txt");
    std::fs::write(&secret, "top secret").expect("secret");
    let (result, log) = stage_hostile_classic(
        base.path(),
        "read-host",
        &[("TARGET", secret.display().to_string())],
    )
    .await;
    result.expect_err("host file not readable");
    assert!(!log.contains("top secret"), "{log}");
    assert!(log.contains("host file not visible"), "{log}");
}

#[tokio::test]
async fn no_network_from_inside() {
    let base = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let (result, log) =
        stage_hostile_classic(base.path(), "network", &[("PORT", port.to_string())]).await;
    result.expect_err("no connection possible");
    assert!(log.contains("no network"), "{log}");
    assert!(listener.accept().is_err(), "a connection reached the host");
}

#[tokio::test]
async fn fork_bomb_memory_and_timeout_are_contained() {
    let base = tempfile::tempdir().expect("tempdir");
    // A fork bomb runs into the pids limit while another staging goes on beside it.
    let good_base = base.path().join("beside");
    let good = dea_tests::stager(test_config(&good_base), vec![classic_buildpack("hello")]);
    let beside_app = base.path().join("beside-app");
    write_app(&beside_app, &[("hello.txt", "")]);
    let ((bomb, bomb_log), (beside, beside_log)) = tokio::join!(
        stage_hostile_classic(base.path(), "fork-bomb", &[]),
        stage(&good, request(&beside_app, &base.path().join("beside.tgz")))
    );
    let error = bomb.expect_err("fork bomb fails");
    assert_eq!(error.cf_type().as_str(), "BuildpackCompileFailed");
    assert!(
        bomb_log.contains("Resource temporarily unavailable"),
        "{bomb_log}"
    );
    beside.unwrap_or_else(|e| panic!("staging beside a fork bomb failed: {e}\n{beside_log}"));

    let (result, _) = stage_hostile_classic(base.path(), "memory", &[]).await;
    let error = result.expect_err("memory hog fails");
    let StagingError::CompileFailed { source, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(
        matches!(source, PhaseError::MemoryLimit { limit_mb: 256, .. }),
        "{source:?}"
    );

    let mut config = test_config(base.path());
    config.classic.compile_timeout_secs = 2;
    let stager = stager(config, vec![classic_buildpack("hostile")]);
    let app = base.path().join("app-timeout");
    write_app(&app, &[("hostile.txt", "")]);
    let mut req = request(&app, &base.path().join("t.tgz"));
    req.env = vec![("MODE".into(), "timeout".into())];
    let started = std::time::Instant::now();
    let (result, _) = stage(&stager, req).await;
    let error = result.expect_err("timeout fails");
    let StagingError::CompileFailed { source, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(matches!(source, PhaseError::Timeout { .. }), "{source:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));

    // And the host still stages.
    let good = dea_tests::stager(test_config(base.path()), vec![classic_buildpack("hello")]);
    let ok_app = base.path().join("ok");
    write_app(&ok_app, &[("hello.txt", "")]);
    let (result, log) = stage(&good, request(&ok_app, &base.path().join("ok.tgz"))).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

#[tokio::test]
async fn classic_buildpack_archives_are_unpacked_through_a_top_folder() {
    let base = tempfile::tempdir().expect("tempdir");
    let source = repo_root().join("tests/classic/hello");
    let read = |name: &str| std::fs::read_to_string(source.join(name)).expect("script");
    let archive = base.path().join("hello-archive.tgz");
    std::fs::write(
        &archive,
        make_tgz(&[
            ("hello-buildpack-main/bin/detect", &read("bin/detect")),
            ("hello-buildpack-main/bin/compile", &read("bin/compile")),
            ("hello-buildpack-main/bin/release", &read("bin/release")),
        ]),
    )
    .expect("archive");
    let bp = dea::buildpack::Buildpack::load_archive(&archive, &base.path().join("unpacked"))
        .expect("archive loads");
    assert_eq!(bp.id, "hello-archive");
    assert_eq!(bp.kind_name(), "classic");
    let stager = stager(test_config(base.path()), vec![bp]);
    let app = base.path().join("app");
    write_app(&app, &[("hello.txt", "")]);
    let (result, log) = stage(&stager, request(&app, &base.path().join("a.tgz"))).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

/// A buildpack's own files (admin buildpacks arrive in staging requests) are a tenant's: the
/// agent reads `VERSION`, `buildpack.toml` and the component beneath the buildpack, never
/// through a link out of it, never from a FIFO, and never a component named outside it.
#[test]
fn buildpack_files_are_read_beneath_the_buildpack() {
    use dea::buildpack::Buildpack;
    let base = tempfile::tempdir().expect("tempdir");
    let hello = repo_root().join("tests/classic/hello");
    let classic = |name: &str| {
        let dir = base.path().join(name);
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::copy(hello.join("bin/detect"), dir.join("bin/detect")).expect("detect");
        dir
    };
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let linked = classic("version-link");
    std::os::unix::fs::symlink("/etc/hostname", linked.join("VERSION")).expect("link");
    let bp = Buildpack::load(&linked).expect("loads");
    assert_eq!(
        bp.version, "unknown",
        "the host's file was read: {hostname}"
    );
    let fifo = classic("version-fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(fifo.join("VERSION"))
            .status()
            .expect("mkfifo")
            .success()
    );
    let bp = Buildpack::load(&fifo).expect("loads without blocking on the FIFO");
    assert_eq!(bp.version, "unknown");

    let wasm = |name: &str, component: &str| {
        let dir = base.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("buildpack.toml"),
            format!(
                "[buildpack]\nid = \"{name}\"\nname = \"x\"\nversion = \"1\"\ncomponent = \"{component}\"\n"
            ),
        )
        .expect("manifest");
        dir
    };
    let error = Buildpack::load(&wasm("escape", "../../../../etc/passwd")).expect_err("refused");
    assert!(
        error
            .to_string()
            .contains("must be a path inside the buildpack"),
        "{error}"
    );
    let linked = wasm("component-link", "buildpack.wasm");
    std::os::unix::fs::symlink("/etc/passwd", linked.join("buildpack.wasm")).expect("link");
    let error = Buildpack::load(&linked).expect_err("refused");
    assert!(error.to_string().contains("has no component"), "{error}");
    let manifest_link = base.path().join("manifest-link");
    std::fs::create_dir_all(&manifest_link).expect("mkdir");
    std::os::unix::fs::symlink("/etc/passwd", manifest_link.join("buildpack.toml")).expect("link");
    let error = Buildpack::load(&manifest_link).expect_err("refused");
    assert!(
        error.to_string().contains("leads out of its directory"),
        "{error}"
    );
}

#[tokio::test]
async fn cloud_foundry_mode_can_be_forced_per_buildpack() {
    let base = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(base.path());
    config.classic.cloud_foundry = vec!["hello".into()];
    let stager = stager(config, vec![classic_buildpack("hello")]);
    let app = base.path().join("app");
    write_app(&app, &[("hello.txt", "hi")]);
    let out = base.path().join("cf-hello.tgz");
    let mut req = request(&app, &out);
    req.env = vec![("GREETING".into(), "hey".into())];
    let (result, log) = stage(&stager, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    // CF's compile: two arguments, the app's variables exported.
    let compile = report(&out, "compile-report.txt");
    assert!(compile.contains("args=2"), "{compile}");
    assert!(compile.contains("greeting_exported=hey"), "{compile}");
}

/// `(name, outcome)` for every `"{kind} NAME: OUTCOME"` line of a log.
fn probe_outcomes<'a>(log: &'a str, kind: &str) -> Vec<(&'a str, &'a str)> {
    log.lines()
        .filter_map(|line| line.strip_prefix(kind)?.strip_prefix(' '))
        .filter_map(|rest| rest.split_once(": "))
        .collect()
}

#[tokio::test]
async fn seccomp_refuses_namespaces_mounts_and_kernel_interfaces() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![classic_buildpack("kernel-surface")],
    );
    let app = base.path().join("app");
    write_app(&app, &[("kernel-surface.txt", "")]);
    let out = base.path().join("probed.tgz");
    let (result, live_log) = stage(&stager, request(&app, &out)).await;
    result.unwrap_or_else(|e| panic!("{e}\n{live_log}"));
    // The log the agent packed into the droplet, as a user would read it.
    let log = droplet_file(&out, "./logs/staging_task.log").expect("staging log in droplet");

    // The filter is installed (mode 2), not merely missing privileges.
    assert!(log.contains("status Seccomp: 2"), "{log}");

    // What each attempt must have been answered with. Without the filter, the unshare -Ur,
    // setarch -R, keyctl, clone and int 0x80 attempts succeed for this user and the other
    // raw calls fail with EINVAL or EFAULT. `unshare -m` and util-linux `mount` get EPERM
    // from the kernel either way (no CAP_SYS_ADMIN; mount words it "must be superuser"):
    // they show what a tenant sees, not which layer refused.
    let mut expected = vec![
        ("unshare -Ur true", "Operation not permitted"),
        ("unshare -m true", "Operation not permitted"),
        ("mount -t tmpfs", "must be superuser"),
        ("setarch -R", "Operation not permitted"),
        ("keyctl", "Operation not permitted"),
        ("bpf", "Operation not permitted"),
        ("mount(2)", "Operation not permitted"),
        ("clone3", "Function not implemented"),
        ("io_uring_setup", "Operation not permitted"),
        ("clone(CLONE_NEWUSER)", "Operation not permitted"),
    ];
    if cfg!(target_arch = "x86_64") {
        expected.push(("unshare via int 0x80", "Operation not permitted"));
    }
    let attempts = probe_outcomes(&log, "attempt");
    let names: Vec<&str> = attempts.iter().map(|(name, _)| *name).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected_names, "every attempt ran once:\n{log}");
    for ((name, outcome), (_, error)) in attempts.iter().zip(&expected) {
        let message = outcome.strip_prefix("refused: ").unwrap_or_else(|| {
            panic!("{name} was not refused: {outcome}\n{log}");
        });
        assert!(message.contains(error), "{name}: {message}\n{log}");
    }
    // The live stream showed the same.
    assert!(
        live_log.contains("attempt unshare -Ur true: refused: "),
        "{live_log}"
    );

    // Ordinary work in the same script was untouched, threads and processes included (glibc
    // starts them with clone3 and falls back to clone on ENOSYS).
    let normal = probe_outcomes(&log, "normal");
    assert_eq!(
        normal,
        vec![
            ("tar", "ok 2"),
            ("pipe", "ok HELLO"),
            ("python threads and subprocess", "ok thread child"),
            (
                "setarch linux32",
                if cfg!(target_arch = "aarch64") {
                    "ok armv8l"
                } else {
                    "ok i686"
                }
            ),
        ],
        "{log}"
    );
    assert_eq!(report(&out, "probed.txt").trim(), "probe");
}

#[tokio::test]
async fn a_classic_compile_that_rewrites_the_app_is_packed_as_it_left_it() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        test_config(base.path()),
        vec![classic_buildpack("rewriter")],
    );
    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("rewrite-me", ""),
            ("modified.txt", "original\n"),
            ("deleted.txt", "to be deleted"),
            ("replaced.txt", "to be replaced"),
            ("keep/untouched.js", &"let kept = true;\n".repeat(100_000)),
        ],
    );
    let before = tree_listing(&app);
    let out = base.path().join("droplet.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("Rewrote the app"), "{log}");

    let unpacked = base.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("unpacked");
    untar_droplet(&out, &unpacked);
    let packed = tree_listing(&unpacked.join("app"));
    assert_eq!(
        packed.get(Path::new("modified.txt")),
        Some(&("file", 0o750, b"original\nchanged by compile\n".to_vec()))
    );
    assert!(!packed.contains_key(Path::new("deleted.txt")), "{packed:?}");
    assert_eq!(
        packed.get(Path::new("replaced.txt")),
        Some(&("link", 0, b"modified.txt".to_vec()))
    );
    assert_eq!(
        packed.get(Path::new("added/link")),
        Some(&("link", 0, b"../modified.txt".to_vec()))
    );
    assert_eq!(
        packed
            .get(Path::new("added/file.txt"))
            .map(|(_, _, c)| c.as_slice()),
        Some(&b"added by compile"[..])
    );
    assert_eq!(
        packed.get(Path::new("keep/untouched.js")),
        before.get(Path::new("keep/untouched.js"))
    );
    // The source is untouched.
    assert_eq!(tree_listing(&app), before);
}

/// A build script's stdout and stderr reach the staging log (which ships in the droplet) in
/// the order it wrote them: read from two pipes, lines written alternately to both came out
/// grouped in whatever order the two readers ran, and the droplet differed between runs.
#[tokio::test]
async fn a_compile_s_stdout_and_stderr_keep_their_order_in_the_log() {
    let base = tempfile::tempdir().expect("tempdir");
    let bps = tempfile::tempdir().expect("tempdir");
    let compile =
        "i=0; while [ $i -lt 300 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done";
    let stager = stager(
        test_config(base.path()),
        vec![super::detect::classic_scripts(
            bps.path(),
            "both-streams",
            "echo both",
            compile,
        )],
    );
    let app = base.path().join("app");
    write_app(&app, &[("index.html", "hi")]);
    let (staged, log) = stage(&stager, request(&app, &base.path().join("d.tgz"))).await;
    staged.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let written: Vec<String> = (0..300)
        .flat_map(|i| [format!("out {i}"), format!("err {i}")])
        .collect();
    let logged: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("out ") || line.starts_with("err "))
        .collect();
    assert_eq!(logged, written, "the log:\n{log}");
}
