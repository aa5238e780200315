//! The NATS agent, against a real `nats-server` on loopback, with baselines from the same run:
//!
//! (a) a staging request for a trivial app (the static example, as a zip served over HTTP)
//!     to its completion reply, against the same staging called in-process (no bus, no
//!     download, no upload): the difference is the agent's own overhead, and a `dea.status`
//!     request/reply gives the bus's round trip;
//! (b) 100 `dea.<uuid>.start` requests published in a burst, until all 100 instances are
//!     RUNNING (their `router.register` messages seen), against one start alone.
//!
//! Run with `cargo bench -p dea --bench agent` after `scripts/build-plugins`, as root with
//! runc and nats-server installed. Exits non-zero only if a setup step fails.
//! `DEA_BENCH_MEMORY_ONLY=1` runs section (c) alone (minutes less when working on memory);
//! `DEA_BENCH_HOLD_SECS=N` keeps the measured `dea serve` running N seconds after each
//! figure, so its /proc/PID/smaps or allocator can be looked at.

use dea::buildpack::BuildpackSet;
use dea::config::Config;
use dea::staging::StagingRequest;
use futures_util::StreamExt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

mod support;

type BoxError = Box<dyn std::error::Error>;

fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark setup failed: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("benchmark setup failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let scratch = tempfile::tempdir()?;
    let nats = NatsServer::start()?;
    let package = zip_dir(&root.join("examples/static-site"))?;
    std::fs::write(scratch.path().join("app.zip"), &package)?;
    let blobs = blob_server(package).await?;

    let mut config = Config {
        base_dir: scratch.path().join("base"),
        buildpack_dirs: vec![root.join("target/buildpacks")],
        ..Config::default()
    };
    config.agent.nats_servers = vec![format!("nats://127.0.0.1:{}", nats.port)];
    config.agent.staging_memory_mb = 64;
    config.agent.staging_disk_mb = 64;
    config.instances.memory_capacity_mb = Some(64 * 1024);
    config.instances.stop_grace_secs = 2;
    let buildpacks = BuildpackSet::discover(
        &config.buildpack_dirs,
        &config.buildpack_order,
        &config.buildpack_unpack_dir(),
    )?;
    if buildpacks.is_empty() {
        return Err("target/buildpacks is empty: run scripts/build-plugins".into());
    }
    config.directory_server.enabled = false;
    if std::env::var_os("DEA_BENCH_MEMORY_ONLY").is_some() {
        // (c) needs a droplet: one in-process staging makes it.
        let stager = dea::staging::Stager::from_config(config, buildpacks)?;
        let output = scratch.path().join("direct.tgz");
        stager
            .stage(StagingRequest::new(
                scratch.path().join("app.zip"),
                output.clone(),
            ))
            .await?;
        return serve_memory(&root, scratch.path(), nats.port, std::fs::read(output)?).await;
    }
    let node = dea::node::Node::start(config, buildpacks).await?;
    let (agent, stager) = (node.agent.clone(), node.stager.clone());
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port)).await?;
    let subject = format!("staging.{}.start", agent.id());
    // The agent connects in the background: its first advertisement says it is listening.
    let mut advertise = client.subscribe("dea.advertise").await?;
    tokio::time::timeout(Duration::from_secs(30), advertise.next())
        .await?
        .ok_or("no advertisement")?;
    drop(advertise);

    // (a) staging.
    let status_rtt = median(20, || async {
        request(&client, "dea.status", "{}".into(), 1).await?;
        Ok(())
    })
    .await?;
    let direct = median(10, || async {
        let output = scratch.path().join("direct.tgz");
        stager
            .stage(StagingRequest::new(scratch.path().join("app.zip"), output))
            .await?;
        Ok(())
    })
    .await?;
    let mut totals = Vec::new();
    let mut setup_times = Vec::new();
    // One warm-up staging, then ten measured.
    for task in 0..11 {
        let message = serde_json::json!({
            "app_id": "bench", "task_id": format!("bench-{task}"),
            "download_uri": format!("http://{}/app.zip", blobs),
            "upload_uri": format!("http://{}/upload", blobs),
        })
        .to_string();
        let started = Instant::now();
        let replies = request_timed(&client, &subject, message, 2).await?;
        let (done_at, done) = replies.last().ok_or("no reply")?;
        if !done["error"].is_null() {
            return Err(format!("staging failed: {done}").into());
        }
        if task > 0 {
            totals.push(*done_at - started);
            setup_times.push(replies[0].0 - started);
        }
    }
    totals.sort();
    let over_nats = totals[totals.len() / 2];
    setup_times.sort();
    let setup = setup_times[setup_times.len() / 2];
    println!(
        "(a) staging a trivial app (static example, {} runs, medians):",
        10
    );
    println!(
        "    over NATS, request -> completion reply: {:.1} ms (setup reply after {:.1} ms)",
        ms(over_nats),
        ms(setup)
    );
    println!(
        "    the same staging called in-process:     {:.1} ms",
        ms(direct)
    );
    println!(
        "bench-result|staging over NATS, agent overhead (ms)|{:.1}|{:.1} in-process||",
        ms(over_nats),
        ms(direct)
    );
    println!(
        "    agent overhead (download, droplet copy, upload, replies): {:.1} ms = {:.0}% of the total; bus round trip (dea.status): {:.2} ms",
        ms(over_nats.saturating_sub(direct)),
        100.0 * over_nats.saturating_sub(direct).as_secs_f64() / over_nats.as_secs_f64(),
        ms(status_rtt)
    );

    // (b) a burst of starts.
    let sha1 = {
        let replies = request_timed(
            &client,
            &subject,
            serde_json::json!({
                "app_id": "burst", "task_id": "burst-stage",
                "download_uri": format!("http://{}/app.zip", blobs),
                "upload_uri": format!("http://{}/upload", blobs),
            })
            .to_string(),
            2,
        )
        .await?;
        replies
            .last()
            .and_then(|r| r.1["droplet_sha1"].as_str().map(str::to_string))
            .ok_or("no droplet_sha1")?
    };
    let start = |app: &str, index: u32| {
        serde_json::json!({
            "droplet": app, "name": app, "uris": [format!("{app}.bench.local")], "version": "v1",
            "index": index, "sha1": sha1, "executableUri": format!("http://{}/none", blobs),
            "limits": {"mem": 64, "disk": 64, "fds": 1024}, "cc_partition": "default",
        })
        .to_string()
    };
    let mut registers = client.subscribe("router.register").await?;
    client.flush().await?;
    let started = Instant::now();
    client
        .publish(
            format!("dea.{}.start", agent.id()),
            start("single", 0).into(),
        )
        .await?;
    wait_registrations(&mut registers, "single", 1).await?;
    let single = started.elapsed();
    let started = Instant::now();
    for index in 0..100 {
        client
            .publish(
                format!("dea.{}.start", agent.id()),
                start("burst", index).into(),
            )
            .await?;
    }
    client.flush().await?;
    wait_registrations(&mut registers, "burst", 100).await?;
    let burst = started.elapsed();
    println!("(b) start requests over NATS until RUNNING (router.register seen):");
    println!("    one alone:            {:.0} ms", ms(single));
    println!(
        "    100 in a burst:       {:.0} ms ({:.1} ms per instance; {:.1}x the time of one for 100x the work)",
        ms(burst),
        ms(burst) / 100.0,
        burst.as_secs_f64() / single.as_secs_f64()
    );
    // Where the burst's time went, per instance (medians of each start step).
    let mut steps: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for info in agent.instances().list() {
        if info.application_id == "burst" {
            for (step, ms) in &info.start_timings_ms {
                steps.entry(step.clone()).or_default().push(*ms);
            }
        }
    }
    let medians: Vec<String> = steps
        .iter_mut()
        .map(|(step, times)| {
            times.sort_by(f64::total_cmp);
            format!("{step} {:.0} ms", times[times.len() / 2])
        })
        .collect();
    println!(
        "    per instance in the burst (medians): {}",
        medians.join(", ")
    );
    agent.shutdown().await;

    // (c) memory of a real agent process.
    let droplet = std::fs::read(scratch.path().join("direct.tgz"))?;
    serve_memory(&root, scratch.path(), nats.port, droplet).await?;
    Ok(())
}

