//! The OCI runtime configuration (`config.json`) of a container, built from a
//! [`ContainerSpec`]: what runc is told to isolate and limit.
//!
//! Kept apart from running runc so that what a container gets (namespaces, mounts, user,
//! capabilities, cgroup limits, seccomp) is one pure function, checked by unit tests without
//! root or runc.

use super::{ContainerSpec, seccomp};
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Host directories that make the default stack.
pub(super) const HOST_STACK_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];

/// The runtime configuration for `spec` with root filesystem `rootfs`. With `host_stack`
/// (no stack rootfs configured), the host's own stack directories that exist are bind-mounted
/// read-only over the (empty) `rootfs`.
pub(super) fn runtime_spec(
    spec: &ContainerSpec,
    rootfs: &Path,
    host_stack: bool,
) -> Result<Spec, OciSpecError> {
    let mut mounts = oci_spec::runtime::get_default_mounts();
    if host_stack {
        for dir in HOST_STACK_DIRS {
            let source = Path::new("/").join(dir);
            if source.exists() {
                mounts.push(bind(&source, &format!("/{dir}"), true)?);
            }
        }
    }
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=1777".to_string(),
                // To tmpfs a size of 0 means no limit at all, not none.
                format!("size={}m", spec.tmp_size_mb.max(1)),
            ])
            .build()?,
    );
    for mount in spec.mounts.iter().chain(&spec.file_mounts) {
        mounts.push(bind(&mount.source, &mount.destination, mount.read_only)?);
    }
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let no_caps: HashSet<oci_spec::runtime::Capability> = HashSet::new();
    let caps = LinuxCapabilities::default()
        .set_bounding(Some(no_caps.clone()))
        .set_effective(Some(no_caps.clone()))
        .set_inheritable(Some(no_caps.clone()))
        .set_permitted(Some(no_caps.clone()))
        .set_ambient(Some(no_caps))
        .clone();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(spec.uid).gid(spec.gid).build()?)
        .args(spec.args.clone())
        .env(env)
        .cwd(spec.cwd.clone())
        .no_new_privileges(true)
        .capabilities(caps)
        .build()?;
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(spec.memory_limit_bytes)
                // Swap is counted with memory: equal limits mean no swap at all.
                .swap(spec.memory_limit_bytes)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(spec.pids_limit).build()?)
        .build()?;
    let defaults = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces(spec.network_namespace.as_deref())?)
        .resources(resources)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .cgroups_path(PathBuf::from(format!("/dea/{}", spec.id)))
        .seccomp(seccomp::default_profile()?)
        .build()?;
    let mut config = Spec::default();
    config
        .set_root(Some(
            RootBuilder::default()
                .path(rootfs.to_path_buf())
                .readonly(true)
                .build()?,
        ))
        .set_hostname(Some(spec.hostname.clone()))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_linux(Some(linux));
    Ok(config)
}

/// PID, network, IPC, UTS, mount and cgroup namespaces; the network one joined from `netns`
/// when the host prepared it.
fn namespaces(
    netns: Option<&Path>,
) -> Result<Vec<oci_spec::runtime::LinuxNamespace>, OciSpecError> {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    oci_spec::runtime::get_default_namespaces()
        .into_iter()
        .map(|ns| match (ns.typ(), netns) {
            (LinuxNamespaceType::Network, Some(path)) => LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.to_path_buf())
                .build(),
            _ => Ok(ns),
        })
        .collect()
}

