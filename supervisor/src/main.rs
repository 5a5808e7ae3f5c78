//! `lockstep`: the command line of the Lockstep supervisor.
//!
//! Raw arguments ([`Cli`]) are parsed with clap, then validated into the
//! library's configurations (`RunConfig`, …) before anything starts.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use lockstep_supervisor::cluster::{Cluster, ClusterConfig, PingReport};
use lockstep_supervisor::command::Command as CtlCommand;
use lockstep_supervisor::ctl;
use lockstep_supervisor::journal::{self, Entry};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::replay;
use lockstep_supervisor::run::{Run, RunConfig};
use shm_protocol::board::BoardWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error>;

/// Raw command line.
/// The exit codes, for `--help`.
const EXIT_CODES: &str = "\
Exit codes of lockstep:
  0   success (verify: identical)
  1   an error, printed with its causes (bad manifest, run directory, socket, archive, ...)
  2   bad command line
  3   verify: the run diverged (the report says where)
Children (lockstep-worker, lockstep-inference-host, lockstep-node) exit with one code per
failure class, which the supervisor names when it recovers from one:
  64 bad command line       65 cannot attach the segment   66 handshake failed
  67 supervisor gone        68 protocol violation           70 internal error (panic)
  71 out of memory          72 runtime (wasmtime, ONNX Runtime) failed to start
  73-81 a sandbox step failed: 73 descriptors, 74 cgroups, 75 namespaces,
        76 file system, 77 identity, 78 capabilities, 79 rlimits, 80 Landlock, 81 seccomp
  82 a remote worker's node was lost
