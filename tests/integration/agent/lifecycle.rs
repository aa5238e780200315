//! An app's life as a controller drives it over NATS, step by step: the agent advertises,
//! stages the example, starts two instances that register routes, follows route updates,
//! answers `dea.find.droplet` (stats, file links, heartbeats), re-keys its instances for a
//! new version, stops one, reports the other's crash, and keeps its state across a NATS
//! restart.

use super::{http_get, tar_listing};
use dea::files::DirectoryServer;
use dea::nats::Agent;
use dea_tests::controller::{
    BlobStore, ContainerCleanup, Controller, Inbox, NatsServer, local, start_agent, start_message,
    zip_dir,
};
use dea_tests::*;
use serde_json::{Value, json};
use sha1::Digest;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_stages_runs_finds_stops_and_sees_crashes() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let mut nats = NatsServer::start().await;
    let cc = SimulatedController::connect(&nats).await;
    let package = zip_dir(&repo_root().join("examples/static-site"));
    let blobs = BlobStore::start(vec![("/packages/app.zip", package)]).await;
    let (agent, directory) = start_agent(base.path(), &nats).await;

    cc.assert_advertised(&agent).await;
    let staged = cc.stage_app(&agent, &blobs).await;
    let routes = cc
        .start_instances(&agent, &blobs, &staged.droplet_sha1)
        .await;
    assert_staging_log_gone(&staged.log_url, &directory).await;
    cc.assert_directory_server_routed(&directory).await;
    cc.assert_route_added(&routes).await;
    let found = cc.find_instances(&agent).await;
    cc.assert_files_linked(&directory).await;
    cc.assert_heartbeats_list_both(&agent).await;
    cc.assert_new_version_rekeys(&found).await;
    let stopped = cc.stop_index_0().await;
    cc.crash_index_1(&agent, &stopped).await;
    assert_state_survives_nats_restart(&mut nats, &agent).await;

    agent.shutdown().await;
}

/// The controller's side: its NATS connection and what it hears.
struct SimulatedController {
    controller: Controller,
    advertise: Inbox,
    registers: Inbox,
    unregisters: Inbox,
    exits: Inbox,
    heartbeats: Inbox,
}

/// What the staging step hands on.
struct Staged {
    droplet_sha1: String,
    log_url: String,
}

/// What stopping index 0 hands on.
struct Stopped {
    /// The stopped instance's route.
    port: Value,
    /// The instance id of index 1, still running.
    survivor: String,
}

impl SimulatedController {
    async fn connect(nats: &NatsServer) -> SimulatedController {
        let controller = Controller::connect(nats).await;
        SimulatedController {
            advertise: controller.listen("dea.advertise").await,
            registers: controller.listen("router.register").await,
            unregisters: controller.listen("router.unregister").await,
            exits: controller.listen("droplet.exited").await,
            heartbeats: controller.listen("dea.heartbeat").await,
            controller,
        }
    }

    async fn assert_advertised(&self, agent: &Agent) {
        let ad = self
            .advertise
            .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
            .await
            .expect("the agent advertises");
        assert_eq!(ad["stacks"], json!(["cflinuxfs4"]));
        assert_eq!(ad["placement_properties"]["zone"], "default");
        assert!(
            ad["available_memory"].as_u64().is_some_and(|m| m > 0),
            "{ad}"
        );
    }

