//! `dea buildpack new`: a buildpack project (Rust, Python or C) that builds and passes its own
//! test as generated.
//!
//! Each project has the buildpack's source, its `buildpack.toml`, `build.sh` (source to
//! `buildpack.wasm`), `test.sh` (build, `dea buildpack check`, then `dea stage --buildpack .`
//! on the sample app in `test/app`) and a README. The buildpack claims apps with a
//! `hello.txt`, logs during compile and serves the app with the stack's python3: a start
//! that works, meant to be replaced.

use std::path::{Component, Path, PathBuf};

/// Languages `dea buildpack new` can start a buildpack in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    C,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" => Ok(Lang::Python),
            "c" => Ok(Lang::C),
            other => Err(format!(
                "no template for {other:?}: choose rust, python or c"
            )),
        }
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewProject {
    /// The buildpack id: lowercase letters, digits and `-`, starting with a letter.
    pub name: String,
    pub lang: Lang,
    /// The project directory (must not exist, or be empty).
    pub dir: PathBuf,
    /// The `dea-sdk` crate for Rust projects (a path dependency, written relative).
    pub sdk: Option<PathBuf>,
}

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "invalid buildpack name {0:?}: use lowercase letters, digits and '-', starting with a letter"
    )]
    Name(String),
    #[error("{0} exists and is not empty")]
    NotEmpty(PathBuf),
    #[error(
        "cannot find dea-sdk (looked at {0}): pass --sdk PATH to the `sdk` directory of a dea checkout"
    )]
    SdkNotFound(PathBuf),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractError),
}

/// The SDK next to the source this binary was built from, if it is still there.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

/// Creates the project; returns the files written, relative to its directory.
pub fn create(project: &NewProject) -> Result<Vec<PathBuf>, ScaffoldError> {
    let name = &project.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::Name(name.clone()));
    }
    let dir = &project.dir;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Write { path, source }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(write_err(dir))?;
        if entries.next().is_some() {
            return Err(ScaffoldError::NotEmpty(dir.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;

    let crate_name = format!("{name}-buildpack");
    let mut files: Vec<(String, String, bool)> = vec![
        ("buildpack.toml".into(), fill(MANIFEST, name, ""), false),
        (
            "test/app/hello.txt".into(),
            "Hello from dea!\n".into(),
            false,
        ),
        ("test.sh".into(), fill(TEST_SH, name, ""), true),
    ];
    match project.lang {
        Lang::Rust => {
            let sdk = project.sdk.clone().unwrap_or_else(default_sdk);
            let sdk = sdk
                .canonicalize()
                .map_err(|_| ScaffoldError::SdkNotFound(sdk.clone()))?;
            if !sdk.join("Cargo.toml").is_file() {
                return Err(ScaffoldError::SdkNotFound(sdk));
            }
            let dir = dir.canonicalize().map_err(write_err(dir))?;
            let sdk_path = relative(&dir, &sdk);
            let cargo = RUST_CARGO
                .replace("{crate}", &crate_name)
                .replace("{sdk}", &sdk_path.to_string_lossy());
            files.extend([
                ("Cargo.toml".into(), cargo, false),
                (".cargo/config.toml".into(), RUST_CARGO_CONFIG.into(), false),
                ("src/lib.rs".into(), fill(RUST_LIB, name, ""), false),
                (
                    "build.sh".into(),
                    fill(RUST_BUILD_SH, name, &crate_name.replace('-', "_")),
                    true,
                ),
                (
                    ".gitignore".into(),
                    "/target\n/buildpack.wasm\n".into(),
                    false,
                ),
                (
                    "README.md".into(),
                    fill(README, name, RUST_README_BUILD),
                    false,
                ),
            ]);
        }
        Lang::Python => {
            crate::contract::write_to(&dir.join("wit"))?;
            files.extend([
                ("app.py".into(), fill(PYTHON_APP, name, ""), false),
                ("build.sh".into(), PYTHON_BUILD_SH.into(), true),
                (
                    ".gitignore".into(),
                    "/buildpack.wasm\n__pycache__/\n".into(),
                    false,
                ),
                (
                    "README.md".into(),
                    fill(README, name, PYTHON_README_BUILD),
                    false,
                ),
            ]);
        }
        Lang::C => {
            files.extend([
                ("src/buildpack.c".into(), fill(C_SOURCE, name, ""), false),
                ("build.sh".into(), C_BUILD_SH.into(), true),
                (".gitignore".into(), "/gen\n/buildpack.wasm\n".into(), false),
                (
                    "README.md".into(),
                    fill(README, name, C_README_BUILD),
                    false,
                ),
            ]);
        }
    }
    let mut written = Vec::new();
    for (relative, text, executable) in files {
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        std::fs::write(&path, text).map_err(write_err(&path))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(write_err(&path))?;
        }
        written.push(PathBuf::from(relative));
    }
    if project.lang == Lang::Python {
        written.push(PathBuf::from("wit/"));
    }
    Ok(written)
}

fn fill(template: &str, name: &str, extra: &str) -> String {
    template.replace("{id}", name).replace("{extra}", extra)
}

/// `to` relative to the directory `from` (both absolute), so a project and a dea checkout
/// can move together.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part.as_os_str());
    }
    path
}

