//! Real stacks: a root filesystem built from Debian's packages with `dea stack build`
//! (mmdebstrap), named in the config, and used by classic buildpack scripts and by the
//! instances of the apps staged on it — `STACK` set to its name — while the default stack
//! stays the host's own directories.

use dea::instance::{InstanceManager, InstanceSettings, InstanceState, StartRequest};
use dea::stack::BuildOptions;
use dea_tests::controller::ContainerCleanup;
use dea_tests::*;
use std::path::Path;
use std::time::Duration;

/// A classic buildpack that records which stack its compile ran on (the marker file
/// `dea stack build` writes, and `STACK`), and releases a web process that does the same
/// at run time.
fn stack_reporter(dir: &Path) -> dea::buildpack::Buildpack {
    let scripts = [
        ("bin/detect", "#!/bin/bash\necho StackReporter\n"),
        (
            "bin/compile",
            "#!/bin/bash\nset -e\n[ -f /etc/dea-stack ] || { echo 'not on a built stack: no /etc/dea-stack' >&2; exit 3; }\n\
             { cat /etc/dea-stack; echo \"STACK=$STACK\"; } > \"$1/compile-stack.txt\"\n",
        ),
        (
            "bin/release",
            "#!/bin/bash\nprintf -- '---\\ndefault_process_types:\\n  web: cat /etc/dea-stack > run-stack.txt; exec python3 -m http.server \"$PORT\"\\n'\n",
        ),
    ];
    for (name, text) in scripts {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dea::buildpack::Buildpack::load(dir).expect("classic buildpack loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_stack_serves_staging_and_running() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let options = BuildOptions {
        packages: ["bash", "coreutils", "python3"].map(String::from).to_vec(),
        ..BuildOptions::default()
    };
    let state = base.path().to_path_buf();
    let rootfs =
        tokio::task::spawn_blocking(move || dea::stack::build(&state, "test-stack", &options))
            .await
            .expect("build task")
            .expect("mmdebstrap builds the stack (apt-get install mmdebstrap)");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/dea-stack")).expect("marker"),
        "test-stack\n"
    );
    let built = dea::stack::built(base.path());
    assert_eq!(built.len(), 1);
    assert_eq!(built[0].0.name, "test-stack");

    let mut config = test_config(base.path());
    config.stacks = vec!["cflinuxfs4".into(), "test-stack".into()];
    let reporter = stack_reporter(&base.path().join("reporter"));
    let stager = stager(config.clone(), vec![reporter]);
    let app = base.path().join("app");
    write_app(&app, &[("index.html", "on a stack")]);

    // On the built stack: compile sees it, and STACK names it.
    let droplet = base.path().join("on-stack.tgz");
    let mut req = request(&app, &droplet);
    req.stack = Some("test-stack".into());
    let (result, log) = stage(&stager, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        droplet_file(&droplet, "./app/compile-stack.txt").as_deref(),
        Some("test-stack\nSTACK=test-stack\n")
    );

    // On the default (host) stack the same script finds no built stack.
    let (result, log) = stage(&stager, request(&app, &base.path().join("host.tgz"))).await;
    let error = result.expect_err("the host is no built stack");
    assert!(log.contains("not on a built stack"), "{error}\n{log}");

    // A stack that is not configured is a clear error.
    let mut req = request(&app, &base.path().join("none.tgz"));
    req.stack = Some("heroku-22".into());
    let (result, _) = stage(&stager, req).await;
    let error = result.expect_err("unknown stack");
    assert!(
        error.to_string().contains("Stack heroku-22 does not exist"),
        "{error}"
    );

    // The app runs on the stack it was staged for.
    let mut settings = InstanceSettings::from_config(&config);
    settings.memory_capacity_mb = 1024;
    let manager = InstanceManager::new(
        settings,
        dea::container::Runc {
            binary: "runc".into(),
            state_dir: base.path().join("runc"),
            bundles_dir: base.path().join("bundles"),
            rootfs: None,
        },
    )
    .expect("instance manager");
    let info = manager
        .start(StartRequest {
            droplet: droplet.display().to_string(),
            application_id: "stacked".into(),
            name: "stacked".into(),
            memory_mb: 128,
            disk_mb: 256,
            health_check: true,
            health_check_timeout: Duration::from_secs(30),
            stack: Some("test-stack".into()),
            ..Default::default()
        })
        .await
        .expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let body = reqwest::get(format!("http://127.0.0.1:{}/", info.host_port))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert!(body.contains("on a stack"), "{body}");
    let marker = std::fs::read_to_string(info.dir.join("home/app/run-stack.txt"))
        .expect("the start command ran on the stack");
    assert_eq!(marker, "test-stack\n");
    manager.stop(&info.instance_id).await.expect("stop");
}
