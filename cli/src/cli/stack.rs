//! `dea stack build|list`: root filesystems for buildpacks and apps (see `dea::stack`).

use anyhow::Result;
use clap::Subcommand;
use dea::config::Config;

#[derive(Subcommand)]
pub enum StackCommand {
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

/// `dea stack build|list`.
pub fn run(config: &Config, command: &StackCommand) -> Result<()> {
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
