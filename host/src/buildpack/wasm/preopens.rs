//! `wasi:filesystem/preopens` answered from each phase's own mounts ([`super::mounts`]), in
//! place of the `WasiCtx`'s, which holds no directory at all.

use super::sandbox::SandboxState;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;

/// A phase's mounts as the guest's `wasi:filesystem/preopens` sees them.
pub(super) struct Preopens<'a> {
    mounts: &'a [(Dir, &'static str)],
    table: &'a mut ResourceTable,
}

impl preopens::Host for Preopens<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let mut dirs = Vec::with_capacity(self.mounts.len());
        for (dir, guest) in self.mounts {
            let descriptor = self.table.push(Descriptor::Dir(dir.clone()))?;
            dirs.push((descriptor, (*guest).to_string()));
        }
        Ok(dirs)
    }
}

struct HasPreopens;

impl HasData for HasPreopens {
    type Data<'a> = Preopens<'a>;
}

/// Answers `wasi:filesystem/preopens` from each phase's own mounts, in place of the
/// `WasiCtx`'s (which is left empty). Call after the WASI interfaces are added.
pub(super) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = preopens::add_to_linker::<SandboxState, HasPreopens>(linker, |state| {
        let (mounts, table) = state.mounts_and_table();
        Preopens { mounts, table }
    });
    linker.allow_shadowing(false);
    added
}
