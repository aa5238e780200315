//! The seccomp profile every container gets (classic buildpack scripts and app instances).
//!
//! Modelled on Docker's and runc's default profile, but written as a *denylist*: the default
//! action is to allow, and the calls below fail with `EPERM`. Buildpacks run arbitrary
//! toolchains (compilers, JVMs, JIT runtimes, package managers, test suites) whose syscall needs
//! nobody can enumerate; an allowlist that misses one breaks a staging with an obscure error,
//! while these calls are the known kernel attack surface that a non-root process without
//! capabilities can still reach. The cost of a denylist: a syscall added to a future kernel is
//! allowed until it is listed here (the empty capability sets and `no_new_privileges` still
//! stand in front of anything privileged).
//!
//! runc turns this into a BPF filter with libseccomp. Two of their rules shape this file:
//! conditions on the *same* argument inside one rule are OR-ed (runc adds each as its own
//! rule), and libseccomp refuses a rule whose action is the filter's default, so no "allow"
//! exception can be carved out of a deny rule. "Deny unless the value is one of these" is
//! therefore said as several deny rules, each with a single condition, that together cover
//! every other value (see [`personality_rules`]).

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

const EPERM: u32 = nix::libc::EPERM as u32;
const ENOSYS: u32 = nix::libc::ENOSYS as u32;

/// New namespaces, above all user namespaces, hand an unprivileged tenant kernel code that
/// otherwise needs root (most recent container escapes start with `unshare -U`); joining one
/// (`setns`) would leave the container's own.
const NAMESPACES: &[&str] = &["unshare", "setns"];

/// The mount table is what hides the host from the container. Without capabilities these fail
/// anyway, but only once the kernel parsed them, and in a user namespace they would succeed.
const MOUNTS: &[&str] = &[
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
];

/// Kernel keyrings are not namespaced: a container could read or fill keys of the host and
/// of other tenants.
const KEYRINGS: &[&str] = &["keyctl", "add_key", "request_key"];

/// Programs and probes run by the kernel (`bpf`, `perf_event_open`) are a large attack surface
/// and can read kernel memory; `userfaultfd` lets an exploit stall the kernel mid-copy and
/// win its races at will.
const KERNEL_PROGRAMS: &[&str] = &["bpf", "perf_event_open", "userfaultfd"];

/// Loading, replacing or rebooting the kernel.
const KERNEL_CODE: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "reboot",
];

/// State the whole machine shares with every tenant: swap, the kernel log, process
/// accounting, the clocks, disk quotas, kernel tunables.
const HOST_STATE: &[&str] = &[
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "_sysctl",
    "nfsservctl",
    "vhangup",
];

/// File handles name an inode directly, past the mount namespace: `open_by_handle_at` is how
/// the "shocker" exploit read the host's `/etc/shadow` from a container.
const FILE_HANDLES: &[&str] = &["open_by_handle_at", "name_to_handle_at"];

/// Raw hardware access and obsolete interfaces nothing in a build needs.
const HARDWARE_AND_LEGACY: &[&str] = &["iopl", "ioperm", "vm86", "vm86old", "uselib"];

/// io_uring runs a tenant's I/O in kernel workers outside the usual syscall paths (and outside
/// this filter); it has been the source of many privilege escalations, which is why Docker and
/// Google's kernels turn it off.
const IO_URING: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// Reaching into other processes' memory and descriptors, or watching the filesystem beyond
/// the container. `ptrace` itself stays allowed: since Linux 4.8 seccomp checks the syscalls a
/// tracer rewrites (so it is no bypass), the container's PID namespace shows only its own
/// processes, and without `CAP_SYS_PTRACE` only the same user's; debuggers and `strace` are
/// legitimate build tools (Docker allows it on kernels >= 4.8 for the same reasons).
const OTHER_PROCESSES: &[&str] = &[
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "fanotify_init",
];

