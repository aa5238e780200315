//! Instance start benchmarks, each against a baseline measured in the same run:
//!
//! (a) start request → RUNNING for a cached ~10 MB droplet whose app is nginx serving the
//!     droplet's files, by step (droplet, extract, container, health_check), against the same
//!     start command run as a bare process on the host until its port accepts: the difference
//!     is what the agent adds (unpacking, network, container, health check).
//! (b) 50 instances started at once: total time, against 50 bare starts, and the agent
//!     process's RSS before and after.
//!
//! Run with `cargo bench -p dea --bench instances` as root, with runc and nginx installed.
//! Prints ratios; exits non-zero only if a setup step fails.

use dea::config::Config;
use dea::instance::{InstanceManager, InstanceSettings, InstanceState, StartRequest};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

type BoxError = Box<dyn std::error::Error>;

/// nginx in the foreground, one process, everything it writes under /tmp (the container's
/// tmpfs): the start command of a static site, the way the staticfile buildpack runs it.
const NGINX_CONF: &str = "daemon off;\nmaster_process off;\nworker_processes 1;\n\
pid /tmp/nginx.pid;\nerror_log stderr warn;\nevents { worker_connections 256; }\n\
http {\n  access_log off;\n  client_body_temp_path /tmp/body;\n  proxy_temp_path /tmp/proxy;\n\
  fastcgi_temp_path /tmp/fastcgi;\n  uwsgi_temp_path /tmp/uwsgi;\n  scgi_temp_path /tmp/scgi;\n\
  server { listen @PORT@; root @ROOT@; }\n}\n";

/// The start command: the port (and root) are only known at start. `HOME` is the app's
/// directory, as on Cloud Foundry.
const START: &str = "sed -e \"s/@PORT@/$PORT/\" -e \"s|@ROOT@|$HOME|\" $HOME/nginx.conf \
> /tmp/nginx.conf && exec /usr/sbin/nginx -p /tmp/ -c /tmp/nginx.conf -e stderr";

