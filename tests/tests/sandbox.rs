//! Death tests of the children's sandbox (Chromium `SANDBOX_DEATH_TEST`
//! style), on the real binaries and real kernel features.
//!
//! A test build of the worker and of the inference host tries, from
//! inside, what a process an agent or a model took over would try
//! (`lockstep_sandbox::escape`): open a file outside its allowlist, connect
//! a socket, `execve`, `ptrace`, `setuid(0)`, raise a capability, write a
//! cgroup file, start threads past `pids.max`, allocate past `memory.max`.
//! Each is refused (the escape exits with its "refused" code, naming the
//! error) or killed (the exact signal), as the threat model documents — and
//! each layer is also shown alone, with the layer in front of it turned
//! off, so that a layer that stopped working fails a test.  In a real run
//! the supervisor reports the class of each death and the run goes on with
//! the same results.
//!
//! A test whose kernel feature is missing (seccomp, Landlock, cgroup
//! controllers, root or user namespaces) prints `SKIPPED <test>: <why>`
//! and returns; on the project's machines they all run.

use lockstep_sandbox::cgroup::{Limits, Tree};
use lockstep_sandbox::escape::{REFUSED, SUCCEEDED};
use lockstep_sandbox::inspect::ProcessView;
use lockstep_supervisor::child::{Child, ChildSpec};
use lockstep_supervisor::failure::Cause;
use lockstep_supervisor::journal::{Entry, read_journal};
use lockstep_supervisor::reaper::{ChildExit, ExitKind, Reaper};
use lockstep_supervisor::run::{Run, default_address_space_limit};
use lockstep_supervisor::sim::InputOutcome;
use lockstep_tests::{TempDir, Watchdog, agent, bin, config, run_to};
use shm_protocol::WaitPolicy;
use shm_protocol::control::{Down, ExitCode, Role};
use shm_protocol::inference::InferenceCommand;
use shm_protocol::segment::SegmentConfig;
use shm_protocol::worker::{TickWork, WorkerCommand};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const SIGKILL: i32 = 9;
const SIGSYS: i32 = 31;

fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Why the sandbox cannot be tested here, if it cannot: it needs seccomp,
/// Landlock and either root or unprivileged user namespaces.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        return Some("kernel built without CONFIG_SECCOMP".into());
    }
    if let Err(why) = lockstep_sandbox::inspect::landlock_available() {
        return Some(why);
    }
    if !nix::unistd::geteuid().is_root() {
        let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if max == 0 {
            return Some("not root and user namespaces are disabled".into());
        }
    }
    None
}

/// A cgroup tree for directly spawned children, or why there is none.
fn tree() -> Result<Tree, String> {
    Tree::create().map_err(|e| e.to_string())
}

/// A child started the way the supervisor starts one, plus its reaper.
struct Spawned {
    child: Child,
    deaths: Receiver<ChildExit>,
    _reaper: Reaper,
}

fn spawn(
    role: Role,
    args: &[String],
    env: &[(&str, &str)],
    cgroup: Option<lockstep_sandbox::cgroup::Group>,
) -> Spawned {
    let (reaper, deaths) = Reaper::start().unwrap();
    let (name, program) = match role {
        Role::Worker => ("worker-0", bin("lockstep-worker")),
        Role::InferenceHost => ("inference-host", bin("lockstep-inference-host")),
    };
    let mut all_args: Vec<String> = args.to_vec();
    if let Some(g) = &cgroup {
        for d in g.join_dirs() {
            all_args.push("--cgroup".into());
            all_args.push(d.display().to_string());
        }
    }
    if role == Role::InferenceHost {
        all_args.extend(["--device".into(), "cpu".into()]);
    }
    let mut env_all = lockstep_supervisor::jail::passed_env();
    env_all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let spec = ChildSpec {
        role,
        name: name.into(),
        program,
        args: all_args.iter().map(Into::into).collect(),
        rings: SegmentConfig::default(),
        policy: WaitPolicy::ADAPTIVE,
        env: env_all,
        cgroup,
        hang_timeout: None,
    };
    let mut child = Child::spawn(&spec, &reaper).unwrap();
    child.handshake(Duration::from_secs(60)).unwrap();
    Spawned {
        child,
        deaths,
        _reaper: reaper,
    }
}

impl Spawned {
    /// Sends what fires the injection: tick 1's work to a worker, batch 1
    /// to the inference host.
    fn trigger(&mut self) {
        let cmd = match self.child.role() {
            Role::Worker => Down::Worker(WorkerCommand::Tick(TickWork {
                tick: 1,
                ..TickWork::default()
            })),
            Role::InferenceHost => Down::Inference(InferenceCommand::Infer {
                batch_id: 1,
                model_id: "none".into(),
                version: None,
                requests: Vec::new(),
                max_batch: 1,
            }),
        };
        let _ = self
            .child
            .endpoint()
            .send_msg(&cmd, Some(Instant::now() + Duration::from_secs(10)));
    }

