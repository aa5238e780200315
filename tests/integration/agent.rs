//! The DEA protocol end to end: a real nats-server, a test controller speaking plain NATS
//! JSON, an HTTP blob store for packages and droplets, and the agent staging and running the
//! example in real runc containers. An app's whole life is in `lifecycle`; the hostile and
//! fidelity suites have modules of their own.

use dea_tests::controller::{
    BlobStore, ContainerCleanup, Controller, NatsServer, local, start_agent, start_message, zip_dir,
};
use dea_tests::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

mod blobstore;
mod fidelity;
mod hostile_instances;
mod hostile_stagings;
mod lifecycle;
mod probe;

pub(crate) async fn http_get(host: &str, port: u64) -> String {
    reqwest::get(format!("http://{host}:{port}/"))
        .await
        .expect("GET the instance")
        .text()
        .await
        .unwrap_or_default()
}

pub(crate) fn tar_listing(tgz: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    archive
        .entries()
        .expect("entries")
        .filter_map(Result::ok)
        .map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned())
        .collect()
}

/// Thousands of malformed and hostile messages on every subject the agent listens to, while
/// a controller keeps asking for status: every valid request is answered, nothing crashes,
/// and nothing is half-applied (no instance or staging task appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_and_valid_ones_still_answered() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let (agent, _directory) = start_agent(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let id = agent.id().to_string();
    let subjects = [
        format!("dea.{id}.start"),
        "dea.stop".into(),
        "dea.update".into(),
        "dea.find.droplet".into(),
        "dea.status".into(),
        "dea.locate".into(),
        "healthmanager.start".into(),
        "router.start".into(),
        format!("staging.{id}.start"),
        "staging".into(),
        "staging.stop".into(),
        "staging.locate".into(),
    ];
    let long = "x".repeat(100_000);
    let payloads: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"42".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        br#"{"droplet": 5}"#.to_vec(),
        br#"{"droplet": "a", "states": ["NOT_A_STATE"]}"#.to_vec(),
        br#"{"droplet": "a", "indices": [-1]}"#.to_vec(),
        br#"{"droplet": "a", "limits": {"mem": "lots", "disk": 1, "fds": 1}, "cc_partition": "x"}"#.to_vec(),
        br#"{"droplet": "a", "limits": {"mem": 0, "disk": 1, "fds": 1}, "cc_partition": "x", "executableUri": "http://127.0.0.1:1/d"}"#.to_vec(),
        br#"{"droplet": "a", "limits": {"mem": 64, "disk": 1, "fds": 1}, "cc_partition": "x", "sha1": "../../etc/passwd", "executableUri": "http://127.0.0.1:1/d"}"#.to_vec(),
        br#"{"droplet": "a", "limits": {"mem": 64, "disk": 1, "fds": 1}, "cc_partition": "x", "executableUri": "file:///etc/passwd"}"#.to_vec(),
        br#"{"app_id": "a", "task_id": "../../escape", "download_uri": "http://127.0.0.1:1/a", "upload_uri": "http://127.0.0.1:1/b"}"#.to_vec(),
        br#"{"app_id": "a", "task_id": "t", "download_uri": "file:///etc/passwd", "upload_uri": "http://127.0.0.1:1/b"}"#.to_vec(),
        br#"{"app_id": "a", "task_id": "t2", "download_uri": "http://127.0.0.1:1/a", "upload_uri": "http://127.0.0.1:1/b", "admin_buildpacks": [{"url": "http://127.0.0.1:1/x", "key": "../up"}]}"#.to_vec(),
        br#"{"app_id": 1}"#.to_vec(),
        format!(r#"{{"droplet": "{long}", "uris": 7}}"#).into_bytes(),
        "{\"droplet\": \"\u{0}\u{202e}\"}".as_bytes().to_vec(),
        br#"{"droplet": "a", "version": {"nested": [1, 2, {"deep": null}]}}"#.to_vec(),
    ];
    // The flood goes out two rounds at a time, each pair released just before a status
    // request: every request has hostile messages queued before it and arriving with it, and
    // the flood lasts until the last request.
    const ROUNDS: usize = 40;
    const STATUS_REQUESTS: usize = ROUNDS / 2;
    const STATUS_DEADLINE: Duration = Duration::from_secs(5);
    let released = Arc::new(tokio::sync::Semaphore::new(0));
    let flood = {
        let client = Controller::connect(&nats).await;
        let subjects = subjects.clone();
        let released = released.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            for round in 0..ROUNDS {
                released.acquire().await.expect("rounds released").forget();
                for subject in &subjects {
                    for payload in &payloads {
                        // Some with a reply subject, so handlers that answer would answer.
                        let reply = (round % 2 == 0).then_some("_INBOX.flood");
                        client.publish_raw(subject, payload.clone(), reply).await;
                        sent += 1;
                    }
                }
            }
            client.client.flush().await.expect("flush");
            sent
        })
    };
    // Valid requests keep being answered while the flood runs: count the replies that came
    // (from this agent, within the deadline), with how long each took.
    let mut answered = Vec::new();
    for _ in 0..STATUS_REQUESTS {
        released.add_permits(2);
        let asked = std::time::Instant::now();
        let status = controller
            .request_many("dea.status", &json!({}), 1, STATUS_DEADLINE)
            .await;
        if status.first().is_some_and(|s| s["id"] == id.as_str()) {
            answered.push(asked.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = flood.await.expect("flood");
    assert!(sent >= 10_000, "sent {sent}");
    assert_eq!(
        answered.len(),
        STATUS_REQUESTS,
        "every dea.status during the flood is answered within {STATUS_DEADLINE:?}; answered after {answered:?}"
    );
    // After the flood: still answering, still advertising, nothing was created.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = controller
        .request_many("dea.status", &json!({}), 1, Duration::from_secs(5))
        .await;
    assert_eq!(status.len(), 1);
    advertise.clear();
    advertise
        .wait_for(Duration::from_secs(5), |m| m["id"] == id.as_str())
        .await
        .expect("still advertising after the flood");
    assert!(
        agent.rejected_messages() > 1000,
        "rejected {}",
        agent.rejected_messages()
    );
    // Nothing half-applied: the start messages that parsed but failed validation created no
    // instance, and no staging task directory appeared (let alone one outside base_dir).
    assert!(
        agent.instances().list().is_empty(),
        "{:?}",
        agent.instances().list()
    );
    let tasks = base.path().join("tasks");
    let leftover: Vec<_> = std::fs::read_dir(&tasks)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    assert!(!base.path().join("../escape").exists());
    agent.shutdown().await;
}

/// A staging that does not fit is refused at once, with the DEA's message; `staging.stop`
/// ends a running staging with "task stopped".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_admission_and_stop() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    // A package server that never finishes sending: the staging waits in its download.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow_addr = slow.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = slow.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Answer only once the request is in (an early answer confuses the client).
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nPK")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let (agent, directory) = start_agent(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let subject = format!("staging.{}.start", agent.id());

    let too_big = json!({
        "app_id": "big", "task_id": "task-big",
        "download_uri": format!("http://{slow_addr}/app.zip"),
        "upload_uri": format!("http://{slow_addr}/upload"),
        "memory_limit": 1_000_000, "disk_limit": 256,
    });
    let refused = controller
        .request_many(&subject, &too_big, 1, Duration::from_secs(10))
        .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["task_id"], "task-big");
    assert_eq!(refused[0]["error"], "Not enough memory resources available");

    let stoppable = json!({
        "app_id": "slow-app", "task_id": "task-slow",
        "download_uri": format!("http://{slow_addr}/app.zip"),
        "upload_uri": format!("http://{slow_addr}/upload"),
    });
    let waiting = {
        let client = Controller::connect(&nats).await;
        let subject = subject.clone();
        tokio::spawn(async move {
            client
                .request_many(&subject, &stoppable, 1, Duration::from_secs(20))
                .await
        })
    };
    // Once the task is registered, its reservation shows in the advertisement.
    let mut reserved = false;
    for _ in 0..400 {
        if agent.staging_task_dir("task-slow").is_some() {
            reserved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !reserved {
        let replies = if waiting.is_finished() {
            Some(waiting.await)
        } else {
            None
        };
        panic!("the staging task was never registered; replies: {replies:?}");
    }
    // Its log can be followed live while it runs (signed with the key the agent wrote for
    // the operator CLI).
    let signer = dea::files::read_key_file(base.path()).expect("the agent's key file");
    let log_url = signer.staging_url(
        &format!("http://{}", directory.local_addr),
        "task-slow",
        dea::nats::STAGING_LOG_PATH,
    );
    let mut tail = reqwest::get(format!("{log_url}&tail&tail_offset=0"))
        .await
        .expect("tail the staging log");
    assert_eq!(tail.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), tail.chunk())
        .await
        .expect("log bytes arrive")
        .expect("chunk")
        .expect("a chunk");
    assert!(
        String::from_utf8_lossy(&first).contains("Got staging request for app with id slow-app"),
        "{first:?}"
    );
    // The reservation (the configured minimum, 128 MB, of the 1024 MB capacity) shows in a
    // later advertisement.
    advertise
        .wait_for(Duration::from_secs(5), |m| {
            m["id"] == agent.id() && m["available_memory"].as_u64() == Some(1024 - 128)
        })
        .await
        .expect("the staging's reservation is advertised");
    controller
        .publish("staging.stop", &json!({"app_id": "slow-app"}))
        .await;
    let replies = waiting.await.expect("replies");
    let last = replies.last().expect("a reply");
    assert_eq!(last["task_id"], "task-slow");
    assert_eq!(last["error"], "Error staging: task stopped", "{replies:?}");
    assert!(agent.staging_task_dir("task-slow").is_none());
    // The task's directory went with it: the tail ends.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = tail.chunk().await {}
    })
    .await
    .expect("the tail ends when the staging task is gone");
    agent.shutdown().await;
}

