//! The `dea` binary as an operator uses it: stage the built-in example, list buildpacks,
//! stage with a classic buildpack, fail clearly, explain a fetch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

#[test]
fn run_a_droplet_in_the_foreground_and_stop_it_with_ctrl_c() {
    use std::io::{BufRead, Read, Write};
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
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A relative --base-dir (runc needs absolute paths; the agent must make them so).
    let depth = root().components().count() - 1;
    let relative_state = PathBuf::from("../".repeat(depth))
        .join(base.path().strip_prefix("/").expect("absolute tempdir"))
        .join("run-state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(root())
        .arg("--base-dir")
        .arg(&relative_state)
        .args(["run", &droplet_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dea run starts");
    // If an assertion fails, still stop the instance (SIGINT makes dea stop it cleanly).
    struct StopOnDrop(u32);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.to_string()])
                .status();
        }
    }
    let _stop = StopOnDrop(child.id());
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("URL:  ") {
            url = Some(rest.to_string());
            break;
        }
    }
    let url = url.unwrap_or_else(|| {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!("no URL printed: {err}");
    });
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .expect("port in URL");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.contains("Hello from a dea droplet"), "{response}");

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().expect("dea run exits");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("Stopped")), "{rest:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
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