    fn death(&self) -> ChildExit {
        self.deaths
            .recv_timeout(Duration::from_secs(60))
            .expect("the child's death is reported")
    }
}

/// How an escape attempt must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Refused with an error (the escape exits with `REFUSED`).
    Refused,
    /// Killed by this signal.
    Signal(i32),
    /// Killed by its cgroup's OOM killer.
    OomKilled,
}

/// Runs `attempt` in a fresh `role` child with `extra` sandbox arguments
/// (and a cgroup with `limits`, when cgroups work here) and checks how it
/// ends; returns the supervisor's classification of the death.
fn attempt(
    role: Role,
    attempt: &str,
    extra: &[&str],
    limits: Option<Limits>,
    want: Outcome,
) -> Cause {
    let directive = match role {
        Role::Worker => format!("escape=0@1:{attempt}"),
        Role::InferenceHost => format!("escape=1:{attempt}"),
    };
    let mut tree = limits.map(|_| tree().expect("cgroups (checked by the caller)"));
    let group = match (&mut tree, limits) {
        (Some(t), Some(l)) => Some(t.child(None, "escape", &l).unwrap()),
        _ => None,
    };
    let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    if group.is_none() {
        args.extend(["--disable".into(), "cgroup".into()]);
    }
    let mut w = spawn(role, &args, &[("LOCKSTEP_INJECT", &directive)], group);
    w.trigger();
    let death = w.death();
    let cause = Cause::from_death(&death, w.child.oom_kills());
    eprintln!("{role} {attempt} {extra:?}: {death} -> {cause}");
    let label = format!("{role} escape `{attempt}` with {extra:?}: {death} ({cause})");
    match want {
        Outcome::Refused => assert_eq!(death.kind, ExitKind::Exited(REFUSED), "{label}"),
        Outcome::Signal(s) => assert_eq!(
            death.kind,
            ExitKind::Signaled {
                signal: s,
                core: false
            },
            "{label}"
        ),
        Outcome::OomKilled => {
            assert_eq!(
                death.kind,
                ExitKind::Signaled {
                    signal: SIGKILL,
                    core: false
                },
                "{label}"
            );
            assert!(cause.is_memory(), "{label}");
        }
    }
    assert_ne!(death.kind, ExitKind::Exited(SUCCEEDED), "{label}");
    drop(w);
    cause
}

/// The full sandbox, each attempt from inside a worker: system calls
/// outside the allowlist are killed with exactly SIGSYS (classified as the
/// sandbox's doing); file access finds nothing (empty root, Landlock).
#[test]
fn worker_escapes_are_refused_or_killed() {
    let _w = Watchdog::new("worker_escapes", Duration::from_secs(300));
    if let Some(why) = unsupported() {
        return skip("worker_escapes_are_refused_or_killed", &why);
    }
    for (what, want) in [
        ("open", Outcome::Refused),
        ("cgroup-write", Outcome::Refused),
        ("connect", Outcome::Signal(SIGSYS)),
        ("execve", Outcome::Signal(SIGSYS)),
        ("ptrace", Outcome::Signal(SIGSYS)),
        ("setuid", Outcome::Signal(SIGSYS)),
        ("capset", Outcome::Signal(SIGSYS)),
        ("threads", Outcome::Signal(SIGSYS)),
    ] {
        let cause = attempt(Role::Worker, what, &[], None, want);
        if let Outcome::Signal(_) = want {
            assert_eq!(cause.class(), "sandbox", "{what}: {cause}");
            assert!(cause.to_string().contains("seccomp"), "{what}: {cause}");
        }
    }
    // Control: without the sandbox the same attempt succeeds, so it is the
    // sandbox that refuses it above.
    let mut w = spawn(
        Role::Worker,
        &["--sandbox".into(), "off".into()],
        &[("LOCKSTEP_INJECT", "escape=0@1:open")],
        None,
    );
    w.trigger();
    assert_eq!(w.death().kind, ExitKind::Exited(SUCCEEDED));
}

