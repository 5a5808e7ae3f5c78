//! The worker's process sandbox: defence in depth behind wasmtime.
//!
//! wasmtime confines each agent; this module confines the *worker process*
//! in case an engine bug lets an agent run native code.  [`apply`] is called
//! by `lockstep-worker` once bring-up is done (the segment is attached, the
//! handshake completed, the engine built) and, in this order:
//!
//! 1. probes the process (`/proc/self/status`: thread count, seccomp
//!    support) and creates the writable directories (`--allow-write`);
//! 2. sets `PR_SET_NO_NEW_PRIVS`;
//! 3. applies a **Landlock** ruleset to the still single-threaded process:
//!    every filesystem access is denied except reading (files, directory
//!    listings) beneath the `--allow-read` directories and reading, writing,
//!    creating, truncating, renaming and removing beneath the `--allow-write`
//!    directories (the compiled-module cache); TCP bind/connect and, on ABI
//!    ≥ 6, signals to and abstract sockets of processes outside the domain
//!    are denied as well.  Best effort across ABIs
//!    ([`landlock::CompatLevel::BestEffort`]); a partially enforced ruleset is
//!    reported with a warning, an unenforced one is an error unless the mode
//!    is [`Mode::BestEffort`];
//! 4. sets the **rlimits**: `RLIMIT_AS` (`--address-space-limit`, 0 = none),
//!    `RLIMIT_NOFILE` ([`MAX_OPEN_FILES`]) and `RLIMIT_CORE` 0;
//! 5. starts the worker's threads (the wasmtime epoch ticker): they inherit
//!    the Landlock domain and `no_new_privs`.  Landlock restricts only the
//!    calling thread on ABI < 8, which is why it goes before any thread
//!    exists;
//! 6. installs the **seccomp-bpf** allowlist ([`ALLOWED`]) on every thread
//!    (`SECCOMP_FILTER_FLAG_TSYNC`).  Any other system call kills the whole
//!    process with `SIGSYS` (`SECCOMP_RET_KILL_PROCESS`), which the
//!    supervisor's reaper reports as "killed by SIGSYS (seccomp violation)".
//!    No thread or process can be created once it is in force (`clone`,
//!    `clone3`, `fork`, `vfork`, `execve`, `execveat` are all absent), nor a
//!    socket opened ([`DENIED`] lists the notable absentees; a unit test
//!    checks none of them slipped into the allowlist).
//!
//! Modules are loaded later (`LoadModule`, from paths the supervisor names)
//! and so is the compiled-module cache (`Configure { cache_dir }`): the
//! supervisor passes their directories on the command line, and the
//! allowlist keeps the file system calls (`openat`, `statx`, `mkdir`,
//! `rename`, `unlink`, …) that Landlock then confines to those directories.
//!
//! [`Mode`]s: `strict` (the default: any layer that cannot be set up is
//! fatal, exit code 69 `Sandbox`), `best-effort` (a layer the kernel lacks —
//! Landlock, seccomp — is skipped with a warning; anything else is still
//! fatal), `log` (as strict, but a system call outside the allowlist is
//! logged by the kernel — `type=1326` audit records in `dmesg` — instead of
//! killing the process: this is how the allowlist is derived and audited)
//! and `off`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `RLIMIT_NOFILE` in the sandbox.  A worker holds its segment, a pidfd on
/// the supervisor and, briefly, a module or cache file.
pub const MAX_OPEN_FILES: u64 = 64;

/// How much of the sandbox to apply (shared with the supervisor, which
/// passes it as `--sandbox`).
pub use lockstep_common::SandboxMode as Mode;

/// What to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// How much.
    pub mode: Mode,
    /// `RLIMIT_AS` in bytes (0: unlimited).
    pub address_space_limit: u64,
    /// Directories whose files may be read (modules).
    pub allow_read: Vec<PathBuf>,
    /// Directories that may be read and written (the compiled-module cache);
    /// created if missing.
    pub allow_write: Vec<PathBuf>,
}

/// Why the sandbox could not be set up (the worker exits with code 69).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A resource limit could not be set.
    #[error("cannot set {resource} to {value}: {errno}")]
    Rlimit {
        /// The limit.
        resource: &'static str,
        /// The value asked for.
        value: u64,
        /// Cause (shown in the message, like every variant here: the worker
        /// reports the message alone, so it is not also a `source`).
        errno: nix::Error,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    /// A directory named on the command line is unusable.
    #[error("{what} directory {path}: {reason}")]
    Dir {
        /// `--allow-read` or `--allow-write`.
        what: &'static str,
        /// The directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Threads already run, so Landlock would not cover them.
    #[error("the process already runs {0} threads; Landlock must be applied while it has only one")]
    Threads(usize),
    /// The Landlock ruleset could not be built or applied.
    #[error("Landlock: {0}")]
    Landlock(String),
    /// The kernel does not enforce Landlock.
    #[error(
        "Landlock is not enforced by this kernel ({0}); use --sandbox best-effort to run without it"
    )]
    LandlockUnsupported(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// The kernel or architecture has no seccomp-bpf.
    #[error("seccomp-bpf is not available ({0}); use --sandbox best-effort to run without it")]
    SeccompUnsupported(String),
}

