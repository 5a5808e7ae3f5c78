//! Step 10: the seccomp-bpf system-call allowlist of each class.
//!
//! Installed last, on every thread at once (`SECCOMP_FILTER_FLAG_TSYNC`).
//! A call outside the class's allowlist kills the whole process with
//! `SIGSYS` (`SECCOMP_RET_KILL_PROCESS`), which the supervisor reports as
//! a seccomp violation; in `log` mode the kernel logs it instead (`type=1326`
//! audit records in `dmesg`: how the lists were derived and are audited).
//!
//! * Workers ([`COMMON`]) may not create a thread or a process, open a
//!   socket, execute anything, trace or signal anyone, or touch
//!   namespaces, mounts, keys, BPF or modules ([`DENIED`], [`DENIED_WORKER`]).
//! * The CPU inference host adds [`THREADS`]: ONNX Runtime may start its
//!   thread pools when a model is loaded, so `clone` is allowed with
//!   `CLONE_THREAD` set only (a thread, never a process), and `clone3`
//!   (whose flags a filter cannot read) fails with `ENOSYS`, which makes
//!   the C library fall back to `clone`.
//! * The CUDA inference host adds [`CUDA`]: the driver's `ioctl`s on its
//!   devices and the calls it makes to find its way around `/proc` and
//!   `/sys` (a documented exception; see `docs/threat-model.md`).

use crate::{Class, Mode, State, unavailable};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// The system calls every child makes in steady state, with why.  Derived
/// by running the worker and integration suites with `--sandbox log` and
/// reading the kernel's seccomp audit records.  File system calls stay
/// (Landlock and the empty root refuse them with an error rather than a
/// kill); `tgkill` is allowed only towards this process ([`rules`]).
pub const COMMON: &[(&str, i64)] = &[
    // Ring waits and wake-ups, mutexes, thread joins.
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    // Pidfd polls on the supervisor (blocked ring calls).
    ("ppoll", libc::SYS_ppoll),
    // Logging to stderr, module and cache files.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("lseek", libc::SYS_lseek),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("openat", libc::SYS_openat),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("statx", libc::SYS_statx),
    ("mkdirat", libc::SYS_mkdirat),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("unlinkat", libc::SYS_unlinkat),
    // Memory: linear memories, compiled code (W^X flips), allocator.
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("mremap", libc::SYS_mremap),
    ("brk", libc::SYS_brk),
    ("membarrier", libc::SYS_membarrier),
    // Signals: wasmtime turns traps (SIGSEGV, SIGILL, SIGFPE) into results
    // with its handlers on an alternate stack; abort() raises SIGABRT.
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    // A sleep or futex wait interrupted by SIGSTOP resumes through it on
    // SIGCONT.
    ("restart_syscall", libc::SYS_restart_syscall),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    // Time: the epoch ticker's sleeps, watchdog and telemetry clocks (when
    // the vDSO falls back to the system call).
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    // Identity, randomness for std's hash maps, rseq bookkeeping.
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("getrandom", libc::SYS_getrandom),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    // The end.
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    #[cfg(target_arch = "x86_64")]
    ("poll", libc::SYS_poll),
    #[cfg(target_arch = "x86_64")]
    ("stat", libc::SYS_stat),
    #[cfg(target_arch = "x86_64")]
    ("lstat", libc::SYS_lstat),
    #[cfg(target_arch = "x86_64")]
    ("mkdir", libc::SYS_mkdir),
    #[cfg(target_arch = "x86_64")]
    ("rename", libc::SYS_rename),
    #[cfg(target_arch = "x86_64")]
    ("unlink", libc::SYS_unlink),
    #[cfg(target_arch = "x86_64")]
    ("rmdir", libc::SYS_rmdir),
];

/// Added for the inference host: threads (see the module docs).
pub const THREADS: &[(&str, i64)] = &[
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("getcpu", libc::SYS_getcpu),
    // Thread names only (`PR_SET_NAME`, `PR_GET_NAME`; see [`rules`]).
    ("prctl", libc::SYS_prctl),
    ("getdents64", libc::SYS_getdents64),
    ("readlinkat", libc::SYS_readlinkat),
    #[cfg(target_arch = "x86_64")]
    ("readlink", libc::SYS_readlink),
    ("sysinfo", libc::SYS_sysinfo),
    ("uname", libc::SYS_uname),
];

/// Added for the CUDA inference host: the driver (see the module docs).
pub const CUDA: &[(&str, i64)] = &[
    ("ioctl", libc::SYS_ioctl),
    ("mincore", libc::SYS_mincore),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    #[cfg(target_arch = "x86_64")]
    ("access", libc::SYS_access),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("getppid", libc::SYS_getppid),
    ("fsync", libc::SYS_fsync),
    ("ftruncate", libc::SYS_ftruncate),
    ("fallocate", libc::SYS_fallocate),
    ("memfd_create", libc::SYS_memfd_create),
    ("eventfd2", libc::SYS_eventfd2),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("pipe2", libc::SYS_pipe2),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("shmget", libc::SYS_shmget),
    ("shmat", libc::SYS_shmat),
    ("shmdt", libc::SYS_shmdt),
    ("shmctl", libc::SYS_shmctl),
];

