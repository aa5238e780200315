//! The shared JetStream setup: every piece of platform state lives in a JetStream bucket or
//! stream, never only in one process's memory, so any controller can be killed, restarted or
//! run twice without losing or duplicating work.
//!
//! [`Platform::connect`] creates the buckets and the event stream if they are missing and binds
//! to them if they exist, so every controller and every `dea ctl` can call it at start. An
//! existing bucket's configuration wins over the options (a mismatch is logged): two processes
//! started with different options must not keep rewriting each other's bucket settings.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, kv, object_store, stream};

use crate::blobs::Blobs;
use crate::desired::{Apps, Routes};
pub use crate::error::{BlobUriError, StateError};
use crate::events::Events;
use crate::lease::Leases;
pub use crate::names::*;

/// How the buckets are created when they do not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformOptions {
    /// Copies of every bucket and the event stream: 1 on a single server, 3 in a cluster
    /// (survives the loss of one node).
    pub replicas: usize,
    /// `max_age` of the lease bucket: a lease whose holder stopped renewing disappears this long
    /// after its last renewal.
    pub lease_ttl: Duration,
    /// Revisions of each app spec kept (for operators looking at what changed).
    pub app_history: i64,
    /// Events kept per app; older ones are discarded first.
    pub events_per_app: i64,
    /// Events older than this are discarded (zero keeps them until `events_per_app` pushes
    /// them out).
    pub events_max_age: Duration,
    /// How long `connect` keeps retrying while JetStream is not ready (a fresh cluster needs a
    /// few seconds to elect its meta leader).
    pub setup_timeout: Duration,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        PlatformOptions {
            replicas: 1,
            lease_ttl: Duration::from_secs(15),
            app_history: 5,
            events_per_app: 1000,
            events_max_age: Duration::from_secs(30 * 24 * 3600),
            setup_timeout: Duration::from_secs(30),
        }
    }
}

impl PlatformOptions {
    /// The defaults with three replicas, for a three-node JetStream cluster.
    pub fn clustered() -> Self {
        PlatformOptions {
            replicas: 3,
            ..PlatformOptions::default()
        }
    }
}

/// The platform's handle on JetStream: the blobstore, desired state, routes, leases and
/// events. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Platform {
    client: async_nats::Client,
    context: jetstream::Context,
    blobs: Blobs,
    apps: Apps,
    routes: Routes,
    leases: Leases,
    events: Events,
}

impl Platform {
    /// Creates whatever bucket or stream is missing and binds to the rest. Idempotent: every
    /// controller and `dea ctl` calls it at start, concurrently if need be.
    pub async fn connect(
        client: async_nats::Client,
        opts: PlatformOptions,
    ) -> Result<Platform, StateError> {
        if !(1..=5).contains(&opts.replicas) {
            return Err(StateError::InvalidOptions {
                reason: "replicas must be between 1 and 5",
            });
        }
        if opts.lease_ttl < Duration::from_millis(100) {
            return Err(StateError::InvalidOptions {
                reason: "lease_ttl must be at least 100 ms",
            });
        }
        if opts.events_per_app < 1 || opts.app_history < 1 || opts.app_history > 64 {
            return Err(StateError::InvalidOptions {
                reason: "events_per_app must be positive and app_history within 1..=64",
            });
        }
        let context = jetstream::new(client.clone());
        let deadline = Instant::now() + opts.setup_timeout;

        let packages = until_ready(deadline, PACKAGES_BUCKET, || {
            ensure_object_store(&context, PACKAGES_BUCKET, &opts)
        })
        .await?;
        let droplets = until_ready(deadline, DROPLETS_BUCKET, || {
            ensure_object_store(&context, DROPLETS_BUCKET, &opts)
        })
        .await?;
        let apps = until_ready(deadline, APPS_BUCKET, || {
            ensure_kv(
                &context,
                kv::Config {
                    bucket: APPS_BUCKET.to_string(),
                    description: "dea desired app state".to_string(),
                    history: opts.app_history,
                    num_replicas: opts.replicas,
                    ..Default::default()
                },
            )
        })
        .await?;
        let routes = until_ready(deadline, ROUTES_BUCKET, || {
            ensure_kv(
                &context,
                kv::Config {
                    bucket: ROUTES_BUCKET.to_string(),
                    description: "dea route ownership (host -> app)".to_string(),
                    history: 1,
                    num_replicas: opts.replicas,
                    ..Default::default()
                },
            )
        })
        .await?;
        // History 1 matters here: max_age counts from each message's own write, so with only
        // the latest revision kept, a key vanishes `max_age` after its last renewal.
        let leases = until_ready(deadline, LEASES_BUCKET, || {
            ensure_kv(
                &context,
                kv::Config {
                    bucket: LEASES_BUCKET.to_string(),
                    description: "dea leases; max_age is the lease TTL".to_string(),
                    history: 1,
                    max_age: opts.lease_ttl,
                    num_replicas: opts.replicas,
                    ..Default::default()
                },
            )
        })
        .await?;
        let events = until_ready(deadline, EVENTS_STREAM, || {
            ensure_stream(
                &context,
                stream::Config {
                    name: EVENTS_STREAM.to_string(),
                    description: Some("dea app events, one subject per app".to_string()),
                    subjects: vec![format!("{EVENTS_SUBJECT_PREFIX}.>")],
                    max_messages_per_subject: opts.events_per_app,
                    max_age: opts.events_max_age,
                    num_replicas: opts.replicas,
                    storage: stream::StorageType::File,
                    discard: stream::DiscardPolicy::Old,
                    allow_direct: true,
                    ..Default::default()
                },
            )
        })
        .await?;

        let lease_ttl = leases.stream.cached_info().config.max_age;
        if lease_ttl.is_zero() {
            return Err(StateError::InvalidOptions {
                reason: "the existing dea-leases bucket has no max_age, so leases never expire",
            });
        }
        if lease_ttl != opts.lease_ttl {
            tracing::warn!(
                bucket_ttl = ?lease_ttl,
                requested_ttl = ?opts.lease_ttl,
                "dea-leases already exists with another TTL; using the bucket's"
            );
        }

        Ok(Platform {
            blobs: Blobs::new(packages, droplets),
            apps: Apps::new(apps),
            routes: Routes::new(routes),
            leases: Leases::new(leases, lease_ttl),
            events: Events::new(context.clone(), events),
            client,
            context,
        })
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.context
    }
}

