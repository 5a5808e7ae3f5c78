//! `lockstep-ui`: a read-only viewer of a Lockstep run.
//!
//! It maps the run's state board (`<run-dir>/state.board`) with `PROT_READ`
//! and prints the supervisor's live state.  It holds no write access to
//! anything of the run — the kernel refuses any store into its mapping — so
//! attaching, detaching or crashing it cannot affect the runtime.

use clap::Parser;
use lockstep_common::live::{LIVE_STATE_VERSION, LiveState};
use shm_protocol::board::BoardReader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "lockstep-ui",
    version,
    about = "Read-only viewer of a Lockstep run"
)]
struct Args {
    /// A run directory or a state board file.
    target: PathBuf,
    /// Print the current state once and exit.
    #[arg(long)]
    once: bool,
    /// Refresh interval in milliseconds (follow mode).
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
}

fn board_path(target: &std::path::Path) -> PathBuf {
    if target.is_dir() {
        target.join("state.board")
    } else {
        target.to_path_buf()
    }
}

fn render(state: &LiveState, generation: u64) -> String {
    let mut out = format!(
        "phase {}  tick {}  (board generation {generation})\n",
        state.phase, state.tick
    );
    if !state.children.is_empty() {
        out.push_str(&format!(
            "{:<16} {:<15} {:>8} {:>10}  state\n",
            "child", "role", "pid", "rtt"
        ));
        for c in &state.children {
            out.push_str(&format!(
                "{:<16} {:<15} {:>8} {:>8.2}µs  {}\n",
                c.name,
                c.role,
                c.pid,
                c.last_rtt_ns as f64 / 1e3,
                c.state
            ));
        }
    }
    for line in &state.log {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn read_state(reader: &BoardReader) -> Result<(LiveState, u64), String> {
    let snap = reader.read().map_err(|e| e.to_string())?;
    let state: LiveState = shm_protocol::codec::decode(&snap.data)
        .map_err(|e| format!("state board holds an unreadable state: {e}"))?;
    if state.version != LIVE_STATE_VERSION {
        return Err(format!(
            "state version {} (this viewer reads {LIVE_STATE_VERSION})",
            state.version
        ));
    }
    Ok((state, snap.generation))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = board_path(&args.target);
    let reader = match BoardReader::open(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockstep-ui: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.once {
        return match read_state(&reader) {
            Ok((s, g)) => {
                print!("{}", render(&s, g));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lockstep-ui: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    let mut last = 0;
    loop {
        match read_state(&reader) {
            Ok((s, g)) if g != last => {
                last = g;
                print!("{}", render(&s, g));
                if s.phase == "stopped" {
                    return ExitCode::SUCCESS;
                }
            }
            Ok(_) => {}
            Err(e) if e.contains("no state published yet") => {}
            Err(e) => {
                eprintln!("lockstep-ui: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}
