//! Apps and droplets attacking the agent itself: apps that turn their logs into links to the
//! agent's private state, or into FIFOs, before crashing; droplets whose home is made of
//! links; an app hiding its disk use behind a deep tree; a running app's links served. Each
//! attack must fail with a clear error while a [`Liveness`] probe shows the agent serving.

use super::local;
use dea_tests::controller::{BlobStore, ContainerCleanup, Controller, NatsServer};
use dea_tests::*;
use serde_json::{Value, json};
use sha1::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::probe::*;

/// A start message for `app` running `command` (no routes: no health check, the instance
/// is RUNNING as soon as its process is).
fn bare_start(app: &str, url: &str, sha1: &str, command: Option<&str>) -> Value {
    let mut start = super::start_message(app, 0, url, sha1);
    start["name"] = json!(app);
    start["uris"] = json!([]);
    start["start_command"] = json!(command);
    start
}

fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(bytes))
}

/// Everything under `dir`, links not followed: (path, file type, content of regular files).
fn tree_of(dir: &Path) -> Vec<(PathBuf, std::fs::FileType, Option<Vec<u8>>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            let kind = std::fs::symlink_metadata(&path).expect("lstat").file_type();
            if kind.is_dir() {
                stack.push(path.clone());
            }
            let content = kind
                .is_file()
                .then(|| std::fs::read(&path).expect("read a kept file"));
            found.push((path, kind, content));
        }
    }
    found
}

/// A signed link from the agent itself (`dea.find.droplet` with `path`, as `cf files` asks)
/// into a crashed instance of `app`, fetched from the directory server: (status, body).
async fn crashed_file(
    controller: &Controller,
    directory: &dea::files::DirectoryServer,
    app: &str,
    path: &str,
) -> (u16, Vec<u8>) {
    let found = controller
        .request_many(
            "dea.find.droplet",
            &json!({"droplet": app, "states": ["CRASHED"], "path": path}),
            1,
            Duration::from_secs(10),
        )
        .await;
    let uri = found
        .first()
        .and_then(|f| f["file_uri_v2"].as_str())
        .unwrap_or_else(|| panic!("{app}: no file_uri_v2 for {path}: {found:?}"));
    // A FIFO or an endless file must not hold the request either.
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        let response = reqwest::get(local(uri, directory))
            .await
            .expect("GET file_uri_v2");
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap_or_default().to_vec())
    })
    .await;
    response.unwrap_or_else(|_| panic!("{app}: GET {path} did not finish in 10 s"))
}

