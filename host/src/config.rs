//! The agent's configuration: one typed struct, loaded from YAML, with defaults that work on a
//! fresh machine from any directory: everything lives under `base_dir` (installed buildpacks
//! in its `buildpacks/`), which follows XDG for a user and is `/var/lib/dea` for root, and the
//! file itself is read from `$XDG_CONFIG_HOME/dea/dea.yml` (root: `/etc/dea/dea.yml`) when
//! no `--config` or `DEA_CONFIG` names one.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
}

/// Everything `dea` can be told. Every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of the agent's state: installed buildpacks (`buildpacks/`), staging workspaces,
    /// caches, droplets.
    pub base_dir: PathBuf,
    /// More directories of buildpacks, one sub-directory (or archive) per buildpack, detected
    /// after the installed ones (`<base_dir>/buildpacks`, managed with `dea buildpacks`). Their
    /// order, then the sub-directory names in order, is their detection order unless
    /// `buildpack_order` says otherwise.
    pub buildpack_dirs: Vec<PathBuf>,
    /// Detection order by id among the buildpacks of `buildpack_dirs`; those not named follow
    /// in directory order. Installed buildpacks keep the positions `dea buildpacks` gives them.
    pub buildpack_order: Vec<String>,
    /// Stacks this agent can stage for and run on; the first is the default. A name with a
    /// root filesystem (in `stack_rootfs`, or built by `dea stack build` under
    /// `<base_dir>/stacks/`) runs on it; any other on the host's own directories.
    pub stacks: Vec<String>,
    /// Root filesystems of stacks by name, where they are not built by `dea stack build`.
    pub stack_rootfs: std::collections::BTreeMap<String, PathBuf>,
    pub staging: StagingConfig,
    pub wasm: WasmConfig,
    pub classic: ClassicConfig,
    pub fetch: FetchConfig,
    pub instances: InstanceConfig,
    pub agent: AgentConfig,
    pub directory_server: crate::files::DirectoryServerConfig,
    /// The platform's section (`dea controller`, `dea router`, `dea ctl`), read by the
    /// `dea-platform` crate from the same file; the agent has no use for it.
    pub platform: serde::de::IgnoredAny,
}

/// Running droplets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// The unprivileged user apps run as (Cloud Foundry's vcap).
    pub uid: u32,
    pub gid: u32,
    pub pids_limit: i64,
    /// Memory for an instance when the request names none, in MiB.
    pub default_memory_mb: u64,
    /// Seconds between TERM and KILL when stopping.
    pub stop_grace_secs: u64,
    /// How long a starting app may take to accept connections.
    pub health_check_timeout_secs: u64,
    /// Largest droplet accepted, unpacked, in MiB.
    pub max_droplet_mb: u64,
    /// Disk for an instance when the request names none, in MiB.
    pub default_disk_mb: u64,
    /// Memory offered to instances, in MiB (default: the machine's RAM).
    pub memory_capacity_mb: Option<u64>,
    pub memory_overcommit_factor: f64,
    /// Disk offered to instances, in MiB.
    pub disk_capacity_mb: u64,
    pub disk_overcommit_factor: f64,
    /// How long a crashed instance's logs are kept, in seconds.
    pub crash_lifetime_secs: u64,
    /// Host address instance ports are published on (what the router connects to).
    pub publish_address: String,
    /// Most files and directories an instance may hold (CF's inode limit); past it the
    /// instance is stopped, as past its disk limit.
    pub max_files: u64,
    /// Where instance addresses come from, one /30 each (a veth pair per instance).
    pub network: String,
    /// Host ports handed out to instances (outside Linux's ephemeral range).
    pub port_range: [u16; 2],
    /// Egress every instance is allowed (platform-wide security groups); by default none:
    /// instances have no route out.
    pub egress_rules: Vec<EgressRule>,
    /// Seconds between checks that a running instance (with routes) still accepts
    /// connections; three failures in a row crash it.
    pub health_check_interval_secs: u64,
    /// Seconds between measurements of a running instance's disk use against its limit.
    pub disk_check_interval_secs: u64,
    /// Unpack each droplet once per host and make instances' homes overlays over it (the
    /// app's writes go to a layer of its own). Where overlayfs cannot be used, homes are
    /// unpacked per instance, as with `false`.
    pub layered_homes: bool,
}