/// A staging request carrying a start message starts the app from the droplet it just
/// made (no download); SIGUSR2's evacuation says goodbye, stops advertising, marks the
/// instance EVACUATING (route kept), and shuts down once the controller has stopped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_then_start_then_evacuation() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let registers = controller.listen("router.register").await;
    let goodbyes = controller.listen("dea.shutdown").await;
    let heartbeats = controller.listen("dea.heartbeat").await;
    let exits = controller.listen("droplet.exited").await;
    let package = zip_dir(&repo_root().join("examples/static-site"));
    let cache = make_tgz(&[("./remembered.txt", "from the last staging")]);
    let blobs = BlobStore::start(vec![
        ("/packages/app.zip", package),
        ("/caches/app-e.tgz", cache),
    ])
    .await;
    let (agent, _directory) = start_agent(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");

    // The droplet URL in the start message does not exist: the local copy must be used.
    let mut start = start_message("app-e", 0, &blobs.url("/missing"), &"0".repeat(40));
    start["sha1"] = Value::Null;
    let staging = json!({
        "app_id": "app-e", "task_id": "task-e",
        "download_uri": blobs.url("/packages/app.zip"),
        "upload_uri": blobs.url("/upload/droplet-app-e"),
        "buildpack_cache_download_uri": blobs.url("/caches/app-e.tgz"),
        "buildpack_cache_upload_uri": blobs.url("/upload/cache-app-e"),
        "start_message": start,
    });
    let replies = controller
        .request_many(
            &format!("staging.{}.start", agent.id()),
            &staging,
            2,
            Duration::from_secs(60),
        )
        .await;
    assert!(
        replies.get(1).is_some_and(|r| r["error"].is_null()),
        "{replies:?}"
    );
    // The buildpack cache went in and came back out (same multipart protocol as droplets).
    let cache_back = blobs.blob("/cache-app-e").expect("the cache is uploaded");
    let entries = tar_listing(&cache_back);
    assert!(
        entries.iter().any(|e| e.ends_with("remembered.txt")),
        "{entries:?}"
    );
    let registration = registers
        .wait_for(Duration::from_secs(30), |m| m["app"] == "app-e")
        .await
        .expect("the staged app starts without downloading its droplet");
    let body = http_get(
        registration["host"].as_str().unwrap_or("127.0.0.1"),
        registration["port"].as_u64().unwrap_or(0),
    )
    .await;
    assert!(body.contains("Hello from a dea droplet"), "{body}");

    let evacuating = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.evacuate().await })
    };
    let goodbye = goodbyes
        .wait_for(Duration::from_secs(5), |m| m["id"] == agent.id())
        .await
        .expect("dea.shutdown on evacuation");
    assert_eq!(goodbye["app_id_to_count"]["app-e"], 1, "{goodbye}");
    heartbeats
        .wait_for(Duration::from_secs(5), |m| {
            m["droplets"][0]["state"] == "EVACUATING"
        })
        .await
        .expect("a heartbeat shows the instance EVACUATING");
    exits
        .wait_for(Duration::from_secs(5), |m| m["reason"] == "DEA_EVACUATION")
        .await
        .expect("droplet.exited DEA_EVACUATION for the classic health manager");
    advertise.clear();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        advertise.all().iter().all(|m| m["id"] != agent.id()),
        "an evacuating DEA stops advertising"
    );
    // Routes of an evacuating instance are still re-registered (traffic goes on).
    registers.clear();
    registers
        .wait_for(Duration::from_secs(3), |m| m["app"] == "app-e")
        .await
        .expect("routes kept while evacuating");
    assert!(
        !evacuating.is_finished(),
        "waits for the instance to be stopped"
    );
    // The controller has a replacement elsewhere and stops this one: evacuation completes.
    controller
        .publish("dea.stop", &json!({"droplet": "app-e"}))
        .await;
    tokio::time::timeout(Duration::from_secs(20), evacuating)
        .await
        .expect("evacuation finishes once nothing runs")
        .expect("evacuation task");
    assert!(agent.instances().list().is_empty());
}
