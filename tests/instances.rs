//! Running droplets: stage the example with the wasm buildpacks, run it in a runc container,
//! reach it over HTTP on 127.0.0.1, crash it, stop it.

use dea::container::Runc;
use dea::instance::{InstanceManager, InstanceSettings, InstanceState, StartRequest};
use dea_tests::*;
use std::path::Path;
use std::time::Duration;

fn manager(base: &Path) -> std::sync::Arc<InstanceManager> {
    InstanceManager::new(
        InstanceSettings {
            base_dir: base.to_path_buf(),
            uid: 2000,
            gid: 2000,
            pids_limit: 256,
            stop_grace: Duration::from_secs(3),
            max_droplet_mb: 512,
        },
        Runc {
            binary: "runc".into(),
            state_dir: base.join("runc"),
            bundles_dir: base.join("bundles"),
            rootfs: None,
        },
    )
}

fn start_request(droplet: &Path) -> StartRequest {
    StartRequest {
        droplet: droplet.display().to_string(),
        sha1: None,
        application_id: "app-guid".into(),
        name: "example".into(),
        index: 0,
        env: vec![("GREETING".into(), "hi".into())],
        host_port: 0,
        memory_mb: 256,
        start_command: None,
        health_check: true,
        health_check_timeout: Duration::from_secs(20),
    }
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the published port");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

async fn staged_example(base: &Path) -> std::path::PathBuf {
    let stager = stager(test_config(&base.join("staging")), default_buildpacks());
    let out = base.join("example.tgz");
    let (result, log) = stage(
        &stager,
        request(&repo_root().join("examples/static-site"), &out),
    )
    .await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_run_get_crash_and_stop() {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = staged_example(base.path()).await;
    let manager = manager(&base.path().join("dea"));

    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    assert!(info.state_timestamps.contains_key("BORN"));
    assert!(info.state_timestamps.contains_key("STARTING"));
    let response = http_get(info.host_port, "/").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("Hello from a dea droplet"), "{response}");
    // The app's output goes to files under the instance's logs/.
    let mut stderr = String::new();
    for _ in 0..50 {
        stderr = std::fs::read_to_string(info.dir.join("logs/stderr.log")).unwrap_or_default();
        if stderr.contains("GET / HTTP") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stderr.contains("GET / HTTP"), "access log: {stderr}");

    // Killing the app's process: CRASHED with its exit status, logs kept.
    let pid = manager
        .pid(&info.instance_id)
        .await
        .expect("pid while running");
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
    let crashed = manager
        .wait_until_finished(&info.instance_id, Duration::from_secs(10))
        .await
        .expect("known");
    assert_eq!(crashed.state, InstanceState::Crashed, "{crashed:?}");
    assert_eq!(crashed.exit_status, Some(137));
    assert!(crashed.exit_description.is_some());
    assert!(
        base.path()
            .join("dea/crashes")
            .join(&info.instance_id)
            .join("logs/stderr.log")
            .is_file()
    );

    // A second instance, stopped: STOPPED and the container gone.
    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let stopped = manager.stop(&info.instance_id).await.expect("stop");
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(stopped.state_timestamps.contains_key("STOPPING"));
    assert!(
        manager.pid(&info.instance_id).await.is_none(),
        "container still there"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", info.host_port))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_command_that_never_listens_fails_the_health_check() {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = staged_example(base.path()).await;
    let manager = manager(&base.path().join("dea"));
    let mut request = start_request(&droplet);
    request.start_command = Some("sleep 600".into());
    request.health_check_timeout = Duration::from_secs(2);
    let info = manager.start(request).await.expect("start");
    let info = manager
        .wait_until_finished(&info.instance_id, Duration::from_secs(10))
        .await
        .expect("known");
    assert_eq!(info.state, InstanceState::Crashed, "{info:?}");
    assert!(
        info.exit_description
            .as_deref()
            .is_some_and(|d| d.contains("failed to start accepting connections")),
        "{info:?}"
    );
}
