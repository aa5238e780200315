//! `dea ctl push`: routes claimed, source uploaded to the blobstore, the app's spec written
//! with a pending staging; then the staging log streamed from the agent while the controller
//! stages, and the instances followed until they run.

use super::{Ctl, CtlError, filter, package::package};
use crate::blobs::BlobRef;
use crate::desired::{AppSpec, AppState, StagingState, StagingStatus};
use dea_protocol::InstanceState;
use futures_util::StreamExt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// What `dea ctl push` was asked for; unset fields keep the app's current values (or the
/// defaults for a new app).
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub name: String,
    pub path: PathBuf,
    pub instances: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    pub routes: Vec<String>,
    pub buildpack: Option<String>,
    pub stack: Option<String>,
    pub env: Vec<(String, String)>,
    /// How long to wait for staging and for the instances to run.
    pub timeout: Duration,
}

pub async fn push(ctl: &Ctl, options: &PushOptions, out: &mut dyn Write) -> Result<(), CtlError> {
    let platform = &ctl.platform;
    let existing = platform.apps().get(&options.name).await?;
    let mut claimed = Vec::new();
    for route in &options.routes {
        let already = existing
            .as_ref()
            .is_some_and(|(spec, _)| spec.routes.contains(route));
        if let Err(e) = platform.routes().claim(route, &options.name).await {
            release(ctl, &claimed, &options.name).await;
            return Err(e.into());
        }
        if !already {
            claimed.push(route.clone());
        }
    }
    let began = std::time::Instant::now();
    let uploaded = upload(ctl, options, out).await;
    let uploaded_at = began.elapsed();
    let blob = match uploaded {
        Ok(blob) => blob,
        Err(e) => {
            release(ctl, &claimed, &options.name).await;
            return Err(e);
        }
    };
    let task_id = uuid::Uuid::new_v4().simple().to_string();
    let apply = |spec: &mut AppSpec| {
        spec.package = Some(blob.clone());
        spec.state = AppState::Started;
        spec.staging = Some(StagingStatus {
            task_id: task_id.clone(),
            agent: None,
            started_at: OffsetDateTime::now_utc(),
            state: StagingState::Pending,
            log_url: None,
        });
        if let Some(n) = options.instances {
            spec.instances = n;
        }
        if let Some(mb) = options.memory_mb {
            spec.memory_mb = mb;
        }
        if let Some(mb) = options.disk_mb {
            spec.disk_mb = mb;
        }
        for route in &options.routes {
            if !spec.routes.contains(route) {
                spec.routes.push(route.clone());
            }
        }
        if options.buildpack.is_some() {
            spec.buildpack = options.buildpack.clone();
        }
        if options.stack.is_some() {
            spec.stack = options.stack.clone();
        }
        for (key, value) in &options.env {
            spec.env.insert(key.clone(), value.clone());
        }
    };
    let written = match existing {
        Some(_) => platform.apps().modify(&options.name, apply).await,
        None => {
            let mut spec = AppSpec::new(&options.name);
            apply(&mut spec);
            platform.apps().create(spec).await
        }
    };
    let (spec, _) = match written {
        Ok(written) => written,
        Err(e) => {
            release(ctl, &claimed, &options.name).await;
            return Err(e.into());
        }
    };
    writeln!(out, "Staging {}...", spec.name)?;
    let package = spec.package.clone();
    let staged = follow_staging(ctl, &spec.name, &package, &task_id, options.timeout, out).await?;
    let staged_at = began.elapsed();
    writeln!(
        out,
        "Staged: droplet {} ({})",
        staged.droplet.as_ref().map_or("?", |d| d.sha1.as_str()),
        staged
            .droplet
            .as_ref()
            .and_then(|d| d.detected_buildpack.as_deref())
            .unwrap_or("no buildpack named")
    )?;
    wait_running(ctl, &staged, options.timeout, out).await?;
    let running_at = began.elapsed();
    for route in &staged.routes {
        wait_routed(ctl, route, Duration::from_secs(30)).await?;
    }
    let routed_at = began.elapsed();
    for route in &staged.routes {
        writeln!(out, "App {} is running: http://{route}", staged.name)?;
    }
    if staged.routes.is_empty() {
        writeln!(out, "App {} is running (no route)", staged.name)?;
    }
    let ms = |d: Duration| d.as_millis();
    writeln!(
        out,
        "Took {} ms: upload {} ms, staging {} ms (droplet stored by the agent), start {} ms, route {} ms",
        ms(routed_at),
        ms(uploaded_at),
        ms(staged_at - uploaded_at),
        ms(running_at - staged_at),
        ms(routed_at - running_at)
    )?;
    Ok(())
}

