//! Loading buildpack components: from memory, from the on-disk cache of compiled code, or
//! compiled with Cranelift now.
//!
//! A detect of a loaded component must not pay for finding it: [`WasmRuntime::loaded_in`]
//! answers with one `stat` and keeps the buildpack's directory open beside the component.
//! Compiling is what can stall a staging (seconds for the 18 MB Python buildpack), so it
//! happens once per digest however many callers want it at the same moment (the agent's
//! preload and a staging, or two stagings), and callers that only want a component if it is
//! cheap to have ([`WasmRuntime::load_without_compiling`]) never start one.

use super::{
    ALLOWED_IMPORTS, BuildpackPre, CodeOrigin, LoadError, LoadedComponent, MAX_COMPONENT_BYTES,
    ReadOnlyDir, WasmRuntime,
};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wasmtime::Engine;
use wasmtime::component::Component;

/// A component file as it was when loaded, what it loaded to, and (once a phase asked for
/// it) its buildpack's directory opened for read-only mounts.
pub(super) struct PathEntry {
    stamp: FileStamp,
    loaded: Arc<LoadedComponent>,
    buildpack: Option<ReadOnlyDir>,
}

/// What tells a component file's contents apart without reading them: a file replaced by
/// another (a buildpack directory renamed over the old one, even unpacked from an archive
/// that kept the mtime and happens to have the same size) is another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: std::time::SystemTime,
}

impl WasmRuntime {
    /// The component at `path` if it is loaded and the file has not changed since: one
    /// `stat`, no read, nothing that needs the blocking pool. `None` means [`Self::load`].
    pub fn loaded(&self, path: &Path) -> Option<Arc<LoadedComponent>> {
        let stamp = file_stamp(path).ok()?;
        match self.by_path.lock().get(path) {
            Some(entry) if entry.stamp == stamp => Some(entry.loaded.clone()),
            _ => None,
        }
    }

    /// [`Self::loaded`], with the directory of the buildpack the component belongs to
    /// opened for read-only mounts. The handle is kept with the component and shares its
    /// check: while the component file is the same inode, its directory is the same one
    /// (a buildpack is replaced by renaming a new directory over it), so a detect neither
    /// opens nor closes it. The directory is `None` if it cannot be opened (the phase then
    /// opens it by path and reports why it cannot).
    pub fn loaded_in(
        &self,
        path: &Path,
        buildpack: &Path,
    ) -> Option<(Arc<LoadedComponent>, Option<ReadOnlyDir>)> {
        let stamp = file_stamp(path).ok()?;
        let mut by_path = self.by_path.lock();
        let entry = by_path.get_mut(path).filter(|entry| entry.stamp == stamp)?;
        let dir = match &entry.buildpack {
            Some(dir) if dir.opened_from(buildpack) => Some(dir.clone()),
            _ => {
                // A syscall under the lock, but an `open` of a directory the agent chose,
                // once per component file.
                entry.buildpack = ReadOnlyDir::open(buildpack).ok();
                entry.buildpack.clone()
            }
        };
        Some((entry.loaded.clone(), dir))
    }

    /// Loads the component at `path`: from memory if this digest was seen, else from the
    /// on-disk compiled cache, else compiled now (and cached). Blocking; one compile per
    /// digest at a time, however many callers want it.
    pub fn load(&self, path: &Path) -> Result<Arc<LoadedComponent>, LoadError> {
        self.load_as(path, true)?
            .ok_or_else(|| LoadError::NotCompiled {
                path: path.to_path_buf(),
            })
    }

    /// [`Self::load`] if that needs no compiling (the component is loaded, or its compiled
    /// code is in the disk cache, or another caller is compiling it right now: then this
    /// waits for that compile); `None` if it would have to be compiled. Blocking (it reads
    /// and hashes the file).
    pub fn load_without_compiling(
        &self,
        path: &Path,
    ) -> Result<Option<Arc<LoadedComponent>>, LoadError> {
        self.load_as(path, false)
    }

