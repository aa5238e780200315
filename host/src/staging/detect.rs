//! Choosing the buildpack: every candidate's detect, in order, answered as soon as the first
//! match is known.

use super::{DetectResult, Stager, StagingError, StagingLog};
use crate::buildpack::Buildpack;
use crate::buildpack::wasm::runner::DetectTurn;
use crate::phase::{
    DetectLogs, Detection, Phase, PhaseError, PhaseOutput, PhaseRunner, Position, StagingContext,
};
use futures_util::FutureExt;
use parking_lot::Mutex;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

impl Stager {
    /// Runs the candidates' detects and picks the first match in order. The answer comes as
    /// soon as it is known: once every buildpack ahead of the first match has said no, or
    /// the first one in order to fail has failed (a detect that fails ahead of the match
    /// fails the staging: the order would otherwise depend on a broken buildpack).
    /// Buildpacks still running then are cancelled and the rest never start, and a component
    /// that must first be compiled is compiled only once every buildpack ahead of it has
    /// said no ([`DetectTurn`]): a static site does not wait for the Python buildpack's first
    /// compile.
    ///
    /// Each detect is first polled right here, in order. A wasm detect of a loaded component
    /// ends within that poll (microseconds), so most stagings decide without a task or a
    /// thread hop. A detect that has to wait (a component being compiled, a classic
    /// script's container) goes on as a task of its own, in parallel with the others. With
    /// many candidates a second thread takes candidates from the same queue: the calls are
    /// short, so the hop to it pays only when there are enough of them.
    pub(super) async fn detect(
        &self,
        ctx: &Arc<StagingContext>,
        candidates: &[Buildpack],
    ) -> Result<(Buildpack, Detection), StagingError> {
        let (progress, turn) = DetectTurn::channel();
        let (handed_over, mut handed) = mpsc::unbounded_channel();
        ctx.detect_logs.hold(candidates.len(), DETECT_LOG_LIMIT);
        let work = Arc::new(Detecting {
            runners: self.runners.detect_runners(candidates, turn),
            ctx: ctx.clone(),
            next: AtomicUsize::new(0),
            verdicts: Mutex::new(Verdicts::new(candidates.len())),
            progress,
            over: AtomicBool::new(false),
            handed_over,
            decided: Notify::new(),
        });
        let _stop = StopOnDrop(work.clone());
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
        let mut helper = (parallel && candidates.len() >= PARALLEL_FROM).then(|| {
            let (work, handle) = (work.clone(), tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || {
                handle.block_on(work.take_turns(|run| {
                    // The detecting task drives what has to wait; if it is gone, so is
                    // the detect, and the run is dropped (cancelled) here.
                    let _ = work.handed_over.send(run);
                }))
            })
        });

        let mut waiting = JoinSet::new();
        work.take_turns(|run| {
            waiting.spawn(run);
        })
        .await;
        loop {
            if work.verdicts.lock().decided() {
                break;
            }
            while let Ok(run) = handed.try_recv() {
                waiting.spawn(run);
            }
            if helper.is_none() && waiting.is_empty() {
                break;
            }
            tokio::select! {
                () = work.decided.notified() => {}
                Some(run) = handed.recv() => {
                    waiting.spawn(run);
                }
                Some(joined) = waiting.join_next(), if !waiting.is_empty() => match joined {
                    Ok((index, result)) => work.record(index, result),
                    Err(e) => tracing::error!("detect task failed: {e}"),
                },
                joined = async {
                    match helper.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if helper.is_some() => {
                    if let Err(e) = joined {
                        tracing::error!("detect helper failed: {e}");
                    }
                    helper = None;
                }
            }
        }
        // Whatever still runs has lost: cancel it and wait until it has let go (a wasm
        // phase's store dropped, a classic container's removal under way).
        work.over.store(true, Ordering::Release);
        waiting.shutdown().await;
        if let Some(helper) = helper
            && let Err(e) = helper.await
        {
            tracing::error!("detect helper failed: {e}");
        }
        handed.close();
        while let Ok(run) = handed.try_recv() {
            drop(run);
        }
        let verdicts = std::mem::replace(&mut *work.verdicts.lock(), Verdicts::new(0));
        let chosen = verdicts.choose(candidates, &ctx.log, &ctx.detect_logs);
        ctx.detect_logs.end();
        chosen
    }
}

/// Most output one candidate's detect may leave in the staging log. Detect's own output
/// limits apply first; this bounds what is held in memory until the answer is known.
const DETECT_LOG_LIMIT: u64 = 64 << 10;

/// Candidates from which a second thread joins in: with fewer, the hop to it costs more
/// than it saves (a wasm detect takes some 10 µs, waking a thread about as much).
const PARALLEL_FROM: usize = 8;

/// A candidate's detect, with its index.
type Run = Pin<Box<dyn Future<Output = (usize, DetectResult)> + Send>>;

/// One detect's work, shared by the detecting task and its helper thread.
struct Detecting {
    runners: Vec<Arc<dyn PhaseRunner>>,
    ctx: Arc<StagingContext>,
    /// The next candidate to start.
    next: AtomicUsize,
    verdicts: Mutex<Verdicts>,
    /// Tells the runners how many candidates at the front have said no.
    progress: watch::Sender<usize>,
    /// Set once the answer is known, or the detect is gone: nothing more starts.
    over: AtomicBool,
    /// Runs the helper started that have to wait: the detecting task drives them.
    handed_over: mpsc::UnboundedSender<Run>,
    /// Wakes the detecting task when the helper's verdict decided.
    decided: Notify,
}

impl Detecting {
    /// Starts candidates in order, polling each once, until none is left or the answer is
    /// known; a run that has to wait goes to `waiting`.
    async fn take_turns(&self, mut waiting: impl FnMut(Run)) {
        while !self.over.load(Ordering::Acquire) {
            let index = self.next.fetch_add(1, Ordering::AcqRel);
            let Some(runner) = self.runners.get(index) else {
                return;
            };
            let at = Position { index, last: true };
            // A panicking buildpack backend fails its own detect, not the staging's task.
            let mut run: Run = Box::pin(
                AssertUnwindSafe(runner.clone().run(Phase::Detect, self.ctx.clone(), at))
                    .catch_unwind()
                    .map(move |result| (index, result.unwrap_or_else(|_| Err(detect_panicked())))),
            );
            match futures_util::poll!(&mut run) {
                Poll::Ready((index, result)) => self.record(index, result),
                Poll::Pending => waiting(run),
            }
        }
    }

