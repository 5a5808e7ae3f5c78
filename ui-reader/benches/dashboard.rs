//! Web dashboard benchmark (`lockstep-ui --serve`).
//!
//! `cargo bench -p lockstep-ui --bench dashboard` (`LOCKSTEP_BENCH_QUICK=1`
//! for a smoke run, `LOCKSTEP_BENCH_RUNS` rounds, default 5).
//!
//! This process writes a state board (256 agent rows, 64 log lines, four
//! children: about the demo's size), starts the real `lockstep-ui --serve`
//! on it and attaches 1 or 20 event-stream clients (threads of this
//! process, raw sockets).  Per round:
//!
//! * **latency** — from just before a publication on the board to the
//!   moment each client has read the event carrying that tick, for
//!   publications 150 ms apart (slower than the server's 100 ms least gap
//!   between events, so none is merged): what a viewer waits, board poll
//!   (10 ms), JSON encoding and the socket included;
//! * **CPU** — the server's user + system time (`/proc/<pid>/stat`) over
//!   its wall time, while the board is published 40 times a second (the
//!   demo's rate; the server sends at most 10 events a second).
//!
//! Each figure is the median over rounds, with the min–max across rounds.

use lockstep_bench_support::knobs::{env_or, quick, run_as_test};
use lockstep_bench_support::paths::Scratch;
use lockstep_bench_support::process::cpu_seconds;
use lockstep_bench_support::stat::quantile;
use lockstep_bench_support::{Stat, Table, preamble};
use lockstep_common::live::{
    AgentRow, ChildStatus, FLOW_WINDOW_TICKS, Flow, FlowEdge, FlowTarget, LIVE_STATE_VERSION,
    LiveState, MAX_FLOW_EDGES, RunStats,
};
use shm_protocol::board::BoardWriter;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CAPACITY: usize = 1 << 20;
const AGENTS: u64 = 256;

