//! The DEA's NATS messages, one struct each, as they appear on the wire (reference
//! dea_ng.md §2–§4), in a crate of their own: the agent answers them and the platform around
//! it (controller, router, `dea ctl`) sends them, and both must read the same contract.
//! Incoming messages are parsed leniently where the DEA was lenient (unknown fields ignored,
//! optional fields optional) and strictly where it was strict (`limits` must hold integers);
//! a malformed message is a [`MessageError`], never a panic.

pub mod blob;
pub use blob::{BlobUri, Bucket};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An instance's state, as the DEA names them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Born,
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
    Resuming,
    /// The agent is draining (SIGUSR2): still serving, to be stopped at shutdown.
    Evacuating,
}

impl InstanceState {
    /// The wire name (`RUNNING`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Born => "BORN",
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Stopped => "STOPPED",
            InstanceState::Crashed => "CRASHED",
            InstanceState::Resuming => "RESUMING",
            InstanceState::Evacuating => "EVACUATING",
        }
    }
}

/// Why an incoming message was rejected. A well-formed JSON object of the wrong shape names
/// the field (`download_uri: invalid type...`), which is what a controller's operator needs.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("malformed {kind} message: {source}")]
    Syntax {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("malformed {kind} message: {source}")]
    Field {
        kind: &'static str,
        #[source]
        source: serde_path_to_error::Error<serde_json::Error>,
    },
}

/// Parses an incoming message of type `T`.
pub fn parse<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    payload: &[u8],
) -> Result<T, MessageError> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|source| MessageError::Syntax { kind, source })?;
    serde_path_to_error::deserialize(value).map_err(|source| MessageError::Field { kind, source })
}

/// A defaulted field given as `null` means the same as the field left out: the reference's
/// optional lists and objects (`admin_buildpacks`, `properties`, `env`, `uris`...) are often
/// sent as `null` by controllers.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An object that may be absent, `null` or `{}`, all meaning "none".
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(map)) if map.is_empty() => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// `limits` of a start message: all required integers (§4.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub mem: u64,
    pub disk: u64,
    pub fds: u64,
}

/// A bound service (§4.1); only the keys the DEA passes on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub label: String,
    #[serde(default)]
    pub credentials: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_option: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
}

/// `dea.<uuid>.start` (§4.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartMessage {
    /// The app guid.
    pub droplet: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub uris: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub index: u32,
    /// Droplet SHA-1; `null` in a staging request's embedded start message.
    #[serde(default)]
    pub sha1: Option<String>,
    #[serde(rename = "executableUri", default)]
    pub executable_uri: Option<String>,
    /// `"K=V"` strings, split on the first `=`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    pub limits: Limits,
    #[serde(default, deserialize_with = "null_as_default")]
    pub services: Vec<Service>,
    pub cc_partition: String,
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub start_command: Option<String>,
    #[serde(default)]
    pub health_check_timeout: Option<u64>,
    #[serde(default)]
    pub vcap_application: serde_json::Value,
    #[serde(default, deserialize_with = "null_as_default")]
    pub egress_network_rules: Vec<serde_json::Value>,
}

impl StartMessage {
    /// `env` as pairs, split on the first `=` (entries without one are skipped).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        split_env(&self.env)
    }
}

fn split_env(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An admin buildpack in a staging request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminBuildpack {
    pub url: String,
    pub key: String,
}

/// `properties` of a staging request (§3.2).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StagingProperties {
    #[serde(default, deserialize_with = "null_as_default")]
    pub services: Vec<Service>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub environment: Vec<String>,
    #[serde(default)]
    pub resources: serde_json::Value,
    #[serde(default)]
    pub meta: serde_json::Value,
    #[serde(default)]
    pub buildpack: Option<String>,
    #[serde(default)]
    pub buildpack_git_url: Option<String>,
    #[serde(default)]
    pub buildpack_key: Option<String>,
}

impl StagingProperties {
    /// `meta.command`, the user's custom start command.
    pub fn custom_command(&self) -> Option<String> {
        self.meta
            .get("command")
            .and_then(|c| c.as_str())
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string)
    }

    pub fn env_pairs(&self) -> Vec<(String, String)> {
        split_env(&self.environment)
    }
}

/// `staging.<uuid>.start` / `staging` (§3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingRequest {
    pub app_id: String,
    pub task_id: String,
    #[serde(default)]
    pub stack: Option<String>,
    pub download_uri: String,
    pub upload_uri: String,
    #[serde(default)]
    pub buildpack_cache_download_uri: Option<String>,
    #[serde(default)]
    pub buildpack_cache_upload_uri: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub admin_buildpacks: Vec<AdminBuildpack>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub properties: StagingProperties,
    /// Started after staging only if present and non-empty (§3.2): `{}` and `null` mean
    /// "stage only", like an absent key.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub start_message: Option<StartMessage>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub egress_network_rules: Vec<serde_json::Value>,
    #[serde(default)]
    pub memory_limit: Option<u64>,
    #[serde(default)]
    pub disk_limit: Option<u64>,
    #[serde(default)]
    pub accepts_http: Option<bool>,
}

