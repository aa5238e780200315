//! A soak, as a controller would drive the agent for a while: 200 start/stop cycles and 50
//! stagings over a real nats-server, in real containers. Afterwards the host must be as it
//! was: the same containers, network namespaces, interfaces, mounts, cgroups, open file
//! descriptors and directories, and the agent's memory back within allocator slack.
//!
//! It is a test binary of its own so that nothing else runs in this process meanwhile: the
//! counts are of the whole process and host, and must be exact.

use dea_tests::controller::{
    BlobStore, ContainerCleanup, Controller, NatsServer, start_agent, start_message, zip_dir,
};
use dea_tests::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const START_STOP_CYCLES: usize = 200;
const STAGINGS: usize = 50;
/// Instances started (and stagings run) at once.
const CONCURRENCY: usize = 4;
/// What the allocator may keep of memory the agent used and freed.
const RSS_SLACK_KB: u64 = 24 * 1024;
/// Growth allowed over the second half of the cycles: a leak grows with the cycles, slack
/// does not.
const RSS_SECOND_HALF_KB: u64 = 8 * 1024;
/// Idle pooled connections (each counted at both ends).
const SOCKET_SLACK: usize = 4 * CONCURRENCY;

/// What a run could leave behind, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Census {
    containers: usize,
    network_namespaces: usize,
    instance_interfaces: usize,
    mounts: usize,
    cgroups: usize,
    /// Open descriptors that are not sockets: files, directories, pipes, event fds.
    open_fds: usize,
    dirs: Vec<(String, usize)>,
}

/// What this process's non-socket descriptors point at, for a failure message.
fn fd_targets() -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir("/proc/self/fd").map_or(Vec::new(), |d| {
        d.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .filter(|t| !t.starts_with("socket:"))
            .collect()
    });
    targets.sort();
    targets
}

/// Open sockets of this process: HTTP clients keep idle connections in bounded pools (and
/// the test's blob store, in this process, holds their other ends), so these are compared
/// against a bound, not exactly.
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

fn count_dir(path: &Path) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// Directories under `root` (not following links), recursively.
fn count_tree_dirs(root: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    count += 1;
                    stack.push(entry.path());
                }
            }
        }
    }
    count
}

