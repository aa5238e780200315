//! `dea stage`: an app into a droplet on this machine, the log on stdout and a failure said
//! once on stderr.

use anyhow::{Result, bail};
use dea::buildpack::BuildpackSet;
use dea::config::Config;
use dea::staging::{Stager, StagingRequest};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// What `dea stage` takes.
#[derive(clap::Args)]
pub struct StageArgs {
    /// The app's source.
    pub app: PathBuf,
    /// Where to write the droplet.
    #[arg(short, long, default_value = "droplet.tgz")]
    pub output: PathBuf,
    /// Use this buildpack (id or directory) instead of detecting; repeat for several.
    #[arg(short, long = "buildpack", value_name = "NAME")]
    pub buildpacks: Vec<String>,
    /// An app environment variable, KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = super::parse_env)]
    pub env: Vec<(String, String)>,
    /// The stack to stage for (default: the first configured).
    #[arg(long)]
    pub stack: Option<String>,
    /// Buildpack cache kept between stagings of this app.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Start command, overriding the Procfile and the buildpack.
    #[arg(short = 'c', long)]
    pub start_command: Option<String>,
}

pub async fn run(config: Config, buildpacks: BuildpackSet, args: StageArgs) -> Result<()> {
    let StageArgs {
        app,
        output,
        buildpacks: named,
        env,
        stack,
        cache,
        start_command,
    } = args;
    if buildpacks.is_empty() && named.is_empty() {
        bail!("{}", super::buildpacks::none_found(&config));
    }
    let named = named
        .into_iter()
        .map(|name| crate::cli_paths::buildpack_arg(name, &buildpacks))
        .collect::<Result<Vec<_>>>()?;
    let stager = Stager::from_config(config, buildpacks)?;
    // The log goes to stdout as it is written, except the line that ends a failed
    // staging: the error is said once, on stderr, below (and also when the log did
    // not exist yet, or had reached its size limit).
    let watcher: dea::staging::LogWatcher = Arc::new(|bytes: &[u8]| {
        if bytes.starts_with(dea::staging::FAILURE_LINE_PREFIX.as_bytes()) {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    });
    let request = StagingRequest {
        source: app,
        output,
        buildpacks: named,
        env,
        stack,
        cache_dir: cache,
        start_command,
        watcher: Some(watcher),
        candidates: None,
    };
    match stager.stage(request).await {
        Ok(staged) => {
            println!("Droplet:   {}", staged.droplet.path.display());
            println!("Size:      {} bytes", staged.droplet.size);
            println!("SHA1:      {}", staged.droplet.sha1);
            println!("SHA256:    {}", staged.droplet.sha256);
            if let Some(command) = &staged.info.start_command {
                println!("Start:     {command}");
            }
        }
        Err(error) => {
            eprint!("{}", dea::staging::failure_line(&error));
            std::process::exit(1);
        }
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` (the reproducible-builds convention: seconds since 1970) from the
/// environment into `staging.source_date_epoch`, which it overrides as `DEA_BASE_DIR`
/// overrides `base_dir`. A value that is not a number is said and ignored: droplets are
/// then dated as the configuration says, still reproducibly.
pub fn source_date_epoch_from_env(config: &mut Config) {
    let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH") else {
        return;
    };
    let text = value.to_string_lossy();
    if text.trim().is_empty() {
        return;
    }
    match text.trim().parse::<u64>() {
        Ok(epoch) => config.staging.source_date_epoch = Some(epoch),
        Err(_) => tracing::warn!(
            "SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970; ignored"
        ),
    }
}
