//! OpenMetrics (Prometheus) exposition of a running run:
//! `lockstep run --metrics-addr 127.0.0.1:9464` serves `GET /metrics`.
//!
//! Observation only, like every telemetry consumer: the exporter is a
//! [`TelemetryHook`] plus a gauge refresh from the run's state between
//! ticks, and its HTTP thread reads nothing but the metrics' own atomics —
//! scraping can never change a run.
//!
//! Series (prefix `lockstep_`), with bounded cardinality:
//!
//! * counters: `ticks`, `steps`, `calls`, `messages`, `messages_dropped`,
//!   `fuel`, `agent_faults`, `child_failures`, `checkpoints`,
//!   `inference_requests{model,device}`, `inference_errors{model}`,
//!   `inference_host_restarts`;
//! * histograms: `tick_duration_seconds`, `inference_latency_seconds{model}`,
//!   `checkpoint_duration_seconds`;
//! * gauges: `tick`, `agents_live`, `tasks_open`, `messages_queued`,
//!   `inference_pending`, `inference_batches_in_flight`,
//!   `tenant_agents{tenant}`, `tenant_memory_bytes{tenant}`,
//!   `worker_share_seconds{worker}` (each worker's share of the last tick),
//!   `child_rss_bytes{child}`;
//! * per agent, only with `--metrics-agents` (one series per agent, updated
//!   every tick): `agent_fuel{agent}`, `agent_step_seconds{agent}`,
//!   `agent_mailbox{agent}`, `agent_memory_bytes{agent}`.
//!
//! The server answers one request per connection, reads at most 8 KiB of
//! request head within 2 s, serves `GET`/`HEAD /metrics` and nothing else
//! (404, 405, 400), and serves one client at a time.

use crate::observe::Children;
use crate::sim::SimState;
use crate::telemetry::{
    AgentTelemetry, CheckpointTelemetry, FailureTelemetry, InferenceTelemetry, TelemetryHook,
    TickTelemetry,
};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

type Labels = Vec<(String, String)>;
// prometheus-client stores a float gauge in the atomic it is given: an
// in-process value, not the cross-process protocol whose atomics go
// through shm-protocol's loom facade.
#[allow(clippy::disallowed_types)]
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn infer_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 20))
}

/// Every series, shared by the hook, the refresh and the server.
#[derive(Debug, Clone)]
struct Series {
    tick_hist: Histogram,
    infer_hist: HistFamily,
    ckpt_hist: Histogram,
    ticks: Counter,
    steps: Counter,
    calls: Counter,
    messages: Counter,
    dropped: Counter,
    fuel: Counter,
    faults: Counter,
    failures: Counter,
    checkpoints: Counter,
    infer_requests: Family<Labels, Counter>,
    infer_errors: Family<Labels, Counter>,
    host_restarts: Counter,
    tick: Gauge,
    agents: Gauge,
    tasks_open: Gauge,
    queued: Gauge,
    infer_pending: Gauge,
    infer_in_flight: Gauge,
    tenant_agents: Family<Labels, Gauge>,
    tenant_memory: Family<Labels, Gauge>,
    worker_share: Family<Labels, FloatGauge>,
    child_rss: Family<Labels, Gauge>,
    agent_fuel: Family<Labels, Gauge>,
    agent_step: Family<Labels, FloatGauge>,
    agent_mailbox: Family<Labels, Gauge>,
    agent_memory: Family<Labels, Gauge>,
}

