//! Crashed instances after the fact: their logs kept under `<base_dir>/crashes/<id>/logs`
//! (the directory server serves them from there), and the reaper that forgets old crashes and
//! removes their logs (reference dea_ng.md §4.4, the DEA's crash handler and reaper).

use super::{Handle, InstanceManager, InstanceState, home, now_secs};
use std::collections::HashMap;

impl InstanceManager {
    /// Removes kept crash logs older than `crash_lifetime`.
    /// Also drops CRASHED instances from the registry as the DEA's reaper does: past
    /// `crash_lifetime`, and all but the most recent crash of each app.
    pub fn reap_crashes(&self) {
        let lifetime = self.settings.crash_lifetime.as_secs_f64();
        let now = now_secs();
        let pruned = {
            let mut instances = self.instances.write();
            let mut latest: HashMap<String, (f64, String)> = HashMap::new();
            let mut expired = Vec::new();
            for (id, handle) in instances.iter() {
                let info = handle.info.lock();
                if info.state != InstanceState::Crashed {
                    continue;
                }
                if now - info.state_timestamp > lifetime {
                    expired.push(id.clone());
                    continue;
                }
                let newer = (info.state_timestamp, id.clone());
                match latest.get_mut(&info.application_id) {
                    Some(kept) if kept.0 >= newer.0 => expired.push(id.clone()),
                    Some(kept) => expired.push(std::mem::replace(kept, newer).1),
                    None => {
                        latest.insert(info.application_id.clone(), newer);
                    }
                }
            }
            for id in &expired {
                instances.remove(id);
            }
            !expired.is_empty()
        };
        if pruned {
            self.save_snapshot();
        }
        let Ok(entries) = std::fs::read_dir(self.settings.base_dir.join("crashes")) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > self.settings.crash_lifetime);
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub(super) async fn keep_crash_logs(&self, handle: &Handle) {
        self.reap_crashes();
        let info = handle.info.lock().clone();
        let target = self
            .settings
            .base_dir
            .join("crashes")
            .join(&info.instance_id)
            .join("logs");
        let home = info.dir.join("home");
        let kept = tokio::task::spawn_blocking(move || home::keep_crash_logs(&home, &target)).await;
        match kept {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(instance = %info.instance_id, "keeping crash logs: {e}"),
            Err(e) => tracing::warn!(instance = %info.instance_id, "keeping crash logs: {e}"),
        }
    }
}
