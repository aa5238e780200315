//! The guest's stdout and stderr: streamed into the staging log, within a byte budget.
//!
//! A buildpack that prints forever must not fill the disk or the host's memory, and must not
//! spin until its CPU limit either: once the phase's budget is spent the next write traps the
//! guest, and the phase fails with a message that says why.

use crate::phase::StagingLog;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// A write (or `log` call) that would pass the phase's output budget. It traps the guest;
/// the budget's exceeded flag, not this error, is what classifies the phase's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buildpack output exceeded the limit of {limit} bytes")]
pub struct OutputExceeded {
    pub limit: u64,
}

/// The output allowance of one phase, shared by stdout, stderr and `log`.
#[derive(Debug)]
pub struct OutputBudget {
    limit: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
}

impl OutputBudget {
    pub fn new(limit: u64) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            limit,
            used: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
        })
    }

    /// Charges `n` bytes; an error (and the exceeded flag set) once the limit is passed.
    pub fn charge(&self, n: usize) -> Result<(), OutputExceeded> {
        let used = self.used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if used > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            Err(OutputExceeded { limit: self.limit })
        } else {
            Ok(())
        }
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// A stdout/stderr that writes to the staging log.
#[derive(Clone)]
pub struct LogOutput {
    log: StagingLog,
    budget: Arc<OutputBudget>,
}

impl LogOutput {
    pub fn new(log: StagingLog, budget: Arc<OutputBudget>) -> LogOutput {
        LogOutput { log, budget }
    }

    fn accept(&self, bytes: &[u8]) -> Result<(), OutputExceeded> {
        self.budget.charge(bytes.len())?;
        self.log.write_raw(bytes);
        Ok(())
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // A trap, not a failed write: a guest that ignores write errors would otherwise
        // spin on until its CPU limit.
        self.accept(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // The same permit size WASI's own streams use.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.accept(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
