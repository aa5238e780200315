//! Running buildpacks that are WebAssembly components.
//!
//! One [`WasmRuntime`] per agent holds the wasmtime `Engine`, a `Linker` with WASI p2 and the
//! `dea:buildpack/host` imports, an epoch ticker thread, and one pre-instantiated component
//! per buildpack digest. Compiled code is cached on disk, keyed by the component's SHA-256
//! and the engine's compatibility hash, so a restart does not recompile.
//!
//! Every phase call gets a fresh `Store` and a deny-by-default WASI context (see
//! [`sandbox`]): the directories the phase may see, the app's environment, a memory limit, a
//! CPU-time budget counted in epoch ticks, an output budget, and a wall-clock timeout that
//! also covers time blocked in host calls.
//!
//! A detect should cost about a function call, so nothing around the call is redone per
//! call that can be done once: components are found in memory with one `stat` (`loading`),
//! the directories a guest sees are opened once per staging or per component and shared
//! (`mounts`), instance slots are pooled and reset by rewriting only the pages a guest
//! touched, a loaded component's detect runs on the calling thread, without hops to the
//! blocking pool, and a guest's `stat` of a plain name costs one `statx` (`stat`). What
//! remains is wasmtime's instantiation, the guest's call with its host calls, and the slot's
//! reset: about 4, 3.5 (4.5 when it matches) and 3 µs for a small Rust guest, as the staging
//! bench's split shows (`timing`).

pub mod compile;
mod error;
mod limiter;
mod loading;
mod mounts;
mod output;
mod preopens;
pub mod runner;
mod sandbox;
mod stat;
mod timing;

pub use error::{LoadError, StartError};
pub use mounts::{ReadOnlyDir, SandboxError, SharedApp};
pub use output::{LogOutput, OutputBudget, OutputExceeded};
pub use sandbox::{OpenedDirs, PhaseDirs, SandboxSpec};
pub use timing::DetectSplit;

use crate::config::WasmConfig;
use limiter::GrowRefused;
use parking_lot::Mutex;
use sandbox::SandboxState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// The contract's generated bindings, kept to themselves: the host speaks in the phase types
/// of [`crate::phase`], converted at this edge.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "dea:buildpack/buildpack",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "wasi": wasmtime_wasi::p2::bindings },
    });
}

use bindings::BuildpackPre;
use bindings::dea::buildpack::types as guest;

pub use crate::phase::{
    BuildpackFailure, Detection, FailureKind, Phase, PhaseError, PhaseOutput, ReleaseInfo,
};

/// Components kept loaded (compiled code mapped, an instance-pre each).
const LOADED_COMPONENTS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(64) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

/// Largest component file read (the Python guest is ~18 MB).
const MAX_COMPONENT_BYTES: u64 = 512 << 20;

/// How often the epoch advances; the unit of the CPU budget.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Interfaces a buildpack may import; anything else (such as `wasi:http`) is refused at load
/// time. `wasi:sockets` is linked because guest toolchains import it whether or not the
/// buildpack uses it (componentize-py's CPython does), but every phase's WASI context grants
/// no network: each socket call fails with `access-denied` and name lookup is off (see
/// [`sandbox`]), so the only way out is still the host's `fetch`. Public because `dea buildpack
/// check` (`dea-buildpack-tools`) holds a component to the same list before it is installed.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:sockets/",
    "dea:buildpack/",
];

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOrigin {
    /// Compiled with Cranelift now (and written to the on-disk cache).
    Compiled,
    /// Read back from the on-disk cache: no compilation, milliseconds even for an 18 MB
    /// Python component.
    DiskCache,
}

/// A loaded buildpack component, ready to instantiate.
pub struct LoadedComponent {
    pub digest: String,
    pub origin: CodeOrigin,
    pre: BuildpackPre<SandboxState>,
}

/// The engine, linker and caches shared by every wasm buildpack.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<SandboxState>,
    limits: WasmConfig,
    cache_dir: PathBuf,
    /// One permit per instance slot: phases beyond the pool wait instead of failing.
    slots: tokio::sync::Semaphore,
    /// Components by digest, most recently used kept: admin buildpacks arrive with staging
    /// requests, so without a bound each new one would stay in memory for good.
    loaded: Mutex<lru::LruCache<String, Arc<LoadedComponent>>>,
    /// Path → (size, mtime, component): skips re-reading and re-hashing an unchanged file.
    by_path: Mutex<lru::LruCache<PathBuf, loading::PathEntry>>,
    /// One lock per digest being compiled: a staging that needs a component the agent's
    /// preload is compiling waits for that compile instead of running a second one (the
    /// Python buildpack takes seconds of both cores).
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Components compiled with Cranelift (not read from a cache) since the runtime began.
    compilations: AtomicU64,
    /// Phases dropped before they ended: detects still running when an earlier buildpack
    /// in order matched, stagings stopped or timed out.
    abandoned: AtomicU64,
}

