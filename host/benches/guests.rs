//! Buildpacks in three guest languages, side by side: Rust (`staticfile`, wasm32-wasip2 via
//! dea-sdk), Python (`python`, componentize-py: CPython inside, ~18 MB) and C (`shell`, clang +
//! wasi-libc + the preview 1 adapter).
//!
//! For each: the first load of its component (Cranelift compile, written to the on-disk
//! cache) vs a cached load by a fresh runtime (what a restarted agent does), and the cost of
//! one phase call (fresh store + instantiate + call, as staging runs it) for detect, compile
//! and release on an app it claims.
//!
//! Run with `cargo bench -p dea --bench guests` after `scripts/build-plugins`. Exits non-zero
//! only if a setup step fails. `DEA_BENCH_RUNS` changes the number of timed phase calls.

use dea::buildpack::wasm::{
    CodeOrigin, LoadedComponent, Phase, PhaseDirs, PhaseOutput, SandboxSpec, WasmRuntime,
};
use dea::config::WasmConfig;
use dea::staging::StagingLog;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One guest: its language, installed buildpack id, and an app it claims.
struct Guest {
    lang: &'static str,
    id: &'static str,
    app: &'static [(&'static str, &'static str)],
}

const GUESTS: &[Guest] = &[
    Guest {
        lang: "Rust",
        id: "staticfile",
        app: &[("index.html", "<h1>hi</h1>\n")],
    },
    Guest {
        lang: "Python",
        id: "python",
        app: &[("app.py", "print('hi')\n")],
    },
    Guest {
        lang: "C",
        id: "shell",
        app: &[("start.sh", "#!/bin/sh\necho hi\n")],
    },
];

fn main() {
    if let Err(e) = run() {
        eprintln!("benchmark setup failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> BenchResult<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let runs: usize = std::env::var("DEA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let scratch = tempfile::tempdir()?;
    let tokio = tokio::runtime::Runtime::new()?;
    println!("guest languages ({runs} timed phase calls each, medians; 2-core machine)");
    println!(
        "{:<7} {:<11} {:>9} {:>12} {:>12} {:>8} {:>10} {:>10} {:>10}",
        "lang",
        "buildpack",
        "size",
        "first load",
        "cached load",
        "ratio",
        "detect",
        "compile",
        "release"
    );
    for guest in GUESTS {
        let dir = root.join("target/buildpacks").join(guest.id);
        let component = dir.join("buildpack.wasm");
        if !component.is_file() {
            return Err(format!("{} is not built: run scripts/build-plugins", guest.id).into());
        }
        let size = std::fs::metadata(&component)?.len();
        let cache = scratch.path().join(format!("cache-{}", guest.id));

        // First load: an empty cache, so Cranelift compiles it.
        let runtime = WasmRuntime::new(limits(), cache.clone())?;
        let started = Instant::now();
        let loaded = runtime.load(&component)?;
        let first = started.elapsed();
        if loaded.origin != CodeOrigin::Compiled {
            return Err(format!("{}: expected a compile on first load", guest.id).into());
        }
        drop(loaded);
        drop(runtime);

        // Cached load: a fresh runtime each time (a restarted agent), the same cache.
        let mut cached = Vec::new();
        let mut loaded = None;
        for _ in 0..5 {
            let runtime = WasmRuntime::new(limits(), cache.clone())?;
            let started = Instant::now();
            let component = runtime.load(&component)?;
            cached.push(started.elapsed());
            if component.origin != CodeOrigin::DiskCache {
                return Err(format!("{}: expected a cache hit", guest.id).into());
            }
            loaded = Some((runtime, component));
        }
        let cached = median(cached);
        let (runtime, component) = loaded.ok_or("no runtime")?;

        let app = scratch.path().join(format!("app-{}", guest.id));
        for (path, text) in guest.app {
            std::fs::create_dir_all(&app)?;
            std::fs::write(app.join(path), text)?;
        }
        let mut phases = Vec::new();
        for phase in [Phase::Detect, Phase::Compile, Phase::Release] {
            let time = tokio.block_on(phase_cost(
                &runtime,
                &component,
                phase,
                &app,
                &dir,
                scratch.path(),
                runs,
            ))?;
            phases.push(time);
        }
        println!(
            "{:<7} {:<11} {:>7.1}MB {:>10.1}ms {:>10.2}ms {:>7.0}x {:>8.3}ms {:>8.3}ms {:>8.3}ms",
            guest.lang,
            guest.id,
            size as f64 / 1e6,
            ms(first),
            ms(cached),
            first.as_secs_f64() / cached.as_secs_f64().max(1e-9),
            ms(phases[0]),
            ms(phases[1]),
            ms(phases[2]),
        );
    }
    Ok(())
}

/// Limits as the default config has them.
fn limits() -> WasmConfig {
    WasmConfig::default()
}

/// Median cost of one `phase` call: fresh store, instantiate, call.
async fn phase_cost(
    runtime: &Arc<WasmRuntime>,
    component: &LoadedComponent,
    phase: Phase,
    app: &Path,
    buildpack: &Path,
    scratch: &Path,
    runs: usize,
) -> BenchResult<Duration> {
    let cache = scratch.join("phase-cache");
    let tmp = scratch.join("phase-tmp");
    std::fs::create_dir_all(&cache)?;
    std::fs::create_dir_all(&tmp)?;
    let spec = || SandboxSpec {
        dirs: PhaseDirs {
            app: app.to_path_buf(),
            cache: cache.clone(),
            buildpack: buildpack.to_path_buf(),
            tmp: tmp.clone(),
        },
        env: vec![("STACK".into(), "cflinuxfs4".into())],
        log: StagingLog::detached(None),
        fetch: None,
        unpack_limits: dea::droplet::UnpackLimits {
            max_bytes: 1 << 20,
            max_files: 100,
            max_depth: 256,
        },
    };
    // One untimed call first: warms the instance slot and checks the phase succeeds.
    let output = runtime.run(component, phase, spec()).await?;
    if matches!(output, PhaseOutput::Detect(None)) {
        return Err(format!("{}: detect did not claim its app", phase.name()).into());
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        runtime.run(component, phase, spec()).await?;
        times.push(started.elapsed());
    }
    Ok(median(times))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
