//! `dea buildpack new|check|componentize|bindings|wit`: tools for writing buildpacks, from
//! the `dea-buildpack-tools` crate; none needs installed buildpacks.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dea::buildpack::wasm::WasmRuntime;
use dea::config::Config;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BuildpackCommand {
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

/// `dea buildpack ...`: tools for writing buildpacks; none needs installed buildpacks.
pub fn run(command: &BuildpackCommand, config: &Config) -> Result<()> {
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
            check(component, *no_link, config)?;
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

/// `dea buildpack check`: the world comparison, then (unless `no_link`) the same load as
/// staging does, which compiles the component (into the cache) and links it.
fn check(path: &std::path::Path, no_link: bool, config: &Config) -> Result<()> {
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