/// One egress rule, as Cloud Foundry's application security groups write them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct EgressRule {
    pub protocol: EgressProtocol,
    /// An IPv4 address, CIDR (`10.0.0.0/8`) or range (`10.0.0.1-10.0.0.9`).
    pub destination: String,
    /// `80,443,8000-9000` (tcp and udp only).
    #[serde(default)]
    pub ports: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressProtocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            uid: 2000,
            gid: 2000,
            pids_limit: 1024,
            default_memory_mb: 256,
            stop_grace_secs: 10,
            health_check_timeout_secs: 60,
            max_droplet_mb: 4096,
            default_disk_mb: 1024,
            memory_capacity_mb: None,
            memory_overcommit_factor: 1.0,
            disk_capacity_mb: 100 * 1024,
            disk_overcommit_factor: 1.0,
            crash_lifetime_secs: 3600,
            publish_address: "127.0.0.1".into(),
            max_files: 200_000,
            network: "10.254.0.0/16".into(),
            port_range: [61001, 65535],
            egress_rules: Vec::new(),
            health_check_interval_secs: 10,
            disk_check_interval_secs: 5,
            layered_homes: true,
        }
    }
}

/// Being a DEA on a NATS bus (`dea serve`): the controller, router and health manager of a
/// Cloud Foundry drive this agent in the DEA's message formats.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `nats://[user:pass@]host:port`, tried in turn; the agent reconnects forever.
    pub nats_servers: Vec<String>,
    /// This DEA's index: tags `dea-<index>`, `directory-server-<index>`.
    pub index: u32,
    /// The address routers and controllers reach this host at (default: the instances'
    /// `publish_address`).
    pub local_ip: Option<String>,
    /// Placement zone advertised to the controller.
    pub zone: String,
    /// Seconds between `dea.advertise` (and `staging.advertise`).
    pub advertise_interval_secs: u64,
    /// Seconds between `dea.heartbeat`.
    pub heartbeat_interval_secs: u64,
    /// Seconds between route re-registrations.
    pub router_register_interval_secs: u64,
    /// Accept staging requests.
    pub staging_enabled: bool,
    /// Least memory and disk a staging task reserves, in MiB (the request may ask for more).
    pub staging_memory_mb: u64,
    pub staging_disk_mb: u64,
    /// Evacuation (SIGUSR2) gives up waiting for instances after this many seconds.
    pub evacuation_bail_out_secs: u64,
    /// Seconds between checks whether an evacuation is complete.
    pub evacuation_check_interval_secs: u64,
    /// Largest app package or buildpack cache downloaded for a staging, in MiB.
    pub max_download_mb: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            nats_servers: vec!["nats://127.0.0.1:4222".into()],
            index: 0,
            local_ip: None,
            zone: "default".into(),
            advertise_interval_secs: 5,
            heartbeat_interval_secs: 10,
            router_register_interval_secs: 20,
            staging_enabled: true,
            staging_memory_mb: 1024,
            staging_disk_mb: 2048,
            evacuation_bail_out_secs: 600,
            evacuation_check_interval_secs: 5,
            max_download_mb: 2048,
        }
    }
}