/// `clone` flags that create a namespace: the same surface as `unshare`.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32 |
/// UNAME26, and the query (0xffffffff). Others switch on poorly tested execution domains or
/// weaken the process (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO). The filter
/// states them as [`PERSONALITY_BITS_ALLOWED`]; the tests hold the two to each other.
#[cfg(test)]
const PERSONALITIES_ALLOWED: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The same set, as the filter states it: any combination of these bits (PER_LINUX32 and
/// UNAME26), or every bit (the query).
const PERSONALITY_BITS_ALLOWED: u32 = 0x2_0008;

/// The default seccomp profile of every container.
pub fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls = vec![deny(
        &[
            NAMESPACES,
            MOUNTS,
            KEYRINGS,
            KERNEL_PROGRAMS,
            KERNEL_CODE,
            HOST_STATE,
            FILE_HANDLES,
            HARDWARE_AND_LEGACY,
            IO_URING,
            OTHER_PROCESSES,
        ]
        .concat(),
        EPERM,
    )?];
    // clone3 passes its flags in a struct in memory, which seccomp cannot read: answering
    // ENOSYS makes libc fall back to clone, whose flags the rules below do check.
    syscalls.push(deny(&["clone3"], ENOSYS)?);
    syscalls.extend(clone_rules()?);
    syscalls.extend(personality_rules()?);
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

/// Every ABI the CPU can run, each with its own copy of the rules: syscall numbers differ
/// between them, and a 64-bit process can make 32-bit calls (`int 0x80` on x86_64, which
/// the kernel-surface test uses to try `unshare` that way).
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

fn deny(names: &[&str], errno: u32) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
}

/// One rule per flag (rules are OR-ed): `clone` fails when `flags & FLAG == FLAG` for any
/// namespace flag, and works as usual for threads and processes.
fn clone_rules() -> Result<Vec<LinuxSyscall>, OciSpecError> {
    CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&flag| masked_eq_rule("clone", flag, flag))
        .collect()
}

/// `personality` fails unless its argument is one of [`PERSONALITIES_ALLOWED`]: one rule for
/// values above 32 bits, and [`transition_rules`] for the 32-bit ones. Every rule costs
/// runc's libseccomp time at each container start (a previous form, one rule per aligned
/// block of the gaps, took 83).
fn personality_rules() -> Result<Vec<LinuxSyscall>, OciSpecError> {
    let mut rules = vec![
        LinuxSyscallBuilder::default()
            .names(vec!["personality".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(EPERM)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(0xffff_ffffu64)
                    .op(LinuxSeccompOperator::ScmpCmpGt)
                    .build()?,
            ])
            .build()?,
    ];
    for (mask, value) in transition_rules(32, PERSONALITY_BITS_ALLOWED) {
        rules.push(masked_eq_rule("personality", mask, value)?);
    }
    Ok(rules)
}

/// Denies `name` with EPERM when `arg0 & mask == value`.
fn masked_eq_rule(name: &str, mask: u64, value: u64) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(mask)
                .value_two(value)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?,
        ])
        .build()
}

