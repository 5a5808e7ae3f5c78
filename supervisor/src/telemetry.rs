//! Telemetry: per tick, per agent (sampled) and per inference, through
//! `tracing` spans, a JSONL metrics file and registered [`TelemetryHook`]s.
//!
//! Telemetry is observation only: nothing here feeds back into scheduling
//! or into any hash, so attaching hooks or changing the metrics file never
//! changes a run's results.

use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One tick.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TickTelemetry {
    /// Tick.
    pub tick: u64,
    /// Wall time of the whole tick, µs.
    pub wall_us: u64,
    /// Wall time waiting for workers, µs.
    pub workers_us: u64,
    /// Steps.
    pub steps: u64,
    /// Calls into agents.
    pub calls: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Fuel.
    pub fuel: u64,
    /// Faults.
    pub faults: u64,
    /// Live agents.
    pub agents: u64,
    /// Open tasks.
    pub tasks_open: u64,
    /// Messages waiting for the next tick.
    pub queued: u64,
    /// Per-worker wall time of its share, µs.
    pub worker_us: Vec<u64>,
}

/// One agent in a sampled tick (every [`crate::runner::SAMPLE_EVERY`]
/// ticks every called agent reports its fuel and time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentTelemetry {
    /// Tick.
    pub tick: u64,
    /// Agent.
    pub agent: u64,
    /// Calls this tick.
    pub calls: u32,
    /// Fuel this tick.
    pub fuel: u64,
    /// Wall time of its calls, ns.
    pub wall_ns: u64,
    /// Messages delivered to it this tick.
    pub mailbox: u64,
    /// Whether it faulted.
    pub faulted: bool,
}

/// One inference batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InferenceTelemetry {
    /// Tick.
    pub tick: u64,
    /// Model.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Batches run.
    pub batches: u64,
    /// Largest batch.
    pub max_batch: u64,
    /// Queue + run latency, µs.
    pub latency_us: u64,
    /// Run time inside the engine, µs.
    pub run_us: u64,
    /// Device (`cpu`, `cuda:0`, `builtin`, `none` when no host answered).
    pub device: String,
    /// Model version the batch ran on (empty for the built-in model).
    pub version: String,
    /// Time inside the host before the first model run (validation,
    /// concatenation), µs.
    pub queue_us: u64,
    /// Resident set size of the inference host after the batch (0: no host).
    pub rss_bytes: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Inference host restarts this batch needed (crash or hang).
    pub host_restarts: u64,
}

/// Receives telemetry (register with the supervisor's API).
pub trait TelemetryHook: Send {
    /// After every tick.
    fn on_tick(&mut self, _t: &TickTelemetry) {}
    /// For sampled agents.
    fn on_agent(&mut self, _a: &AgentTelemetry) {}
    /// After every inference batch.
    fn on_inference(&mut self, _i: &InferenceTelemetry) {}
}

/// Writes telemetry as JSON lines (`{"type":"tick",…}`).
#[derive(Debug)]
pub struct JsonlSink {
    out: std::io::BufWriter<std::fs::File>,
}

impl JsonlSink {
    /// Creates (truncates) the metrics file.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: std::io::BufWriter::new(std::fs::File::create(path)?),
        })
    }

    fn line<T: Serialize>(&mut self, kind: &str, v: &T) {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            r#type: &'a str,
            #[serde(flatten)]
            v: &'a T,
        }
        if serde_json::to_writer(&mut self.out, &Tagged { r#type: kind, v }).is_ok() {
            let _ = self.out.write_all(b"\n");
        }
    }

    /// Flushes buffered lines.
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

impl TelemetryHook for JsonlSink {
    fn on_tick(&mut self, t: &TickTelemetry) {
        self.line("tick", t);
    }
    fn on_agent(&mut self, a: &AgentTelemetry) {
        self.line("agent", a);
    }
    fn on_inference(&mut self, i: &InferenceTelemetry) {
        self.line("inference", i);
    }
}

/// Running aggregates for the live view.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    /// Ticks run in this process.
    pub ticks: u64,
    /// Sum of tick wall times, µs.
    pub wall_us: u64,
    /// Recent tick wall times (µs), newest last, at most 1024.
    pub recent: std::collections::VecDeque<u64>,
}

impl Aggregates {
    /// Records one tick.
    pub fn record(&mut self, t: &TickTelemetry) {
        self.ticks += 1;
        self.wall_us += t.wall_us;
        if self.recent.len() == 1024 {
            self.recent.pop_front();
        }
        self.recent.push_back(t.wall_us);
    }

    /// The `q` quantile of recent tick times, µs.
    pub fn quantile(&self, q: f64) -> u64 {
        let mut v: Vec<u64> = self.recent.iter().copied().collect();
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}