/// Apps that, once running, turn their logs into links to the agent's private state (or
/// into FIFOs, endless or huge files) and crash. The agent, copying the crash logs as root,
/// must keep none of it: the directory server never serves the agent's key, and every
/// crash is still reported at once while the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_logs_cannot_be_turned_into_the_agents_secrets() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let droplet = make_tgz(&[("./app/README", "an app that attacks its crash logs\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/crasher.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    let directory = &agent.directory;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let db = base.path().join("db");
    let key = std::fs::read(db.join("directory_server.key")).expect("the agent's key");
    assert!(key.len() >= 16, "a real key: {} bytes", key.len());

    // A real attacker reads the base dir from /proc/self/mountinfo; the test just says it.
    let db_path = db.display().to_string();
    let logs = "/home/vcap/logs";
    let apps: Vec<(&str, String)> = vec![
        // The control: an honest crash, whose logs are kept and served. It shows that the
        // listings and files asked for below would be there if the agent had copied them.
        (
            "honest",
            "echo honest-output; echo honest-error >&2; sleep 1; exit 3".into(),
        ),
        // The whole logs directory becomes a link to the agent's db/.
        (
            "logs-link",
            format!(
                "echo before; sleep 1; mv {logs} /home/vcap/old-logs; ln -s {db_path} {logs}; exit 7"
            ),
        ),
        // A real logs directory, with links (absolute and relative) to the key and the
        // registry, a link to /dev/zero and a 100 GB sparse file among the logs.
        (
            "odd-files",
            format!(
                "echo kept-output; sleep 1; rm -f {logs}/stderr.log; \
                 ln -s {db_path}/directory_server.key {logs}/stderr.log; \
                 ln -s {db_path}/instances.json {logs}/instances.json; \
                 ln -s ../../../../db/directory_server.key {logs}/relative.key; \
                 ln -s /dev/zero {logs}/zero.log; truncate -s 100G {logs}/huge.log; exit 7"
            ),
        ),
        // stdout.log becomes a FIFO nobody writes: a copy that opened it would wait forever.
        (
            "fifo-log",
            format!(
                "echo fifo-app; sleep 1; rm -f {logs}/stdout.log; mkfifo {logs}/stdout.log; exit 7"
            ),
        ),
    ];

    let probe = Liveness::start(&nats, agent.id()).await;
    let started = Instant::now();
    for (app, command) in &apps {
        let start = bare_start(
            app,
            &blobs.url("/droplets/crasher.tgz"),
            &sha1,
            Some(&format!("sh -c '{command}'")),
        );
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    let mut crashed = std::collections::HashMap::new();
    for (app, _) in &apps {
        let exited = exits
            .wait_for(Duration::from_secs(30), |m| m["droplet"] == *app)
            .await
            .unwrap_or_else(|| panic!("{app}: no droplet.exited within 30 s"));
        eprintln!(
            "{app}: droplet.exited after {:.1} s: {exited}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(exited["reason"], "CRASHED", "{app}: {exited}");
        let status = if *app == "honest" { 3 } else { 7 };
        assert_eq!(exited["exit_status"], status, "{app}: {exited}");
        crashed.insert(
            *app,
            exited["instance"].as_str().expect("instance").to_string(),
        );
    }
    // Every crash is reported promptly: each app exits ~1 s after it starts.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "crashes reported after {:?}",
        started.elapsed()
    );

    // The control's logs are kept and served: listing and content.
    let (status, listing) = crashed_file(&controller, directory, "honest", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("stdout.log"), "{listing}");
    assert!(listing.contains("stderr.log"), "{listing}");
    let (status, stdout) = crashed_file(&controller, directory, "honest", "logs/stdout.log").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&stdout).contains("honest-output"));

    // logs -> db: nothing of db/ is listed or served.
    let (status, listing) = crashed_file(&controller, directory, "logs-link", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    eprintln!("logs-link: logs/ answered {status}: {listing}");
    assert!(!listing.contains("directory_server.key"), "{listing}");
    assert!(!listing.contains("instances.json"), "{listing}");
    for path in ["logs/directory_server.key", "logs/instances.json"] {
        let (status, body) = crashed_file(&controller, directory, "logs-link", path).await;
        assert_ne!(status, 200, "{path} served");
        assert!(!contains_bytes(&body, &key), "{path} served the key");
    }

    // Links among real logs: the real file is kept, no link is, nothing endless is read.
    let (status, listing) = crashed_file(&controller, directory, "odd-files", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("stdout.log"), "{listing}");
    for name in ["stderr.log", "instances.json", "relative.key", "zero.log"] {
        assert!(!listing.contains(name), "{name} kept: {listing}");
    }
    for path in [
        "logs/stderr.log",
        "logs/relative.key",
        "logs/instances.json",
        "logs/zero.log",
    ] {
        let (status, body) = crashed_file(&controller, directory, "odd-files", path).await;
        assert_ne!(status, 200, "{path} served");
        assert!(!contains_bytes(&body, &key), "{path} served the key");
    }
    let (_, stdout) = crashed_file(&controller, directory, "odd-files", "logs/stdout.log").await;
    assert!(String::from_utf8_lossy(&stdout).contains("kept-output"));

    // The FIFO was not kept (nor waited on); stderr.log was.
    let (status, listing) = crashed_file(&controller, directory, "fifo-log", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("stderr.log"), "{listing}");
    assert!(!listing.contains("stdout.log"), "{listing}");

    // On disk: crashes/ holds regular files and directories only, none of them the key or
    // the registry, and the 100 GB log was kept as a bounded tail.
    let crashes = base.path().join("crashes");
    let kept = tokio::task::spawn_blocking(move || tree_of(&crashes))
        .await
        .expect("walk crashes/");
    assert!(
        kept.iter().any(|(path, _, _)| path.ends_with("stdout.log")),
        "{kept:?}"
    );
    for (path, kind, content) in &kept {
        assert!(
            kind.is_dir() || kind.is_file(),
            "{} is kept as {kind:?}",
            path.display()
        );
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !matches!(
                name.as_deref(),
                Some("directory_server.key" | "instances.json")
            ),
            "{} kept",
            path.display()
        );
        if let Some(content) = content {
            assert_ne!(content, &key, "{} holds the agent's key", path.display());
            assert!(
                content.len() <= 16 << 20,
                "{} kept {} bytes",
                path.display(),
                content.len()
            );
        }
    }
    let of_link = base.path().join("crashes").join(&crashed["logs-link"]);
    assert!(
        tree_of(&of_link).iter().all(|(_, kind, _)| kind.is_dir()),
        "a crash whose logs/ was a link keeps no file: {:?}",
        tree_of(&of_link)
    );

    let report = probe.finish(Duration::from_secs(5)).await;
    report.assert_alive("crash-log attacks");
    let status = controller
        .request_many("dea.status", &json!({}), 1, Duration::from_secs(5))
        .await;
    assert_eq!(status.len(), 1, "dea.status after the crashes");
    agent.shutdown().await;
}

