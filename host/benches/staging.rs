//! Staging benchmarks, each against a baseline measured in the same run:
//!
//! (a) detect across 32 installed wasm buildpacks for one app, vs the same check as 32
//!     classic `bin/detect` bash scripts run as processes (the way classic hosts run them);
//! (b) packing a droplet from a generated ~100 MB app tree, vs `tar czf` on the same tree
//!     (and the droplet is checked with `tar xzf`).
//!
//! (c) a classic `bin/detect` in a runc container vs the same script as a bare process (the
//!     container's cost), and end-to-end staging with a trivial classic buildpack.
//!
//! (d) a 50 MB download through the fetch service (cold, from a loopback mirror) vs `curl`
//!     straight from that mirror, and a warm (cached) fetch vs the cold one.
//!
//! Run with `cargo bench -p dea` after `scripts/build-plugins` (as root, with runc, for (c)). Prints ratios; exits non-zero
//! only if a setup step fails. `DEA_BENCH_TREE_MB` changes the tree size.

use dea::buildpack::BuildpackSet;
use dea::buildpack::wasm::WasmRuntime;
use dea::config::Config;
use dea::fetch::FetchService;
use dea::staging::Stager;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

const BUILDPACKS: usize = 32;

fn main() {
    if let Err(e) = run() {
        eprintln!("benchmark setup failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let scratch = tempfile::tempdir()?;
    // `DEA_BENCH_ONLY=detect,fetch` runs only those sections.
    let only = std::env::var("DEA_BENCH_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == name))
    };
    if wanted("detect") {
        detect_benchmark(&root, scratch.path())?;
    }
    if wanted("pack") {
        pack_benchmark(scratch.path())?;
    }
    if wanted("classic") {
        classic_benchmark(&root, scratch.path())?;
    }
    if wanted("fetch") {
        fetch_benchmark(scratch.path())?;
    }
    Ok(())
}

/// Median of `runs` timings of `f`, after one warm-up call.
fn median<F: FnMut() -> Result<(), Box<dyn std::error::Error>>>(
    runs: usize,
    mut f: F,
) -> Result<Duration, Box<dyn std::error::Error>> {
    f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn detect_benchmark(root: &Path, scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let marker = root.join("target/test-buildpacks/marker/buildpack.wasm");
    if !marker.is_file() {
        return Err("target/test-buildpacks/marker is missing: run scripts/build-plugins".into());
    }
    // 32 wasm buildpacks, each looking for its own marker file; only the last one matches,
    // so every detect runs.
    let installed = scratch.join("wasm-buildpacks");
    let classic = scratch.join("classic-buildpacks");
    for i in 0..BUILDPACKS {
        let dir = installed.join(format!("bp{i:02}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&marker, dir.join("buildpack.wasm"))?;
        std::fs::write(
            dir.join("buildpack.toml"),
            format!(
                "[buildpack]\nid = \"bp{i:02}\"\nname = \"bp{i:02}\"\nversion = \"1\"\n\
                 [env]\nDEA_BUILDPACK_MARKER = \"marker-{i}\"\n"
            ),
        )?;
        let bin = classic.join(format!("bp{i:02}/bin"));
        std::fs::create_dir_all(&bin)?;
        let script = bin.join("detect");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\nif [ -f \"$1/marker-{i}\" ]; then echo \"marker:marker-{i}\"; exit 0; fi\nexit 1\n"
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let app = scratch.join("app");
    std::fs::create_dir_all(&app)?;
    std::fs::write(app.join(format!("marker-{}", BUILDPACKS - 1)), "")?;

    let mut config = Config {
        base_dir: scratch.join("base"),
        buildpack_order: Vec::new(),
        ..Config::default()
    };
    config.wasm.pooling = std::env::var("DEA_POOL").map_or(true, |v| v != "0");
    let set = BuildpackSet::discover(
        std::slice::from_ref(&installed),
        &[],
        &scratch.join("unpacked"),
    )?;
    let wasm = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir())?;
    let fetch = Arc::new(FetchService::new(
        config.fetch.clone(),
        config.fetch_cache_dir(),
    )?);
    let config_wasm = config.wasm.clone();
    let stager = Stager::new(config, set, wasm, fetch);
    let runtime = tokio::runtime::Runtime::new()?;
    let expected = format!("bp{:02}", BUILDPACKS - 1);

    let wasm_time = median(200, || {
        let (bp, _) = runtime.block_on(stager.detect_app(&app, &[]))?;
        if bp.id != expected {
            return Err(format!("wasm detect picked {}", bp.id).into());
        }
        Ok(())
    })?;
    // Classic hosts run detect scripts one by one until one matches.
    let bash_time = median(10, || {
        let mut winner = None;
        for i in 0..BUILDPACKS {
            let status = Command::new(classic.join(format!("bp{i:02}/bin/detect")))
                .arg(&app)
                .stdout(std::process::Stdio::null())
                .status()?;
            if status.success() {
                winner = Some(i);
                break;
            }
        }
        if winner != Some(BUILDPACKS - 1) {
            return Err("bash detect picked the wrong buildpack".into());
        }
        Ok(())
    })?;
    // One detect call on its own, sequentially, to show the per-call cost: the matching
    // buildpack (its guest stats the marker and hashes its metadata) and one that says no
    // (one stat), with the app and buildpack directories opened once, as a staging does.
    let runtime_wasm = WasmRuntime::new(config_wasm.clone(), scratch.join("wasm-cache-2"))?;
    // `DEA_BENCH_CALLS` sets the calls per timing (1000), more for a profile of the call.
    let calls: u32 = std::env::var("DEA_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    type Timed = (Duration, dea::buildpack::wasm::DetectSplit);
    let per_call = |bp: &dea::buildpack::Buildpack| -> Result<Timed, Box<dyn std::error::Error>> {
        use dea::buildpack::wasm::{OpenedDirs, Phase, PhaseDirs, ReadOnlyDir, SandboxSpec};
        let dea::buildpack::BuildpackKind::Wasm { component } = &bp.kind else {
            return Err("expected a wasm buildpack".into());
        };
        let loaded = runtime_wasm.load(component)?;
        let spec = SandboxSpec {
            dirs: PhaseDirs {
                app: app.clone(),
                cache: app.clone(),
                buildpack: bp.dir.clone(),
                tmp: app.clone(),
            },
            env: bp.env.clone(),
            log: dea::staging::StagingLog::detached(None),
            fetch: None,
            unpack_limits: dea::droplet::UnpackLimits {
                max_bytes: 1 << 20,
                max_files: 10,
                max_depth: 256,
            },
        };
        let opened = OpenedDirs {
            app: Some(ReadOnlyDir::open(&app)?),
            buildpack: Some(ReadOnlyDir::open(&bp.dir)?),
        };
        let total = median(5, || {
            runtime.block_on(async {
                for _ in 0..calls {
                    let (spec, opened) = (spec.clone(), opened.clone());
                    runtime_wasm
                        .run_opened(&loaded, Phase::Detect, spec, opened)
                        .await?;
                }
                Ok::<(), dea::buildpack::wasm::PhaseError>(())
            })?;
            Ok(())
        })?;
        // The same calls again, each step timed on its own: the run of median total out of
        // five, as above (without `run_opened`'s slot permit and timeout).
        let mut splits = Vec::with_capacity(5);
        for _ in 0..5 {
            splits
                .push(runtime.block_on(runtime_wasm.time_detect(&loaded, &spec, &opened, calls))?);
        }
        splits.sort_by_key(|split| split.total());
        let split = splits[splits.len() / 2];
        Ok((total / calls, split))
    };
    let mut buildpacks = stager.buildpacks().iter();
    let refusing = buildpacks.next().cloned().ok_or("no buildpacks")?;
    let matching = buildpacks.last().cloned().ok_or("no buildpacks")?;
    let (single_match, split_match) = per_call(&matching)?;
    let (single_no, split_no) = per_call(&refusing)?;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = BUILDPACKS as u32;
    println!("(a) detect, {BUILDPACKS} buildpacks, one app (median)");
    println!(
        "    one wasm detect call:          {:>10.1} us matching, {:.1} us not (target <= 10 us)",
        us(single_match),
        us(single_no)
    );
    for (what, split) in [("matching", split_match), ("not", split_no)] {
        println!(
            "      split, {what:<8} (us): sandbox {:.2}, store {:.2}, instantiate {:.2}, \
             call {:.2}, teardown {:.2}; sum {:.2}",
            us(split.sandbox),
            us(split.store),
            us(split.instantiate),
            us(split.call),
            us(split.teardown),
            us(split.total())
        );
    }
    println!(
        "    wasm components (dea detect):  {:>10.3} ms  ({:.1} us per buildpack)",
        ms(wasm_time),
        us(wasm_time / n)
    );
    println!(
        "    bash bin/detect processes:     {:>10.3} ms  ({:.1} us per buildpack)",
        ms(bash_time),
        us(bash_time / n)
    );
    let ratio = bash_time.as_secs_f64() / wasm_time.as_secs_f64();
    println!("    ratio: wasm is {ratio:.1}x faster (target >= 100x)");
    println!(
        "bench-result|detect, 32 buildpacks (ms)|{:.3}|{:.3} bash|{ratio:.1}x|>= 100x",
        ms(wasm_time),
        ms(bash_time)
    );
    println!(
        "bench-result|one wasm detect call (us)|{:.1}|||<= 10 us",
        us(single_match)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A tree of source-like text (compressible, like real apps) with some binary assets.
fn generate_tree(dir: &Path, total_mb: usize) -> Result<u64, Box<dyn std::error::Error>> {
    let words = [
        "function", "return", "const", "let", "import", "export", "class", "struct", "impl",
        "self", "value", "result", "error", "config", "request", "response", "handler", "async",
        "await", "string", "number", "true", "false", "null", "public", "private", "static",
    ];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut written = 0u64;
    let target = (total_mb as u64) << 20;
    let mut index = 0;
    while written < target {
        let sub = dir.join(format!("pkg{:03}/src", index / 40));
        std::fs::create_dir_all(&sub)?;
        let binary = index % 10 == 9;
        let size = 16 * 1024 + (next() % (96 * 1024)) as usize;
        let mut content = Vec::with_capacity(size + 64);
        if binary {
            while content.len() < size {
                content.extend_from_slice(&next().to_le_bytes());
            }
        } else {
            while content.len() < size {
                let word = words[(next() % words.len() as u64) as usize];
                content.extend_from_slice(word.as_bytes());
                content.push(if next() % 8 == 0 { b'\n' } else { b' ' });
            }
        }
        let name = if binary { "asset.bin" } else { "module.js" };
        let mut file = std::fs::File::create(sub.join(format!("{index}-{name}")))?;
        file.write_all(&content)?;
        written += content.len() as u64;
        index += 1;
    }
    Ok(written)
}

fn pack_benchmark(scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let total_mb: usize = std::env::var("DEA_BENCH_TREE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tree = scratch.join("staged");
    let bytes = generate_tree(&tree.join("app"), total_mb)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ours: PathBuf = scratch.join("droplet.tgz");
    let theirs: PathBuf = scratch.join("tar.tgz");
    let pigz_out: PathBuf = scratch.join("pigz.tgz");
    let shell = |script: String| -> Result<(), Box<dyn std::error::Error>> {
        let status = Command::new("sh").arg("-c").arg(&script).status()?;
        if !status.success() {
            return Err(format!("{script} failed").into());
        }
        Ok(())
    };

    let mut our_size = 0;
    let ours_time = median(5, || {
        let packed = dea::droplet::pack_tree(&tree, &ours, 6, threads)?;
        our_size = packed.size;
        Ok(())
    })?;
    let tar_time = median(5, || {
        shell(format!(
            "tar czf '{}' -C '{}' .",
            theirs.display(),
            tree.display()
        ))
    })?;
    // pigz: parallel gzip on every core, the fair comparison for a parallel packer.
    let has_pigz = Command::new("pigz")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let pigz_time = if has_pigz {
        Some(median(5, || {
            shell(format!(
                "tar -C '{}' -cf - . | pigz -6 > '{}'",
                tree.display(),
                pigz_out.display()
            ))
        })?)
    } else {
        None
    };
    // The droplet must be readable by tar xzf and hold the same files.
    let check = scratch.join("check");
    std::fs::create_dir_all(&check)?;
    shell(format!(
        "tar xzf '{}' -C '{}'",
        ours.display(),
        check.display()
    ))
    .map_err(|_| "tar xzf could not read the droplet")?;
    shell(format!(
        "diff -r '{}' '{}'",
        tree.display(),
        check.display()
    ))
    .map_err(|_| "the unpacked droplet differs from the tree")?;
    let tar_size = std::fs::metadata(&theirs)?.len();
    let mb = |n: u64| n as f64 / 1048576.0;
    let rate = |d: Duration| bytes as f64 / 1048576.0 / d.as_secs_f64();
    println!(
        "(b) pack {:.0} MB app tree into a droplet (median, gzip level 6)",
        mb(bytes)
    );
    println!(
        "    dea pack_tree ({threads} threads): {:>8.0} ms  {:>6.1} MB/s  {:>6.1} MB out",
        ms(ours_time),
        rate(ours_time),
        mb(our_size)
    );
    println!(
        "    tar czf:                 {:>8.0} ms  {:>6.1} MB/s  {:>6.1} MB out",
        ms(tar_time),
        rate(tar_time),
        mb(tar_size)
    );
    if let Some(pigz_time) = pigz_time {
        let pigz_size = std::fs::metadata(&pigz_out)?.len();
        println!(
            "    tar | pigz -6:           {:>8.0} ms  {:>6.1} MB/s  {:>6.1} MB out",
            ms(pigz_time),
            rate(pigz_time),
            mb(pigz_size)
        );
        println!(
            "    dea is {:.2}x faster than pigz -6, its droplet {:.3}x pigz's size",
            pigz_time.as_secs_f64() / ours_time.as_secs_f64(),
            our_size as f64 / pigz_size as f64
        );
    }
    let ratio = tar_time.as_secs_f64() / ours_time.as_secs_f64();
    println!(
        "    ratio: dea is {ratio:.2}x faster than tar czf (target >= 1.5x); tar xzf reads it: yes"
    );
    println!(
        "bench-result|pack_tree, {:.0} MB (ms)|{:.0}|{:.0} tar czf|{ratio:.2}x|",
        mb(bytes),
        ms(ours_time),
        ms(tar_time)
    );
    Ok(())
}

fn classic_benchmark(root: &Path, scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let hello = root.join("tests/classic/hello");
    let app = scratch.join("classic-app");
    std::fs::create_dir_all(&app)?;
    std::fs::write(app.join("hello.txt"), "hi")?;
    let config = Config {
        base_dir: scratch.join("classic-base"),
        buildpack_order: Vec::new(),
        ..Config::default()
    };
    let set = BuildpackSet::from_list(vec![dea::buildpack::Buildpack::load(&hello)?]);
    let wasm = WasmRuntime::new(config.wasm.clone(), config.wasm_cache_dir())?;
    let fetch = Arc::new(FetchService::new(
        config.fetch.clone(),
        config.fetch_cache_dir(),
    )?);
    let stager = Stager::new(config, set, wasm, fetch);
    let runtime = tokio::runtime::Runtime::new()?;

    let bare = median(20, || {
        let status = Command::new(hello.join("bin/detect"))
            .arg(&app)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            return Err("bare detect failed".into());
        }
        Ok(())
    })?;
    let contained = median(10, || {
        let (bp, _) = runtime.block_on(stager.detect_app(&app, &[]))?;
        if bp.id != "hello" {
            return Err("container detect picked the wrong buildpack".into());
        }
        Ok(())
    })?;
    let out = scratch.join("classic.tgz");
    let staged = median(5, || {
        let request = dea::staging::StagingRequest::new(&app, &out);
        runtime.block_on(stager.stage(request))?;
        Ok(())
    })?;
    println!("(c) classic buildpack in runc (median)");
    println!("    bin/detect as a bare process:  {:>10.3} ms", ms(bare));
    println!(
        "    bin/detect in a container:     {:>10.3} ms",
        ms(contained)
    );
    println!(
        "    ratio: the container costs {:.1}x a bare process",
        contained.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "    end-to-end stage (detect, compile, release, pack): {:.1} ms",
        ms(staged)
    );
    println!(
        "bench-result|classic bin/detect in runc (ms)|{:.1}|{:.1} bare|{:.1}x cost|",
        ms(contained),
        ms(bare),
        contained.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}

fn fetch_benchmark(scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use dea::config::{FetchConfig, MirrorRule};
    use dea::fetch::FetchGrant;
    let runtime = tokio::runtime::Runtime::new()?;
    // 50 MB of incompressible bytes served from memory on 127.0.0.1.
    let body = bytes::Bytes::from(support::noise(50 << 20));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let served = body.clone();
    let app = axum::Router::new().route(
        "/big.bin",
        axum::routing::get(move || {
            let served = served.clone();
            async move { served }
        }),
    );
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mirror = format!("http://127.0.0.1:{port}/big.bin");
    let grant = FetchGrant {
        buildpack: "bench".into(),
        declared: vec!["https://upstream.example/".into()],
        any_request: false,
        record: None,
    };
    let config = FetchConfig {
        mirrors: vec![MirrorRule {
            from: "https://upstream.example/".into(),
            to: format!("http://127.0.0.1:{port}/"),
        }],
        ..FetchConfig::default()
    };
    let curl_out = scratch.join("curl.bin");
    let curl = median(5, || {
        let status = Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(&curl_out)
            .arg(&mirror)
            .status()?;
        if !status.success() {
            return Err("curl failed".into());
        }
        Ok(())
    })?;
    let mut round = 0;
    let cold = median(5, || {
        round += 1;
        let service =
            FetchService::new(config.clone(), scratch.join(format!("fetch-cold-{round}")))?;
        let fetched =
            runtime.block_on(service.fetch("https://upstream.example/big.bin", None, &grant))?;
        if fetched.cached || fetched.size != body.len() as u64 {
            return Err("cold fetch was not a full download".into());
        }
        std::fs::remove_dir_all(scratch.join(format!("fetch-cold-{round}")))?;
        Ok(())
    })?;
    let warm_service = FetchService::new(config.clone(), scratch.join("fetch-warm"))?;
    runtime.block_on(warm_service.fetch("https://upstream.example/big.bin", None, &grant))?;
    let warm = median(20, || {
        let fetched = runtime.block_on(warm_service.fetch(
            "https://upstream.example/big.bin",
            None,
            &grant,
        ))?;
        if !fetched.cached {
            return Err("warm fetch missed the cache".into());
        }
        Ok(())
    })?;
    println!("(d) 50 MB download from a loopback mirror (median)");
    println!("    curl straight from the mirror: {:>10.1} ms", ms(curl));
    println!("    fetch service, cold cache:     {:>10.1} ms", ms(cold));
    println!("    fetch service, warm cache:     {:>10.3} ms", ms(warm));
    println!(
        "    ratio: fetch service runs at {:.2}x curl's speed (target >= 0.8); warm is {:.0}x faster than cold",
        curl.as_secs_f64() / cold.as_secs_f64(),
        cold.as_secs_f64() / warm.as_secs_f64()
    );
    println!(
        "bench-result|50 MB fetch, cold (ms)|{:.1}|{:.1} curl|{:.2}x|>= 0.8x",
        ms(cold),
        ms(curl),
        curl.as_secs_f64() / cold.as_secs_f64()
    );
    Ok(())
}
