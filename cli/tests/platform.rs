//! The platform end to end, with real parts only: a three-node nats-server cluster with
//! JetStream on loopback, three `dea serve` agents (separate state), one `dea controller`,
//! one `dea router`, and `dea ctl` as an operator types it.
//!
//! One app is pushed (staged by one agent, its droplet fetched by the others from the
//! object store), scaled to three and reached through the router on all three agents; an
//! agent is killed and its instances come back elsewhere while GETs go on; the controller is
//! killed mid-push and the push still completes; a NATS node stops and everything goes on;
//! an app that exits at once is restarted with back-off and shows in `dea ctl events`; and
//! bad pushes are refused with clear errors.

mod common;

use common::{free_port, root};
#[path = "../../platform/tests/support/jetstream.rs"]
mod jetstream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process; SIGTERM then SIGKILL when dropped, so agents stop their instances.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn term(&mut self, limit: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} did not stop on SIGTERM", self.name);
        self.kill9();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.term(Duration::from_secs(20));
        }
    }
}

struct Platform {
    dir: tempfile::TempDir,
    config: PathBuf,
    router: u16,
    nats: String,
}

impl Platform {
    fn new(nats: &[String]) -> Platform {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = free_port();
        let nats = nats.join(", ");
        let config = dir.path().join("platform.yml");
        std::fs::write(
            &config,
            format!(
                "agent:\n  nats_servers: [{nats}]\nplatform:\n  replicas: 3\n  controller:\n    agent_timeout_secs: 6\n    settle_secs: 3\n    lease_secs: 3\n  router:\n    listen: 127.0.0.1:{router}\n    trace_key: e2e-trace\n    prune_threshold_secs: 6\n    start_interval_secs: 2\n  ctl:\n    router: 127.0.0.1:{router}\n    timeout_secs: 180\n"
            ),
        )
        .expect("platform config");
        Platform {
            dir,
            config,
            router,
            nats,
        }
    }