/// The first reply to a staging request, once the workspace exists (§3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingSetupReply {
    pub task_id: String,
    pub task_streaming_log_url: Option<String>,
    pub error: Option<String>,
}

/// `error_info` of a failed staging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// The completion reply to a staging request (§3.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingCompletionReply {
    pub task_id: String,
    pub app_id: String,
    pub detected_buildpack: Option<String>,
    pub buildpack_key: Option<String>,
    pub droplet_sha1: Option<String>,
    pub detected_start_command: Option<String>,
    pub procfile: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_info: Option<ErrorInfo>,
    /// dea's extension (no DEA field changes meaning): what went into the droplet and which
    /// downloads the cache answered. Absent when the staging failed, or from another DEA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dea_bill_of_materials: Option<BillOfMaterials>,
}

/// `dea_bill_of_materials` of a completion reply: the droplet's `sbom.cdx.json` facts, plus
/// what only the staging run knows (whether each download was a cache hit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillOfMaterials {
    /// SHA-256 of the app source: of its bytes as received (`digest_of: file`), or of its
    /// tree (`tree`, dea's `dea-tree-v1`).
    pub app_sha256: String,
    pub app_digest_of: String,
    pub stack: String,
    pub buildpacks: Vec<BuildpackUsed>,
    /// Every download of the run, in a stable order; a URL fetched twice appears twice.
    pub downloads: Vec<DownloadRecord>,
    pub pins_required: bool,
    pub fully_pinned: bool,
}

/// A buildpack of [`BillOfMaterials`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildpackUsed {
    pub id: String,
    pub version: String,
    /// `wasm` or `classic`.
    pub kind: String,
    pub sha256: String,
    /// `file` (the wasm component) or `tree` (a classic buildpack's directory).
    pub digest_of: String,
}

/// A download of [`BillOfMaterials`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadRecord {
    pub url_asked: String,
    pub url_used: String,
    pub sha256: String,
    pub size: u64,
    pub buildpack: String,
    pub phase: String,
    pub cache_hit: bool,
    pub pinned: bool,
    /// `buildpack` or `fetch.pins`; absent when not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_by: Option<String>,
}

/// `dea.advertise` (§2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advertise {
    pub id: String,
    pub stacks: Vec<String>,
    pub url: Option<String>,
    pub available_memory: u64,
    pub available_disk: u64,
    pub app_id_to_count: BTreeMap<String, u64>,
    pub placement_properties: BTreeMap<String, String>,
}

/// `router.register` / `router.unregister` for an instance (§2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterRegistration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dea: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub uris: Vec<String>,
    pub host: String,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_instance_id: Option<String>,
}

/// The filter of `dea.stop` and `dea.find.droplet` (§2.4, §2.6).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InstanceFilter {
    pub droplet: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub instances: Option<Vec<String>>,
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
    #[serde(default)]
    pub indices: Option<Vec<u32>>,
    /// An unknown state name makes the whole message malformed, as in the DEA.
    #[serde(default)]
    pub states: Option<Vec<InstanceState>>,
    #[serde(default)]
    pub include_stats: Option<bool>,
    #[serde(default)]
    pub path: Option<String>,
}

/// One reply to `dea.find.droplet` (§2.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindDropletResponse {
    pub dea: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u32,
    pub state: InstanceState,
    pub state_timestamp: f64,
    pub staged: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_uri_v2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
}

/// `droplet.exited` (§2.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropletExited {
    pub cc_partition: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u32,
    pub reason: String,
    pub exit_status: i64,
    pub exit_description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_timestamp: Option<i64>,
}

/// One instance in a heartbeat (§2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatInstance {
    pub cc_partition: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u32,
    pub state: InstanceState,
    pub state_timestamp: f64,
}

/// `dea.heartbeat` (§2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub dea: String,
    pub droplets: Vec<HeartbeatInstance>,
}

/// `dea.update` (§2.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub droplet: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub uris: Vec<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// `staging.stop` (§2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingStop {
    pub app_id: String,
}

/// `dea.shutdown` (§2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    pub id: String,
    pub ip: String,
    pub version: String,
    pub app_id_to_count: BTreeMap<String, u64>,
}

/// `staging.advertise` (classic, §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingAdvertise {
    pub id: String,
    pub stacks: Vec<String>,
    pub available_memory: u64,
    pub available_disk: u64,
}

/// Classic `dea.start` ("hello") at startup (§2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub id: String,
    pub ip: String,
    pub version: String,
}