const MANIFEST: &str = r#"[buildpack]
id = "{id}"
name = "{id}"
version = "0.1.0"
description = "Serves apps that have a hello.txt (a starting point: change detect, compile and release)"

# URL prefixes this buildpack downloads from with the host's fetch (the platform's mirrors
# may rewrite them). Nothing yet.
[fetch]
allow = []
"#;

const TEST_SH: &str = r#"#!/usr/bin/env bash
# Builds the buildpack, checks it against the buildpack world, and stages the sample app in
# test/app with it, as dea would once it is installed. DEA names the dea binary.
set -euo pipefail
cd "$(dirname "$0")"
dea="${DEA:-dea}"
./build.sh
"$dea" buildpack check buildpack.wasm
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$dea" stage --buildpack . test/app -o "$out/droplet.tgz" | tee "$out/log"
grep -q -- '-----> Detected {id}' "$out/log"
grep -q -- '-----> Start command: python3 -m http.server' "$out/log"
tar xzOf "$out/droplet.tgz" ./staging_info.yml | grep -q 'detected_buildpack: {id}'
echo "test.sh: 1 passed, 0 failed"
"#;

const README: &str = r#"# {id}

A dea buildpack: a WebAssembly component implementing the
`dea:buildpack/buildpack` world (detect, compile, release).

{extra}
```sh
./test.sh      # build, `dea buildpack check`, stage test/app with it
```

Install it by copying `buildpack.toml` and `buildpack.wasm` into a directory under one of
the agent's `buildpack_dirs`, or stage with it directly: `dea stage --buildpack . APP`.
"#;

const RUST_README_BUILD: &str = "Needs Rust with `rustup target add wasm32-wasip2`.\n\n```sh\n./build.sh     # cargo build --release, then copies the component to buildpack.wasm\n```\n";

const PYTHON_README_BUILD: &str = "Needs `pip install componentize-py` (0.25). `wit/` is the buildpack contract\n(`dea buildpack wit` writes it again).\n\n```sh\n./build.sh     # componentize-py: app.py plus CPython into buildpack.wasm\n```\n";

const RUST_CARGO: &str = r#"[package]
name = "{crate}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
dea-sdk = { path = "{sdk}" }

# A project of its own, even when created inside another cargo workspace.
[workspace]

