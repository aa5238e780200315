//! Classic buildpacks (`bin/detect`, `bin/compile`, `bin/release`, and Cloud Foundry's
//! `bin/supply`/`bin/finalize`), run unchanged, each script in its own `runc` container.
//!
//! Inside the container the staging looks like this (fixed paths, all under the tmpfs `/tmp`):
//!
//! | path | what | detect | compile/supply/finalize | release |
//! |---|---|---|---|---|
//! | `/tmp/app` | BUILD_DIR | ro | rw | ro |
//! | `/tmp/cache` | CACHE_DIR | - | rw | - |
//! | `/tmp/env` | ENV_DIR: one file per app variable (Heroku mode) | ro | ro | ro |
//! | `/tmp/deps` | DEPS_DIR (Cloud Foundry mode) | - | rw | - |
//! | `/tmp/profile.d` | PROFILE_DIR (Cloud Foundry finalize) | - | rw | - |
//! | `/tmp/exports` | earlier buildpacks' `export` files, sourced in order | - | ro | - |
//! | `/tmp/buildpack` | this staging's copy of the buildpack (cwd) | ro | rw | ro |
//!
//! The buildpack is copied per staging so that it can write its own `export` file (the Heroku
//! convention) without the installed buildpack ever being writable.

pub mod runner;

use crate::container::{
    BindMount, ContainerError, ContainerExit, ContainerSpec, Output, OutputSink, Runc,
};
use crate::fetch::{FetchGrant, FetchRecorder, FetchService, Recording};
use crate::netns::NetNamespace;
use crate::phase::StagingLog;
use crate::phase::{Detection, PhaseError, PhaseOutput, ReleaseInfo};
use crate::proxy::{CertificateAuthority, ProxyContext};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The protocol a classic buildpack speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicMode {
    /// `compile BUILD CACHE ENV_DIR`; app variables only as files in ENV_DIR.
    Heroku,
    /// `compile BUILD CACHE`, app variables exported; `supply`/`finalize` with DEPS_DIR.
    CloudFoundry,
}

/// Which script of a classic buildpack to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Detect,
    Compile,
    Supply,
    Finalize,
    Release,
}

impl Script {
    fn name(self) -> &'static str {
        match self {
            Script::Detect => "detect",
            Script::Compile => "compile",
            Script::Supply => "supply",
            Script::Finalize => "finalize",
            Script::Release => "release",
        }
    }

    fn phase(self) -> &'static str {
        match self {
            Script::Detect => "detect",
            Script::Release => "release",
            _ => "compile",
        }
    }
}

/// Limits and identity for classic buildpack containers.
#[derive(Debug, Clone)]
pub struct ClassicLimits {
    pub uid: u32,
    pub gid: u32,
    pub memory_limit_mb: u64,
    pub pids_limit: i64,
    pub detect_timeout: Duration,
    pub compile_timeout: Duration,
    pub tmp_size_mb: u64,
}

/// One staging's directories, as the classic adapter needs them.
#[derive(Debug, Clone)]
pub struct ClassicDirs {
    pub app: PathBuf,
    pub cache: PathBuf,
    /// ENV_DIR on the host.
    pub env_dir: PathBuf,
    pub deps: PathBuf,
    pub profile_d: PathBuf,
    pub exports: PathBuf,
    /// This staging's writable copy of the buildpack.
    pub buildpack_copy: PathBuf,
}

/// The road to the fetch service for build scripts: a proxy in the container's network
/// namespace, and the CA it signs with (written to `ca_file` for the container to trust).
#[derive(Clone)]
pub struct ProxyAccess {
    pub fetch: Arc<FetchService>,
    pub ca: Arc<CertificateAuthority>,
    pub ca_file: PathBuf,
}

/// Where the proxy listens inside the container.
const PROXY_ADDR: &str = "127.0.0.1:3128";
/// Most the proxy may say in one script's run (a line per download; a build with thousands
/// of downloads is cut here, the rest is in the bill of materials).
const PROXY_LOG_LIMIT: u64 = 1 << 20;
/// The stack's CA bundle, replaced by the proxy's CA inside the container.
const STACK_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One script run.
pub struct ScriptRun<'a> {
    /// Downloads for build scripts; `None` leaves the container with no network at all.
    pub proxy: Option<&'a ProxyAccess>,
    pub buildpack_id: &'a str,
    pub runc: &'a Runc,
    pub limits: &'a ClassicLimits,
    pub dirs: &'a ClassicDirs,
    pub script: Script,
    pub mode: ClassicMode,
    /// Position in a multi-buildpack order (CF's INDEX).
    pub index: usize,
    pub stack: &'a str,
    pub app_env: &'a [(String, String)],
    pub log: &'a StagingLog,
    /// Where the staging writes down what the scripts download.
    pub fetches: &'a FetchRecorder,
    /// The stack's root filesystem (`None`: the runtime's default).
    pub rootfs: Option<&'a Path>,
}

