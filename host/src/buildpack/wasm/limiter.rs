//! A phase's memory and table limits, and a record of what they refused.
//!
//! The policy is the one wasmtime's `StoreLimits` applied with `trap_on_grow_failure`: a
//! growth past the phase's memory limit (or past the memory's or table's own maximum) traps
//! the guest instead of returning -1, so a buildpack that runs out of memory stops there
//! rather than limping on. What this adds is the record: when the phase then fails, the host
//! knows it hit the memory limit because the limiter says so, not because a trap's text
//! happens to contain a phrase.

use wasmtime::ResourceLimiter;

/// Core instances, tables and memories a phase may create. A Rust component is a handful of
/// each; CPython under componentize-py is more, still far below these.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// A growth the limiter refused. Its text is the trap's message, the same words wasmtime's
/// own `StoreLimits` uses, so a trap reported as a fault reads as it always did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum GrowRefused {
    #[error("forcing trap when growing memory to {desired} bytes")]
    Memory { desired: usize },
    #[error("forcing trap when growing table to {desired} elements")]
    Table { desired: usize },
}

/// The store's [`ResourceLimiter`] for one phase.
#[derive(Debug)]
pub(super) struct PhaseLimiter {
    memory_bytes: usize,
    /// The first growth refused (the one that trapped; the guest runs no further).
    refused: Option<GrowRefused>,
}

impl PhaseLimiter {
    pub(super) fn new(memory_bytes: usize) -> PhaseLimiter {
        PhaseLimiter {
            memory_bytes,
            refused: None,
        }
    }

    /// The growth refused in this store, if any.
    pub(super) fn refused(&self) -> Option<GrowRefused> {
        self.refused
    }

    fn refuse(&mut self, refused: GrowRefused) -> wasmtime::Result<bool> {
        self.refused.get_or_insert(refused);
        Err(wasmtime::Error::new(refused))
    }
}

impl ResourceLimiter for PhaseLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A memory's own maximum counts as the limit too (as it did with `StoreLimits`): the
        // guest asked for more memory than it may have either way.
        if desired > self.memory_bytes || maximum.is_some_and(|max| desired > max) {
            return self.refuse(GrowRefused::Memory { desired });
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Permitted, and then the host could not provide it (mmap failed): a fault of the
        // host's, not the guest's limit, so it is not recorded; it still traps.
        Err(error.context("forcing a memory growth failure to be a trap"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables have no cap of the phase's own: their elements are bounded by the number
        // of tables and by the memory limit of whatever fills them.
        if maximum.is_some_and(|max| desired > max) {
            return self.refuse(GrowRefused::Table { desired });
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("forcing a table growth failure to be a trap"))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Module, Store};

    /// A module with one memory of one page (and a maximum of `max_pages`, when given) that
    /// grows it by `pages` and returns what `memory.grow` said.
    fn grow_module(engine: &Engine, max_pages: Option<u32>) -> Module {
        let max = max_pages.map(|m| format!(" {m}")).unwrap_or_default();
        let wat = format!(
            r#"(module
                 (memory 1{max})
                 (table 1 funcref)
                 (func (export "grow") (param i32) (result i32)
                   (memory.grow (local.get 0)))
                 (func (export "grow_table") (param i32) (result i32)
                   (table.grow (ref.null func) (local.get 0))))"#
        );
        Module::new(engine, wat).expect("test module")
    }

    fn store(engine: &Engine, memory_bytes: usize) -> Store<PhaseLimiter> {
        let mut store = Store::new(engine, PhaseLimiter::new(memory_bytes));
        store.limiter(|limiter| limiter);
        store
    }

    fn call(
        store: &mut Store<PhaseLimiter>,
        module: &Module,
        name: &str,
        n: i32,
    ) -> wasmtime::Result<i32> {
        let instance = Instance::new(&mut *store, module, &[])?;
        let func = instance.get_typed_func::<i32, i32>(&mut *store, name)?;
        func.call(&mut *store, n)
    }

    #[test]
    fn growth_within_the_limit_is_allowed_and_not_recorded() {
        let engine = Engine::default();
        let module = grow_module(&engine, None);
        let mut store = store(&engine, 4 << 16);
        // From one page to four: exactly the limit.
        assert_eq!(call(&mut store, &module, "grow", 3).expect("grow"), 1);
        assert_eq!(store.data().refused(), None);
    }

    #[test]
    fn growth_past_the_limit_traps_and_is_recorded() {
        let engine = Engine::default();
        let module = grow_module(&engine, None);
        let mut store = store(&engine, 4 << 16);
        let error = call(&mut store, &module, "grow", 4).expect_err("past the limit");
        let refused = GrowRefused::Memory { desired: 5 << 16 };
        assert_eq!(store.data().refused(), Some(refused));
        // The trap carries the refusal itself, not only its words.
        assert_eq!(error.downcast_ref::<GrowRefused>(), Some(&refused));
        // In the words wasmtime's `StoreLimits` used.
        assert_eq!(
            refused.to_string(),
            "forcing trap when growing memory to 327680 bytes"
        );
    }

    #[test]
    fn growth_past_the_memory_maximum_counts_as_the_limit() {
        let engine = Engine::default();
        let module = grow_module(&engine, Some(2));
        let mut store = store(&engine, 64 << 16);
        call(&mut store, &module, "grow", 2).expect_err("past the maximum");
        assert_eq!(
            store.data().refused(),
            Some(GrowRefused::Memory { desired: 3 << 16 })
        );
    }

    #[test]
    fn a_memory_too_large_to_create_is_refused_at_instantiation() {
        let engine = Engine::default();
        let module = Module::new(&engine, "(module (memory 8))").expect("module");
        let mut store = store(&engine, 4 << 16);
        Instance::new(&mut store, &module, &[]).expect_err("eight pages over a four-page limit");
        assert_eq!(
            store.data().refused(),
            Some(GrowRefused::Memory { desired: 8 << 16 })
        );
    }

    #[test]
    fn table_growth_is_refused_only_past_its_maximum() {
        let engine = Engine::default();
        let module = grow_module(&engine, None);
        let mut store = store(&engine, 4 << 16);
        assert_eq!(
            call(&mut store, &module, "grow_table", 10).expect("grow"),
            1
        );
        assert_eq!(store.data().refused(), None);

        let bounded = Module::new(
            &engine,
            r#"(module (table 1 2 funcref)
                 (func (export "grow_table") (param i32) (result i32)
                   (table.grow (ref.null func) (local.get 0))))"#,
        )
        .expect("module");
        let error = call(&mut store, &bounded, "grow_table", 5).expect_err("past the maximum");
        let refused = GrowRefused::Table { desired: 6 };
        assert_eq!(store.data().refused(), Some(refused));
        assert_eq!(error.downcast_ref::<GrowRefused>(), Some(&refused));
        assert_eq!(
            refused.to_string(),
            "forcing trap when growing table to 6 elements"
        );
    }
}
