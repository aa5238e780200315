//! Write `dea` buildpacks in Rust.
//!
//! A buildpack is a WebAssembly component that implements the `dea:buildpack` world (see
//! `wit/buildpack.wit`). With this crate you implement the [`Buildpack`] trait, call
//! [`export_buildpack!`] once, and build with `cargo build --target wasm32-wasip2`.
//!
//! Inside a phase the application is at [`APP_DIR`] (`/app`), the cache at [`CACHE_DIR`], the
//! buildpack's own files (its `buildpack.toml`, templates, ...) at [`BUILDPACK_DIR`], and scratch
//! space at [`TMP_DIR`]. Plain `std::fs` works on those paths; nothing else is visible.
//!
//! # A complete buildpack
//!
//! ```no_run
//! use dea_sdk::{log, profile_d, Buildpack, Context, Detection, Error, Release};
//!
//! struct Hello;
//!
//! impl Buildpack for Hello {
//!     fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
//!         // Claim apps that carry a `hello.txt`.
//!         Ok(ctx.app_has("hello.txt").then(|| Detection::named("Hello")))
//!     }
//!
//!     fn compile(ctx: &Context) -> Result<(), Error> {
//!         log::step("Installing hello");
//!         // Download and unpack a tool through the host; the platform may serve it from a
//!         // mirror or its cache, and checks the pinned sha256 first.
//!         ctx.fetch_and_unpack(
//!             "https://example.com/hello-1.0.tgz",
//!             Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
//!             "/app/.hello",
//!             1,
//!         )?;
//!         std::fs::write("/app/hello.sh", "#!/bin/sh\nexec hello \"$@\"\n")?;
//!         dea_sdk::make_executable("/app/hello.sh")?;
//!         profile_d::write("hello", "export PATH=\"$HOME/.hello/bin:$PATH\"\n")?;
//!         log::detail("done");
//!         Ok(())
//!     }
//!
//!     fn release(_ctx: &Context) -> Result<Release, Error> {
//!         Ok(Release::web("hello --port $PORT"))
//!     }
//! }
//!
//! dea_sdk::export_buildpack!(Hello);
//! ```

pub mod log;
pub mod manifest;
pub mod procfile;
pub mod profile_d;

use std::path::{Path, PathBuf};

/// Generated bindings for the `dea:buildpack` world. Buildpack authors rarely need these
/// directly; [`Buildpack`] and the helpers wrap them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "dea:buildpack/buildpack",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_dea_buildpack",
        default_bindings_module: "dea_sdk::bindings",
    });
}

pub use bindings::dea::buildpack::host::{FetchError, FetchResult};
pub use bindings::dea::buildpack::types::{Detection, Error, ReleaseInfo as Release};
pub use manifest::Manifest;

/// Where the application is mounted in every phase.
pub const APP_DIR: &str = "/app";
/// Kept between stagings of the same application; compile only.
pub const CACHE_DIR: &str = "/cache";
/// The buildpack's own directory (read-only): `buildpack.toml` and any bundled files.
pub const BUILDPACK_DIR: &str = "/buildpack";
/// Scratch space, emptied after the phase; compile only.
pub const TMP_DIR: &str = "/tmp";

/// What a buildpack implements. Each function runs in its own sandbox, so keep no state
/// between them: anything compile wants release to know must be written under `/app`.
pub trait Buildpack {
    /// Return `Some` if this buildpack can build the app in `/app`. Must not write anything.
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error>;
    /// Build the app in place. stdout/stderr and [`log`] lines go to the staging log.
    fn compile(ctx: &Context) -> Result<(), Error>;
    /// Say how to run the built app.
    fn release(ctx: &Context) -> Result<Release, Error>;
}

/// The phase's view of the world: fixed paths, the app's environment, the host's services.
#[derive(Debug, Clone, Default)]
pub struct Context {
    _private: (),
}

impl Context {
    /// The context of the current phase.
    pub fn current() -> Self {
        Context { _private: () }
    }

    /// The application directory.
    pub fn app_dir(&self) -> &Path {
        Path::new(APP_DIR)
    }

    /// The cache directory (compile only).
    pub fn cache_dir(&self) -> &Path {
        Path::new(CACHE_DIR)
    }

    /// The buildpack's own directory.
    pub fn buildpack_dir(&self) -> &Path {
        Path::new(BUILDPACK_DIR)
    }

    /// A path inside the application directory.
    pub fn app_path(&self, relative: &str) -> PathBuf {
        self.app_dir().join(relative)
    }

    /// True if `relative` exists in the application directory.
    pub fn app_has(&self, relative: &str) -> bool {
        self.app_path(relative).exists()
    }