impl WasmRuntime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(limits: WasmConfig, cache_dir: PathBuf) -> Result<Arc<WasmRuntime>, LoadError> {
        // Every error a WASI call returns to a guest (a `stat` of a file that is not there:
        // most detects) is a `wasmtime::Error`, which captures a Rust backtrace of the host
        // when RUST_BACKTRACE is set: that doubled the cost of a detect that says no. The
        // agent never shows those backtraces (errors are reported by their messages, and a
        // guest's own wasm backtrace is a separate setting), so they are turned off.
        wasmtime::error::disable_backtrace();
        let engine = build_engine(&limits)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(LoadError::Engine)?;
        bindings::dea::buildpack::host::add_to_linker::<SandboxState, HasSelf<SandboxState>>(
            &mut linker,
            |state| state,
        )
        .map_err(LoadError::Engine)?;
        bindings::dea::buildpack::types::add_to_linker::<SandboxState, HasSelf<SandboxState>>(
            &mut linker,
            |state| state,
        )
        .map_err(LoadError::Engine)?;
        preopens::add_to_linker(&mut linker).map_err(LoadError::Engine)?;
        stat::add_to_linker(&mut linker).map_err(LoadError::Engine)?;
        std::fs::create_dir_all(&cache_dir).map_err(|source| LoadError::Cache {
            path: cache_dir.clone(),
            source,
        })?;

        // The ticker holds only a weak reference, so it ends when the engine does.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("dea-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(LoadError::Ticker)?;

        let slots = limits.max_concurrent_phases.max(1) as usize;
        Ok(Arc::new(WasmRuntime {
            slots: tokio::sync::Semaphore::new(slots),
            engine,
            linker,
            limits,
            cache_dir,
            loaded: Mutex::new(lru::LruCache::new(LOADED_COMPONENTS)),
            by_path: Mutex::new(lru::LruCache::new(LOADED_COMPONENTS)),
            compiling: Mutex::new(HashMap::new()),
            compilations: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }))
    }

    pub fn limits(&self) -> &WasmConfig {
        &self.limits
    }

    /// How many components this runtime compiled with Cranelift (rather than found loaded
    /// or read from the on-disk cache).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// How many phases were dropped before they ended (see [`WasmRuntime::run`]).
    pub fn abandoned_phases(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Runs one phase of `component` in a fresh sandbox.
    pub async fn run(
        &self,
        component: &LoadedComponent,
        phase: Phase,
        spec: SandboxSpec,
    ) -> Result<PhaseOutput, PhaseError> {
        self.run_opened(component, phase, spec, OpenedDirs::default())
            .await
    }

    /// [`Self::run`], mounting directories opened beforehand (see [`OpenedDirs`]) where
    /// the phase mounts read-only.
    pub async fn run_opened(
        &self,
        component: &LoadedComponent,
        phase: Phase,
        spec: SandboxSpec,
        opened: OpenedDirs,
    ) -> Result<PhaseOutput, PhaseError> {
        let phase_name = phase.name();
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| start_error(phase_name, StartError::Slots(e)))?;
        let (cpu_limit, wall_limit) = match phase {
            Phase::Detect => (
                Duration::from_millis(self.limits.detect_cpu_ms),
                self.limits.detect_timeout(),
            ),
            Phase::Compile | Phase::Release => (
                Duration::from_secs(self.limits.compile_cpu_secs),
                self.limits.compile_timeout(),
            ),
        };
        let budget = OutputBudget::new(self.limits.output_limit_bytes);
        let mut store = self
            .sandbox_store(phase, spec, opened, budget.clone(), cpu_limit)
            .map_err(|e| start_error(phase_name, StartError::Sandbox(e)))?;

        let unfinished = Unfinished {
            abandoned: &self.abandoned,
            phase: phase_name,
        };
        let outcome =
            tokio::time::timeout(wall_limit, call_phase(&component.pre, &mut store, phase)).await;
        unfinished.finished();
        let state = store.data();
        let stopped = Stopped {
            cpu: state.cpu_exceeded,
            output: budget.exceeded(),
            growth: state.limits.refused(),
        };
        match outcome {
            Err(_) => Err(PhaseError::Timeout {
                phase: phase_name,
                limit: wall_limit,
            }),
            Ok(Ok(Ok(output))) => Ok(output),
            Ok(Ok(Err(error))) => Err(PhaseError::Buildpack(failure(phase_name, error))),
            Ok(Err(CallError::Instantiate(e))) => {
                Err(start_error(phase_name, StartError::Instantiate(e)))
            }
            Ok(Err(CallError::Trap(e))) => Err(classify_trap(
                phase_name,
                &e,
                stopped,
                &self.limits,
                cpu_limit,
            )),
        }
    }

    /// A phase's store: its sandbox, ready to instantiate in.
    fn sandbox_store(
        &self,
        phase: Phase,
        spec: SandboxSpec,
        opened: OpenedDirs,
        budget: Arc<OutputBudget>,
        cpu_limit: Duration,
    ) -> Result<Store<SandboxState>, SandboxError> {
        let state = SandboxState::new(phase, spec, opened, &self.limits, budget, cpu_limit)?;
        Ok(self.store_for(state))
    }

    /// The store around a phase's sandbox: its memory limiter and CPU budget.
    fn store_for(&self, state: SandboxState) -> Store<SandboxState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.cpu_ticks += 1;
            if state.cpu_ticks > state.cpu_tick_limit {
                state.cpu_exceeded = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yield at every tick so a busy guest cannot starve other tasks, and so the
            // phase's wall-clock timeout can cancel it.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }
}

