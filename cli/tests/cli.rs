//! The `dea` binary as an operator uses it: stage the built-in example, list buildpacks,
//! stage with a classic buildpack, fail clearly, explain a fetch, run a droplet in the
//! foreground and stop it with a signal.

mod common;

use common::{root, text};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn dea(base: &Path, args: &[&str]) -> Output {
    let buildpacks = root().join("target/buildpacks");
    assert!(
        buildpacks.join("staticfile/buildpack.wasm").is_file(),
        "run scripts/build-plugins first"
    );
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(root())
        .arg("--base-dir")
        .arg(base.join("state"))
        .args(args)
        .output()
        .expect("dea runs")
}

#[test]
fn stage_the_built_in_example() {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = base.path().join("droplet.tgz");
    let droplet_arg = droplet.display().to_string();
    let out = dea(
        base.path(),
        &[
            "--buildpacks",
            "target/buildpacks",
            "stage",
            "examples/static-site",
            "-o",
            &droplet_arg,
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("-----> Detected staticfile"), "{stdout}");
    assert!(stdout.contains("-----> Uploading droplet"), "{stdout}");
    assert!(stdout.contains("SHA256:"), "{stdout}");

    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&droplet)
        .output()
        .expect("tar");
    let listing = text(&listing.stdout);
    for entry in [
        "./app/index.html",
        "./staging_info.yml",
        "./logs/staging_task.log",
    ] {
        assert!(
            listing.lines().any(|l| l == entry),
            "{entry} not in:\n{listing}"
        );
    }
    let info = Command::new("tar")
        .arg("xzOf")
        .arg(&droplet)
        .arg("./staging_info.yml")
        .output()
        .expect("tar");
    let info = text(&info.stdout);
    assert!(info.contains("detected_buildpack: staticfile"), "{info}");
    assert!(
        info.contains("start_command: python3 -m http.server"),
        "{info}"
    );
}

