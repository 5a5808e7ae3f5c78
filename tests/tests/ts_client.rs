//! The TypeScript client (`clients/typescript`, `@lockstep/client`): its
//! own tests (`npm test`: `tsc`, then `node --test`) drive a real
//! `lockstep run --forever` through the `Orchestrator` and `ModelRegistry`
//! classes — spawn, publish, send, tasks, channels, upgrade, snapshot,
//! coded refusals, telemetry from metrics.jsonl, stop; models loaded,
//! refused (a model ONNX Runtime cannot load), asked from outside and
//! unloaded — and read the inputs back from the journal with `lockstep
//! log` (and `lockstep verify` the run with the loads).
//!
//! Needs Node.js 20+ and npm (`npm ci` fetches the pinned TypeScript
//! compiler when the lock file changed); without them the test says why
//! and skips.  Needs the binaries (`cargo build --workspace --bins`) and
//! the example agents (scripts/build-agents.sh).

use lockstep_tests::{bin, root};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

fn node_and_npm() -> Result<(), String> {
    let node = Command::new("node")
        .args([
            "-e",
            "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)",
        ])
        .status();
    match node {
        Ok(s) if s.success() => {}
        Ok(_) => return Err("Node.js is older than 20".into()),
        Err(e) => return Err(format!("Node.js is not installed (`node`: {e})")),
    }
    match Command::new("npm").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`npm --version` failed: {}", o.status)),
        Err(e) => Err(format!("npm is not installed (`npm`: {e})")),
    }
}

fn npm(dir: &Path, args: &[&str]) -> Output {
    Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("LOCKSTEP_BIN", bin("lockstep"))
        .env("LOCKSTEP_AGENTS", root().join("target/agents"))
        .output()
        .unwrap_or_else(|e| panic!("npm {args:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn typescript_client_drives_a_real_run() {
    if let Err(why) = node_and_npm() {
        // Written to stderr directly: the harness hides an `eprintln!` of a
        // passing test.
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipping typescript_client_drives_a_real_run: {why}; install Node.js 20+ and npm \
             (scripts/build-ts-agents.sh does as root)"
        );
        return;
    }
    let lockstep = bin("lockstep");
    assert!(
        lockstep.is_file(),
        "{} missing: cargo build --workspace --bins",
        lockstep.display()
    );
    for m in ["counter", "sensor", "aggregator", "ping", "pong"] {
        let p = root().join("target/agents").join(format!("{m}.wasm"));
        assert!(
            p.is_file(),
            "{} missing: run scripts/build-agents.sh",
            p.display()
        );
    }
    let dir = root().join("clients/typescript");

    // `npm ci` only when package.json or the lock file changed since the
    // last one (it replaces node_modules and may need the registry).
    let stamp = dir.join("node_modules/.lockstep-ci-stamp");
    let mut h = blake3::Hasher::new();
    for f in ["package.json", "package-lock.json"] {
        h.update(&std::fs::read(dir.join(f)).expect("read the package files"));
    }
    let want = h.finalize().to_hex().to_string();
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s == want)
        && dir.join("node_modules/.bin/tsc").exists();
    if !fresh {
        let o = npm(&dir, &["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
        assert!(
            o.status.success(),
            "npm ci failed ({}):\n{}",
            o.status,
            text(&o)
        );
        std::fs::write(&stamp, &want).expect("write the npm ci stamp");
    }

    let o = npm(&dir, &["test"]);
    let out = text(&o);
    assert!(o.status.success(), "npm test failed ({}):\n{out}", o.status);
    assert!(out.contains("# fail 0"), "{out}");
    assert!(
        out.contains("# skipped 0") && !out.contains("# skipping"),
        "the supervisor test was skipped:\n{out}"
    );
    assert!(
        out.contains("ok 1 - drives a running supervisor through the Orchestrator\n"),
        "{out}"
    );
    assert!(
        out.contains("ok 2 - loads, unloads and asks models of a running supervisor\n"),
        "{out}"
    );
}