/// Notable system calls no class may make (and so kill the process): no
/// programs, no processes, no network, no debugging of or by others, no
/// namespace, mount, module, BPF or key games.
pub const DENIED: &[(&str, i64)] = &[
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept4", libc::SYS_accept4),
    ("sendto", libc::SYS_sendto),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kill", libc::SYS_kill),
    ("tkill", libc::SYS_tkill),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("mount", libc::SYS_mount),
    ("chroot", libc::SYS_chroot),
    ("seccomp", libc::SYS_seccomp),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("memfd_create", libc::SYS_memfd_create),
    ("ioctl", libc::SYS_ioctl),
    ("setuid", libc::SYS_setuid),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    #[cfg(target_arch = "x86_64")]
    ("fork", libc::SYS_fork),
    #[cfg(target_arch = "x86_64")]
    ("vfork", libc::SYS_vfork),
];

/// Denied to workers on top of [`DENIED`]: no thread or process at all.
pub const DENIED_WORKER: &[(&str, i64)] = &[
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("prctl", libc::SYS_prctl),
];

/// The allowlist of a class.
pub fn allowlist(class: Class) -> Vec<(&'static str, i64)> {
    let mut calls: Vec<(&'static str, i64)> = COMMON.to_vec();
    if class != Class::Worker {
        calls.extend_from_slice(THREADS);
    }
    if class == Class::InferenceCuda {
        calls.extend_from_slice(CUDA);
    }
    calls
}

/// The calls a class must never be allowed.
pub fn denylist(class: Class) -> Vec<(&'static str, i64)> {
    let mut calls: Vec<(&'static str, i64)> = DENIED.to_vec();
    if class == Class::Worker {
        calls.extend_from_slice(DENIED_WORKER);
    }
    if class == Class::InferenceCuda {
        calls.retain(|(n, _)| !CUDA.iter().any(|(c, _)| c == n));
    }
    calls
}

/// The filter's rules: every allowed call unconditionally, except `tgkill`
/// (only towards this process: `abort()` raising `SIGABRT`), `clone` (only
/// with `CLONE_THREAD`) and `prctl` (only to name a thread).
pub fn rules(class: Class) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let err = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let mut rules = BTreeMap::new();
    for (name, nr) in allowlist(class) {
        if name == "prctl" {
            let mut chain = Vec::new();
            for op in [libc::PR_SET_NAME, libc::PR_GET_NAME] {
                let c =
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, op as u64)
                        .map_err(err)?;
                chain.push(SeccompRule::new(vec![c]).map_err(err)?);
            }
            rules.insert(nr, chain);
            continue;
        }
        let cond = match name {
            "tgkill" => Some(
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    u64::from(std::process::id()),
                )
                .map_err(err)?,
            ),
            "clone" => {
                let thread = libc::CLONE_THREAD as u64;
                Some(
                    SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::MaskedEq(thread),
                        thread,
                    )
                    .map_err(err)?,
                )
            }
            _ => None,
        };
        let chain = match cond {
            Some(c) => vec![SeccompRule::new(vec![c]).map_err(err)?],
            None => Vec::new(),
        };
        rules.insert(nr, chain);
    }
    Ok(rules)
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, String> {
    let filter =
        SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| format!("seccomp: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp: {e}"))
}

pub(crate) fn install(class: Class, mode: Mode) -> Result<State, String> {
    let Ok(arch) = TargetArch::try_from(std::env::consts::ARCH) else {
        return unavailable(
            mode,
            "seccomp",
            format!("no filter for the {} architecture", std::env::consts::ARCH),
        );
    };
    let mismatch = if mode == Mode::Log {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let mut programs = Vec::new();
    if class != Class::Worker {
        // clone3 → ENOSYS (the allowlist lets it through to this filter).
        // Installed first: the allowlist forbids seccomp(2) itself.
        let mut clone3 = BTreeMap::new();
        clone3.insert(libc::SYS_clone3, Vec::new());
        programs.push(program(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?);
    }
    programs.push(program(
        rules(class)?,
        mismatch,
        SeccompAction::Allow,
        arch,
    )?);
    for p in &programs {
        match seccompiler::apply_filter_all_threads(p) {
            Ok(()) => {}
            Err(seccompiler::Error::Seccomp(e))
                if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) =>
            {
                return unavailable(mode, "seccomp", format!("seccomp(2): {e}"));
            }
            Err(e) => return Err(format!("seccomp: {e}")),
        }
    }
    Ok(State::On)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_calls_are_not_allowed() {
        for class in [Class::Worker, Class::InferenceCpu, Class::InferenceCuda] {
            let allowed = allowlist(class);
            for (name, nr) in denylist(class) {
                assert!(
                    !allowed.iter().any(|(_, a)| *a == nr),
                    "{name} is both denied and allowed for {class:?}"
                );
            }
            let mut nrs: Vec<i64> = allowed.iter().map(|(_, n)| *n).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(
                nrs.len(),
                allowed.len(),
                "duplicate allowlist entry for {class:?}"
            );
        }
    }

    #[test]
    fn filters_compile_for_this_architecture() {
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        for class in [Class::Worker, Class::InferenceCpu, Class::InferenceCuda] {
            let prog = program(
                rules(class).unwrap(),
                SeccompAction::KillProcess,
                SeccompAction::Allow,
                arch,
            )
            .unwrap();
            assert!(!prog.is_empty() && prog.len() < 4096);
        }
    }
}
