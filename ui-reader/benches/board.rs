//! UI IPC benchmark (the ATSD's "UI IPC serialization latency < 2 ms").
//!
//! `cargo bench -p lockstep-ui --bench board` (`LOCKSTEP_BENCH_QUICK=1` for a
//! smoke run, `LOCKSTEP_BENCH_RUNS` rounds, default 5).
//!
//! Measures, for live states of the size the supervisor publishes (run
//! counters, 64 recent log lines, four children and one row per agent for
//! 10, 256 and 1,024 agents — `Run` publishes up to 512 rows plus up to 128
//! agents that are not live):
//!
//! * **publish** — what the supervisor pays per tick: postcard-encode the
//!   [`LiveState`] and write it into the state board (seqlock) file;
//! * **read** — what a viewer pays: a consistent seqlock read through its
//!   own read-only (`PROT_READ`) mapping of the same file, then decode;
//! * **visible** — end to end: from the start of a publish in this process
//!   to the moment a reader in a *separate process*, polling the board, has
//!   decoded that generation (it answers through a second board).
//!
//! Each figure is the median over rounds of the per-round p50/p99, with the
//! min–max across rounds.

use lockstep_bench_support::knobs::{env_or, quick, run_as_test};
use lockstep_bench_support::paths::Scratch;
use lockstep_bench_support::stat::quantile;
use lockstep_bench_support::{Stat, Table, preamble};
use lockstep_common::live::{
    AgentRow, ChildStatus, FLOW_WINDOW_TICKS, Flow, FlowEdge, FlowTarget, LIVE_STATE_VERSION,
    LiveState, MAX_FLOW_EDGES, RunStats,
};
use shm_protocol::board::{BoardReader, BoardWriter};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CAPACITY: usize = 1 << 20;

fn state(agents: usize, tick: u64) -> LiveState {
    let children = (0..4)
        .map(|i| ChildStatus {
            name: format!("worker-{i}"),
            role: "worker".into(),
            pid: 1000 + i,
            state: "ready".into(),
            last_rtt_ns: 0,
        })
        .collect();
    let n = agents as u64;
    LiveState {
        version: LIVE_STATE_VERSION,
        phase: "running".into(),
        tick,
        children,
        log: (0..64)
            .map(|i| format!("[tick {tick}] agent {i} sensor-{i}: reading {}", i * 7))
            .collect(),
        stats: RunStats {
            live: n,
            total: n,
            steps: tick * n,
            messages: tick * 7,
            tick_p50_us: 812,
            tick_p99_us: 1490,
            ..RunStats::default()
        },
        agents: (0..n)
            .map(|id| AgentRow {
                id,
                name: format!("sensor-{id}"),
                tenant: 0,
                status: "live".into(),
                queued: (id + tick) % 5,
            })
            .collect(),
        flow: Flow {
            window_ticks: FLOW_WINDOW_TICKS,
            distinct: 200,
            messages: 5_000,
            // A full table of edges, as a busy run publishes.
            edges: (0..MAX_FLOW_EDGES as u64)
                .map(|i| FlowEdge {
                    from: i + 1,
                    to: if i % 3 == 0 {
                        FlowTarget::Topic(format!("readings-{}", i % 4))
                    } else {
                        FlowTarget::Agent(i + 2)
                    },
                    count: 200 - i,
                })
                .collect(),
        },
    }
}

fn decode(bytes: &[u8]) -> LiveState {
    shm_protocol::codec::decode(bytes).expect("the board holds a valid live state")
}

/// Child: polls `board` and acknowledges every generation it decodes on
/// `ack` (as the tick it read), until it reads tick `u64::MAX`.
fn child(board: &Path, ack: &Path) {
    let reader = BoardReader::open(board).expect("open board");
    let mut acker = BoardWriter::create(ack, 64).expect("create ack board");
    let mut last = 0;
    loop {
        let snap = reader.read().expect("read board");
        if snap.generation == last {
            std::hint::spin_loop();
            continue;
        }
        last = snap.generation;
        let s = decode(&snap.data);
        acker
            .publish(&s.tick.to_le_bytes())
            .expect("publish the acknowledgement");
        if s.tick == u64::MAX {
            return;
        }
    }
}

struct Row {
    publish: Vec<Quantiles>,
    read: Vec<Quantiles>,
    visible: Vec<Quantiles>,
    bytes: usize,
}

/// (p50, p99) in µs.
type Quantiles = (f64, f64);

/// One round of one size.
struct Sample {
    publish: Quantiles,
    read: Quantiles,
    visible: Quantiles,
    bytes: usize,
}