static CONTAINER_SEQ: AtomicU64 = AtomicU64::new(0);

/// `bin/release` output.
#[derive(Debug, Default, Deserialize)]
struct ReleaseYaml {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, String>>,
    #[serde(default)]
    config_vars: Option<BTreeMap<String, serde_yaml_ng::Value>>,
    #[serde(default)]
    addons: Option<Vec<serde_yaml_ng::Value>>,
}

impl ScriptRun<'_> {
    /// Runs the script; maps the result onto the same outputs as a wasm phase.
    pub async fn run(&self) -> Result<PhaseOutput, PhaseError> {
        let phase = self.script.phase();
        // The copy is the buildpack's to change (an earlier script may have): look beneath it.
        let script = Path::new("bin").join(self.script.name());
        let present = crate::tenant_fs::TenantDir::open(&self.dirs.buildpack_copy)
            .and_then(|dir| dir.open_file(&script, crate::tenant_fs::Links::Beneath))
            .is_ok();
        if !present {
            return match self.script {
                // A missing release is fine (Heroku: "only run if present").
                Script::Release => Ok(PhaseOutput::Release(ReleaseInfo {
                    process_types: Vec::new(),
                    config_vars: Vec::new(),
                    addons: Vec::new(),
                })),
                Script::Detect => Ok(PhaseOutput::Detect(None)),
                _ => Err(PhaseError::Instantiate {
                    phase,
                    message: format!("the buildpack has no bin/{}", self.script.name()),
                }),
            };
        }
        let mut spec = self.container_spec();
        // Build scripts get the fetch proxy in their own network namespace; the namespace
        // and the proxy task live exactly as long as this run.
        let mut _namespace = None;
        let mut proxy_task = None;
        // What the proxy says (a line per download) is held until the script ends, then
        // written in sorted order: written as downloads finished, its lines landed among
        // the script's own output wherever the two streams happened to meet, and the log
        // ships in the droplet.
        let proxy_log = StagingLog::held(PROXY_LOG_LIMIT);
        if let Some(proxy) = self.proxy.filter(|_| {
            matches!(
                self.script,
                Script::Compile | Script::Supply | Script::Finalize
            )
        }) {
            match self.start_proxy(proxy, proxy_log.clone()) {
                Ok((namespace, task)) => {
                    self.add_proxy_settings(&mut spec, proxy, &namespace);
                    _namespace = Some(namespace);
                    proxy_task = Some(task);
                }
                Err(e) => self.log.warning(&format!(
                    "no download proxy for this buildpack (it has no network at all): {e}"
                )),
            }
        }
        // Detect's stdout is the detected name and release's is YAML, so only their stderr
        // is shown; the build scripts' output streams into the staging log as it is
        // written, both streams through one pipe so their lines keep their order.
        let log = self.log.clone();
        let to_log: OutputSink = Arc::new(move |bytes: &[u8]| log.write_raw(bytes));
        let output = match self.script {
            Script::Detect | Script::Release => Output::Apart {
                stdout: None,
                stderr: Some(to_log),
            },
            _ => Output::Together(to_log),
        };
        let exit = self
            .runc
            .run(&spec, output)
            .await
            .map_err(|e| container_error(phase, e));
        if let Some(task) = proxy_task {
            task.abort();
        }
        proxy_log.release_sorted_into(self.log);
        self.interpret(exit?)
    }

    fn start_proxy(
        &self,
        proxy: &ProxyAccess,
        log: StagingLog,
    ) -> Result<(NetNamespace, tokio::task::JoinHandle<()>), String> {
        let namespace = NetNamespace::create().map_err(|e| e.to_string())?;
        let listener = namespace.bind(PROXY_ADDR).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        let ctx = ProxyContext {
            fetch: proxy.fetch.clone(),
            ca: proxy.ca.clone(),
            grant: FetchGrant {
                buildpack: self.buildpack_id.to_string(),
                declared: Vec::new(),
                any_request: true,
                record: Some(Recording {
                    to: self.fetches.clone(),
                    phase: self.script.name(),
                }),
            },
            log,
        };
        Ok((namespace, tokio::spawn(crate::proxy::serve(listener, ctx))))
    }

    fn add_proxy_settings(
        &self,
        spec: &mut ContainerSpec,
        proxy: &ProxyAccess,
        namespace: &NetNamespace,
    ) {
        spec.network_namespace = Some(namespace.path());
        let url = format!("http://{PROXY_ADDR}");
        for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            spec.env.push((name.into(), url.clone()));
        }
        // Nothing bypasses the proxy, not even loopback names.
        for name in ["no_proxy", "NO_PROXY"] {
            spec.env.push((name.into(), String::new()));
        }
        for name in [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
        ] {
            spec.env.push((name.into(), "/tmp/dea-proxy-ca.pem".into()));
        }
        spec.file_mounts.push(BindMount {
            source: proxy.ca_file.clone(),
            destination: "/tmp/dea-proxy-ca.pem".into(),
            read_only: true,
        });
        if Path::new(STACK_CA_BUNDLE).is_file() {
            spec.file_mounts.push(BindMount {
                source: proxy.ca_file.clone(),
                destination: STACK_CA_BUNDLE.into(),
                read_only: true,
            });
        }
    }

    fn interpret(&self, exit: ContainerExit) -> Result<PhaseOutput, PhaseError> {
        let phase = self.script.phase();
        // `runc run` removes the container's cgroup as soon as it exits, so the OOM counter
        // is usually gone by now; inside an unprivileged container with no other killer,
        // SIGKILL (137) is the memory limit.
        if exit.oom_killed || (exit.code == 137 && self.script != Script::Detect) {
            return Err(PhaseError::MemoryLimit {
                phase,
                limit_mb: self.limits.memory_limit_mb,
            });
        }
        match self.script {
            Script::Detect => {
                if exit.code != 0 {
                    return Ok(PhaseOutput::Detect(None));
                }
                let name = String::from_utf8_lossy(&exit.stdout).trim().to_string();
                Ok(PhaseOutput::Detect(Some(Detection {
                    name: name.lines().next().unwrap_or_default().to_string(),
                    version: None,
                })))
            }
            Script::Release => {
                if exit.code != 0 {
                    return Err(PhaseError::ScriptFailed {
                        phase,
                        script: "release",
                        status: exit.code,
                    });
                }
                parse_release(&exit.stdout).map(PhaseOutput::Release)
            }
            _ => {
                if exit.code != 0 {
                    return Err(PhaseError::ScriptFailed {
                        phase,
                        script: self.script.name(),
                        status: exit.code,
                    });
                }
                Ok(PhaseOutput::Compile)
            }
        }
    }

    fn container_spec(&self) -> ContainerSpec {
        let writable = !matches!(self.script, Script::Detect | Script::Release);
        let dirs = self.dirs;
        let mut mounts = vec![
            mount(&dirs.app, "/tmp/app", !writable),
            mount(&dirs.env_dir, "/tmp/env", true),
            mount(&dirs.buildpack_copy, "/tmp/buildpack", !writable),
        ];
        if writable {
            mounts.push(mount(&dirs.cache, "/tmp/cache", false));
            mounts.push(mount(&dirs.exports, "/tmp/exports", true));
            if self.mode == ClassicMode::CloudFoundry {
                mounts.push(mount(&dirs.deps, "/tmp/deps", false));
                mounts.push(mount(&dirs.profile_d, "/tmp/profile.d", false));
            }
        }
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), "/tmp".into()),
            ("STACK".into(), self.stack.to_string()),
            ("CF_STACK".into(), self.stack.to_string()),
            ("LANG".into(), "C.UTF-8".into()),
            ("BUILD_DIR".into(), "/tmp/app".into()),
        ];
        if self.mode == ClassicMode::CloudFoundry {
            // CF exports the app's environment to every script.
            env.extend(self.app_env.iter().cloned());
            env.push(("DEPS_DIR".into(), "/tmp/deps".into()));
        }
        let script = format!("/tmp/buildpack/bin/{}", self.script.name());
        let index = self.index.to_string();
        let args: Vec<String> = match (self.script, self.mode) {
            (Script::Detect, _) | (Script::Release, _) => vec![script, "/tmp/app".into()],
            (Script::Compile, ClassicMode::Heroku) => {
                vec![
                    script,
                    "/tmp/app".into(),
                    "/tmp/cache".into(),
                    "/tmp/env".into(),
                ]
            }
            (Script::Compile, ClassicMode::CloudFoundry) => {
                vec![script, "/tmp/app".into(), "/tmp/cache".into()]
            }
            (Script::Supply, _) => vec![
                script,
                "/tmp/app".into(),
                "/tmp/cache".into(),
                "/tmp/deps".into(),
                index,
            ],
            (Script::Finalize, _) => vec![
                script,
                "/tmp/app".into(),
                "/tmp/cache".into(),
                "/tmp/deps".into(),
                index,
                "/tmp/profile.d".into(),
            ],
        };
        // Build scripts first source the `export` files earlier buildpacks left, and write
        // stderr where stdout goes: runc copies a container's two streams through pipes of
        // its own, each with its own copier, so lines written to both would reach the log
        // (and the droplet) in a different order each run.
        let args = if writable {
            let mut wrapped = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                "for f in /tmp/exports/*; do [ -f \"$f\" ] && . \"$f\"; done; exec \"$@\" 2>&1"
                    .into(),
                "dea-export-loader".to_string(),
            ];
            wrapped.extend(args);
            wrapped
        } else {
            args
        };
        let seq = CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed);
        ContainerSpec {
            id: format!("dea-{}-{}-{seq}", std::process::id(), self.script.name()),
            args,
            env,
            cwd: "/tmp/buildpack".into(),
            mounts,
            uid: self.limits.uid,
            gid: self.limits.gid,
            memory_limit_bytes: (self.limits.memory_limit_mb << 20) as i64,
            pids_limit: self.limits.pids_limit,
            timeout: if matches!(self.script, Script::Detect) {
                self.limits.detect_timeout
            } else {
                self.limits.compile_timeout
            },
            tmp_size_mb: self.limits.tmp_size_mb,
            network_namespace: None,
            file_mounts: Vec::new(),
            hostname: "dea-staging".into(),
            rootfs: self.rootfs.map(Path::to_path_buf),
        }
    }
}

