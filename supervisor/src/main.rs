//! `lockstep`: the command line of the Lockstep supervisor.

use clap::{Parser, Subcommand};
use lockstep_supervisor::cluster::{Cluster, ClusterConfig, PingReport};
use shm_protocol::board::BoardWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Raw command line (validated into the commands' configs below).
#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Deterministic multi-agent runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the child processes, ping each, report, and shut them down.
    Ping(PingArgs),
}

#[derive(Debug, clap::Args)]
struct PingArgs {
    /// Number of worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Ping round trips per child.
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// Do not start the inference host.
    #[arg(long)]
    no_inference_host: bool,
    /// Directory for the run's files (the state board `state.board`).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Keep the children running this many milliseconds after the pings
    /// (reporting any that die meanwhile).
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
}

fn main() -> ExitCode {
    lockstep_common::init_logging("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ping(args) => ping(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockstep: error: {e}");
            let mut src = std::error::Error::source(e.as_ref());
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

fn ping(args: PingArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.workers == 0 && args.no_inference_host {
        return Err("nothing to start: --workers 0 and --no-inference-host".into());
    }
    let mut cfg = ClusterConfig::new(args.workers)?;
    cfg.inference_host = !args.no_inference_host;
    let mut board = match &args.run_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create run directory {}: {e}", dir.display()))?;
            Some(BoardWriter::create(&dir.join("state.board"), 1 << 16)?)
        }
        None => None,
    };
    let t0 = Instant::now();
    let mut cluster = Cluster::start(&cfg)?;
    let n = cluster.children().len();
    println!(
        "lockstep: started {} worker(s){} in {}",
        args.workers,
        if cfg.inference_host {
            " and the inference host"
        } else {
            ""
        },
        fmt_dur(t0.elapsed())
    );
    let reports = cluster.ping_all(args.rounds)?;
    print_table(&reports);
    if let Some(b) = &mut board {
        let state = cluster.live_state("running", &reports);
        b.publish(&shm_protocol::codec::encode(&state)?)?;
    }
    let mut died = 0;
    if args.hold_ms > 0 {
        let until = Instant::now() + Duration::from_millis(args.hold_ms);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some(d) = cluster.wait_death(left) {
                println!("lockstep: {d}");
                died += 1;
                if let Some(b) = &mut board {
                    b.publish(&shm_protocol::codec::encode(
                        &cluster.live_state("running", &reports),
                    )?)?;
                }
            }
        }
    }
    let exits = cluster.shutdown(Duration::from_secs(5))?;
    let clean = exits.iter().filter(|e| e.kind.is_clean()).count();
    if let (Some(b), Some(dir)) = (&mut board, &args.run_dir) {
        let state = lockstep_common::live::LiveState {
            version: lockstep_common::live::LIVE_STATE_VERSION,
            phase: "stopped".into(),
            tick: 0,
            children: Vec::new(),
            log: exits.iter().map(ToString::to_string).collect(),
        };
        b.publish(&shm_protocol::codec::encode(&state)?)?;
        println!(
            "lockstep: state board at {}",
            dir.join("state.board").display()
        );
    }
    println!(
        "lockstep: shutdown: {clean} of {n} children exited cleanly, all {} reaped",
        exits.len()
    );
    Ok(if clean + died == n && exits.len() == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(reports: &[PingReport]) {
    println!(
        "{:<16} {:>8} {:>12} {:>7} {:>10} {:>10} {:>10}",
        "child", "pid", "handshake", "pings", "rtt p50", "rtt p99", "rtt max"
    );
    for r in reports {
        println!(
            "{:<16} {:>8} {:>12} {:>7} {:>10} {:>10} {:>10}",
            r.name,
            r.pid,
            fmt_dur(r.handshake),
            r.rtts.len(),
            fmt_dur(r.quantile(0.5)),
            fmt_dur(r.quantile(0.99)),
            fmt_dur(r.quantile(1.0)),
        );
    }
}
