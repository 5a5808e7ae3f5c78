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
    /// How long the tick waited for inference answers due at it, µs (0
    /// when the pipeline hid the model's latency).
    pub infer_wait_us: u64,
    /// Inference requests asked and not answered after the tick.
    pub infer_pending: u64,
    /// Inference batches on the host after the tick.
    pub infer_batches_in_flight: u64,
    /// The host's model time of the batches answered during the tick, µs
    /// (over the tick's wall time: the host's utilisation).
    pub infer_busy_us: u64,
}

/// One agent's sample (each called agent reports its fuel, time and memory
/// once every [`crate::run::SAMPLE_EVERY`] ticks).
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
    /// Its linear memory after the tick (pages × 64 KiB), bytes, as its
    /// worker reports it (0: not reported).
    pub memory_bytes: u64,
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

/// One checkpoint (the snapshot hook).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointTelemetry {
    /// Tick after which it was taken.
    pub tick: u64,
    /// Snapshot file, relative to the run directory.
    pub file: String,
    /// Global state hash (hex).
    pub state_hash: String,
    /// Agents imaged.
    pub agents: u64,
    /// Wall time, µs.
    pub wall_us: u64,
    /// Bytes of the page store after it.
    pub pages_bytes: u64,
}

/// One child failure and its recovery (observation only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureTelemetry {
    /// Tick.
    pub tick: u64,
    /// What happened (the recovery line).
    pub line: String,
}

/// One line an agent logged (the SDK's `log`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentLogTelemetry {
    /// Tick it was logged in.
    pub tick: u64,
    /// Agent id.
    pub agent: u64,
    /// Instance name.
    pub name: String,
    /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    pub level: u8,
    /// The line.
    pub line: String,
}

/// Names of the log levels, by [`AgentLogTelemetry::level`].
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Prints agents' log lines up to a level to stderr, as `tick T [LEVEL]
/// name: line` (`lockstep run --agent-logs`).  The lines are deterministic:
/// a replay prints them again, the same.
#[derive(Debug, Clone, Default)]
pub struct LogPrinter {
    /// Highest level printed (index into [`LOG_LEVELS`]).
    pub max_level: u8,
    /// Only these agents (by instance name); empty: every agent.
    pub only: Vec<String>,
}

impl TelemetryHook for LogPrinter {
    fn on_log(&mut self, l: &AgentLogTelemetry) {
        if l.level <= self.max_level && (self.only.is_empty() || self.only.contains(&l.name)) {
            let lvl = LOG_LEVELS[usize::from(l.level).min(4)].to_ascii_uppercase();
            eprintln!("tick {} [{lvl}] {}: {}", l.tick, l.name, l.line);
        }
    }
}

/// Receives telemetry (register with the supervisor's API).
pub trait TelemetryHook: Send {
    /// Whether this hook wants every called agent's sample every tick
    /// (otherwise each agent's once every [`crate::run::SAMPLE_EVERY`]
    /// ticks).  Costs the workers a measurement per agent call on every
    /// tick while it is registered; `metrics.jsonl` keeps one sample per
    /// agent every `SAMPLE_EVERY` ticks.
    fn agent_samples_every_tick(&self) -> bool {
        false
    }

    /// After every tick.
    fn on_tick(&mut self, _t: &TickTelemetry) {}
    /// For sampled agents.
    fn on_agent(&mut self, _a: &AgentTelemetry) {}
    /// After every inference batch.
    fn on_inference(&mut self, _i: &InferenceTelemetry) {}
    /// After every checkpoint.
    fn on_checkpoint(&mut self, _c: &CheckpointTelemetry) {}
    /// After a child failed and was recovered.
    fn on_failure(&mut self, _f: &FailureTelemetry) {}
    /// For every line an agent logs.
    fn on_log(&mut self, _l: &AgentLogTelemetry) {}
}