/// `(mask, value)` pairs whose matches (`x & mask == value`, OR-ed) among `width`-bit values
/// are exactly those that are neither a combination of the `allowed` bits nor all ones.
/// `allowed` bits must not be neighbours (bit `width - 1` neighbours bit 0).
///
/// Why: a value outside that set has some other bit set and, not being all ones, some bit
/// clear. From a set bit outside `allowed`, walk up (wrapping) to the first clear bit `j`:
/// bit `j - 1` is set. If it is outside `allowed`, the rule "bit `j - 1` set, bit `j` clear"
/// matches; if it is allowed, the walk passed bit `j - 2` (set, and not allowed since allowed
/// bits are not neighbours), and "bits `j - 2` and `j - 1` set, bit `j` clear" matches. And
/// no rule matches an allowed value: each needs a bit outside `allowed` set and a bit clear.
/// One rule per bit, where covering the gaps with aligned blocks took 83.
fn transition_rules(width: u32, allowed: u32) -> Vec<(u64, u64)> {
    let bit = |i: u32| 1u64 << (i % width);
    let is_allowed = |i: u32| allowed & (1 << (i % width)) != 0;
    (0..width)
        .map(|i| {
            if is_allowed(i) {
                let below = i + width - 1;
                (bit(below) | bit(i) | bit(i + 1), bit(below) | bit(i))
            } else {
                (bit(i) | bit(i + 1), bit(i))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel filter decides for `name(arg0)`: the errno, or `None` when allowed.
    fn verdict(profile: &LinuxSeccomp, name: &str, arg0: u64) -> Option<u32> {
        let syscalls = profile.syscalls().as_ref().expect("rules");
        syscalls
            .iter()
            .filter(|rule| rule.names().iter().any(|n| n == name))
            .find(|rule| {
                rule.args().as_ref().is_none_or(|args| {
                    args.iter().all(|arg| match arg.op() {
                        LinuxSeccompOperator::ScmpCmpMaskedEq => {
                            arg0 & arg.value() == arg.value_two().unwrap_or(0)
                        }
                        LinuxSeccompOperator::ScmpCmpGt => arg0 > arg.value(),
                        other => panic!("operator {other:?} not modelled"),
                    })
                })
            })
            .and_then(|rule| rule.errno_ret())
    }

    #[test]
    fn denies_the_listed_calls_and_allows_the_rest() {
        let profile = default_profile().expect("profile");
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        for name in [
            "unshare",
            "setns",
            "mount",
            "keyctl",
            "bpf",
            "io_uring_setup",
        ] {
            assert_eq!(verdict(&profile, name, 0), Some(EPERM), "{name}");
        }
        assert_eq!(verdict(&profile, "clone3", 0), Some(ENOSYS));
        for name in ["read", "openat", "execve", "ptrace", "wait4"] {
            assert_eq!(verdict(&profile, name, 0), None, "{name}");
        }
    }

    #[test]
    fn clone_is_denied_only_with_a_namespace_flag() {
        let profile = default_profile().expect("profile");
        // What glibc passes for fork() and pthread_create().
        let fork = 0x0120_0011; // CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
        let thread = 0x003d_0f00;
        assert_eq!(verdict(&profile, "clone", fork), None);
        assert_eq!(verdict(&profile, "clone", thread), None);
        for flag in CLONE_NAMESPACE_FLAGS {
            assert_eq!(verdict(&profile, "clone", fork | flag), Some(EPERM));
        }
    }

    #[test]
    fn personality_allows_exactly_dockers_values() {
        let profile = default_profile().expect("profile");
        for &value in PERSONALITIES_ALLOWED {
            assert_eq!(verdict(&profile, "personality", value), None, "{value:#x}");
        }
        let denied = [
            1,
            7,
            9,
            0x0040_0000, // READ_IMPLIES_EXEC
            0x0004_0000, // ADDR_NO_RANDOMIZE
            0x0010_0000, // MMAP_PAGE_ZERO
            0x1_ffff,
            0x2_0001,
            0x2_0009,
            0x8000_0000,
            0xffff_fffe,
            0x1_0000_0000,
            u64::MAX,
        ];
        for value in denied {
            assert_eq!(
                verdict(&profile, "personality", value),
                Some(EPERM),
                "{value:#x}"
            );
        }
    }

    /// Every 16-bit value, with allowed bits as sparse as the real ones: the rules match
    /// exactly the values that are neither a combination of them nor all ones.
    #[test]
    fn transition_rules_deny_exactly_the_rest_of_16_bit_values() {
        for allowed in [0u32, 0x1, 0x8, 0x208, 0x4208, 0x5555] {
            let rules = transition_rules(16, allowed);
            for x in 0u64..=0xffff {
                let permitted = x & !u64::from(allowed) == 0 || x == 0xffff;
                let denied = rules.iter().any(|(m, v)| x & m == *v);
                assert_eq!(denied, !permitted, "allowed {allowed:#x}, value {x:#x}");
            }
        }
    }

    /// The real width and bits: every value with at most two bits set or clear, every
    /// combination of the allowed bits, and a spread of others.
    #[test]
    fn transition_rules_deny_exactly_the_rest_of_32_bit_values() {
        let rules = transition_rules(32, PERSONALITY_BITS_ALLOWED);
        assert_eq!(rules.len(), 32);
        let mut values = vec![0u64, 0xffff_ffff];
        for i in 0..32 {
            for j in 0..32 {
                let two = (1u64 << i) | (1u64 << j);
                values.extend([two, 0xffff_ffff & !two]);
            }
        }
        let mut x = 0x9e37_79b9u64;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            values.push(x >> 32);
        }
        for x in values {
            let permitted = PERSONALITIES_ALLOWED.contains(&x);
            let denied = rules.iter().any(|(m, v)| x & m == *v);
            assert_eq!(denied, !permitted, "{x:#x}");
        }
    }
}
