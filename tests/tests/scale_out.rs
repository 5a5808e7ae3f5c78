//! Workers on other machines: real `nats-server`, real `lockstep-node`
//! processes (each standing in for a machine), real sandboxed workers.
//! Where the workers run — and which machines are lost on the way — never
//! changes a byte of the journal.

use lockstep_supervisor::remote::{RemoteHost, RemoteWorkers};
use lockstep_supervisor::run::Run;
use lockstep_tests::nats::{NatsServer, Node};
use lockstep_tests::{TempDir, Watchdog, agent, bin, config, journal_diff, root, run_to, society};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TICKS: u64 = 150;

/// A NATS server, or `None` after printing why the test is skipped.
fn nats_or_skip(test: &str) -> Option<NatsServer> {
    match NatsServer::start() {
        Ok(n) => Some(n),
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            None
        }
    }
}

fn nodes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The reference: the society on one local worker.
fn reference(manifest: &Path, dir: PathBuf) -> (String, Vec<u8>) {
    run_to(config(manifest, dir, 1), TICKS)
}

/// `lockstep run` through the CLI with workers on `list`; returns what the
/// supervisor printed (summary and log).
fn cli_run(manifest: &Path, dir: &Path, nats: &str, list: &str, workers: usize) -> String {
    let out = Command::new(bin("lockstep"))
        .arg("run")
        .arg(manifest)
        .args([
            "--ticks",
            &TICKS.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .arg("--run-dir")
        .arg(dir)
        .args([
            "--no-board",
            "--no-metrics",
            "--nats",
            nats,
            "--nodes",
            list,
        ])
        .output()
        .expect("run lockstep");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lockstep run failed:\n{text}");
    text
}

#[test]
fn workers_on_other_nodes_give_the_journal_of_one_local_worker() {
    let _w = Watchdog::new("scale_out_same_journal", Duration::from_secs(300));
    let Some(nats) = nats_or_skip("workers_on_other_nodes_give_the_journal_of_one_local_worker")
    else {
        return;
    };
    let tmp = TempDir::new("scale-out-same");
    let manifest = society(tmp.path(), 6, 50);
    let (hash, journal) = reference(&manifest, tmp.path().join("ref"));
    let _a = Node::start(&nats.url, "a", &[]);
    let _b = Node::start(&nats.url, "b", &[]);
    let dir = tmp.path().join("spread");
    let mut cfg = config(&manifest, dir.clone(), 4);
    cfg.remote = Some(RemoteWorkers::new(&nats.url, &nodes(&["a", "b", "local"])).unwrap());
    let (h2, j2) = run_to(cfg, TICKS);
    assert_eq!(h2, hash, "final hash differs with workers on nodes");
    if j2 != journal {
        std::fs::write(tmp.path().join("ref.lsj"), &journal).unwrap();
        panic!(
            "journals differ: {}",
            journal_diff(&tmp.path().join("ref.lsj"), &dir.join("journal.lsj")).unwrap_or_default()
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["worker_nodes"],
        serde_json::json!(["a", "b", "local", "a"]),
        "{meta}"
    );
    assert_eq!(meta["nats"], serde_json::json!(nats.url));
}

#[test]
fn a_machine_lost_at_a_tick_is_recovered_on_another_node() {
    let _w = Watchdog::new("scale_out_machine_lost", Duration::from_secs(300));
    let Some(nats) = nats_or_skip("a_machine_lost_at_a_tick_is_recovered_on_another_node") else {
        return;
    };
    let tmp = TempDir::new("scale-out-lost");
    let manifest = society(tmp.path(), 6, 50);
    let (hash, journal) = reference(&manifest, tmp.path().join("ref"));
    let mut a = Node::start(&nats.url, "a", &["--fault", "die@70"]);
    let _b = Node::start(&nats.url, "b", &[]);
    let dir = tmp.path().join("lost");
    let stderr = cli_run(&manifest, &dir, &nats.url, "a,b", 2);
    let status = a.proc.child().wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "node a should have died by SIGKILL"
    );
    assert!(
        stderr.contains(
            "[RECOVERY] worker-0 exited with code 82 (lost the link to its remote node) at tick 70"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("a: no responders"),
        "the new bridge should have moved past the lost node: {stderr}"
    );
    let j2 = std::fs::read(dir.join("journal.lsj")).unwrap();
    assert!(j2 == journal, "journal differs after losing a node");
    assert!(stderr.contains(&hash), "final hash differs: {stderr}");
}

#[test]
fn killed_and_hung_remote_workers_are_recovered_like_local_ones() {
    let _w = Watchdog::new("scale_out_killed_hung", Duration::from_secs(300));
    let Some(nats) = nats_or_skip("killed_and_hung_remote_workers_are_recovered_like_local_ones")
    else {
        return;
    };
    let tmp = TempDir::new("scale-out-faults");
    let manifest = society(tmp.path(), 6, 50);
    let (hash, journal) = reference(&manifest, tmp.path().join("ref"));
    let _a = Node::start(&nats.url, "a", &["--fault", "kill-worker@40"]);
    let _b = Node::start(&nats.url, "b", &["--fault", "stop-worker@90"]);
    let dir = tmp.path().join("faults");
    let stderr = cli_run(&manifest, &dir, &nats.url, "a,b,local", 3);
    assert!(
        stderr.contains("[RECOVERY] worker-0 was killed by SIGKILL")
            && stderr.contains("at tick 40"),
        "the remote SIGKILL should be classified as one: {stderr}"
    );
    assert!(
        stderr.contains("[RECOVERY] worker-1 hung (no heartbeat") && stderr.contains("at tick 90"),
        "the stopped remote worker should be classified as hung: {stderr}"
    );
    let j2 = std::fs::read(dir.join("journal.lsj")).unwrap();
    assert!(j2 == journal, "journal differs after remote faults");
    assert!(stderr.contains(&hash), "final hash differs: {stderr}");
}

#[test]
fn a_node_list_nobody_answers_is_a_clear_start_error() {
    let _w = Watchdog::new("scale_out_nobody", Duration::from_secs(120));
    let Some(nats) = nats_or_skip("a_node_list_nobody_answers_is_a_clear_start_error") else {
        return;
    };
    let tmp = TempDir::new("scale-out-nobody");
    let manifest = society(tmp.path(), 1, 50);
    let mut cfg = config(&manifest, tmp.path().join("r"), 2);
    cfg.remote = Some(RemoteWorkers::new(&nats.url, &nodes(&["nowhere", "local"])).unwrap());
    let err = match Run::start(cfg) {
        Ok(_) => panic!("the run must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("worker-0")
            && err.contains("no node would host it")
            && err.contains("nowhere: no responders"),
        "{err}"
    );
}

/// The supervisor's machine dies (SIGKILL at tick 230, by tick); the run,
/// archived live into JetStream, is rebuilt and resumed elsewhere, and its
/// journal is byte for byte the uninterrupted run's.  A checkpoint of the
/// archive also forks.
#[test]
fn a_run_archived_in_jetstream_resumes_elsewhere_byte_identical() {
    let _w = Watchdog::new("scale_out_archive", Duration::from_secs(300));
    let Some(nats) = nats_or_skip("a_run_archived_in_jetstream_resumes_elsewhere_byte_identical")
    else {
        return;
    };
    let tmp = TempDir::new("scale-out-archive");
    let manifest = society(tmp.path(), 4, 50);
    let ticks = "300";
    let run = |dir: &Path, extra: &[&str], env: Option<(&str, &str)>| {
        let mut c = Command::new(bin("lockstep"));
        c.arg("run")
            .arg(&manifest)
            .args(["--ticks", ticks, "--no-board", "--no-metrics", "--run-dir"])
            .arg(dir)
            .args(extra);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().expect("run lockstep")
    };
    let reference = tmp.path().join("ref");
    assert!(run(&reference, &[], None).status.success());
    let dir = tmp.path().join("origin");
    let out = run(
        &dir,
        &["--nats", &nats.url, "--archive", "origin-1"],
        Some(("LOCKSTEP_SUPERVISOR_INJECT", "kill@230:tick")),
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the supervisor should have been killed at tick 230: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elsewhere = tmp.path().join("elsewhere");
    let url = format!("{}/origin-1", nats.url);
    let out = Command::new(bin("lockstep"))
        .args(["resume", &url, "--into"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("resumed") && text.contains("at tick 230"),
        "{text}"
    );
    let a = std::fs::read(reference.join("journal.lsj")).unwrap();
    let b = std::fs::read(elsewhere.join("journal.lsj")).unwrap();
    if a != b {
        panic!(
            "the resumed journal differs: {}",
            journal_diff(
                &reference.join("journal.lsj"),
                &elsewhere.join("journal.lsj")
            )
            .unwrap_or_default()
        );
    }
    // Federation: fork the archived run at a checkpoint into a new run.
    let forked = tmp.path().join("forked");
    let out = Command::new(bin("lockstep"))
        .args(["fork", &url, "--at", "100", "--into"])
        .arg(&forked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(forked.join("journal.lsj").is_file());
    assert!(!tmp.path().join("forked.fetching").exists());
    // An archive that is not there: a clear error, nothing left behind.
    let nowhere = tmp.path().join("nowhere");
    let out = Command::new(bin("lockstep"))
        .args(["resume", &format!("{}/no-such-run", nats.url), "--into"])
        .arg(&nowhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no archived run \"no-such-run\""),
        "{err}"
    );
    assert!(!nowhere.exists());
}

/// The inference host on a node (the machine with the GPU, typically) and
/// the workers on two others: model answers, and so the journal, are those
/// of the all-local run.
#[test]
fn the_inference_host_on_a_node_answers_as_it_does_here() {
    let _w = Watchdog::new("scale_out_inference", Duration::from_secs(300));
    let Some(nats) = nats_or_skip("the_inference_host_on_a_node_answers_as_it_does_here") else {
        return;
    };
    let tmp = TempDir::new("scale-out-inference");
    let manifest = society(tmp.path(), 2, 50);
    let mlp = root().join(".deps/models/mlp.onnx");
    assert!(
        mlp.is_file(),
        "{} missing: run scripts/gen-models.sh",
        mlp.display()
    );
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!(
        "[[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 4\n\n\
         [[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n",
        agent("inferrer"),
        mlp.display()
    ));
    std::fs::write(&manifest, text).unwrap();
    let (hash, journal) = reference(&manifest, tmp.path().join("ref"));
    let _gpu = Node::start(&nats.url, "gpu", &[]);
    let _a = Node::start(&nats.url, "a", &[]);
    let _b = Node::start(&nats.url, "b", &[]);
    let dir = tmp.path().join("spread");
    let mut cfg = config(&manifest, dir.clone(), 2);
    cfg.remote = Some(RemoteWorkers::new(&nats.url, &nodes(&["a", "b"])).unwrap());
    cfg.inference.remote = Some(RemoteHost::new(&nats.url, &nodes(&["gpu"])).unwrap());
    let (h2, j2) = run_to(cfg, TICKS);
    assert_eq!(h2, hash);
    assert!(
        j2 == journal,
        "journal differs with the inference host on a node"
    );
    let answers = lockstep_supervisor::journal::read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .map(|e| match e {
            lockstep_supervisor::journal::Entry::Inference { answers, .. } => answers.len(),
            _ => 0,
        })
        .sum::<usize>();
    assert!(answers > 0, "the run asked the model nothing");
}

/// Three NATS servers in a cluster, three nodes: one server is SIGKILLed
/// when the run reaches tick 150 (watched through the run's OpenMetrics
/// endpoint).  Clients move to the other servers; a link that lost packets
/// on the way is a recovered child failure; the journal is the one-worker
/// run's, byte for byte.
#[test]
fn a_nats_server_lost_from_a_cluster_changes_nothing() {
    use lockstep_tests::nats::NatsCluster;
    let _w = Watchdog::new("scale_out_cluster", Duration::from_secs(300));
    let mut cluster = match NatsCluster::start(3) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIP a_nats_server_lost_from_a_cluster_changes_nothing: {why}");
            return;
        }
    };
    let tmp = TempDir::new("scale-out-cluster");
    let manifest = society(tmp.path(), 6, 50);
    let ticks = 600u64;
    let (hash, journal) = run_to(config(&manifest, tmp.path().join("ref"), 1), ticks);
    let _nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(&cluster.url, n, &[]))
        .collect();
    let dir = tmp.path().join("cluster");
    let mut child = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .args([
            "--ticks",
            &ticks.to_string(),
            "--workers",
            "3",
            "--no-board",
        ])
        .args([
            "--nats",
            &cluster.url,
            "--nodes",
            "a,b,c",
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--run-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(a) = line.strip_prefix("lockstep: metrics at http://") {
                let _ = tx.send(a.trim_end_matches("/metrics").to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no metrics address");
    let tick = || -> Option<u64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("lockstep_tick "))
            .and_then(|v| v.trim().parse().ok())
    };
    let mut killed = false;
    while let Some(t) = tick() {
        if t >= 150 {
            let s = &mut cluster.servers[0];
            s.child().kill().unwrap();
            let _ = s.child().wait();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(killed, "the run ended before tick 150");
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        log.join().unwrap()
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&hash), "final hash differs:\n{text}");
    let j2 = std::fs::read(dir.join("journal.lsj")).unwrap();
    assert!(j2 == journal, "journal differs after losing a NATS server");
}
