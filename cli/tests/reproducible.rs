//! Reproducible droplets from the command line: `dea diff` names what differs,
//! `SOURCE_DATE_EPOCH` dates the droplet, and `dea stage --offline --verify` rebuilds a
//! droplet from the download cache alone, names a download the cache lacks, and shows the
//! diff when the rebuild is not the droplet.

mod common;

use common::{root, text};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `dea` from the workspace root with `state` as its base directory, `envs` set.
fn dea(state: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(root())
        .env_remove("SOURCE_DATE_EPOCH")
        .envs(envs.iter().copied())
        .arg("--base-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("dea runs")
}

fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Stages `app` with the classic buildpack `buildpack` (a directory of `tests/classic`)
/// into `droplet`; `extra` goes before the app.
fn stage(
    state: &Path,
    app: &Path,
    buildpack: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let bp = format!("tests/classic/{buildpack}");
    let app = app.display().to_string();
    let mut args = vec!["stage", "--buildpack", &bp];
    args.extend_from_slice(extra);
    args.push(&app);
    dea(state, &args, env)
}

fn app_with(dir: &Path, files: &[&str]) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).expect("app");
    for file in files {
        std::fs::write(app.join(file), "").expect("fixture");
    }
    app
}

#[test]
fn diff_names_the_entry_a_clock_buildpack_stamps() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = app_with(base.path(), &["clock.txt"]);
    let mut droplets = Vec::new();
    for round in 0..2 {
        let droplet = base.path().join(format!("clock-{round}.tgz"));
        let state = base.path().join(format!("state-{round}"));
        let out = stage(
            &state,
            &app,
            "clock",
            &["-o", &droplet.display().to_string()],
            &[],
        );
        assert!(out.status.success(), "{}", both(&out));
        droplets.push(droplet.display().to_string());
    }
    let state = base.path().join("state-diff");
    let out = dea(&state, &["diff", &droplets[0], &droplets[1]], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout.starts_with("app/built-at.txt: content differs (sha256 "),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let out = dea(&state, &["diff", &droplets[0], &droplets[0]], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(out.stdout.is_empty(), "{}", both(&out));

    let missing = base.path().join("missing.tgz").display().to_string();
    let out = dea(&state, &["diff", &droplets[0], &missing], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(text(&out.stderr).contains("missing.tgz"), "{}", both(&out));
}

#[test]
fn source_date_epoch_from_the_environment_dates_the_droplet() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = app_with(base.path(), &["hello.txt"]);
    let droplet = base.path().join("hello.tgz");
    let out = stage(
        &base.path().join("state"),
        &app,
        "hello",
        &["-o", &droplet.display().to_string()],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert!(out.status.success(), "{}", both(&out));
    let file = std::fs::File::open(&droplet).expect("droplet");
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    let mut seen = 0;
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let name = text(&entry.path_bytes());
        assert_eq!(
            entry.header().mtime().expect("mtime"),
            1_700_000_000,
            "{name}"
        );
        seen += 1;
    }
    assert!(seen > 5, "{seen} entries");
}

/// An HTTP server on 127.0.0.1 answering every request with `body`, counting them.
struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Server { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A `.tgz` holding one executable file.
fn tool_tgz() -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let content = b"#!/bin/sh\necho tool\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    builder
        .append_data(&mut header, "tool/bin/tool", &content[..])
        .expect("append");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// A config file letting downloads reach `server`, through the download cache `cache`.
fn config_file(dir: &Path, name: &str, server: &Server, cache: &Path) -> String {
    let path = dir.join(format!("{name}.yml"));
    let yaml = format!(
        "fetch:\n  allow: [\"{}\"]\n  attempts: 1\n  cache_dir: {}\n",
        server.url("/"),
        cache.display()
    );
    std::fs::write(&path, yaml).expect("config");
    path.display().to_string()
}

#[test]
fn stage_offline_verify_rebuilds_from_the_cache_names_what_it_lacks_and_shows_the_diff() {
    let base = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tool_tgz());
    let url = server.url("/tool.tgz");
    let app = app_with(base.path(), &["download.txt"]);
    let cache = base.path().join("shared-cache");
    let config = config_file(base.path(), "shared", &server, &cache);
    let env_arg = format!("URL={url}");
    let staged = |state: &str, extra: &[&str]| {
        let mut args = vec!["--config", &config, "-e", &env_arg];
        args.extend_from_slice(extra);
        stage(&base.path().join(state), &app, "downloader", &args, &[])
    };

    // Online: the staging downloads (the cache is empty) and fills the shared cache.
    // Nothing in the droplet says whether the cache answered, so the offline rebuild,
    // all cache hits, must give this very droplet.
    let droplet = base.path().join("online.tgz").display().to_string();
    let out = staged("online", &["-o", &droplet]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(text(&out.stdout).contains("(downloaded,"), "{}", both(&out));
    let hits = server.hits();
    assert!(hits > 0, "the download never reached the server");

    // Offline, on fresh state: the same droplet, without a connection.
    let out = staged("offline", &["--offline", "--verify", &droplet]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        text(&out.stdout).contains("rebuilt byte for byte"),
        "{}",
        both(&out)
    );
    assert_eq!(server.hits(), hits, "an offline staging reached the server");

    // Offline with an empty download cache: the download it lacks is named.
    let empty = config_file(base.path(), "empty", &server, &base.path().join("empty"));
    let out = stage(
        &base.path().join("offline-empty"),
        &app,
        "downloader",
        &[
            "--config",
            &empty,
            "-e",
            &env_arg,
            "--offline",
            "--verify",
            &droplet,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        both(&out).contains(&format!("{url} is not in the download cache")),
        "{}",
        both(&out)
    );
    assert_eq!(server.hits(), hits, "an offline staging reached the server");

    // A rebuild that is not the droplet: the diff names the entry.
    std::fs::write(app.join("added.txt"), "new").expect("change the app");
    let out = staged("offline-changed", &["--offline", "--verify", &droplet]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("app/added.txt: only in rebuilt"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("the rebuilt droplet differs from"),
        "{}",
        both(&out)
    );
}

/// The common case: the built-in example staged with the default buildpacks, which each
/// state directory installs for itself, gives the same droplet on two fresh state
/// directories (nothing of the host's layout, such as the buildpack's path, goes in).
#[test]
fn the_example_staged_on_two_fresh_state_directories_is_the_same_droplet() {
    let base = tempfile::tempdir().expect("tempdir");
    let mut droplets = Vec::new();
    for round in 0..2 {
        let droplet = base.path().join(format!("example-{round}.tgz"));
        let state = base.path().join(format!("state-{round}"));
        let out = dea(
            &state,
            &[
                "stage",
                "examples/static-site",
                "-o",
                &droplet.display().to_string(),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", both(&out));
        droplets.push(droplet);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dea"))
        .arg("diff")
        .args(&droplets)
        .output()
        .expect("dea diff");
    assert!(out.status.success(), "the droplets differ: {}", both(&out));
    let bytes: Vec<Vec<u8>> = droplets
        .iter()
        .map(|d| std::fs::read(d).expect("droplet"))
        .collect();
    assert!(bytes[0] == bytes[1], "same entries, different bytes");
}