/// The reply to classic `dea.status` (§2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeaStatus {
    pub id: String,
    pub ip: String,
    pub version: String,
    pub max_memory: u64,
    pub reserved_memory: u64,
    pub used_memory: u64,
    pub num_clients: Option<u64>,
}

/// The directory server's route (§2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryRegistration {
    pub host: String,
    pub port: u16,
    pub uris: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

// ---- The router's side (dea-platform's router sends these; agents receive them) ----

/// `router.start`, and the reply to a `router.greet` request (§2.3): a router announces
/// itself so agents re-register every route at once, and tells them how often it expects
/// registrations and after how long it forgets a route that was not refreshed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterStart {
    pub id: String,
    pub hosts: Vec<String>,
    #[serde(rename = "minimumRegisterIntervalInSeconds")]
    pub minimum_register_interval_in_seconds: u64,
    #[serde(rename = "pruneThresholdInSeconds")]
    pub prune_threshold_in_seconds: u64,
}

#[cfg(test)]
mod router_start_tests {
    use super::*;

    #[test]
    fn router_start_has_gorouters_field_names() {
        let start: RouterStart = parse(
            "router.start",
            br#"{"id": "0-abc", "hosts": ["10.0.0.9"], "minimumRegisterIntervalInSeconds": 20,
                "pruneThresholdInSeconds": 120}"#,
        )
        .expect("parses");
        assert_eq!(start.minimum_register_interval_in_seconds, 20);
        let json = serde_json::to_value(&start).expect("serializes");
        assert_eq!(json["pruneThresholdInSeconds"], 120);
        assert_eq!(json["hosts"][0], "10.0.0.9");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start message with the fields Cloud Controller sends (§4.1).
    const START: &str = r#"{
        "droplet": "app-guid", "name": "my-app", "uris": ["my-app.example.com"],
        "version": "v1", "index": 2, "sha1": "0123456789abcdef0123456789abcdef01234567",
        "executableUri": "https://cc.example.com/droplets/app-guid",
        "env": ["A=1", "B=x=y", "junk"], "limits": {"mem": 256, "disk": 1024, "fds": 16384},
        "services": [{"name": "db", "label": "postgres", "credentials": {"uri": "postgres://u:p@h/d"},
                      "plan": "small", "tags": ["sql"], "syslog_drain_url": null}],
        "cc_partition": "default", "stack": "cflinuxfs4", "start_command": null,
        "health_check_timeout": 60, "vcap_application": {"space_id": "s"},
        "egress_network_rules": [], "unknown_field": true
    }"#;

    #[test]
    fn start_message_round_trips_and_splits_env() {
        let start: StartMessage = parse("start", START.as_bytes()).expect("parses");
        assert_eq!(start.droplet, "app-guid");
        assert_eq!(start.limits.mem, 256);
        assert_eq!(
            start.executable_uri.as_deref(),
            Some("https://cc.example.com/droplets/app-guid")
        );
        assert_eq!(
            start.env_pairs(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(start.services[0].label, "postgres");
        let json = serde_json::to_value(&start).expect("serializes");
        assert_eq!(
            json["executableUri"],
            "https://cc.example.com/droplets/app-guid"
        );
        assert_eq!(json["limits"]["fds"], 16384);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b"not json"[..],
            br#"{"droplet": "x"}"#,
            br#"{"droplet": "x", "limits": {"mem": "lots", "disk": 1, "fds": 1}, "cc_partition": "d"}"#,
            br#"[1, 2, 3]"#,
            b"",
        ] {
            let error = parse::<StartMessage>("start", bad).expect_err("rejected");
            assert!(error.to_string().starts_with("malformed start message"), "{error}");
        }
    }

    #[test]
    fn staging_request_with_embedded_start_message() {
        let request = format!(
            r#"{{"app_id": "app-guid", "task_id": "task-1", "stack": "cflinuxfs4",
                "download_uri": "https://cc/app.zip", "upload_uri": "https://cc/droplet",
                "buildpack_cache_download_uri": null, "buildpack_cache_upload_uri": "https://cc/cache",
                "admin_buildpacks": [{{"url": "https://cc/bp/ruby.zip", "key": "ruby-key"}}],
                "properties": {{"environment": ["CF_STACK=cflinuxfs4", "X=1"],
                                "meta": {{"command": "bundle exec rackup"}},
                                "buildpack_key": "ruby-key", "resources": {{"memory": 1024}}}},
                "start_message": {start}, "memory_limit": 1024}}"#,
            start = START.replace(
                "\"sha1\": \"0123456789abcdef0123456789abcdef01234567\"",
                "\"sha1\": null"
            )
        );
        let request: StagingRequest = parse("staging", request.as_bytes()).expect("parses");
        assert_eq!(request.admin_buildpacks[0].key, "ruby-key");
        assert_eq!(
            request.properties.custom_command().as_deref(),
            Some("bundle exec rackup")
        );
        assert_eq!(request.properties.env_pairs()[1], ("X".into(), "1".into()));
        let start = request.start_message.expect("start message");
        assert_eq!(start.sha1, None);
    }

    #[test]
    fn replies_have_the_dea_field_names() {
        let reply = StagingCompletionReply {
            task_id: "t".into(),
            app_id: "a".into(),
            detected_buildpack: Some("Ruby".into()),
            buildpack_key: Some("ruby-key".into()),
            droplet_sha1: Some("ab".repeat(20)),
            detected_start_command: Some("rackup".into()),
            procfile: None,
            error: Some("Error staging: boom".into()),
            error_info: Some(ErrorInfo {
                kind: "BuildpackCompileFailed".into(),
                message: "Buildpack compilation step failed".into(),
            }),
            dea_bill_of_materials: None,
        };
        let json = serde_json::to_value(&reply).expect("serializes");
        assert_eq!(json["error_info"]["type"], "BuildpackCompileFailed");
        assert!(json["procfile"].is_null());
        let ok = StagingCompletionReply {
            error: None,
            error_info: None,
            ..reply
        };
        let json = serde_json::to_value(&ok).expect("serializes");
        assert!(json.get("error").is_none() && json.get("error_info").is_none());
        assert!(
            json.get("dea_bill_of_materials").is_none(),
            "no extension key unless there is one to give"
        );
        let parsed: StagingCompletionReply = serde_json::from_value(json).expect("parses");
        assert_eq!(
            parsed.dea_bill_of_materials, None,
            "another DEA's reply parses"
        );

        let exited = DropletExited {
            cc_partition: "default".into(),
            droplet: "app".into(),
            version: "v1".into(),
            instance: "i".into(),
            index: 0,
            reason: "CRASHED".into(),
            exit_status: 137,
            exit_description: "out of memory".into(),
            crash_timestamp: Some(1_700_000_000),
        };
        let json = serde_json::to_value(&exited).expect("serializes");
        assert_eq!(json["reason"], "CRASHED");
        assert_eq!(json["crash_timestamp"], 1_700_000_000);
    }

    #[test]
    fn stop_filters_accept_what_cloud_controller_sends() {
        let by_index: InstanceFilter = parse(
            "dea.stop",
            br#"{"droplet": "a", "version": "v", "indices": [0, 2]}"#,
        )
        .expect("parses");
        assert_eq!(by_index.indices, Some(vec![0, 2]));
        let by_id: InstanceFilter =
            parse("dea.stop", br#"{"droplet": "a", "instances": ["i1"]}"#).expect("parses");
        assert_eq!(by_id.instances, Some(vec!["i1".to_string()]));
        assert!(parse::<InstanceFilter>("dea.stop", br#"{"instances": ["i1"]}"#).is_err());
    }

    /// Absent, `null` and empty each mean what the reference says: `start_message` `{}` or
    /// `null` is "stage only" (§3.2: started "if non-empty"); `null` lists and objects are the
    /// same as absent ones; a half-filled start message is still an error.
    #[test]
    fn absent_null_and_empty_mean_what_the_reference_says() {
        let base = r#""app_id": "a", "task_id": "t", "download_uri": "http://cc/app.zip",
            "upload_uri": "http://cc/droplet""#;
        for start in ["", r#", "start_message": null"#, r#", "start_message": {}"#] {
            let request: StagingRequest =
                parse("staging", format!("{{{base}{start}}}").as_bytes()).expect("parses");
            assert!(request.start_message.is_none(), "{start}");
        }
        let request: StagingRequest = parse(
            "staging",
            format!(
                r#"{{{base}, "admin_buildpacks": null, "properties": null,
                "egress_network_rules": null, "memory_limit": null}}"#
            )
            .as_bytes(),
        )
        .expect("nulls are defaults");
        assert!(request.admin_buildpacks.is_empty());
        assert!(request.properties.environment.is_empty());
        assert!(request.memory_limit.is_none());
        let half = format!(r#"{{{base}, "start_message": {{"droplet": "a"}}}}"#);
        assert!(parse::<StagingRequest>("staging", half.as_bytes()).is_err());

        let start: StartMessage = parse(
            "start",
            br#"{"droplet": "a", "limits": {"mem": 1, "disk": 1, "fds": 1}, "cc_partition": "d",
                "uris": null, "env": null, "services": null, "sha1": null, "stack": null}"#,
        )
        .expect("null lists are empty");
        assert!(start.uris.is_empty() && start.env.is_empty() && start.services.is_empty());

        let properties: StagingProperties =
            serde_json::from_str(r#"{"meta": {"command": ""}, "buildpack_key": ""}"#)
                .expect("parses");
        assert_eq!(
            properties.custom_command(),
            None,
            "an empty command is no command"
        );
    }
}