fn state(tick: u64) -> LiveState {
    LiveState {
        version: LIVE_STATE_VERSION,
        phase: "running".into(),
        tick,
        children: (0..4)
            .map(|i| ChildStatus {
                name: format!("worker-{i}"),
                role: "worker".into(),
                pid: 1000 + i,
                state: "ready".into(),
                last_rtt_ns: 12_000 + u64::from(i),
            })
            .collect(),
        log: (0..64)
            .map(|i| format!("[INFO] sensor-{i}: reading {} at tick {tick}", i * 7))
            .collect(),
        stats: RunStats {
            live: AGENTS,
            total: AGENTS,
            steps: tick * AGENTS,
            messages: tick * 7,
            tick_p50_us: 812,
            tick_p99_us: 1490,
            ..RunStats::default()
        },
        agents: (1..=AGENTS)
            .map(|id| AgentRow {
                id,
                name: format!("sensor-{id}"),
                tenant: (id % 3) as u32,
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

fn publish(w: &mut BoardWriter, tick: u64) {
    let enc = shm_protocol::codec::encode(&state(tick)).expect("encode");
    w.publish(&enc).expect("publish");
}

/// The server's user + system CPU time so far, seconds.
fn cpu_s(pid: u32) -> f64 {
    cpu_seconds(pid).expect("the server's /proc/<pid>/stat")
}

/// One event-stream client: sends (tick, arrival) for each event.
fn client(addr: SocketAddr, tx: mpsc::Sender<(u64, Instant)>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let now = Instant::now();
        // The state's tick is the event's first "tick" field.
        let Some(i) = data.find("\"tick\":") else {
            continue;
        };
        let digits: String = data[i + 7..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(t) = digits.parse()
            && tx.send((t, now)).is_err()
        {
            return;
        }
    }
}

struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(board: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep-ui"))
        .args(["--serve", "127.0.0.1:0"])
        .arg(board)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lockstep-ui --serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let addr = line
        .trim()
        .strip_prefix("serving http://")
        .and_then(|r| r.strip_suffix('/'))
        .expect("serving http://ADDR/")
        .parse()
        .expect("address");
    Server(child, addr)
}

struct Round {
    /// Latency p50, p99, ms.
    lat: (f64, f64),
    /// Server CPU, % of one core, at 40 publications/s.
    cpu: f64,
    /// Events the clients received per second during the CPU phase.
    events_per_s: f64,
}

fn round(dir: &Path, clients: usize, pubs: u64, cpu_secs: f64) -> Round {
    let board = dir.join(format!("state-{clients}.board"));
    let _ = std::fs::remove_file(&board);
    let mut w = BoardWriter::create(&board, CAPACITY).expect("create board");
    let mut tick = 1;
    publish(&mut w, tick);
    let server = serve(&board);
    let (tx, rx) = mpsc::channel();
    for _ in 0..clients {
        let tx = tx.clone();
        let addr = server.1;
        std::thread::spawn(move || client(addr, tx));
    }
    drop(tx);
    // Every client has its first event.
    let mut ready = 0;
    while ready < clients {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a client got no first event");
        ready += 1;
    }
    std::thread::sleep(Duration::from_millis(200));
    while rx.try_recv().is_ok() {}

    // Latency.
    let mut lat = Vec::new();
    for i in 0..pubs {
        tick += 1;
        let t0 = Instant::now();
        publish(&mut w, tick);
        let mut got = 0;
        while got < clients {
            let (t, at) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("event lost");
            if t == tick {
                lat.push(at.duration_since(t0).as_secs_f64() * 1e3);
                got += 1;
            }
        }
        // 150 ms and a varying part of the board poll period, so that the
        // publications fall at every phase of the server's polling.
        std::thread::sleep(Duration::from_micros(150_000 + (i * 7_919) % 10_000));
    }

    // CPU at the supervisor's publication rate.
    while rx.try_recv().is_ok() {}
    let pid = server.0.id();
    let c0 = cpu_s(pid);
    let t0 = Instant::now();
    let mut next = t0;
    let mut events = 0u64;
    while t0.elapsed().as_secs_f64() < cpu_secs {
        tick += 1;
        publish(&mut w, tick);
        next += Duration::from_millis(25);
        while let Ok(_e) = rx.try_recv() {
            events += 1;
        }
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_s(pid) - c0) / wall * 100.0;
    drop(server);
    let _ = std::fs::remove_file(&board);
    Round {
        lat: (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99)),
        cpu,
        events_per_s: events as f64 / wall / clients as f64,
    }
}

fn main() {
    let quick = quick() || run_as_test();
    let runs: usize = env_or("LOCKSTEP_BENCH_RUNS", if quick { 1 } else { 5 });
    let (pubs, cpu_secs) = if quick { (10, 1.0) } else { (40, 5.0) };
    println!("# Web dashboard benchmark");
    preamble();
    let scratch = Scratch::new("dashboard");
    let dir = scratch.path();
    let enc = shm_protocol::codec::encode(&state(1))
        .expect("encode")
        .len();
    println!(
        "Web dashboard: {runs} round(s); {AGENTS} agent rows ({enc} bytes on the board); \
         latency over {pubs} publications 150 ms apart; CPU over {cpu_secs} s of 40 publications/s; \
         median (min–max over rounds)"
    );
    let mut t = Table::new([
        "event-stream clients",
        "board → client p50 (ms)",
        "p99 (ms)",
        "server CPU (% of one core)",
        "events/s per client",
    ]);
    for clients in [1usize, 20] {
        let rounds: Vec<Round> = (0..runs)
            .map(|_| round(dir, clients, pubs, cpu_secs))
            .collect();
        let cell =
            |f: &dyn Fn(&Round) -> f64| Stat::of(&rounds.iter().map(f).collect::<Vec<_>>()).show(1);
        t.row([
            clients.to_string(),
            cell(&|r| r.lat.0),
            cell(&|r| r.lat.1),
            cell(&|r| r.cpu),
            cell(&|r| r.events_per_s),
        ]);
    }
    print!("{t}");
}