    fn record(&self, index: usize, result: DetectResult) {
        let mut verdicts = self.verdicts.lock();
        verdicts.record(index, result);
        self.progress.send_replace(verdicts.refused);
        if verdicts.decided() {
            self.over.store(true, Ordering::Release);
            self.decided.notify_one();
        }
    }
}

/// Stops the helper from starting more candidates when the detect is dropped before its
/// answer (the staging timed out, or was stopped).
struct StopOnDrop(Arc<Detecting>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.over.store(true, Ordering::Release);
    }
}

fn detect_panicked() -> PhaseError {
    PhaseError::Instantiate {
        phase: "detect",
        message: "detect did not run: its task panicked".into(),
    }
}

/// What each candidate's detect has said so far, and whether that decides the staging.
struct Verdicts {
    results: Vec<Option<DetectResult>>,
    /// How many candidates at the front of the order have said no.
    refused: usize,
}

impl Verdicts {
    fn new(candidates: usize) -> Verdicts {
        Verdicts {
            results: (0..candidates).map(|_| None).collect(),
            refused: 0,
        }
    }

    fn record(&mut self, index: usize, result: DetectResult) {
        if let Some(slot) = self.results.get_mut(index) {
            *slot = Some(result);
        }
        while let Some(Some(Ok(output))) = self.results.get(self.refused)
            && !matches!(output, PhaseOutput::Detect(Some(_)))
        {
            self.refused += 1;
        }
    }

    /// Whether the answer is known: the first candidate after those that said no has
    /// answered (a match or a failure), or every candidate said no.
    fn decided(&self) -> bool {
        match self.results.get(self.refused) {
            None => true,
            Some(answer) => answer.is_some(),
        }
    }

