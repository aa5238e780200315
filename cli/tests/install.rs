//! `dea` as a new user runs it once installed: from a directory outside the checkout, with a
//! config naming a fresh state directory and no `target/buildpacks` in sight. The default
//! buildpacks come with the binary; others are added by path or URL, moved and removed; the
//! example app stages. Also: the XDG defaults of a user who is not root, and `dea serve`
//! telling systemd it is ready.

mod common;

use common::{both, root};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `dea --config dea.yml ARGS` run in `dir`, the config named relative to it, with none of
/// the environment a developer's shell might add.
fn dea_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(dir)
        .env_remove("DEA_CONFIG")
        .env_remove("DEA_BASE_DIR")
        .env("RUST_BACKTRACE", "0")
        .args(["--config", "dea.yml"])
        .args(args)
        .output()
        .expect("dea runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = dea_in(dir, args);
    assert!(out.status.success(), "dea {args:?}:\n{}", both(&out));
    both(&out)
}

/// The `dea buildpacks` listing as (id, version, kind, path) rows.
fn listing(dir: &Path) -> Vec<(String, String, String, String)> {
    let out = dea_in(dir, &["buildpacks"]);
    assert!(out.status.success(), "{}", both(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 5, "{line}");
            (
                fields[1].to_string(),
                fields[2].to_string(),
                fields[3].to_string(),
                fields[4].to_string(),
            )
        })
        .collect()
}

fn ids(dir: &Path) -> Vec<String> {
    listing(dir).into_iter().map(|row| row.0).collect()
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// A classic buildpack archive: `tests/classic/hello` in one top-level folder.
fn hello_tgz() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all("hello-main", root().join("tests/classic/hello"))
        .expect("append");
    tar.into_inner().expect("tar").finish().expect("gzip")
}

/// Answers every request on 127.0.0.1 with the body `routes` gives its path (404 else), for
/// as long as the test runs. Returns the base URL.
fn http_files(routes: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            if BufReader::new(&stream)
                .read_line(&mut request_line)
                .is_err()
            {
                continue;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default();
            let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.as_slice()),
                None => ("404 Not Found", &b""[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // A client that refuses the size hangs up early; that is its right.
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(body));
        }
    });
    base
}

#[test]
fn installed_dea_manages_buildpacks_and_stages_from_any_directory() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path();
    assert!(
        !home.starts_with(root()),
        "the test runs outside the checkout"
    );
    std::fs::write(
        home.join("dea.yml"),
        format!(
            "base_dir: {}\nagent:\n  max_download_mb: 1\n",
            home.join("state").display()
        ),
    )
    .expect("config");
    let marker = root().join("target/test-buildpacks/marker");
    assert!(
        marker.join("buildpack.wasm").is_file(),
        "run scripts/build-plugins first"
    );
    copy_tree(&marker, &home.join("marker"));
    copy_tree(&root().join("tests/classic/hello"), &home.join("hello"));
    copy_tree(
        &root().join("examples/static-site"),
        &home.join("static-site"),
    );

    // First use: the buildpacks built into the binary are installed in the state directory.
    let out = dea_in(home, &["buildpacks"]);
    assert!(
        out.status.success(),
        "a dea built without its default buildpacks? run scripts/build-plugins, then build again\n{}",
        both(&out)
    );
    assert!(
        both(&out).contains("Installed the default buildpacks into"),
        "{}",
        both(&out)
    );
    let store = home.join("state/buildpacks");
    let rows = listing(home);
    let defaults: Vec<&str> = rows.iter().map(|row| row.0.as_str()).collect();
    assert_eq!(
        defaults,
        ["staticfile", "node", "python", "shell", "procfile"]
    );
    for (id, _, kind, path) in &rows {
        assert_eq!(kind, "wasm");
        assert_eq!(Path::new(path), store.join(id));
    }

    // A wasm buildpack directory and a classic one, each at a position.
    let added = ok(home, &["buildpacks", "add", "marker", "--position", "1"]);
    assert!(
        added.contains("Installed marker 0.1.0 (wasm) at position 1"),
        "{added}"
    );
    let added = ok(home, &["buildpacks", "add", "./hello", "--position", "2"]);
    assert!(
        added.contains("Installed hello 1.2.3 (classic) at position 2"),
        "{added}"
    );
    let rows = listing(home);
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [
            "marker",
            "hello",
            "staticfile",
            "node",
            "python",
            "shell",
            "procfile"
        ]
    );
    assert_eq!(
        (rows[1].1.as_str(), rows[1].2.as_str()),
        ("1.2.3", "classic")
    );
    let again = dea_in(home, &["buildpacks", "add", "hello"]);
    assert!(
        !again.status.success() && both(&again).contains("already installed"),
        "{}",
        both(&again)
    );

    ok(home, &["buildpacks", "move", "hello", "--position", "1"]);
    ok(
        home,
        &["buildpacks", "move", "staticfile", "--position", "99"],
    );
    ok(home, &["buildpacks", "remove", "marker"]);
    assert!(!store.join("marker").exists());
    assert_eq!(
        ids(home),
        ["hello", "node", "python", "shell", "procfile", "staticfile"]
    );

    // By URL: a classic archive, named after the URL; one past the size cap is refused.
    let base = http_files(vec![
        ("/bp/hello-archive.tgz", hello_tgz()),
        ("/bp/huge.tgz", vec![0u8; (1 << 20) + 1]),
    ]);
    let added = ok(
        home,
        &[
            "buildpacks",
            "add",
            &format!("{base}/bp/hello-archive.tgz"),
            "--position",
            "2",
        ],
    );
    assert!(
        added.contains("Installed hello-archive 1.2.3 (classic) at position 2"),
        "{added}"
    );
    assert!(store.join("hello-archive/bin/detect").is_file());
    let huge = dea_in(home, &["buildpacks", "add", &format!("{base}/bp/huge.tgz")]);
    assert!(
        !huge.status.success() && both(&huge).contains("larger than 1 MiB"),
        "{}",
        both(&huge)
    );
    ok(home, &["buildpacks", "remove", "hello-archive"]);
    let order = std::fs::read_to_string(store.join("order.json")).expect("order file");
    let order: serde_json::Value = serde_json::from_str(&order).expect("json");
    assert_eq!(
        order["buildpacks"],
        serde_json::json!(["hello", "node", "python", "shell", "procfile", "staticfile"])
    );

    // Stage the example: detection goes through the installed buildpacks in their order
    // (the classic hello first, in its container) and ends at staticfile, now last.
    let staged = ok(home, &["stage", "static-site", "-o", "droplet.tgz"]);
    assert!(staged.contains("-----> Detected staticfile"), "{staged}");
    let info = Command::new("tar")
        .args(["xzOf", "droplet.tgz", "./staging_info.yml"])
        .current_dir(home)
        .output()
        .expect("tar");
    let info = String::from_utf8_lossy(&info.stdout);
    // The container's path, as the DEA's: nothing of the host's layout in the droplet.
    assert!(
        info.contains("buildpack_path: /tmp/buildpacks/staticfile"),
        "{info}"
    );
    assert!(!home.join("target").exists());
}