/// How far the Landlock layer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landlock {
    /// Every requested restriction is enforced.
    Full,
    /// Only those the kernel's ABI knows.
    Partial,
    /// None (best-effort mode on a kernel without Landlock, or mode off).
    None,
}

/// What [`apply`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The mode.
    pub mode: Mode,
    /// The Landlock layer.
    pub landlock: Landlock,
    /// Whether the seccomp filter is installed.
    pub seccomp: bool,
    /// `RLIMIT_AS` set (0: none).
    pub address_space_limit: u64,
}

/// Applies the sandbox (see the module docs for the order).  `start_threads`
/// must start every thread the worker will ever need: no thread can be
/// created once the seccomp filter is in force.  With [`Mode::Off`] it only
/// calls `start_threads`.
pub fn apply(cfg: &Config, start_threads: impl FnOnce()) -> Result<Report, SandboxError> {
    if cfg.mode == Mode::Off {
        start_threads();
        tracing::warn!("worker sandbox disabled (--sandbox off)");
        return Ok(Report {
            mode: cfg.mode,
            landlock: Landlock::None,
            seccomp: false,
            address_space_limit: 0,
        });
    }
    let probe = Probe::read();
    if let Some(n) = probe.threads
        && n != 1
    {
        return Err(SandboxError::Threads(n));
    }
    for dir in &cfg.allow_write {
        std::fs::create_dir_all(dir).map_err(|e| SandboxError::Dir {
            what: "--allow-write",
            path: dir.display().to_string(),
            reason: format!("cannot create: {e}"),
        })?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let landlock = restrict_filesystem(cfg)?;
    set_rlimits(cfg)?;
    start_threads();
    let seccomp = install_seccomp(cfg.mode, probe.seccomp)?;
    let report = Report {
        mode: cfg.mode,
        landlock,
        seccomp,
        address_space_limit: cfg.address_space_limit,
    };
    tracing::debug!(?report, "worker sandbox in force");
    Ok(report)
}

/// What `/proc/self/status` tells before Landlock hides it.
#[derive(Debug, Default)]
struct Probe {
    threads: Option<usize>,
    /// `Some(false)` when the kernel was built without seccomp.
    seccomp: Option<bool>,
}

impl Probe {
    fn read() -> Self {
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return Self::default();
        };
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        Self {
            threads: field("Threads").and_then(|v| v.parse().ok()),
            seccomp: Some(field("Seccomp").is_some()),
        }
    }
}

