//! `dea files url`: signed URLs for the directory server, made locally with the agent's key.

use anyhow::{Context, Result};
use clap::Subcommand;
use dea::config::Config;

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Print a signed URL for a file of an instance or a staging task. The key is
    /// `directory_server.hmac_key`, else the running agent's `<base_dir>/db/directory_server.key`.
    Url {
        /// Whose file: `instance` or `task` (a staging task).
        #[arg(value_enum)]
        kind: FileOwner,
        /// The instance id or staging task id.
        id: String,
        /// Relative to the instance's home (e.g. `logs/stdout.log`), or absolute in the staging
        /// container (e.g. `/tmp/staged/logs/staging_task.log`).
        path: String,
        /// Base of the URL [default: http://127.0.0.1:<directory_server.port>].
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FileOwner {
    Instance,
    Task,
}

/// `dea files url`: signs locally, so it needs the agent's key (configured, or written by the
/// running agent) and, unless told, assumes the directory server listens on this machine.
pub fn run(config: &Config, command: &FilesCommand) -> Result<()> {
    let FilesCommand::Url {
        kind,
        id,
        path,
        base_url,
    } = command;
    let settings = &config.directory_server;
    let signer = match settings.hmac_key {
        Some(_) => settings.signer(),
        None => dea::files::read_key_file(&config.base_dir).with_context(|| {
            format!(
                "no directory_server.hmac_key configured and no key in {} (is an agent running with this base_dir?)",
                dea::files::key_file_path(&config.base_dir).display()
            )
        })?,
    };
    let base = base_url
        .clone()
        .unwrap_or_else(|| settings.local_base(settings.port));
    let url = match kind {
        FileOwner::Instance => signer.instance_url(&base, id, path),
        FileOwner::Task => signer.staging_url(&base, id, path),
    };
    println!("{url}");
    Ok(())
}