/// Each layer behind seccomp on its own, with the layers in front of it
/// turned off: Landlock refuses TCP, files and executables; the network
/// namespace alone leaves no route; the empty root alone has nothing to
/// open or execute; the unprivileged identity without capabilities cannot
/// trace the supervisor, set uid 0, raise a capability or write a cgroup
/// file; `pids.max` stops the threads.  If a layer stops working, the
/// attempt succeeds (or reaches the next layer's error no more) and the
/// test fails.
#[test]
fn layers_behind_seccomp_refuse_on_their_own() {
    let _w = Watchdog::new("layers_alone", Duration::from_secs(300));
    if let Some(why) = unsupported() {
        return skip("layers_behind_seccomp_refuse_on_their_own", &why);
    }
    let off = |layers: &[&str]| -> Vec<String> {
        layers
            .iter()
            .flat_map(|l| ["--disable".to_owned(), (*l).to_owned()])
            .collect()
    };
    let cases: &[(&str, &[&str])] = &[
        ("connect", &["seccomp"]),
        ("connect", &["seccomp", "landlock"]),
        ("open", &["seccomp"]),
        ("open", &["seccomp", "filesystem"]),
        ("execve", &["seccomp"]),
        ("execve", &["seccomp", "filesystem"]),
        ("ptrace", &["seccomp"]),
        ("setuid", &["seccomp"]),
        ("capset", &["seccomp"]),
        ("cgroup-write", &["seccomp"]),
        ("cgroup-write", &["seccomp", "filesystem"]),
        ("cgroup-write", &["seccomp", "filesystem", "landlock"]),
    ];
    let cgroups = tree();
    for (what, layers) in cases {
        let args = off(layers);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let limits = (*what == "cgroup-write" && cgroups.is_ok()).then(Limits::default);
        attempt(Role::Worker, what, &args, limits, Outcome::Refused);
    }
    match cgroups {
        Ok(_) => {
            let pids = Limits {
                pids: Some(16),
                ..Limits::default()
            };
            attempt(
                Role::Worker,
                "threads",
                &["--disable", "seccomp"],
                Some(pids),
                Outcome::Refused,
            );
        }
        Err(why) => skip("layers_behind_seccomp_refuse_on_their_own (pids.max)", &why),
    }
}

/// A worker that allocates past its cgroup's memory limit is killed by
/// that cgroup's OOM killer, and the supervisor classifies the death as
/// out-of-memory from the cgroup's own count, not from the signal.
#[test]
fn memory_past_the_cgroup_limit_is_an_oom_kill() {
    let _w = Watchdog::new("memory_limit", Duration::from_secs(300));
    if let Some(why) = unsupported() {
        return skip("memory_past_the_cgroup_limit_is_an_oom_kill", &why);
    }
    if let Err(why) = tree() {
        return skip("memory_past_the_cgroup_limit_is_an_oom_kill", &why);
    }
    let limits = Limits {
        memory: Some(96 << 20),
        ..Limits::default()
    };
    for role in [Role::Worker, Role::InferenceHost] {
        let cause = attempt(role, "memory", &[], Some(limits), Outcome::OomKilled);
        assert!(
            cause.to_string().contains("OOM killer of its cgroup"),
            "{cause}"
        );
    }
    // The same signal without a counted OOM kill is not called one.
    let mut w = spawn(
        Role::Worker,
        &["--disable".into(), "cgroup".into()],
        &[("LOCKSTEP_INJECT", "kill=0@1")],
        None,
    );
    w.trigger();
    let d = w.death();
    assert_eq!(
        Cause::from_death(&d, w.child.oom_kills()),
        Cause::Killed { signal: 9 }
    );
}

/// The inference host's sandbox: the same attempts, from the process that
/// loads a native library and runs models.
#[test]
fn inference_host_escapes_are_refused_or_killed() {
    let _w = Watchdog::new("host_escapes", Duration::from_secs(300));
    if let Some(why) = unsupported() {
        return skip("inference_host_escapes_are_refused_or_killed", &why);
    }
    for (what, want) in [
        ("open", Outcome::Refused),
        ("connect", Outcome::Signal(SIGSYS)),
        ("execve", Outcome::Signal(SIGSYS)),
        ("ptrace", Outcome::Signal(SIGSYS)),
        ("setuid", Outcome::Signal(SIGSYS)),
        ("capset", Outcome::Signal(SIGSYS)),
    ] {
        attempt(Role::InferenceHost, what, &[], None, want);
    }
    // The host may start threads (ONNX Runtime's pools), never processes:
    // threads run until the pids limit refuses one.
    match tree() {
        Ok(_) => {
            let pids = Limits {
                pids: Some(32),
                ..Limits::default()
            };
            attempt(
                Role::InferenceHost,
                "threads",
                &[],
                Some(pids),
                Outcome::Refused,
            );
        }
        Err(why) => skip(
            "inference_host_escapes_are_refused_or_killed (threads)",
            &why,
        ),
    }
}