fn set_rlimits(cfg: &Config) -> Result<(), SandboxError> {
    use nix::sys::resource::{Resource, setrlimit};
    let set = |resource, name, value: u64| {
        setrlimit(resource, value, value).map_err(|errno| SandboxError::Rlimit {
            resource: name,
            value,
            errno,
        })
    };
    if cfg.address_space_limit > 0 {
        set(Resource::RLIMIT_AS, "RLIMIT_AS", cfg.address_space_limit)?;
    }
    set(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", MAX_OPEN_FILES)?;
    set(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    Ok(())
}

/// The newest Landlock ABI this sandbox was written and tested against.
const LANDLOCK_ABI: landlock::ABI = landlock::ABI::V7;

fn restrict_filesystem(cfg: &Config) -> Result<Landlock, SandboxError> {
    use landlock::{
        Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
        Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    };
    let ll = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = read
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::RemoveFile
        | AccessFs::RemoveDir
        | AccessFs::Truncate;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .create()
        .map_err(ll)?;
    for (what, dirs, access) in [
        ("--allow-read", &cfg.allow_read, read),
        ("--allow-write", &cfg.allow_write, write),
    ] {
        for dir in dirs {
            if what == "--allow-read" && !dir.exists() {
                // Nothing to read there; a module that appears later is
                // refused with EACCES (and a hint, see `Worker::load_module`).
                tracing::warn!(dir = %dir.display(), "--allow-read directory does not exist; ignored");
                continue;
            }
            check_dir(what, dir)?;
            let fd = PathFd::new(dir).map_err(|e| SandboxError::Dir {
                what,
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(ll)?;
        }
    }
    let status = ruleset.restrict_self().map_err(ll)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(Landlock::Full),
        RulesetStatus::PartiallyEnforced => {
            tracing::warn!(
                landlock = ?status.landlock,
                "Landlock is only partially enforced by this kernel (older ABI)"
            );
            Ok(Landlock::Partial)
        }
        RulesetStatus::NotEnforced => {
            let why = format!("{:?}", status.landlock);
            if cfg.mode == Mode::BestEffort {
                tracing::warn!(landlock = %why, "Landlock is NOT enforced: the worker's file system access is unrestricted");
                Ok(Landlock::None)
            } else {
                Err(SandboxError::LandlockUnsupported(why))
            }
        }
    }
}

fn check_dir(what: &'static str, dir: &Path) -> Result<(), SandboxError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SandboxError::Dir {
            what,
            path: dir.display().to_string(),
            reason: "not a directory".into(),
        }),
        Err(e) => Err(SandboxError::Dir {
            what,
            path: dir.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The system calls a worker makes in steady state, with why.  Derived by
/// running the worker and integration suites with `--sandbox log` (see the
/// module docs and ARCHITECTURE.md, "Worker sandbox") and reading the
/// kernel's seccomp audit records; file system calls are confined by
/// Landlock.  `tgkill` is allowed only towards this process (see
/// [`filter_rules`]).
pub const ALLOWED: &[(&str, i64)] = &[
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

/// Notable system calls that are *not* allowed (and so kill the process):
/// no new processes or threads, no programs, no network, no debugging of
/// or by others, no namespace, mount, module, BPF or key games.
pub const DENIED: &[(&str, i64)] = &[
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
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
    ("prctl", libc::SYS_prctl),
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

/// The filter's rules: every [`ALLOWED`] call unconditionally, except
/// `tgkill`, allowed only with this process as its thread group (`abort()`
/// raising `SIGABRT` at itself).
pub fn filter_rules() -> Result<BTreeMap<i64, Vec<seccompiler::SeccompRule>>, SandboxError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let err = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());
    let mut rules = BTreeMap::new();
    for &(name, nr) in ALLOWED {
        let chain = if name == "tgkill" {
            let own = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(std::process::id()),
            )
            .map_err(err)?;
            vec![SeccompRule::new(vec![own]).map_err(err)?]
        } else {
            Vec::new()
        };
        rules.insert(nr, chain);
    }
    Ok(rules)
}

fn install_seccomp(mode: Mode, supported: Option<bool>) -> Result<bool, SandboxError> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let unsupported = |why: String| {
        if mode == Mode::BestEffort {
            tracing::warn!(reason = %why, "seccomp is NOT in force: the worker may make any system call");
            Ok(false)
        } else {
            Err(SandboxError::SeccompUnsupported(why))
        }
    };
    if supported == Some(false) {
        return unsupported("the kernel was built without CONFIG_SECCOMP".into());
    }
    let arch = match TargetArch::try_from(std::env::consts::ARCH) {
        Ok(a) => a,
        Err(_) => {
            return unsupported(format!(
                "no filter for the {} architecture",
                std::env::consts::ARCH
            ));
        }
    };
    let mismatch = if mode == Mode::Log {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let filter = SeccompFilter::new(filter_rules()?, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    match seccompiler::apply_filter_all_threads(&program) {
        Ok(()) => Ok(true),
        Err(seccompiler::Error::Seccomp(e)) if e.raw_os_error() == Some(libc::ENOSYS) => {
            unsupported(format!("seccomp(2): {e}"))
        }
        Err(e) => Err(SandboxError::Seccomp(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_calls_are_not_allowed() {
        for (name, nr) in DENIED {
            assert!(
                !ALLOWED.iter().any(|(_, a)| a == nr),
                "{name} is both denied and allowed"
            );
        }
        let mut nrs: Vec<i64> = ALLOWED.iter().map(|(_, n)| *n).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), ALLOWED.len(), "duplicate allowlist entry");
    }

    #[test]
    fn filter_compiles_for_this_architecture() {
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let filter = seccompiler::SeccompFilter::new(
            filter_rules().unwrap(),
            seccompiler::SeccompAction::KillProcess,
            seccompiler::SeccompAction::Allow,
            arch,
        )
        .unwrap();
        let prog: seccompiler::BpfProgram = filter.try_into().unwrap();
        assert!(!prog.is_empty() && prog.len() < 4096);
    }

    #[test]
    fn modes_parse_from_the_command_line() {
        use clap::ValueEnum;
        for m in [Mode::Strict, Mode::BestEffort, Mode::Log, Mode::Off] {
            assert_eq!(Mode::from_str(m.as_str(), false).unwrap(), m);
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
    }
}
