//! `tail`: a file streamed as it grows, in one chunked response (reference dea_ng.md §5.5).
//!
//! The stream starts at the end of the file or at `tail_offset`, sends what is there, then
//! checks the file every poll interval (50 ms, the Go server's flush interval) and sends new
//! bytes. Polling the open descriptor is simpler than inotify and cannot miss a write. The
//! stream ends normally (terminating chunk sent) when the file is deleted or renamed. After
//! `streaming_timeout` without new bytes it ends with an error: hyper then drops the
//! connection without the terminating chunk, which is what the DEA does (it hijacks and closes
//! the socket), so clients see a truncated response and re-request with `tail_offset`.

use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Most bytes sent in one chunk.
const CHUNK: u64 = 64 * 1024;

pub(crate) struct Tail {
    file: Arc<File>,
    /// The path the file was opened at: another file there (or none) means it was renamed.
    host_path: PathBuf,
    position: u64,
    /// The size last seen, to notice truncation.
    last_size: u64,
    idle_since: Instant,
    timeout: Duration,
    poll_interval: Duration,
    finished: bool,
}

enum Step {
    Data(Bytes),
    Nothing,
    Gone,
}

impl Tail {
    pub(crate) fn new(
        file: File,
        host_path: PathBuf,
        start: u64,
        size: u64,
        timeout: Duration,
        poll_interval: Duration,
    ) -> Tail {
        Tail {
            file: Arc::new(file),
            host_path,
            position: start,
            last_size: size,
            idle_since: Instant::now(),
            timeout,
            poll_interval,
            finished: false,
        }
    }

    /// The response body: the file's new bytes as they arrive.
    pub(crate) fn into_body(self) -> axum::body::Body {
        let stream = futures_util::stream::unfold(self, |mut tail| async move {
            let item = tail.next().await?;
            Some((item, tail))
        });
        axum::body::Body::from_stream(stream)
    }

    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        loop {
            match self.poll_once().await {
                Ok(Step::Data(bytes)) => {
                    self.idle_since = Instant::now();
                    return Some(Ok(bytes));
                }
                Ok(Step::Gone) => return None,
                Ok(Step::Nothing) => {}
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
            if self.idle_since.elapsed() >= self.timeout {
                self.finished = true;
                tracing::debug!(path = %self.host_path.display(), "tail idle, closing connection");
                return Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "tail stream idle for streaming_timeout",
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// One look at the file, off the async threads.
    async fn poll_once(&mut self) -> std::io::Result<Step> {
        let file = Arc::clone(&self.file);
        let host_path = self.host_path.clone();
        let (position, last_size) = (self.position, self.last_size);
        let (step, position, last_size) =
            tokio::task::spawn_blocking(move || look(&file, &host_path, position, last_size))
                .await
                .map_err(std::io::Error::other)??;
        self.position = position;
        self.last_size = last_size;
        Ok(step)
    }
}

/// New bytes from `position` if any, else whether the file is gone. Returns the new position
/// and size.
fn look(
    file: &File,
    host_path: &std::path::Path,
    mut position: u64,
    last_size: u64,
) -> std::io::Result<(Step, u64, u64)> {
    let metadata = file.metadata()?;
    let size = metadata.len();
    if size < last_size {
        // Truncated in place (copytruncate log rotation): start over, as `tail -F` does.
        position = 0;
    }
    if size > position {
        let mut buffer = vec![0u8; usize::try_from((size - position).min(CHUNK)).unwrap_or(0)];
        let read = file.read_at(&mut buffer, position)?;
        if read > 0 {
            buffer.truncate(read);
            return Ok((
                Step::Data(Bytes::from(buffer)),
                position + read as u64,
                size,
            ));
        }
    }
    if metadata.nlink() == 0 {
        return Ok((Step::Gone, position, size));
    }
    // Only compares identities: nothing at the path is opened or read.
    let renamed = match std::fs::metadata(host_path) {
        Ok(now) => (now.dev(), now.ino()) != (metadata.dev(), metadata.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
    };
    Ok((
        if renamed { Step::Gone } else { Step::Nothing },
        position,
        size,
    ))
}
