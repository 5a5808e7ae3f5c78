//! Death tests of the worker's process sandbox (Chromium `SANDBOX_DEATH_TEST`
//! style): a forbidden system call kills the worker with exactly `SIGSYS`
//! and the supervisor says "seccomp violation"; Landlock denies files
//! outside the allowed directories; the rlimits are in force; and real runs
//! (module cache included) work under the strict sandbox.
//!
//! A test whose kernel feature is missing prints why and returns; on the
//! project's machines (seccomp, Landlock ABI ≥ 1) they all run.

use lockstep_supervisor::child::{Child, ChildSpec};
use lockstep_supervisor::reaper::{ChildExit, ExitKind, Reaper};
use lockstep_supervisor::run::{Run, default_address_space_limit};
use lockstep_supervisor::sim::InputOutcome;
use lockstep_tests::{TempDir, Watchdog, agent, bin, config};
use shm_protocol::WaitPolicy;
use shm_protocol::control::{Down, ExitCode, Role, Up};
use shm_protocol::segment::SegmentConfig;
use shm_protocol::worker::{TickWork, WorkerCommand};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const SIGSYS: i32 = 31;
const SIGABRT: i32 = 6;
/// Exit codes of the `read=` injection (`lockstep_worker::inject`).
const READ_DENIED: i32 = 91;
const READ_ALLOWED: i32 = 92;

/// Why the kernel cannot run seccomp tests, if it cannot.
fn no_seccomp() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    if status.lines().any(|l| l.starts_with("Seccomp:")) {
        None
    } else {
        Some("kernel built without CONFIG_SECCOMP (no `Seccomp:` in /proc/self/status)".into())
    }
}

/// The kernel's Landlock ABI version (0: none).
fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the
    // call only returns the ABI version (or an error); it reads no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// A worker started the way the supervisor starts one, plus its reaper.
struct Spawned {
    child: Child,
    deaths: Receiver<ChildExit>,
    _reaper: Reaper,
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let (reaper, deaths) = Reaper::start().unwrap();
    let spec = ChildSpec {
        role: Role::Worker,
        name: "worker-0".into(),
        program: bin("lockstep-worker"),
        args: args.iter().map(Into::into).collect(),
        rings: SegmentConfig::default(),
        policy: WaitPolicy::ADAPTIVE,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        hang_timeout: None,
    };
    let mut child = Child::spawn(&spec, &reaper).unwrap();
    child.handshake(Duration::from_secs(30)).unwrap();
    Spawned {
        child,
        deaths,
        _reaper: reaper,
    }
}

impl Spawned {
    /// A ping round trip: the worker has applied its sandbox (it does so
    /// before serving its first command).
    fn ready(&mut self) {
        self.child.ping(Duration::from_secs(30)).unwrap();
    }

    /// Sends the (empty) work of `tick`, which fires tick-based injections.
    fn tick(&mut self, tick: u64) {
        let work = TickWork {
            tick,
            ..TickWork::default()
        };
        let _ = self.child.endpoint().send_msg(
            &Down::Worker(WorkerCommand::Tick(work)),
            Some(Instant::now() + Duration::from_secs(10)),
        );
    }

    fn death(&self) -> ChildExit {
        self.deaths
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker's death is reported")
    }
}

/// The death test proper: a worker that makes a forbidden system call
/// (`socket(2)`) is killed by the kernel with exactly SIGSYS, and the
/// supervisor's reaper reports a seccomp violation.  Without the sandbox the
/// same injection survives the call and aborts instead (SIGABRT), so it is
/// the filter that kills.
#[test]
fn forbidden_syscall_kills_the_worker_with_sigsys() {
    let _w = Watchdog::new("sandbox_sigsys", Duration::from_secs(120));
    if let Some(why) = no_seccomp() {
        return skip("forbidden_syscall_kills_the_worker_with_sigsys", &why);
    }
    let inject = [("LOCKSTEP_INJECT", "syscall=0@1")];
    let mut w = spawn(&["--sandbox", "strict"], &inject);
    w.ready();
    w.tick(1);
    let death = w.death();
    eprintln!("{death}");
    assert_eq!(
        death.kind,
        ExitKind::Signaled {
            signal: SIGSYS,
            core: false
        },
        "{death}"
    );
    assert!(death.to_string().contains("SIGSYS"), "{death}");
    assert!(death.to_string().contains("seccomp violation"), "{death}");

    // Control: no sandbox, same call → it returns, the injection aborts.
    let mut w = spawn(&["--sandbox", "off"], &inject);
    w.ready();
    w.tick(1);
    let death = w.death();
    assert_eq!(
        death.kind,
        ExitKind::Signaled {
            signal: SIGABRT,
            core: false
        },
        "{death}"
    );
}