    /// Compiles the component `bytes` into the on-disk cache (unless it is there already)
    /// and checks what it imports, without keeping it loaded: what `dea buildpacks add`
    /// does, so that the agent's first staging with the buildpack reads compiled code
    /// instead of compiling. `label` names the component in errors.
    pub fn precompile(&self, bytes: &[u8], label: &Path) -> Result<CodeOrigin, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        self.single_flight(&digest, || {
            let (component, origin) = self
                .compile_cached(label, bytes, &digest, true)?
                .ok_or_else(|| LoadError::NotCompiled {
                    path: label.to_path_buf(),
                })?;
            self.check_imports(label, &component)?;
            Ok(origin)
        })
    }

    fn load_as(
        &self,
        path: &Path,
        compile: bool,
    ) -> Result<Option<Arc<LoadedComponent>>, LoadError> {
        let stamp = file_stamp(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(entry) = self.by_path.lock().get(path)
            && entry.stamp == stamp
        {
            return Ok(Some(entry.loaded.clone()));
        }
        let Some(loaded) = self.load_uncached(path, compile)? else {
            return Ok(None);
        };
        self.by_path.lock().put(
            path.to_path_buf(),
            PathEntry {
                stamp,
                loaded: loaded.clone(),
                buildpack: None,
            },
        );
        Ok(Some(loaded))
    }

    fn load_uncached(
        &self,
        path: &Path,
        compile: bool,
    ) -> Result<Option<Arc<LoadedComponent>>, LoadError> {
        // A component may come from an admin buildpack archive: read it as a tenant's file
        // (a regular file, no link out of its directory, capped).
        let owned = || path.to_path_buf();
        let (dir, name) = match (path.parent(), path.file_name()) {
            // A bare file name (`dea buildpack check buildpack.wasm`) is in the current dir.
            (Some(dir), Some(name)) if dir.as_os_str().is_empty() => (Path::new("."), name),
            (Some(dir), Some(name)) => (dir, name),
            _ => return Err(LoadError::NotAFile { path: owned() }),
        };
        let bytes = crate::tenant_fs::TenantDir::open(dir)
            .and_then(|dir| {
                dir.read(
                    Path::new(name),
                    crate::tenant_fs::Links::Beneath,
                    MAX_COMPONENT_BYTES,
                )
            })
            .map_err(|source| LoadError::Tenant {
                path: owned(),
                source,
            })?
            .ok_or_else(|| LoadError::Missing { path: owned() })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if let Some(loaded) = self.loaded.lock().get(&digest) {
            return Ok(Some(loaded.clone()));
        }
        self.single_flight(&digest, || {
            // Looked up apart from the `match`, whose scrutinee would hold the lock that
            // `load_digest` takes.
            let done = self.loaded.lock().get(&digest).cloned();
            match done {
                Some(loaded) => Ok(Some(loaded)),
                None => self.load_digest(path, &bytes, digest.clone(), compile),
            }
        })
    }

    /// Runs `work` holding `digest`'s lock: whoever takes it first compiles, the others
    /// wait for that, then find the component loaded (or its code in the disk cache).
    fn single_flight<T>(&self, digest: &str, work: impl FnOnce() -> T) -> T {
        let flight = self
            .compiling
            .lock()
            .entry(digest.to_string())
            .or_default()
            .clone();
        let result = {
            let _turn = flight.lock();
            work()
        };
        let mut compiling = self.compiling.lock();
        if compiling
            .get(digest)
            .is_some_and(|entry| Arc::ptr_eq(entry, &flight))
        {
            compiling.remove(digest);
        }
        result
    }

    /// Compiles (or reads from the disk cache) and pre-instantiates the component `bytes`,
    /// then keeps it loaded. The caller holds the digest's single-flight lock. `None`: it
    /// is not in the disk cache and `compile` is off.
    fn load_digest(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: String,
        compile: bool,
    ) -> Result<Option<Arc<LoadedComponent>>, LoadError> {
        let owned = || path.to_path_buf();
        let Some((component, origin)) = self.compile_cached(path, bytes, &digest, compile)? else {
            return Ok(None);
        };
        self.check_imports(path, &component)?;
        let invalid = |source| LoadError::Invalid {
            path: owned(),
            source,
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = BuildpackPre::new(instance_pre).map_err(invalid)?;
        tracing::debug!(path = %path.display(), ?origin, "loaded buildpack component");
        let loaded = Arc::new(LoadedComponent {
            digest: digest.clone(),
            origin,
            pre,
        });
        self.loaded.lock().put(digest, loaded.clone());
        Ok(Some(loaded))
    }

    /// The compiled code of `bytes`: from the disk cache, else (if `compile`) compiled now
    /// and written there.
    fn compile_cached(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &str,
        compile: bool,
    ) -> Result<Option<(Component, CodeOrigin)>, LoadError> {
        let cached = self.cache_path(digest);
        if cached.exists() {
            match deserialize_trusted(&self.engine, &cached) {
                Ok(component) => return Ok(Some((component, CodeOrigin::DiskCache))),
                Err(e) => {
                    tracing::warn!(path = %cached.display(), "discarding compiled cache entry: {e:#}")
                }
            }
        }
        if !compile {
            return Ok(None);
        }
        let invalid = |source| LoadError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        let started = std::time::Instant::now();
        super::compile::compile_to(&self.limits, bytes, path, &cached)?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            path = %path.display(),
            elapsed = ?started.elapsed(),
            "compiled buildpack component"
        );
        // Read back from the file: the code is then mapped pages the kernel can drop, not
        // a copy on the heap.
        let component = deserialize_trusted(&self.engine, &cached).map_err(invalid)?;
        Ok(Some((component, CodeOrigin::Compiled)))
    }

    /// Where the compiled code of a digest is cached: keyed by the engine's compatibility
    /// hash too, so code from another engine configuration or version is never read.
    fn cache_path(&self, digest: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.cache_dir
            .join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
    }

    fn check_imports(&self, path: &Path, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !ALLOWED_IMPORTS
                .iter()
                .any(|prefix| name.starts_with(prefix))
            {
                return Err(LoadError::ForbiddenImport {
                    path: path.to_path_buf(),
                    import: name.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The stamp of a component file: whether it changed since it was loaded.
fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: meta.modified()?,
    })
}

/// Loads compiled code this host wrote itself.
#[allow(unsafe_code)]
fn deserialize_trusted(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is one this runtime produced with `precompile_component` for an
    // engine with the same compatibility hash (it is in the file name), written atomically
    // into the host's own cache directory. Untrusted bytes are never deserialized.
    unsafe { Component::deserialize_file(engine, path) }
}
