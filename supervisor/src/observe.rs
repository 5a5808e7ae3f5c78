//! Observers of a run: everything that watches it and never feeds back —
//! registered telemetry hooks, the metrics file, the tick-latency
//! aggregates, recent log lines, the message flow ([`FlowWindow`]) and the
//! state board for read-only viewers.
//!
//! A run hands each observation to [`Observers`] once; what is done with it
//! (written, sampled, published at most every [`BOARD_INTERVAL`]) is
//! decided here.  Nothing here touches the deterministic state, the journal
//! or any hash: attaching a hook or a viewer never changes a run.

use crate::flow::FlowWindow;
use crate::sim::{AgentRec, AgentStatus, SimState};
use crate::telemetry::{
    AgentTelemetry, Aggregates, CheckpointTelemetry, FailureTelemetry, InferenceTelemetry,
    JsonlSink, TelemetryHook, TickTelemetry,
};
use lockstep_common::live::{
    AgentRow, ChildStatus, LIVE_STATE_VERSION, LiveState, MAX_AGENT_ROWS, MAX_EXTRA_ROWS, RunStats,
};
use shm_protocol::board::BoardWriter;
use shm_protocol::worker::{AgentResult, OutputRef, Sample};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// Shortest interval between two state-board publications while running.
pub const BOARD_INTERVAL: Duration = Duration::from_millis(20);
/// Recent log lines kept for viewers.
pub const LOG_LINES: usize = 32;

/// Child processes as a viewer sees them.
#[derive(Debug, Clone, Default)]
pub struct Children {
    /// (name, role, pid, state).
    pub rows: Vec<(String, String, u32, String)>,
    /// Worker recoveries so far.
    pub recoveries: u64,
}

/// Every observer of a run (see the module docs).
pub struct Observers {
    hooks: Vec<Box<dyn TelemetryHook>>,
    metrics: Option<JsonlSink>,
    board: Option<BoardWriter>,
    /// The message flow the board shows (counted only with a board).
    flow: Option<FlowWindow>,
    last_board: Option<Instant>,
    agg: Aggregates,
    logs: VecDeque<String>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("hooks", &self.hooks.len())
            .field("metrics", &self.metrics.is_some())
            .field("board", &self.board.is_some())
            .finish_non_exhaustive()
    }
}

impl Observers {
    /// Observers writing `metrics.jsonl` and `state.board` in `dir` when
    /// asked to.
    pub fn new(dir: &Path, metrics: bool, board: bool) -> Self {
        let board = if board {
            BoardWriter::create(&dir.join("state.board"), 1 << 20).ok()
        } else {
            None
        };
        let flow = board.as_ref().map(|_| FlowWindow::default());
        Self {
            hooks: Vec::new(),
            metrics: if metrics {
                JsonlSink::create(&dir.join("metrics.jsonl")).ok()
            } else {
                None
            },
            board,
            flow,
            last_board: None,
            agg: Aggregates::default(),
            logs: VecDeque::new(),
        }
    }

    /// Whether anything consumes per-agent samples (a hook, the metrics
    /// file or the board): without a consumer, no tick pays for them.
    pub fn wants_agent_samples(&self) -> bool {
        !self.hooks.is_empty() || self.metrics.is_some() || self.board.is_some()
    }

    /// The agents that report a sample at `tick`: each agent once every
    /// [`crate::run::SAMPLE_EVERY`] ticks, an equal share of them in every
    /// tick; every agent every tick while a hook asks for it; none without
    /// a consumer.
    pub fn sample_at(&self, tick: u64) -> Sample {
        if !self.wants_agent_samples() {
            Sample::None
        } else if self.hooks.iter().any(|h| h.agent_samples_every_tick()) {
            Sample::All
        } else {
            Sample::slice(crate::run::SAMPLE_EVERY, tick)
        }
    }

    /// Registers a hook.
    pub fn add_hook(&mut self, hook: Box<dyn TelemetryHook>) {
        self.hooks.push(hook);
    }

    fn each(&mut self, mut f: impl FnMut(&mut dyn TelemetryHook)) {
        for h in &mut self.hooks {
            f(h.as_mut());
        }
        if let Some(m) = &mut self.metrics {
            f(m);
        }
    }

    /// A finished tick (and, on sampled ticks, its agents).
    pub fn tick(&mut self, t: &TickTelemetry, agents: &[AgentTelemetry]) {
        self.agg.record(t);
        let _span =
            tracing::trace_span!("tick", tick = t.tick, wall_us = t.wall_us, steps = t.steps)
                .entered();
        // What goes to disk stays one sample per agent every SAMPLE_EVERY
        // ticks, whatever the hooks ask for.
        let on_disk = Sample::slice(crate::run::SAMPLE_EVERY, t.tick);
        for h in &mut self.hooks {
            h.on_tick(t);
            for a in agents {
                h.on_agent(a);
            }
        }
        if let Some(m) = &mut self.metrics {
            m.on_tick(t);
            for a in agents.iter().filter(|a| on_disk.covers(a.agent)) {
                m.on_agent(a);
            }
        }
    }

    /// An inference batch.
    pub fn inference(&mut self, i: &InferenceTelemetry) {
        self.each(|h| h.on_inference(i));
    }

    /// A checkpoint.
    pub fn checkpoint(&mut self, c: &CheckpointTelemetry) {
        self.each(|h| h.on_checkpoint(c));
    }

    /// A failure and its recovery.
    pub fn failure(&mut self, tick: u64, line: String) {
        let f = FailureTelemetry {
            tick,
            line: line.clone(),
        };
        self.each(|h| h.on_failure(&f));
        self.log(line);
    }

    /// A line for viewers' log.
    pub fn log(&mut self, line: String) {
        if self.logs.len() == LOG_LINES {
            self.logs.pop_front();
        }
        self.logs.push_back(line);
    }

