//! An agent restart while another process took an instance's host port: the app keeps
//! running and serving, and the port is not handed to another instance.

use crate::instances::{Fixture, http_get, runc, settings, start_request};
use dea::instance::{InstanceManager, InstanceState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_bound_by_another_process_during_a_restart_does_not_kill_the_app() {
    let Fixture {
        base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let state = base.path().join("dea");
    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let pid = manager.pid(&info.instance_id).await.expect("pid");
    manager.abandon().await;
    drop(manager);

    // While no agent holds the port, something else binds it.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", info.host_port)).expect("bind");
    let manager = InstanceManager::recover(settings(&state), runc(&state))
        .await
        .expect("recovered");
    let resumed = manager.get(&info.instance_id).expect("recovered");
    assert_eq!(resumed.state, InstanceState::Running, "{resumed:?}");
    assert_eq!(manager.pid(&info.instance_id).await, Some(pid), "restarted");
    // Its traffic still reaches it (the DNAT element), not the squatter.
    let response = http_get(resumed.host_port, "/").await;
    assert!(response.contains("Hello from a dea droplet"), "{response}");

    // Once the squatter goes, the port is still the instance's: a new one gets another.
    drop(squatter);
    let second = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(second.state, InstanceState::Running, "{second:?}");
    assert_ne!(second.host_port, resumed.host_port);
    for id in [&info.instance_id, &second.instance_id] {
        manager.stop(id).await.expect("stop");
    }
}
