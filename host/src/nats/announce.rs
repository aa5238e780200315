//! What the agent says on its own: `dea.advertise`/`staging.advertise`, `dea.heartbeat`,
//! `router.register`/`unregister` (for instances and the directory server) and
//! `droplet.exited`, on their intervals and as instances change (reference dea_ng.md
//! §2.2–§2.3, §2.7–§2.8).

use super::agent::{Agent, Mode};
use super::messages::{self, Advertise, DirectoryRegistration, Heartbeat};
use crate::instance::{InstanceInfo, InstanceState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Agent {
    /// `dea.advertise` and `staging.advertise`, unless the agent stopped advertising.
    pub(super) async fn advertise(&self) {
        self.advertise_dea().await;
        self.advertise_staging().await;
    }

    pub(super) async fn advertise_dea(&self) {
        if !self.advertising.load(Ordering::Relaxed) {
            return;
        }
        let (available_memory, available_disk) = self.instances.remaining();
        let message = Advertise {
            id: self.id.clone(),
            stacks: self.config.stacks.clone(),
            url: None,
            available_memory,
            available_disk,
            app_id_to_count: self.instances.app_id_to_count(),
            placement_properties: BTreeMap::from([(
                "zone".to_string(),
                self.config.agent.zone.clone(),
            )]),
        };
        self.publish("dea.advertise", &message).await;
    }

    pub(super) async fn advertise_staging(&self) {
        if !self.advertising.load(Ordering::Relaxed) || !self.config.agent.staging_enabled {
            return;
        }
        let (available_memory, available_disk) = self.instances.remaining();
        let message = messages::StagingAdvertise {
            id: self.id.clone(),
            stacks: self.config.stacks.clone(),
            available_memory,
            available_disk,
        };
        self.publish("staging.advertise", &message).await;
    }

    /// `dea.heartbeat`: every instance in STARTING, RUNNING, CRASHED or EVACUATING.
    pub(super) async fn heartbeat(&self) {
        let droplets = self
            .instances
            .list()
            .into_iter()
            .filter(|i| {
                matches!(
                    i.state,
                    InstanceState::Starting
                        | InstanceState::Running
                        | InstanceState::Crashed
                        | InstanceState::Evacuating
                )
            })
            .map(|i| messages::HeartbeatInstance {
                cc_partition: i.cc_partition.clone(),
                droplet: i.application_id.clone(),
                version: i.application_version.clone(),
                instance: i.instance_id.clone(),
                index: i.instance_index,
                state: i.state,
                state_timestamp: i.state_timestamp,
            })
            .collect();
        let message = Heartbeat {
            dea: self.id.clone(),
            droplets,
        };
        self.publish("dea.heartbeat", &message).await;
    }

    /// The router message for an instance's `uris`.
    pub(super) fn registration(
        &self,
        info: &InstanceInfo,
        uris: Vec<String>,
    ) -> messages::RouterRegistration {
        messages::RouterRegistration {
            dea: Some(self.id.clone()),
            app: Some(info.application_id.clone()),
            uris,
            host: self.local_ip.clone(),
            port: info.host_port,
            tags: BTreeMap::from([(
                "component".to_string(),
                format!("dea-{}", self.config.agent.index),
            )]),
            private_instance_id: Some(info.private_instance_id.clone()),
        }
    }

    pub(super) fn directory_registration(&self) -> Option<DirectoryRegistration> {
        let (host, port) = self.links.as_ref()?.route()?;
        Some(DirectoryRegistration {
            host: self.local_ip.clone(),
            port,
            uris: vec![host],
            tags: BTreeMap::from([(
                "component".to_string(),
                format!("directory-server-{}", self.config.agent.index),
            )]),
        })
    }

    /// Registers every RUNNING or EVACUATING instance with routes, and the directory server.
    pub(super) async fn register_routes(&self) {
        if self.mode() == Mode::ShuttingDown {
            return;
        }
        for info in self.instances.list() {
            let routed = matches!(
                info.state,
                InstanceState::Running | InstanceState::Evacuating
            );
            if routed && !info.application_uris.is_empty() {
                let message = self.registration(&info, info.application_uris.clone());
                self.publish("router.register", &message).await;
            }
        }
        if let Some(message) = self.directory_registration() {
            self.publish("router.register", &message).await;
        }
    }

    /// Routes, heartbeats and `droplet.exited` follow the instances' state changes.
    pub(super) fn follow_instances(self: Arc<Self>) {
        let mut events = self.instances.subscribe();
        tokio::spawn(async move {
            loop {
                let info = match events.recv().await {
                    Ok(info) => info,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("missed {n} instance events; re-registering routes");
                        self.register_routes().await;
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                self.on_instance_change(&info).await;
            }
        });
    }

    pub(super) async fn on_instance_change(&self, info: &InstanceInfo) {
        match info.state {
            InstanceState::Running => {
                if !info.application_uris.is_empty() {
                    let message = self.registration(info, info.application_uris.clone());
                    self.publish("router.register", &message).await;
                }
                self.heartbeat().await;
            }
            InstanceState::Stopping | InstanceState::Crashed => {
                if !info.application_uris.is_empty() {
                    let message = self.registration(info, info.application_uris.clone());
                    self.publish("router.unregister", &message).await;
                }
                if info.state == InstanceState::Crashed {
                    let message = messages::DropletExited {
                        cc_partition: info.cc_partition.clone(),
                        droplet: info.application_id.clone(),
                        version: info.application_version.clone(),
                        instance: info.instance_id.clone(),
                        index: info.instance_index,
                        reason: "CRASHED".into(),
                        exit_status: info.exit_status.map_or(-1, i64::from),
                        exit_description: info.exit_description.clone().unwrap_or_default(),
                        crash_timestamp: Some(info.state_timestamp as i64),
                    };
                    self.publish("droplet.exited", &message).await;
                }
            }
            _ => {}
        }
    }

    /// Advertising, heartbeats and route registration on their intervals.
    pub(super) fn periodic(self: Arc<Self>) {
        let every = |secs: u64| {
            let mut interval = tokio::time::interval(Duration::from_secs(secs.max(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        };
        let agent = self.clone();
        let mut advertise = every(self.config.agent.advertise_interval_secs);
        let mut heartbeat = every(self.config.agent.heartbeat_interval_secs);
        let mut register = every(self.config.agent.router_register_interval_secs);
        let mut reap = every(10);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = advertise.tick() => agent.advertise().await,
                    _ = heartbeat.tick() => {
                        if agent.heartbeating.load(Ordering::Relaxed) {
                            agent.heartbeat().await;
                        }
                    }
                    _ = register.tick() => agent.register_routes().await,
                    _ = reap.tick() => agent.instances.reap_crashes(),
                    _ = agent.stopping.cancelled() => break,
                }
            }
        });
    }
}