/// Classic (`bin/detect`…) buildpacks, each script in a `runc` container.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassicConfig {
    /// The OCI runtime binary.
    pub runc: PathBuf,
    /// A root filesystem directory for the stack; default: the host's `/usr`, `/bin`, `/lib*`
    /// and `/etc`, read-only.
    pub rootfs: Option<PathBuf>,
    /// The unprivileged user scripts run as.
    pub uid: u32,
    pub gid: u32,
    pub memory_limit_mb: u64,
    pub pids_limit: i64,
    pub detect_timeout_secs: u64,
    pub compile_timeout_secs: u64,
    /// Size of the container's writable `/tmp`, in MiB.
    pub tmp_size_mb: u64,
    /// Buildpack ids run in Cloud Foundry mode even without `bin/supply`/`bin/finalize`.
    pub cloud_foundry: Vec<String>,
}

impl Default for ClassicConfig {
    fn default() -> Self {
        ClassicConfig {
            runc: PathBuf::from("runc"),
            rootfs: None,
            uid: 2000,
            gid: 2000,
            memory_limit_mb: 1024,
            pids_limit: 512,
            detect_timeout_secs: 60,
            compile_timeout_secs: 900,
            tmp_size_mb: 1024,
            cloud_foundry: Vec::new(),
        }
    }
}

/// Limits for one staging and its buildpack phases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagingConfig {
    /// Largest app (unpacked) accepted, in MiB.
    pub max_app_size_mb: u64,
    /// Most files an app archive may contain.
    pub max_app_files: u64,
    /// Deepest nesting of directories an app (or a droplet, or a buildpack cache) may have.
    pub max_dir_depth: usize,
    /// Wall-clock limit for a whole staging, in seconds (Cloud Foundry's default is 900).
    pub max_staging_duration_secs: u64,
    /// gzip level for droplets (1 = fastest, 9 = smallest).
    pub droplet_compression_level: u32,
    /// Largest staging log kept, in MiB: buildpack output past it is dropped (with a note),
    /// so a buildpack printing forever cannot fill the disk.
    pub max_log_mb: u64,
    /// Seconds a finished staging's files (its log) stay readable at its
    /// `task_streaming_log_url`, so a client following the log sees its end even when the
    /// staging took less time than the client needed to connect.
    pub log_retention_secs: u64,
    /// Byte-identical droplets from equal inputs: every entry owned by the instances' user
    /// (`instances.uid`/`gid`) and dated `source_date_epoch`. Off: the build's owners and times.
    pub reproducible: bool,
    /// Seconds since 1970 that every droplet entry is dated; `dea` takes `SOURCE_DATE_EPOCH`
    /// from its environment when this is unset, else 1980-01-01.
    pub source_date_epoch: Option<u64>,
}

/// Limits and caches for wasm buildpacks. Serialized too: a compile in a child process
/// builds its engine from the same settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WasmConfig {
    /// Linear-memory limit per phase, in MiB.
    pub memory_limit_mb: u64,
    /// CPU time a detect call may use, in milliseconds.
    pub detect_cpu_ms: u64,
    /// CPU time a compile or release call may use, in seconds.
    pub compile_cpu_secs: u64,
    /// Wall-clock limit for detect, in milliseconds (covers blocking host calls too).
    pub detect_timeout_ms: u64,
    /// Wall-clock limit for compile and release, in seconds.
    pub compile_timeout_secs: u64,
    /// Most bytes of output (stdout, stderr, log lines) a phase may produce.
    pub output_limit_bytes: u64,
    /// Where compiled components are kept; default `<base_dir>/wasm-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Phases that may run at once; more wait. Also the size of the instance pool.
    pub max_concurrent_phases: u32,
    /// Pre-allocate instance slots (much faster instantiation; reserves virtual memory, not
    /// RAM). Falls back to on-demand allocation if the machine refuses the reservation.
    pub pooling: bool,
}