/// Counts a phase whose future was dropped before the call ended. Dropping it drops the
/// store, which ends the guest and frees its instance slot: nothing of the phase stays.
struct Unfinished<'a> {
    abandoned: &'a AtomicU64,
    phase: &'static str,
}

impl Unfinished<'_> {
    fn finished(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(phase = self.phase, "phase abandoned before it ended");
    }
}

/// The engine: epochs for CPU limits, Cranelift, and (if allowed) a pooling allocator
/// sized to the configured concurrency.
fn build_engine(limits: &WasmConfig) -> Result<Engine, LoadError> {
    let base = || {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Guests are WASI p2 components with synchronous exports; none uses the component
        // model's async ABI. Without concurrency support a store skips the concurrent
        // state, and a call runs on one fiber that ends with it (with it, every store kept a
        // worker fiber that its drop had to unwind with an error: ~15% of a detect call).
        config.concurrency_support(false);
        config
    };
    if limits.pooling {
        let slots = limits.max_concurrent_phases.max(1);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // A Rust component is a handful of core instances and tables and one memory.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 16)
            .total_memories(slots * 2)
            .total_tables(slots * 16)
            .total_stacks(slots)
            .max_memories_per_component(2)
            .max_memory_size((limits.memory_limit_mb << 20) as usize)
            .max_unused_warm_slots(slots)
            // Reset a reused slot's pages by writing them rather than with madvise: each
            // madvise makes the kernel flush every core's TLB, which made concurrent
            // detects slower than sequential ones.
            .linear_memory_keep_resident(512 << 10)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10)
            // ...and only the pages the guest touched (found with the PAGEMAP_SCAN ioctl,
            // Linux 6.7+; `Auto` falls back where it is missing). Without it every reset
            // zeroed the whole kept region: a Rust guest's 320 KiB when it touched five
            // pages, a sixth of a detect call.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .decommit_batch_size(slots as usize);
        let mut config = base();
        // Map each component's initial memory as a copy-on-write image. A slot keeps the
        // image of the component that used it last (the pool's module affinity), so reusing
        // it maps nothing, and a reset restores only the pages the guest wrote. Copying the
        // data segments instead cost the Python buildpack 5 ms per instantiation (its
        // pre-initialised interpreter is megabytes of data): 6.5 ms per detect, against
        // 0.9 ms with the image. A small Rust guest costs the same either way.
        config.memory_init_cow(true);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => return Ok(engine),
            Err(e) => tracing::warn!("instance pool unavailable, allocating on demand: {e:#}"),
        }
    }
    Engine::new(&base()).map_err(LoadError::Engine)
}

/// `phase` could not start because of `error`.
pub(crate) fn start_error(phase: &'static str, error: StartError) -> PhaseError {
    PhaseError::Start {
        phase,
        source: Arc::new(error),
    }
}