impl Census {
    fn take(base: &Path) -> Census {
        let containers = std::process::Command::new("runc")
            .arg("--root")
            .arg(base.join("runc"))
            .args(["list", "-q"])
            .output()
            .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count());
        let instance_interfaces = std::fs::read_dir("/sys/class/net").map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("dh"))
                .count()
        });
        // Mounts of this agent only (its workspaces, bundles and network namespaces): other
        // processes on the machine mount and unmount too.
        let base_text = base.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |text| {
            text.lines()
                .filter_map(|line| line.split(' ').nth(4))
                .filter(|point| point.starts_with(&base_text) || point.starts_with("/run/netns"))
                .count()
        });
        let cgroups = std::fs::read_dir("/sys/fs/cgroup").map_or(0, |controllers| {
            controllers
                .filter_map(Result::ok)
                .map(|c| count_tree_dirs(&c.path().join("dea")))
                .sum()
        });
        let dirs = ["instances", "staging", "tasks", "bundles", "crashes"]
            .iter()
            .map(|name| (name.to_string(), count_dir(&base.join(name))))
            .collect();
        Census {
            containers,
            network_namespaces: count_dir(Path::new("/var/run/netns")),
            instance_interfaces,
            mounts,
            cgroups,
            open_fds: count_dir(Path::new("/proc/self/fd")) - open_sockets(),
            dirs,
        }
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_stops_and_stagings_leave_nothing_behind() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let registers = controller.listen("router.register").await;
    let unregisters = controller.listen("router.unregister").await;
    let exits = controller.listen("droplet.exited").await;

    let example = stager(
        test_config(&base.path().join("prestage")),
        default_buildpacks(),
    );
    let droplet = base.path().join("example.tgz");
    let (staged, log) = stage(
        &example,
        request(&repo_root().join("examples/static-site"), &droplet),
    )
    .await;
    let sha1 = staged.unwrap_or_else(|e| panic!("{e}\n{log}")).droplet.sha1;
    let blobs = BlobStore::start(vec![
        (
            "/droplets/example.tgz",
            std::fs::read(&droplet).expect("droplet"),
        ),
        (
            "/packages/app.zip",
            zip_dir(&repo_root().join("examples/static-site")),
        ),
    ])
    .await;
    let agent_base = base.path().join("agent");
    let (agent, _directory) = start_agent(&agent_base, &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let id = agent.id().to_string();

    let cycle = |n: usize| {
        let (controller, registers, unregisters) = (&controller, &registers, &unregisters);
        let (url, sha1, id) = (blobs.url("/droplets/example.tgz"), sha1.clone(), id.clone());
        async move {
            let app = format!("soak-{n}");
            controller
                .publish(
                    &format!("dea.{id}.start"),
                    &start_message(&app, 0, &url, &sha1),
                )
                .await;
            registers
                .wait_for(Duration::from_secs(60), |m| m["app"] == app.as_str())
                .await
                .unwrap_or_else(|| panic!("{app} never registered"));
            controller
                .publish("dea.stop", &json!({"droplet": app}))
                .await;
            unregisters
                .wait_for(Duration::from_secs(60), |m| m["app"] == app.as_str())
                .await
                .unwrap_or_else(|| panic!("{app} never unregistered"));
        }
    };
    let staging = |n: usize| {
        let controller = &controller;
        let request = json!({
            "app_id": format!("staged-{n}"), "task_id": format!("task-{n}"),
            "stack": "cflinuxfs4",
            "download_uri": blobs.url("/packages/app.zip"),
            "upload_uri": blobs.url(&format!("/upload/droplet-{n}")),
            "admin_buildpacks": [], "properties": {"environment": []},
        });
        let subject = format!("staging.{id}.start");
        async move {
            let replies = controller
                .request_many(&subject, &request, 2, Duration::from_secs(60))
                .await;
            assert_eq!(replies.len(), 2, "staging {n}: {replies:?}");
            assert!(replies[1]["error"].is_null(), "staging {n}: {}", replies[1]);
        }
    };
    let settle = || async {
        // Everything the cycles started is gone from the registry and the agent's dirs.
        for _ in 0..200 {
            let busy = count_dir(&agent_base.join("instances")) > 0
                || count_dir(&agent_base.join("tasks")) > 0
                || count_dir(&agent_base.join("staging")) > 0;
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Warm-up: the first start and staging load what stays loaded (components, pools, the
    // agent's nftables table), which is not a leak.
    // One batch of each at full concurrency: instance slots of the wasm pool, connection
    // pools and the like fill to what concurrent work needs, then stay.
    futures_util::future::join_all((0..CONCURRENCY).map(|n| cycle(1000 + n))).await;
    futures_util::future::join_all((0..CONCURRENCY).map(|n| staging(1000 + n))).await;
    settle().await;
    let before = Census::take(&agent_base);
    let (rss_before, sockets_before) = (rss_kb(), open_sockets());
    let fds_before = fd_targets();
    let mut rss_half = 0;

    for batch in (1..=START_STOP_CYCLES)
        .collect::<Vec<_>>()
        .chunks(CONCURRENCY)
    {
        futures_util::future::join_all(batch.iter().map(|n| cycle(*n))).await;
        registers.clear();
        unregisters.clear();
        if batch.contains(&(START_STOP_CYCLES / 2)) {
            rss_half = rss_kb();
        }
    }
    let rss_cycles = rss_kb();
    let mut rss_stagings_half = 0;
    for batch in (1..=STAGINGS).collect::<Vec<_>>().chunks(CONCURRENCY) {
        futures_util::future::join_all(batch.iter().map(|n| staging(*n))).await;
        if batch.contains(&(STAGINGS / 2)) {
            rss_stagings_half = rss_kb();
        }
    }
    let rss_stagings = rss_kb();
    settle().await;
    let after = Census::take(&agent_base);
    let (rss_after, sockets_after) = (rss_kb(), open_sockets());
    eprintln!(
        "before: {before:?}, RSS {rss_before} kB, {sockets_before} sockets\n\
         after:  {after:?}, RSS {rss_after} kB ({rss_half} kB half way, {rss_cycles} kB after the cycles, {rss_stagings_half} kB half way through the stagings), {sockets_after} sockets"
    );
    assert!(
        exits.all().is_empty(),
        "instances crashed during the soak: {:?}",
        exits.all()
    );
    assert_eq!(
        after,
        before,
        "the soak left something behind; descriptors before {fds_before:?}, after {:?}",
        fd_targets()
    );
    assert!(
        rss_after <= rss_before + RSS_SLACK_KB
            && rss_cycles <= rss_half + RSS_SECOND_HALF_KB
            && rss_stagings <= rss_stagings_half + RSS_SECOND_HALF_KB,
        "agent memory grew from {rss_before} kB ({rss_half} kB half way, {rss_cycles} kB after the cycles, {rss_stagings_half} kB half way through the stagings) to {rss_after} kB"
    );
    assert!(
        sockets_after <= sockets_before + SOCKET_SLACK,
        "sockets grew from {sockets_before} to {sockets_after}"
    );
    agent.shutdown().await;
}