/// A failed bring-up step exits with that step's own code, and the
/// supervisor names the step.
#[test]
fn a_failed_step_exits_with_its_own_code() {
    let _w = Watchdog::new("step_codes", Duration::from_secs(120));
    if let Some(why) = unsupported() {
        return skip("a_failed_step_exits_with_its_own_code", &why);
    }
    let cases: Vec<(Vec<&str>, ExitCode)> = vec![
        (
            vec!["--cgroup", "/nonexistent/lockstep"],
            ExitCode::JailCgroup,
        ),
        (
            vec!["--disable", "cgroup", "--uid", "0", "--gid", "0"],
            ExitCode::JailIdentity,
        ),
    ];
    for (args, code) in cases {
        if code == ExitCode::JailIdentity && !nix::unistd::geteuid().is_root() {
            skip(
                "a_failed_step_exits_with_its_own_code (identity)",
                "not root",
            );
            continue;
        }
        let (reaper, deaths) = Reaper::start().unwrap();
        let spec = ChildSpec {
            role: Role::Worker,
            name: "worker-0".into(),
            program: bin("lockstep-worker"),
            args: args.iter().map(Into::into).collect(),
            rings: SegmentConfig::default(),
            policy: WaitPolicy::ADAPTIVE,
            env: lockstep_supervisor::jail::passed_env(),
            cgroup: None,
            hang_timeout: None,
        };
        let mut child = Child::spawn(&spec, &reaper).unwrap();
        assert!(child.handshake(Duration::from_secs(30)).is_err());
        let death = deaths.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(death.kind, ExitKind::Exited(code as i32), "{death}");
        let cause = Cause::from_exit(&death);
        assert_eq!(cause.class(), "sandbox", "{cause}");
        assert!(cause.to_string().contains("sandbox step"), "{cause}");
        drop(reaper);
    }
}

/// Every child of a real run, seen from outside: not root, no capability
/// (bounding set included), `no_new_privs`, seccomp on every thread, its
/// own network, IPC, mount, UTS and cgroup namespaces, an empty root, the
/// manifest's cgroup limits; the run directory private.
#[test]
fn a_runs_children_are_unprivileged_namespaced_and_cgrouped() {
    let _w = Watchdog::new("children_jailed", Duration::from_secs(300));
    if let Some(why) = unsupported() {
        return skip(
            "a_runs_children_are_unprivileged_namespaced_and_cgrouped",
            &why,
        );
    }
    let cgroups = tree().err();
    let tmp = TempDir::new("sbx-children");
    let manifest = tmp.path().join("m.toml");
    let mlp = lockstep_tests::root().join(".deps/models/mlp.onnx");
    let models = if mlp.is_file() {
        format!(
            "\n[[models]]\nid = \"mlp\"\nversion = \"1\"\npath = \"{}\"\n",
            mlp.display()
        )
    } else {
        skip(
            "a_runs_children_are_unprivileged_namespaced_and_cgrouped (inference host)",
            "no model file",
        );
        String::new()
    };
    let sandbox = if cgroups.is_none() {
        "[sandbox]\n[sandbox.worker]\nmemory = \"1GiB\"\npids = 64\ncpu = 1.5\ncpu_weight = 50\n"
    } else {
        "[sandbox]\nmode = \"best-effort\"\n"
    };
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 3\nworkers = 2\n\n{sandbox}\n[[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 4\n{models}",
            agent("counter")
        ),
    )
    .unwrap();
    let cfg = config(&manifest, tmp.path().join("run"), 2);
    let mut run = Run::start(cfg).unwrap();
    run.tick().unwrap();
    let mut pids = run.worker_pids();
    pids.extend(run.inference_host_pid());
    assert_eq!(pids.len(), if models.is_empty() { 2 } else { 3 });
    for pid in pids {
        let v = ProcessView::read(pid).unwrap();
        eprintln!("{v:#?}");
        assert!(v.unprivileged(), "{v:?}");
        assert!(v.cap_bounding.chars().all(|c| c == '0'), "{v:?}");
        assert!(v.no_new_privs);
        assert_eq!(v.seccomp, 2);
        for ns in ["net", "ipc", "mnt", "uts", "cgroup"] {
            assert!(v.own_namespaces.iter().any(|n| n == ns), "{ns}: {v:?}");
        }
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            assert!(
                status.lines().any(|l| l == "Seccomp:\t2"),
                "every thread filtered"
            );
        }
        if cgroups.is_none() {
            let problems = v.problems();
            assert!(problems.is_empty(), "{problems:?}");
        }
    }
    if cgroups.is_none() {
        for pid in run.worker_pids() {
            let v = ProcessView::read(pid).unwrap();
            let of = |c: &str| {
                v.cgroups
                    .iter()
                    .find(|g| g.controller == c)
                    .unwrap()
                    .clone()
            };
            assert_eq!(of("memory").limit, Some(1 << 30));
            assert_eq!(of("pids").limit, Some(64));
            assert_eq!(of("cpu").limit, Some(1500));
            assert_eq!(of("cpu").weight, Some(50));
            assert!(
                of("memory")
                    .dir
                    .contains(&format!("lockstep-{}", std::process::id()))
            );
        }
    } else if let Some(why) = &cgroups {
        skip(
            "a_runs_children_are_unprivileged_namespaced_and_cgrouped (cgroups)",
            why,
        );
    }
    let problems = lockstep_sandbox::inspect::run_dir_problems(&tmp.path().join("run"));
    assert!(problems.is_empty(), "{problems:?}");
    run.finish().unwrap();
}

