//! Buildpacks in other languages: the Python one (componentize-py) and the C one (clang +
//! wasi-libc + the preview 1 adapter), built by `scripts/build-plugins`, staging real apps
//! with downloads through the host's fetch from a real HTTP server on 127.0.0.1; the runtime
//! refusing a component built for another world; and the compiled-code cache for an 18 MB
//! guest. (The world check on these components is tested with it, in `dea-buildpack-tools`.)

use dea::buildpack::Buildpack;
use dea::buildpack::wasm::{CodeOrigin, LoadError, Phase, WasmRuntime};
use dea::config::{Config, MirrorRule};
use dea::staging::StagingError;
use dea_tests::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Compiled code shared by the tests in this file (keyed by digest and engine, so always
/// valid): an 18 MB Python component takes seconds to compile, milliseconds to load.
fn shared_cache() -> PathBuf {
    static WARM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests-wasm-cache");
    // Compile each guest once, before any test loads it, instead of once per test at once.
    let _warming = WARM.lock().unwrap_or_else(|p| p.into_inner());
    let base = tempfile::tempdir().expect("tempdir");
    let runtime = WasmRuntime::new(test_config(base.path()).wasm, dir.clone()).expect("runtime");
    for id in ["python", "shell"] {
        runtime
            .load(&component(&buildpack(id)))
            .expect("guest loads");
    }
    dir
}

fn config(base: &Path) -> Config {
    let mut config = test_config(base);
    config.wasm.cache_dir = Some(shared_cache());
    config
}

fn component(bp: &Buildpack) -> PathBuf {
    match &bp.kind {
        dea::buildpack::BuildpackKind::Wasm { component } => component.clone(),
        _ => panic!("{} is a wasm buildpack", bp.id),
    }
}

/// A copy of the Python buildpack whose manifest offers one runtime, `uri` with `sha256`:
/// the buildpack's code is untouched, only its data changes (as an operator would).
fn python_offering(dir: &Path, uri: &str, sha256: &str) -> Buildpack {
    let original = buildpack("python");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(component(&original), dir.join("buildpack.wasm")).expect("copy component");
    let manifest = std::fs::read_to_string(original.dir.join("buildpack.toml")).expect("manifest");
    let manifest = format!(
        "{manifest}\n[[dependencies]]\nname = \"python\"\nversion = \"3.12.4\"\n\
         uri = \"{uri}\"\nsha256 = \"{sha256}\"\nstrip_components = 1\n"
    );
    std::fs::write(dir.join("buildpack.toml"), manifest).expect("manifest");
    Buildpack::load(dir).expect("python buildpack loads")
}

/// The examples, with every real buildpack in the default order: each reaches its own.
#[tokio::test]
async fn the_python_and_shell_examples_detect_their_buildpacks_in_the_default_order() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = config(base.path());
    let mut all: Vec<Buildpack> = ["procfile", "shell", "python", "node", "staticfile"]
        .into_iter()
        .map(buildpack)
        .collect();
    all.sort_by_key(|bp| config.buildpack_order.iter().position(|id| *id == bp.id));
    let stager = stager(config, all);
    for (example, expected, command) in [
        ("python-app", "python", "python3 app.py"),
        ("shell-app", "shell", "./start.sh"),
    ] {
        let app = repo_root().join("examples").join(example);
        let out = base.path().join(format!("{example}.tgz"));
        let (result, log) = stage(&stager, request(&app, &out)).await;
        let staged = result.unwrap_or_else(|e| panic!("{example}: {e}\n{log}"));
        assert_eq!(staged.info.buildpack_key, expected, "{example}");
        assert_eq!(
            staged.info.start_command.as_deref(),
            Some(command),
            "{example}"
        );
    }
}

#[tokio::test]
async fn python_buildpack_stages_an_app_with_the_stacks_python() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(
        config(base.path()),
        vec![buildpack("staticfile"), buildpack("python")],
    );
    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("app.py", "print('hello')\n"),
            ("requirements.txt", "flask\n"),
        ],
    );
    let out = base.path().join("python.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "python");
    assert_eq!(staged.info.detected_buildpack, "python");
    assert_eq!(staged.info.start_command.as_deref(), Some("python3 app.py"));
    assert_eq!(
        staged
            .info
            .config_vars
            .get("PYTHONUNBUFFERED")
            .map(String::as_str),
        Some("1")
    );
    assert!(log.contains("-----> Using the stack's python3"), "{log}");
    // A host log call and the guest's own print() both reach the staging log.
    assert!(
        log.contains(" !     requirements.txt found but no vendor/"),
        "{log}"
    );
    assert!(log.contains("python app ready (app.py)"), "{log}");
}

