//! The start of an instance (reference dea_ng.md §4.2–4.4): registered as BORN (or CRASHED at
//! once when refused), then STARTING while the droplet is fetched and unpacked into a fresh
//! home, its network namespace and published port are set up, and its container is spawned
//! with the start script; its monitor takes it from there.

use super::home::PreparedHome;
use super::layers::LayerError;
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
        self: &Arc<Self>,
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
        let (dir, netns_name, instance_id) = {
            let mut info = handle.info.lock();
            // Named before the home is made: an eviction of unused droplet trees counts
            // this instance's from now on.
            info.droplet_sha1 = sha1.clone();
            (
                info.dir.clone(),
                info.netns.clone(),
                info.instance_id.clone(),
            )
        };
        let home = dir.join("home");
        let limits = UnpackLimits {
            max_bytes: self.settings.max_droplet_mb << 20,
            max_files: 1_000_000,
            max_depth: self.settings.max_dir_depth,
        };
        let owner = (self.settings.uid, self.settings.gid);
        // The droplet is a tenant's archive: unpacked safely, then every path the agent
        // itself uses in it is opened beneath the home, never through a link. The network
        // namespace is made meanwhile: neither needs the other.
        let manager = self.clone();
        let (from, sha1_of) = (droplet_path.clone(), sha1.clone());
        let unpack = tokio::task::spawn_blocking(move || {
            manager.make_home(&sha1_of, &from, &dir, limits, owner)
        });
        let name = netns_name.clone();
        let netns = tokio::task::spawn_blocking(move || {
            let _ = NetNamespace::existing(&name); // a stale one from an earlier agent goes
            NetNamespace::create_named(&name)
        });
        let (prepared, namespace) = tokio::join!(unpack, netns);
        let namespace = namespace.map_err(|e| setup(&e))?.map_err(|e| setup(&e))?;
        let prepared = prepared.map_err(|e| setup(&e))??;
        let command = request
            .start_command
            .clone()
            .or(prepared.staged_command)
            .ok_or(InstanceError::MissingStartCommand)?;
        record("extract", timer);
        let timer = std::time::Instant::now();

        // The port first (the app's environment names it), then the network and the
        // container at once; the container waits at its gate until the network is there.
        let (reservation, host_port) = self
            .network
            .reserve_port(request.host_port, &self.published_ports())
            .map_err(|e| setup(&e))?;
        {
            let mut info = handle.info.lock();
            info.host_port = host_port;
            info.start_command = Some(command.clone());
        }
        let info = handle.info.lock().clone();
        let spec =
            spec::container_spec(&self.settings, &info, request, &home, &namespace, &command);
        // Saved before the container exists, so a restarted agent always knows of it.
        self.save_snapshot();
        // The network is wired while runc sets the container up: it needs only the
        // namespace, and the gate keeps the app from running before both are done.
        let (manager, egress) = (self.network.clone(), request.egress.clone());
        let attach = tokio::task::spawn_blocking(move || {
            manager.attach(&netns_name, &instance_id, (reservation, host_port), &egress)
        });
        let (gate_in, gate_out) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| setup(&e))?;
        let container = match self
            .runc
            .spawn(&spec, prepared.stdout, prepared.stderr, Some(gate_in))
            .await
        {
            Ok(container) => container,
            Err(e) => {
                if let Ok(Ok((network, _port))) = attach.await {
                    let manager = self.network.clone();
                    let _ = tokio::task::spawn_blocking(move || manager.detach(&network)).await;
                }
                return Err(setup(&e));
            }
        };
        let attached = attach
            .await
            .map_err(|e| setup(&e))
            .and_then(|r| r.map_err(|e| setup(&e)));
        let (network, port) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                // The gate closes unopened: the container's shell exits without running
                // the app.
                drop(gate_out);
                container.remove().await;
                return Err(e);
            }
        };
        handle.info.lock().network = Some(network.clone());
        // Saved before the app runs, so a restarted agent can always tear it down.
        self.save_snapshot();
        // A container that already died has closed its end: the monitor sees its exit.
        let _ = rustix::io::write(&gate_out, b"go\n");
        drop(gate_out);
        record("container", timer);
        Ok(Running {
            process: Process::Child(container),
            namespace,
            network,
            port,
        })
    }

    /// The instance's home at `dir/home`: layered over the droplet's shared tree where
    /// overlayfs allows, else unpacked from the droplet. Blocking.
    fn make_home(
        &self,
        sha1: &str,
        droplet: &std::path::Path,
        dir: &std::path::Path,
        limits: UnpackLimits,
        (uid, gid): (u32, u32),
    ) -> Result<PreparedHome, InstanceError> {
        let home = dir.join("home");
        if self.layers.usable() {
            match self
                .layers
                .mount_home(sha1, droplet, dir, limits, (uid, gid))
            {
                Ok(tree) => return PreparedHome::layered(&home, tree.staged_command, uid, gid),
                Err(LayerError::Droplet(e)) => return Err(e),
                // What the attempt left (an empty home) is unpacked into; the rest goes
                // with the instance's directory.
                Err(e @ (LayerError::Mount { .. } | LayerError::Unnameable(_))) => {
                    self.layers.give_up(&e);
                }
                Err(e @ LayerError::Io { .. }) => {
                    tracing::warn!("unpacking this instance's droplet in place: {e}");
                }
                Err(LayerError::Unkeyed(_)) => {}
            }
        }
        droplet::unpack_source(droplet, &home, limits)?;
        PreparedHome::new(&home, uid, gid)
    }

    /// Host ports of the instances that hold resources.
    fn published_ports(&self) -> std::collections::HashSet<u16> {
        self.instances
            .read()
            .values()
            .filter_map(|handle| {
                let info = handle.info.lock();
                (info.holds_resources() && info.host_port != 0).then_some(info.host_port)
            })
            .collect()
    }
}