    /// The first match in order, unless a candidate ahead of it failed (or never answered).
    /// The first match in order; what candidates up to it wrote goes into the staging's
    /// log, in their order.
    fn choose(
        self,
        candidates: &[Buildpack],
        log: &StagingLog,
        held: &DetectLogs,
    ) -> Result<(Buildpack, Detection), StagingError> {
        for (index, (buildpack, result)) in candidates.iter().zip(self.results).enumerate() {
            held.release(index, log);
            match result {
                Some(Ok(PhaseOutput::Detect(Some(detection)))) => {
                    return Ok((buildpack.clone(), detection));
                }
                Some(Ok(_)) => {}
                Some(Err(source)) => {
                    log.warning(&format!("buildpack {}: {source}", buildpack.id));
                    return Err(StagingError::DetectFailed {
                        buildpack: buildpack.id.clone(),
                        source,
                    });
                }
                None => {
                    return Err(StagingError::DetectFailed {
                        buildpack: buildpack.id.clone(),
                        source: PhaseError::Instantiate {
                            phase: "detect",
                            message: "detect did not run".into(),
                        },
                    });
                }
            }
        }
        Err(StagingError::NoAppDetected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildpack::BuildpackKind;
    use std::path::PathBuf;

    fn candidates(n: usize) -> Vec<Buildpack> {
        (0..n)
            .map(|i| Buildpack {
                id: format!("bp{i}"),
                name: format!("bp{i}"),
                version: "1".into(),
                description: String::new(),
                dir: PathBuf::from(format!("/nonexistent/bp{i}")),
                kind: BuildpackKind::Wasm {
                    component: PathBuf::from(format!("/nonexistent/bp{i}/buildpack.wasm")),
                },
                fetch_allow: Vec::new(),
                env: Vec::new(),
            })
            .collect()
    }

    fn no() -> DetectResult {
        Ok(PhaseOutput::Detect(None))
    }

    fn yes(name: &str) -> DetectResult {
        Ok(PhaseOutput::Detect(Some(Detection {
            name: name.into(),
            version: None,
        })))
    }

    fn failed() -> DetectResult {
        Err(PhaseError::Exit {
            phase: "detect",
            status: 3,
        })
    }

    #[test]
    fn the_answer_waits_only_for_the_buildpacks_ahead_of_the_first_match() {
        let mut verdicts = Verdicts::new(4);
        // A later match decides nothing while an earlier buildpack has not answered.
        verdicts.record(2, yes("c"));
        assert!(!verdicts.decided());
        verdicts.record(0, no());
        assert!(!verdicts.decided());
        assert_eq!(verdicts.refused, 1);
        // The first match in order: the last buildpack need not answer at all.
        verdicts.record(1, yes("b"));
        assert!(verdicts.decided());
        let (buildpack, detection) = verdicts
            .choose(
                &candidates(4),
                &StagingLog::detached(None),
                &DetectLogs::default(),
            )
            .expect("a match");
        assert_eq!(
            (buildpack.id.as_str(), detection.name.as_str()),
            ("bp1", "b")
        );
    }

    #[test]
    fn a_failure_ahead_of_any_match_decides_the_staging() {
        let mut verdicts = Verdicts::new(3);
        verdicts.record(2, yes("c"));
        verdicts.record(1, failed());
        assert!(!verdicts.decided(), "the first buildpack may still match");
        verdicts.record(0, no());
        assert!(verdicts.decided());
        let error = verdicts
            .choose(
                &candidates(3),
                &StagingLog::detached(None),
                &DetectLogs::default(),
            )
            .expect_err("the failure");
        assert!(
            matches!(&error, StagingError::DetectFailed { buildpack, .. } if buildpack == "bp1"),
            "{error}"
        );
    }

    #[test]
    fn no_match_needs_every_answer() {
        let mut verdicts = Verdicts::new(2);
        verdicts.record(1, no());
        assert!(!verdicts.decided());
        verdicts.record(0, no());
        assert!(verdicts.decided());
        assert!(matches!(
            verdicts.choose(
                &candidates(2),
                &StagingLog::detached(None),
                &DetectLogs::default()
            ),
            Err(StagingError::NoAppDetected)
        ));
    }

    #[test]
    fn a_buildpack_that_never_answered_is_not_passed_over() {
        // Its task was lost (a panic in a backend): the order cannot skip it.
        let mut verdicts = Verdicts::new(2);
        verdicts.record(1, yes("b"));
        let error = verdicts
            .choose(
                &candidates(2),
                &StagingLog::detached(None),
                &DetectLogs::default(),
            )
            .expect_err("bp0 did not run");
        assert!(
            matches!(&error, StagingError::DetectFailed { buildpack, .. } if buildpack == "bp0"),
            "{error}"
        );
    }
}
