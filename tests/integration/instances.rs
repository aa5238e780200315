//! Running droplets: stage the example with the wasm buildpacks, run it in a runc container,
//! reach it over HTTP on 127.0.0.1, crash it, stop it.

use dea::container::Runc;
use dea::instance::{InstanceManager, InstanceSettings, InstanceState, StartRequest};
use dea_tests::controller::ContainerCleanup as Cleanup;
use dea_tests::*;
use std::path::Path;
use std::time::Duration;

pub(crate) fn settings(base: &Path) -> InstanceSettings {
    let mut settings = InstanceSettings::from_config(&test_config(base));
    settings.pids_limit = 256;
    settings.stop_grace = Duration::from_secs(3);
    settings.max_droplet_mb = 512;
    settings.memory_capacity_mb = 1024;
    settings.disk_capacity_mb = 8192;
    settings.disk_check_interval = Duration::from_millis(200);
    settings.health_check_interval = Duration::from_millis(500);
    settings.max_files = 20_000;
    settings.max_dir_depth = 64;
    settings
}

pub(crate) fn runc(base: &Path) -> Runc {
    Runc {
        binary: "runc".into(),
        state_dir: base.join("runc"),
        bundles_dir: base.join("bundles"),
        rootfs: None,
    }
}

pub(crate) fn manager(base: &Path) -> std::sync::Arc<InstanceManager> {
    InstanceManager::new(settings(base), runc(base)).expect("instance manager")
}

