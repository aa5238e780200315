//! `dea serve` as a process, driven the way a controller drives it over a real nats-server:
//! apps keep serving while the agent is killed and restarted (the kernel, not the agent,
//! carries their traffic), and shutdown is bounded even when NATS is gone.

mod common;

use common::{free_port, root};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, up to `limit`; its status, or `None` if it still runs.
    fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn nats_server(port: u16) -> Reaped {
    Reaped(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)"),
    )
}

/// `dea serve` with `base` as its state, on the NATS at `url`.
fn serve(base: &Path, url: &str) -> Reaped {
    let config = base.join("dea.yml");
    std::fs::write(
        &config,
        format!(
            "base_dir: {}\nbuildpack_dirs: [{}]\nagent:\n  nats_servers: [{url}]\n  advertise_interval_secs: 1\n  heartbeat_interval_secs: 1\n  router_register_interval_secs: 1\ninstances:\n  memory_capacity_mb: 2048\n  stop_grace_secs: 3\n  health_check_interval_secs: 1\ndirectory_server:\n  port: 0\n",
            base.join("state").display(),
            root().join("target/buildpacks").display(),
        ),
    )
    .expect("config");
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_dea"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dea serve starts"),
    )
}

/// Stages the built-in example with the CLI; the droplet's path and SHA-1.
fn staged_example(base: &Path) -> (PathBuf, String) {
    let droplet = base.join("example.tgz");
    let out = Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(root())
        .arg("--base-dir")
        .arg(base.join("staging-state"))
        .args(["stage", "examples/static-site", "-o"])
        .arg(&droplet)
        .output()
        .expect("dea stage");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use sha1::Digest;
    let sha1 = hex::encode(sha1::Sha1::digest(
        std::fs::read(&droplet).expect("droplet"),
    ));
    (droplet, sha1)
}