/// `lockstep doctor` on a running run: healthy with every layer on (exit
/// 0, JSON with every child); a widened run directory and a layer turned
/// off are reported (exit 1), and the layer is in the journal's header.
#[test]
fn doctor_reports_every_child_and_every_gap() {
    let _w = Watchdog::new("doctor", Duration::from_secs(300));
    if let Some(why) = unsupported() {
        return skip("doctor_reports_every_child_and_every_gap", &why);
    }
    if let Err(why) = tree() {
        return skip("doctor_reports_every_child_and_every_gap", &why);
    }
    let tmp = TempDir::new("sbx-doctor");
    let start = |name: &str, sandbox: &str| {
        let manifest = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "[run]\nseed = 1\nworkers = 2\n\n{sandbox}\n[[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 3\n",
                agent("counter")
            ),
        )
        .unwrap();
        let dir = tmp.path().join(name);
        let child = std::process::Command::new(bin("lockstep"))
            .args(["run", "--forever", "--workers", "2", "--run-dir"])
            .arg(&dir)
            .arg(&manifest)
            .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let guard = lockstep_tests::ChildGuard(Some(child));
        let t0 = Instant::now();
        while !dir.join("control.sock").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the run did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (dir, guard)
    };
    let doctor = |dir: &std::path::Path| {
        let out = std::process::Command::new(bin("lockstep"))
            .args(["doctor", "--json"])
            .arg(dir)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), json)
    };
    let stop = |dir: &std::path::Path, mut guard: lockstep_tests::ChildGuard| {
        let out = std::process::Command::new(bin("lockstep"))
            .args(["ctl"])
            .arg(dir)
            .arg("stop")
            .output()
            .unwrap();
        assert!(out.status.success());
        let status = guard.0.take().unwrap().wait().unwrap();
        assert!(status.success());
    };

    let (dir, guard) = start("healthy", "");
    let (code, json) = doctor(&dir);
    assert_eq!(code, Some(0), "{json:#}");
    let children = json["children"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{json:#}");
    for c in children {
        assert!(c["problems"].as_array().unwrap().is_empty(), "{c:#}");
        assert_eq!(c["sandbox"]["mode"], "strict");
        assert!(c["process"]["uid"][0].as_u64().unwrap() != 0);
    }
    // Widen one file: the doctor notices.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("journal.lsj"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, json) = doctor(&dir);
    assert_eq!(code, Some(1));
    let widened = json["run_dir_problems"].as_array().unwrap();
    assert!(
        widened
            .iter()
            .any(|p| p.as_str().unwrap().contains("journal.lsj")),
        "{json:#}"
    );
    stop(&dir, guard);

    let (dir, guard) = start("no-seccomp", "[sandbox]\ndisable = [\"seccomp\"]\n");
    let (code, json) = doctor(&dir);
    assert_eq!(code, Some(1));
    let off = json["layers_off"].as_array().unwrap();
    assert!(
        off.iter()
            .any(|l| l.as_str().unwrap().starts_with("seccomp")),
        "{json:#}"
    );
    for c in json["children"].as_array().unwrap() {
        let problems: Vec<&str> = c["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert!(
            problems.iter().any(|p| p.contains("seccomp")),
            "{problems:?}"
        );
    }
    stop(&dir, guard);
    let journal = read_journal(&dir.join("journal.lsj")).unwrap();
    match journal.entries.first() {
        Some(Entry::Header { sandbox_off, .. }) => {
            assert!(
                sandbox_off.iter().any(|l| l.starts_with("seccomp")),
                "{sandbox_off:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// In a real run, a worker killed by its sandbox or by its cgroup's OOM
/// killer is recovered like any other failure — the recovery log names the
/// class — and the run's journal is byte-identical to a run without the
/// attempt.
#[test]
fn a_run_recovers_from_escapes_with_identical_results() {
    let _w = Watchdog::new("escape_recovery", Duration::from_secs(600));
    if let Some(why) = unsupported() {
        return skip("a_run_recovers_from_escapes_with_identical_results", &why);
    }
    let cgroups = tree().err();
    let tmp = TempDir::new("sbx-recover");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 5\nworkers = 2\ncheckpoint_every = 4\n\n\
             [sandbox.worker]\nmemory = \"256MiB\"\n\n\
             [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 6\n",
            agent("counter")
        ),
    )
    .unwrap();
    let clean = run_to(config(&manifest, tmp.path().join("clean"), 2), 12);
    let mut cases = vec![("connect", "sandbox"), ("open", "exit")];
    match &cgroups {
        None => cases.push(("memory", "oom")),
        Some(why) => skip(
            "a_run_recovers_from_escapes_with_identical_results (memory)",
            why,
        ),
    }
    for (what, class) in cases {
        let mut cfg = config(&manifest, tmp.path().join(what), 2);
        if cgroups.is_some() {
            cfg.sandbox.disable(lockstep_sandbox::Layer::Cgroup, "test");
        }
        cfg.first_worker_env
            .push(("LOCKSTEP_INJECT".into(), format!("escape=3@6:{what}")));
        let dir = cfg.run_dir.clone();
        let mut run = Run::start(cfg).unwrap();
        while run.state().tick < 12 {
            run.tick().unwrap();
        }
        let logs = run.live_state("running").log;
        let stats = run.pool_stats();
        eprintln!("{what}: {logs:#?} {stats:?}");
        assert!(
            stats.by_cause.get(class).copied().unwrap_or(0) >= 1,
            "{what}: {stats:?}"
        );
        assert!(run.quarantined().is_empty(), "{what}");
        let sum = run.finish().unwrap();
        assert_eq!(sum.hash, clean.0, "{what}");
        let journal = std::fs::read(dir.join("journal.lsj")).unwrap();
        assert!(journal == clean.1, "{what}: journal differs");
    }
}

fn proc_field(pid: u32, file: &str, prefix: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in /proc/{pid}/{file}:\n{text}"))
        .to_owned()
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
        if std::env::var_os("LOCKSTEP_SANDBOX").is_none() {
            assert_eq!(
                cfg.sandbox.mode,
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
                !args.iter().any(|a| a == "--allow-read"),
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

/// An agent that, at its tenth step, takes 36 MiB of memory at once and
/// writes every page of it (so that the memory is really resident).  The
/// jump is far larger than anything else a worker's memory does between
/// two ticks, so four such agents (144 MiB) overflow a 120 MiB tenant at
/// that step, whatever the worker's own few MiB, while two (72 MiB) fit.
const HOG_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (global $steps (mut i32) (i32.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param i32) (result i32)
    (local $p i32) (local $end i32)
    (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
    (if (i32.ne (global.get $steps) (i32.const 10)) (then (return (i32.const 0))))
    (local.set $p (memory.grow (i32.const 576)))
    (if (i32.eq (local.get $p) (i32.const -1)) (then (return (i32.const 12))))
    (local.set $p (i32.mul (local.get $p) (i32.const 65536)))
    (local.set $end (i32.add (local.get $p) (i32.const 37748736)))
    (block $done
      (loop $touch
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (i32.store8 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br $touch)))
    (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#;

/// Tenant isolation at the process level: a tenant with
/// `isolation = "process"` runs in workers of its own, in its own cgroup.
/// When its agents together allocate past the tenant's memory limit, the
/// cgroup's OOM killer ends its worker; recovery finds no single culprit
/// (each agent alone fits) and quarantines the tenant's agents on that
/// worker — journaled decisions — while the other tenant's agents never
/// notice: their states equal those of a run whose hog tenant had room.
#[test]
fn a_tenant_past_its_memory_limit_is_stopped_alone() {
    let _w = Watchdog::new("tenant_hog", Duration::from_secs(600));
    if let Some(why) = unsupported() {
        return skip("a_tenant_past_its_memory_limit_is_stopped_alone", &why);
    }
    if let Err(why) = tree() {
        return skip("a_tenant_past_its_memory_limit_is_stopped_alone", &why);
    }
    let tmp = TempDir::new("sbx-tenant");
    let hog = tmp.path().join("hog.wasm");
    std::fs::write(&hog, wat::parse_str(HOG_WAT).unwrap()).unwrap();
    let ticks = 20;
    let run = |name: &str, hog_memory: &str| {
        let manifest = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "[run]\nseed = 9\nworkers = 1\ncheckpoint_every = 1000\n\n\
                 [[tenants]]\nname = \"good\"\n\n\
                 [[tenants]]\nname = \"hog\"\nisolation = \"process\"\nworkers = 1\nprocess_memory = \"{hog_memory}\"\n\n\
                 [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 4\ntenant = \"good\"\n\n\
                 [[agents]]\nname = \"hog\"\nmodule = \"{}\"\ncount = 4\ntenant = \"hog\"\nmemory = \"48MiB\"\n",
                agent("counter"),
                hog.display()
            ),
        )
        .unwrap();
        let cfg = config(&manifest, tmp.path().join(name), 1);
        let mut run = Run::start(cfg).unwrap();
        // Every tenant's workers are up: one shared, one for the hog tenant.
        assert_eq!(run.worker_pids().len(), 2);
        while run.state().tick < ticks {
            run.tick().unwrap();
        }
        let logs = run.live_state("running").log;
        let quarantined = run.quarantined().to_vec();
        let stats = run.pool_stats().clone();
        let (_, body) = run.checkpoint().unwrap();
        let tenant_of: std::collections::BTreeMap<u64, u32> = body
            .scheduler
            .agents
            .iter()
            .map(|(id, r)| (*id, r.tenant))
            .collect();
        let good: Vec<(u64, [u8; 32])> = body
            .agents
            .iter()
            .filter(|(id, _)| tenant_of.get(id) == Some(&0))
            .map(|(id, img)| (*id, img.state_hash()))
            .collect();
        run.finish().unwrap();
        (quarantined, stats, logs, good)
    };
    let (q_room, _, _, good_room) = run("room", "1GiB");
    assert!(q_room.is_empty(), "{q_room:?}");
    let (q_hog, stats, logs, good_hog) = run("hog", "120MiB");
    eprintln!("{logs:#?}\n{stats:?}");
    assert_eq!(q_hog.len(), 4, "every hog agent is stopped: {q_hog:?}");
    assert!(
        stats.by_cause.get("oom").copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("tenant hog exceeded the limits of its processes at tick 10")),
        "{logs:#?}"
    );
    // Two failures at the same tick start the search; the replacement
    // after the quarantine, without the hog's agents, does not fail.
    assert_eq!(stats.recoveries, 2, "{logs:#?}");
    assert_eq!(good_hog.len(), 4);
    assert_eq!(good_hog, good_room, "the good tenant noticed the hog");
}

/// A descriptor the supervisor leaked (opened without close-on-exec, as a
/// parent process might hand one down) does not survive the first step:
/// a jailed child holds only stdio, its segment and its pidfd on the
/// supervisor.
#[test]
fn inherited_descriptors_are_closed() {
    let _w = Watchdog::new("fds", Duration::from_secs(120));
    if let Some(why) = unsupported() {
        return skip("inherited_descriptors_are_closed", &why);
    }
    let tmp = TempDir::new("sbx-fds");
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    // An inheritable descriptor at a high number: the spawn maps the
    // child's own descriptors (segment, pidfd) onto low numbers, which
    // would replace a low-numbered one in the child whatever its sandbox
    // does.
    let opened = std::fs::File::open(&secret).unwrap();
    let file = rustix::io::fcntl_dupfd_cloexec(&opened, 200).unwrap();
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).unwrap();
    drop(opened);
    let fds_of = |args: &[String]| {
        let w = spawn(Role::Worker, args, &[], None);
        let pid = w.child.pid();
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        drop(w);
        fds
    };
    let jailed = fds_of(&["--disable".into(), "cgroup".into()]);
    let open = fds_of(&["--sandbox".into(), "off".into()]);
    drop(file);
    let leaked = |fds: &[String]| fds.iter().any(|f| f.contains("secret"));
    assert!(
        leaked(&open),
        "control: without the sandbox the descriptor is inherited: {open:?}"
    );
    assert!(!leaked(&jailed), "{jailed:?}");
    assert!(jailed.len() <= 5, "stdio, segment, pidfd: {jailed:?}");
}

/// A supervisor that is not root: its children create a user namespace
/// (mapping their own uid), then the same network, IPC, mount, UTS and
/// cgroup namespaces and empty root, and drop every capability they held
/// inside it.  Runs the real `lockstep` binary as uid 65534 (`setpriv`);
/// cgroups need a delegated tree, which an unprivileged user lacks here,
/// so that layer is turned off — and without the switch the run refuses to
/// start, naming it.
#[test]
fn an_unprivileged_supervisor_jails_its_children_in_a_user_namespace() {
    let _w = Watchdog::new("rootless", Duration::from_secs(180));
    let test = "an_unprivileged_supervisor_jails_its_children_in_a_user_namespace";
    if let Some(why) = unsupported() {
        return skip(test, &why);
    }
    if !nix::unistd::geteuid().is_root() {
        return skip(test, "needs root to switch to another uid for the test");
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        return skip(test, "no setpriv (util-linux) to run as another uid");
    };
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if max == 0 {
        return skip(
            test,
            "user namespaces are disabled (user.max_user_namespaces = 0)",
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("sbx-rootless");
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let module = shared.join("counter.wasm");
    std::fs::copy(agent("counter"), &module).unwrap();
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o644)).unwrap();
    let manifest = shared.join("m.toml");
    std::fs::write(
        &manifest,
        "[run]\nseed = 2\nworkers = 2\n\n[[agents]]\nname = \"c\"\nmodule = \"counter.wasm\"\ncount = 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o644)).unwrap();
    let lockstep = bin("lockstep");
    // The binaries must be reachable by uid 65534 by their paths (the
    // supervisor looks for its workers next to itself).  `test -x` asks
    // the kernel as that user; running one is no proof: setpriv starts a
    // program even from a directory closed to the user it becomes (a
    // checkout in a 0700 temporary directory).
    let reachable = [bin("lockstep"), bin("lockstep-worker")].iter().all(|b| {
        std::process::Command::new(setpriv)
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "test",
                "-x",
            ])
            .arg(b)
            .status()
            .is_ok_and(|s| s.success())
    });
    if !reachable {
        return skip(
            test,
            "uid 65534 cannot reach the built binaries (a directory on their path is closed to it)",
        );
    }
    let run = |dir: &str, extra: &[&str]| {
        std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&lockstep)
            .args([
                "run",
                "--forever",
                "--no-board",
                "--no-metrics",
                "--run-dir",
            ])
            .arg(shared.join(dir))
            .args(extra)
            .arg(&manifest)
            .env("HOME", &shared)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Without a delegated cgroup tree, strict mode refuses and says why.
    let refused = run("refused", &[]).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("not writable") && err.contains("disable"),
        "{err}"
    );

    let child = run("r", &["--sandbox-disable", "cgroup"]);
    let mut guard = lockstep_tests::ChildGuard(Some(child));
    let dir = shared.join("r");
    let t0 = Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = lockstep_supervisor::doctor::Report::collect(&dir).unwrap();
    assert_eq!(report.children.len(), 2);
    for c in &report.children {
        let p = c.process.as_ref().unwrap();
        assert!(p.unprivileged(), "{p:?}");
        assert!(p.cap_bounding.chars().all(|c| c == '0'), "{p:?}");
        for ns in ["user", "net", "ipc", "mnt", "uts", "cgroup"] {
            assert!(p.own_namespaces.iter().any(|n| n == ns), "{ns}: {p:?}");
        }
        assert_eq!(p.uid[0], 65534);
        assert_eq!(p.seccomp, 2);
        assert_eq!(p.mounts, Some(1), "the empty root only");
    }
    let out = std::process::Command::new(&lockstep)
        .arg("ctl")
        .arg(&dir)
        .arg("stop")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(guard.0.take().unwrap().wait().unwrap().success());
}

/// The CPU inference host binds its ONNX Runtime directory into its new
/// root wherever the directory lives, also below `/tmp`, where the new
/// root is staged (a checkout in `/tmp` must work).
#[test]
fn an_onnx_runtime_below_the_staging_directory_is_bound() {
    let _w = Watchdog::new("ort_in_tmp", Duration::from_secs(120));
    if let Some(why) = unsupported() {
        return skip("an_onnx_runtime_below_the_staging_directory_is_bound", &why);
    }
    let tmp = TempDir::new("sbx-ort");
    assert!(
        tmp.path().starts_with("/tmp"),
        "the test needs a directory below /tmp, got {}",
        tmp.path().display()
    );
    let ort = lockstep_tests::root().join(".deps/onnxruntime");
    let copy = tmp.path().join("onnxruntime");
    std::fs::create_dir_all(&copy).unwrap();
    let mut lib = None;
    for e in std::fs::read_dir(&ort).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libonnxruntime.so.") {
                lib = Some(copy.join(&name));
            }
        }
    }
    let lib = lib.expect("the pinned ONNX Runtime library");
    // Readable by the unprivileged uid the host drops to.
    let open = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(tmp.path(), 0o755);
    open(&copy, 0o755);
    open(&lib, 0o644);
    let mut host = spawn(
        Role::InferenceHost,
        &["--ort-lib".into(), lib.display().to_string()],
        &[],
        None,
    );
    assert!(host.child.ping(Duration::from_secs(10)).is_ok());
}