/// Waits until the router sends `route` to an instance (not its 404 for an unknown route,
/// nor a 502 when no instance answers yet).
async fn wait_routed(ctl: &Ctl, route: &str, limit: Duration) -> Result<(), CtlError> {
    let url = format!("http://{route}/");
    let client = ctl.http(&url)?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(response) = client.get(&url).send().await
            && !matches!(response.status().as_u16(), 404 | 502 | 503 | 504)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CtlError::Timeout {
                what: format!("a route to {route} through the router at {}", ctl.router),
                limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn release(ctl: &Ctl, routes: &[String], app: &str) {
    for route in routes {
        if let Err(e) = ctl.platform.routes().release(route, app).await {
            tracing::warn!(route, "releasing a route: {e}");
        }
    }
}

async fn upload(
    ctl: &Ctl,
    options: &PushOptions,
    out: &mut dyn Write,
) -> Result<crate::blobs::BlobRef, CtlError> {
    let temp = tempfile::tempdir()?;
    let zip = temp.path().join("package.zip");
    let (source, dest) = (options.path.clone(), zip.clone());
    let packaged = tokio::task::spawn_blocking(move || package(&source, &dest))
        .await
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    let files = packaged.map_err(|source| CtlError::Package {
        path: options.path.display().to_string(),
        source,
    })?;
    let size = tokio::fs::metadata(&zip).await?.len();
    writeln!(
        out,
        "Uploading {} ({} files, {})...",
        options.name,
        files,
        super::megabytes(size)
    )?;
    let file = tokio::fs::File::open(&zip).await?;
    Ok(ctl
        .platform
        .blobs()
        .put_package(&options.name, Progress::new(file, size))
        .await?)
}

/// A reader that says how far an upload is (on stderr, every tenth, for packages of a
/// megabyte or more), as `cf push` shows its upload.
struct Progress<R> {
    inner: R,
    done: u64,
    total: u64,
    next_tenth: u64,
}

impl<R> Progress<R> {
    fn new(inner: R, total: u64) -> Progress<R> {
        Progress {
            inner,
            done: 0,
            total,
            next_tenth: 1,
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Progress<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.done += read;
        if self.total >= 1 << 20 {
            while self.next_tenth <= 10 && self.done * 10 >= self.total * self.next_tenth {
                eprintln!(
                    "  uploaded {}% ({} of {})",
                    self.next_tenth * 10,
                    super::megabytes(self.done),
                    super::megabytes(self.total)
                );
                self.next_tenth += 1;
            }
        }
        polled
    }
}

/// Streams the staging log (through the router, from the staging agent's directory server)
/// until the staging ends; returns the spec with its droplet.
async fn follow_staging(
    ctl: &Ctl,
    name: &str,
    package: &Option<BlobRef>,
    task_id: &str,
    limit: Duration,
    out: &mut dyn Write,
) -> Result<AppSpec, CtlError> {
    let deadline = tokio::time::Instant::now() + limit;
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let mut streaming: Option<tokio::task::JoinHandle<()>> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let outcome = loop {
        tokio::select! {
            Some(chunk) = chunks.recv() => {
                out.write_all(&chunk)?;
                out.flush()?;
                continue;
            }
            _ = poll.tick() => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(CtlError::Timeout {
                what: format!("staging {name}"),
                limit,
            });
        }
        let spec = ctl.spec(name).await?;
        let Some(staging) = spec.staging.clone().filter(|s| s.task_id == task_id) else {
            // Another task for the package this push uploaded: a controller that took over
            // restaged it. Follow that one; it may even have finished between two polls.
            // Another package means another push replaced this one.
            let ours = spec.package.as_ref() == package.as_ref();
            match spec.staging.as_ref() {
                Some(s)
                    if ours && matches!(s.state, StagingState::Pending | StagingState::Running) =>
                {
                    if let Some(task) = streaming.take() {
                        task.abort();
                    }
                    let task = s.task_id.clone();
                    return Box::pin(follow_staging(ctl, name, package, &task, limit, out)).await;
                }
                Some(s) if ours && s.state == StagingState::Succeeded => break Ok(spec),
                Some(StagingStatus {
                    state: StagingState::Failed(reason),
                    ..
                }) if ours => break Err(CtlError::StagingFailed(reason.clone())),
                _ => break Err(CtlError::StagingFailed("the app was pushed again".into())),
            }
        };
        if streaming.is_none()
            && let Some(url) = staging.log_url.clone()
        {
            let client = ctl.http(&url)?;
            let tx = chunks_tx.clone();
            streaming = Some(tokio::spawn(async move {
                let url = format!("{url}&tail&tail_offset=0");
                // The router may not know the agent's directory server yet (it registers
                // every few seconds): asked again for a while, until the log answers.
                for _ in 0..25 {
                    match client.get(&url).send().await {
                        Ok(response) if response.status().is_success() => {
                            let mut body = response.bytes_stream();
                            while let Some(Ok(chunk)) = body.next().await {
                                if tx.send(chunk).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                        Ok(response) => {
                            tracing::debug!("staging log: HTTP {}", response.status())
                        }
                        Err(e) => tracing::debug!("staging log: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tracing::warn!("the staging log could not be followed");
            }));
        }
        match staging.state {
            StagingState::Succeeded => break Ok(spec),
            StagingState::Failed(reason) => break Err(CtlError::StagingFailed(reason)),
            _ => {}
        }
    };
    // The log's last lines may still be on their way (the agent keeps a finished staging's
    // log for a few seconds, and the tail goes on until it is removed): read until it has
    // been quiet for a moment, or for at most a second when nothing came yet.
    // Only the streaming task holds a sender now: its end (a 404, an error) ends the wait.
    drop(chunks_tx);
    if streaming.is_some() {
        let last = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut got_any = false;
        loop {
            let quiet = if got_any {
                (tokio::time::Instant::now() + Duration::from_millis(150)).min(last)
            } else {
                last
            };
            match tokio::time::timeout_at(quiet, chunks.recv()).await {
                Ok(Some(chunk)) => {
                    got_any = true;
                    out.write_all(&chunk)?;
                }
                _ => break,
            }
        }
        out.flush()?;
    }
    if let Some(task) = streaming {
        task.abort();
    }
    outcome
}

/// Waits until every index runs the app's current version. An instance of that version
/// crashing ends the wait, as `cf push` ends with "start unsuccessful": the controller keeps
/// restarting it (with back-off), and `dea ctl events` tells why.
async fn wait_running(
    ctl: &Ctl,
    spec: &AppSpec,
    limit: Duration,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let deadline = tokio::time::Instant::now() + limit;
    // Events are read as a hint: a moment without them (a stream leader being elected
    // after a node went away) only means the next look decides.
    let seen = match ctl.platform.events().list(&spec.name, 1).await {
        Ok(events) => events.last().map_or(0, |e| e.sequence),
        Err(e) => {
            tracing::warn!("reading events: {e}");
            0
        }
    };
    loop {
        let recent = match ctl.platform.events().list(&spec.name, 20).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!("reading events: {e}");
                Vec::new()
            }
        };
        let crashed = recent
            .into_iter()
            .filter(|e| e.sequence > seen)
            .find_map(|e| match e.event {
                crate::events::Event::Crashed {
                    index,
                    exit_status,
                    reason,
                    ..
                } => Some((index, exit_status, reason)),
                _ => None,
            });
        if let Some((index, exit_status, reason)) = crashed {
            return Err(CtlError::Crashed {
                app: spec.name.clone(),
                index,
                exit_status: exit_status.map_or("none".into(), |s| s.to_string()),
                reason,
            });
        }
        let spec = ctl.spec(&spec.name).await?;
        let wanted = spec.instances as usize;
        let version = spec.version.clone();
        let found = ctl
            // Polled: a short window each time (the instance's agent answers within
            // milliseconds once it runs), until every index answers RUNNING.
            .find_until(&filter(&spec.guid), Duration::from_millis(200), |found| {
                found
                    .iter()
                    .filter(|i| i.state == InstanceState::Running && i.version == version)
                    .count()
                    >= wanted
            })
            .await?;
        let running = found
            .iter()
            .filter(|i| i.state == InstanceState::Running && i.version == spec.version)
            .map(|i| i.index)
            .collect::<std::collections::BTreeSet<u32>>();
        if running.len() as u32 >= spec.instances {
            writeln!(
                out,
                "{} of {} instances running",
                running.len(),
                spec.instances
            )?;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CtlError::Timeout {
                what: format!(
                    "{} running instances of {} ({} now)",
                    spec.instances,
                    spec.name,
                    running.len()
                ),
                limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn progress_passes_every_byte_through_and_counts_to_the_end() {
        let data = vec![7u8; 3 << 20];
        let mut reader = Progress::new(data.as_slice(), data.len() as u64);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, data);
        assert_eq!(reader.done, data.len() as u64);
        assert_eq!(reader.next_tenth, 11, "every tenth reported once");
    }
}
