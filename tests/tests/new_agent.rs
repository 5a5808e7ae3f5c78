//! The newcomer path: `lockstep new hello --lang rust|c|ts --build` in a
//! directory outside the checkout, the printed manifest lines in a
//! manifest, `lockstep run`, `lockstep verify` → identical.  Nothing of the
//! checkout is edited.

use lockstep_tests::{TempDir, Watchdog, bin, root};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Why `lang`'s toolchain is missing here, if it is.
fn missing(lang: &str) -> Option<String> {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match lang {
        "ts" => {
            let asc = root().join("agents/ts/node_modules/assemblyscript/bin/asc.js");
            (!have("node") || !asc.is_file()).then(|| {
                format!(
                    "needs node and {} (scripts/build-ts-agents.sh)",
                    asc.display()
                )
            })
        }
        "c" => (!have("clang") || !have("wasm-ld"))
            .then(|| "needs clang and wasm-ld (scripts/build-agents.sh installs them)".to_owned()),
        _ => (!Path::new("/usr/bin/cargo").is_file() && !have("rustup")).then(|| {
            "needs Debian's rustc-web or rustup with wasm32 (scripts/build-agents.sh)".to_owned()
        }),
    }
}

fn newcomer(lang: &str) {
    let _w = Watchdog::new("new_agent", Duration::from_secs(600));
    if let Some(why) = missing(lang) {
        eprintln!("SKIP the {lang} newcomer path: {why}");
        return;
    }
    let tmp = TempDir::new(&format!("new-{lang}"));
    let out = Command::new(bin("lockstep"))
        .args(["new", "hello", "--lang", lang, "--build", "--dir"])
        .arg(tmp.path().join("agents"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = text
        .split_once("agent.toml):\n\n")
        .map(|(_, l)| l.to_owned())
        .expect("the manifest lines are printed");
    assert!(
        lines.contains("[[agents]]") && lines.contains("hello.wasm"),
        "{text}"
    );
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 5\nticks = 60\nworkers = 2\n\n{}count = 3\n",
            lines.trim_end().to_owned() + "\n"
        ),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let run = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .args(["--no-board", "--no-metrics", "--run-dir"])
        .arg(&dir)
        .env("LOCKSTEP_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    assert!(
        log.contains("hello: tick 60 steps 60 received 0"),
        "the agent's log is missing:\n{log}"
    );
    let verify = Command::new(bin("lockstep"))
        .arg("verify")
        .arg(&dir)
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && v.starts_with("identical"), "{v}");
}

#[test]
fn a_new_typescript_agent_builds_runs_and_verifies() {
    newcomer("ts");
}

#[test]
fn a_new_c_agent_builds_runs_and_verifies() {
    newcomer("c");
}

#[test]
fn a_new_rust_agent_builds_runs_and_verifies() {
    newcomer("rust");
}

/// `lockstep new --json` reports what it created as one JSON object.
#[test]
fn new_reports_in_json() {
    let tmp = TempDir::new("new-json");
    let out = Command::new(bin("lockstep"))
        .args(["new", "hello", "--lang", "c", "--json", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap());
    assert_eq!(dir, tmp.path().join("hello"));
    assert!(dir.join("build.sh").is_file() && dir.join("agent.toml").is_file());
    assert!(v["module"].is_null(), "{v}");
    assert!(
        v["manifest"].as_str().unwrap().contains("hello.wasm"),
        "{v}"
    );
}
