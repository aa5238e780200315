//! The `dea` command line: stage apps into droplets, list buildpacks, explain fetches.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dea::buildpack::BuildpackSet;
use dea::buildpack::wasm::WasmRuntime;
use dea::config::Config;
use dea::fetch::{FetchGrant, FetchService};
use dea::staging::{Stager, StagingRequest};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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
    Stage {
        /// The app's source.
        app: PathBuf,
        /// Where to write the droplet.
        #[arg(short, long, default_value = "droplet.tgz")]
        output: PathBuf,
        /// Use this buildpack (id or directory) instead of detecting; repeat for several.
        #[arg(short, long = "buildpack", value_name = "NAME")]
        buildpacks: Vec<String>,
        /// An app environment variable, KEY=VALUE (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// The stack to stage for (default: the first configured).
        #[arg(long)]
        stack: Option<String>,
        /// Buildpack cache kept between stagings of this app.
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Start command, overriding the Procfile and the buildpack.
        #[arg(short = 'c', long)]
        start_command: Option<String>,
    },
    /// Run a droplet (a path or an http(s) URL) as one instance in the foreground; Ctrl-C stops it.
    Run {
        droplet: String,
        /// Host port to publish the app on (default: any free port).
        #[arg(short, long, default_value_t = 0)]
        port: u16,
        /// An app environment variable, KEY=VALUE (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Memory limit in MiB.
        #[arg(short, long)]
        memory: Option<u64>,
        /// Start command, overriding the droplet's.
        #[arg(short = 'c', long)]
        start_command: Option<String>,
        /// Expected SHA-1 of the droplet.
        #[arg(long)]
        sha1: Option<String>,
        /// The stack to run on (default: the first configured).
        #[arg(long)]
        stack: Option<String>,
    },
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
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
    },
    /// Write, check and package buildpacks (in Rust, Python, C or anything that compiles
    /// to a WebAssembly component).
    #[command(subcommand)]
    Buildpack(BuildpackCommand),
    /// Show how the fetch service resolves a URL: mirror rule, URL used, allowed or not.
    Fetch {
        url: String,
        /// Resolve as this buildpack would (its manifest's declared downloads count).
        #[arg(long)]
        buildpack: Option<String>,
    },
    /// Instance and staging files served by the agent's directory server.
    Files {
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Stacks: root filesystems built from Debian's packages for buildpacks and apps.
    #[command(subcommand)]
    Stack(StackCommand),
}