/// The fetch service: the only way a buildpack reaches the network.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Rewrite rules: the longest matching `from` prefix wins.
    pub mirrors: Vec<MirrorRule>,
    /// URL prefixes a download may go to after rewriting, besides the mirrors themselves.
    pub allow: Vec<String>,
    /// Let a download go to an un-rewritten URL that its buildpack's manifest declares.
    /// Turn off on air-gapped sites, where only mirrors may be reached.
    pub allow_buildpack_declared: bool,
    /// Expected SHA-256 per URL (as asked for, before rewriting), for downloads whose
    /// buildpack pins nothing itself (classic buildpacks through the proxy).
    pub pins: std::collections::BTreeMap<String, String>,
    /// Refuse every download without a pinned SHA-256 (its buildpack's or `pins`), so that
    /// what a staging downloads is exactly what was reviewed. `dea fetch --pin URL` prints
    /// the `pins` lines to add.
    pub require_pins: bool,
    /// Serve from the cache only; never open a connection.
    pub offline: bool,
    /// Largest single download, in MiB.
    pub max_download_mb: u64,
    /// Per-attempt timeout, in seconds.
    pub timeout_secs: u64,
    /// Attempts per download for network errors.
    pub attempts: u32,
    /// Content-addressed download cache; default `<base_dir>/fetch-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Most the download cache holds, in MiB; the least recently used go first.
    pub max_cache_mb: u64,
}

/// One mirror rule: URLs starting with `from` are fetched from `to` plus the rest of the URL.
/// `to` may contain `{originalHost}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRule {
    pub from: String,
    pub to: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_dir: default_base_dir(),
            // Installed buildpacks live in the state directory, so `dea` works from anywhere;
            // a build output such as a checkout's `target/buildpacks` is an extra directory.
            buildpack_dirs: Vec::new(),
            // The built-in buildpacks, most specific first; Procfile is the generic fallback.
            buildpack_order: vec![
                "staticfile".into(),
                "node".into(),
                "python".into(),
                "shell".into(),
                "procfile".into(),
            ],
            stacks: vec!["cflinuxfs4".to_string()],
            stack_rootfs: Default::default(),
            staging: StagingConfig::default(),
            wasm: WasmConfig::default(),
            classic: ClassicConfig::default(),
            fetch: FetchConfig::default(),
            instances: InstanceConfig::default(),
            agent: AgentConfig::default(),
            directory_server: Default::default(),
            platform: serde::de::IgnoredAny,
        }
    }
}

impl Default for StagingConfig {
    fn default() -> Self {
        StagingConfig {
            max_app_size_mb: 1024,
            max_app_files: 200_000,
            max_dir_depth: 256,
            max_log_mb: 32,
            max_staging_duration_secs: 900,
            droplet_compression_level: 6,
            log_retention_secs: 5,
            reproducible: true,
            source_date_epoch: None,
        }
    }
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            memory_limit_mb: 512,
            detect_cpu_ms: 2_000,
            compile_cpu_secs: 600,
            detect_timeout_ms: 5_000,
            compile_timeout_secs: 900,
            output_limit_bytes: 16 << 20,
            cache_dir: None,
            max_concurrent_phases: 32,
            pooling: true,
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            mirrors: Vec::new(),
            allow: Vec::new(),
            allow_buildpack_declared: true,
            pins: Default::default(),
            require_pins: false,
            offline: false,
            max_download_mb: 2048,
            timeout_secs: 300,
            attempts: 3,
            cache_dir: None,
            max_cache_mb: 20 * 1024,
        }
    }
}

/// Whether this process runs as root (directly or through sudo): its defaults are then the
/// system's, not a user's.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A user's XDG base directory: `$<var>` when set to an absolute path (the specification
/// says relative ones are to be ignored), else `$HOME/<fallback>`.
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(var).map(PathBuf::from)
        && dir.is_absolute()
    {
        return Some(dir);
    }
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(fallback))
}

