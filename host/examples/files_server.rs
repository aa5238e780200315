//! Serves one directory as the files of instance `bench` through the directory server and
//! prints a signed URL for each file named (one per line, in order), then serves until
//! interrupted. `bench/files.sh` runs it against nginx serving the same files.
//!
//! Usage: `files_server DIR FILE...` (each FILE relative to DIR).

use dea::files::{DirectoryServerConfig, FileRoot, FileRoots, UrlSigner};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct OneInstance(PathBuf);

impl FileRoots for OneInstance {
    fn instance(&self, instance_id: &str) -> FileRoot {
        match instance_id {
            "bench" => FileRoot::Dir(self.0.clone()),
            _ => FileRoot::Unknown,
        }
    }
    fn staging_task(&self, _task_id: &str) -> FileRoot {
        FileRoot::Unknown
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        return Err("usage: files_server DIR FILE...".into());
    };
    let files: Vec<String> = args.collect();
    if files.is_empty() {
        return Err("usage: files_server DIR FILE...".into());
    }
    let config = DirectoryServerConfig {
        port: 0,
        ..DirectoryServerConfig::default()
    };
    let signer = Arc::new(UrlSigner::random());
    let server = dea::files::serve(
        &config,
        signer.clone(),
        Arc::new(OneInstance(PathBuf::from(dir))),
    )
    .await?;
    let base = format!("http://{}", server.local_addr);
    for file in &files {
        println!("{}", signer.instance_url(&base, "bench", file));
    }
    std::io::stdout().flush()?;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
