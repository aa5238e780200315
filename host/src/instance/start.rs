//! The start of an instance (reference dea_ng.md §4.2–4.4): registered as BORN (or CRASHED at
//! once when refused), then STARTING while the droplet is fetched and unpacked into a fresh
//! home, its network namespace and published port are set up, and its container is spawned
//! with the start script; its monitor takes it from there.

use super::home::PreparedHome;
use super::monitor::{Process, Running, Watch};
use super::network::CONTAINER_PORT;
use super::{
    Handle, InstanceError, InstanceInfo, InstanceManager, InstanceState, StartRequest, ids, spec,
};
use crate::droplet::{self, UnpackLimits};
use crate::netns::NetNamespace;
use std::collections::BTreeMap;
use std::sync::Arc;

impl InstanceManager {
    /// Starts an instance; returns once it is RUNNING or CRASHED.
    pub async fn start(
        self: &Arc<Self>,
        request: StartRequest,
    ) -> Result<InstanceInfo, InstanceError> {
        let id = ids::new_id();
        let dir = self.settings.base_dir.join("instances").join(&id);
        let mut info = InstanceInfo {
            instance_id: id.clone(),
            application_id: request.application_id.clone(),
            droplet_sha1: String::new(),
            state: InstanceState::Born,
            state_timestamp: 0.0,
            state_timestamps: BTreeMap::new(),
            host_port: 0,
            container_port: CONTAINER_PORT,
            exit_status: None,
            exit_description: None,
            start_command: None,
            dir: dir.clone(),
            container_id: format!("dea-app-{id}"),
            netns: format!("dea-i-{}", &id[..16.min(id.len())]),
            memory_mb: request.memory_mb,
            disk_mb: request.disk_mb,
            start_timings_ms: BTreeMap::new(),
            application_name: request.name.clone(),
            application_version: request.version.clone(),
            application_uris: request.uris.clone(),
            instance_index: request.index,
            cc_partition: request.cc_partition.clone(),
            private_instance_id: ids::new_private_id(),
            network: None,
        };
        info.set_state(InstanceState::Born);
        let (handle, lifeline) = Handle::new(info);
        // Reserve under the registry lock, so concurrent starts cannot both fit.
        let refused = {
            let mut instances = self.instances.write();
            let refused = request
                .refusal
                .clone()
                .or_else(|| self.refuse_for_resources(&instances, &request));
            instances.insert(id.clone(), handle.clone());
            refused
        };
        if let Some(message) = refused {
            handle.info.lock().exit_description = Some(message);
            self.enter(&handle, InstanceState::Crashed);
            lifeline.finish();
            return Ok(handle.info.lock().clone());
        }
        self.enter(&handle, InstanceState::Starting);

        let running = match self.prepare(&handle, &request).await {
            Ok(running) => running,
            Err(error) => {
                handle.info.lock().exit_description = Some(error.to_string());
                self.enter(&handle, InstanceState::Crashed);
                self.release(&handle, None, None).await;
                lifeline.finish();
                return Ok(handle.info.lock().clone());
            }
        };
        let watch = Watch {
            health: request.health_check.then_some(request.health_check_timeout),
            reachability: request.health_check,
        };
        self.watch_over(handle.clone(), lifeline, running, watch)
            .await;
        Ok(handle.info.lock().clone())
    }

    /// Droplet, directories, network and container: everything up to a running process.
    async fn prepare(
        &self,
        handle: &Arc<Handle>,
        request: &StartRequest,
    ) -> Result<Running, InstanceError> {
        let setup = |e: &dyn std::fmt::Display| InstanceError::Setup(e.to_string());
        let timer = std::time::Instant::now();
        let record = |step: &str, since: std::time::Instant| {
            handle
                .info
                .lock()
                .start_timings_ms
                .insert(step.to_string(), since.elapsed().as_secs_f64() * 1000.0);
        };
        let (droplet_path, sha1) = self
            .droplets
            .get(&request.droplet, request.sha1.as_deref())
            .await?;
        record("droplet", timer);
        let timer = std::time::Instant::now();
        let dir = handle.info.lock().dir.clone();
        let home = dir.join("home");
        let limits = UnpackLimits {
            max_bytes: self.settings.max_droplet_mb << 20,
            max_files: 1_000_000,
            max_depth: self.settings.max_dir_depth,
        };
        let (uid, gid) = (self.settings.uid, self.settings.gid);
        let (from, to) = (droplet_path.clone(), home.clone());
        // The droplet is a tenant's archive: unpacked safely, then every path the agent
        // itself uses in it is opened beneath the home, never through a link.
        let prepared =
            tokio::task::spawn_blocking(move || -> Result<PreparedHome, InstanceError> {
                droplet::unpack_source(&from, &to, limits)?;
                PreparedHome::new(&to, uid, gid)
            })
            .await
            .map_err(|e| setup(&e))??;
        let command = request
            .start_command
            .clone()
            .or(prepared.staged_command)
            .ok_or(InstanceError::MissingStartCommand)?;
        record("extract", timer);
        let timer = std::time::Instant::now();

        let (netns_name, instance_id) = {
            let info = handle.info.lock();
            (info.netns.clone(), info.instance_id.clone())
        };
        let _ = NetNamespace::existing(&netns_name); // a stale one from an earlier agent goes
        let namespace = NetNamespace::create_named(&netns_name).map_err(|e| setup(&e))?;
        let (manager, requested, egress) = (
            self.network.clone(),
            request.host_port,
            request.egress.clone(),
        );
        let (network, port) = tokio::task::spawn_blocking(move || {
            manager.attach(&netns_name, &instance_id, requested, &egress)
        })
        .await
        .map_err(|e| setup(&e))??;
        {
            let mut info = handle.info.lock();
            info.droplet_sha1 = sha1;
            info.host_port = network.host_port;
            info.network = Some(network.clone());
            info.start_command = Some(command.clone());
        }
        // Saved before the container starts, so a restarted agent can always tear it down.
        self.save_snapshot();
        let info = handle.info.lock().clone();
        let spec =
            spec::container_spec(&self.settings, &info, request, &home, &namespace, &command);
        let container = match self
            .runc
            .spawn(&spec, prepared.stdout, prepared.stderr)
            .await
        {
            Ok(container) => container,
            Err(e) => {
                let manager = self.network.clone();
                let _ = tokio::task::spawn_blocking(move || manager.detach(&network)).await;
                return Err(setup(&e));
            }
        };
        record("container", timer);
        Ok(Running {
            process: Process::Child(container),
            namespace,
            network,
            port,
        })
    }
}
