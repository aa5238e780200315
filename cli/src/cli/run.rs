//! `dea run`: one droplet as one instance in the foreground, stopped cleanly on any of the
//! signals a terminal, shell or supervisor sends.

use anyhow::{Context, Result, bail};
use dea::config::Config;
use std::io::Write;

/// What `dea run` takes.
#[derive(clap::Args)]
pub struct RunArgs {
    pub droplet: String,
    /// Host port to publish the app on (default: any free port).
    #[arg(short, long, default_value_t = 0)]
    pub port: u16,
    /// An app environment variable, KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = super::parse_env)]
    pub env: Vec<(String, String)>,
    /// Memory limit in MiB.
    #[arg(short, long)]
    pub memory: Option<u64>,
    /// Start command, overriding the droplet's.
    #[arg(short = 'c', long)]
    pub start_command: Option<String>,
    /// Expected SHA-1 of the droplet.
    #[arg(long)]
    pub sha1: Option<String>,
    /// The stack to run on (default: the first configured).
    #[arg(long)]
    pub stack: Option<String>,
}

pub async fn run(config: &Config, args: RunArgs) -> Result<()> {
    let RunArgs {
        droplet,
        port,
        env,
        memory,
        start_command,
        sha1,
        stack,
    } = args;
    use tokio::signal::unix::{Signal, SignalKind, signal};
    if let Some(stack) = &stack
        && !config.stacks.contains(stack)
    {
        bail!(
            "Stack {stack} does not exist (configured: {})",
            config.stacks.join(", ")
        );
    }

    /// The first of `signals` to arrive, by name.
    async fn first_signal(signals: &mut [(Signal, &'static str)]) -> &'static str {
        let waits = signals.iter_mut().map(|(signal, name)| {
            Box::pin(async move {
                signal.recv().await;
                *name
            })
        });
        futures_util::future::select_all(waits).await.0
    }

    // A closed terminal (SIGHUP) or a reader that went away must not turn a status
    // line into a panic halfway through stopping the instance: errors are ignored.
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // Every way a terminal, a shell or a supervisor asks a foreground process to end.
    // Their default action kills dea on the spot and leaves the container and its
    // network namespace running, so they are taken over before anything is started;
    // from then on a repeated signal cannot cut a stop short either.
    let mut stop_signals = Vec::new();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::quit(), "SIGQUIT"),
    ] {
        let listener = signal(kind).with_context(|| format!("handling {name}"))?;
        stop_signals.push((listener, name));
    }
    let manager = dea::instance::InstanceManager::new(
        dea::instance::InstanceSettings::from_config(config),
        dea::container::Runc::from_config(config),
    )
    .context("instance manager")?;
    let grace = manager.settings().stop_grace;
    let start = manager.start(dea::instance::StartRequest {
        droplet,
        sha1,
        application_id: "local".into(),
        name: "local".into(),
        index: 0,
        env,
        host_port: port,
        memory_mb: memory.unwrap_or(config.instances.default_memory_mb),
        disk_mb: config.instances.default_disk_mb,
        start_command,
        health_check: true,
        health_check_timeout: std::time::Duration::from_secs(
            config.instances.health_check_timeout_secs,
        ),
        stack,
        ..Default::default()
    });
    tokio::pin!(start);
    // A start is not abandoned midway (that would strand what it made so far): a stop
    // asked for during it waits for the start to finish, then stops the instance.
    let (started, early_stop) = tokio::select! {
        started = &mut start => (started, None),
        name = first_signal(&mut stop_signals) => {
            say(format!("Received {name} while the instance starts: it stops once started"));
            ((&mut start).await, Some(name))
        }
    };
    let info = started?;
    if info.state != dea::instance::InstanceState::Running {
        eprintln!(
            "Instance {} crashed: {} (logs: {})",
            info.instance_id,
            info.exit_description.unwrap_or_default(),
            info.dir.join("home/logs").display()
        );
        std::process::exit(1);
    }
    let name = match early_stop {
        Some(name) => name,
        None => {
            say(format!("Instance {} is RUNNING", info.instance_id));
            say(format!("URL:  http://127.0.0.1:{}/", info.host_port));
            say(format!("Logs: {}", info.dir.join("home/logs").display()));
            tokio::select! {
                name = first_signal(&mut stop_signals) => name,
                finished = manager.wait_until_finished(&info.instance_id, std::time::Duration::MAX) => {
                    let info = finished.unwrap_or(info);
                    eprintln!(
                        "Instance {} crashed: {} (exit status {:?})",
                        info.instance_id,
                        info.exit_description.unwrap_or_default(),
                        info.exit_status
                    );
                    std::process::exit(1);
                }
            }
        }
    };
    say(format!(
        "Received {name}: stopping instance {} (TERM, then KILL after {}s)",
        info.instance_id,
        grace.as_secs()
    ));
    let stopped = manager
        .stop(&info.instance_id)
        .await
        .with_context(|| format!("stopping instance {}", info.instance_id))?;
    say(format!(
        "Instance {} is {}",
        stopped.instance_id,
        stopped.state.name()
    ));
    manager.release_network_if_idle().await;
    Ok(())
}
