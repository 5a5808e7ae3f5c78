//! The process skeleton: the supervisor starts real worker and inference
//! host processes, handshakes, pings, shuts them down, and reports deaths.

use lockstep_supervisor::cluster::{Cluster, ClusterConfig};
use lockstep_supervisor::reaper::ExitKind;
use lockstep_tests::{ChildGuard, TempDir, Watchdog, bin};
use shm_protocol::control::{ExitCode, Role};
use std::process::Command;
use std::time::{Duration, Instant};

fn config(workers: usize) -> ClusterConfig {
    // `locate_binary` looks in target/<profile>, next to target/<profile>/deps.
    let mut cfg = ClusterConfig::new(workers).expect("binaries next to the test executable");
    cfg.worker_bin = bin("lockstep-worker");
    cfg.host_bin = bin("lockstep-inference-host");
    cfg
}

#[test]
fn start_ping_and_clean_shutdown() {
    let _w = Watchdog::new("start_ping_shutdown", Duration::from_secs(60));
    let mut cluster = Cluster::start(&config(3)).unwrap();
    let roles: Vec<Role> = cluster.children().iter().map(|c| c.role()).collect();
    assert_eq!(
        roles,
        [
            Role::Worker,
            Role::Worker,
            Role::Worker,
            Role::InferenceHost
        ]
    );
    for c in cluster.children() {
        let hello = c.hello().unwrap();
        assert_eq!(hello.pid, c.pid());
        assert_eq!(hello.name, c.name());
    }
    let reports = cluster.ping_all(200).unwrap();
    assert!(reports.iter().all(|r| r.rtts.len() == 200));
    let pids: Vec<u32> = cluster.children().iter().map(|c| c.pid()).collect();
    let exits = cluster.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(exits.len(), 4);
    assert!(
        exits.iter().all(|e| e.kind == ExitKind::Exited(0)),
        "{exits:?}"
    );
    // Reaped: the pids no longer exist (not even as zombies).
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} not reaped"
        );
    }
}

/// SIGKILL one child: the reaper reports which one and how within 100 ms,
/// and the others keep working and shut down cleanly.
#[test]
fn sigkilled_child_is_reported_quickly() {
    let _w = Watchdog::new("sigkill_report", Duration::from_secs(60));
    let mut cluster = Cluster::start(&config(3)).unwrap();
    let victim = &cluster.children()[1];
    let (name, pid) = (victim.name().to_owned(), victim.pid());
    let t0 = Instant::now();
    victim.kill().unwrap();
    let death = cluster
        .wait_death(Duration::from_secs(5))
        .expect("death reported");
    let latency = death.at.saturating_duration_since(t0);
    eprintln!("death of {name} noticed after {latency:?}: {death}");
    assert_eq!((death.name.as_str(), death.pid), (name.as_str(), pid));
    assert_eq!(
        death.kind,
        ExitKind::Signaled {
            signal: 9,
            core: false
        }
    );
    assert!(death.to_string().contains("SIGKILL"), "{death}");
    assert!(
        latency < Duration::from_millis(100),
        "noticed after {latency:?}"
    );
    // The ring to the dead child reports PeerGone instead of hanging.
    let err = cluster.children_mut()[1]
        .ping(Duration::from_secs(5))
        .unwrap_err();
    let source = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        source.contains(&format!("peer process {pid} exited")),
        "{err}: {source}"
    );
    // The survivors still answer.
    cluster.children_mut()[0]
        .ping(Duration::from_secs(5))
        .unwrap();
    cluster.children_mut()[2]
        .ping(Duration::from_secs(5))
        .unwrap();
    let exits = cluster.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(exits.iter().filter(|e| e.kind.is_clean()).count(), 3);
}

fn worker(args: &[&str]) -> std::process::ExitStatus {
    Command::new(bin("lockstep-worker"))
        .args(args)
        .output()
        .unwrap()
        .status
}

/// Death tests: each bring-up failure class exits with its documented code.
#[test]
fn child_exit_codes_name_the_failure_class() {
    let _w = Watchdog::new("exit_codes", Duration::from_secs(60));
    assert_eq!(worker(&["--bogus"]).code(), Some(ExitCode::Usage as i32));
    assert_eq!(
        worker(&["--shm-fd", "57"]).code(),
        Some(ExitCode::Attach as i32)
    );
    let dir = TempDir::new("exitcodes");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0xAB; 8192]).unwrap();
    assert_eq!(
        worker(&["--shm-path", junk.to_str().unwrap()]).code(),
        Some(ExitCode::Attach as i32)
    );
    assert_eq!(worker(&["--version"]).code(), Some(0));
}

/// A segment whose creator is gone: the child reports SupervisorGone.
#[test]
fn child_without_supervisor_exits_supervisor_gone() {
    let _w = Watchdog::new("no_supervisor", Duration::from_secs(60));
    let dir = TempDir::new("nosup");
    let path = dir.path().join("seg");
    // Create the segment from a short-lived process so that its creator pid
    // is dead by the time the worker attaches.
    let creator = Command::new(env!("CARGO_BIN_EXE_make-segment"))
        .arg(&path)
        .status()
        .unwrap();
    assert!(creator.success());
    let status = worker(&["--shm-path", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(ExitCode::SupervisorGone as i32));
}

/// The `lockstep ping` command end to end, with the read-only viewer reading
/// its state board.
#[test]
fn ping_command_and_read_only_viewer() {
    let _w = Watchdog::new("ping_command", Duration::from_secs(60));
    let dir = TempDir::new("pingcmd");
    let out = Command::new(bin("lockstep"))
        .args(["ping", "--workers", "2", "--rounds", "50", "--run-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("worker-1"), "{stdout}");
    assert!(
        stdout.contains("3 of 3 children exited cleanly"),
        "{stdout}"
    );
    let ui = Command::new(bin("lockstep-ui"))
        .arg("--once")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ui.stdout);
    assert!(ui.status.success(), "{text}");
    assert!(text.contains("phase stopped"), "{text}");
    assert!(text.contains("inference-host"), "{text}");
}

/// Killing the supervisor takes its children with it (no orphans).
#[test]
fn children_die_with_the_supervisor() {
    let _w = Watchdog::new("orphans", Duration::from_secs(60));
    let mut sup = ChildGuard::new(
        Command::new(bin("lockstep"))
            .args([
                "ping",
                "--workers",
                "2",
                "--rounds",
                "10",
                "--hold-ms",
                "30000",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait for the table: children are up.
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(sup.child().stdout.take().unwrap());
    let mut pids = Vec::new();
    while pids.len() < 3 {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0,
            "supervisor ended early"
        );
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 2 && (cols[0].starts_with("worker-") || cols[0] == "inference-host") {
            pids.push(cols[1].parse::<u32>().unwrap());
        }
    }
    sup.child().kill().unwrap();
    sup.child().wait().unwrap();
    let t0 = Instant::now();
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Orphans are reaped by init once they die.
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "child {pid} outlived the supervisor"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
