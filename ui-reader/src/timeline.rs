//! The dashboard's timeline of a run: what the run directory says in plain
//! JSON, read without running anything and without the supervisor's crate.
//!
//! * `metrics.jsonl` (the supervisor's telemetry, JSON lines, rotated to
//!   `metrics.1.jsonl`) is tailed: checkpoints, failures and recoveries,
//!   inference model versions (a new version of a model is a model swap),
//!   inference errors and host restarts, ticks with agent faults; its
//!   sampled per-agent lines (calls, fuel, time, mailbox) feed the agent
//!   detail.  The first read starts [`INITIAL_WINDOW`] before the end, so
//!   the timeline covers the recent part of a long run.
//! * `snapshots/` is listed: every retained checkpoint (the ticks a
//!   `lockstep fork` restores fastest).
//! * The board adds what it shows changing (agent status changes, restarts,
//!   worker recoveries; see [`Timeline::board_event`]).
//!
//! The journal itself (`journal.lsj`) is postcard-encoded with the
//! supervisor's own types, whose reader lives in the supervisor crate; so
//! the external inputs it holds (`ctl` commands such as spawns, kills and
//! module upgrades) are not on this timeline: `lockstep log <run-dir>
//! --kind input` prints them, and the page says so.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Events kept.
pub const MAX_EVENTS: usize = 2000;
/// How much of an existing `metrics.jsonl` the first read covers.
pub const INITIAL_WINDOW: u64 = 8 << 20;
/// Most bytes read per scan.
pub const MAX_READ: u64 = 8 << 20;
/// Longest line kept across reads (longer ones are skipped).
pub const MAX_LINE: usize = 1 << 20;
/// Telemetry samples kept per agent.
pub const AGENT_SAMPLES: usize = 64;
/// Agents whose telemetry samples are kept.
pub const MAX_AGENTS: usize = 4096;

/// One timeline entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEvent {
    /// Tick.
    pub tick: u64,
    /// `checkpoint`, `fault`, `faults`, `restart`, `recovery`, `failure`,
    /// `model`, `model-swap`, `inference-error`, `host-restart`, `live`,
    /// `stop`, `status`, or another telemetry line type.
    pub kind: String,
    /// What happened.
    pub text: String,
    /// `metrics`, `snapshots` or `board`.
    pub source: &'static str,
}

/// One sampled agent line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSample {
    /// Tick.
    pub tick: u64,
    /// Agent id.
    pub agent: u64,
    /// Calls into the agent.
    #[serde(default)]
    pub calls: u64,
    /// Fuel.
    #[serde(default)]
    pub fuel: u64,
    /// Wall time, ns.
    #[serde(default)]
    pub wall_ns: u64,
    /// Mailbox depth.
    #[serde(default)]
    pub mailbox: u64,
    /// Faulted in that tick.
    #[serde(default)]
    pub faulted: bool,
}

#[derive(Debug, Default)]
struct Tail {
    started: bool,
    offset: u64,
    ino: u64,
    partial: Vec<u8>,
    skip_line: bool,
}