/// In a real run, an agent whose worker makes a forbidden system call at
/// the same tick every time is a poison agent: the worker dies by SIGSYS
/// (the recovery log says "seccomp violation"), the agent is found by
/// bisection and quarantined, and the run goes on.
#[test]
fn seccomp_death_in_a_run_is_recovered_and_quarantined() {
    let _w = Watchdog::new("sandbox_poison", Duration::from_secs(300));
    if let Some(why) = no_seccomp() {
        return skip("seccomp_death_in_a_run_is_recovered_and_quarantined", &why);
    }
    let tmp = TempDir::new("sbx-poison");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 5\nworkers = 2\ncheckpoint_every = 4\n\n\
             [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 6\n",
            agent("counter")
        ),
    )
    .unwrap();
    let mut cfg = config(&manifest, tmp.path().join("run"), 2);
    cfg.worker_env
        .push(("LOCKSTEP_INJECT".into(), "syscall=3@6".into()));
    let mut run = Run::start(cfg).unwrap();
    while run.state().tick < 10 {
        run.tick().unwrap();
    }
    assert_eq!(run.quarantined(), [3]);
    let logs = run.live_state("running").log;
    assert!(
        logs.iter()
            .any(|l| l.contains("stopped by its sandbox: killed by SIGSYS")),
        "{logs:#?}"
    );
    run.finish().unwrap();
}

/// Landlock: a worker reads nothing outside its `--allow-read` directories
/// (EACCES), but does read inside them.
#[test]
fn landlock_denies_files_outside_the_allowed_directories() {
    let _w = Watchdog::new("sandbox_landlock", Duration::from_secs(120));
    if landlock_abi() < 1 {
        return skip(
            "landlock_denies_files_outside_the_allowed_directories",
            "the kernel does not support Landlock",
        );
    }
    let allowed = TempDir::new("sbx-allowed");
    let outside = TempDir::new("sbx-outside");
    let inside_file = allowed.path().join("inside.txt");
    let outside_file = outside.path().join("outside.txt");
    std::fs::write(&inside_file, b"in").unwrap();
    std::fs::write(&outside_file, b"out").unwrap();
    let read = |file: &Path, mode: &str| {
        let mut w = spawn(
            &[
                "--sandbox",
                mode,
                "--allow-read",
                allowed.path().to_str().unwrap(),
            ],
            &[
                ("LOCKSTEP_INJECT", "read=0@1"),
                ("LOCKSTEP_INJECT_READ", file.to_str().unwrap()),
            ],
        );
        w.ready();
        w.tick(1);
        w.death().kind
    };
    assert_eq!(read(&outside_file, "strict"), ExitKind::Exited(READ_DENIED));
    if Path::new("/etc/hostname").is_file() {
        assert_eq!(
            read(Path::new("/etc/hostname"), "strict"),
            ExitKind::Exited(READ_DENIED)
        );
    }
    assert_eq!(read(&inside_file, "strict"), ExitKind::Exited(READ_ALLOWED));
    // Control: the same file is readable without the sandbox.
    assert_eq!(read(&outside_file, "off"), ExitKind::Exited(READ_ALLOWED));
}

fn proc_field(pid: u32, file: &str, prefix: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in /proc/{pid}/{file}:\n{text}"))
        .to_owned()
}

/// The rlimits, no_new_privs and the seccomp filter (on every thread) are in
/// force in a worker that serves commands.
#[test]
fn rlimits_and_filters_are_in_force() {
    let _w = Watchdog::new("sandbox_limits", Duration::from_secs(120));
    let limit: u64 = 12 << 30;
    let mut w = spawn(
        &[
            "--sandbox",
            "strict",
            "--address-space-limit",
            &limit.to_string(),
        ],
        &[],
    );
    w.ready();
    let pid = w.child.pid();
    let words = |l: String| -> Vec<String> { l.split_whitespace().map(str::to_owned).collect() };
    let as_line = words(proc_field(pid, "limits", "Max address space"));
    assert_eq!(as_line[3..5], [limit.to_string(), limit.to_string()]);
    let files = words(proc_field(pid, "limits", "Max open files"));
    assert_eq!(files[3..5], ["64", "64"]);
    let core = words(proc_field(pid, "limits", "Max core file size"));
    assert_eq!(core[4..6], ["0", "0"]);
    assert_eq!(
        words(proc_field(pid, "status", "NoNewPrivs:"))[1],
        "1",
        "no_new_privs"
    );
    if no_seccomp().is_none() {
        // Every thread (main and epoch ticker) runs under the filter.
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(tasks.len() >= 2, "main and epoch threads: {tasks:?}");
        for t in tasks {
            let mode = words(proc_field(pid, &format!("task/{t}/status"), "Seccomp:"));
            assert_eq!(mode[1], "2", "thread {t} is not in filter mode");
        }
    } else {
        skip(
            "rlimits_and_filters_are_in_force (seccomp part)",
            "no seccomp",
        );
    }
    let Spawned {
        child,
        deaths,
        _reaper,
    } = w;
    child.shutdown(Duration::from_secs(10)).unwrap();
    let death = deaths.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(death.kind.is_clean(), "{death}");
}