    /// Reads a text file from the application directory, `None` if it does not exist.
    pub fn read_app_file(&self, relative: &str) -> Result<Option<String>, Error> {
        match std::fs::read_to_string(self.app_path(relative)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(format!("reading {relative}: {e}"))),
        }
    }

    /// An environment variable from the application's configuration.
    pub fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    /// The stack the droplet will run on (`STACK`).
    pub fn stack(&self) -> String {
        self.env("STACK").unwrap_or_default()
    }

    /// The buildpack's `buildpack.toml`.
    pub fn manifest(&self) -> Result<Manifest, Error> {
        Manifest::load(Path::new(BUILDPACK_DIR).join("buildpack.toml"))
    }

    /// Downloads `url` through the host into `destination` (a path under `/app`, `/cache` or
    /// `/tmp`), verifying `sha256` when given. The host may serve it from a mirror or its
    /// cache; the result says which URL was used.
    pub fn fetch(
        &self,
        url: &str,
        sha256: Option<&str>,
        destination: &str,
    ) -> Result<FetchResult, Error> {
        let request = bindings::dea::buildpack::host::FetchRequest {
            url: url.to_string(),
            sha256: sha256.map(str::to_string),
            destination: destination.to_string(),
            unpack: None,
        };
        bindings::dea::buildpack::host::fetch(&request).map_err(Error::from)
    }

    /// Downloads the archive at `url` (`.tgz` or `.zip`) through the host and unpacks it into
    /// the directory `destination`, dropping `strip_components` leading path components.
    /// The host unpacks it, so executables stay executable.
    pub fn fetch_and_unpack(
        &self,
        url: &str,
        sha256: Option<&str>,
        destination: &str,
        strip_components: u32,
    ) -> Result<FetchResult, Error> {
        let request = bindings::dea::buildpack::host::FetchRequest {
            url: url.to_string(),
            sha256: sha256.map(str::to_string),
            destination: destination.to_string(),
            unpack: Some(strip_components),
        };
        bindings::dea::buildpack::host::fetch(&request).map_err(Error::from)
    }
}

/// Marks a file under `/app`, `/cache` or `/tmp` executable (`chmod +x`); compile only.
/// WASI itself cannot set file modes, so the host does it.
pub fn make_executable(path: impl AsRef<Path>) -> Result<(), Error> {
    let path = path.as_ref().to_string_lossy();
    bindings::dea::buildpack::host::make_executable(&path).map_err(Error::Denied)
}

impl Detection {
    /// A detection with a name and no version.
    pub fn named(name: impl Into<String>) -> Self {
        Detection {
            name: name.into(),
            version: None,
        }
    }

    /// Adds the version that will be used.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
}

impl Release {
    /// A release with a single `web` process.
    pub fn web(command: impl Into<String>) -> Self {
        Release {
            process_types: vec![("web".to_string(), command.into())],
            config_vars: Vec::new(),
            addons: Vec::new(),
        }
    }

    /// A release with no processes: the app's Procfile must provide them.
    pub fn empty() -> Self {
        Release {
            process_types: Vec::new(),
            config_vars: Vec::new(),
            addons: Vec::new(),
        }
    }

    /// Adds a run-time environment variable.
    pub fn with_config_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config_vars.push((name.into(), value.into()));
        self
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Denied(m)
            | FetchError::ChecksumMismatch(m)
            | FetchError::InvalidDestination(m)
            | FetchError::TooLarge(m) => Error::Denied(m),
            FetchError::NotFound(m) | FetchError::Network(m) => Error::Failed(m),
        }
    }
}

/// Glue between the generated `Guest` trait and [`Buildpack`]; used by [`export_buildpack!`].
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn detect<B: Buildpack>() -> Result<Option<Detection>, Error> {
        B::detect(&Context::current())
    }
    pub fn compile<B: Buildpack>() -> Result<(), Error> {
        B::compile(&Context::current())
    }
    pub fn release<B: Buildpack>() -> Result<Release, Error> {
        B::release(&Context::current())
    }
}

/// Exports a [`Buildpack`] implementation as the component's `detect`, `compile` and
/// `release`. Call it exactly once, at the crate root of a `cdylib` crate.
#[macro_export]
macro_rules! export_buildpack {
    ($buildpack:ty) => {
        const _: () = {
            struct DeaBuildpackExport;
            impl $crate::bindings::Guest for DeaBuildpackExport {
                fn detect() -> ::core::result::Result<
                    ::core::option::Option<$crate::Detection>,
                    $crate::Error,
                > {
                    $crate::__private::detect::<$buildpack>()
                }
                fn compile() -> ::core::result::Result<(), $crate::Error> {
                    $crate::__private::compile::<$buildpack>()
                }
                fn release() -> ::core::result::Result<$crate::Release, $crate::Error> {
                    $crate::__private::release::<$buildpack>()
                }
            }
            $crate::bindings::__export_dea_buildpack!(DeaBuildpackExport with_types_in $crate::bindings);
        };
    };
}
