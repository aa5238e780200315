//! The `dea` command line: stage apps into droplets, list buildpacks, explain fetches.

use anyhow::Result;
use clap::{Parser, Subcommand};
use dea::buildpack::BuildpackSet;
use dea::buildpack::wasm::compile;
use dea::config::Config;
use dea::fetch::{FetchGrant, FetchService};
use dea::staging::Stager;
use std::path::PathBuf;

// Modules of the binary, not of the library.
mod cli;
mod cli_paths;

#[derive(Parser)]
#[command(
    name = "dea",
    version,
    about = "A droplet execution agent with WebAssembly buildpacks"
)]
struct Cli {
    /// Configuration file (YAML). Every key has a default.
    #[arg(long, global = true, env = "DEA_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of installed buildpacks (repeatable); replaces `buildpack_dirs`.
    #[arg(long = "buildpacks", global = true, value_name = "DIR")]
    buildpack_dirs: Vec<PathBuf>,
    /// Root of the agent's state; replaces `base_dir`.
    #[arg(long, global = true, env = "DEA_BASE_DIR")]
    base_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stage an app (a directory, .zip or .tgz) into a droplet.
    Stage(cli::stage::StageArgs),
    /// Compile a buildpack component (its bytes on stdin) to native code (on stdout): run by
    /// `dea` itself so that Cranelift's memory is never the agent's.
    #[command(hide = true, name = "compile-component")]
    CompileComponent {
        /// The wasm settings, as JSON.
        limits: String,
    },
    /// Compare two droplets entry by entry (exit 0: the same, 1: they differ, 2: trouble).
    Diff(cli::diff::DiffArgs),
    /// Run a droplet (a path or an http(s) URL) as one instance in the foreground; Ctrl-C stops it.
    Run(cli::run::RunArgs),
    /// Be a DEA: take staging and start/stop requests from a Cloud Foundry controller over
    /// NATS (`agent.nats_servers`) until SIGTERM (stop everything) or SIGUSR2 (evacuate).
    Serve {
        /// NATS server URL (repeatable); replaces `agent.nats_servers`.
        #[arg(long = "nats", value_name = "URL")]
        nats_servers: Vec<String>,
    },
    /// List the buildpacks in detection order (installed ones, then `buildpack_dirs`), or
    /// install, remove and order them.
    Buildpacks {
        #[command(subcommand)]
        command: Option<cli::buildpacks::BuildpacksCommand>,
    },
    /// Show which buildpack would build an app directory, without staging it.
    Detect {
        app: PathBuf,
        /// An app environment variable, KEY=VALUE (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = cli::parse_env)]
        env: Vec<(String, String)>,
    },
    /// Write, check and package buildpacks (in Rust, Python, C or anything that compiles
    /// to a WebAssembly component).
    #[command(subcommand)]
    Buildpack(cli::buildpack::BuildpackCommand),
    /// Show how the fetch service resolves a URL: mirror rule, URL used, allowed or not.
    Fetch {
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
        /// Resolve as this buildpack would (its manifest's declared downloads count).
        #[arg(long)]
        buildpack: Option<String>,
        /// Download each URL and print the `fetch.pins` lines that pin it.
        #[arg(long)]
        pin: bool,
    },
    /// Print a droplet's bill of materials: its buildpacks and downloads, with digests.
    Sbom { droplet: PathBuf },
    /// Instance and staging files served by the agent's directory server.
    Files {
        #[command(subcommand)]
        command: cli::files::FilesCommand,
    },
    /// Stacks: root filesystems built from Debian's packages for buildpacks and apps.
    #[command(subcommand)]
    Stack(cli::stack::StackCommand),
    /// The platform's controller: stage pushed apps through agents, place and keep their
    /// instances running (`platform.controller`; several may run, one leads).
    Controller,
    /// The platform's HTTP router: routes from `router.register`, proxied to instances.
    Router {
        /// Address to listen on; replaces `platform.router.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// The operator's command line over NATS: push, apps, app, scale, restart, stop, start,
    /// delete, logs, files, events.
    Ctl {
        /// The router, for files and logs; replaces `platform.ctl.router`.
        #[arg(long)]
        router: Option<std::net::SocketAddr>,
        #[command(subcommand)]
        command: cli::platform::CtlCommand,
    },
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::load_default()?,
    };
    if !cli.buildpack_dirs.is_empty() {
        config.buildpack_dirs = cli.buildpack_dirs.clone();
    }
    if let Some(base) = &cli.base_dir {
        config.base_dir = base.clone();
    }
    cli::stage::source_date_epoch_from_env(&mut config);
    cli_paths::absolute_config_paths(&mut config)?;
    Ok(config)
}

fn build_stager(config: Config, buildpacks: BuildpackSet) -> Result<Stager> {
    Ok(Stager::from_config(config, buildpacks)?)
}