fn main() {
    if let Err(e) = run() {
        eprintln!("benchmark setup failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BoxError> {
    if Command::new("/usr/sbin/nginx").arg("-v").output().is_err() {
        return Err("nginx is not installed (apt-get install nginx-light)".into());
    }
    let scratch = tempfile::tempdir()?;
    let scratch = scratch.path();
    let runtime = tokio::runtime::Runtime::new()?;
    // A ~10 MB droplet: a page, the nginx config and incompressible ballast.
    let staged = scratch.join("instance-tree");
    std::fs::create_dir_all(staged.join("app"))?;
    std::fs::write(staged.join("app/index.html"), "<h1>bench</h1>\n")?;
    std::fs::write(staged.join("app/nginx.conf"), NGINX_CONF)?;
    std::fs::write(staged.join("app/ballast.bin"), support::noise(10 << 20))?;
    std::fs::write(
        staged.join("staging_info.yml"),
        format!("detected_buildpack: staticfile\nstart_command: '{START}'\n"),
    )?;
    let droplet = scratch.join("instance.tgz");
    let packed = dea::droplet::pack_tree(&staged, &droplet, 6, 2)?;
    let mut config = Config {
        base_dir: scratch.join("instances-base"),
        ..Config::default()
    };
    config.instances.stop_grace_secs = 2;
    let settings = InstanceSettings::from_config(&config);
    let runc = dea::container::Runc {
        binary: "runc".into(),
        state_dir: config.base_dir.join("runc"),
        bundles_dir: config.base_dir.join("bundles"),
        rootfs: None,
    };
    let manager = InstanceManager::new(settings, runc)?;
    let request = |memory_mb| StartRequest {
        droplet: droplet.display().to_string(),
        sha1: Some(packed.sha1.clone()),
        application_id: "bench".into(),
        name: "bench".into(),
        index: 0,
        env: Vec::new(),
        host_port: 0,
        memory_mb,
        disk_mb: 64,
        start_command: None,
        health_check: true,
        health_check_timeout: Duration::from_secs(60),
        ..Default::default()
    };

    // Baseline: the same command, bare, in the same tree, until its port accepts.
    let bare_home = scratch.join("bare-home");
    std::fs::create_dir_all(&bare_home)?;
    dea::droplet::unpack_source(&droplet, &bare_home, dea::droplet::UnpackLimits::default())?;
    let bare_tmp = scratch.join("bare-tmp");
    std::fs::create_dir_all(&bare_tmp)?;
    let mut bare_times = Vec::new();
    for _ in 0..6 {
        bare_times.push(bare_start(&bare_home, &bare_tmp)?);
    }
    bare_times.remove(0);
    let bare = median(&mut bare_times);

    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut totals = Vec::new();
    // The first start fills the droplet store; the next five are measured.
    for _ in 0..6 {
        let started = Instant::now();
        let info = runtime.block_on(manager.start(request(128)))?;
        totals.push(ms(started.elapsed()));
        if info.state != InstanceState::Running {
            let log = config
                .base_dir
                .join("crashes")
                .join(&info.instance_id)
                .join("logs/stderr.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(
                format!("instance did not start: {:?}\n{log}", info.exit_description).into(),
            );
        }
        for (step, ms) in &info.start_timings_ms {
            steps.entry(step.clone()).or_default().push(*ms);
        }
        runtime.block_on(manager.stop(&info.instance_id))?;
    }
    totals.remove(0);
    let total = median(&mut totals);
    println!("(a) start request -> RUNNING, cached 10 MB droplet, nginx app (median of 5)");
    println!("    dea start -> RUNNING:            {total:>8.1} ms  (target <= 50 ms)");
    for step in ["droplet", "extract", "container", "health_check"] {
        if let Some(values) = steps.get_mut(step) {
            values.remove(0);
            println!("      {step:<30} {:>8.1} ms", median(values));
        }
    }
    println!("    bare nginx, spawn -> accepting:  {bare:>8.1} ms");
    println!(
        "    agent overhead: {:.1} ms; ratio dea/bare {:.1}x",
        total - bare,
        total / bare
    );
    println!(
        "bench-result|start -> RUNNING, 10 MB droplet (ms)|{total:.1}|{bare:.1} bare|{:.2}x|<= 50 ms",
        total / bare
    );

    let rss_before = support::rss_mb("self");
    let started = Instant::now();
    let infos = runtime.block_on(async {
        let starts = (0..50).map(|_| manager.start(request(32)));
        futures_util::future::join_all(starts).await
    });
    let elapsed = started.elapsed();
    let rss_after = support::rss_mb("self");
    let running = infos
        .iter()
        .filter(|i| matches!(i, Ok(info) if info.state == InstanceState::Running))
        .count();
    let stop_all = |infos: Vec<Result<dea::instance::InstanceInfo, _>>| {
        let manager: &Arc<InstanceManager> = &manager;
        runtime.block_on(async {
            for info in infos.into_iter().flatten() {
                let _ = manager.stop(&info.instance_id).await;
            }
        })
    };
    stop_all(infos);
    // The agent's nftables table goes with its last instance, as when `dea serve` stops.
    runtime.block_on(manager.release_network_if_idle());
    let bare_started = Instant::now();
    for _ in 0..50 {
        bare_start(&bare_home, &bare_tmp)?;
    }
    let bare_elapsed = bare_started.elapsed();
    println!("(b) 50 instances at once");
    println!(
        "    dea: {running}/50 RUNNING in {:.2} s; 50 bare starts one by one {:.2} s; ratio {:.1}x",
        elapsed.as_secs_f64(),
        bare_elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / bare_elapsed.as_secs_f64()
    );
    println!("    agent process RSS: {rss_before:.1} MB idle -> {rss_after:.1} MB with 50 running");
    println!(
        "bench-result|50 starts at once (s)|{:.2}|{:.2} bare|{:.2}x|",
        elapsed.as_secs_f64(),
        bare_elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / bare_elapsed.as_secs_f64()
    );
    Ok(())
}

/// Runs the start command bare (a fresh port) until it accepts a connection; the time from
/// spawn to accepting, in ms. The process is stopped before returning.
fn bare_start(home: &Path, tmp: &Path) -> Result<f64, BoxError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let command = START.replace("/tmp/", &format!("{}/", tmp.display()));
    let started = Instant::now();
    let mut child = Command::new("bash")
        .args(["-c", &command])
        .env("PORT", port.to_string())
        .env("HOME", home.join("app"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = started + Duration::from_secs(10);
    let elapsed = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break ms(started.elapsed());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("bare nginx never listened".into());
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    child.kill()?;
    child.wait()?;
    Ok(elapsed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