    /// Staging: two replies to one inbox, and the droplet arrives at the upload URL.
    async fn stage_app(&self, agent: &Agent, blobs: &BlobStore) -> Staged {
        let staging = json!({
            "app_id": "app-1", "task_id": "task-1", "stack": "cflinuxfs4",
            "download_uri": blobs.url("/packages/app.zip"),
            "upload_uri": blobs.url("/upload/droplet-app-1"),
            "admin_buildpacks": [],
            "properties": {"environment": ["FOO=bar"], "meta": {}},
            "memory_limit": 128, "disk_limit": 256,
        });
        let replies = self
            .controller
            .request_many(
                &format!("staging.{}.start", agent.id()),
                &staging,
                2,
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(replies.len(), 2, "{replies:?}");
        let (setup, done) = (&replies[0], &replies[1]);
        assert_eq!(setup["task_id"], "task-1");
        assert!(setup["error"].is_null(), "{setup}");
        let log_url = setup["task_streaming_log_url"].as_str().expect("a log URL");
        assert!(
            log_url.contains("/staging_tasks/task-1/file_path?hmac=")
                && log_url.contains("path=%2Ftmp%2Fstaged%2Flogs%2Fstaging_task.log"),
            "{log_url}"
        );
        assert!(done["error"].is_null(), "{done}");
        assert_eq!(done["detected_buildpack"], "staticfile", "{done}");
        assert!(
            done["detected_start_command"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
        assert!(done["procfile"]["web"].is_string(), "{done}");
        let droplet_sha1 = done["droplet_sha1"]
            .as_str()
            .expect("droplet_sha1")
            .to_string();
        let uploaded = blobs.blob("/droplet-app-1").expect("droplet uploaded");
        assert_eq!(hex::encode(sha1::Sha1::digest(&uploaded)), droplet_sha1);
        let listing = tar_listing(&uploaded);
        assert!(
            listing.iter().any(|e| e == "./staging_info.yml"),
            "{listing:?}"
        );
        assert!(
            listing.iter().any(|e| e.starts_with("./app/")),
            "{listing:?}"
        );
        Staged {
            droplet_sha1,
            log_url: log_url.to_string(),
        }
    }

    /// Two instances from the controller's URL; each registers a route that serves the app.
    /// Returns the routes' ports.
    async fn start_instances(&self, agent: &Agent, blobs: &BlobStore, sha1: &str) -> Vec<Value> {
        for index in 0..2 {
            let start = start_message("app-1", index, &blobs.url("/droplet-app-1"), sha1);
            self.controller
                .publish(&format!("dea.{}.start", agent.id()), &start)
                .await;
        }
        let mut routes = Vec::new();
        for _ in 0..2 {
            let registration = self
                .registers
                .wait_for(Duration::from_secs(60), |m| {
                    m["app"] == "app-1" && !routes.contains(&m["port"])
                })
                .await
                .expect("both instances register a route");
            assert_routed(&registration, agent).await;
            routes.push(registration["port"].clone());
        }
        routes
    }

    /// The directory server is registered with the router under <uuid>.<domain>.
    async fn assert_directory_server_routed(&self, directory: &DirectoryServer) {
        let dirsrv = self
            .registers
            .wait_for(Duration::from_secs(5), |m| {
                m["tags"]["component"] == "directory-server-0"
            })
            .await
            .expect("router.register for the directory server");
        assert_eq!(
            dirsrv["port"].as_u64(),
            Some(u64::from(directory.local_addr.port()))
        );
        assert!(
            dirsrv["uris"][0]
                .as_str()
                .is_some_and(|u| u.ends_with(".dea.local")),
            "{dirsrv}"
        );
    }

    /// dea.update: the added route is registered for both instances.
    async fn assert_route_added(&self, routes: &[Value]) {
        self.controller
            .publish(
                "dea.update",
                &json!({"droplet": "app-1", "uris": ["example.test.local", "new.test.local"], "version": "v1"}),
            )
            .await;
        for port in routes {
            self.registers
                .wait_for(Duration::from_secs(10), |m| {
                    m["port"] == *port && m["uris"] == json!(["new.test.local"])
                })
                .await
                .expect("dea.update registers the new route");
        }
    }

    /// find.droplet: one reply per instance, with states and (when asked) stats.
    async fn find_instances(&self, agent: &Agent) -> Vec<Value> {
        let found = self
            .controller
            .request_many(
                "dea.find.droplet",
                &json!({"droplet": "app-1", "states": ["RUNNING"], "include_stats": true}),
                2,
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(found.len(), 2, "{found:?}");
        let mut indices: Vec<u64> = found.iter().filter_map(|r| r["index"].as_u64()).collect();
        indices.sort();
        assert_eq!(indices, vec![0, 1]);
        for reply in &found {
            assert_eq!(reply["state"], "RUNNING");
            assert_eq!(reply["dea"], agent.id());
            assert_eq!(reply["version"], "v1");
            assert_eq!(reply["stats"]["mem_quota"], 64 << 20, "{reply}");
            assert!(reply["stats"]["usage"]["mem"].as_u64().is_some(), "{reply}");
            assert_eq!(
                reply["staged"],
                format!("/{}", reply["instance"].as_str().unwrap_or(""))
            );
        }
        found
    }

    /// file_uri_v2: a signed link into the instance's files (what `cf files` follows).
    async fn assert_files_linked(&self, directory: &DirectoryServer) {
        let with_path = self
            .controller
            .request_many(
                "dea.find.droplet",
                &json!({"droplet": "app-1", "indices": [0], "path": "logs"}),
                1,
                Duration::from_secs(10),
            )
            .await;
        let file_uri = with_path[0]["file_uri_v2"].as_str().expect("file_uri_v2");
        let listing = reqwest::get(local(file_uri, directory))
            .await
            .expect("GET file_uri_v2")
            .text()
            .await
            .unwrap_or_default();
        for name in ["staging_task.log", "stdout.log", "stderr.log"] {
            assert!(listing.contains(name), "{listing}");
        }
    }

    async fn assert_heartbeats_list_both(&self, agent: &Agent) {
        let heartbeat = self
            .heartbeats
            .wait_for(Duration::from_secs(5), |m| {
                m["dea"] == agent.id() && m["droplets"].as_array().is_some_and(|d| d.len() == 2)
            })
            .await
            .expect("heartbeats list both instances");
        assert_eq!(heartbeat["droplets"][0]["cc_partition"], "default");
    }

    /// A new version re-keys the instances (as the DEA does); the old ids are gone.
    async fn assert_new_version_rekeys(&self, found: &[Value]) {
        let old_ids: Vec<Value> = found.iter().map(|r| r["instance"].clone()).collect();
        self.controller
            .publish(
                "dea.update",
                &json!({"droplet": "app-1", "uris": ["example.test.local", "new.test.local"], "version": "v2"}),
            )
            .await;
        let mut rekeyed = Vec::new();
        for _ in 0..50 {
            rekeyed = self
                .controller
                .request_many(
                    "dea.find.droplet",
                    &json!({"droplet": "app-1", "version": "v2"}),
                    2,
                    Duration::from_secs(2),
                )
                .await;
            if rekeyed.len() == 2 {
                break;
            }
        }
        assert_eq!(rekeyed.len(), 2, "{rekeyed:?}");
        for reply in &rekeyed {
            assert!(!old_ids.contains(&reply["instance"]), "{reply} kept its id");
            assert_eq!(reply["state"], "RUNNING");
        }
    }

    /// Stop index 0: its route goes, find returns only index 1.
    async fn stop_index_0(&self) -> Stopped {
        self.controller
            .publish(
                "dea.stop",
                &json!({"droplet": "app-1", "version": "v2", "indices": [0]}),
            )
            .await;
        let unregistered = self
            .unregisters
            .wait_for(Duration::from_secs(20), |m| m["app"] == "app-1")
            .await
            .expect("the stopped instance unregisters");
        let remaining = wait_until_found(&self.controller, 1).await;
        assert_eq!(remaining[0]["index"], 1, "{remaining:?}");
        let survivor = remaining[0]["instance"]
            .as_str()
            .expect("instance")
            .to_string();
        Stopped {
            port: unregistered["port"].clone(),
            survivor,
        }
    }

    /// Crash index 1: droplet.exited with CRASHED, and its route goes.
    async fn crash_index_1(&self, agent: &Agent, stopped: &Stopped) {
        let survivor = &stopped.survivor;
        let pid = agent
            .instances()
            .pid(survivor)
            .await
            .expect("pid of index 1");
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        let exited = self
            .exits
            .wait_for(Duration::from_secs(20), |m| {
                m["instance"] == survivor.as_str()
            })
            .await
            .expect("droplet.exited for the crash");
        assert_eq!(exited["reason"], "CRASHED");
        assert_eq!(exited["droplet"], "app-1");
        assert_eq!(exited["index"], 1);
        assert_eq!(exited["cc_partition"], "default");
        assert!(exited["crash_timestamp"].as_i64().is_some(), "{exited}");
        assert!(
            exited["exit_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        let crashed = self
            .unregisters
            .wait_for(Duration::from_secs(5), |m| m["port"] != stopped.port)
            .await;
        assert!(
            crashed.is_some(),
            "the crashed instance's route is unregistered"
        );
    }
}

/// A route registration of app-1 on this agent, and the app answering on it.
async fn assert_routed(registration: &Value, agent: &Agent) {
    assert_eq!(registration["uris"], json!(["example.test.local"]));
    assert_eq!(registration["dea"], agent.id());
    assert_eq!(registration["tags"]["component"], "dea-0");
    assert_eq!(
        registration["private_instance_id"].as_str().map(str::len),
        Some(64)
    );
    let host = registration["host"].as_str().expect("host").to_string();
    let port = registration["port"].as_u64().expect("port");
    let body = http_get(&host, port).await;
    assert!(body.contains("Hello from a dea droplet"), "{body}");
}

/// After the completion reply the task is gone: its log URL says so (the log is complete).
async fn assert_staging_log_gone(log_url: &str, directory: &DirectoryServer) {
    let after = reqwest::get(local(log_url, directory))
        .await
        .expect("GET log");
    assert_eq!(after.status(), 404);
    assert_eq!(
        after.text().await.unwrap_or_default(),
        r#"{"error":"Unknown staging task"}"#
    );
}

/// NATS restarts: the agent keeps its state and advertises again within 5 s.
async fn assert_state_survives_nats_restart(nats: &mut NatsServer, agent: &Agent) {
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await;
    let restarted = tokio::time::Instant::now();
    let controller = Controller::connect(nats).await;
    let advertise = controller.listen("dea.advertise").await;
    advertise
        .wait_for(Duration::from_secs(5), |m| m["id"] == agent.id())
        .await
        .expect("advertising resumes within 5 s of the restart");
    assert!(restarted.elapsed() < Duration::from_secs(5));
    let after = controller
        .request_many(
            "dea.find.droplet",
            &json!({"droplet": "app-1", "states": ["CRASHED"]}),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(after.len(), 1, "state survives the NATS restart: {after:?}");
}

/// Polls `dea.find.droplet` for app-1's running instances until there are `count`.
async fn wait_until_found(controller: &Controller, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let found = controller
            .request_many(
                "dea.find.droplet",
                &json!({"droplet": "app-1", "states": ["RUNNING", "STARTING"]}),
                count + 1,
                Duration::from_millis(300),
            )
            .await;
        if found.len() == count {
            return found;
        }
    }
    panic!("never found {count} instances");
}
