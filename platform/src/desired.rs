//! Desired state: what each app should be ([`AppSpec`] in KV `dea-apps`) and which app owns
//! which host ([`Routes`] in KV `dea-routes`).
//!
//! Every write is a compare-and-set on the KV revision, so two controllers (or a controller
//! and `dea ctl`) never silently overwrite each other: the loser gets
//! [`StateError::Conflict`] and re-reads, or lets [`Apps::modify`] do that for it.

use std::collections::BTreeMap;
use std::pin::Pin;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::blobs::BlobRef;
use crate::error::{StateError, validate_host, validate_label};
use crate::names::{APPS_BUCKET, NameKind, ROUTES_BUCKET};
use crate::streams::{is_kv_tombstone_header, last_per_subject};

/// Whether the app should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppState {
    Started,
    Stopped,
}

/// The staged droplet an app runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropletRef {
    pub sha1: String,
    pub blob: BlobRef,
    pub detected_buildpack: Option<String>,
    pub start_command: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagingState {
    Pending,
    Running,
    Failed(String),
    Succeeded,
}

/// The app's current (or last) staging task, so a controller that takes over knows whether
/// one is in flight instead of starting a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingStatus {
    pub task_id: String,
    /// The agent (DEA id) staging it, once one accepted.
    pub agent: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub state: StagingState,
    /// The agent's signed `task_streaming_log_url`, from its setup reply (`dea ctl push`
    /// streams the log from it, through the router).
    #[serde(default)]
    pub log_url: Option<String>,
}

/// What an app should be. Stored as JSON under its name in `dea-apps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    /// The DEA's `droplet` (app id) in every message.
    pub guid: String,
    pub state: AppState,
    pub instances: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// A map, so a variable cannot appear twice; ordered, so equal specs serialise equally.
    pub env: BTreeMap<String, String>,
    /// Host names routed to the app.
    pub routes: Vec<String>,
    pub buildpack: Option<String>,
    pub stack: Option<String>,
    pub package: Option<BlobRef>,
    pub droplet: Option<DropletRef>,
    /// The DEA's `version`: a new uuid whenever the droplet or the env changes, which is what
    /// tells agents (and the controller) that running instances are out of date.
    pub version: String,
    pub staging: Option<StagingStatus>,
    /// Set by [`Apps`] on every write.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl AppSpec {
    /// A stopped app with one instance, 256 MB of memory, 1 GB of disk and fresh ids.
    pub fn new(name: &str) -> AppSpec {
        AppSpec {
            name: name.to_string(),
            guid: uuid::Uuid::new_v4().to_string(),
            state: AppState::Stopped,
            instances: 1,
            memory_mb: 256,
            disk_mb: 1024,
            env: BTreeMap::new(),
            routes: Vec::new(),
            buildpack: None,
            stack: None,
            package: None,
            droplet: None,
            version: new_version(),
            staging: None,
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    /// Gives the spec a new `version` if its droplet or env differs from `before` and the
    /// caller did not pick a new version already.
    fn bump_version_since(&mut self, before: &AppSpec) {
        if (self.droplet != before.droplet || self.env != before.env)
            && self.version == before.version
        {
            self.version = new_version();
        }
    }
}

fn new_version() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A change seen by [`Apps::watch`].
#[derive(Clone, Debug, PartialEq)]
pub enum AppChange {
    Put { spec: Box<AppSpec>, revision: u64 },
    Deleted { name: String, revision: u64 },
}

/// How often [`Apps::modify`] re-reads and retries after losing a compare-and-set.
pub const MODIFY_ATTEMPTS: u32 = 10;

/// Desired app state in KV `dea-apps`. Cheap to clone.
#[derive(Clone)]
pub struct Apps {
    kv: kv::Store,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps").finish_non_exhaustive()
    }
}

impl Apps {
    pub(crate) fn new(kv: kv::Store) -> Apps {
        Apps { kv }
    }