#[tokio::test]
async fn python_buildpack_installs_a_pinned_runtime_through_the_hosts_fetch() {
    let base = tempfile::tempdir().expect("tempdir");
    let runtime = make_tgz(&[
        (
            "python-3.12.4/bin/python3",
            "#!/bin/sh\necho fake python \"$@\"\n",
        ),
        ("python-3.12.4/LICENSE", "PSF\n"),
    ]);
    let server =
        FileServer::start(vec![("/mirror/python/python-3.12.4.tgz", runtime.clone())]).await;
    let upstream = "https://buildpacks.cloudfoundry.org/dependencies/python/python-3.12.4.tgz";
    let python = python_offering(&base.path().join("bp"), upstream, &sha256_hex(&runtime));
    let mut config = config(base.path());
    config.fetch.mirrors = vec![node_mirror(&server)];
    let stager = stager(config, vec![python]);

    let app = base.path().join("app");
    write_app(
        &app,
        &[("runtime.txt", "python-3.12\n"), ("main.py", "print(1)\n")],
    );
    let out = base.path().join("pinned.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        staged.info.start_command.as_deref(),
        Some("python3 main.py")
    );
    assert!(log.contains("-----> Installing Python 3.12.4"), "{log}");
    // The host rewrote the upstream URL to the mirror and fetched it once.
    assert!(
        log.contains(&server.url("/mirror/python/python-3.12.4.tgz")),
        "{log}"
    );
    assert_eq!(server.hits("/mirror/python/python-3.12.4.tgz"), 1);
    let entries = droplet_entries(&out);
    assert!(
        entries.contains(&"./app/.python/bin/python3".to_string()),
        "{entries:?}"
    );
    assert_eq!(
        droplet_mode(&out, "./app/.python/bin/python3").map(|m| m & 0o111),
        Some(0o111),
        "the host unpacked it, so it stays executable"
    );
    let profile = droplet_file(&out, "./app/.profile.d/python.sh").expect("profile.d script");
    assert!(profile.contains("$HOME/.python/bin"), "{profile}");

    // A version the buildpack does not offer is the buildpack's own, clear failure.
    let other = base.path().join("other");
    write_app(&other, &[("runtime.txt", "python-2.7\n"), ("app.py", "")]);
    let (result, log) = stage(&stager, request(&other, &base.path().join("o.tgz"))).await;
    let error = result.expect_err("python 2.7 is not offered");
    assert_eq!(
        error.cf_type().as_str(),
        "BuildpackCompileFailed",
        "{error}\n{log}"
    );
    assert!(
        error
            .to_string()
            .contains("Python 2.7 is not offered by this buildpack (offered: 3.12.4)"),
        "{error}"
    );
}

/// A copy of the shell buildpack whose manifest lets apps fetch from `prefix` (what an
/// operator edits); its code is untouched.
fn shell_allowing(dir: &Path, prefix: &str) -> Buildpack {
    let original = buildpack("shell");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(component(&original), dir.join("buildpack.wasm")).expect("copy component");
    let manifest = std::fs::read_to_string(original.dir.join("buildpack.toml")).expect("manifest");
    let (head, _) = manifest.split_once("[fetch]").expect("a [fetch] table");
    std::fs::write(
        dir.join("buildpack.toml"),
        format!("{head}[fetch]\nallow = [\"{prefix}\"]\n"),
    )
    .expect("manifest");
    Buildpack::load(dir).expect("shell buildpack loads")
}