    /// The messages the agents sent in `tick`, once routed (for the board's
    /// message flow; nothing without a board).
    pub fn flow(&mut self, tick: u64, results: &[AgentResult]) {
        if let Some(f) = &mut self.flow {
            f.record_results(tick, results);
        }
    }

    /// The agents' log lines and faults of a tick (to `tracing` and the
    /// viewers' log).
    pub fn agent_logs(&mut self, sim: &SimState, results: &[AgentResult]) {
        for r in results {
            for o in r.outputs.others() {
                if let OutputRef::Log { level, line } = o {
                    let name = sim.agents.get(&r.agent_id).map_or("?", |a| a.name.as_str());
                    match level {
                        0 => tracing::error!(agent = r.agent_id, "{line}"),
                        1 => tracing::warn!(agent = r.agent_id, "{line}"),
                        2 => tracing::info!(agent = r.agent_id, "{line}"),
                        3 => tracing::debug!(agent = r.agent_id, "{line}"),
                        _ => tracing::trace!(agent = r.agent_id, "{line}"),
                    }
                    let lvl =
                        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"][usize::from(level).min(4)];
                    self.log(format!("[{lvl}] {name}: {line}"));
                    if !self.hooks.is_empty() {
                        let l = crate::telemetry::AgentLogTelemetry {
                            tick: sim.tick,
                            agent: r.agent_id,
                            name: name.to_owned(),
                            level,
                            line: line.to_owned(),
                        };
                        for h in &mut self.hooks {
                            h.on_log(&l);
                        }
                    }
                }
            }
            if let Some(f) = &r.fault {
                self.log(format!("[FAULT] agent {}: {f}", r.agent_id));
            }
        }
    }

    /// Recent tick latency quantile (µs).
    pub fn quantile(&self, q: f64) -> u64 {
        self.agg.quantile(q)
    }

    /// Counts tick latency from the next tick on (see
    /// [`Aggregates::restart_latency`]).
    pub fn restart_latency(&mut self) {
        self.agg.restart_latency();
    }

    /// Publishes the live state on the board — while running at most every
    /// [`BOARD_INTERVAL`] (building it costs a scan of every agent), always
    /// for another phase.  When it is published never affects the run.
    pub fn publish(&mut self, phase: &str, sim: &SimState, children: impl FnOnce() -> Children) {
        if self.board.is_none() {
            return;
        }
        let now = Instant::now();
        if phase == "running"
            && self
                .last_board
                .is_some_and(|t| now.duration_since(t) < BOARD_INTERVAL)
        {
            return;
        }
        self.last_board = Some(now);
        let state = self.live_state(phase, sim, &children());
        if let (Some(b), Ok(bytes)) = (&mut self.board, shm_protocol::codec::encode(&state)) {
            let _ = b.publish(&bytes);
        }
    }

    /// Flushes the metrics file.
    pub fn flush(&mut self) {
        if let Some(m) = &mut self.metrics {
            m.flush();
        }
    }

    /// The live state for viewers.
    pub fn live_state(&self, phase: &str, sim: &SimState, children: &Children) -> LiveState {
        let mut rows: Vec<ChildStatus> = children
            .rows
            .iter()
            .map(|(name, role, pid, state)| ChildStatus {
                name: name.clone(),
                role: role.clone(),
                pid: *pid,
                state: state.clone(),
                last_rtt_ns: 0,
            })
            .collect();
        rows.truncate(64);
        let row = |id: u64, a: &AgentRec| AgentRow {
            id,
            name: a.name.clone(),
            tenant: a.tenant,
            status: match &a.status {
                AgentStatus::Pending => "pending".to_owned(),
                AgentStatus::Live => "live".to_owned(),
                AgentStatus::Faulted { fault, .. } => format!("faulted: {fault}"),
                AgentStatus::Stopped { reason, .. } => format!("stopped: {reason}"),
            },
            queued: sim.mailboxes.get(&id).map_or(0, |m| m.len() as u64),
        };
        let mut agents: Vec<AgentRow> = sim
            .agents
            .iter()
            .take(MAX_AGENT_ROWS)
            .map(|(id, a)| row(*id, a))
            .collect();
        let mut live = 0u64;
        let mut extra = 0;
        for (i, (id, a)) in sim.agents.iter().enumerate() {
            let is_live = matches!(a.status, AgentStatus::Live);
            live += u64::from(is_live);
            if i >= MAX_AGENT_ROWS && !is_live && extra < MAX_EXTRA_ROWS {
                agents.push(row(*id, a));
                extra += 1;
            }
        }
        let c = &sim.counters;
        LiveState {
            version: LIVE_STATE_VERSION,
            phase: phase.into(),
            tick: sim.tick,
            children: rows,
            log: self.logs.iter().cloned().collect(),
            stats: RunStats {
                live,
                total: sim.agents.len() as u64,
                steps: c.steps,
                messages: c.messages,
                dropped: c.dropped,
                faults: c.faults,
                restarts: c.restarts,
                fuel: c.fuel,
                tasks_open: sim.tasks.open.len() as u64,
                queued: sim.mailboxes.values().map(|m| m.len() as u64).sum(),
                tick_p50_us: self.agg.quantile(0.5),
                tick_p99_us: self.agg.quantile(0.99),
                recoveries: children.recoveries,
                infer_pending: self.agg.infer_pending,
                infer_waited_ticks: self.agg.infer_wait().1,
                infer_wait_us: self.agg.infer_wait().0,
                infer_busy_permille: self.agg.infer_busy_permille(),
            },
            agents,
            flow: self
                .flow
                .as_ref()
                .map(|f| f.board(sim.tick))
                .unwrap_or_default(),
        }
    }
}