/// The timeline and the per-agent telemetry.
#[derive(Debug, Default)]
pub struct Timeline {
    dir: Option<PathBuf>,
    events: VecDeque<TimelineEvent>,
    tail: Tail,
    models: HashMap<String, String>,
    host_restarts: u64,
    agents: HashMap<u64, VecDeque<AgentSample>>,
    checkpoints: Vec<u64>,
    /// Lines of `metrics.jsonl` read so far.
    pub lines: u64,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Timeline {
    /// A timeline of the run directory `dir` (nothing read yet).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: Some(dir.to_path_buf()),
            ..Self::default()
        }
    }

    /// Events, by tick (stable).
    pub fn events(&self) -> Vec<TimelineEvent> {
        let mut v: Vec<_> = self.events.iter().cloned().collect();
        v.sort_by_key(|e| e.tick);
        v
    }

    /// Retained checkpoints (ticks), ascending.
    pub fn checkpoints(&self) -> &[u64] {
        &self.checkpoints
    }

    /// The telemetry samples of `agent`, oldest first.
    pub fn agent_samples(&self, agent: u64) -> Vec<AgentSample> {
        self.agents
            .get(&agent)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn push(&mut self, tick: u64, kind: &str, text: String, source: &'static str) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(TimelineEvent {
            tick,
            kind: kind.to_owned(),
            text,
            source,
        });
    }

    /// An event the board shows (an agent's status change, a restart).
    pub fn board_event(&mut self, tick: u64, kind: &str, text: String) {
        self.push(tick, kind, text, "board");
    }

    /// Reads what is new in the run directory.
    pub fn scan(&mut self) {
        let Some(dir) = self.dir.clone() else { return };
        self.list_snapshots(&dir.join("snapshots"));
        let _ = self.tail_metrics(&dir.join("metrics.jsonl"));
    }

    fn list_snapshots(&mut self, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut ticks: Vec<u64> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("tick-")?
                    .strip_suffix(".lss")?
                    .parse()
                    .ok()
            })
            .take(100_000)
            .collect();
        ticks.sort_unstable();
        self.checkpoints = ticks;
    }

    fn tail_metrics(&mut self, path: &Path) -> std::io::Result<()> {
        let mut file = std::fs::File::open(path)?;
        let md = file.metadata()?;
        let len = md.len();
        if !self.tail.started {
            self.tail.started = true;
            self.tail.ino = md.ino();
            self.tail.offset = len.saturating_sub(INITIAL_WINDOW);
            self.tail.skip_line = self.tail.offset > 0;
        } else if md.ino() != self.tail.ino || len < self.tail.offset {
            // Rotated (renamed to metrics.1.jsonl) or replaced.
            self.tail.ino = md.ino();
            self.tail.offset = 0;
            self.tail.partial.clear();
            self.tail.skip_line = false;
        }
        if len <= self.tail.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.tail.offset))?;
        let mut chunk = Vec::new();
        file.take((len - self.tail.offset).min(MAX_READ))
            .read_to_end(&mut chunk)?;
        self.tail.offset += chunk.len() as u64;
        let mut data = std::mem::take(&mut self.tail.partial);
        data.extend_from_slice(&chunk);
        let mut start = 0;
        if self.tail.skip_line {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    start = i + 1;
                    self.tail.skip_line = false;
                }
                None => return Ok(()),
            }
        }
        let end = data[start..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(start, |i| start + i + 1);
        for line in data[start..end].split(|&b| b == b'\n') {
            if !line.is_empty() {
                self.lines += 1;
                self.line(line);
            }
        }
        let rest = &data[end..];
        if rest.len() <= MAX_LINE {
            self.tail.partial = rest.to_vec();
        } else {
            self.tail.skip_line = true;
        }
        Ok(())
    }

    /// Takes one line of `metrics.jsonl`.
    pub fn line(&mut self, line: &[u8]) {
        if line.starts_with(br#"{"type":"tick""#) {
            if contains(line, br#""faults":0,"#) {
                return;
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                let n = v["faults"].as_u64().unwrap_or(0);
                if n > 0 {
                    let tick = v["tick"].as_u64().unwrap_or(0);
                    self.push(
                        tick,
                        "faults",
                        format!("{n} agent fault(s) in tick {tick}"),
                        "metrics",
                    );
                }
            }
            return;
        }
        if line.starts_with(br#"{"type":"agent""#) {
            if let Ok(a) = serde_json::from_slice::<AgentSample>(line)
                && (self.agents.len() < MAX_AGENTS || self.agents.contains_key(&a.agent))
            {
                let q = self.agents.entry(a.agent).or_default();
                if q.len() == AGENT_SAMPLES {
                    q.pop_front();
                }
                q.push_back(a);
            }
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let tick = v["tick"].as_u64().unwrap_or(0);
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        match v["type"].as_str().unwrap_or("") {
            "checkpoint" => {
                let hash = s("state_hash");
                self.push(
                    tick,
                    "checkpoint",
                    format!(
                        "checkpoint {} (state {}, {} agents)",
                        s("file"),
                        &hash[..hash.len().min(16)],
                        v["agents"].as_u64().unwrap_or(0)
                    ),
                    "metrics",
                );
            }
            "failure" => {
                let line = s("line");
                let kind = if line.contains("[RECOVERY]") {
                    "recovery"
                } else {
                    "failure"
                };
                self.push(tick, kind, line, "metrics");
            }
            "inference" => {
                let model = s("model");
                let version = s("version");
                match self.models.get(&model) {
                    None => self.push(
                        tick,
                        "model",
                        format!("model {model} version {version} on {}", s("device")),
                        "metrics",
                    ),
                    Some(old) if *old != version => self.push(
                        tick,
                        "model-swap",
                        format!("model {model}: version {old} → {version}"),
                        "metrics",
                    ),
                    Some(_) => {}
                }
                self.models.insert(model.clone(), version);
                let errors = v["errors"].as_u64().unwrap_or(0);
                if errors > 0 {
                    self.push(
                        tick,
                        "inference-error",
                        format!("model {model}: {errors} error(s)"),
                        "metrics",
                    );
                }
                let restarts = v["host_restarts"].as_u64().unwrap_or(0);
                if restarts > self.host_restarts {
                    self.host_restarts = restarts;
                    self.push(
                        tick,
                        "host-restart",
                        format!("inference host restarted ({restarts} so far)"),
                        "metrics",
                    );
                }
            }
            other => {
                let kind: String = other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .take(32)
                    .collect();
                if !kind.is_empty() {
                    let mut text = v.to_string();
                    text.truncate(text.floor_char_boundary(300));
                    self.push(tick, &kind, text, "metrics");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_events_and_samples() {
        let mut t = Timeline::default();
        t.line(br#"{"type":"tick","tick":3,"wall_us":1,"faults":0,"agents":2}"#);
        t.line(br#"{"type":"tick","tick":4,"wall_us":1,"faults":2,"agents":2}"#);
        t.line(br#"{"type":"checkpoint","tick":5,"file":"snapshots/tick-000000000005.lss","state_hash":"00112233445566778899","agents":2,"wall_us":1,"pages_bytes":0}"#);
        t.line(br#"{"type":"inference","tick":6,"model":"mlp","version":"1","device":"cpu","errors":0,"host_restarts":0}"#);
        t.line(br#"{"type":"inference","tick":7,"model":"mlp","version":"2","device":"cpu","errors":1,"host_restarts":1}"#);
        t.line(br#"{"type":"failure","tick":8,"line":"[RECOVERY] worker-0 died"}"#);
        t.line(br#"{"type":"agent","tick":9,"agent":4,"calls":2,"fuel":10,"wall_ns":5,"mailbox":1,"faulted":false}"#);
        t.line(b"not json");
        let kinds: Vec<_> = t.events().iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                "faults",
                "checkpoint",
                "model",
                "model-swap",
                "inference-error",
                "host-restart",
                "recovery"
            ]
        );
        assert_eq!(t.agent_samples(4).len(), 1);
        assert!(t.events()[3].text.contains("version 1 → 2"));
    }

    #[test]
    fn tailing_follows_appends_partial_lines_and_rotation() {
        let dir = std::env::temp_dir().join(format!("lockstep-ui-timeline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("snapshots")).unwrap();
        std::fs::write(dir.join("snapshots/tick-000000000500.lss"), b"").unwrap();
        let m = dir.join("metrics.jsonl");
        std::fs::write(
            &m,
            b"{\"type\":\"failure\",\"tick\":1,\"line\":\"a\"}\n{\"type\":\"fail",
        )
        .unwrap();
        let mut t = Timeline::new(&dir);
        t.scan();
        assert_eq!(t.events().len(), 1);
        assert_eq!(t.checkpoints(), [500]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&m).unwrap();
        std::io::Write::write_all(&mut f, b"ure\",\"tick\":2,\"line\":\"b\"}\n").unwrap();
        t.scan();
        assert_eq!(t.events().len(), 2);
        assert_eq!(t.events()[1].text, "b");
        std::fs::rename(&m, dir.join("metrics.1.jsonl")).unwrap();
        std::fs::write(&m, b"{\"type\":\"failure\",\"tick\":3,\"line\":\"c\"}\n").unwrap();
        t.scan();
        assert_eq!(t.events().len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