/// Section (c): `dea serve` as its own process (the release binary, `DEA_BIN` or
/// target/release/dea), directory server on: its RSS once idle, then with 50 instances
/// RUNNING. Skipped, saying so, when the binary is not built.
async fn serve_memory(
    root: &Path,
    scratch: &Path,
    nats_port: u16,
    droplet: Vec<u8>,
) -> Result<(), BoxError> {
    use sha1::Digest;
    let binary = std::env::var_os("DEA_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("target"), std::path::PathBuf::from);
            target.join("release/dea")
        });
    if !binary.exists() {
        println!(
            "(c) skipped: {} is not built (cargo build --release -p dea-cli)",
            binary.display()
        );
        return Ok(());
    }
    let sha1 = hex::encode(sha1::Sha1::digest(&droplet));
    let blobs = blob_server_with(Vec::new(), Some(droplet)).await?;
    let files_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = scratch.join("serve.yml");
    std::fs::write(
        &config,
        format!(
            "base_dir: {}\nbuildpack_dirs: [{}]\nagent:\n  nats_servers: [nats://127.0.0.1:{nats_port}]\n\
             directory_server:\n  enabled: true\n  listen: 127.0.0.1\n  port: {files_port}\n\
             instances:\n  memory_capacity_mb: 65536\n  stop_grace_secs: 2\n",
            scratch.join("serve-base").display(),
            root.join("target/buildpacks").display(),
        ),
    )?;
    let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    let mut hello = client.subscribe("dea.advertise").await?;
    client.flush().await?;
    let mut child = std::process::Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config)
        // The preload's summary line says when start-up work (compiling the default
        // buildpacks in child processes) is over: idle is measured after it.
        .env("DEA_LOG", "warn,dea::buildpack::runners=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (preloaded_tx, preloaded) = tokio::sync::oneshot::channel::<()>();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(preloaded_tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("preloaded wasm buildpacks")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
    }
    let result = async {
        let id = loop {
            let message = tokio::time::timeout(Duration::from_secs(60), hello.next())
                .await?
                .ok_or("no advertisement")?;
            let value: serde_json::Value = serde_json::from_slice(&message.payload)?;
            if let Some(id) = value["id"].as_str() {
                break id.to_string();
            }
        };
        // Idle once settled: a fresh state directory first compiles the default buildpacks
        // (seconds, in child processes), so wait for the preload to end, then for the RSS
        // to hold still (the allocator hands freed pages back after about ten seconds).
        let _ = tokio::time::timeout(Duration::from_secs(300), preloaded).await;
        let idle = settled_rss(pid).await;
        let idle_anon = support::anon_mb(&pid.to_string());
        hold(pid, "idle").await;
        let mut registers = client.subscribe("router.register").await?;
        client.flush().await?;
        for index in 0..50 {
            let message = serde_json::json!({
                "droplet": "mem", "name": "mem", "uris": ["mem.bench.local"], "version": "v1",
                "index": index, "sha1": sha1,
                "executableUri": format!("http://{blobs}/droplet.tgz"),
                "limits": {"mem": 32, "disk": 64, "fds": 1024}, "cc_partition": "default",
            });
            client
                .publish(format!("dea.{id}.start"), message.to_string().into())
                .await?;
        }
        client.flush().await?;
        wait_registrations(&mut registers, "mem", 50).await?;
        let busy = settled_rss(pid).await;
        let busy_anon = support::anon_mb(&pid.to_string());
        hold(pid, "50 running").await;
        println!("(c) a `dea serve` process (directory server on), RSS (of it anonymous):");
        println!("    idle:                 {idle:>6.1} MB ({idle_anon:.1} MB) (target <= 30 MB)");
        println!("    with 50 RUNNING:      {busy:>6.1} MB ({busy_anon:.1} MB) (target <= 40 MB)");
        println!("bench-result|dea serve RSS idle (MB)|{idle:.1}|||<= 30 MB");
        println!("bench-result|dea serve RSS, 50 running (MB)|{busy:.1}|||<= 40 MB");
        Ok::<(), BoxError>(())
    }
    .await;
    // TERM stops the agent's instances before it exits.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    result
}