/// The run's metrics: register [`Exporter::hook`] with the run, call
/// [`Exporter::refresh`] between ticks, and [`Exporter::serve`] them.
pub struct Exporter {
    series: Series,
    registry: Arc<Registry>,
    per_agent: bool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

fn label(k: &str, v: impl Into<String>) -> Labels {
    vec![(k.to_owned(), v.into())]
}

impl Exporter {
    /// The series (per-agent ones only if `per_agent`).
    pub fn new(per_agent: bool) -> Self {
        let s = Series {
            tick_hist: Histogram::new(exponential_buckets(1e-5, 2.0, 18)),
            infer_hist: Family::new_with_constructor(infer_buckets as fn() -> Histogram),
            ckpt_hist: Histogram::new(exponential_buckets(1e-4, 2.0, 18)),
            ticks: Counter::default(),
            steps: Counter::default(),
            calls: Counter::default(),
            messages: Counter::default(),
            dropped: Counter::default(),
            fuel: Counter::default(),
            faults: Counter::default(),
            failures: Counter::default(),
            checkpoints: Counter::default(),
            infer_requests: Family::default(),
            infer_errors: Family::default(),
            host_restarts: Counter::default(),
            tick: Gauge::default(),
            agents: Gauge::default(),
            tasks_open: Gauge::default(),
            queued: Gauge::default(),
            infer_pending: Gauge::default(),
            infer_in_flight: Gauge::default(),
            tenant_agents: Family::default(),
            tenant_memory: Family::default(),
            worker_share: Family::default(),
            child_rss: Family::default(),
            agent_fuel: Family::default(),
            agent_step: Family::default(),
            agent_mailbox: Family::default(),
            agent_memory: Family::default(),
        };
        let mut r = Registry::with_prefix("lockstep");
        r.register("ticks", "Ticks run", s.ticks.clone());
        r.register("steps", "Agent steps run", s.steps.clone());
        r.register("calls", "Calls into agents", s.calls.clone());
        r.register("messages", "Messages delivered", s.messages.clone());
        r.register(
            "messages_dropped",
            "Messages dropped (mailbox overflow)",
            s.dropped.clone(),
        );
        r.register("fuel", "WebAssembly fuel consumed", s.fuel.clone());
        r.register("agent_faults", "Agent faults", s.faults.clone());
        r.register(
            "child_failures",
            "Child process failures recovered",
            s.failures.clone(),
        );
        r.register("checkpoints", "Checkpoints taken", s.checkpoints.clone());
        r.register(
            "inference_requests",
            "Inference requests answered, by model and device",
            s.infer_requests.clone(),
        );
        r.register(
            "inference_errors",
            "Inference requests answered with an error, by model",
            s.infer_errors.clone(),
        );
        r.register(
            "inference_host_restarts",
            "Inference host restarts (crash or hang)",
            s.host_restarts.clone(),
        );
        r.register("tick", "Current tick", s.tick.clone());
        r.register("agents_live", "Live agents", s.agents.clone());
        r.register("tasks_open", "Open tasks", s.tasks_open.clone());
        r.register(
            "messages_queued",
            "Messages waiting for the next tick",
            s.queued.clone(),
        );
        r.register(
            "inference_pending",
            "Inference requests not yet answered",
            s.infer_pending.clone(),
        );
        r.register(
            "inference_batches_in_flight",
            "Inference batches on the host",
            s.infer_in_flight.clone(),
        );
        r.register(
            "tenant_agents",
            "Agents not stopped, by tenant",
            s.tenant_agents.clone(),
        );
        r.register(
            "tenant_memory_bytes",
            "Sum of the memory limits of a tenant's agents",
            s.tenant_memory.clone(),
        );
        r.register(
            "worker_share_seconds",
            "Each worker's wall time in the last tick",
            s.worker_share.clone(),
        );
        r.register(
            "child_rss_bytes",
            "Resident memory of each child process",
            s.child_rss.clone(),
        );
        if per_agent {
            r.register(
                "agent_fuel",
                "Fuel of an agent in its last tick",
                s.agent_fuel.clone(),
            );
            r.register(
                "agent_step_seconds",
                "Wall time of an agent's calls in its last tick",
                s.agent_step.clone(),
            );
            r.register(
                "agent_mailbox",
                "Messages delivered to an agent in its last tick",
                s.agent_mailbox.clone(),
            );
            r.register(
                "agent_memory_bytes",
                "Size of an agent's linear memory after its last tick",
                s.agent_memory.clone(),
            );
        }
        r.register(
            "tick_duration_seconds",
            "Wall time of a tick",
            s.tick_hist.clone(),
        );
        r.register(
            "inference_latency_seconds",
            "Queue and run time of an inference batch, by model",
            s.infer_hist.clone(),
        );
        r.register(
            "checkpoint_duration_seconds",
            "Wall time of a checkpoint",
            s.ckpt_hist.clone(),
        );
        Self {
            series: s,
            registry: Arc::new(r),
            per_agent,
        }
    }

    /// The hook to register with the run.
    pub fn hook(&self) -> Box<dyn TelemetryHook> {
        Box::new(Hook {
            s: self.series.clone(),
            per_agent: self.per_agent,
        })
    }

    /// Gauges read from the run's state and its children (call between
    /// ticks; cheap: one pass over the tenants, one `/proc` read per child).
    pub fn refresh(&self, sim: &SimState, children: &Children) {
        let s = &self.series;
        for (i, t) in sim.tenants.iter().enumerate() {
            if let Some(u) = sim.usage.get(i) {
                let l = label("tenant", t.name.clone());
                s.tenant_agents.get_or_create(&l).set(gauge_i64(u.agents));
                s.tenant_memory.get_or_create(&l).set(gauge_i64(u.memory));
            }
        }
        for (name, _, pid, _) in &children.rows {
            if let Some(rss) = rss_bytes(*pid) {
                s.child_rss
                    .get_or_create(&label("child", name.clone()))
                    .set(gauge_i64(rss));
            }
        }
    }

