//! `lockstep-ui`: a read-only viewer of a Lockstep run.
//!
//! It maps the run's state board (`<run-dir>/state.board`) with `PROT_READ`
//! and shows the supervisor's live state: on a terminal as a full-screen
//! view (ratatui: run counters, tick rate, children, a scrollable agent
//! table, recent agent logs), otherwise — or with `--plain` — as text, once
//! (`--once`) or on every change.  It holds no write access to anything of
//! the run — the kernel refuses any store into its mapping, and it opens no
//! control socket — so attaching, detaching or crashing it cannot affect the
//! runtime.
//!
//! With `--serve [ADDR]` it serves the same state as a web dashboard
//! instead (`serve`: HTTP; `feed`: the state as JSON events and bounded
//! histories; `timeline`: the run directory's plain JSON files; the page in
//! `assets/`, compiled in): run header and counters, plots over time, the
//! agent table with a detail per agent (`#agent=ID` in the URL: mailbox,
//! fuel, calls and memory over time), the message flow (a graph and a table
//! of the board's heaviest edges), the recent logs and a timeline of the
//! journal's inputs and decisions, checkpoints, faults, restarts,
//! recoveries and model swaps with the `lockstep fork` command to branch
//! off at any tick.  The first line on stdout is the address:
//! `serving http://127.0.0.1:PORT/`.  The server answers `GET` and `HEAD`
//! only, writes nothing, and binds loopback unless given an address; a
//! non-loopback address needs `--token` or `--token-file`, and every request
//! must then carry the token (the page keeps the `?token=` it was opened
//! with).
//!
//! ```text
//! lockstep-ui run/demo                        # full-screen view (q quits)
//! lockstep-ui --once run/demo                 # print the current state and exit
//! lockstep-ui --serve run/demo                # dashboard on a free loopback port
//! lockstep-ui --serve 127.0.0.1:8080 run/demo # … on a chosen one
//! lockstep-ui --serve 0.0.0.0:8080 --token-file ~/.lockstep-token run/demo
//! ```

#![forbid(unsafe_code)]

mod feed;
mod serve;
mod timeline;
mod tui;

use clap::Parser;
use lockstep_common::live::{LIVE_STATE_VERSION, LiveState};
use shm_protocol::board::BoardReader;
use std::io::IsTerminal;
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
    target: Option<PathBuf>,
    /// Print the current state once and exit.
    #[arg(long)]
    once: bool,
    /// Print text on every change even on a terminal (no full-screen view).
    #[arg(long)]
    plain: bool,
    /// Refresh interval in milliseconds (default 200; with --serve, the
    /// least time between two events sent to the page, default 100).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Serve a read-only web dashboard on ADDR (default 127.0.0.1:0: a free
    /// loopback port); prints `serving http://ADDR/` first.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = serve::DEFAULT_ADDR)]
    serve: Option<String>,
    /// Token the dashboard's clients must send (`?token=`, `Authorization:
    /// Bearer`); required off loopback.  Visible to other local users in the
    /// process list: prefer --token-file.
    #[arg(long, requires = "serve", conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the token (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", requires = "serve")]
    token_file: Option<PathBuf>,
    /// Most dashboard connections at once (half of them event streams).
    #[arg(long, default_value_t = 64)]
    max_clients: usize,
}

fn board_path(target: &std::path::Path) -> PathBuf {
    if target.is_dir() {
        target.join("state.board")
    } else {
        target.to_path_buf()
    }
}