fn mount(source: &Path, destination: &str, read_only: bool) -> BindMount {
    BindMount {
        source: source.to_path_buf(),
        destination: destination.to_string(),
        read_only,
    }
}

fn container_error(phase: &'static str, error: ContainerError) -> PhaseError {
    match error {
        ContainerError::Timeout { limit, .. } => PhaseError::Timeout { phase, limit },
        other => PhaseError::Instantiate {
            phase,
            message: other.to_string(),
        },
    }
}

fn parse_release(stdout: &[u8]) -> Result<ReleaseInfo, PhaseError> {
    let text = String::from_utf8_lossy(stdout);
    let release: ReleaseYaml = if text.trim().is_empty() {
        ReleaseYaml::default()
    } else {
        serde_yaml_ng::from_str::<Option<ReleaseYaml>>(&text)
            .map_err(|e| PhaseError::Trap {
                phase: "release",
                message: format!("bin/release printed invalid YAML: {e}"),
            })?
            .unwrap_or_default()
    };
    let scalar = |v: serde_yaml_ng::Value| match v {
        serde_yaml_ng::Value::String(s) => s,
        other => serde_yaml_ng::to_string(&other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    Ok(ReleaseInfo {
        process_types: release
            .default_process_types
            .unwrap_or_default()
            .into_iter()
            .collect(),
        config_vars: release
            .config_vars
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, scalar(v)))
            .collect(),
        addons: release
            .addons
            .unwrap_or_default()
            .into_iter()
            .map(scalar)
            .collect(),
    })
}

/// Writes ENV_DIR: one file per variable, named by it, holding its value.
pub fn write_env_dir(dir: &Path, env: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, value) in env {
        if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
            continue;
        }
        std::fs::write(dir.join(name), value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml_is_parsed_and_empty_is_fine() {
        let release = parse_release(
            b"---\ndefault_process_types:\n  web: bin/start\nconfig_vars:\n  A: 1\naddons: []\n",
        )
        .expect("parses");
        assert_eq!(
            release.process_types,
            vec![("web".into(), "bin/start".into())]
        );
        assert_eq!(release.config_vars, vec![("A".into(), "1".into())]);
        assert!(
            parse_release(b"--- {}\n")
                .expect("empty map")
                .process_types
                .is_empty()
        );
        assert!(
            parse_release(b"")
                .expect("nothing")
                .process_types
                .is_empty()
        );
        assert!(parse_release(b"web: [unclosed").is_err());
    }
}
