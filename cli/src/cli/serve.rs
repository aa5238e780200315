//! `dea serve`: one node (see `dea::node`) under the DEA's signals, and systemd's
//! readiness protocol.

use anyhow::{Result, bail};
use dea::buildpack::BuildpackSet;
use dea::config::Config;

/// `dea serve`: re-attach to the instances a previous run left, start the NATS agent, and
/// follow the DEA's signals: TERM/INT/QUIT shut down, USR1 says goodbye, USR2 evacuates.
pub async fn run(config: Config, buildpacks: BuildpackSet) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a TERM that comes right after READY (systemd, a test) must find them,
    // or its default action kills the agent without the shutdown below.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let node = dea::node::Node::start(config, buildpacks).await?;
    if let Some((server, links)) = &node.directory {
        println!(
            "Directory server on {} ({})",
            server.local_addr,
            links.base()
        );
    }
    let agent = node.agent.clone();
    println!("DEA {} serving", agent.id());
    // Subscribed: systemd (`Type=notify`) may start what is ordered after the agent.
    super::notify::tell(&format!("READY=1\nSTATUS=DEA {} serving", agent.id()));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = quit.recv() => break,
            _ = usr1.recv() => agent.quiesce().await,
            _ = usr2.recv() => {
                let evacuating = agent.clone();
                tokio::spawn(async move { evacuating.evacuate().await });
            }
            _ = agent.wait() => return Ok(()),
        }
    }
    super::notify::tell("STOPPING=1\nSTATUS=shutting down");
    // Every step of the shutdown is bounded; a second signal ends it at once all the same
    // (the operator's call: instances still running are left, and recovered on restart).
    let shutdown = node.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        _ = term.recv() => bail!("second signal during shutdown: exiting now"),
        _ = int.recv() => bail!("second signal during shutdown: exiting now"),
        _ = quit.recv() => bail!("second signal during shutdown: exiting now"),
    }
    Ok(())
}