/// The state as text (`--once`, `--plain`, and output that is not a
/// terminal).
fn render(state: &LiveState, generation: u64) -> String {
    let mut out = format!(
        "phase {}  tick {}  (board generation {generation})\n",
        state.phase, state.tick
    );
    let s = &state.stats;
    if s.total > 0 {
        out.push_str(&format!(
            "agents {} live / {} total · steps {} · messages {} (dropped {}, queued {}) · faults {} · restarts {} · tasks open {} · recoveries {} · tick p50 {} µs p99 {} µs · inference in flight {}, waited {} µs in {} recent ticks, host busy {:.1} %\n",
            s.live,
            s.total,
            s.steps,
            s.messages,
            s.dropped,
            s.queued,
            s.faults,
            s.restarts,
            s.tasks_open,
            s.recoveries,
            s.tick_p50_us,
            s.tick_p99_us,
            s.infer_pending,
            s.infer_wait_us,
            s.infer_waited_ticks,
            s.infer_busy_permille as f64 / 10.0
        ));
    }
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
    if s.total > 0 {
        out.push_str(&tui::flow_line(state));
        out.push('\n');
    }
    for a in &state.agents {
        out.push_str(&format!(
            "  agent {:>6} {:<24} {} (queued {})\n",
            a.id, a.name, a.status, a.queued
        ));
    }
    for line in &state.log {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// The first varint of a postcard encoding (a state's version), if any.
fn leading_varint(bytes: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One consistent read of the board, decoded.
pub(crate) fn read_state(reader: &BoardReader) -> Result<(LiveState, u64), String> {
    let snap = reader.read().map_err(|e| e.to_string())?;
    let version = leading_varint(&snap.data);
    if version != Some(u64::from(LIVE_STATE_VERSION)) {
        return Err(match version {
            Some(v) => format!("state version {v} (this viewer reads {LIVE_STATE_VERSION})"),
            None => "state board holds an unreadable state".into(),
        });
    }
    let state: LiveState = shm_protocol::codec::decode(&snap.data)
        .map_err(|e| format!("state board holds an unreadable state: {e}"))?;
    Ok((state, snap.generation))
}

/// `--serve`: the dashboard (never returns on success).
fn serve_main(args: &Args, addr: &str, target: &std::path::Path) -> ExitCode {
    let fail = |e: String| {
        eprintln!("lockstep-ui: {e}");
        ExitCode::from(2)
    };
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            return fail(format!(
                "--serve {addr}: not an address like 127.0.0.1:8080"
            ));
        }
    };
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => match std::fs::read(f) {
            Ok(b) if b.len() <= 4096 => Some(String::from_utf8_lossy(&b).trim().to_owned()),
            Ok(_) => return fail(format!("{}: too long for a token", f.display())),
            Err(e) => return fail(format!("{}: {e}", f.display())),
        },
        (None, None) => None,
    };
    if let Some(t) = &token
        && let Err(e) = serve::check_token(t)
    {
        return fail(e);
    }
    let feed = feed::start(feed::SamplerConfig {
        target: target.to_path_buf(),
        min_gap: Duration::from_millis(args.interval_ms.unwrap_or(100)),
    });
    match serve::run(
        serve::Config {
            addr,
            token,
            max_clients: args.max_clients,
        },
        feed,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    // `--serve RUN_DIR`: the optional address took the run directory.
    if args.target.is_none()
        && let Some(v) = &args.serve
        && v.parse::<std::net::SocketAddr>().is_err()
    {
        args.target = Some(PathBuf::from(v));
        args.serve = Some(serve::DEFAULT_ADDR.into());
    }
    let Some(target) = args.target.clone() else {
        eprintln!("lockstep-ui: name a run directory or a state board file (see --help)");
        return ExitCode::from(2);
    };
    if let Some(addr) = args.serve.clone() {
        return serve_main(&args, &addr, &target);
    }
    let path = board_path(&target);
    let reader = match BoardReader::open(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockstep-ui: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interval = Duration::from_millis(args.interval_ms.unwrap_or(200).max(10));
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
    if !args.plain && std::io::stdout().is_terminal() {
        return match tui::run(&reader, &path, interval) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockstep-ui: {e}");
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
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_varint_reads_the_version() {
        let s = tui::tests::sample(3);
        let bytes = shm_protocol::codec::encode(&s).unwrap();
        assert_eq!(leading_varint(&bytes), Some(u64::from(LIVE_STATE_VERSION)));
        assert_eq!(leading_varint(&[0x81, 0x01]), Some(129));
        assert_eq!(leading_varint(&[0x80; 12]), None);
    }

    #[test]
    fn text_rendering_shows_counters_agents_and_logs() {
        let text = render(&tui::tests::sample(3), 7);
        assert!(text.contains("phase running  tick 42  (board generation 7)"));
        assert!(text.contains("agents 2 live / 3 total"));
        assert!(text.contains("sensor-2"));
        assert!(text.contains("faulted: trap"));
        assert!(text.contains("hello from agent 1"));
        assert!(
            text.contains("flow, last 64 ticks: 12 messages on 2 edges: 1 → topic readings ×9")
        );
    }
}
