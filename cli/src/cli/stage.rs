//! `dea stage`: an app into a droplet on this machine, the log on stdout and a failure said
//! once on stderr. With `--verify DROPLET` the app is staged again into a scratch file and
//! the result must be DROPLET byte for byte; with `--offline` every download comes from the
//! shared download cache and nothing reaches the network. Together they are the proof an
//! air-gapped site needs that it can rebuild what it runs.

use anyhow::{Context, Result, bail};
use dea::buildpack::BuildpackSet;
use dea::config::Config;
use dea::droplet::{DiffLimits, PackedDroplet, diff_droplets, droplet_digests, droplet_epoch};
use dea::staging::{Stager, StagingRequest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `dea stage` takes.
#[derive(clap::Args)]
pub struct StageArgs {
    /// The app's source.
    pub app: PathBuf,
    /// Where to write the droplet [default: droplet.tgz; with --verify, a scratch file].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
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
    /// Serve every download from the download cache; never open a connection (a download
    /// the cache does not hold fails the staging, naming its URL).
    #[arg(long)]
    pub offline: bool,
    /// Stage, then check that the result is this droplet byte for byte (same SHA-1 and
    /// SHA-256); if not, say how they differ and fail. Give the same buildpacks, -e and -c
    /// as the first staging; its date is read from the droplet unless SOURCE_DATE_EPOCH is set.
    #[arg(long, value_name = "DROPLET")]
    pub verify: Option<PathBuf>,
}

pub async fn run(mut config: Config, buildpacks: BuildpackSet, args: StageArgs) -> Result<()> {
    let StageArgs {
        app,
        output,
        buildpacks: named,
        env,
        stack,
        cache,
        start_command,
        offline,
        verify,
    } = args;
    if offline {
        config.fetch.offline = true;
    }
    let expected = match &verify {
        Some(droplet) => Some(expected_digests(&mut config, droplet)?),
        None => None,
    };
    // A rebuild goes to a scratch directory unless asked to keep it (to look into, say).
    let scratch = match (&output, &verify) {
        (None, Some(_)) => Some(tempfile::tempdir().context("a scratch directory")?),
        _ => None,
    };
    let output = match (output, &scratch) {
        (Some(output), _) => output,
        (None, Some(dir)) => dir.path().join("droplet.tgz"),
        (None, None) => PathBuf::from("droplet.tgz"),
    };
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
            if let (Some(droplet), Some(expected)) = (&verify, &expected) {
                return verified(&staged.droplet, droplet, expected, scratch.is_some());
            }
            println!("Droplet:   {}", staged.droplet.path.display());
            println!("Size:      {} bytes", staged.droplet.size);
            println!("SHA1:      {}", staged.droplet.sha1);
            println!("SHA256:    {}", staged.droplet.sha256);
            if let Some(command) = &staged.info.start_command {
                println!("Start:     {command}");
            }
            // Whether the cache answered is a fact of this run, not of the droplet (whose
            // bill of materials lists the downloads themselves): said here only.
            for fetch in &staged.fetches {
                println!(
                    "Fetched:   {} ({}, {} bytes)",
                    fetch.url_asked,
                    if fetch.cached {
                        "cache hit"
                    } else {
                        "downloaded"
                    },
                    fetch.size
                );
            }
        }
        Err(error) => {
            eprint!("{}", dea::staging::failure_line(&error));
            std::process::exit(1);
        }
    }
    Ok(())
}

/// The digests `droplet` must be rebuilt to. A reproducible droplet's entries are all dated
/// the `SOURCE_DATE_EPOCH` it was staged with: unless one is given, the rebuild takes that.
fn expected_digests(config: &mut Config, droplet: &Path) -> Result<(String, String)> {
    let digests = droplet_digests(droplet)?;
    if config.staging.source_date_epoch.is_none() {
        config.staging.source_date_epoch = droplet_epoch(droplet)?;
    }
    Ok(digests)
}

/// Compares the rebuilt droplet with the expected one: both digests equal, or the report of
/// how they differ and a failure.
fn verified(
    rebuilt: &PackedDroplet,
    droplet: &Path,
    (sha1, sha256): &(String, String),
    scratch: bool,
) -> Result<()> {
    if rebuilt.sha1 == *sha1 && rebuilt.sha256 == *sha256 {
        println!("Verified:  {} rebuilt byte for byte", droplet.display());
        println!("SHA1:      {sha1}");
        println!("SHA256:    {sha256}");
        return Ok(());
    }
    let diff = diff_droplets(droplet, &rebuilt.path, DiffLimits::default())?;
    let rebuilt_name = if scratch {
        Path::new("rebuilt")
    } else {
        rebuilt.path.as_path()
    };
    print!("{}", super::diff::report(&diff, droplet, rebuilt_name));
    eprintln!(
        "the rebuilt droplet differs from {} (SHA256 {} vs {})",
        droplet.display(),
        sha256,
        rebuilt.sha256
    );
    std::process::exit(1);
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