/// A layer that cannot be set up ends the worker with code 69 (`Sandbox`),
/// and the supervisor is told why.
#[test]
fn sandbox_setup_failure_exits_with_code_69() {
    let _w = Watchdog::new("sandbox_69", Duration::from_secs(120));
    let tmp = TempDir::new("sbx-69");
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut w = spawn(
        &[
            "--sandbox",
            "strict",
            "--allow-read",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let msg = w
        .child
        .endpoint()
        .recv_msg::<Up>(Some(Instant::now() + Duration::from_secs(30)));
    match msg {
        Ok(Up::Error { message }) => {
            assert!(message.contains("sandbox"), "{message}");
            assert!(message.contains("not a directory"), "{message}");
        }
        other => panic!("expected the sandbox error, got {other:?}"),
    }
    let death = w.death();
    assert_eq!(
        death.kind,
        ExitKind::Exited(ExitCode::Sandbox as i32),
        "{death}"
    );
    assert!(
        death.to_string().contains("sandbox setup failed"),
        "{death}"
    );
}

/// Runs under the strict sandbox as the supervisor configures it: the
/// workers get the computed address-space limit and no file-system access
/// at all (modules reach them over their ring, compiled by the supervisor's
/// compile step), so a module anywhere the supervisor can read is spawned
/// and upgraded; the supervisor's compiled-module cache makes a second run
/// reproduce the first.
#[test]
fn supervised_runs_work_under_the_strict_sandbox() {
    let _w = Watchdog::new("sandbox_run", Duration::from_secs(300));
    let tmp = TempDir::new("sbx-run");
    let elsewhere = TempDir::new("sbx-elsewhere");
    std::fs::copy(agent("counter"), elsewhere.path().join("counter2.wasm")).unwrap();
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 8\nworkers = 2\n\n\
             [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 4\nmemory = \"1MiB\"\n\n\
             [[agents]]\nname = \"ping\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"tally\"\nmodule = \"{}\"\n",
            agent("counter"),
            agent("ping"),
            agent("tally")
        ),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let run_once = |name: &str| {
        let mut cfg = config(&manifest, tmp.path().join(name), 2);
        cfg.module_cache = Some(cache.clone());
        if std::env::var_os("LOCKSTEP_WORKER_SANDBOX").is_none() {
            assert_eq!(
                cfg.worker_sandbox.mode,
                lockstep_common::SandboxMode::Strict,
                "the default is strict"
            );
        }
        let want_as = default_address_space_limit(&cfg.manifest);
        let mut run = Run::start(cfg).unwrap();
        for pid in run.worker_pids() {
            let line = proc_field(pid, "limits", "Max address space");
            assert!(line.contains(&want_as.to_string()), "{line}");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            assert!(
                !args
                    .iter()
                    .any(|a| a == "--allow-read" || a == "--allow-write"),
                "workers need no file access: {args:?}"
            );
        }
        let id = run
            .spawn_agent(
                "elsewhere",
                &elsewhere.path().join("counter2.wasm"),
                "default",
            )
            .unwrap();
        assert!(id > 0);
        while run.state().tick < 30 {
            run.tick().unwrap();
        }
        assert!(run.quarantined().is_empty());
        let outcome = run
            .upgrade("counter-0", &elsewhere.path().join("counter2.wasm"))
            .unwrap();
        assert!(matches!(&outcome, InputOutcome::Applied(_)), "{outcome:?}");
        run.tick().unwrap();
        run.finish().unwrap().hash
    };
    let first = run_once("a");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "lsmod"))
        .collect();
    assert!(
        !cached.is_empty(),
        "the supervisor wrote no compiled module to {}",
        cache.display()
    );
    // The second run loads from the cache and reproduces the first run's
    // hash.
    assert_eq!(run_once("b"), first);
}
