//! `dea fetch --pin URL...`: downloads each URL through the fetch service (mirror rules and
//! allowlist apply, the download lands in the cache) and prints the `fetch.pins` lines that
//! would let it through under `fetch.require_pins`.

use anyhow::Result;
use dea::config::Config;
use dea::fetch::{FetchGrant, FetchRecorder, FetchService, Recording};

/// Fetches `urls` for `grant` and prints them as `fetch.pins` YAML, one line per URL.
pub async fn run(config: &Config, urls: &[String], grant: FetchGrant) -> Result<()> {
    // Pinning is how an unpinned URL gets its pin: the policy cannot apply to it here.
    let mut fetch = config.fetch.clone();
    fetch.require_pins = false;
    let service = FetchService::new(fetch, config.fetch_cache_dir())?;
    let recorder = FetchRecorder::default();
    let grant = FetchGrant {
        // The operator asks, not a buildpack: any URL, still under the operator's rules.
        any_request: grant.any_request || grant.declared.is_empty(),
        record: Some(Recording {
            to: recorder.clone(),
            phase: "pin",
        }),
        ..grant
    };
    for url in urls {
        service.fetch(url, None, &grant).await?;
    }
    // A snippet that loads as it is; its last lines are what goes under an existing
    // `fetch.pins`.
    println!("fetch:\n  pins:");
    for record in recorder.records() {
        // JSON strings are YAML strings: a URL with `#` or `: ` in it stays one key.
        println!(
            "    {}: {}  # {} bytes from {}",
            serde_json::to_string(&record.url_asked)?,
            record.sha256,
            record.size,
            record.url_used
        );
    }
    Ok(())
}