/// Waits `DEA_BENCH_HOLD_SECS` (when set), saying which process is held and in which state.
async fn hold(pid: u32, state: &str) {
    let secs = std::env::var("DEA_BENCH_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(secs) = secs {
        eprintln!("(c) holding `dea serve` pid {pid} ({state}) for {secs} s");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// `pid`'s RSS once fifteen samples a second apart stay within 0.5 MB (at most three
/// minutes): longer than jemalloc's ten seconds of decay, so pages freed just before are
/// not counted as held.
async fn settled_rss(pid: u32) -> f64 {
    const STILL: usize = 15;
    let mut samples = Vec::new();
    for _ in 0..180 {
        samples.push(support::rss_mb(&pid.to_string()));
        if samples.len() >= STILL {
            let last = &samples[samples.len() - STILL..];
            let (low, high) = last
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
            if high - low < 0.5 {
                return *last.last().unwrap_or(&0.0);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.last().copied().unwrap_or(0.0)
}

/// Median of `runs` timings of `f`, after one warm-up call.
async fn median<F, Fut>(runs: usize, mut f: F) -> Result<Duration, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    f().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn request(
    client: &async_nats::Client,
    subject: &str,
    payload: String,
    count: usize,
) -> Result<Vec<serde_json::Value>, BoxError> {
    Ok(request_timed(client, subject, payload, count)
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Publishes a request and collects `count` replies with their arrival times.
async fn request_timed(
    client: &async_nats::Client,
    subject: &str,
    payload: String,
    count: usize,
) -> Result<Vec<(Instant, serde_json::Value)>, BoxError> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject.to_string(), inbox, payload.into())
        .await?;
    let mut out = Vec::new();
    while out.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(120), replies.next())
            .await?
            .ok_or("reply subscription ended")?;
        out.push((Instant::now(), serde_json::from_slice(&message.payload)?));
    }
    Ok(out)
}

async fn wait_registrations(
    registers: &mut async_nats::Subscriber,
    app: &str,
    count: usize,
) -> Result<(), BoxError> {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(300), registers.next())
            .await?
            .ok_or("router.register subscription ended")?;
        let value: serde_json::Value = serde_json::from_slice(&message.payload)?;
        if value["app"] == app {
            seen.insert(value["private_instance_id"].to_string());
        }
    }
    Ok(())
}

/// A `nats-server` child on a free loopback port, killed on drop.
struct NatsServer {
    port: u16,
    child: std::process::Child,
}

impl NatsServer {
    fn start() -> Result<NatsServer, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server: {e} (apt-get install nats-server)"))?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(NatsServer { port, child });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err("nats-server did not start".into())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the package at `/app.zip` and accepts uploads at `/upload`; returns its address.
async fn blob_server(package: Vec<u8>) -> Result<std::net::SocketAddr, BoxError> {
    blob_server_with(package, None).await
}

/// [`blob_server`], also serving `droplet` (when given) at `/droplet.tgz`.
async fn blob_server_with(
    package: Vec<u8>,
    droplet: Option<Vec<u8>>,
) -> Result<std::net::SocketAddr, BoxError> {
    let package = bytes::Bytes::from(package);
    let droplet = bytes::Bytes::from(droplet.unwrap_or_default());
    let app = axum::Router::new()
        .route(
            "/droplet.tgz",
            axum::routing::get(move || {
                let droplet = droplet.clone();
                async move { droplet }
            }),
        )
        .route(
            "/app.zip",
            axum::routing::get(move || {
                let package = package.clone();
                async move { package }
            }),
        )
        .route(
            "/upload",
            axum::routing::post(|body: axum::body::Bytes| async move {
                let _ = body.len();
                axum::http::StatusCode::CREATED
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

fn zip_dir(dir: &Path) -> Result<Vec<u8>, BoxError> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            writer.start_file(name, zip::write::SimpleFileOptions::default())?;
            writer.write_all(&std::fs::read(&path)?)?;
        }
    }
    Ok(writer.finish()?.into_inner())
}