    /// Serves the metrics on `addr` from a thread; returns the bound
    /// address (port 0 picks one).
    pub fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let registry = self.registry.clone();
        std::thread::Builder::new()
            .name("lockstep-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => {
                            let _ = answer(c, &registry);
                        }
                        // Out of descriptors, say: wait instead of spinning.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        Ok(bound)
    }

    /// The exposition now (what `GET /metrics` returns).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Resident set size of `pid`, from `/proc/<pid>/statm`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The telemetry hook half.
struct Hook {
    s: Series,
    per_agent: bool,
}

impl TelemetryHook for Hook {
    fn agent_samples_every_tick(&self) -> bool {
        self.per_agent
    }

    fn on_tick(&mut self, t: &TickTelemetry) {
        let s = &self.s;
        s.ticks.inc();
        s.steps.inc_by(t.steps);
        s.calls.inc_by(t.calls);
        s.messages.inc_by(t.messages);
        s.dropped.inc_by(t.dropped);
        s.fuel.inc_by(t.fuel);
        s.faults.inc_by(t.faults);
        s.tick.set(gauge_i64(t.tick));
        s.agents.set(gauge_i64(t.agents));
        s.tasks_open.set(gauge_i64(t.tasks_open));
        s.queued.set(gauge_i64(t.queued));
        s.infer_pending.set(gauge_i64(t.infer_pending));
        s.infer_in_flight.set(gauge_i64(t.infer_batches_in_flight));
        s.tick_hist.observe(t.wall_us as f64 * 1e-6);
        for (w, us) in t.worker_us.iter().enumerate() {
            s.worker_share
                .get_or_create(&label("worker", w.to_string()))
                .set(*us as f64 * 1e-6);
        }
    }

    fn on_agent(&mut self, a: &AgentTelemetry) {
        if !self.per_agent {
            return;
        }
        let l = label("agent", a.agent.to_string());
        self.s.agent_fuel.get_or_create(&l).set(gauge_i64(a.fuel));
        self.s
            .agent_step
            .get_or_create(&l)
            .set(a.wall_ns as f64 * 1e-9);
        self.s
            .agent_mailbox
            .get_or_create(&l)
            .set(gauge_i64(a.mailbox));
        if a.memory_bytes > 0 {
            self.s
                .agent_memory
                .get_or_create(&l)
                .set(gauge_i64(a.memory_bytes));
        }
    }

    fn on_inference(&mut self, i: &InferenceTelemetry) {
        let s = &self.s;
        let l = vec![
            ("model".to_owned(), i.model.clone()),
            ("device".to_owned(), i.device.clone()),
        ];
        s.infer_requests.get_or_create(&l).inc_by(i.requests);
        s.infer_errors
            .get_or_create(&label("model", i.model.clone()))
            .inc_by(i.errors);
        s.host_restarts.inc_by(i.host_restarts);
        s.infer_hist
            .get_or_create(&label("model", i.model.clone()))
            .observe(i.latency_us as f64 * 1e-6);
    }

    fn on_checkpoint(&mut self, c: &CheckpointTelemetry) {
        self.s.checkpoints.inc();
        self.s.ckpt_hist.observe(c.wall_us as f64 * 1e-6);
    }

    fn on_failure(&mut self, _f: &FailureTelemetry) {
        self.s.failures.inc();
    }
}

/// Answers one request on `c`.
fn answer(mut c: TcpStream, registry: &Registry) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8 << 10 {
            return respond(
                &mut c,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with(b"HTTP/1.")) || parts.next().is_some() {
        return respond(&mut c, "400 Bad Request", "text/plain", b"bad request\n");
    }
    let head_only = match method {
        Some(b"GET") => false,
        Some(b"HEAD") => true,
        _ => {
            return respond(
                &mut c,
                "405 Method Not Allowed",
                "text/plain",
                b"GET or HEAD\n",
            );
        }
    };
    let path = path.unwrap_or_default();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        return respond(&mut c, "404 Not Found", "text/plain", b"see /metrics\n");
    }
    let mut body = String::new();
    encode(&mut body, registry).map_err(|_| std::io::Error::other("encoding failed"))?;
    let ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    if head_only {
        let h = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        return c.write_all(h.as_bytes());
    }
    respond(&mut c, "200 OK", ctype, body.as_bytes())
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let h = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(h.as_bytes())?;
    c.write_all(body)
}