/// Droplets (served with their right sha1, as if staged elsewhere) whose home is made of
/// links out of it, links where the agent needs real directories, or a FIFO where it opens
/// the app's log: each instance ends CRASHED with a reason saying so, and nothing outside
/// its directory is written, chowned or read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droplets_made_of_links_do_not_start() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    // A directory of root's that a followed link would let the agent write into or chown.
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("keep.txt"), "root's\n").expect("sentinel");
    let outside_path = outside.path().display().to_string();
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let bus = BusRecorder::start(&nats).await;
    let shadow = shadow_lines();
    let readme = ("./app/README", Node::File("hello\n"));
    let readme_too = ("./app/README", Node::File("hello\n"));
    let big = format!("start_command: {}\n", "x".repeat(2 << 20));
    let droplets: Vec<(&str, Vec<u8>, &[&str])> = vec![
        // /app would be a bind mount of the instance's directory.
        (
            "app-up",
            droplet_tgz(&[("./app", Node::Link(".."))]),
            &["\"app\" is a link", "outside the app directory"],
        ),
        // stdout.log would be created (and the tree chowned) in a directory of root's.
        (
            "logs-out",
            droplet_tgz(&[readme, ("./logs", Node::Link(&outside_path))]),
            &["\"logs\" is a link", "outside the app directory"],
        ),
        // Each link harmless by name; together they climb out of the home.
        (
            "chain",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./d", Node::Dir),
                ("./d/up", Node::Link("..")),
                ("./tmp", Node::Link("d/up/..")),
            ]),
            &["\"tmp\" is a link", "outside the app directory"],
        ),
        // Links that stay inside the home, where the agent needs real directories.
        (
            "app-inside",
            droplet_tgz(&[
                ("./elsewhere/README", Node::File("hello\n")),
                ("./app", Node::Link("elsewhere")),
            ]),
            &["./app must be a directory"],
        ),
        (
            "logs-inside",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./logs", Node::Link("app")),
            ]),
            &["./logs must be a directory"],
        ),
        // The start command would be read from /etc/shadow.
        (
            "info-shadow",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./staging_info.yml", Node::Link("/etc/shadow")),
            ]),
            &[
                "\"staging_info.yml\" is a link",
                "outside the app directory",
            ],
        ),
        // The agent opens logs/stdout.log for the container's output.
        (
            "fifo-log",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./logs/stdout.log", Node::Fifo),
            ]),
            &["logs/stdout.log", "FIFO"],
        ),
        // A staging_info.yml that is a link inside the home, to something too big to read,
        // or a directory: refused when the agent reads the start command from it.
        (
            "info-huge",
            droplet_tgz(&[
                ("./app/big.yml", Node::File(&big)),
                ("./staging_info.yml", Node::Link("app/big.yml")),
            ]),
            &["staging_info.yml", "larger than the limit"],
        ),
        (
            "info-dir",
            droplet_tgz(&[readme_too, ("./staging_info.yml/x", Node::File("x"))]),
            &["staging_info.yml", "not a regular file"],
        ),
    ];
    let served: Vec<(String, Vec<u8>)> = droplets
        .iter()
        .map(|(name, bytes, _)| (format!("/droplets/{name}.tgz"), bytes.clone()))
        .collect();
    let blobs = BlobStore::start(
        served
            .iter()
            .map(|(path, bytes)| (path.as_str(), bytes.clone()))
            .collect(),
    )
    .await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");

    let probe = Liveness::start(&nats, agent.id()).await;
    for (name, bytes, _) in &droplets {
        // No start command in the message: the droplet's staging_info.yml must give it.
        let command = (!name.starts_with("info-")).then_some("sleep 600");
        let start = bare_start(
            name,
            &blobs.url(&format!("/droplets/{name}.tgz")),
            &sha1_hex(bytes),
            command,
        );
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    let mut exited_all = Vec::new();
    for (name, _, _) in &droplets {
        let exited = exits
            .wait_for(Duration::from_secs(30), |m| m["droplet"] == *name)
            .await
            .unwrap_or_else(|| panic!("{name}: no droplet.exited within 30 s"));
        eprintln!("{name}: {}", exited["exit_description"]);
        exited_all.push(exited);
    }
    for ((name, _, expected), exited) in droplets.iter().zip(&exited_all) {
        assert_eq!(exited["reason"], "CRASHED", "{name}: {exited}");
        let description = exited["exit_description"].as_str().unwrap_or_default();
        for part in *expected {
            assert!(
                description.contains(part),
                "{name}: {description:?} lacks {part:?}"
            );
        }
    }
    let report = probe.finish(Duration::from_secs(5)).await;

    // Nothing ran, nothing outside was touched, nothing of /etc/shadow went anywhere.
    assert!(runc_containers(base.path()).await.is_empty());
    assert_eq!(names_in(outside.path()), vec!["keep.txt".to_string()]);
    let meta = std::fs::metadata(outside.path()).expect("outside");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "outside chowned"
    );
    let keep = std::fs::metadata(outside.path().join("keep.txt")).expect("keep.txt");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&keep),
        0,
        "keep.txt chowned"
    );
    for message in bus.all() {
        assert_no_shadow(&shadow, "a message on the bus", &message);
    }
    report.assert_alive("hostile droplets");
    agent.shutdown().await;
}