    fn spawn(&self, name: &str, config: &Path, args: &[&str]) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_dea"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("DEA_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dea starts");
        Proc {
            child,
            name: name.to_string(),
        }
    }

    fn agent(&self, i: u16) -> Proc {
        let base = self.dir.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&base).expect("agent dir");
        let config = base.join("dea.yml");
        let ports = 62000 + i * 1000;
        std::fs::write(
            &config,
            format!(
                "base_dir: {}\nbuildpack_dirs: [{}]\nagent:\n  nats_servers: [{}]\n  advertise_interval_secs: 1\n  heartbeat_interval_secs: 1\n  router_register_interval_secs: 1\n  zone: z{i}\ninstances:\n  memory_capacity_mb: 4096\n  stop_grace_secs: 2\n  health_check_interval_secs: 1\n  port_range: [{ports}, {}]\ndirectory_server:\n  port: 0\n",
                base.join("state").display(),
                root().join("target/buildpacks").display(),
                self.nats,
                ports + 999,
            ),
        )
        .expect("agent config");
        self.spawn(&format!("agent{i}"), &config, &["serve"])
    }

    fn controller(&self, name: &str) -> Proc {
        self.spawn(name, &self.config, &["controller"])
    }

    fn router(&self) -> Proc {
        self.spawn("router", &self.config, &["router"])
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dea"))
            .arg("--config")
            .arg(&self.config)
            .arg("ctl")
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("dea ctl")
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "dea ctl {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The `#N state since cpu memory disk agent` rows of `dea ctl app NAME`.
    fn instances(&self, app: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["app", app]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('#'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                Some((cells.get(1)?.to_string(), cells.last()?.to_string()))
            })
            .collect()
    }

    /// Waits until `app` has `n` RUNNING instances; returns their agents.
    fn wait_running(&self, app: &str, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let rows = self.instances(app);
            let running: Vec<String> = rows
                .iter()
                .filter(|(state, _)| state == "running")
                .map(|(_, agent)| agent.clone())
                .collect();
            if running.len() == n {
                return running;
            }
            assert!(
                Instant::now() < deadline,
                "{app}: {n} running instances not reached in {limit:?}: {rows:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn get(&self, host: &str) -> Result<u16, String> {
        self.traced_get(host).map(|(status, _)| status)
    }

    /// A GET through the router with gorouter's trace header: the status, and the instance
    /// (`X-Vcap-Backend`) that answered.
    fn traced_get(&self, host: &str) -> Result<(u16, String), String> {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.router)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        use std::io::{Read, Write};
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {host}\r\nX-Vcap-Trace: e2e-trace\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "no status".to_string())?;
        let backend = text
            .lines()
            .find_map(|l| l.strip_prefix("x-vcap-backend: "))
            .map(|b| b.trim().to_string())
            .unwrap_or_default();
        Ok((status, backend))
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["controller", "controller2", "router"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                all.push_str(&format!(
                    "--- {name}\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        all
    }
}

fn crashing_app(dir: &Path) -> PathBuf {
    let app = dir.join("crashy");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(app.join("Procfile"), "web: echo going down; exit 3\n").expect("Procfile");
    app
}

/// A zip whose entry climbs out of the app directory.
fn hostile_zip(dir: &Path) -> PathBuf {
    let path = dir.join("evil.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("zip"));
    zip.start_file(
        "../../../../etc/cron.d/evil",
        zip::write::SimpleFileOptions::default(),
    )
    .expect("entry");
    std::io::Write::write_all(&mut zip, b"* * * * * root id\n").expect("write");
    zip.finish().expect("finish");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_scale_fail_over_and_restart_across_three_hosts() {
    let mut cluster = jetstream::Cluster::start(3).await;
    let platform = Platform::new(&cluster.urls());
    let mut agents: Vec<Proc> = (0..3).map(|i| platform.agent(i)).collect();
    let _router = platform.router();
    let mut controller = platform.controller("controller");
    let example = root().join("examples/static-site");
    let example = example.to_str().expect("utf-8 path");

    // Push: staged on one agent, streamed log, routed.
    let pushed = platform.ctl_ok(&[
        "push",
        "shop",
        example,
        "--route",
        "shop.test.local",
        "-m",
        "64",
    ]);
    assert!(
        pushed.contains("Detected staticfile"),
        "the staging log is streamed: {pushed}"
    );
    assert!(
        pushed.contains("App shop is running: http://shop.test.local"),
        "{pushed}"
    );
    assert_eq!(platform.get("shop.test.local"), Ok(200));

    // Scale to three: one per agent (the droplet comes from the object store).
    platform.ctl_ok(&["scale", "shop", "-i", "3"]);
    let mut hosts = platform.wait_running("shop", 3, Duration::from_secs(60));
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "spread across the agents: {hosts:?}");
    // Through the router, each of the three instances answers in turn.
    let mut answered = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while answered.len() < 3 {
        let (status, backend) = platform.traced_get("shop.test.local").expect("GET");
        assert_eq!(status, 200);
        answered.insert(backend);
        assert!(
            Instant::now() < deadline,
            "instances that answered: {answered:?}"
        );
    }

    // kill -9 an agent: its instances are started elsewhere within 30 s; GETs go on.
    let killed_at = Instant::now();
    agents[0].kill9();
    let mut failures = 0;
    let moved = loop {
        if platform.get("shop.test.local") != Ok(200) {
            failures += 1;
        }
        let rows = platform.instances("shop");
        let running = rows.iter().filter(|(s, _)| s == "running").count();
        if running == 3 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "instances not back within 30 s: {rows:?}\n{}",
            platform.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(failures <= 3, "{failures} failed GETs during the fail-over");
    eprintln!("fail-over: all instances RUNNING again {moved:?} after kill -9");
    // The agent comes back and re-adopts what it ran: the extras are stopped.
    agents[0] = platform.agent(0);
    std::thread::sleep(Duration::from_secs(8));
    platform.wait_running("shop", 3, Duration::from_secs(30));

    // kill -9 the controller mid-push; a new one finishes the push.
    let push = Command::new(env!("CARGO_BIN_EXE_dea"))
        .arg("--config")
        .arg(&platform.config)
        .args([
            "ctl",
            "push",
            "shop2",
            example,
            "--route",
            "shop2.test.local",
            "-m",
            "64",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("push");
    // As soon as the push has written the app (its staging pending, running or just done,
    // its instances not yet started), the controller dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = platform.ctl(&["app", "shop2"]);
        if shown.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "shop2 was never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    controller.kill9();
    let _controller2 = platform.controller("controller2");
    let out = push.wait_with_output().expect("push output");
    assert!(
        out.status.success(),
        "the push completes under a new controller: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        platform.logs()
    );
    assert_eq!(platform.get("shop2.test.local"), Ok(200));

    // An app that exits at once: the push says so, and it is restarted with back-off.
    let crashy = crashing_app(platform.dir.path());
    let out = platform.ctl(&[
        "push",
        "crashy",
        crashy.to_str().expect("utf-8"),
        "--route",
        "crashy.test.local",
        "-m",
        "64",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("start unsuccessful"),
        "{stderr}"
    );
    let crashes = || {
        let out = platform.ctl(&["events", "crashy"]);
        let events = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprintln!("dea ctl events: {}", String::from_utf8_lossy(&out.stderr));
        }
        (events.matches("app.crash").count(), events)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while crashes().0 < 4 {
        if Instant::now() > deadline {
            for node in ["n0", "n1"] {
                let log = cluster.log(node);
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!(
                    "--- {node}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!("{}\n{}", crashes().1, platform.logs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Restarted at once three times; then it waits 30 s.
    std::thread::sleep(Duration::from_secs(10));
    let (count, events) = crashes();
    assert_eq!(count, 4, "back-off after the third restart: {events}");
    assert!(events.contains("exit_status: 3"), "{events}");

    // Bad input: refused with a clear error, and the platform goes on.
    let evil = hostile_zip(platform.dir.path());
    let out = platform.ctl(&["push", "evil", evil.to_str().expect("utf-8"), "-m", "64"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("staging failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = platform.ctl(&[
        "push",
        "nobp",
        example,
        "-b",
        "no-such-buildpack",
        "-m",
        "64",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("staging failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = platform.ctl(&["push", "thief", example, "--route", "shop.test.local"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shop.test.local"),
        "a route taken by another app is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(platform.get("shop.test.local"), Ok(200));
    assert_eq!(platform.get("nowhere.test.local"), Ok(404));

    // Delete: the app, its instances and its route go; the route can be taken again.
    platform.ctl_ok(&["delete", "crashy"]);
    assert!(!platform.ctl_ok(&["apps"]).contains("crashy"));
    let out = platform.ctl(&[
        "push",
        "thief",
        example,
        "--route",
        "crashy.test.local",
        "-m",
        "64",
    ]);
    assert!(
        out.status.success(),
        "a released route is free: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A NATS node stops: what runs keeps running and routed, and what is wanted can still
    // be changed and carried out.
    cluster.stop("n2");
    platform.ctl_ok(&["scale", "shop", "-i", "2"]);
    platform.wait_running("shop", 2, Duration::from_secs(60));
    assert!(platform.ctl_ok(&["apps"]).contains("shop2"));
    assert_eq!(platform.get("shop.test.local"), Ok(200));
    assert_eq!(platform.get("shop2.test.local"), Ok(200));

    // Cleanly down: agents stop their instances on SIGTERM.
    for agent in &mut agents {
        agent.term(Duration::from_secs(30));
    }
}