fn round(dir: &Path, agents: usize, iters: usize) -> Sample {
    let board_path = dir.join(format!("state-{agents}.board"));
    let ack_path = dir.join(format!("ack-{agents}.board"));
    let _ = std::fs::remove_file(&ack_path);
    let mut writer = BoardWriter::create(&board_path, CAPACITY).expect("create board");
    let reader = BoardReader::open(&board_path).expect("open board");
    let states: Vec<LiveState> = (1..=16).map(|t| state(agents, t)).collect();
    let mut bytes = 0;
    // publish and read, in process (separate mappings of the same file).
    let mut publish = Vec::with_capacity(iters);
    let mut read = Vec::with_capacity(iters);
    for i in 0..iters {
        let s = &states[i % states.len()];
        let t = Instant::now();
        let enc = shm_protocol::codec::encode(s).expect("encode");
        writer.publish(&enc).expect("publish");
        publish.push(t.elapsed().as_secs_f64() * 1e6);
        bytes = enc.len();
        let t = Instant::now();
        let snap = reader.read().expect("read");
        let got = decode(&snap.data);
        read.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(got.tick, s.tick);
    }
    // visible: a reader in another process.
    let mut kid = Command::new(std::env::current_exe().expect("current exe"))
        .env(
            "LOCKSTEP_BOARD_CHILD",
            format!("{}|{}", board_path.display(), ack_path.display()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the reader process");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ack = loop {
        if let Ok(r) = BoardReader::open(&ack_path) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the reader process did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let n = (iters / 4).max(50);
    let mut visible = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = states[i % states.len()].clone();
        s.tick = 1_000 + i as u64;
        let t = Instant::now();
        let enc = shm_protocol::codec::encode(&s).expect("encode");
        writer.publish(&enc).expect("publish");
        loop {
            let a = ack.read().expect("read ack");
            if a.data.len() == 8 && u64::from_le_bytes(a.data[..8].try_into().unwrap()) == s.tick {
                break;
            }
            assert!(
                Instant::now() < deadline + Duration::from_secs(60),
                "reader stalled"
            );
            std::hint::spin_loop();
        }
        visible.push(t.elapsed().as_secs_f64() * 1e6);
        // Let the reader settle (one publication in flight at a time).
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut end = states[0].clone();
    end.tick = u64::MAX;
    writer
        .publish(&shm_protocol::codec::encode(&end).expect("encode"))
        .expect("publish");
    let status = kid.wait().expect("wait for the reader");
    assert!(status.success(), "reader process failed: {status}");
    let q = |v: &mut Vec<f64>| (quantile(v, 0.5), quantile(v, 0.99));
    Sample {
        publish: q(&mut publish),
        read: q(&mut read),
        visible: q(&mut visible),
        bytes,
    }
}

fn main() {
    if let Ok(spec) = std::env::var("LOCKSTEP_BOARD_CHILD") {
        let (b, a) = spec.split_once('|').expect("board|ack");
        child(Path::new(b), Path::new(a));
        return;
    }
    let quick = quick() || run_as_test();
    let runs: usize = env_or("LOCKSTEP_BENCH_RUNS", if quick { 1 } else { 5 });
    let iters = if quick { 200 } else { 4_000 };
    println!("# UI state board benchmark");
    preamble();
    let scratch = Scratch::new("board");
    let dir = scratch.path();
    let sizes = [10usize, 256, 1024];
    let mut rows: Vec<Row> = sizes
        .iter()
        .map(|_| Row {
            publish: Vec::new(),
            read: Vec::new(),
            visible: Vec::new(),
            bytes: 0,
        })
        .collect();
    for _ in 0..runs {
        for (i, &n) in sizes.iter().enumerate() {
            let s = round(dir, n, iters);
            rows[i].publish.push(s.publish);
            rows[i].read.push(s.read);
            rows[i].visible.push(s.visible);
            rows[i].bytes = s.bytes;
        }
    }
    let cell = |v: &[(f64, f64)], p99: bool| {
        let v: Vec<f64> = v.iter().map(|x| if p99 { x.1 } else { x.0 }).collect();
        Stat::of(&v).show(1)
    };
    println!(
        "UI state board: {runs} round(s) × {iters} publications; µs, median (min–max over rounds)"
    );
    let mut t = Table::new([
        "agent rows",
        "state bytes",
        "publish p50",
        "publish p99",
        "read p50",
        "read p99",
        "visible in another process p50",
        "p99",
    ]);
    for (i, &n) in sizes.iter().enumerate() {
        let r = &rows[i];
        t.row([
            n.to_string(),
            r.bytes.to_string(),
            cell(&r.publish, false),
            cell(&r.publish, true),
            cell(&r.read, false),
            cell(&r.read, true),
            cell(&r.visible, false),
            cell(&r.visible, true),
        ]);
    }
    print!("{t}");
}
