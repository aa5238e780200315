//! The agent's life after start (reference dea_ng.md §2.9): SIGUSR1 says goodbye, SIGUSR2
//! evacuates, SIGTERM shuts down — every step bounded, since NATS may be gone.

use super::agent::{Agent, Mode};
use super::messages::{self, Goodbye};
use crate::instance::InstanceState;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Agent {
    pub(super) fn goodbye(&self) -> Goodbye {
        Goodbye {
            id: self.id.clone(),
            ip: self.local_ip.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            app_id_to_count: self.instances.app_id_to_count(),
        }
    }

    /// SIGUSR1: say goodbye and stop advertising, but keep running.
    pub async fn quiesce(&self) {
        self.advertising.store(false, Ordering::Relaxed);
        self.publish("dea.shutdown", &self.goodbye()).await;
        self.flush().await;
    }

    /// SIGUSR2: drain. Stops advertising, marks instances EVACUATING (their routes stay, so
    /// traffic goes on until the controller has replacements and stops them), then shuts
    /// down once nothing is left running or the bail-out time passes.
    pub async fn evacuate(self: &Arc<Self>) {
        let serving = {
            let mut mode = self.mode.lock();
            let serving = *mode == Mode::Serving;
            if serving {
                *mode = Mode::Evacuating;
            }
            serving
        };
        if !serving {
            return;
        }
        tracing::info!("evacuating");
        self.quiesce().await;
        self.instances.evacuate();
        // The classic health manager learns of evacuation from droplet.exited.
        for info in self.instances.list() {
            if info.state == InstanceState::Evacuating {
                let message = messages::DropletExited {
                    cc_partition: info.cc_partition.clone(),
                    droplet: info.application_id.clone(),
                    version: info.application_version.clone(),
                    instance: info.instance_id.clone(),
                    index: info.instance_index,
                    reason: "DEA_EVACUATION".into(),
                    exit_status: -1,
                    exit_description: String::new(),
                    crash_timestamp: None,
                };
                self.publish("droplet.exited", &message).await;
            }
        }
        self.heartbeat().await;
        self.heartbeating.store(false, Ordering::Relaxed);
        let bail_out = tokio::time::Instant::now()
            + Duration::from_secs(self.config.agent.evacuation_bail_out_secs);
        let check = Duration::from_secs(self.config.agent.evacuation_check_interval_secs.max(1));
        loop {
            let drained = self.instances.list().iter().all(|i| {
                matches!(
                    i.state,
                    InstanceState::Stopping | InstanceState::Stopped | InstanceState::Crashed
                )
            }) && self.stagings.lock().is_empty();
            if drained || tokio::time::Instant::now() >= bail_out {
                break;
            }
            tokio::time::sleep(check).await;
        }
        self.shutdown().await;
    }

    /// SIGTERM: goodbye, stop advertising, unsubscribe, unregister the directory server, stop
    /// every instance and staging, flush.
    pub async fn shutdown(self: &Arc<Self>) {
        let already = {
            let mut mode = self.mode.lock();
            std::mem::replace(&mut *mode, Mode::ShuttingDown) == Mode::ShuttingDown
        };
        if already {
            return self.wait().await;
        }
        tracing::info!("shutting down");
        self.publish("dea.shutdown", &self.goodbye()).await;
        self.advertising.store(false, Ordering::Relaxed);
        self.stopping.cancel();
        if let Some(message) = self.directory_registration() {
            self.publish("router.unregister", &message).await;
        }
        let stagings: Vec<String> = self
            .stagings
            .lock()
            .values()
            .map(|t| t.app_id.clone())
            .collect();
        for app_id in stagings {
            self.stop_stagings(&app_id);
        }
        let mut stops = tokio::task::JoinSet::new();
        for info in self.instances.list() {
            let instances = self.instances.clone();
            stops.spawn(async move { instances.stop(&info.instance_id).await });
        }
        // Each stop is TERM, the grace period, then KILL; past that something is stuck
        // (runc, the kernel), and shutting down must still finish.
        let limit = self.instances.settings().stop_grace + Duration::from_secs(15);
        let all_stopped = async { while stops.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all_stopped).await.is_err() {
            tracing::warn!("instances still stopping after {limit:?}; shutting down anyway");
        }
        // Staging tasks answer their controller before they go.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.stagings.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.instances.release_network_if_idle().await;
        // Let the instance events (unregistrations) go out before the final flush.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.flush().await;
        let _ = self.finished.send(true);
        tracing::info!("shut down");
    }

    /// Waits until a shutdown has finished.
    pub async fn wait(&self) {
        let mut finished = self.finished.subscribe();
        while !*finished.borrow() {
            if finished.changed().await.is_err() {
                break;
            }
        }
    }
}
