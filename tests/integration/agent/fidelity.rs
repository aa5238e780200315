//! The reference's tables as a controller reads them: every staging request that carries a
//! reply subject is answered (twice, as the controller waits for), and absent, `null` and
//! empty optional objects mean what the reference says.

use dea_tests::controller::{BlobStore, ContainerCleanup, Controller, NatsServer, start_agent};
use dea_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The two replies a staging request gets (setup, completion), or fewer if they never come.
async fn stage(controller: &Controller, agent_id: &str, request: &Value) -> Vec<Value> {
    controller
        .request_many(
            &format!("staging.{agent_id}.start"),
            request,
            2,
            Duration::from_secs(60),
        )
        .await
}

/// `start_message` absent, `null` or `{}` stages only (§3.2: the app is started "if
/// `start_message` is non-empty"); requests that fail parsing or the checks are answered with
/// both replies carrying the error, never left to the controller's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_staging_request_is_answered() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let registers = controller.listen("router.register").await;
    let package = dea_tests::controller::zip_dir(&repo_root().join("examples/static-site"));
    let blobs = BlobStore::start(vec![("/packages/app.zip", package)]).await;
    let (agent, _directory) = start_agent(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");

    let request = |task: &str, start: Option<Value>| {
        let mut request = json!({
            "app_id": format!("app-{task}"), "task_id": task, "stack": "cflinuxfs4",
            "download_uri": blobs.url("/packages/app.zip"),
            "upload_uri": blobs.url(&format!("/upload/{task}")),
            "admin_buildpacks": null, "properties": null,
        });
        if let Some(start) = start {
            request["start_message"] = start;
        }
        request
    };
    for (task, start) in [
        ("absent", None),
        ("null", Some(Value::Null)),
        ("empty", Some(json!({}))),
    ] {
        let replies = stage(&controller, agent.id(), &request(task, start)).await;
        assert_eq!(replies.len(), 2, "{task}: {replies:?}");
        assert!(replies[0]["error"].is_null(), "{task}: {}", replies[0]);
        assert!(
            replies[1]["droplet_sha1"].is_string(),
            "{task}: {}",
            replies[1]
        );
        assert!(
            blobs.uploads().iter().any(|u| u.contains(task)),
            "{task}: no droplet uploaded"
        );
    }
    // Stage only: nothing was started for any of them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let apps: Vec<Value> = registers
        .all()
        .into_iter()
        .filter(|m| m.get("app").is_some())
        .collect();
    assert!(apps.is_empty(), "started: {apps:?}");

    // Refused by the checks (a task id that would become a path), and unparseable (a
    // number where a URL belongs): both replies, each with the error, the task id echoed.
    let mut traversal = request("x", None);
    traversal["task_id"] = json!("../../etc");
    let mut unparseable = request("bad-types", None);
    unparseable["download_uri"] = json!(5);
    let mut half_start = request("half-start", None);
    half_start["start_message"] = json!({"droplet": "app"});
    for (message, task, expected) in [
        (traversal, "../../etc", "unusable task_id"),
        (unparseable, "bad-types", "download_uri"),
        (half_start, "half-start", "start_message"),
    ] {
        let replies = stage(&controller, agent.id(), &message).await;
        assert_eq!(replies.len(), 2, "{task}: {replies:?}");
        for reply in &replies {
            assert_eq!(reply["task_id"], task, "{reply}");
            let error = reply["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with("Error staging:") && error.contains(expected),
                "{task}: {reply}"
            );
        }
        assert!(replies[1]["droplet_sha1"].is_null(), "{}", replies[1]);
    }
    agent.shutdown().await;
}