#[test]
fn list_buildpacks_of_both_kinds_and_stage_with_a_classic_one() {
    let base = tempfile::tempdir().expect("tempdir");
    let out = dea(
        base.path(),
        &[
            "--buildpacks",
            "target/buildpacks",
            "--buildpacks",
            "tests/classic",
            "buildpacks",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("staticfile") && l.contains("wasm")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("hello") && l.contains("classic")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("cf-final") && l.contains(" cf ")),
        "{stdout}"
    );

    let app = base.path().join("app");
    std::fs::create_dir_all(&app).expect("app");
    std::fs::write(app.join("hello.txt"), "hi").expect("fixture");
    let droplet = base.path().join("classic.tgz");
    let out = dea(
        base.path(),
        &[
            "stage",
            &app.display().to_string(),
            "-o",
            &droplet.display().to_string(),
            "--buildpack",
            "tests/classic/hello",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("-----> Hello compile"), "{stdout}");
    assert!(
        stdout.contains("Start:     ./hello-server --port $PORT"),
        "{stdout}"
    );
}

#[test]
fn failures_are_clear() {
    let base = tempfile::tempdir().expect("tempdir");
    let empty = base.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let out = dea(
        base.path(),
        &[
            "--buildpacks",
            "target/buildpacks",
            "stage",
            &empty.display().to_string(),
            "-o",
            &base.path().join("x.tgz").display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("NoAppDetectedError")
            && stderr.contains("An application could not be detected by any available buildpack"),
        "{stderr}"
    );
    let out = dea(
        base.path(),
        &[
            "--buildpacks",
            "target/buildpacks",
            "stage",
            "/no/such/app",
            "-o",
            "/tmp/never.tgz",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn fetch_explains_how_a_url_resolves() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = base.path().join("dea.yml");
    std::fs::write(
        &config,
        "fetch:\n  mirrors:\n    - from: buildpacks.cloudfoundry.org\n      to: https://mirror.internal/{originalHost}\n",
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let out = dea(
        base.path(),
        &[
            "--config",
            &config_arg,
            "--buildpacks",
            "target/buildpacks",
            "fetch",
            "https://buildpacks.cloudfoundry.org/dependencies/node/x.tgz",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "url used:  https://mirror.internal/buildpacks.cloudfoundry.org/dependencies/node/x.tgz"
        ),
        "{stdout}"
    );
    let out = dea(
        base.path(),
        &[
            "--config",
            &config_arg,
            "--buildpacks",
            "target/buildpacks",
            "fetch",
            "https://evil.example/x",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("allowed:   no"),
        "{}",
        text(&out.stdout)
    );
}

/// Waits at most `limit` for `done` to give a value, checking every 100 ms.
fn wait_for<T>(limit: Duration, what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How a `dea run` test gives dea its base_dir (`<tempdir>/state` either way).
enum BaseDir {
    /// `base_dir:` in a config file, as an operator sets it.
    Config,
    /// A relative `--base-dir` (runc needs absolute paths; the agent must make them so).
    RelativeFlag,
}

/// A `dea run` child: its stdout lines arrive on a channel (so every wait can be bounded),
/// its stderr goes to a file. Dropped while still running (a failed assertion), it is
/// asked to stop its instance with SIGINT, and killed if it does not exit; then whatever its
/// instance left behind is removed.
struct DeaRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
    leftovers: Option<Leftovers>,
}

impl DeaRun {
    fn start(base: &Path, base_dir: BaseDir, droplet: &Path, extra: &[&str]) -> DeaRun {
        let state = base.join("state");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dea"));
        command.current_dir(root());
        match base_dir {
            BaseDir::Config => {
                let config = base.join("dea.yml");
                std::fs::write(&config, format!("base_dir: {}\n", state.display()))
                    .expect("config");
                command.arg("--config").arg(config);
            }
            BaseDir::RelativeFlag => {
                let up = "../".repeat(root().components().count() - 1);
                let relative =
                    PathBuf::from(up).join(state.strip_prefix("/").expect("absolute tempdir"));
                command.arg("--base-dir").arg(relative);
            }
        }
        let stderr = base.join("dea-run.stderr");
        let mut child = command
            .arg("run")
            .arg(droplet)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("dea run starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        DeaRun {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            leftovers: None,
        }
    }

    /// What dea printed so far, and its stderr, for failure messages.
    fn transcript(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{stderr}", self.seen.join("\n"))
    }

    /// Collects stdout to its end (the reader thread hangs up), waiting at most `limit`.
    fn read_to_end(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// The first stdout line (from now on) that `matches`, within `limit`.
    fn line(&mut self, limit: Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no such line within {limit:?}\n{}", self.transcript());
            };
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} failed");
    }
}

impl Drop for DeaRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(leftovers) = &self.leftovers {
            leftovers.remove();
        }
    }
}

/// An instance's container and network namespace, as the agent's registry
/// (`<state>/db/instances.json`) names them.
#[derive(Clone)]
struct Leftovers {
    runc_state: PathBuf,
    container: String,
    netns: String,
}

impl Leftovers {
    fn of(state: &Path, entry: &serde_json::Value) -> Leftovers {
        let field = |key: &str| entry[key].as_str().expect(key).to_string();
        Leftovers {
            runc_state: state.join("runc"),
            container: field("container_id"),
            netns: field("netns"),
        }
    }

    /// Removes both (nothing happens for what dea already removed).
    fn remove(&self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_state)
            .args(["delete", "--force", &self.container])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

/// The registry's instances that satisfy `pick`.
fn registry_entry(
    state: &Path,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state.join("db/instances.json")).ok()?;
    let registry: serde_json::Value = serde_json::from_str(&text).ok()?;
    registry["instances"]
        .as_array()?
        .iter()
        .find(|i| pick(i))
        .cloned()
}

/// The ids of the containers in runc's state directory `state`.
fn runc_containers(state: &Path) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(state)
        .args(["list", "--quiet"])
        .output()
        .expect("runc list");
    assert!(out.status.success(), "runc list: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// Is `name` in `ip netns list` (which prints `NAME` or `NAME (id: N)`)?
fn has_namespace(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn answers(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
}

/// Stages the built-in example into `<base>/droplet.tgz`.
fn stage_example(base: &Path) -> PathBuf {
    let droplet = base.join("droplet.tgz");
    let droplet_arg = droplet.display().to_string();
    let out = dea(
        base,
        &[
            "--buildpacks",
            "target/buildpacks",
            "stage",
            "examples/static-site",
            "-o",
            &droplet_arg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    droplet
}

/// Notes the instance's container and network namespace (removed at the end should dea
/// leave them) and checks both exist now, so that their absence later means something.
fn note_resources(run: &mut DeaRun, state: &Path, entry: &serde_json::Value) -> Leftovers {
    let resources = Leftovers::of(state, entry);
    run.leftovers = Some(resources.clone());
    assert!(resources.netns.starts_with("dea-i-"), "{}", resources.netns);
    assert!(has_namespace(&resources.netns), "{}", resources.netns);
    assert_eq!(
        runc_containers(&resources.runc_state),
        vec![resources.container.clone()]
    );
    resources
}

/// After `signal`: dea exits 0 within a minute saying it stopped `instance_id`, and nothing
/// of the instance is left (nor its port answering, when it had one).
fn assert_stopped_and_gone(
    run: &mut DeaRun,
    signal: &str,
    instance_id: &str,
    resources: &Leftovers,
    port: Option<u16>,
) {
    let child = &mut run.child;
    let exit = wait_for(Duration::from_secs(60), "dea run to exit", || {
        child.try_wait().expect("try_wait")
    });
    run.read_to_end(Duration::from_secs(10));
    let transcript = run.transcript();
    assert!(exit.success(), "{exit:?}\n{transcript}");
    let said = |line: &str| run.seen.iter().any(|l| l.starts_with(line));
    assert!(
        said(&format!(
            "Received SIG{signal}: stopping instance {instance_id}"
        )),
        "{transcript}"
    );
    assert!(
        said(&format!("Instance {instance_id} is STOPPED")),
        "{transcript}"
    );
    let containers = runc_containers(&resources.runc_state);
    assert!(containers.is_empty(), "{containers:?}\n{transcript}");
    assert!(!has_namespace(&resources.netns), "{}", resources.netns);
    if let Some(port) = port {
        assert!(!answers(port), "port {port} still answers");
    }
}

/// `dea run`, stopped with `signal` once the app answers: it stops the instance (container,
/// network namespace and published port all gone) and exits, saying why.
fn run_and_stop_with(signal: &str, base_dir: BaseDir) {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = stage_example(base.path());
    let mut run = DeaRun::start(base.path(), base_dir, &droplet, &[]);
    let running = run.line(Duration::from_secs(120), |l| l.ends_with("is RUNNING"));
    let instance_id = running
        .strip_prefix("Instance ")
        .and_then(|rest| rest.strip_suffix(" is RUNNING"))
        .expect("instance id")
        .to_string();
    let url = run.line(Duration::from_secs(10), |l| l.starts_with("URL:"));
    let port: u16 = url
        .trim_start_matches("URL:  http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("port in {url:?}"));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.contains("Hello from a dea droplet"), "{response}");

    let state = base.path().join("state");
    let entry = registry_entry(&state, |i| i["instance_id"] == instance_id.as_str())
        .unwrap_or_else(|| panic!("{instance_id} not in the registry"));
    let resources = note_resources(&mut run, &state, &entry);
    // The app runs under the containers' seccomp filter too.
    let runc_state = Command::new("runc")
        .arg("--root")
        .arg(&resources.runc_state)
        .args(["state", &resources.container])
        .output()
        .expect("runc state");
    let pid =
        serde_json::from_slice::<serde_json::Value>(&runc_state.stdout).expect("state")["pid"]
            .as_u64()
            .expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let seccomp = status.lines().find(|l| l.starts_with("Seccomp:"));
    assert_eq!(
        seccomp.map(|l| l.split_whitespace().collect()),
        Some(vec!["Seccomp:", "2"])
    );

    run.signal(signal);
    assert_stopped_and_gone(&mut run, signal, &instance_id, &resources, Some(port));
}

#[test]
fn run_a_droplet_in_the_foreground_and_stop_it_with_ctrl_c() {
    run_and_stop_with("INT", BaseDir::RelativeFlag);
}

#[test]
fn run_stops_its_instance_on_sigterm() {
    run_and_stop_with("TERM", BaseDir::Config);
}

#[test]
fn run_stops_its_instance_on_sighup() {
    run_and_stop_with("HUP", BaseDir::Config);
}

#[test]
fn run_stopped_while_starting_stops_the_instance_once_started() {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = stage_example(base.path());
    // An app slow to listen keeps the start (its health check) going for seconds.
    let slow = "sleep 3; exec python3 -m http.server $PORT --bind 0.0.0.0";
    let mut run = DeaRun::start(base.path(), BaseDir::Config, &droplet, &["-c", slow]);
    let state = base.path().join("state");
    let entry = wait_for(Duration::from_secs(60), "a STARTING instance", || {
        registry_entry(&state, |i| i["state"] == "STARTING")
    });
    let instance_id = entry["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string();
    // The registry names the container a moment before runc has it.
    wait_for(Duration::from_secs(10), "the instance's container", || {
        (runc_containers(&state.join("runc")).len() == 1).then_some(())
    });
    let resources = note_resources(&mut run, &state, &entry);

    run.signal("TERM");
    run.line(Duration::from_secs(10), |l| {
        l.starts_with("Received SIGTERM while the instance starts")
    });
    assert_stopped_and_gone(&mut run, "TERM", &instance_id, &resources, None);
    // It never announced itself as running.
    let announced = run.seen.iter().any(|l| l.starts_with("URL:"));
    assert!(!announced, "{:?}", run.seen);
}

#[test]
fn serve_advertises_on_nats_and_says_goodbye_on_sigterm() {
    use futures_util::StreamExt;
    let base = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut nats = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server (apt-get install nats-server)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let url = format!("nats://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.clone())
            .await
            .expect("connect");
        let mut advertise = client.subscribe("dea.advertise").await.expect("sub");
        let mut goodbye = client.subscribe("dea.shutdown").await.expect("sub");
        client.flush().await.expect("flush");
        let serve = Command::new(env!("CARGO_BIN_EXE_dea"))
            .current_dir(root())
            .arg("--base-dir")
            .arg(base.path().join("state"))
            .args(["--buildpacks", "target/buildpacks", "serve", "--nats", &url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dea serve starts");
        let mut serve = Kill(serve);
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), advertise.next())
            .await
            .expect("dea serve advertises")
            .expect("message");
        let ad: serde_json::Value = serde_json::from_slice(&first.payload).expect("json");
        let id = ad["id"].as_str().expect("id").to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &serve.0.id().to_string()])
            .status();
        let bye = tokio::time::timeout(std::time::Duration::from_secs(30), goodbye.next())
            .await
            .expect("dea.shutdown on SIGTERM")
            .expect("message");
        let bye: serde_json::Value = serde_json::from_slice(&bye.payload).expect("json");
        assert_eq!(bye["id"], id.as_str());
        let status = serve.0.wait().expect("dea serve exits");
        assert!(status.success(), "{status:?}");
    });
    let _ = nats.kill();
    let _ = nats.wait();
}

/// The query value `key` of `url`, form-decoded.
fn query_value(url: &str, key: &str) -> String {
    let query = url.split_once('?').expect("query").1;
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        .expect("key in query");
    String::from_utf8(dea::files::form_decode(value)).expect("utf-8")
}

#[test]
fn files_url_signs_with_the_configured_key_or_the_running_agents() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = base.path().join("dea.yml");
    std::fs::write(
        &config,
        "directory_server:\n  hmac_key: s3cret\n  port: 4000\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_dea"))
        .arg("--config")
        .arg(&config)
        .args(["files", "url", "instance", "abc", "logs/stdout.log"])
        .output()
        .expect("dea runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = text(&out.stdout).trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:4000/instance_paths/abc?hmac="),
        "{url}"
    );
    assert_eq!(query_value(&url, "path"), "logs/stdout.log");
    assert!(dea::files::UrlSigner::new("s3cret").verify(
        "/instance_paths/abc",
        "logs/stdout.log",
        &query_value(&url, "timestamp"),
        &query_value(&url, "hmac"),
    ));

    // No key configured: the key file a running agent wrote.
    let state = base.path().join("state");
    let signer = dea::files::UrlSigner::random();
    dea::files::write_key_file(&state, &signer).expect("key file");
    let run = |state: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dea"))
            .arg("--base-dir")
            .arg(state)
            .args([
                "files",
                "url",
                "task",
                "t1",
                "/tmp/staged/logs/staging_task.log",
            ])
            .args(["--base-url", "http://dirsrv.example"])
            .output()
            .expect("dea runs")
    };
    let out = run(&state);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = text(&out.stdout).trim().to_string();
    assert!(url.starts_with("http://dirsrv.example/staging_tasks/t1/file_path?hmac="));
    assert!(signer.verify(
        "/staging_tasks/t1/file_path",
        "/tmp/staged/logs/staging_task.log",
        &query_value(&url, "timestamp"),
        &query_value(&url, "hmac"),
    ));

    // Neither: a clear error.
    let out = run(&base.path().join("nothing"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no directory_server.hmac_key configured"),
        "{}",
        text(&out.stderr)
    );
}