    /// Stores a new app; [`StateError::AlreadyExists`] if the name is taken. Returns the spec
    /// as stored and its revision.
    pub async fn create(&self, mut spec: AppSpec) -> Result<(AppSpec, u64), StateError> {
        validate_label(NameKind::App, &spec.name)?;
        if spec.version.is_empty() {
            spec.version = new_version();
        }
        spec.updated_at = OffsetDateTime::now_utc();
        let name = spec.name.clone();
        let value = encode(&spec)?;
        match self.kv.create(&name, value).await {
            Ok(revision) => {
                tracing::info!(app = name, revision, "created app");
                Ok((spec, revision))
            }
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
                Err(StateError::AlreadyExists { name })
            }
            Err(err) => Err(StateError::nats("create", APPS_BUCKET, &name, err)),
        }
    }

    /// The app's spec and revision, `None` if there is no such app.
    pub async fn get(&self, name: &str) -> Result<Option<(AppSpec, u64)>, StateError> {
        validate_label(NameKind::App, name)?;
        self.entry(name, None).await
    }

    async fn entry(
        &self,
        name: &str,
        revision: Option<u64>,
    ) -> Result<Option<(AppSpec, u64)>, StateError> {
        let entry = match revision {
            Some(revision) => self.kv.entry_for_revision(name, revision).await,
            None => self.kv.entry(name).await,
        }
        .map_err(|err| StateError::nats("get", APPS_BUCKET, name, err))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                Ok(Some((decode(name, &entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Replaces the app's spec if it is still at `revision`; [`StateError::Conflict`] if
    /// anyone wrote it since. Bumps `version` when the droplet or env changed. Returns the
    /// spec as stored and its new revision.
    pub async fn update(
        &self,
        name: &str,
        revision: u64,
        mut spec: AppSpec,
    ) -> Result<(AppSpec, u64), StateError> {
        validate_label(NameKind::App, name)?;
        if spec.name != name {
            return Err(StateError::NameMismatch {
                key: name.to_string(),
                name: spec.name,
            });
        }
        let conflict = || StateError::Conflict {
            name: name.to_string(),
            revision,
        };
        // The spec at `revision` tells whether the droplet or env changed. A revision that is
        // gone or not this app's is stale by definition.
        let (before, _) = self
            .entry(name, Some(revision))
            .await?
            .ok_or_else(conflict)?;
        spec.bump_version_since(&before);
        spec.updated_at = OffsetDateTime::now_utc();
        let value = encode(&spec)?;
        match self.kv.update(name, value, revision).await {
            Ok(new_revision) => {
                tracing::debug!(app = name, revision = new_revision, "updated app");
                Ok((spec, new_revision))
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Err(conflict()),
            Err(err) => Err(StateError::nats("update", APPS_BUCKET, name, err)),
        }
    }

    /// Reads the app, applies `change`, and writes it back with compare-and-set, re-reading
    /// and re-applying when someone else wrote in between (up to [`MODIFY_ATTEMPTS`] times).
    /// `change` may run more than once, so it should only compute from the spec it is given.
    /// If it leaves the spec as it was, nothing is written.
    pub async fn modify<F>(&self, name: &str, mut change: F) -> Result<(AppSpec, u64), StateError>
    where
        F: FnMut(&mut AppSpec),
    {
        for attempt in 1..=MODIFY_ATTEMPTS {
            let (before, revision) = self.get(name).await?.ok_or_else(|| StateError::NotFound {
                name: name.to_string(),
            })?;
            let mut spec = before.clone();
            change(&mut spec);
            if spec == before {
                return Ok((before, revision));
            }
            match self.update(name, revision, spec).await {
                Err(StateError::Conflict { .. }) => {
                    tracing::debug!(app = name, attempt, "app changed under us; retrying");
                    // Spread out writers that keep colliding.
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 20);
                    tokio::time::sleep(std::time::Duration::from_millis(
                        jitter * u64::from(attempt),
                    ))
                    .await;
                }
                other => return other,
            }
        }
        Err(StateError::Contended {
            name: name.to_string(),
            attempts: MODIFY_ATTEMPTS,
        })
    }

    /// Deletes the app; `false` if there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, StateError> {
        validate_label(NameKind::App, name)?;
        if self.get(name).await?.is_none() {
            return Ok(false);
        }
        self.kv
            .delete(name)
            .await
            .map_err(|err| StateError::nats("delete", APPS_BUCKET, name, err))?;
        tracing::info!(app = name, "deleted app");
        Ok(true)
    }

    /// Every app with its revision, in name order.
    pub async fn list(&self) -> Result<Vec<(AppSpec, u64)>, StateError> {
        let prefix = format!("$KV.{APPS_BUCKET}.");
        let messages = last_per_subject(&self.kv.stream, APPS_BUCKET, format!("{prefix}>")).await?;
        let mut apps = Vec::with_capacity(messages.len());
        for message in messages {
            if is_kv_tombstone_header(&message.headers) {
                continue;
            }
            let key = message.subject.trim_start_matches(prefix.as_str());
            apps.push((decode(key, &message.payload)?, message.sequence));
        }
        apps.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(apps)
    }

    /// Every app's current spec, then every change as it happens. A spec that does not
    /// decode is reported as an error item and the watch goes on.
    pub async fn watch(
        &self,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<AppChange, StateError>> + Send>>, StateError> {
        let watch = self
            .kv
            .watch_all()
            .await
            .map_err(|err| StateError::nats("watch", APPS_BUCKET, ">", err))?;
        Ok(Box::pin(watch.map(|entry| {
            let entry = entry.map_err(|err| StateError::nats("watch", APPS_BUCKET, ">", err))?;
            Ok(match entry.operation {
                Operation::Put => AppChange::Put {
                    spec: Box::new(decode(&entry.key, &entry.value)?),
                    revision: entry.revision,
                },
                Operation::Delete | Operation::Purge => AppChange::Deleted {
                    name: entry.key,
                    revision: entry.revision,
                },
            })
        })))
    }
}

fn encode(spec: &AppSpec) -> Result<Bytes, StateError> {
    serde_json::to_vec(spec)
        .map(Bytes::from)
        .map_err(|source| StateError::Encode {
            what: "app spec",
            key: spec.name.clone(),
            source,
        })
}

fn decode(name: &str, value: &[u8]) -> Result<AppSpec, StateError> {
    serde_json::from_slice(value).map_err(|source| StateError::Decode {
        what: "app spec",
        key: name.to_string(),
        source,
    })
}

/// Who owns a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RouteOwner {
    app: String,
}

/// How often claim and release re-read a route that changed under them.
const ROUTE_ATTEMPTS: u32 = 5;

/// Route ownership in KV `dea-routes`: a host belongs to at most one app. Cheap to clone.
#[derive(Clone)]
pub struct Routes {
    kv: kv::Store,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

impl Routes {
    pub(crate) fn new(kv: kv::Store) -> Routes {
        Routes { kv }
    }

    /// Claims `host` for `app`. Claiming a host the app already owns succeeds;
    /// one owned by another app is refused with [`StateError::RouteTaken`].
    pub async fn claim(&self, host: &str, app: &str) -> Result<(), StateError> {
        validate_host(host)?;
        validate_label(NameKind::App, app)?;
        let value = serde_json::to_vec(&RouteOwner {
            app: app.to_string(),
        })
        .map_err(|source| StateError::Encode {
            what: "route",
            key: host.to_string(),
            source,
        })?;
        for _ in 0..ROUTE_ATTEMPTS {
            // `create` only succeeds if nobody owns the host, atomically on the server.
            match self.kv.create(host, Bytes::from(value.clone())).await {
                Ok(_) => {
                    tracing::info!(host, app, "claimed route");
                    return Ok(());
                }
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {}
                Err(err) => return Err(StateError::nats("claim", ROUTES_BUCKET, host, err)),
            }
            match self.owner_entry(host).await? {
                Some((owner, _)) if owner == app => return Ok(()),
                Some((owner, _)) => {
                    return Err(StateError::RouteTaken {
                        host: host.to_string(),
                        owner,
                    });
                }
                // Released between our create and our read: try again.
                None => continue,
            }
        }
        Err(StateError::Contended {
            name: host.to_string(),
            attempts: ROUTE_ATTEMPTS,
        })
    }

    /// Releases `host` if `app` owns it ([`StateError::NotRouteOwner`] otherwise); releasing
    /// a host nobody owns succeeds.
    pub async fn release(&self, host: &str, app: &str) -> Result<(), StateError> {
        validate_host(host)?;
        validate_label(NameKind::App, app)?;
        for _ in 0..ROUTE_ATTEMPTS {
            let Some((owner, revision)) = self.owner_entry(host).await? else {
                return Ok(());
            };
            if owner != app {
                return Err(StateError::NotRouteOwner {
                    host: host.to_string(),
                    owner,
                    app: app.to_string(),
                });
            }
            // Only delete the revision we saw owned by `app`, never a newer claim.
            match self.kv.delete_expect_revision(host, Some(revision)).await {
                Ok(()) => {
                    tracing::info!(host, app, "released route");
                    return Ok(());
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(StateError::nats("release", ROUTES_BUCKET, host, err)),
            }
        }
        Err(StateError::Contended {
            name: host.to_string(),
            attempts: ROUTE_ATTEMPTS,
        })
    }

    /// The app owning `host`, if any.
    pub async fn owner(&self, host: &str) -> Result<Option<String>, StateError> {
        validate_host(host)?;
        Ok(self.owner_entry(host).await?.map(|(owner, _)| owner))
    }

    async fn owner_entry(&self, host: &str) -> Result<Option<(String, u64)>, StateError> {
        let entry = self
            .kv
            .entry(host)
            .await
            .map_err(|err| StateError::nats("get", ROUTES_BUCKET, host, err))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                Ok(Some((decode_owner(host, &entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Every claimed host with its owner, in host order.
    pub async fn list(&self) -> Result<Vec<(String, String)>, StateError> {
        let prefix = format!("$KV.{ROUTES_BUCKET}.");
        let messages =
            last_per_subject(&self.kv.stream, ROUTES_BUCKET, format!("{prefix}>")).await?;
        let mut routes = Vec::with_capacity(messages.len());
        for message in messages
            .iter()
            .filter(|m| !is_kv_tombstone_header(&m.headers))
        {
            let host = message.subject.trim_start_matches(prefix.as_str());
            routes.push((host.to_string(), decode_owner(host, &message.payload)?));
        }
        routes.sort();
        Ok(routes)
    }
}

fn decode_owner(host: &str, value: &[u8]) -> Result<String, StateError> {
    serde_json::from_slice::<RouteOwner>(value)
        .map(|owner| owner.app)
        .map_err(|source| StateError::Decode {
            what: "route",
            key: host.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_bumps_only_on_droplet_or_env() {
        let before = AppSpec::new("a");
        let mut scaled = before.clone();
        scaled.instances = 3;
        scaled.bump_version_since(&before);
        assert_eq!(scaled.version, before.version);

        let mut env = before.clone();
        env.env.insert("K".into(), "V".into());
        env.bump_version_since(&before);
        assert_ne!(env.version, before.version);
    }

    #[test]
    fn spec_json_round_trip() {
        let mut spec = AppSpec::new("a");
        spec.staging = Some(StagingStatus {
            task_id: "t".into(),
            agent: None,
            started_at: OffsetDateTime::UNIX_EPOCH,
            state: StagingState::Failed("no buildpack".into()),
            log_url: None,
        });
        let json = serde_json::to_string(&spec).expect("encodes");
        assert!(json.contains(r#""state":"STOPPED""#), "{json}");
        assert!(json.contains(r#""failed":"no buildpack""#), "{json}");
        let back: AppSpec = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, spec);
    }
}