/// Serves one file over HTTP on 127.0.0.1 (the controller's blobstore).
async fn serve_file(path: PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/droplet",
        axum::routing::get(move || {
            let path = path.clone();
            async move { std::fs::read(path).unwrap_or_default() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/droplet")
}

async fn get(host: &str, port: u64) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .get(format!("http://{host}:{port}/"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:#}"))
}

async fn next_json(subscriber: &mut async_nats::Subscriber, limit: Duration, what: &str) -> Value {
    let message = tokio::time::timeout(limit, subscriber.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
        .unwrap_or_else(|| panic!("{what}: subscription ended"));
    serde_json::from_slice(&message.payload).expect("json")
}

/// Waits for an advertisement from a DEA other than `not`; its id.
async fn advertised(subscriber: &mut async_nats::Subscriber, not: Option<&str>) -> String {
    loop {
        let ad = next_json(subscriber, Duration::from_secs(60), "dea.advertise").await;
        let id = ad["id"].as_str().expect("id").to_string();
        if Some(id.as_str()) != not {
            return id;
        }
    }
}

fn runc_pid(state: &Path, container: &str) -> Option<u64> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(state.join("runc"))
        .args(["state", container])
        .output()
        .ok()?;
    serde_json::from_slice::<Value>(&out.stdout).ok()?["pid"].as_u64()
}

/// Apps keep serving while their agent is `kill -9`ed, and a restarted agent adopts them
/// untouched: same container process, same route, RUNNING all along. Then a SIGTERM stops
/// them and leaves nothing behind: no container, namespace, interface, nftables table or
/// instance directory.
#[test]
fn apps_keep_serving_while_the_agent_is_killed_and_restarted() {
    let base = tempfile::tempdir().expect("tempdir");
    let (droplet, sha1) = staged_example(base.path());
    let port = free_port();
    let _nats = nats_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let state = base.path().join("state");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let droplet_url = serve_file(droplet).await;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.clone())
            .await
            .expect("connect");
        let mut advertise = client.subscribe("dea.advertise").await.expect("sub");
        let mut registers = client.subscribe("router.register").await.expect("sub");
        let mut exits = client.subscribe("droplet.exited").await.expect("sub");
        client.flush().await.expect("flush");

        let mut agent = serve(base.path(), &url);
        let id = advertised(&mut advertise, None).await;
        let start = json!({
            "droplet": "app-1", "name": "example", "uris": ["example.test"], "version": "v1",
            "index": 0, "sha1": sha1, "executableUri": droplet_url, "env": [],
            "limits": {"mem": 128, "disk": 256, "fds": 1024}, "services": [],
            "cc_partition": "default", "stack": "cflinuxfs4", "health_check_timeout": 30,
        });
        client
            .publish(format!("dea.{id}.start"), start.to_string().into())
            .await
            .expect("publish start");
        let route = loop {
            let message =
                next_json(&mut registers, Duration::from_secs(60), "router.register").await;
            if message["app"] == "app-1" {
                break message;
            }
        };
        let host = route["host"].as_str().expect("host").to_string();
        let app_port = route["port"].as_u64().expect("port");
        assert_eq!(get(&host, app_port).await, Ok(200));
        let snapshot: Value = serde_json::from_slice(
            &std::fs::read(state.join("db/instances.json")).expect("snapshot"),
        )
        .expect("json");
        let instance = snapshot["instances"][0].clone();
        let container = instance["container_id"]
            .as_str()
            .expect("container")
            .to_string();
        let pid = runc_pid(&state, &container).expect("container runs");

        // kill -9: nothing of the agent is left to forward anything.
        agent.signal("KILL");
        assert!(agent.exited_within(Duration::from_secs(10)).is_some());
        let mut served = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            assert_eq!(
                get(&host, app_port).await,
                Ok(200),
                "while the agent is gone"
            );
            served += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            served >= 10,
            "only {served} requests while the agent was gone"
        );

        drop(agent);
        let mut agent = serve(base.path(), &url);
        let second = advertised(&mut advertise, Some(id.as_str())).await;
        let find = json!({"droplet": "app-1", "states": ["RUNNING"]});
        let reply = client
            .request("dea.find.droplet", find.to_string().into())
            .await
            .expect("find.droplet answered");
        let found: Value = serde_json::from_slice(&reply.payload).expect("json");
        assert_eq!(found["dea"], second.as_str());
        assert_eq!(found["instance"], instance["instance_id"]);
        assert_eq!(found["state"], "RUNNING");
        assert_eq!(
            runc_pid(&state, &container),
            Some(pid),
            "the app was restarted"
        );
        assert_eq!(get(&host, app_port).await, Ok(200));
        // Re-registered by the new agent, same address.
        let again = next_json(&mut registers, Duration::from_secs(10), "router.register").await;
        assert_eq!(again["port"], route["port"]);
        let crashed = tokio::time::timeout(Duration::from_millis(200), exits.next()).await;
        assert!(crashed.is_err(), "a droplet.exited during the restart");

        agent.signal("TERM");
        let status = agent
            .exited_within(Duration::from_secs(30))
            .expect("dea serve exits on SIGTERM");
        assert!(status.success(), "{status:?}");
        assert!(
            get(&host, app_port).await.is_err(),
            "the app outlived its stop"
        );
        assert_eq!(runc_pid(&state, &container), None);
        let netns = instance["netns"].as_str().expect("netns");
        assert!(
            !Path::new("/var/run/netns").join(netns).exists(),
            "namespace left"
        );
        let host_if = instance["network"]["host_if"].as_str().expect("interface");
        assert!(
            !Path::new("/sys/class/net").join(host_if).exists(),
            "interface left"
        );
        let tables = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        let table = dea::instance::network::NetworkSettings::table_for(&state);
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains(&table),
            "nftables table left"
        );
        let left: Vec<_> = std::fs::read_dir(state.join("instances"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "instance directories left: {left:?}");
    });
}

/// With NATS gone, SIGTERM still finishes (every step of shutdown is bounded), and a second
/// signal ends a shutdown at once.
#[test]
fn shutdown_is_bounded_when_nats_is_unreachable() {
    let base = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for second_signal in [false, true] {
        let mut nats = nats_server(port);
        let agent = runtime.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(url.clone())
                .await
                .expect("connect");
            let mut advertise = client.subscribe("dea.advertise").await.expect("sub");
            client.flush().await.expect("flush");
            let agent = serve(base.path(), &url);
            advertised(&mut advertise, None).await;
            agent
        });
        let mut agent = agent;
        let _ = nats.0.kill();
        let _ = nats.0.wait();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        agent.signal("TERM");
        if second_signal {
            std::thread::sleep(Duration::from_millis(500));
            agent.signal("TERM");
            let status = agent
                .exited_within(Duration::from_secs(5))
                .expect("a second SIGTERM ends the shutdown at once");
            assert!(!status.success(), "{status:?}");
        } else {
            let status = agent
                .exited_within(Duration::from_secs(40))
                .expect("SIGTERM finishes with NATS gone");
            assert!(status.success(), "{status:?}");
        }
        eprintln!(
            "shutdown with NATS gone (second signal: {second_signal}): {:?}",
            started.elapsed()
        );
    }
}