enum CallError {
    Instantiate(wasmtime::Error),
    Trap(wasmtime::Error),
}

async fn call_phase(
    pre: &BuildpackPre<SandboxState>,
    store: &mut Store<SandboxState>,
    phase: Phase,
) -> Result<Result<PhaseOutput, guest::Error>, CallError> {
    let bindings = pre
        .instantiate_async(&mut *store)
        .await
        .map_err(CallError::Instantiate)?;
    let result = match phase {
        Phase::Detect => bindings.call_detect(&mut *store).await.map(|r| {
            r.map(|found| {
                PhaseOutput::Detect(found.map(|d| Detection {
                    name: d.name,
                    version: d.version,
                }))
            })
        }),
        Phase::Compile => bindings
            .call_compile(&mut *store)
            .await
            .map(|r| r.map(|()| PhaseOutput::Compile)),
        Phase::Release => bindings.call_release(&mut *store).await.map(|r| {
            r.map(|release| {
                PhaseOutput::Release(ReleaseInfo {
                    process_types: release.process_types,
                    config_vars: release.config_vars,
                    addons: release.addons,
                })
            })
        }),
    };
    result.map_err(CallError::Trap)
}

/// A guest's own error, in the contract's terms.
fn failure(phase: &'static str, error: guest::Error) -> BuildpackFailure {
    let (kind, message) = match error {
        guest::Error::Unsupported(m) => (FailureKind::Unsupported, m),
        guest::Error::Failed(m) => (FailureKind::Failed, m),
        guest::Error::Io(m) => (FailureKind::Io, m),
        guest::Error::Denied(m) => (FailureKind::Denied, m),
    };
    BuildpackFailure {
        phase,
        kind,
        message,
    }
}

/// The limits the host enforced during a phase, each recorded by the code that enforced it
/// (the epoch callback, the output budget, the store's limiter) at the moment it did.
#[derive(Debug, Clone, Copy, Default)]
struct Stopped {
    cpu: bool,
    output: bool,
    growth: Option<GrowRefused>,
}

/// Turns a trap into the limit or fault that caused it. The host's own records decide, and
/// then the error's type (wasmtime's trap code, a WASI exit); its text is only ever
/// reported, never matched.
fn classify_trap(
    phase: &'static str,
    error: &wasmtime::Error,
    stopped: Stopped,
    limits: &WasmConfig,
    cpu_limit: Duration,
) -> PhaseError {
    let trap = error.downcast_ref::<Trap>().copied();
    // Only the epoch callback interrupts a phase's store, and only once the CPU budget is
    // spent: the trap code and the callback's record say the same thing.
    if stopped.cpu || trap == Some(Trap::Interrupt) {
        return PhaseError::CpuLimit {
            phase,
            limit: cpu_limit,
        };
    }
    if stopped.output {
        return PhaseError::OutputLimit {
            phase,
            limit: limits.output_limit_bytes,
        };
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return PhaseError::Exit {
            phase,
            status: exit.0,
        };
    }
    // A refused table growth is a fault like any other trap: the phase has no table limit of
    // its own to report.
    if let Some(GrowRefused::Memory { .. }) = stopped.growth {
        return PhaseError::MemoryLimit {
            phase,
            limit_mb: limits.memory_limit_mb,
        };
    }
    PhaseError::Trap {
        phase,
        message: match trap {
            Some(trap) => trap.to_string(),
            None => fault_text(error),
        },
    }
}

