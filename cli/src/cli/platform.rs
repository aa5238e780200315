//! `dea controller`, `dea router` and `dea ctl`: the platform around the agents (crate
//! `dea-platform`), configured by the `platform:` section of the same `dea.yml`.

use anyhow::{Context, Result};
use clap::Subcommand;
use dea::config::Config;
use dea_platform::config::PlatformConfig;
use dea_platform::controller::Controller;
use dea_platform::ctl::{self, Ctl, PushOptions};
use dea_platform::desired::AppState;
use dea_platform::jetstream::{Platform, PlatformOptions};
use dea_platform::router::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Upload an app's source, stage it and start it (`cf push`).
    Push {
        name: String,
        /// A directory or a .zip file.
        path: PathBuf,
        #[arg(short, long)]
        instances: Option<u32>,
        /// Memory per instance, MB.
        #[arg(short, long)]
        memory: Option<u64>,
        /// Disk per instance, MB.
        #[arg(short = 'k', long)]
        disk: Option<u64>,
        /// A host name routed to the app (repeatable).
        #[arg(long = "route", value_name = "HOST")]
        routes: Vec<String>,
        /// The buildpack to use (skips detection).
        #[arg(short, long)]
        buildpack: Option<String>,
        #[arg(short, long)]
        stack: Option<String>,
        /// An environment variable, KEY=VALUE (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = super::parse_env)]
        env: Vec<(String, String)>,
    },
    /// Every app: requested state, instances running, memory, routes.
    Apps,
    /// One app and its instances (state, since, CPU, memory, disk, agent).
    App {
        name: String,
    },
    /// Change the instance count or the memory per instance.
    Scale {
        name: String,
        #[arg(short, long)]
        instances: Option<u32>,
        #[arg(short, long)]
        memory: Option<u64>,
    },
    /// Restart every instance, one index at a time.
    Restart {
        name: String,
    },
    Stop {
        name: String,
    },
    Start {
        name: String,
    },
    /// Delete the app, its routes and its package.
    Delete {
        name: String,
    },
    /// An instance's stdout and stderr; with --follow, stdout as it grows.
    Logs {
        name: String,
        #[arg(long, default_value_t = 0)]
        index: u32,
        #[arg(short, long)]
        follow: bool,
    },
    /// A file or directory listing from an instance (`logs/`, `app/`, ...).
    Files {
        name: String,
        #[arg(default_value_t = 0)]
        index: u32,
        #[arg(default_value = "")]
        path: String,
    },
    /// Crashes, stagings, starts and scaling, oldest first.
    Events {
        name: String,
    },
}

/// The platform's section of the config file named on the command line (or the default).
pub fn load(path: Option<&Path>, agent: &Config) -> Result<PlatformConfig> {
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| dea::config::default_config_path().filter(|p| p.exists()));
    let mut config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            PlatformConfig::from_yaml(&text).with_context(|| format!("{}", path.display()))?
        }
        None => PlatformConfig::default(),
    };
    if config.nats_servers.is_empty() {
        config.nats_servers = agent.agent.nats_servers.clone();
    }
    Ok(config)
}

/// A NATS connection to the configured servers; `patient` ones keep trying until the bus
/// is there (long-running processes), the others fail at once (`dea ctl`).
async fn nats(config: &PlatformConfig, name: &str, patient: bool) -> Result<async_nats::Client> {
    let servers = config.nats_servers.join(",");
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None);
    if patient {
        options = options.retry_on_initial_connect();
    }
    let addresses = config
        .nats_servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("NATS server URLs {servers}"))?;
    options
        .connect(addresses)
        .await
        .with_context(|| format!("connecting to NATS at {servers}"))
}

/// The platform's JetStream state over a new connection (buckets made when missing).
async fn connect(config: &PlatformConfig, name: &str, patient: bool) -> Result<Platform> {
    let client = nats(config, name, patient).await?;
    let platform = Platform::connect(
        client,
        PlatformOptions {
            replicas: config.replicas,
            // A lease lasts as long as the controller's: the bucket's max_age is what ends
            // a dead controller's lease.
            lease_ttl: Duration::from_secs(config.controller.lease_secs.max(1)),
            ..PlatformOptions::default()
        },
    )
    .await
    .context("setting up the platform's JetStream buckets")?;
    Ok(platform)
}

/// Waits for SIGTERM or Ctrl-C.
async fn until_stopped() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

pub async fn controller(config: PlatformConfig) -> Result<()> {
    let platform = connect(&config, "dea-controller", true).await?;
    let handle = Controller::start(platform, config.controller.clone()).await?;
    tracing::info!(id = handle.id(), "controller running");
    until_stopped().await?;
    handle.shutdown().await;
    Ok(())
}

pub async fn router(config: PlatformConfig, listen: Option<SocketAddr>) -> Result<()> {
    // The router keeps no platform state: it needs the bus, not JetStream (whose first
    // leader election on a fresh cluster takes seconds it must not wait for).
    let client = nats(&config, "dea-router", true).await?;
    let mut router_config = config.router.clone();
    if let Some(listen) = listen {
        router_config.listen = listen;
    }
    let handle = Router::start(client, router_config).await?;
    tracing::info!("router listening on {}", handle.local_addr());
    until_stopped().await?;
    handle.shutdown().await;
    Ok(())
}

pub async fn ctl(
    config: PlatformConfig,
    router: Option<SocketAddr>,
    command: CtlCommand,
) -> Result<()> {
    let platform = connect(&config, "dea-ctl", false).await?;
    let ctl = Ctl::new(platform, router.unwrap_or(config.ctl.router));
    let mut out = std::io::stdout();
    let out: &mut dyn std::io::Write = &mut out;
    match command {
        CtlCommand::Push {
            name,
            path,
            instances,
            memory,
            disk,
            routes,
            buildpack,
            stack,
            env,
        } => {
            let options = PushOptions {
                name,
                path,
                instances,
                memory_mb: memory,
                disk_mb: disk,
                routes,
                buildpack,
                stack,
                env,
                timeout: Duration::from_secs(config.ctl.timeout_secs),
            };
            ctl::push(&ctl, &options, out).await?
        }
        CtlCommand::Apps => ctl::apps(&ctl, out).await?,
        CtlCommand::App { name } => ctl::app(&ctl, &name, out).await?,
        CtlCommand::Scale {
            name,
            instances,
            memory,
        } => ctl::scale(&ctl, &name, instances, memory, out).await?,
        CtlCommand::Restart { name } => ctl::restart(&ctl, &name, out).await?,
        CtlCommand::Stop { name } => ctl::set_state(&ctl, &name, AppState::Stopped, out).await?,
        CtlCommand::Start { name } => ctl::set_state(&ctl, &name, AppState::Started, out).await?,
        CtlCommand::Delete { name } => ctl::delete(&ctl, &name, out).await?,
        CtlCommand::Logs {
            name,
            index,
            follow,
        } => ctl::logs(&ctl, &name, index, follow, out).await?,
        CtlCommand::Files { name, index, path } => {
            ctl::files(&ctl, &name, index, &path, out).await?
        }
        CtlCommand::Events { name } => ctl::events(&ctl, &name, out).await?,
    }
    Ok(())
}