Killed children are reported by signal (SIGKILL, SIGSYS for a seccomp kill, ...).";

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Deterministic multi-agent runtime",
    after_long_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a manifest.
    Run(Box<RunArgs>),
    /// Send a command to a running supervisor.
    Ctl(CtlArgs),
    /// Summarise a run directory.
    Inspect {
        /// The run directory.
        run_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check a running run's children: uid, capabilities, namespaces,
    /// seccomp, Landlock, cgroup limits, and the run directory's
    /// permissions (exit code 1 when something is missing).
    Doctor {
        /// The run directory.
        run_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's journal.
    Log(LogArgs),
    /// Start the child processes, ping each, report, and shut them down.
    Ping(PingArgs),
    /// Re-execute a recorded run from a snapshot, checking every tick hash.
    Replay {
        /// The run directory.
        run_dir: PathBuf,
        /// Start from the latest checkpoint at or before this tick, or from
        /// this snapshot file.
        #[arg(long)]
        from: Option<String>,
        /// Stop after this tick (default: the last recorded tick).
        #[arg(long)]
        until: Option<u64>,
        /// Worker processes (default: as recorded).
        #[arg(long)]
        workers: Option<usize>,
        /// The inference host's device (default: `cpu` for a run made on
        /// the CPU, `auto` for one that asked for a GPU; answers recorded
        /// on another device are compared within their model's tolerance).
        #[arg(long, value_parser = parse_device)]
        device: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute a whole run and report "identical" or the first divergence.
    Verify {
        /// The run directory.
        run_dir: PathBuf,
        /// Worker processes (default: as recorded).
        #[arg(long)]
        workers: Option<usize>,
        /// The inference host's device (default: `cpu` for a run made on
        /// the CPU, `auto` for one that asked for a GPU; answers recorded
        /// on another device are compared within their model's tolerance).
        #[arg(long, value_parser = parse_device)]
        device: Option<String>,
        /// Print one JSON object: `{"verdict":"identical",…,
        /// "within_tolerance":[…]}` or `{"verdict":"diverged",
        /// "first_tick":…,"agents":[…],"answer":{…},…}`.
        #[arg(long)]
        json: bool,
    },
    /// Start a new run directory from the state after tick `--at`.
    Fork {
        /// The recorded run, or an archived one (`nats://HOST:PORT/NAME`:
        /// its checkpoint at `--at` arrives through JetStream, checked by
        /// its BLAKE3).
        run_dir: PathBuf,
        /// The tick to fork at.
        #[arg(long)]
        at: u64,
        /// The new run directory.
        #[arg(long)]
        into: PathBuf,
        /// Worker processes (default: as recorded).
        #[arg(long)]
        workers: Option<usize>,
        /// The inference host's device (default: `cpu` for a run made on
        /// the CPU, `auto` for one that asked for a GPU; answers recorded
        /// on another device are compared within their model's tolerance).
        #[arg(long, value_parser = parse_device)]
        device: Option<String>,

        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Create a new agent in a directory of its own, ready to build
    /// (`./build.sh`) and run (the lines of its `agent.toml`).
    New {
        /// The agent's name (a lowercase letter, then lowercase letters,
        /// digits, `-`, `_`).
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: lockstep_supervisor::scaffold::Lang,
        /// Where to create `<name>/` (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Build it right away.
        #[arg(long)]
        build: bool,
        /// This checkout's `agents/` directory (default: found from the
        /// `lockstep` binary or the current directory).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// Print one JSON object: `{"dir":…,"build":…,"module":…,"manifest":…}`.
        #[arg(long)]
        json: bool,
    },
    /// Archive a run directory into JetStream once (its journal,
    /// checkpoints, page store and modules), for `resume` or `fork` on
    /// another machine.
    Push {
        /// The run directory.
        run_dir: PathBuf,
        /// Where: `nats://HOST:PORT/NAME`.
        to: String,
        /// Print one JSON object when done.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted (or forked) run from its last checkpoint.
    Resume {
        /// The run directory, or an archived run (`nats://HOST:PORT/NAME`,
        /// fetched into `--into` first).
        run_dir: PathBuf,
        /// Where to rebuild an archived run (with `nats://…`).
        #[arg(long)]
        into: Option<PathBuf>,
        /// Run until this tick (default: the run's target).
        #[arg(long)]
        until: Option<u64>,
        /// Run this many more ticks after catching up.
        #[arg(long, conflicts_with = "until")]
        ticks: Option<u64>,
        /// Worker processes (default: as recorded).
        #[arg(long)]
        workers: Option<usize>,
        /// The inference host's device (default: the one the run asked
        /// for; answers recorded on another device are compared within
        /// their model's tolerance while catching up).
        #[arg(long, value_parser = parse_device)]
        device: Option<String>,
        /// Print one JSON object when done.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The manifest (TOML).
    manifest: PathBuf,
    /// Ticks to run (default: the manifest's `run.ticks`).
    #[arg(long)]
    ticks: Option<u64>,
    /// Worker processes (default: the manifest's `run.workers`).
    #[arg(long)]
    workers: Option<usize>,
    /// Run directory (default: `run/<manifest name>-<seed>`); must not exist
    /// or be empty.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Run seed (default: the manifest's `run.seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Wall-clock watchdog per agent call, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    watchdog_ms: u64,
    /// Do not publish the state board.
    #[arg(long)]
    no_board: bool,
    /// Do not write metrics.jsonl.
    #[arg(long)]
    no_metrics: bool,
    /// Let the workers run on any CPU.  By default, when the workers and the
    /// supervisor take every CPU of the machine (no core to spare), each
    /// worker runs on a CPU of its own.
    #[arg(long)]
    no_pin_workers: bool,
    /// Leave the first N ticks of this run out of the tick latency it
    /// reports (p50, p99): they run and are journaled like every other,
    /// but the first instantiates every agent and the next few warm the
    /// caches — as benchmarks leave out their warm-up.
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup: u64,
    /// Keep running (serving `ctl`) until `lockstep ctl <dir> stop` or Ctrl-C.
    #[arg(long)]
    forever: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
    /// Checkpoint every N ticks (default: the manifest's `run.checkpoint_every`).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Run the children (workers, inference host) without their process
    /// sandbox (same as `--sandbox off`); wasmtime still confines the agents.
    #[arg(long, conflicts_with = "sandbox")]
    no_sandbox: bool,
    /// The children's sandbox mode: strict, best-effort, log or off
    /// (default: the manifest's `[sandbox] mode`, else strict).
    #[arg(long, value_enum)]
    sandbox: Option<lockstep_common::SandboxMode>,
    /// Turn one sandbox layer off (repeatable): cgroup, namespaces,
    /// filesystem, identity, capabilities, rlimits, landlock, seccomp.
    #[arg(long = "sandbox-disable", value_enum, value_name = "LAYER")]
    sandbox_disable: Vec<lockstep_sandbox::Layer>,
    /// Address-space limit of each worker (RLIMIT_AS), e.g. `16GiB`
    /// (default: 4 GiB plus twice the memory limits of all the manifest's
    /// agents, at least 8 GiB).
    #[arg(long, value_parser = parse_size)]
    worker_address_space: Option<u64>,
    /// Longest silence of a child's heartbeat, while it owes an answer,
    /// before it counts as hung and is replaced.
    #[arg(long, default_value_t = 1000)]
    hang_timeout_ms: u64,
    /// The NATS server through which workers run on other machines
    /// (`--nodes`) and the run is archived (`--archive`): `nats://HOST:PORT`.
    #[arg(long)]
    nats: Option<String>,
    /// Nodes (`lockstep-node serve --name N`) that host the shared worker
    /// slots in turn, comma-separated; `local` keeps a slot here.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Mirror the run directory (journal, checkpoints, page store,
    /// modules) into JetStream on the `--nats` server, under this name
    /// (default: the run directory's name), so that it can be resumed on
    /// another machine: `lockstep resume nats://HOST:PORT/NAME --into DIR`.
    #[arg(long, requires = "nats", num_args = 0..=1, default_missing_value = "")]
    archive: Option<String>,
    /// Run the inference host on this node (e.g. the machine with the
    /// GPU), or the first of these that answers, comma-separated; with
    /// `--nats`.
    #[arg(long, value_delimiter = ',', requires = "nats")]
    inference_node: Vec<String>,
    /// Serve OpenMetrics (Prometheus) at `http://ADDR/metrics` while the
    /// run goes, e.g. `127.0.0.1:9464` (port 0 picks one; the address is
    /// printed).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// The inference host's device: `cpu` (default: bit-reproducible),
    /// `auto` (CUDA when it loads, else CPU; the choice is logged) or
    /// `cuda` / `cuda:N`.
    #[arg(long, value_parser = parse_device)]
    device: Option<String>,
    /// With `--metrics`: also one series per agent (fuel, step time of its
    /// sampled ticks) — as many series as agents.
    #[arg(long, requires = "metrics")]
    metrics_agents: bool,
    /// Print the agents' log lines up to LEVEL (default info) to stderr,
    /// as `tick T [LEVEL] name: line`.
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "info",
          value_parser = clap::builder::PossibleValuesParser::new(lockstep_supervisor::telemetry::LOG_LEVELS))]
    agent_logs: Option<String>,
    /// With `--agent-logs`: only this agent's lines (instance name;
    /// repeatable).
    #[arg(long, value_name = "NAME", requires = "agent_logs")]
    agent_logs_for: Vec<String>,
}

/// The hook of `--agent-logs LEVEL [--agent-logs-for NAME…]`.
fn log_printer(level: &str, only: &[String]) -> Box<lockstep_supervisor::telemetry::LogPrinter> {
    let max_level = lockstep_supervisor::telemetry::LOG_LEVELS
        .iter()
        .position(|l| *l == level)
        .unwrap_or(2) as u8;
    Box::new(lockstep_supervisor::telemetry::LogPrinter {
        max_level,
        only: only.to_vec(),
    })
}

fn parse_device(s: &str) -> Result<String, String> {
    if lockstep_common::is_device(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}`: expected cpu, auto, cuda or cuda:N"))
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 16GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// The run directory of a running supervisor.
    run_dir: PathBuf,
    /// Print the answer as one JSON line: `{"ok":true,"tick":N,"data":{…},"text":"…"}`
    /// or `{"ok":false,"code":"…","message":"…","text":"…"}`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: CtlCommand,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("`{s}`: {e}"))
}

#[derive(Debug, clap::Args)]
struct LogArgs {
    /// The run directory.
    run_dir: PathBuf,
    /// Only ticks in this range (`5`, `10..20`, `100..`).
    #[arg(long)]
    tick: Option<String>,
    /// Only entries about this agent: its name (`counter-3`) or id.
    #[arg(long)]
    agent: Option<String>,
    /// Only entries of this kind.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(lockstep_supervisor::journal::Entry::KINDS))]
    kind: Option<String>,
    /// One JSON object per entry: `{"tick":…,"kind":…,"text":…,"entry":{…}}`
    /// (`entry` is the journal's own form; hashes are arrays of bytes).
    #[arg(long)]
    json: bool,
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

/// mimalloc, committing memory on demand (see `shm_protocol::alloc`).
#[global_allocator]
static GLOBAL: shm_protocol::alloc::Lean = shm_protocol::alloc::Lean;

fn main() -> ExitCode {
    lockstep_common::init_logging("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Ctl(args) => ctl_cmd(args),
        Command::Inspect { run_dir, json } => inspect(&run_dir, json),
        Command::Doctor { run_dir, json } => doctor(&run_dir, json),
        Command::Log(args) => log(args),
        Command::Ping(args) => ping(args),
        Command::Replay {
            run_dir,
            from,
            until,
            workers,
            device,
            json,
        } => replay_cmd(&run_dir, from, until, workers, device.as_deref(), json),
        Command::Verify {
            run_dir,
            workers,
            device,
            json,
        } => verify_cmd(&run_dir, workers, device.as_deref(), json),
        Command::Fork {
            run_dir,
            at,
            into,
            workers,
            device,
            json,
        } => fork_from(&run_dir, at, &into, workers, device.as_deref(), json),
        Command::Push { run_dir, to, json } => push_cmd(&run_dir, &to, json),
        Command::New {
            name,
            lang,
            dir,
            build,
            sdk,
            json,
        } => new_cmd(&name, lang, &dir, build, sdk.as_deref(), json),
        Command::Resume {
            run_dir,
            into,
            until,
            ticks,
            workers,
            device,
            json,
        } => fetch_then(&run_dir, into.as_deref())
            .and_then(|dir| resume_cmd(&dir, until, ticks, workers, device.as_deref(), json)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockstep: error: {e}");
            let mut src = e.source();
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

fn run(args: RunArgs) -> Result<ExitCode, BoxError> {
    let text = std::fs::read_to_string(&args.manifest)
        .map_err(|e| format!("cannot read manifest {}: {e}", args.manifest.display()))?;
    let manifest = Manifest::load(&args.manifest)?;
    let seed = args.seed.unwrap_or(manifest.seed);
    let ticks = args.ticks.unwrap_or(manifest.ticks);
    if !args.forever && args.warmup > 0 && args.warmup >= ticks {
        return Err(format!(
            "--warmup {} leaves none of the run's {ticks} ticks to measure (run more with --ticks)",
            args.warmup
        )
        .into());
    }
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        let stem = args
            .manifest
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("run").join(format!("{stem}-{seed}"))
    });
    let mut cfg = RunConfig::new(manifest, text, run_dir)?;
    cfg.seed = seed;
    cfg.target_ticks = ticks;
    cfg.manifest_dir = args
        .manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if let Some(c) = args.checkpoint_every {
        cfg.checkpoint_every = c;
    }
    if let Some(w) = args.workers {
        if w == 0 || w > 256 {
            return Err("--workers must be between 1 and 256".into());
        }
        cfg.workers = w;
    }
    cfg.watchdog = Duration::from_millis(args.watchdog_ms.max(1));
    cfg.board = !args.no_board;
    cfg.metrics = !args.no_metrics;
    cfg.pin_workers = !args.no_pin_workers;
    if args.no_sandbox {
        cfg.sandbox.mode = lockstep_common::SandboxMode::Off;
    }
    if let Some(mode) = args.sandbox {
        cfg.sandbox.mode = mode;
    }
    for layer in &args.sandbox_disable {
        if *layer == lockstep_sandbox::Layer::Fds {
            return Err("--sandbox-disable fds: the fds step cannot be turned off".into());
        }
        cfg.sandbox.disable(*layer, "--sandbox-disable");
    }
    if let Some(limit) = args.worker_address_space {
        cfg.sandbox.worker_address_space = limit;
    }
    cfg.hang_timeout = Duration::from_millis(args.hang_timeout_ms.max(10));
    cfg.inference.hang_timeout = cfg.hang_timeout;
    if let Some(d) = &args.device {
        cfg.inference.device = d.clone();
    }
    if let Some(nats) = args.nats.as_ref().filter(|_| !args.nodes.is_empty()) {
        cfg.remote = Some(lockstep_supervisor::remote::RemoteWorkers::new(
            nats,
            &args.nodes,
        )?);
    }
    if let Some(nats) = args
        .nats
        .as_ref()
        .filter(|_| !args.inference_node.is_empty())
    {
        cfg.inference.remote = Some(lockstep_supervisor::remote::RemoteHost::new(
            nats,
            &args.inference_node,
        )?);
    }
    if args.nats.is_some()
        && args.nodes.is_empty()
        && args.inference_node.is_empty()
        && args.archive.is_none()
    {
        return Err(
            "--nats: give --nodes or --inference-node (children on other machines) or --archive"
                .into(),
        );
    }
    let archive_name = args.archive.as_ref().map(|n| {
        if n.is_empty() {
            lockstep_supervisor::remote::archive_name(&cfg.run_dir)
        } else {
            n.clone()
        }
    });
    if args.forever && cfg.retain_checkpoints.is_none() {
        // A run of unbounded length keeps a bounded history.
        cfg.retain_checkpoints = Some(lockstep_supervisor::config::FOREVER_RETAIN_CHECKPOINTS);
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, interrupted.clone())?;
    let run_dir = cfg.run_dir.clone();
    let mut run = Run::start(cfg)?;
    if let Some(level) = &args.agent_logs {
        run.register_telemetry_hook(log_printer(level, &args.agent_logs_for));
    }
    let exporter = match args.metrics {
        Some(addr) => {
            let e = lockstep_supervisor::openmetrics::Exporter::new(args.metrics_agents);
            run.register_telemetry_hook(e.hook());
            let bound = e
                .serve(addr)
                .map_err(|err| format!("--metrics {addr}: cannot listen: {err}"))?;
            if !bound.ip().is_loopback() {
                eprintln!(
                    "lockstep: warning: metrics served on {bound}, not loopback: whoever reaches it reads the run's counters"
                );
            }
            eprintln!("lockstep: metrics at http://{bound}/metrics");
            Some(e)
        }
        None => None,
    };
    let mut last_refresh: Option<Instant> = None;
    let archiver = match (&args.nats, &archive_name) {
        (Some(nats), Some(name)) => Some(lockstep_supervisor::remote::Archiver::start(
            nats, &run_dir, name, false,
        )?),
        _ => None,
    };
    let first = run.state().tick;
    let bar = lockstep_supervisor::progress::Progress::ticks(
        "run",
        first,
        (!args.forever).then_some(first + ticks),
        args.agent_logs.is_none() && !args.json,
    );
    let mut last_draw = Instant::now();
    let mut done = 0u64;
    while (args.forever || done < ticks) && !run.stop_requested() {
        if interrupted.load(Ordering::Relaxed) {
            eprintln!(
                "\nlockstep: interrupted; stopping at the tick boundary after tick {}",
                run.state().tick
            );
            break;
        }
        run.tick()?;
        done += 1;
        if done == args.warmup {
            run.restart_latency();
        }
        if let Some(e) = &exporter
            && last_refresh.is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
        {
            e.refresh(run.state(), &run.children());
            last_refresh = Some(Instant::now());
        }
        bar.at(run.state().tick);
        if last_draw.elapsed() >= Duration::from_millis(250) {
            let s = run.state();
            bar.message(format!(
                "agents {}  messages {}  faults {}  p50 {} µs",
                s.live_agents().count(),
                s.counters.messages,
                s.counters.faults,
                run.tick_quantile(0.5)
            ));
            last_draw = Instant::now();
        }
    }
    bar.finish();
    let p50 = run.tick_quantile(0.5);
    let p99 = run.tick_quantile(0.99);
    let sum = run.finish()?;
    if let Some(a) = archiver {
        let (nats, name) = (a.nats.clone(), a.name.clone());
        a.finish(Duration::from_secs(120))?;
        eprintln!("lockstep: archived to {nats}/{name}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"ticks": sum.tick, "steps": sum.steps, "messages": sum.messages, "dropped": sum.dropped,
                "faults": sum.faults, "agents": sum.agents, "hash": sum.hash, "run_dir": sum.run_dir.display().to_string(),
                "wall_ms": sum.wall.as_secs_f64() * 1e3, "tick_p50_us": p50, "tick_p99_us": p99})
        );
    } else {
        println!(
            "lockstep: ran {} ticks in {} ({} µs p50, {} µs p99 per tick)",
            sum.tick,
            fmt_dur(sum.wall),
            p50,
            p99
        );
        println!(
            "  agents live {}  steps {}  messages {} (dropped {})  faults {}",
            sum.agents, sum.steps, sum.messages, sum.dropped, sum.faults
        );
        println!("  final state hash {}", sum.hash);
        println!("  run directory {}", sum.run_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_cmd(
    dir: &Path,
    from: Option<String>,
    until: Option<u64>,
    workers: Option<usize>,
    device: Option<&str>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    let from = from.map(|f| match f.parse::<u64>() {
        Ok(t) => replay::From::Tick(t),
        Err(_) => replay::From::Snapshot(PathBuf::from(f)),
    });
    let t0 = Instant::now();
    let bar = lockstep_supervisor::progress::Progress::ticks("replay", 0, Some(0), !json);
    let r = replay::replay_reporting(
        dir,
        from,
        until,
        workers,
        device,
        &mut |first, tick, last| {
            bar.reset(first, last);
            bar.at(tick);
        },
    )?;
    bar.finish();
    if json {
        let mut v = serde_json::to_value(&r)?;
        v["wall_ms"] = serde_json::json!(t0.elapsed().as_millis() as u64);
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lockstep: replayed ticks {}..={} in {}: all {} tick hashes reproduced; final hash {}",
        r.from + 1,
        r.until,
        fmt_dur(t0.elapsed()),
        r.checked,
        r.hash
    );
    for w in &r.within_tolerance {
        println!("  {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(
    dir: &Path,
    workers: Option<usize>,
    device: Option<&str>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    let t0 = Instant::now();
    let bar = lockstep_supervisor::progress::Progress::ticks("verify", 0, Some(0), !json);
    let verdict = replay::verify_reporting(dir, workers, device, &[], &mut |first, tick, last| {
        bar.reset(first, last);
        bar.at(tick);
    })?;
    bar.finish();
    if json {
        let wall_ms = t0.elapsed().as_millis() as u64;
        let (v, code) = match &verdict {
            replay::Verdict::Identical {
                ticks,
                checkpoints,
                within_tolerance,
            } => (
                serde_json::json!({"verdict": "identical", "ticks": ticks,
                    "checkpoints": checkpoints, "within_tolerance": within_tolerance,
                    "wall_ms": wall_ms}),
                ExitCode::SUCCESS,
            ),
            replay::Verdict::Diverged(d) => {
                let mut v = serde_json::to_value(d)?;
                v["verdict"] = "diverged".into();
                v["wall_ms"] = wall_ms.into();
                (v, ExitCode::from(3))
            }
        };
        println!("{v}");
        return Ok(code);
    }
    match verdict {
        replay::Verdict::Identical {
            ticks,
            checkpoints,
            within_tolerance,
        } => {
            let mut line = format!(
                "identical ({ticks} ticks re-executed, {checkpoints} checkpoints compared, {})",
                fmt_dur(t0.elapsed())
            );
            for w in &within_tolerance {
                line.push_str(&format!("; {w}"));
            }
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        replay::Verdict::Diverged(d) => {
            print!("{d}");
            Ok(ExitCode::from(3))
        }
    }
}

fn fork_cmd(
    dir: &Path,
    at: u64,
    into: &Path,
    workers: Option<usize>,
    device: Option<&str>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    let tick = replay::fork_on(dir, at, into, workers, device)?;
    if json {
        let v = serde_json::json!({"from": dir.display().to_string(), "tick": tick,
            "into": into.display().to_string()});
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lockstep: forked {} at tick {tick} into {}; continue it with `lockstep resume {} --ticks N`",
        dir.display(),
        into.display(),
        into.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `fork` of a run directory, or of an archived run (fetched into a
/// scratch directory next to `into`, removed afterwards).
fn fork_from(
    src: &Path,
    at: u64,
    into: &Path,
    workers: Option<usize>,
    device: Option<&str>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    if !src.to_string_lossy().starts_with("nats://") {
        return fork_cmd(src, at, into, workers, device, json);
    }
    let mut scratch = into.as_os_str().to_owned();
    scratch.push(".fetching");
    let scratch = PathBuf::from(scratch);
    let fetched = fetch_then(src, Some(&scratch));
    let r = fetched.and_then(|dir| fork_cmd(&dir, at, into, workers, device, json));
    let _ = std::fs::remove_dir_all(&scratch);
    r
}

fn new_cmd(
    name: &str,
    lang: lockstep_supervisor::scaffold::Lang,
    dir: &Path,
    build: bool,
    sdk: Option<&Path>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    use lockstep_supervisor::scaffold;
    let agents = scaffold::find_agents_dir(sdk)?;
    let c = scaffold::create(name, lang, dir, &agents)?;
    if json {
        let module = if build {
            Some(scaffold::build(&c)?.display().to_string())
        } else {
            None
        };
        println!(
            "{}",
            serde_json::json!({"dir": c.dir.display().to_string(), "build": c.build.display().to_string(),
                "module": module, "manifest": c.manifest_lines})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("lockstep: created {}", c.dir.display());
    if build {
        let module = scaffold::build(&c)?;
        println!("lockstep: built {}", module.display());
    } else {
        println!("build it:  {}", c.build.display());
    }
    println!(
        "run it: add to a manifest (also in {}):\n\n{}",
        c.dir.join("agent.toml").display(),
        c.manifest_lines
    );
    Ok(ExitCode::SUCCESS)
}

fn push_cmd(dir: &Path, to: &str, json: bool) -> Result<ExitCode, BoxError> {
    let (server, name) = lockstep_supervisor::remote::parse_archive_url(to)
        .ok_or_else(|| format!("{to:?}: expected nats://HOST:PORT/NAME"))?;
    if !dir.join("journal.lsj").is_file() {
        return Err(format!("{}: not a run directory (no journal.lsj)", dir.display()).into());
    }
    let a = lockstep_supervisor::remote::Archiver::start(&server, dir, &name, true)?;
    a.wait(Duration::from_secs(600))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"run_dir": dir.display().to_string(), "pushed_to": to})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("lockstep: pushed {} to {to}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The run directory `arg` names: itself, or — for an archived run
/// (`nats://HOST:PORT/NAME`) — `into`, rebuilt from the archive.
fn fetch_then(arg: &Path, into: Option<&Path>) -> Result<PathBuf, BoxError> {
    let s = arg.to_string_lossy();
    if !s.starts_with("nats://") {
        if into.is_some() {
            return Err("--into is for an archived run (nats://HOST:PORT/NAME)".into());
        }
        return Ok(arg.to_path_buf());
    }
    let into = into.ok_or("an archived run needs --into DIR (where to rebuild it)")?;
    lockstep_supervisor::remote::fetch_archive(&s, into)?;
    Ok(into.to_path_buf())
}

fn resume_cmd(
    dir: &Path,
    until: Option<u64>,
    ticks: Option<u64>,
    workers: Option<usize>,
    device: Option<&str>,
    json: bool,
) -> Result<ExitCode, BoxError> {
    let (mut run, target) = replay::resume_on(dir, workers, device)?;
    let caught_up = run.state().tick;
    let until = match (until, ticks) {
        (Some(u), _) => u,
        (None, Some(n)) => caught_up + n,
        (None, None) => target,
    };
    if !json {
        println!(
            "lockstep: resumed {} at tick {caught_up}; running to tick {until}",
            dir.display()
        );
    }
    let bar =
        lockstep_supervisor::progress::Progress::ticks("resume", caught_up, Some(until), !json);
    while run.state().tick < until && !run.stop_requested() {
        run.tick()?;
        bar.at(run.state().tick);
    }
    bar.finish();
    let sum = run.finish()?;
    if json {
        let v = serde_json::json!({"run_dir": dir.display().to_string(), "resumed_at": caught_up,
            "ticks": sum.tick, "hash": sum.hash, "messages": sum.messages, "faults": sum.faults});
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lockstep: ran to tick {}; final state hash {}",
        sum.tick, sum.hash
    );
    Ok(ExitCode::SUCCESS)
}

fn doctor(run_dir: &Path, json: bool) -> Result<ExitCode, BoxError> {
    let report = lockstep_supervisor::doctor::Report::collect(run_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ctl_cmd(args: CtlArgs) -> Result<ExitCode, BoxError> {
    // Paths are the caller's: made absolute here, where they make sense.
    let mut cmd = args.cmd;
    match &mut cmd {
        CtlCommand::Spawn { module: p, .. }
        | CtlCommand::Upgrade { module: p, .. }
        | CtlCommand::LoadModel { path: p, .. } => {
            *p = std::fs::canonicalize(&*p)
                .map_err(|e| format!("{p}: {e}"))?
                .display()
                .to_string();
        }
        _ => {}
    }
    // Always the JSON answer: the exit status comes from its `ok`, never
    // from the prose, which is printed for people.
    let answer = ctl::ask(&args.run_dir, &cmd)?;
    println!(
        "{}",
        if args.json {
            &answer.line
        } else {
            &answer.text
        }
    );
    Ok(if answer.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn inspect(dir: &Path, json: bool) -> Result<ExitCode, BoxError> {
    let j = journal::read_journal(&dir.join("journal.lsj"))?;
    let mut seed = 0;
    let mut manifest_hash = [0u8; 32];
    let (mut ticks, mut inputs, mut events, mut faults, mut steps, mut messages, mut fuel) =
        (0, 0, 0, 0, 0, 0, 0);
    let mut last_hash = None;
    let mut ended = None;
    let mut checkpoints = 0;
    let mut decisions = 0;
    let mut device = String::new();
    // Inference answers by the device that computed them.
    let mut answers: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for e in &j.entries {
        match e {
            Entry::Header {
                seed: s,
                manifest_hash: h,
                device: d,
                ..
            } => {
                seed = *s;
                manifest_hash = *h;
                device.clone_from(d);
            }
            Entry::Input { .. } => inputs += 1,
            Entry::Decision { .. } => decisions += 1,
            Entry::Event { event, .. } => {
                events += 1;
                if matches!(event, lockstep_supervisor::sim::Event::Fault { .. }) {
                    faults += 1;
                }
            }
            Entry::Tick {
                tick,
                hash,
                steps: s,
                messages: m,
                fuel: f,
                ..
            } => {
                ticks = *tick;
                last_hash = Some(*hash);
                steps += s;
                messages += m;
                fuel += f;
            }
            Entry::Checkpoint { .. } => checkpoints += 1,
            Entry::End { tick, hash } => ended = Some((*tick, *hash)),
            Entry::Inference { answers: a, .. } => {
                for x in a {
                    *answers.entry(x.source.device().to_owned()).or_default() += 1;
                }
            }
        }
    }
    if json {
        let summary = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let v = serde_json::json!({
            "run_dir": dir.display().to_string(),
            "manifest_hash": hex(&manifest_hash),
            "seed": seed,
            "ticks": ticks,
            "steps": steps,
            "messages": messages,
            "fuel": fuel,
            "inputs": inputs,
            "decisions": decisions,
            "events": events,
            "faults": faults,
            "checkpoints": checkpoints,
            "device": device,
            "inference_answers": answers,
            "last_tick_hash": last_hash.map(|h| hex(&h)),
            "ended_after_tick": ended.map(|(t, _)| t),
            "torn_tail": j.torn_tail,
            "summary": summary,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("run directory   {}", dir.display());
    println!("manifest hash   {}", hex(&manifest_hash));
    println!("seed            {seed}");
    println!("ticks           {ticks}");
    println!("steps           {steps}");
    println!("messages        {messages}");
    println!("fuel            {fuel}");
    println!("inputs          {inputs}");
    println!("decisions       {decisions}");
    println!("events          {events} ({faults} faults)");
    println!("checkpoints     {checkpoints}");
    println!("device          {device} (asked for)");
    if !answers.is_empty() {
        let by: Vec<String> = answers.iter().map(|(d, n)| format!("{n} on {d}")).collect();
        println!("answers         {}", by.join(", "));
    }
    if let Some(h) = last_hash {
        println!("last tick hash  {}", hex(&h));
    }
    match ended {
        Some((t, _)) => println!("status          ended cleanly after tick {t}"),
        None => println!(
            "status          not ended (running, interrupted or crashed){}",
            if j.torn_tail {
                "; torn final frame ignored"
            } else {
                ""
            }
        ),
    }
    if let Ok(meta) = std::fs::read_to_string(dir.join("summary.json")) {
        println!(
            "summary         {}",
            meta.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--tick `{s}`: use N, A..B or A..");
    match s.split_once("..") {
        None => {
            let t = s.parse().map_err(|_| bad())?;
            Ok((t, t))
        }
        Some((a, b)) => {
            let a = if a.is_empty() {
                0
            } else {
                a.parse().map_err(|_| bad())?
            };
            let b = if b.is_empty() {
                u64::MAX
            } else {
                b.parse::<u64>().map_err(|_| bad())?.saturating_sub(1)
            };
            Ok((a, b))
        }
    }
}

fn entry_agent(e: &Entry) -> Option<u64> {
    use lockstep_supervisor::sim::{Decision, Event};
    match e {
        Entry::Decision {
            decision: Decision::Watchdog { agent } | Decision::Quarantine { agent },
            ..
        } => Some(*agent),
        Entry::Event {
            event:
                Event::Fault { agent, .. }
                | Event::Restarted { agent }
                | Event::TaskRefused { agent, .. }
                | Event::InferRefused { agent, .. },
            ..
        } => Some(*agent),
        _ => None,
    }
}

/// The id of agent `which` (a number, or a name the run knew at its
/// newest checkpoint: the manifest's agents and those spawned before it).
fn agent_id(run_dir: &Path, which: &str) -> Result<u64, BoxError> {
    if let Ok(id) = parse_u64(which) {
        return Ok(id);
    }
    let rec = replay::Recorded::open(run_dir)?;
    let body = rec.checkpoint_at_or_before(rec.last_tick)?;
    body.scheduler.names.get(which).copied().ok_or_else(|| {
        format!(
            "--agent {which:?}: no agent of that name in {} at tick {} (an agent spawned after that checkpoint is known by its id only)",
            run_dir.display(),
            body.tick
        )
        .into()
    })
}

fn log(args: LogArgs) -> Result<ExitCode, BoxError> {
    let j = journal::read_journal(&args.run_dir.join("journal.lsj"))?;
    let agent = args
        .agent
        .as_deref()
        .map(|a| agent_id(&args.run_dir, a))
        .transpose()?;
    let range = args.tick.as_deref().map(parse_range).transpose()?;
    for e in &j.entries {
        if let Some((a, b)) = range
            && (e.tick() < a || e.tick() > b)
        {
            continue;
        }
        if let Some(k) = &args.kind
            && e.kind() != k
        {
            continue;
        }
        if let Some(agent) = agent {
            let matches = entry_agent(e) == Some(agent)
                || matches!(e, Entry::Inference { answers, .. } if answers.iter().any(|a| a.agent == agent));
            if !matches {
                continue;
            }
        }
        let line = match e {
            Entry::Header {
                seed,
                manifest_hash,
                device,
                ..
            } => format!(
                "header seed={seed} manifest={} device={device}",
                hex(manifest_hash)
            ),
            Entry::Input { input, outcome, .. } => format!(
                "input {} -> {}",
                input.describe(),
                match outcome {
                    lockstep_supervisor::sim::InputOutcome::Applied(t) => format!("applied: {t}"),
                    lockstep_supervisor::sim::InputOutcome::Refused(t) => format!("refused: {t}"),
                }
            ),
            Entry::Decision { decision, .. } => format!("decision {decision:?}"),
            Entry::Event { event, .. } => format!("event {event:?}"),
            Entry::Inference { answers, .. } => format!(
                "inference {} answers: {}",
                answers.len(),
                answers
                    .iter()
                    .map(|a| format!(
                        "agent {} req {} {} {} on {}",
                        a.agent,
                        a.request_id,
                        a.model,
                        &hex(&a.hash)[..16],
                        a.source.device()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Entry::Tick {
                hash,
                steps,
                calls,
                fuel,
                messages,
                dropped,
                faults,
                ..
            } => format!(
                "tick hash={} steps={steps} calls={calls} fuel={fuel} messages={messages} dropped={dropped} faults={faults}",
                &hex(hash)[..16]
            ),
            Entry::Checkpoint {
                file, state_hash, ..
            } => format!("checkpoint {file} state={}", &hex(state_hash)[..16]),
            Entry::End { hash, .. } => format!("end hash={}", hex(hash)),
        };
        if args.json {
            let v =
                serde_json::json!({"tick": e.tick(), "kind": e.kind(), "text": line, "entry": e});
            println!("{v}");
        } else {
            println!("{:>8} {line}", e.tick());
        }
    }
    if j.torn_tail {
        eprintln!("(a torn final frame was ignored)");
    }
    Ok(ExitCode::SUCCESS)
}

fn ping(args: PingArgs) -> Result<ExitCode, BoxError> {
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
            stats: Default::default(),
            agents: Vec::new(),
            flow: Default::default(),
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

#[cfg(test)]
mod tests {
    use super::EXIT_CODES;
    use shm_protocol::control::ExitCode;

    /// `--help` names every child exit code.
    #[test]
    fn help_lists_every_child_exit_code() {
        for code in ExitCode::ALL {
            if code != ExitCode::Ok {
                let n = (code as i32).to_string();
                assert!(
                    EXIT_CODES.contains(&n),
                    "{code:?} ({n}) missing from --help"
                );
            }
        }
    }
}