#[derive(Subcommand)]
enum StackCommand {
    /// Build a stack with mmdebstrap into `<base_dir>/stacks/NAME/rootfs` (as root; add NAME
    /// to `stacks` in the config to use it).
    Build {
        name: String,
        /// Debian suite.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Packages to install (comma-separated; default: a build image's usual set).
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Apt mirror URL (default: the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// The configured stacks and the built ones.
    List,
}

#[derive(Subcommand)]
enum FilesCommand {
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
enum FileOwner {
    Instance,
    Task,
}

/// `dea files url`: signs locally, so it needs the agent's key (configured, or written by the
/// running agent) and, unless told, assumes the directory server listens on this machine.
fn files_command(config: &Config, command: &FilesCommand) -> Result<()> {
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

#[derive(Subcommand)]
enum BuildpackCommand {
    /// Start a buildpack project that builds and passes its own test (`./test.sh`).
    New {
        /// The buildpack id (lowercase letters, digits, '-').
        name: String,
        /// Language: rust, python or c.
        #[arg(long, value_parser = clap::value_parser!(dea_buildpack_tools::scaffold::Lang))]
        lang: dea_buildpack_tools::scaffold::Lang,
        /// Project directory (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The dea-sdk crate a Rust project depends on (default: the one in the dea source
        /// this binary was built from).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Check a component (or a buildpack directory) against the buildpack world: exports and
    /// their types, imports the host provides, then compile and link it as staging would.
    Check {
        /// A `.wasm` component, or a directory with a `buildpack.toml`.
        component: PathBuf,
        /// Only compare with the world; do not compile and link it.
        #[arg(long)]
        no_link: bool,
    },
    /// Turn a WASI preview 1 core module (clang + wasi-libc, Zig, ...) into a buildpack
    /// component with the preview 1 adapter.
    Componentize {
        /// The core module.
        module: PathBuf,
        /// Read the world from this `wit` directory instead of the module's `component-type`
        /// section (or the built-in contract when the module has none).
        #[arg(long, value_name = "DIR")]
        wit: Option<PathBuf>,
        /// The world to use from `--wit`.
        #[arg(long, default_value = dea_buildpack_tools::contract::WORLD)]
        world: String,
        /// Where to write the component.
        #[arg(short, long, default_value = "buildpack.wasm")]
        output: PathBuf,
    },
    /// Write guest bindings for the buildpack world (C: a header, its implementation and
    /// the world as an object file to link in).
    Bindings {
        /// Target language (only `c`).
        #[arg(long, default_value = "c")]
        lang: String,
        /// Output directory.
        #[arg(short, long, default_value = ".")]
        out: PathBuf,
    },
    /// Write the buildpack contract (`buildpack.wit` and its WASI deps) into a directory.
    Wit {
        /// Output directory.
        #[arg(short, long, default_value = "wit")]
        out: PathBuf,
    },
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
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
    cli_paths::absolute_config_paths(&mut config)?;
    Ok(config)
}

fn build_stager(config: Config, buildpacks: BuildpackSet) -> Result<Stager> {
    Ok(Stager::from_config(config, buildpacks)?)
}

/// `dea serve`: re-attach to the instances a previous run left, start the NATS agent, and
/// follow the DEA's signals: TERM/INT/QUIT shut down, USR1 says goodbye, USR2 evacuates.
async fn serve(config: Config, buildpacks: BuildpackSet) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
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
    cli::notify::tell(&format!("READY=1\nSTATUS=DEA {} serving", agent.id()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
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
    cli::notify::tell("STOPPING=1\nSTATUS=shutting down");
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

/// `dea buildpack check`: the world comparison, then (unless `no_link`) the same load as
/// staging does, which compiles the component (into the cache) and links it.
fn check_component(path: &std::path::Path, no_link: bool, config: &Config) -> Result<()> {
    let component = if path.is_dir() {
        match dea::buildpack::Buildpack::load(path)?.kind {
            dea::buildpack::BuildpackKind::Wasm { component } => component,
            dea::buildpack::BuildpackKind::Classic { .. } => {
                bail!(
                    "{} is a classic buildpack: nothing to check",
                    path.display()
                )
            }
        }
    } else {
        path.to_path_buf()
    };
    let bytes =
        std::fs::read(&component).with_context(|| format!("reading {}", component.display()))?;
    let report = dea_buildpack_tools::check::check(&bytes)
        .with_context(|| format!("checking {}", component.display()))?;
    println!("{}", component.display());
    println!("  exports: {}", report.exports.join(", "));
    println!("  imports: {}", report.imports.join(", "));
    if !report.ok() {
        for problem in &report.problems {
            eprintln!("  problem: {problem}");
        }
        bail!(
            "{} does not implement {} ({} problem{})",
            component.display(),
            dea_buildpack_tools::contract::WORLD,
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        );
    }
    println!(
        "  world:   implements {}",
        dea_buildpack_tools::contract::WORLD
    );
    if !no_link {
        let runtime = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir())?;
        let started = std::time::Instant::now();
        let loaded = runtime
            .load(&component)
            .with_context(|| format!("linking {}", component.display()))?;
        let how = match loaded.origin {
            dea::buildpack::wasm::CodeOrigin::Compiled => "compiled",
            dea::buildpack::wasm::CodeOrigin::DiskCache => "loaded from the compile cache",
        };
        println!(
            "  link:    ok ({how} in {:.0?}, sha256 {})",
            started.elapsed(),
            loaded.digest
        );
    }
    Ok(())
}

/// `dea buildpack ...`: tools for writing buildpacks; none needs installed buildpacks.
fn buildpack_command(command: &BuildpackCommand, config: &Config) -> Result<()> {
    use dea_buildpack_tools::{bindings, componentize, contract, scaffold};
    match command {
        BuildpackCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            let project = scaffold::NewProject {
                name: name.clone(),
                lang: *lang,
                dir: dir.clone().unwrap_or_else(|| PathBuf::from(name)),
                sdk: sdk.clone(),
            };
            let files = scaffold::create(&project)?;
            println!("created {}:", project.dir.display());
            for file in files {
                println!("  {}", file.display());
            }
            println!(
                "next: cd {} && ./test.sh   (builds, checks, stages test/app)",
                project.dir.display()
            );
        }
        BuildpackCommand::Check { component, no_link } => {
            check_component(component, *no_link, config)?;
        }
        BuildpackCommand::Componentize {
            module,
            wit,
            world,
            output,
        } => {
            let bytes =
                std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
            let source = match wit {
                Some(dir) => componentize::WorldSource::Dir { dir, world },
                None => componentize::WorldSource::Embedded,
            };
            let made = componentize::componentize(&bytes, source)
                .with_context(|| format!("componentizing {}", module.display()))?;
            std::fs::write(output, &made.component)
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "wrote {} ({} bytes, {} adapter{})",
                output.display(),
                made.component.len(),
                if made.command { "command" } else { "reactor" },
                if made.embedded_world {
                    ", world added from WIT"
                } else {
                    ""
                }
            );
        }
        BuildpackCommand::Bindings { lang, out } => {
            if lang != "c" {
                bail!(
                    "no bindings generator for {lang:?} here: Rust uses dea-sdk, Python componentize-py, C `--lang c`"
                );
            }
            for path in bindings::write_c(out, None)? {
                println!("wrote {}", path.display());
            }
        }
        BuildpackCommand::Wit { out } => {
            contract::write_to(out)?;
            println!("wrote the buildpack contract to {}", out.display());
        }
    }
    Ok(())
}

/// `dea stack build|list`.
fn stack_command(config: &Config, command: &StackCommand) -> Result<()> {
    match command {
        StackCommand::Build {
            name,
            suite,
            packages,
            mirror,
        } => {
            let mut options = dea::stack::BuildOptions {
                suite: suite.clone(),
                mirror: mirror.clone(),
                ..Default::default()
            };
            if !packages.is_empty() {
                options.packages = packages.clone();
            }
            println!(
                "Building stack {name} ({} with {} packages); this takes a few minutes",
                options.suite,
                options.packages.len()
            );
            let rootfs = dea::stack::build(&config.base_dir, name, &options)?;
            println!("Stack {name} built at {}", rootfs.display());
            if !config.stacks.contains(name) {
                println!("Add it to the config to use it: stacks: [..., {name}]");
            }
        }
        StackCommand::List => {
            println!("{:<16} {:<10} ROOTFS", "NAME", "SOURCE");
            for stack in config.stacks().iter() {
                let (source, path) = match &stack.rootfs {
                    Some(path) => ("rootfs", path.display().to_string()),
                    None => ("host", "/usr /bin /lib* /etc (read-only)".to_string()),
                };
                println!("{:<16} {:<10} {path}", stack.name, source);
            }
            for (manifest, rootfs) in dea::stack::built(&config.base_dir) {
                if !config.stacks.contains(&manifest.name) {
                    println!(
                        "{:<16} {:<10} {} (built, not in the config's stacks)",
                        manifest.name,
                        "unused",
                        rootfs.display()
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs that land in files or build output stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cli = Cli::parse();
    cli_paths::absolute_cli_paths(&mut cli)?;
    let config = load_config(&cli)?;
    // Needs no buildpacks: answered before they are read.
    if let Command::Files { command } = &cli.command {
        return files_command(&config, command);
    }
    if let Command::Stack(command) = &cli.command {
        return stack_command(&config, command);
    }
    if let Command::Buildpack(command) = &cli.command {
        return buildpack_command(command, &config);
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
            serve(config, buildpacks).await?;
        }
        Command::Files { .. } => {}
        Command::Buildpacks { .. } => cli::buildpacks::list(&config, &buildpacks, only_dirs)?,
        Command::Run {
            droplet,
            port,
            env,
            memory,
            start_command,
            sha1,
            stack,
        } => {
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
                dea::instance::InstanceSettings::from_config(&config),
                dea::container::Runc::from_config(&config),
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
        }
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
        Command::Buildpack(_) | Command::Stack(_) => {}
        Command::Fetch { url, buildpack } => {
            let service = FetchService::new(config.fetch.clone(), config.fetch_cache_dir())?;
            let grant = match buildpack {
                Some(name) => {
                    let name = cli_paths::buildpack_arg(name, &buildpacks)?;
                    let bp = buildpacks.find(&name, &config.buildpack_unpack_dir())?;
                    FetchGrant {
                        buildpack: bp.id,
                        declared: bp.fetch_allow,
                        any_request: false,
                    }
                }
                None => FetchGrant::default(),
            };
            let resolution = service.resolve(&url, &grant);
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
        Command::Stage {
            app,
            output,
            buildpacks: named,
            env,
            stack,
            cache,
            start_command,
        } => {
            if buildpacks.is_empty() && named.is_empty() {
                bail!("{}", cli::buildpacks::none_found(&config));
            }
            let named = named
                .into_iter()
                .map(|name| cli_paths::buildpack_arg(name, &buildpacks))
                .collect::<Result<Vec<_>>>()?;
            let stager = build_stager(config, buildpacks)?;
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
        }
    }
    Ok(())
}