/// Largest `metrics.jsonl` before it is rotated to `metrics.1.jsonl`
/// (replacing the previous one): the metrics of a run take at most twice
/// this on disk, whatever its length.
pub const METRICS_ROTATE_BYTES: u64 = 64 << 20;

/// Writes telemetry as JSON lines (`{"type":"tick",…}`), rotated at
/// [`METRICS_ROTATE_BYTES`].
#[derive(Debug)]
pub struct JsonlSink {
    path: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
    limit: u64,
}

impl JsonlSink {
    /// Creates (truncates) the metrics file.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::with_limit(path, METRICS_ROTATE_BYTES)
    }

    /// Like [`JsonlSink::create`], rotating at `limit` bytes.
    pub fn with_limit(path: &Path, limit: u64) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(crate::rundir::create_private(path)?),
            written: 0,
            limit,
        })
    }

    fn line<T: Serialize>(&mut self, kind: &str, v: &T) {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            r#type: &'a str,
            #[serde(flatten)]
            v: &'a T,
        }
        let Ok(mut text) = serde_json::to_vec(&Tagged { r#type: kind, v }) else {
            return;
        };
        text.push(b'\n');
        if self.written + text.len() as u64 > self.limit {
            self.rotate();
        }
        if self.out.write_all(&text).is_ok() {
            self.written += text.len() as u64;
        }
    }

    fn rotate(&mut self) {
        let _ = self.out.flush();
        let old = self.path.with_extension("1.jsonl");
        let _ = std::fs::rename(&self.path, &old);
        if let Ok(f) = crate::rundir::create_private(&self.path) {
            self.out = std::io::BufWriter::new(f);
            self.written = 0;
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
    fn on_checkpoint(&mut self, c: &CheckpointTelemetry) {
        self.line("checkpoint", c);
    }
    fn on_failure(&mut self, f: &FailureTelemetry) {
        self.line("failure", f);
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
    /// Recent (wait for inference µs, host model time µs, tick wall µs),
    /// newest last, at most 1024.
    pub recent_infer: std::collections::VecDeque<(u64, u64, u64)>,
    /// Inference requests outstanding after the last tick.
    pub infer_pending: u64,
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
        if self.recent_infer.len() == 1024 {
            self.recent_infer.pop_front();
        }
        self.recent_infer
            .push_back((t.infer_wait_us, t.infer_busy_us, t.wall_us));
        self.infer_pending = t.infer_pending;
    }

    /// Starts the tick latency window afresh (the ticks recorded so far
    /// no longer count in [`Aggregates::quantile`]).
    pub fn restart_latency(&mut self) {
        self.recent.clear();
    }

    /// Recent ticks' wait for inference answers: (total µs, ticks that
    /// waited at all).
    pub fn infer_wait(&self) -> (u64, u64) {
        let total = self.recent_infer.iter().map(|r| r.0).sum();
        let waited = self.recent_infer.iter().filter(|r| r.0 > 0).count() as u64;
        (total, waited)
    }

    /// The host's utilisation over the recent ticks: its model time over
    /// their wall time, in thousandths.
    pub fn infer_busy_permille(&self) -> u64 {
        let busy: u64 = self.recent_infer.iter().map(|r| r.1).sum();
        let wall: u64 = self.recent_infer.iter().map(|r| r.2).sum();
        (busy * 1000).checked_div(wall).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_rotate_and_stay_bounded() {
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-metrics-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let path = dir.join("metrics.jsonl");
        let mut sink = JsonlSink::with_limit(&path, 10_000).unwrap();
        for tick in 0..5_000 {
            sink.on_tick(&TickTelemetry {
                tick,
                ..TickTelemetry::default()
            });
        }
        sink.flush();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&path) <= 10_000, "{}", size(&path));
        assert!(size(&dir.join("metrics.1.jsonl")) <= 10_000);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.lines().last().unwrap().contains("\"tick\":4999"));
    }
}