/// An app over its disk limit is stopped, however it arranges its files: one that first
/// nests directories deeper than the agent's usage walk goes must not make its usage
/// unmeasurable, and so unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_trees_do_not_hide_disk_use() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let droplet = make_tgz(&[("./app/README", "an app that fills its disk\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/filler.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    // 320 MiB against the 256 MiB limit of `start_message`, then waiting to be stopped.
    let fill = "dd if=/dev/zero of=fill bs=1M count=320 2>/dev/null; sleep 600";
    let apps = [
        // The control: the same fill, no tree.
        ("flat-filler", format!("cd /home/vcap/tmp; {fill}")),
        // 300 nested directories first (the walk stops at 256).
        (
            "deep-filler",
            format!("cd /home/vcap/tmp; mkdir -p $(printf \"d/%.0s\" $(seq 300)); {fill}"),
        ),
    ];
    let probe = Liveness::start(&nats, agent.id()).await;
    for (app, command) in &apps {
        let start = bare_start(
            app,
            &blobs.url("/droplets/filler.tgz"),
            &sha1,
            Some(&format!("sh -c '{command}'")),
        );
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    for (app, _) in &apps {
        // The disk is checked every second here: 30 s is ample to write 320 MiB and be seen.
        let exited = exits
            .wait_for(Duration::from_secs(30), |m| m["droplet"] == *app)
            .await
            .unwrap_or_else(|| panic!("{app}: still running 30 s after filling its disk"));
        eprintln!("{app}: {}", exited["exit_description"]);
        assert_eq!(exited["reason"], "CRASHED", "{app}: {exited}");
        let description = exited["exit_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("disk limit") || description.contains("deeper than"),
            "{app}: {description:?}"
        );
    }
    let report = probe.finish(Duration::from_secs(5)).await;
    report.assert_alive("disk fillers");
    agent.shutdown().await;
}