# Buildpacks ship as small components.
[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1
"#;

const RUST_CARGO_CONFIG: &str = r#"# `cargo build` makes a WebAssembly component (wasm32-wasip2). A 256 KiB stack keeps what a
# phase touches small, which makes instantiation cheaper.
[build]
target = "wasm32-wasip2"

[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=262144"]
"#;

const RUST_LIB: &str = r#"//! The {id} buildpack.

use dea_sdk::{Buildpack, Context, Detection, Error, Release, log};

struct Hello;

impl Buildpack for Hello {
    /// Claims apps with a hello.txt; must not change anything.
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        Ok(ctx.app_has("hello.txt").then(|| Detection::named("{id}")))
    }

    /// Builds the app in place in /app (downloads: `ctx.fetch`, through the host).
    fn compile(ctx: &Context) -> Result<(), Error> {
        log::step("Saying hello");
        let greeting = ctx.read_app_file("hello.txt")?.unwrap_or_default();
        log::detail(greeting.trim());
        std::fs::write(ctx.app_path("index.html"), format!("<p>{}</p>\n", greeting.trim()))?;
        Ok(())
    }

    /// How the built app runs.
    fn release(_ctx: &Context) -> Result<Release, Error> {
        Ok(Release::web("python3 -m http.server \"$PORT\" --bind 0.0.0.0"))
    }
}

dea_sdk::export_buildpack!(Hello);
"#;

const RUST_BUILD_SH: &str = r#"#!/usr/bin/env bash
# Builds the component (wasm32-wasip2, see .cargo/config.toml) into buildpack.wasm.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{extra}.wasm" buildpack.wasm
"#;

const PYTHON_APP: &str = r#""""The {id} buildpack.

componentize-py generates the `wit_world` package from wit/ when it builds: `WitWorld` below
implements the world's exports; `wit_world.imports.host` is the host (log, fetch,
make_executable). Raise `Err(...)` with an `Error_*` case to fail a phase.
"""

import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.dea_buildpack_types import Detection, Error_Io, ReleaseInfo


class WitWorld(wit_world.WitWorld):
    def detect(self) -> Detection | None:
        """Claims apps with a hello.txt; must not change anything."""
        if os.path.exists("/app/hello.txt"):
            return Detection(name="{id}", version=None)
        return None

    def compile(self) -> None:
        """Builds the app in place in /app (downloads: host.fetch)."""
        host.log(host.LogKind.STEP, "Saying hello")
        try:
            with open("/app/hello.txt") as f:
                greeting = f.read().strip()
            host.log(host.LogKind.DETAIL, greeting)
            with open("/app/index.html", "w") as f:
                f.write(f"<p>{greeting}</p>\n")
        except OSError as e:
            raise Err(Error_Io(str(e)))

    def release(self) -> ReleaseInfo:
        """How the built app runs."""
        return ReleaseInfo(
            process_types=[("web", 'python3 -m http.server "$PORT" --bind 0.0.0.0')],
            config_vars=[],
            addons=[],
        )
"#;

const PYTHON_BUILD_SH: &str = r#"#!/usr/bin/env bash
# Builds app.py (with CPython, by componentize-py) into buildpack.wasm.
set -euo pipefail
cd "$(dirname "$0")"
componentize-py --quiet -d wit -w dea:buildpack/buildpack@0.1.0 componentize app -o buildpack.wasm
"#;

const C_README_BUILD: &str = "Needs clang, lld, wasi-libc and the wasm32 compiler runtime (Debian: `apt-get install\nclang lld wasi-libc libclang-rt-dev-wasm32`).\n\n```sh\n./build.sh     # C bindings from dea, clang for wasm32-wasi, then `dea buildpack componentize`\n```\n";

const C_SOURCE: &str = r#"// The {id} buildpack. buildpack.h (written by `dea buildpack bindings --lang c` into gen/)
// declares the exports to implement and the host's imports. Exports return true on success
// or fill `err`; strings they return must be heap copies (buildpack_string_dup), because the
// generated post-return code frees them.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buildpack.h"

static void say(dea_buildpack_host_log_kind_t kind, const char *text) {
  buildpack_string_t message;
  buildpack_string_set(&message, text); // arguments to imports are only borrowed
  dea_buildpack_host_log(kind, &message);
}

static bool fail(buildpack_error_t *err, const char *message) {
  err->tag = DEA_BUILDPACK_TYPES_ERROR_IO;
  buildpack_string_dup(&err->val.io, message);
  return false;
}

// Claims apps with a hello.txt; must not change anything.
bool exports_buildpack_detect(buildpack_option_detection_t *ret, buildpack_error_t *err) {
  (void)err;
  struct stat st;
  ret->is_some = stat("/app/hello.txt", &st) == 0;
  if (ret->is_some) {
    buildpack_string_dup(&ret->val.name, "{id}");
    ret->val.version.is_some = false;
  }
  return true;
}

// Builds the app in place in /app (downloads: dea_buildpack_host_fetch, through the host).
bool exports_buildpack_compile(buildpack_error_t *err) {
  say(DEA_BUILDPACK_HOST_LOG_KIND_STEP, "Saying hello");
  char greeting[256] = "";
  FILE *in = fopen("/app/hello.txt", "r");
  if (in == NULL) {
    return fail(err, "reading hello.txt");
  }
  if (fgets(greeting, sizeof greeting, in) == NULL) {
    greeting[0] = '\0';
  }
  fclose(in);
  greeting[strcspn(greeting, "\r\n")] = '\0';
  say(DEA_BUILDPACK_HOST_LOG_KIND_DETAIL, greeting);
  FILE *out = fopen("/app/index.html", "w");
  if (out == NULL) {
    return fail(err, "writing index.html");
  }
  fprintf(out, "<p>%s</p>\n", greeting);
  fclose(out);
  return true;
}

// How the built app runs.
bool exports_buildpack_release(buildpack_release_info_t *ret, buildpack_error_t *err) {
  buildpack_tuple2_string_string_t *web = malloc(sizeof *web);
  if (web == NULL) {
    return fail(err, "out of memory");
  }
  buildpack_string_dup(&web->f0, "web");
  buildpack_string_dup(&web->f1, "python3 -m http.server \"$PORT\" --bind 0.0.0.0");
  ret->process_types.ptr = web;
  ret->process_types.len = 1;
  ret->config_vars.ptr = NULL;
  ret->config_vars.len = 0;
  ret->addons.ptr = NULL;
  ret->addons.len = 0;
  return true;
}
"#;

const C_BUILD_SH: &str = r#"#!/usr/bin/env bash
# Builds src/buildpack.c into buildpack.wasm: wit-bindgen's C bindings (from dea) into gen/,
# clang for wasm32-wasi (a WASI preview 1 reactor module), then `dea buildpack componentize`,
# which adds the preview 1 adapter. DEA names the dea binary, CC the compiler.
set -euo pipefail
cd "$(dirname "$0")"
dea="${DEA:-dea}"
"$dea" buildpack bindings --lang c --out gen >/dev/null
"${CC:-clang}" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -I gen -o gen/core.wasm \
  src/buildpack.c gen/buildpack.c gen/buildpack_component_type.o
"$dea" buildpack componentize gen/core.wasm -o buildpack.wasm >/dev/null
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative(Path::new("/a/b/c"), Path::new("/a/x/sdk")),
            PathBuf::from("../../x/sdk")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a/sdk")),
            PathBuf::from("sdk")
        );
    }

    #[test]
    fn names_are_buildpack_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "Hello", "1x", "a/b", "x-", "a b"] {
            let project = NewProject {
                name: bad.into(),
                lang: Lang::Python,
                dir: dir.path().join("p"),
                sdk: None,
            };
            assert!(
                matches!(create(&project), Err(ScaffoldError::Name(_))),
                "{bad:?}"
            );
        }
    }
}