#[tokio::test]
async fn c_buildpack_stages_a_shell_app_and_fetches_its_pinned_files() {
    let base = tempfile::tempdir().expect("tempdir");
    let tool = b"#!/bin/sh\necho tool\n".to_vec();
    let server = FileServer::start(vec![("/files/tool-1.0", tool.clone())]).await;
    let mut config = config(base.path());
    config.fetch.mirrors = vec![MirrorRule {
        from: "https://files.example/".into(),
        to: server.url("/files/"),
    }];
    let shell = shell_allowing(&base.path().join("bp"), "https://files.example/");
    let stager = stager(config, vec![buildpack("staticfile"), shell]);

    let app = base.path().join("app");
    let fetch_list = format!(
        "# tools this app needs\nhttps://files.example/tool-1.0 {} bin/tool\n",
        sha256_hex(&tool)
    );
    write_app(
        &app,
        &[
            ("start.sh", "#!/bin/sh\nexec bin/tool\n"),
            ("fetch.txt", &fetch_list),
        ],
    );
    let out = base.path().join("shell.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "shell");
    assert_eq!(staged.info.start_command.as_deref(), Some("./start.sh"));
    assert!(log.contains("-----> Preparing shell app"), "{log}");
    let fetched = format!(
        "       bin/tool: {} bytes from {}",
        tool.len(),
        server.url("/files/tool-1.0")
    );
    assert!(log.contains(&fetched), "{log}");
    assert_eq!(
        droplet_file(&out, "./app/bin/tool").as_deref(),
        Some("#!/bin/sh\necho tool\n")
    );
    // make-executable went through the host.
    assert_eq!(
        droplet_mode(&out, "./app/start.sh").map(|m| m & 0o111),
        Some(0o111)
    );

    // A wrong checksum fails the staging and names the line.
    let bad = base.path().join("bad");
    let fetch_list = format!(
        "https://files.example/tool-1.0 {} bin/tool\n",
        "0".repeat(64)
    );
    write_app(
        &bad,
        &[("start.sh", "#!/bin/sh\n"), ("fetch.txt", &fetch_list)],
    );
    let (result, log) = stage(&stager, request(&bad, &base.path().join("bad.tgz"))).await;
    let error = result.expect_err("checksum mismatch");
    assert!(
        matches!(error, StagingError::CompileFailed { .. }),
        "{error}\n{log}"
    );
    let message = error.to_string();
    assert!(
        message.contains("fetch.txt line 1") && message.contains("(checksum mismatch)"),
        "{message}"
    );

    // A URL outside what the manifest allows is refused by the host, not downloaded.
    let outside = base.path().join("outside");
    let fetch_list = format!(
        "{} {} bin/tool\n",
        server.url("/files/tool-1.0"),
        sha256_hex(&tool)
    );
    write_app(
        &outside,
        &[("start.sh", "#!/bin/sh\n"), ("fetch.txt", &fetch_list)],
    );
    let hits = server.total_hits();
    let (result, log) = stage(&stager, request(&outside, &base.path().join("o.tgz"))).await;
    let error = result.expect_err("not allowed");
    assert!(error.to_string().contains("(denied)"), "{error}\n{log}");
    assert_eq!(server.total_hits(), hits, "nothing was downloaded");
}

#[tokio::test]
async fn the_runtime_refuses_a_component_built_for_another_world() {
    // It imports `wasi:http`: the host refuses to load it, naming the import it does not
    // provide.
    let wrong = component(&buildpack("wrong-world"));
    let base = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let error = runtime.load(&wrong).err().expect("refused");
    assert!(
        matches!(&error, LoadError::ForbiddenImport { import, .. } if import == "wasi:http/outgoing-handler@0.3.0"),
        "{error}"
    );
}

#[tokio::test]
async fn an_18_mb_python_guest_is_compiled_once_then_loaded_from_the_disk_cache() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = test_config(base.path());
    let python = buildpack("python");
    let path = component(&python);
    assert!(
        std::fs::metadata(&path).expect("component").len() > 10 << 20,
        "componentize-py output bundles CPython"
    );

    let first = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let started = Instant::now();
    let compiled = first.load(&path).expect("compiles");
    let compile_time = started.elapsed();
    assert_eq!(compiled.origin, CodeOrigin::Compiled);
    assert!(compiled_code_cached(&config, &compiled.digest));

    // A restarted host: a new engine and runtime, the same cache directory.
    drop(first);
    let second = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir()).expect("runtime");
    let started = Instant::now();
    let reloaded = second.load(&path).expect("loads");
    let load_time = started.elapsed();
    assert_eq!(reloaded.origin, CodeOrigin::DiskCache, "no second compile");
    assert_eq!(reloaded.digest, compiled.digest);
    eprintln!("python guest: compile {compile_time:?}, cached load {load_time:?}");

    // The cached code runs.
    let app = base.path().join("app");
    write_app(&app, &[("requirements.txt", "")]);
    let spec = phase_spec(&app, &python.dir, Vec::new());
    let output = second
        .run(&reloaded, Phase::Detect, spec)
        .await
        .expect("detect runs");
    assert!(
        matches!(output, dea::buildpack::wasm::PhaseOutput::Detect(Some(ref d)) if d.name == "python"),
        "{output:?}"
    );
}
