//! Where the time of a detect call goes, for the staging benchmark: the same steps as
//! [`WasmRuntime::run_opened`], each timed on its own, so every microsecond of the per-call
//! cost is accounted for.

use super::{
    LoadedComponent, OpenedDirs, OutputBudget, Phase, PhaseError, SandboxSpec, StartError,
    WasmRuntime, start_error,
};
use std::time::{Duration, Instant};

/// The mean time of each step of a detect call.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetectSplit {
    /// Building the sandbox's state (WASI context, mounts, limits).
    pub sandbox: Duration,
    /// Creating the store around it (limiter, epoch deadline).
    pub store: Duration,
    /// Instantiating the component in the store.
    pub instantiate: Duration,
    /// The guest's `detect` itself, host calls included.
    pub call: Duration,
    /// Dropping the store: the instance's slot reset and returned to the pool.
    pub teardown: Duration,
}

impl DetectSplit {
    pub fn total(&self) -> Duration {
        self.sandbox + self.store + self.instantiate + self.call + self.teardown
    }
}

impl WasmRuntime {
    /// Runs `calls` detects of `component` as [`WasmRuntime::run_opened`] does (without its
    /// slot permit and timeout) and returns the mean time of each step.
    #[doc(hidden)]
    pub async fn time_detect(
        &self,
        component: &LoadedComponent,
        spec: &SandboxSpec,
        opened: &OpenedDirs,
        calls: u32,
    ) -> Result<DetectSplit, PhaseError> {
        let name = Phase::Detect.name();
        let cpu_limit = Duration::from_millis(self.limits.detect_cpu_ms);
        let mut split = DetectSplit::default();
        for _ in 0..calls.max(1) {
            let (spec, opened) = (spec.clone(), opened.clone());
            let start = Instant::now();
            let budget = OutputBudget::new(self.limits.output_limit_bytes);
            let state = super::SandboxState::new(
                Phase::Detect,
                spec,
                opened,
                &self.limits,
                budget,
                cpu_limit,
            )
            .map_err(|e| start_error(name, StartError::Sandbox(e)))?;
            let built = Instant::now();
            let mut store = self.store_for(state);
            let stored = Instant::now();
            let bindings = component
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| start_error(name, StartError::Instantiate(e)))?;
            let instantiated = Instant::now();
            let detected = bindings.call_detect(&mut store).await;
            let called = Instant::now();
            drop(store);
            let dropped = Instant::now();
            if let Err(e) = detected {
                return Err(PhaseError::Trap {
                    phase: name,
                    message: format!("{e:#}"),
                });
            }
            split.sandbox += built - start;
            split.store += stored - built;
            split.instantiate += instantiated - stored;
            split.call += called - instantiated;
            split.teardown += dropped - called;
        }
        let n = calls.max(1);
        Ok(DetectSplit {
            sandbox: split.sandbox / n,
            store: split.store / n,
            instantiate: split.instantiate / n,
            call: split.call / n,
            teardown: split.teardown / n,
        })
    }
}