/// A running app fills its home with a FIFO, links to /etc/shadow, to the agent's key and to
/// /dev/zero, then asks for them through the directory server (`cf files`): nothing is
/// served from outside the home, the FIFO and the device hold no request, and the agent
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_apps_links_and_fifos_are_not_served() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let shadow = shadow_lines();
    let droplet = make_tgz(&[("./app/README", "an app that plants in its home\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/planter-app.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let key = std::fs::read(base.path().join("db/directory_server.key")).expect("the key");
    let command = format!(
        "cd /home/vcap/app; mkfifo pipe; ln -s /etc/shadow shadow; \
         ln -s ../../../../db/directory_server.key key; ln -s {}/db db; \
         ln -s /dev/zero zero; echo real > real.txt; sleep 600",
        base.path().display()
    );
    let probe = Liveness::start(&nats, agent.id()).await;
    let start = bare_start(
        "home-planter",
        &blobs.url("/droplets/planter-app.tgz"),
        &sha1,
        Some(&format!("sh -c '{command}'")),
    );
    controller
        .publish(&format!("dea.{}.start", agent.id()), &start)
        .await;
    // `tail` (a query flag, outside the signed path) streams a file as it grows.
    let get = |path: &'static str, tail: bool| {
        let controller = &controller;
        let directory = &agent.directory;
        async move {
            let found = controller
                .request_many(
                    "dea.find.droplet",
                    &json!({"droplet": "home-planter", "states": ["RUNNING"], "path": path}),
                    1,
                    Duration::from_secs(5),
                )
                .await;
            let uri = found.first().and_then(|f| f["file_uri_v2"].as_str())?;
            let fetched = tokio::time::timeout(Duration::from_secs(10), async {
                let url = local(uri, directory) + if tail { "&tail&tail_offset=0" } else { "" };
                let mut response = reqwest::get(url).await.ok()?;
                let status = response.status().as_u16();
                if tail {
                    // A tail that works never ends: its first chunk is enough.
                    let first = tokio::time::timeout(Duration::from_secs(3), response.chunk());
                    let first = first.await.ok().and_then(Result::ok).flatten();
                    return Some((status, first.unwrap_or_default().to_vec()));
                }
                Some((status, response.bytes().await.unwrap_or_default().to_vec()))
            })
            .await;
            fetched.unwrap_or_else(|_| panic!("GET {path} did not finish in 10 s"))
        }
    };
    // The app has planted everything once real.txt is there.
    let mut ready = false;
    for _ in 0..150 {
        if get("app/real.txt", false)
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "the app never became RUNNING with its files planted");
    let (status, listing) = get("app/", false).await.expect("the app's listing");
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("pipe"), "the plants are there: {listing}");
    // Tailing works on a real file, so its refusal below means something.
    let (status, real) = get("app/real.txt", true).await.expect("tail real.txt");
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&real), "real\n");
    for (path, tail) in [
        ("app/pipe", false),
        ("app/pipe", true),
        ("app/shadow", false),
        ("app/shadow", true),
        ("app/key", false),
        ("app/db/directory_server.key", false),
        ("app/db/", false),
        ("app/zero", false),
        ("app/zero", true),
    ] {
        let (status, body) = get(path, tail)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer"));
        eprintln!("{path} (tail: {tail}): {status}");
        assert_ne!(status, 200, "{path} served");
        assert!(!contains_bytes(&body, &key), "{path} served the key");
        assert_no_shadow(&shadow, path, &body);
    }
    let report = probe.finish(Duration::from_secs(5)).await;
    report.assert_alive("serving a hostile home");
    controller
        .publish("dea.stop", &json!({"droplet": "home-planter"}))
        .await;
    agent.shutdown().await;
}

/// An instance's home is the tenant's disk: once the instance has crashed (its logs kept
/// under `crashes/`) or been stopped, the home must go. Otherwise an app that fills its disk
/// and crashes, restarted by the health manager again and again, leaves a full home behind
/// each time, outside every limit, until the host's disk is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_homes_do_not_outlive_their_instances() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let droplet = make_tgz(&[("./app/README", "an app that leaves things behind\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/leaver.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let url = blobs.url("/droplets/leaver.tgz");
    for (app, command) in [
        (
            "crash-leaver",
            "dd if=/dev/zero of=/home/vcap/tmp/junk bs=1M count=20 2>/dev/null; exit 1",
        ),
        (
            "stop-leaver",
            "dd if=/dev/zero of=/home/vcap/tmp/junk bs=1M count=20 2>/dev/null; sleep 600",
        ),
    ] {
        let start = bare_start(app, &url, &sha1, Some(&format!("sh -c '{command}'")));
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    let crashed = exits
        .wait_for(Duration::from_secs(30), |m| m["droplet"] == "crash-leaver")
        .await
        .expect("the crash is reported");
    let crashed = crashed["instance"].as_str().expect("instance").to_string();
    let mut running = Vec::new();
    for _ in 0..100 {
        running = controller
            .request_many(
                "dea.find.droplet",
                &json!({"droplet": "stop-leaver", "states": ["RUNNING"]}),
                1,
                Duration::from_millis(500),
            )
            .await;
        if !running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = running
        .first()
        .and_then(|r| r["instance"].as_str())
        .expect("stop-leaver runs")
        .to_string();
    // Its 20 MiB are written before it is stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    controller
        .publish("dea.stop", &json!({"droplet": "stop-leaver"}))
        .await;
    let instances = base.path().join("instances");
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = loop {
        let left: Vec<String> = names_in(&instances)
            .into_iter()
            .filter(|id| *id == crashed || *id == stopped)
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The crash's logs are what is kept of it.
    assert!(
        base.path()
            .join("crashes")
            .join(&crashed)
            .join("logs")
            .is_dir(),
        "the crash's logs are kept"
    );
    assert!(
        left.is_empty(),
        "instance directories left after crash ({crashed}) and stop ({stopped}): {left:?}"
    );
    agent.shutdown().await;
}