fn bind(
    source: &Path,
    destination: &str,
    read_only: bool,
) -> Result<oci_spec::runtime::Mount, OciSpecError> {
    let mut options = vec![
        "rbind".to_string(),
        "nosuid".to_string(),
        "nodev".to_string(),
    ];
    options.push(if read_only { "ro" } else { "rw" }.to_string());
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::BindMount;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn container(network_namespace: Option<PathBuf>) -> ContainerSpec {
        ContainerSpec {
            id: "dea-app-0123".into(),
            args: vec!["/bin/bash".into(), "-c".into(), "exec app".into()],
            env: vec![
                ("PORT".into(), "8080".into()),
                ("EMPTY".into(), String::new()),
            ],
            cwd: "/home/vcap".into(),
            mounts: vec![
                BindMount {
                    source: "/srv/instances/x/home".into(),
                    destination: "/home/vcap".into(),
                    read_only: false,
                },
                BindMount {
                    source: "/srv/buildpacks/ruby".into(),
                    destination: "/buildpack".into(),
                    read_only: true,
                },
            ],
            uid: 2000,
            gid: 2001,
            memory_limit_bytes: 256 << 20,
            pids_limit: 512,
            timeout: Duration::from_secs(60),
            tmp_size_mb: 64,
            network_namespace,
            file_mounts: vec![BindMount {
                source: "/etc/dea/ca.pem".into(),
                destination: "/etc/ssl/certs/ca-certificates.crt".into(),
                read_only: true,
            }],
            rootfs: None,
            hostname: "0123456789ab".into(),
        }
    }

    /// The configuration as runc reads it.
    fn config_json(spec: &ContainerSpec, host_stack: bool) -> Value {
        let config = runtime_spec(spec, Path::new("/srv/bundle/rootfs"), host_stack)
            .expect("a valid runtime spec");
        serde_json::to_value(&config).expect("serializable")
    }

    fn mount<'a>(config: &'a Value, destination: &str) -> Option<&'a Value> {
        config["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == destination)
    }

    fn namespace_types(config: &Value) -> Vec<String> {
        let mut types: Vec<String> = config["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|ns| ns["type"].as_str().expect("type").to_string())
            .collect();
        types.sort();
        types
    }

    #[test]
    fn every_namespace_is_new_and_no_network_is_reachable_by_default() {
        let config = config_json(&container(None), false);
        assert_eq!(
            namespace_types(&config),
            ["cgroup", "ipc", "mount", "network", "pid", "uts"]
        );
        // No path: runc makes a fresh, empty network namespace (no interfaces, no route).
        let namespaces = config["linux"]["namespaces"]
            .as_array()
            .expect("namespaces");
        assert!(namespaces.iter().all(|ns| ns.get("path").is_none()));
    }

    #[test]
    fn a_prepared_network_namespace_is_joined_by_path() {
        let config = config_json(&container(Some("/var/run/netns/dea-i-0123".into())), false);
        assert_eq!(
            namespace_types(&config),
            ["cgroup", "ipc", "mount", "network", "pid", "uts"]
        );
        let network = config["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .find(|ns| ns["type"] == "network")
            .expect("a network namespace");
        assert_eq!(network["path"], "/var/run/netns/dea-i-0123");
    }

    #[test]
    fn the_root_is_read_only_and_the_process_unprivileged() {
        let config = config_json(&container(None), false);
        assert_eq!(
            config["root"],
            json!({"path": "/srv/bundle/rootfs", "readonly": true})
        );
        assert_eq!(config["hostname"], "0123456789ab");
        let process = &config["process"];
        assert_eq!(process["user"]["uid"], 2000);
        assert_eq!(process["user"]["gid"], 2001);
        assert_eq!(process["args"], json!(["/bin/bash", "-c", "exec app"]));
        assert_eq!(process["env"], json!(["PORT=8080", "EMPTY="]));
        assert_eq!(process["cwd"], "/home/vcap");
        assert_eq!(process["terminal"], false);
        assert_eq!(process["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(
                process["capabilities"][set],
                json!([]),
                "{set} capabilities"
            );
        }
        // The one rlimit is oci-spec's default process's: 1024 open files.
        assert_eq!(
            process["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
    }

    #[test]
    fn cgroup_limits_come_from_the_spec() {
        let config = config_json(&container(None), false);
        let linux = &config["linux"];
        assert_eq!(linux["cgroupsPath"], "/dea/dea-app-0123");
        assert_eq!(linux["resources"]["memory"]["limit"], 256 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 256 << 20);
        assert_eq!(linux["resources"]["pids"]["limit"], 512);
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(
            !linux["seccomp"]["syscalls"]
                .as_array()
                .expect("seccomp rules")
                .is_empty()
        );
        assert!(
            linux["maskedPaths"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        );
        assert!(
            linux["readonlyPaths"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        );
    }

    #[test]
    fn mounts_bind_the_spec_directories_over_a_private_tmp() {
        let config = config_json(&container(None), false);
        // The runtime's defaults (/proc, /dev, ...) stay.
        assert_eq!(mount(&config, "/proc").expect("/proc")["type"], "proc");
        assert!(mount(&config, "/dev").is_some());
        assert_eq!(
            mount(&config, "/tmp").expect("/tmp"),
            &json!({
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=64m"],
            })
        );
        assert_eq!(
            mount(&config, "/home/vcap").expect("home"),
            &json!({
                "destination": "/home/vcap",
                "type": "bind",
                "source": "/srv/instances/x/home",
                "options": ["rbind", "nosuid", "nodev", "rw"],
            })
        );
        assert_eq!(
            mount(&config, "/buildpack").expect("buildpack")["options"],
            json!(["rbind", "nosuid", "nodev", "ro"])
        );
        let ca = mount(&config, "/etc/ssl/certs/ca-certificates.crt").expect("file mount");
        assert_eq!(ca["source"], "/etc/dea/ca.pem");
        assert_eq!(ca["options"], json!(["rbind", "nosuid", "nodev", "ro"]));
        // A stack rootfs of its own: none of the host's directories.
        assert!(mount(&config, "/usr").is_none());
        assert!(mount(&config, "/etc").is_none());
    }

    #[test]
    fn the_host_stack_is_bound_read_only() {
        let config = config_json(&container(None), true);
        for dir in ["usr", "etc"] {
            let m = mount(&config, &format!("/{dir}")).expect("a host stack directory");
            assert_eq!(m["source"], format!("/{dir}"));
            assert_eq!(m["options"], json!(["rbind", "nosuid", "nodev", "ro"]));
        }
        // The spec's mounts come after the stack, so they can cover part of it.
        let position = |destination: &str| {
            config["mounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .position(|m| m["destination"] == destination)
                .expect("mounted")
        };
        assert!(position("/etc") < position("/etc/ssl/certs/ca-certificates.crt"));
        assert!(position("/usr") < position("/tmp"));
    }

    #[test]
    fn an_empty_tmp_size_still_gets_a_small_tmpfs() {
        let mut spec = container(None);
        spec.tmp_size_mb = 0;
        let config = config_json(&spec, false);
        assert_eq!(
            mount(&config, "/tmp").expect("/tmp")["options"][3],
            "size=1m"
        );
    }
}