/// What a fault that is not a wasm trap says (a host call's error that ended the guest):
/// its causes on one line, without the wasm backtrace wasmtime wraps around it (that is for
/// developers, not the staging log, and its first line alone says nothing).
fn fault_text(error: &wasmtime::Error) -> String {
    let backtrace = usize::from(error.downcast_ref::<wasmtime::WasmBacktrace>().is_some());
    let mut text = String::new();
    for cause in error.chain().skip(backtrace) {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    match text.lines().next() {
        Some(first) if !first.is_empty() => first.to_string(),
        _ => "unknown trap".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter::PhaseLimiter;
    use wasmtime::{Instance, Module};

    /// Runs `body` (a function returning nothing) in a core module with a one-page memory and
    /// a one-element table bounded at two, under a limiter of four pages; returns the trap and
    /// what the limiter recorded.
    fn trap_of(body: &str) -> (wasmtime::Error, Stopped) {
        let engine = Engine::default();
        let wat = format!("(module (memory 1) (table 1 2 funcref) (func (export \"run\") {body}))");
        let module = Module::new(&engine, wat).expect("test module");
        let mut store = Store::new(&engine, PhaseLimiter::new(4 << 16));
        store.limiter(|limiter| limiter);
        let instance = Instance::new(&mut store, &module, &[]).expect("instance");
        let run = instance
            .get_typed_func::<(), ()>(&mut store, "run")
            .expect("run");
        let error = run.call(&mut store, ()).expect_err("a trap");
        let stopped = Stopped {
            growth: store.data().refused(),
            ..Stopped::default()
        };
        (error, stopped)
    }

    fn classify(error: &wasmtime::Error, stopped: Stopped) -> PhaseError {
        let limits = WasmConfig {
            memory_limit_mb: 64,
            output_limit_bytes: 1000,
            ..WasmConfig::default()
        };
        classify_trap("compile", error, stopped, &limits, Duration::from_secs(7))
    }

    #[test]
    fn a_refused_memory_growth_is_the_memory_limit() {
        let (error, stopped) = trap_of("(drop (memory.grow (i32.const 100)))");
        assert!(
            matches!(
                classify(&error, stopped),
                PhaseError::MemoryLimit {
                    phase: "compile",
                    limit_mb: 64
                }
            ),
            "{error:#}"
        );
    }

    #[test]
    fn a_refused_table_growth_and_other_traps_are_faults() {
        let (error, stopped) = trap_of("(drop (table.grow (ref.null func) (i32.const 5)))");
        assert!(stopped.growth.is_some());
        let PhaseError::Trap { message, .. } = classify(&error, stopped) else {
            panic!("{error:#}");
        };
        // The refusal's words, not the backtrace wasmtime wrapped around them.
        assert_eq!(message, "forcing trap when growing table to 6 elements");

        let (error, stopped) = trap_of("unreachable");
        assert!(stopped.growth.is_none());
        assert_eq!(
            error.downcast_ref::<Trap>(),
            Some(&Trap::UnreachableCodeReached)
        );
        let PhaseError::Trap { message, .. } = classify(&error, stopped) else {
            panic!("{error:#}");
        };
        assert_eq!(message, Trap::UnreachableCodeReached.to_string());
        assert!(message.contains("unreachable"), "{message}");

        let (error, stopped) = trap_of("(drop (i32.div_u (i32.const 1) (i32.const 0)))");
        let PhaseError::Trap { message, .. } = classify(&error, stopped) else {
            panic!("{error:#}");
        };
        assert_eq!(message, Trap::IntegerDivisionByZero.to_string());
    }

    #[test]
    fn an_interrupt_is_the_cpu_limit() {
        let interrupt = wasmtime::Error::new(Trap::Interrupt);
        assert!(matches!(
            classify(&interrupt, Stopped::default()),
            PhaseError::CpuLimit { limit, .. } if limit == Duration::from_secs(7)
        ));
    }

    #[test]
    fn a_host_fault_is_reported_with_its_causes_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed");
        let error = wasmtime::Error::new(io).context("writing the staging log");
        let PhaseError::Trap { message, .. } = classify(&error, Stopped::default()) else {
            panic!("{error:#}");
        };
        assert_eq!(message, "writing the staging log: pipe closed");
    }

    #[test]
    fn the_text_of_a_trap_decides_nothing() {
        // The words wasmtime's `StoreLimits` used, raised by something else: a fault.
        let error = wasmtime::format_err!("forcing trap when growing memory to 1 bytes");
        let PhaseError::Trap { message, .. } = classify(&error, Stopped::default()) else {
            panic!("classified by its text");
        };
        assert_eq!(message, "forcing trap when growing memory to 1 bytes");
    }

    #[test]
    fn the_host_s_records_come_before_the_error() {
        let exit = wasmtime::Error::new(wasmtime_wasi::I32Exit(3));
        assert!(matches!(
            classify(&exit, Stopped::default()),
            PhaseError::Exit { status: 3, .. }
        ));
        let all = Stopped {
            cpu: true,
            output: true,
            growth: Some(GrowRefused::Memory { desired: 1 << 30 }),
        };
        assert!(matches!(
            classify(&exit, all),
            PhaseError::CpuLimit { limit, .. } if limit == Duration::from_secs(7)
        ));
        let output = Stopped { cpu: false, ..all };
        assert!(matches!(
            classify(&exit, output),
            PhaseError::OutputLimit { limit: 1000, .. }
        ));
    }
}
