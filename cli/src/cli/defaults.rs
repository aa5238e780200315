//! The default buildpacks built into this binary: `build.rs` embeds what
//! `scripts/build-plugins` built (`target/buildpacks/<id>/`), in detection order. Only the
//! binary carries them, not the library its tests link.

include!(concat!(env!("OUT_DIR"), "/default_buildpacks.rs"));

/// Hands the pages of the embedded buildpacks back after they were copied out: they are
/// part of the binary's read-only mapping, and once read (18 MB for the Python buildpack)
/// they stayed in the agent's RSS for its whole life, though nothing reads them again.
#[allow(unsafe_code)] // one madvise, reasoned below
pub fn page_out() {
    let page = rustix::param::page_size();
    for buildpack in DEFAULT_BUILDPACKS {
        for (_, bytes) in buildpack.files {
            let start = bytes.as_ptr() as usize;
            let first = start.div_ceil(page) * page;
            let end = (start + bytes.len()) / page * page;
            if end <= first {
                continue;
            }
            // SAFETY: the whole-page range lies inside a `'static` slice of the binary's
            // read-only data, which nothing writes. MADV_PAGEOUT only asks the kernel to
            // reclaim the pages now; their contents stay what they are (read back from the
            // executable, which the kernel keeps from being written while it runs).
            let advised = unsafe {
                rustix::mm::madvise(
                    first as *mut std::ffi::c_void,
                    end - first,
                    rustix::mm::Advice::LinuxPageOut,
                )
            };
            if let Err(e) = advised {
                tracing::debug!("MADV_PAGEOUT of an embedded buildpack: {e}");
                return;
            }
        }
    }
}