#[test]
fn a_user_gets_xdg_state_and_config_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `nobody` must reach its XDG directories inside the (root-only) tempdir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("config/dea")).expect("dirs");
    std::fs::create_dir_all(xdg.join("state")).expect("dirs");
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&xdg)
        .status()
        .expect("chown");
    assert!(chown.success());
    let as_nobody = || {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "env",
                "-i",
            ])
            .arg("HOME=/nonexistent")
            .arg(format!("XDG_STATE_HOME={}", xdg.join("state").display()))
            .arg(format!("XDG_CONFIG_HOME={}", xdg.join("config").display()))
            .arg("RUST_BACKTRACE=0")
            .arg(env!("CARGO_BIN_EXE_dea"))
            .arg("buildpacks")
            .current_dir("/")
            .output()
            .expect("setpriv (util-linux) runs");
        assert!(out.status.success(), "{}", both(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // No config file: state in $XDG_STATE_HOME/dea.
    let listed = as_nobody();
    let state = xdg.join("state/dea/buildpacks/staticfile");
    assert!(listed.contains(&state.display().to_string()), "{listed}");
    // A config file in $XDG_CONFIG_HOME/dea/dea.yml is read.
    let elsewhere = xdg.join("state/elsewhere");
    std::fs::write(
        xdg.join("config/dea/dea.yml"),
        format!("base_dir: {}\n", elsewhere.display()),
    )
    .expect("config");
    let listed = as_nobody();
    let moved = elsewhere.join("buildpacks/staticfile");
    assert!(listed.contains(&moved.display().to_string()), "{listed}");
}

/// A child process killed when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_tells_systemd_it_is_ready_once_subscribed_and_that_it_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let _nats = Reaped(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)"),
    );
    // What systemd does for Type=notify: a datagram socket named in NOTIFY_SOCKET.
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    std::fs::write(
        dir.path().join("dea.yml"),
        format!(
            "base_dir: {}\ndirectory_server:\n  port: 0\n",
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    // No buildpacks: readiness does not wait for them, and nothing compiles meanwhile.
    std::fs::create_dir(dir.path().join("no-buildpacks")).expect("dir");
    let started = Instant::now();
    let mut serve = Reaped(
        Command::new(env!("CARGO_BIN_EXE_dea"))
            .current_dir(dir.path())
            .env("NOTIFY_SOCKET", &socket_path)
            .args(["--config", "dea.yml", "--buildpacks", "no-buildpacks"])
            .args(["serve", "--nats", &format!("nats://127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dea serve starts"),
    );
    let mut buf = vec![0u8; 4096];
    let n = systemd.recv(&mut buf).expect("a notification within 60 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // It is the agent that printed its id: READY comes after it is subscribed. (stdout is
    // read, not closed, until dea exits: a closed pipe would fail its later prints.)
    let mut stdout = BufReader::new(serve.0.stdout.take().expect("stdout")).lines();
    let id = stdout
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("DEA ")
                .and_then(|rest| rest.strip_suffix(" serving"))
                .map(str::to_string)
        })
        .expect("dea serve prints its id");
    assert!(
        ready.contains(&format!("STATUS=DEA {id} serving")),
        "{ready:?}"
    );
    eprintln!("READY=1 after {:?}", started.elapsed());

    let term = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let n = systemd.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "dea serve did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}