/// jemalloc, with a background thread that hands freed memory back to the system: the
/// agent's peaks (compiling an 18 MB buildpack with Cranelift takes hundreds of MB, a burst
/// of instance starts unpacks on many threads) are brief, and with glibc's allocator the
/// resident size stayed at the peak for good.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<()> {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("dea: jemalloc's background thread did not start: {e}");
    }
    let mut cli = Cli::parse();
    if let Command::CompileComponent { limits } = &cli.command {
        let (input, output) = (std::io::stdin().lock(), std::io::stdout().lock());
        return Ok(compile::serve_compile(limits, input, output)?);
    }
    match std::env::current_exe() {
        Ok(program) => compile::compile_in_child(program),
        Err(e) => eprintln!("dea: compiling buildpacks in this process: {e}"),
    }
    // The controller and the router log every decision they take (with its reason): that
    // is their record, so they say it by default; the rest only warns.
    let level = match cli.command {
        Command::Controller | Command::Router { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs that land in files or build output stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Needs neither configuration nor buildpacks.
    if let Command::Diff(args) = &cli.command {
        cli::diff::run(args);
    }
    cli_paths::absolute_cli_paths(&mut cli)?;
    let config = load_config(&cli)?;
    // Needs no buildpacks: answered before they are read.
    if let Command::Files { command } = &cli.command {
        return cli::files::run(&config, command);
    }
    if let Command::Sbom { droplet } = &cli.command {
        return cli::sbom::run(droplet);
    }
    // The platform's commands read `platform:` from the same file and need no buildpacks.
    match cli.command {
        Command::Controller => {
            let platform = cli::platform::load(cli.config.as_deref(), &config)?;
            return cli::platform::controller(platform).await;
        }
        Command::Router { listen } => {
            let platform = cli::platform::load(cli.config.as_deref(), &config)?;
            return cli::platform::router(platform, listen).await;
        }
        Command::Ctl { router, command } => {
            let platform = cli::platform::load(cli.config.as_deref(), &config)?;
            return cli::platform::ctl(platform, router, command).await;
        }
        _ => {}
    }
    if let Command::Stack(command) = &cli.command {
        return cli::stack::run(&config, command);
    }
    if let Command::Buildpack(command) = &cli.command {
        return cli::buildpack::run(command, &config);
    }
    if let Command::Buildpacks {
        command: Some(command),
    } = &cli.command
    {
        return cli::buildpacks::manage(&config, command).await;
    }
    // `--buildpacks DIR` means exactly those; otherwise the installed ones, then
    // `buildpack_dirs`.
    let only_dirs = !cli.buildpack_dirs.is_empty();
    // `dea run` starts a staged droplet: it needs no buildpacks (nor their first set-up).
    let buildpacks = match cli.command {
        Command::Run { .. } => BuildpackSet::default(),
        _ => cli::buildpacks::detection_buildpacks(&config, only_dirs)?,
    };

    match cli.command {
        Command::Serve { nats_servers } => {
            let mut config = config;
            if !nats_servers.is_empty() {
                config.agent.nats_servers = nats_servers;
            }
            cli::serve::run(config, buildpacks).await?;
        }
        Command::Files { .. }
        | Command::CompileComponent { .. }
        | Command::Diff(_)
        | Command::Sbom { .. } => {}
        Command::Buildpacks { .. } => cli::buildpacks::list(&config, &buildpacks, only_dirs)?,
        Command::Run(args) => cli::run::run(&config, args).await?,
        Command::Detect { app, env } => {
            let stager = build_stager(config, buildpacks)?;
            match stager.detect_app(&app, &env).await {
                Ok((buildpack, detection)) => {
                    let version = detection
                        .version
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default();
                    println!(
                        "{}{version} (buildpack {} {})",
                        detection.name, buildpack.id, buildpack.version
                    );
                }
                Err(error) => {
                    eprintln!("{} ({})", error, error.cf_type());
                    std::process::exit(1);
                }
            }
        }
        Command::Buildpack(_)
        | Command::Stack(_)
        | Command::Controller
        | Command::Router { .. }
        | Command::Ctl { .. } => {}
        Command::Fetch {
            urls,
            buildpack,
            pin,
        } => {
            let service = FetchService::new(config.fetch.clone(), config.fetch_cache_dir())?;
            let grant = match buildpack {
                Some(name) => {
                    let name = cli_paths::buildpack_arg(name, &buildpacks)?;
                    let bp = buildpacks.find(&name, &config.buildpack_unpack_dir())?;
                    FetchGrant {
                        buildpack: bp.id,
                        declared: bp.fetch_allow,
                        any_request: false,
                        record: None,
                    }
                }
                None => FetchGrant::default(),
            };
            if pin {
                return cli::pin::run(&config, &urls, grant).await;
            }
            let [url] = urls.as_slice() else {
                anyhow::bail!("dea fetch explains one URL at a time (--pin takes several)");
            };
            let resolution = service.resolve(url, &grant);
            println!("asked for: {}", resolution.url);
            match &resolution.rule {
                Some(rule) => println!("rule:      {} -> {}", rule.from, rule.to),
                None => println!("rule:      (none)"),
            }
            println!("url used:  {}", resolution.url_used);
            match resolution.verdict {
                Ok(why) => println!("allowed:   yes ({why})"),
                Err(why) => {
                    println!("allowed:   no ({why})");
                    std::process::exit(3);
                }
            }
        }
        Command::Stage(args) => cli::stage::run(config, buildpacks, args).await?,
    }
    Ok(())
}