pub(crate) fn start_request(droplet: &Path) -> StartRequest {
    StartRequest {
        droplet: droplet.display().to_string(),
        sha1: None,
        application_id: "app-guid".into(),
        name: "example".into(),
        index: 0,
        env: vec![("GREETING".into(), "hi".into())],
        host_port: 0,
        memory_mb: 256,
        disk_mb: 1024,
        start_command: None,
        health_check: true,
        health_check_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

pub(crate) async fn http_get(port: u16, path: &str) -> String {
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

pub(crate) async fn staged_example(base: &Path) -> std::path::PathBuf {
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

/// What most tests here start from: a state directory (cleaned up after), the example
/// staged into a droplet, and an instance manager.
pub(crate) struct Fixture {
    pub base: tempfile::TempDir,
    pub _cleanup: Cleanup,
    pub droplet: std::path::PathBuf,
    pub manager: std::sync::Arc<InstanceManager>,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let base = tempfile::tempdir().expect("tempdir");
        let cleanup = Cleanup(base.path().join("dea"));
        let droplet = staged_example(base.path()).await;
        let manager = manager(&base.path().join("dea"));
        Fixture {
            base,
            _cleanup: cleanup,
            droplet,
            manager,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_run_get_crash_and_stop() {
    let Fixture {
        base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;

    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    for step in ["droplet", "extract", "container", "health_check"] {
        assert!(info.start_timings_ms.contains_key(step), "{info:?}");
    }
    assert!(info.state_timestamps.contains_key("BORN"));
    assert!(info.state_timestamps.contains_key("STARTING"));
    let response = http_get(info.host_port, "/").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("Hello from a dea droplet"), "{response}");
    // The app's output goes to files under the instance's logs/.
    let mut stderr = String::new();
    for _ in 0..50 {
        stderr = std::fs::read_to_string(info.dir.join("home/logs/stderr.log")).unwrap_or_default();
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
    assert_released(&crashed);

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
    assert_released(&stopped);
}

/// A finished instance holds nothing on the host any more: no home (only the crash logs
/// under `crashes/`), no network namespace, no interface.
pub(crate) fn assert_released(info: &dea::instance::InstanceInfo) {
    assert!(!info.dir.exists(), "{} left behind", info.dir.display());
    assert!(
        !Path::new("/var/run/netns").join(&info.netns).exists(),
        "namespace {} left",
        info.netns
    );
    let network = info.network.as_ref().expect("it had a network");
    assert!(
        !Path::new("/sys/class/net").join(&network.host_if).exists(),
        "interface {} left",
        network.host_if
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_command_that_never_listens_fails_the_health_check() {
    let Fixture {
        base: _base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_reattaches_without_restarting_the_app() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = Cleanup(base.path().join("dea"));
    let droplet = staged_example(base.path()).await;
    let state = base.path().join("dea");
    let first = manager(&state);
    let info = first.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let pid = first.pid(&info.instance_id).await.expect("pid");
    let snapshot = std::fs::read_to_string(state.join("db/instances.json")).expect("snapshot");
    assert!(
        snapshot.contains(&info.instance_id) && snapshot.contains("RUNNING"),
        "{snapshot}"
    );

    // The agent goes away without stopping anything; a new one recovers from the snapshot.
    first.abandon().await;
    drop(first);
    let second = InstanceManager::recover(settings(&state), runc(&state))
        .await
        .expect("recovered");
    let resumed = second.get(&info.instance_id).expect("recovered");
    assert_eq!(resumed.state, InstanceState::Running, "{resumed:?}");
    assert!(resumed.state_timestamps.contains_key("RESUMING"));
    assert_eq!(
        second.pid(&info.instance_id).await,
        Some(pid),
        "the app was restarted"
    );
    let response = http_get(resumed.host_port, "/").await;
    assert!(response.contains("Hello from a dea droplet"), "{response}");

    // An instance whose container died while no agent watched is marked CRASHED.
    second.abandon().await;
    drop(second);
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
    for _ in 0..50 {
        if runc(&state).pid_of(&resumed.container_id).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = InstanceManager::recover(settings(&state), runc(&state))
        .await
        .expect("recovered");
    let gone = third.get(&info.instance_id).expect("still in the registry");
    assert_eq!(gone.state, InstanceState::Crashed, "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_that_do_not_fit_are_refused_with_cfs_message() {
    let Fixture {
        base: _base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let mut request = start_request(&droplet);
    request.memory_mb = 2048; // capacity is 1024
    let info = manager.start(request).await.expect("registered");
    assert_eq!(info.state, InstanceState::Crashed);
    assert_eq!(
        info.exit_description.as_deref(),
        Some("Not enough memory resource available.")
    );
    let mut request = start_request(&droplet);
    request.disk_mb = 10_000; // capacity is 8192
    let info = manager.start(request).await.expect("registered");
    assert_eq!(
        info.exit_description.as_deref(),
        Some("Not enough disk resource available.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_isolated_and_memory_hogs_are_killed() {
    let Fixture {
        base: _base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let a = manager
        .start(start_request(&droplet))
        .await
        .expect("start a");
    assert_eq!(a.state, InstanceState::Running, "{a:?}");
    std::fs::write(a.dir.join("home/app/secret-of-a.txt"), "secret").expect("secret");

    // B looks for A's files and processes, writes what it found into its own app dir, then
    // serves as usual.
    let a_home = a.dir.join("home").display().to_string();
    let mut request = start_request(&droplet);
    request.start_command = Some(format!(
        "(ls /proc | grep -c '^[0-9]'; cat {a_home}/app/secret-of-a.txt 2>&1; \
          ls /home/vcap/app; cat /proc/1/cmdline | tr '\\0' ' ') > report.txt; \
         exec python3 -m http.server $PORT --bind 0.0.0.0"
    ));
    let b = manager.start(request).await.expect("start b");
    assert_eq!(b.state, InstanceState::Running, "{b:?}");
    let report = std::fs::read_to_string(b.dir.join("home/app/report.txt")).expect("report");
    assert!(
        report.contains("No such file"),
        "A's files were visible: {report}"
    );
    let processes: usize = report
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(99);
    assert!(processes <= 6, "B sees {processes} processes: {report}");
    // PID 1 in B's namespace is B's own start script, not anything of A's.
    assert!(report.contains("dea-start"), "{report}");

    // An app that allocates past its memory limit is killed and reported.
    let mut request = start_request(&droplet);
    request.memory_mb = 64;
    request.start_command =
        Some("python3 -c 'import time; x = bytearray(512 << 20); time.sleep(60)'".into());
    request.health_check = false;
    let hog = manager.start(request).await.expect("start hog");
    let hog = manager
        .wait_until_finished(&hog.instance_id, Duration::from_secs(20))
        .await
        .expect("known");
    assert_eq!(hog.state, InstanceState::Crashed, "{hog:?}");
    assert_eq!(hog.exit_status, Some(137), "{hog:?}");
    assert!(
        hog.exit_description
            .as_deref()
            .is_some_and(|d| d.contains("out of memory")),
        "{hog:?}"
    );
    manager.stop(&a.instance_id).await.expect("stop a");
    manager.stop(&b.instance_id).await.expect("stop b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droplets_come_over_http_verified_and_stored_once() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = Cleanup(base.path().join("dea"));
    let droplet = staged_example(base.path()).await;
    let bytes = std::fs::read(&droplet).expect("droplet");
    let sha1 = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(&bytes))
    };
    let server = FileServer::start(vec![("/droplets/app.tgz", bytes)]).await;
    let manager = manager(&base.path().join("dea"));
    let mut request = start_request(&droplet);
    request.droplet = server.url("/droplets/app.tgz");
    request.sha1 = Some(sha1.clone());
    // Two concurrent starts of one droplet share one download.
    let (a, b) = tokio::join!(
        manager.start(request.clone()),
        manager.start(request.clone())
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(a.state, InstanceState::Running, "{a:?}");
    assert_eq!(b.state, InstanceState::Running, "{b:?}");
    assert_eq!(a.droplet_sha1, sha1);
    assert_eq!(server.hits("/droplets/app.tgz"), 1);
    assert!(
        base.path()
            .join("dea/droplets")
            .join(&sha1)
            .join("droplet.tgz")
            .is_file()
    );

    let mut wrong = request.clone();
    wrong.sha1 = Some("0".repeat(40));
    let bad = manager.start(wrong).await.expect("registered");
    assert_eq!(bad.state, InstanceState::Crashed);
    assert!(
        bad.exit_description
            .as_deref()
            .is_some_and(|d| d.contains("SHA1 mismatch")),
        "{bad:?}"
    );
    manager.stop(&a.instance_id).await.expect("stop");
    manager.stop(&b.instance_id).await.expect("stop");
}

/// The disk limit counts what an app holds, however it holds it: a named file, a file it
/// deleted but keeps open (summing paths misses it), or more files than the file limit. A
/// 100 GB sparse file holds nothing and is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_fills_its_disk_is_stopped() {
    let Fixture {
        base: _base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let cases = [
        (
            "head -c 40000000 /dev/zero > big.bin; sleep 60",
            "disk limit of 16 MiB",
        ),
        (
            "exec 3> hidden.bin; head -c 40000000 /dev/zero >&3; rm hidden.bin; sleep 60",
            "disk limit of 16 MiB",
        ),
        (
            "mkdir many && cd many && i=0; while [ $i -lt 25000 ]; do : > f$i; i=$((i+1)); done; sleep 60",
            "limit of 20000 files and directories",
        ),
    ];
    for (command, reason) in cases {
        let mut request = start_request(&droplet);
        request.disk_mb = 16;
        request.health_check = false;
        request.start_command = Some(command.into());
        let info = manager.start(request).await.expect("start");
        let info = manager
            .wait_until_finished(&info.instance_id, Duration::from_secs(30))
            .await
            .expect("known");
        assert_eq!(info.state, InstanceState::Crashed, "{command}: {info:?}");
        assert!(
            info.exit_description
                .as_deref()
                .is_some_and(|d| d.contains(reason)),
            "{command}: {info:?}"
        );
    }

    let mut request = start_request(&droplet);
    request.disk_mb = 16;
    request.health_check = false;
    request.start_command = Some("truncate -s 100G sparse.bin && sleep 60".into());
    let info = manager.start(request).await.expect("start");
    // Several disk checks (every 200 ms) pass while it keeps running.
    let after = manager
        .wait_until_finished(&info.instance_id, Duration::from_secs(2))
        .await
        .expect("known");
    assert_eq!(after.state, InstanceState::Running, "{after:?}");
    let home = after.dir.join("home/app/sparse.bin");
    assert_eq!(
        std::fs::metadata(&home).expect("sparse file").len(),
        100 << 30
    );
    manager.stop(&info.instance_id).await.expect("stop");
}

/// A droplet is a tenant's archive. One whose `./app` (bind-mounted read-write at /app) or
/// `./logs` (where the agent writes the app's output) is a link — to another directory of
/// the droplet, or through a chain of links out of the instance — is refused before any
/// container starts, with a reason, and nothing outside the instance is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droplets_whose_app_or_logs_are_links_never_run() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = Cleanup(base.path().join("dea"));
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let manager = manager(&base.path().join("dea"));
    type Entry = (&'static str, Option<&'static str>);
    let cases: [(&str, Vec<Entry>, &str); 3] = [
        (
            "app-link",
            vec![("./tmp/", None), ("./app", Some("tmp"))],
            "./app must be a directory",
        ),
        (
            "logs-link",
            vec![("./app/", None), ("./logs", Some("app"))],
            "./logs must be a directory",
        ),
        (
            "chain",
            vec![
                ("./x/", None),
                ("./x/y/", None),
                ("./x/y/up", Some("../..")),
                ("./app", Some("x/y/up/../../../../../outside")),
            ],
            "outside the app directory",
        ),
    ];
    for (name, entries, reason) in cases {
        let droplet = base.path().join(format!("{name}.tgz"));
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let yaml = "start_command: sleep 60\n";
        for (path, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o755);
            header.set_size(0);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    builder
                        .append_link(&mut header, path, target)
                        .expect("link");
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    builder
                        .append_data(&mut header, path, std::io::empty())
                        .expect("dir");
                }
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(yaml.len() as u64);
        builder
            .append_data(&mut header, "./staging_info.yml", yaml.as_bytes())
            .expect("yaml");
        let bytes = builder.into_inner().expect("tar").finish().expect("gzip");
        std::fs::write(&droplet, bytes).expect("droplet");
        let info = manager
            .start(start_request(&droplet))
            .await
            .expect("registered");
        assert_eq!(info.state, InstanceState::Crashed, "{name}: {info:?}");
        assert!(
            info.exit_description
                .as_deref()
                .is_some_and(|d| d.contains(reason)),
            "{name}: {info:?}"
        );
        assert_eq!(
            std::fs::read_dir(&outside).expect("outside").count(),
            0,
            "{name}: something was written outside"
        );
    }
}

/// After RUNNING the agent keeps checking an app with routes: one that stops accepting
/// connections (its process still alive), or whose network goes away, is CRASHED with the
/// reason, not left RUNNING and registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_that_stops_answering_is_crashed() {
    let Fixture {
        base: _base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;

    let mut request = start_request(&droplet);
    request.start_command = Some(
        "python3 -m http.server \"$PORT\" & server=$!; sleep 2; kill $server; sleep 600".into(),
    );
    let info = manager.start(request).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let info = manager
        .wait_until_finished(&info.instance_id, Duration::from_secs(20))
        .await
        .expect("known");
    assert_eq!(info.state, InstanceState::Crashed, "{info:?}");
    assert!(
        info.exit_description
            .as_deref()
            .is_some_and(|d| d.contains("stopped accepting connections")),
        "{info:?}"
    );

    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let host_if = info.network.as_ref().expect("network").host_if.clone();
    let deleted = std::process::Command::new("ip")
        .args(["link", "del", &host_if])
        .status()
        .expect("ip");
    assert!(deleted.success());
    let info = manager
        .wait_until_finished(&info.instance_id, Duration::from_secs(20))
        .await
        .expect("known");
    assert_eq!(info.state, InstanceState::Crashed, "{info:?}");
    assert!(
        info.exit_description
            .as_deref()
            .is_some_and(|d| d.contains("network interface") && d.contains("is gone")),
        "{info:?}"
    );
}

/// A test host in a network namespace of our own, serving on two ports, for egress.
struct Upstream {
    netns: String,
    host_if: String,
    server: std::process::Child,
}

impl Upstream {
    const ADDRESS: &str = "10.253.7.2";

    fn start() -> Upstream {
        let netns = format!("dea-test-up-{}", std::process::id());
        let host_if = format!("dtu{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", "10.253.7.1/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &netns, "addr", "add", "10.253.7.2/30", "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c"])
            .arg(
                "import http.server, threading\n\
                 for port in (9000, 9001):\n\
                 \x20   s = http.server.HTTPServer(('0.0.0.0', port), http.server.SimpleHTTPRequestHandler)\n\
                 \x20   threading.Thread(target=s.serve_forever).start()\n",
            )
            .current_dir("/tmp")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("upstream server");
        // Serving before any instance probes it (the host reaches it directly).
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect((Upstream::ADDRESS, 9001)).is_ok()
        });
        assert!(up, "the upstream test server did not start");
        Upstream {
            netns,
            host_if,
            server,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// By default an instance reaches nothing: not the host it runs on, not another host. An
/// egress rule (a security group) opens exactly its destination and ports, enforced by the
/// kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_only_what_egress_rules_allow() {
    let Fixture {
        base: _base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let _upstream = Upstream::start();
    // A listener on every host address: an instance must not reach its host's services.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let host_port = host_service.local_addr().expect("addr").port();
    let probe = |rule: Option<dea::config::EgressRule>| {
        let mut request = start_request(&droplet);
        request.health_check = false;
        request.egress = rule.into_iter().collect();
        let script = format!(
            "me=$(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1); host=${{me%.*}}.$((${{me##*.}} - 1)); \\
             for target in {up}:9000 {up}:9001 $host:{host_port}; do \\
               if curl -s -m 2 -o /dev/null http://$target/; then echo \"$target open\"; else echo \"$target closed\"; fi; \
             done > probe.partial; mv probe.partial probe.txt; sleep 600",
            up = Upstream::ADDRESS
        );
        request.start_command = Some(script);
        request
    };
    let read_probe = |info: &dea::instance::InstanceInfo| {
        let path = info.dir.join("home/app/probe.txt");
        async move {
            for _ in 0..100 {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no probe result at {}", path.display());
        }
    };
    let closed = manager.start(probe(None)).await.expect("start");
    let allowed = manager
        .start(probe(Some(dea::config::EgressRule {
            protocol: dea::config::EgressProtocol::Tcp,
            destination: format!("{}/32", Upstream::ADDRESS),
            ports: Some("9000".into()),
        })))
        .await
        .expect("start");
    let none = read_probe(&closed).await;
    let some = read_probe(&allowed).await;
    let up = Upstream::ADDRESS;
    assert!(none.contains(&format!("{up}:9000 closed")), "{none}");
    assert!(none.contains(&format!("{up}:9001 closed")), "{none}");
    assert!(some.contains(&format!("{up}:9000 open")), "{some}");
    assert!(some.contains(&format!("{up}:9001 closed")), "{some}");
    for result in [&none, &some] {
        assert!(result.contains(&format!(":{host_port} closed")), "{result}");
        assert_eq!(result.lines().count(), 3, "{result}");
    }
    drop(host_service);
    for info in [closed, allowed] {
        manager.stop(&info.instance_id).await.expect("stop");
    }
}
