//! The container an instance runs in, and the start script inside it (reference dea_ng.md
//! §4.3): the environment the DEA gives an app, `.profile.d`, and a PID-1 shell that forwards
//! TERM to the app and records its exit status.

use super::network::CONTAINER_PORT;
use super::{InstanceInfo, InstanceSettings, StartRequest};
use crate::container::{BindMount, ContainerSpec};
use crate::netns::NetNamespace;
use std::time::Duration;

pub(super) fn container_spec(
    settings: &InstanceSettings,
    info: &InstanceInfo,
    request: &StartRequest,
    home: &std::path::Path,
    namespace: &NetNamespace,
    command: &str,
) -> ContainerSpec {
    let started = info.state_timestamp as u64;
    // The controller's part first, then what only the agent knows (§4.3).
    let mut vcap_application = match &request.vcap_application {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let ours = serde_json::json!({
        "application_id": request.application_id,
        "application_name": request.name,
        "application_version": request.version,
        "application_uris": request.uris,
        "instance_id": info.instance_id,
        "instance_index": request.index,
        "host": "0.0.0.0",
        "port": CONTAINER_PORT,
        "started_at_timestamp": started,
        "state_timestamp": started,
        "limits": {"mem": request.memory_mb, "disk": request.disk_mb, "fds": request.fds},
    });
    if let serde_json::Value::Object(ours) = ours {
        for (key, value) in ours {
            vcap_application.entry(key).or_insert(value);
        }
    }
    let vcap_application = serde_json::Value::Object(vcap_application);
    let vcap_services = match &request.services {
        serde_json::Value::Null => "{}".to_string(),
        services => services.to_string(),
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("VCAP_APPLICATION".into(), vcap_application.to_string()),
        ("VCAP_SERVICES".into(), vcap_services),
        ("MEMORY_LIMIT".into(), format!("{}m", request.memory_mb)),
        ("HOME".into(), "/home/vcap/app".into()),
        ("TMPDIR".into(), "/home/vcap/tmp".into()),
        ("VCAP_APP_HOST".into(), "0.0.0.0".into()),
        ("VCAP_APP_PORT".into(), CONTAINER_PORT.to_string()),
        ("PORT".into(), CONTAINER_PORT.to_string()),
        ("CF_INSTANCE_INDEX".into(), request.index.to_string()),
        ("CF_INSTANCE_IP".into(), "127.0.0.1".into()),
        ("CF_INSTANCE_PORT".into(), CONTAINER_PORT.to_string()),
        (
            "CF_INSTANCE_ADDR".into(),
            format!("127.0.0.1:{}", info.host_port),
        ),
        (
            "CF_INSTANCE_PORTS".into(),
            format!(
                "[{{\"external\":{},\"internal\":{CONTAINER_PORT}}}]",
                info.host_port
            ),
        ),
        ("CF_INSTANCE_GUID".into(), info.instance_id.clone()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    env.extend(request.env.iter().cloned());
    // Wait at the start gate (standard input: the agent says `go` once the instance's
    // network is in place, and a dead agent's EOF means stop), then source .profile.d
    // (after the app's own variables, so scripts can default them), then run the start
    // command as a child: this shell is PID 1 of the container, which the kernel shields
    // from signals it does not handle, so it forwards TERM itself.
    let script = "read -r gate; exec </dev/null; [ \"$gate\" = go ] || exit 125; \
        umask 077; unset GEM_PATH; \
        if [ -d app/.profile.d ]; then for i in app/.profile.d/*.sh; do [ -r \"$i\" ] && . \"$i\"; done; unset i; fi; \
        [ -r app/.profile ] && . app/.profile; \
        DROPLET_BASE_DIR=$PWD; cd app; \
        bash -c \"$1\" & child=$!; echo $child >> \"$DROPLET_BASE_DIR/run.pid\"; \
        trap 'kill -TERM $child 2>/dev/null' TERM INT; \
        wait $child; status=$?; \
        while kill -0 $child 2>/dev/null; do wait $child; status=$?; done; \
        echo $status > \"$DROPLET_BASE_DIR/exit_status\"; exit $status";
    ContainerSpec {
        id: info.container_id.clone(),
        args: vec![
            "/bin/bash".into(),
            "-c".into(),
            script.into(),
            "dea-start".into(),
            command.into(),
        ],
        env,
        cwd: "/home/vcap".into(),
        mounts: vec![
            BindMount {
                source: home.to_path_buf(),
                destination: "/home/vcap".into(),
                read_only: false,
            },
            // /app is the same directory, as a bind mount: works on any filesystem.
            BindMount {
                source: home.join("app"),
                destination: "/app".into(),
                read_only: false,
            },
        ],
        uid: settings.uid,
        gid: settings.gid,
        memory_limit_bytes: (request.memory_mb << 20) as i64,
        pids_limit: settings.pids_limit,
        timeout: Duration::MAX,
        tmp_size_mb: 64,
        network_namespace: Some(namespace.path()),
        file_mounts: Vec::new(),
        hostname: info.instance_id.chars().take(12).collect(),
        rootfs: request
            .stack
            .as_deref()
            .and_then(|name| settings.stacks.get(name))
            .or_else(|| settings.stacks.iter().next())
            .and_then(|stack| stack.rootfs.clone()),
    }
}