/// Root: `/var/lib/dea`. A user: `$XDG_STATE_HOME/dea`, else `~/.local/state/dea`.
fn default_base_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/dea");
    }
    xdg_dir("XDG_STATE_HOME", ".local/state")
        .map(|dir| dir.join("dea"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/dea"))
}

/// Where the configuration is read from when neither `--config` nor `DEA_CONFIG` names a
/// file. Root: `/etc/dea/dea.yml`. A user: `$XDG_CONFIG_HOME/dea/dea.yml`, else
/// `~/.config/dea/dea.yml`.
pub fn default_config_path() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from("/etc/dea/dea.yml"));
    }
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|dir| dir.join("dea/dea.yml"))
}

impl Config {
    /// Loads a YAML file; missing keys keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The file at [`default_config_path`] if there is one, else the defaults: a fresh
    /// machine needs no configuration file.
    pub fn load_default() -> Result<Config, ConfigError> {
        match default_config_path() {
            Some(path) if path.exists() => Self::load(&path),
            _ => Ok(Config::default()),
        }
    }

    /// Parses YAML text; an empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<Config, serde_yaml_ng::Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text)
    }

    /// The configured stacks, resolved to their root filesystems.
    pub fn stacks(&self) -> crate::stack::Stacks {
        crate::stack::Stacks::resolve(&self.stacks, &self.stack_rootfs, &self.base_dir)
    }

    /// The default stack.
    pub fn default_stack(&self) -> &str {
        self.stacks
            .first()
            .map(String::as_str)
            .unwrap_or("cflinuxfs4")
    }

    pub fn wasm_cache_dir(&self) -> PathBuf {
        self.wasm
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.base_dir.join("wasm-cache"))
    }

    pub fn fetch_cache_dir(&self) -> PathBuf {
        self.fetch
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.base_dir.join("fetch-cache"))
    }

    /// Where installed buildpacks are kept (`dea buildpacks add|remove|move`).
    pub fn installed_buildpacks_dir(&self) -> PathBuf {
        self.base_dir.join("buildpacks")
    }

    /// Where classic buildpack archives are unpacked.
    pub fn buildpack_unpack_dir(&self) -> PathBuf {
        self.base_dir.join("buildpack-archives")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.base_dir.join("staging")
    }
}

impl WasmConfig {
    pub fn detect_timeout(&self) -> Duration {
        Duration::from_millis(self.detect_timeout_ms)
    }
    pub fn compile_timeout(&self) -> Duration {
        Duration::from_secs(self.compile_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_yaml_gives_defaults_and_keys_override() {
        let config = Config::from_yaml("").expect("empty config");
        assert_eq!(config.wasm.memory_limit_mb, 512);
        let config = Config::from_yaml(
            "base_dir: /tmp/x\nwasm:\n  memory_limit_mb: 64\nfetch:\n  mirrors:\n    - from: https://a/\n      to: http://m/\n",
        )
        .expect("config parses");
        assert_eq!(config.base_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.wasm.memory_limit_mb, 64);
        assert_eq!(config.wasm.detect_cpu_ms, 2_000);
        assert_eq!(config.fetch.mirrors.len(), 1);
    }

    #[test]
    fn root_gets_the_system_paths() {
        // The tests run as root; a user's XDG paths are tested with `dea` run as `nobody`
        // (cli/tests/install.rs).
        if is_root() {
            assert_eq!(
                default_config_path(),
                Some(PathBuf::from("/etc/dea/dea.yml"))
            );
            assert_eq!(Config::default().base_dir, PathBuf::from("/var/lib/dea"));
            assert!(Config::default().buildpack_dirs.is_empty());
        } else {
            assert!(default_config_path().is_none_or(|path| path.ends_with("dea/dea.yml")));
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_yaml("wasm:\n  memory_limt_mb: 64\n").is_err());
    }

    #[test]
    fn the_agent_config_has_the_section() {
        let config = Config::from_yaml("directory_server:\n  port: 0\n").expect("config parses");
        assert_eq!(config.directory_server.port, 0);
        assert!(Config::default().directory_server.enabled);
    }
}
