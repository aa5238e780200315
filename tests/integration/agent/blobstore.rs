//! Packages and droplets from the platform's blobstore (NATS JetStream object stores, named
//! `dea-blob://` in messages): one agent stages from a package in the store and uploads the
//! droplet there by its SHA-1; another agent, which never saw the droplet, starts it from
//! the store. Names outside the platform's buckets, and blobs that are not there, are
//! refused with an answer.

use super::http_get;
use dea_tests::controller::{ContainerCleanup, Controller, NatsServer, start_agent, zip_dir};
use dea_tests::*;
use serde_json::json;
use sha1::Digest;
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn buckets(
    nats: &NatsServer,
) -> (
    async_nats::jetstream::object_store::ObjectStore,
    async_nats::jetstream::object_store::ObjectStore,
) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut made = Vec::new();
    for bucket in ["dea-packages", "dea-droplets"] {
        made.push(
            js.create_object_store(async_nats::jetstream::object_store::Config {
                bucket: bucket.to_string(),
                ..Default::default()
            })
            .await
            .expect("object store"),
        );
    }
    let droplets = made.pop().expect("droplets");
    let packages = made.pop().expect("packages");
    (packages, droplets)
}

fn start(app: &str, executable_uri: &str, sha1: &str) -> serde_json::Value {
    json!({
        "droplet": app, "name": app, "uris": [format!("{app}.test.local")], "version": "v1",
        "index": 0, "sha1": sha1, "executableUri": executable_uri,
        "env": [], "limits": {"mem": 64, "disk": 256, "fds": 1024},
        "services": [], "cc_partition": "default", "stack": "cflinuxfs4",
        "health_check_timeout": 20,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stage_into_and_start_from_the_platform_blobstore() {
    let (base_a, base_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let _cleanup_a = ContainerCleanup(base_a.path().to_path_buf());
    let _cleanup_b = ContainerCleanup(base_b.path().to_path_buf());
    let nats = NatsServer::start_with_jetstream().await;
    let (packages, droplets) = buckets(&nats).await;
    let package = zip_dir(&repo_root().join("examples/static-site"));
    packages
        .put("shop-1.zip", &mut package.as_slice())
        .await
        .expect("package stored");
    let cc = Controller::connect(&nats).await;
    let registers = cc.listen("router.register").await;
    let advertised = cc.listen("dea.advertise").await;
    let exits = cc.listen("droplet.exited").await;
    let (stager, _dir_a) = start_agent(base_a.path(), &nats).await;
    let (runner, _dir_b) = start_agent(base_b.path(), &nats).await;
    // Connected (and subscribed) once they advertise.
    for agent in [&stager, &runner] {
        advertised
            .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
            .await
            .expect("the agent advertises");
    }

    // Staged from the store, into the store.
    let replies = cc
        .request_many(
            &format!("staging.{}.start", stager.id()),
            &json!({
                "app_id": "shop", "task_id": "blob-task", "stack": "cflinuxfs4",
                "download_uri": "dea-blob://dea-packages/shop-1.zip",
                "upload_uri": "dea-blob://dea-droplets/",
                "properties": {"environment": []}, "memory_limit": 128, "disk_limit": 256,
            }),
            2,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0]["error"].is_null(), "{}", replies[0]);
    assert!(replies[1]["error"].is_null(), "{}", replies[1]);
    let sha1 = replies[1]["droplet_sha1"]
        .as_str()
        .expect("droplet_sha1")
        .to_string();
    let mut stored = Vec::new();
    droplets
        .get(&sha1)
        .await
        .expect("the droplet is in the store under its SHA-1")
        .read_to_end(&mut stored)
        .await
        .expect("read the droplet");
    assert_eq!(hex::encode(sha1::Sha1::digest(&stored)), sha1);

    // Started by the other agent, which fetches it from the store.
    assert!(!base_b.path().join("droplets").join(&sha1).exists());
    cc.publish(
        &format!("dea.{}.start", runner.id()),
        &start("shop", &format!("dea-blob://dea-droplets/{sha1}"), &sha1),
    )
    .await;
    let registration = registers
        .wait_for(Duration::from_secs(60), |m| m["app"] == "shop")
        .await
        .expect("the instance runs and registers its route");
    let body = http_get(
        registration["host"].as_str().expect("host"),
        registration["port"].as_u64().expect("port"),
    )
    .await;
    assert!(
        body.contains("<html") || body.contains("<!DOCTYPE"),
        "{body}"
    );
    assert!(
        base_b
            .path()
            .join("droplets")
            .join(&sha1)
            .join("droplet.tgz")
            .is_file()
    );

    // A blob that is not there: the instance crashes with a reason; the agent goes on.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    cc.publish(
        &format!("dea.{}.start", runner.id()),
        &start(
            "ghost",
            &format!("dea-blob://dea-droplets/{missing}"),
            missing,
        ),
    )
    .await;
    let exited = exits
        .wait_for(Duration::from_secs(30), |m| m["droplet"] == "ghost")
        .await
        .expect("droplet.exited for the missing droplet");
    assert_eq!(exited["reason"], "CRASHED", "{exited}");

    // Names outside the platform's buckets are refused before anything is fetched.
    let refused = cc
        .request_many(
            &format!("staging.{}.start", stager.id()),
            &json!({
                "app_id": "shop", "task_id": "evil-task",
                "download_uri": "dea-blob://KV_dea-apps/shop",
                "upload_uri": "dea-blob://dea-droplets/",
            }),
            2,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        refused.iter().all(|r| r["error"]
            .as_str()
            .is_some_and(|e| e.contains("download_uri"))),
        "{refused:?}"
    );
    // A package that is not in the store: the setup reply says so.
    let absent = cc
        .request_many(
            &format!("staging.{}.start", stager.id()),
            &json!({
                "app_id": "shop", "task_id": "absent-task",
                "download_uri": "dea-blob://dea-packages/nothing.zip",
                "upload_uri": "dea-blob://dea-droplets/",
            }),
            2,
            Duration::from_secs(30),
        )
        .await;
    assert!(
        absent[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing.zip")),
        "{absent:?}"
    );

    stager.shutdown().await;
    runner.shutdown().await;
}