/// Retries `attempt` until it succeeds or `deadline` passes. Any error is retried: while a
/// cluster elects its meta leader, or before enough peers have joined for the replicas,
/// JetStream answers with several different errors (or none, a timeout) that all clear up.
async fn until_ready<T, F, Fut>(
    deadline: Instant,
    what: &'static str,
    mut attempt: F,
) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, async_nats::Error>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(source) if Instant::now() >= deadline => {
                return Err(StateError::Setup { what, source });
            }
            Err(err) => {
                tracing::debug!(what, error = %err, "JetStream not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Whether the stream exists (`Ok(false)` only on JetStream's own "stream not found").
async fn stream_exists(
    context: &jetstream::Context,
    name: &str,
) -> Result<bool, async_nats::Error> {
    match context.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(false)
            }
            _ => Err(err.into()),
        },
    }
}

fn warn_on_replicas(what: &str, info: &stream::Info, wanted: usize) {
    if info.config.num_replicas != wanted {
        tracing::warn!(
            what,
            existing = info.config.num_replicas,
            wanted,
            "bucket already exists with another replica count; keeping it"
        );
    }
}

/// The stream behind KV bucket `config.bucket`, laid out as every NATS client expects a KV
/// stream (ADR-8): `KV_<bucket>` on `$KV.<bucket>.>`, one subject per key, history as
/// messages per subject, rollups allowed, direct get on.
///
/// Built here rather than by `Context::create_key_value` because that first asks for the
/// account's info, which async-nats 0.51 cannot parse from nats-server 2.9 (it requires the
/// `reserved_memory`/`reserved_storage` fields that servers before 2.10 do not send).
fn kv_stream_config(config: &kv::Config) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", config.bucket),
        description: Some(config.description.clone()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history.max(1),
        max_bytes: -1,
        max_messages: -1,
        max_age: config.max_age,
        storage: stream::StorageType::File,
        num_replicas: config.num_replicas.max(1),
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        // Reads go through the stream's leader: a direct get may be answered by a replica
        // that has not applied the last write yet, and `dea ctl push` reads its own create
        // at once (so do the lease and compare-and-set, which must see the latest revision).
        allow_direct: false,
        // The server's default duplicate window (2 min) may not exceed max_age.
        duplicate_window: if config.max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            config.max_age.min(Duration::from_secs(120))
        },
        ..Default::default()
    }
}

async fn ensure_kv(
    context: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, async_nats::Error> {
    ensure_stream(context, kv_stream_config(&config)).await?;
    Ok(context.get_key_value(config.bucket.as_str()).await?)
}

async fn ensure_object_store(
    context: &jetstream::Context,
    bucket: &'static str,
    opts: &PlatformOptions,
) -> Result<object_store::ObjectStore, async_nats::Error> {
    if !stream_exists(context, &format!("OBJ_{bucket}")).await? {
        let config = object_store::Config {
            bucket: bucket.to_string(),
            description: Some(format!("dea blobs ({bucket})")),
            num_replicas: opts.replicas,
            ..Default::default()
        };
        match context.create_object_store(config).await {
            Ok(store) => {
                tracing::info!(bucket, replicas = opts.replicas, "created object store");
                return Ok(store);
            }
            Err(err) => tracing::debug!(bucket, error = %err, "creating object store failed"),
        }
    }
    let store = context.get_object_store(bucket).await?;
    let info = context.get_stream(format!("OBJ_{bucket}")).await?;
    warn_on_replicas(bucket, info.cached_info(), opts.replicas);
    Ok(store)
}

async fn ensure_stream(
    context: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, async_nats::Error> {
    let name = config.name.clone();
    let replicas = config.num_replicas;
    if !stream_exists(context, &name).await? {
        match context.create_stream(config).await {
            Ok(stream) => {
                tracing::info!(stream = name, replicas, "created stream");
                return Ok(stream);
            }
            Err(err) => tracing::debug!(stream = name, error = %err, "creating stream failed"),
        }
    }
    let stream = context.get_stream(name.as_str()).await?;
    warn_on_replicas(&name, stream.cached_info(), replicas);
    Ok(stream)
}
