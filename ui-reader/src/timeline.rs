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
//! * `journal.lsj` is followed from its start with the supervisor's own
//!   reader ([`JournalFollower`]: read-only, at most [`JOURNAL_READ`] bytes
//!   per scan, a frame not yet whole left for the next scan): every
//!   external input (spawn, task, publish, send, stop-agent, upgrade, model
//!   swap, join-channel, …) with its outcome, every decision (watchdog
//!   trip, quarantine, give-up) and the run's end, the newest
//!   [`JOURNAL_EVENTS`] of them kept.  A journal rewritten by retention is
//!   read again from its start, skipping what was already seen.

use lockstep_supervisor::journal::{Entry, JournalFollower};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
/// Journal entries kept on the timeline (inputs, decisions, the end).
pub const JOURNAL_EVENTS: usize = 10_000;
/// Most journal bytes read per scan (a longer frame is skipped).
pub const JOURNAL_READ: usize = 8 << 20;
/// Longest text of a timeline entry, bytes.
pub const MAX_TEXT: usize = 300;

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
    /// `metrics`, `journal` or `board`.
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
    /// Linear memory size, bytes (0: not reported).
    #[serde(default)]
    pub memory_bytes: u64,
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
    journal: Option<Journal>,
}

/// What the timeline knows of the journal.
#[derive(Debug)]
struct Journal {
    follower: JournalFollower,
    events: VecDeque<TimelineEvent>,
    /// Entries read (the header excluded).
    entries: u64,
    /// The tick of the last entry read and how many entries had it.
    last: (u64, u64),
    /// After the journal was rewritten: the `last` of before, to skip up
    /// to, and how many entries of its tick were skipped so far.
    skip: Option<((u64, u64), u64)>,
    /// No entry read since the journal was (re)started.
    fresh: bool,
    /// Why the journal is no longer followed.
    error: Option<String>,
}

impl Journal {
    fn new(path: &Path) -> Self {
        Self {
            follower: JournalFollower::new(path),
            events: VecDeque::new(),
            entries: 0,
            last: (0, 0),
            skip: None,
            fresh: true,
            error: None,
        }
    }

    fn scan(&mut self) {
        if self.error.is_some() {
            return;
        }
        match self.follower.poll(JOURNAL_READ) {
            Ok(got) => {
                if got.restarted {
                    self.skip = Some((self.last, 0));
                    self.fresh = true;
                }
                for e in got.entries {
                    self.take(e);
                }
            }
            Err(e) => {
                let text = format!("journal no longer followed: {e}");
                self.error = Some(text.clone());
                self.push(self.last.0, "journal-error", text);
            }
        }
    }

    /// One entry, in journal order.
    fn take(&mut self, e: Entry) {
        if matches!(e, Entry::Header { .. }) {
            return;
        }
        let fresh = std::mem::replace(&mut self.fresh, false);
        if let Some(((tick, n), skipped)) = &mut self.skip {
            if fresh && !matches!(e, Entry::Checkpoint { .. }) {
                // Not retention's rewrite (which starts at a checkpoint):
                // another journal, read afresh.
                self.skip = None;
                self.events.clear();
                self.entries = 0;
                self.last = (0, 0);
            } else if e.tick() < *tick {
                return;
            } else if e.tick() == *tick && *skipped < *n {
                *skipped += 1;
                return;
            } else {
                self.skip = None;
            }
        }
        self.entries += 1;
        self.last = if e.tick() == self.last.0 {
            (self.last.0, self.last.1 + 1)
        } else {
            (e.tick(), 1)
        };
        if let Some((kind, text)) = journal_event(&e) {
            self.push(e.tick(), &kind, text);
        }
    }

    fn push(&mut self, tick: u64, kind: &str, text: String) {
        if self.events.len() == JOURNAL_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(TimelineEvent {
            tick,
            kind: kind.to_owned(),
            text,
            source: "journal",
        });
    }
}

/// The timeline entry of a journal entry, if it makes one: (kind, text).
pub fn journal_event(e: &Entry) -> Option<(String, String)> {
    let value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    match e {
        Entry::Input { input, outcome, .. } => {
            let (kind, what) = describe(&value(serde_json::to_value(input)));
            let (_, result) = describe(&value(serde_json::to_value(outcome)));
            Some((kind, clip(format!("{what} → {result}"))))
        }
        Entry::Decision { decision, .. } => {
            let (kind, what) = describe(&value(serde_json::to_value(decision)));
            Some((kind, clip(what)))
        }
        Entry::End { hash, .. } => Some((
            "end".into(),
            format!("run ended, final hash {}", hex(&hash[..8])),
        )),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        s.truncate(s.floor_char_boundary(MAX_TEXT - 3));
        s.push('…');
    }
    s
}

/// `StopAgent` → `stop-agent` (kebab-case names stay as they are).
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The kind and a one-line text of a serde enum value (`"Name"` or
/// `{"Name": fields}`): the variant's name in kebab-case, then its fields.
fn describe(v: &Value) -> (String, String) {
    match v {
        Value::String(s) => (kebab(s), kebab(s)),
        Value::Object(o) if o.len() == 1 => {
            let (name, fields) = o.iter().next().expect("one entry");
            let kind = kebab(name);
            let mut text = kind.clone();
            match fields {
                Value::Object(f) => {
                    for (k, v) in f.iter().filter(|(_, v)| !v.is_null()) {
                        text.push_str(&format!(" {k}={}", render(v)));
                    }
                }
                Value::Null => {}
                other => {
                    text.push(' ');
                    text.push_str(&render(other));
                }
            }
            (kind, text)
        }
        other => ("input".into(), render(other)),
    }
}

/// A field's value, short: text quoted when it needs to be, byte arrays
/// as their text (or their length), long strings cut.
fn render(v: &Value) -> String {
    let quote = |s: &str| {
        let mut s = s.to_owned();
        if s.len() > 80 {
            s.truncate(s.floor_char_boundary(77));
            s.push('…');
        }
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c == '"' || c.is_control())
        {
            Value::String(s).to_string()
        } else {
            s
        }
    };
    match v {
        Value::String(s) => quote(s),
        Value::Array(a)
            if !a.is_empty() && a.iter().all(|x| x.as_u64().is_some_and(|b| b < 256)) =>
        {
            let bytes: Vec<u8> = a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|b| b as u8)
                .collect();
            match std::str::from_utf8(&bytes) {
                Ok(t) => quote(t),
                Err(_) => format!("<{} bytes>", bytes.len()),
            }
        }
        other => {
            let mut s = other.to_string();
            if s.len() > 120 {
                s.truncate(s.floor_char_boundary(117));
                s.push('…');
            }
            s
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Timeline {
    /// A timeline of the run directory `dir` (nothing read yet).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: Some(dir.to_path_buf()),
            journal: Some(Journal::new(&dir.join("journal.lsj"))),
            ..Self::default()
        }
    }

    fn all(&self) -> impl Iterator<Item = &TimelineEvent> {
        self.events
            .iter()
            .chain(self.journal.iter().flat_map(|j| j.events.iter()))
    }

    /// Events, by tick (stable).
    #[cfg(test)]
    pub fn events(&self) -> Vec<TimelineEvent> {
        self.latest(None, usize::MAX)
    }

    /// The newest `max` events (of `kind`, if given), by tick (stable).
    pub fn latest(&self, kind: Option<&str>, max: usize) -> Vec<TimelineEvent> {
        let mut v: Vec<&TimelineEvent> = self
            .all()
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .collect();
        v.sort_by_key(|e| e.tick);
        v[v.len().saturating_sub(max)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    }

    /// How many events of each kind are kept.
    pub fn kinds(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.all() {
            *out.entry(e.kind.clone()).or_default() += 1;
        }
        out
    }

    /// Journal entries read so far, and why the journal is no longer
    /// followed, if so.
    pub fn journal(&self) -> (u64, Option<&str>) {
        self.journal
            .as_ref()
            .map_or((0, None), |j| (j.entries, j.error.as_deref()))
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
        if let Some(j) = &mut self.journal {
            j.scan();
        }
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
    fn journal_decisions_and_end_are_read_once_through_a_rewrite() {
        use lockstep_supervisor::journal::JournalWriter;
        use lockstep_supervisor::sim::Decision;
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-ui-journal-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let header = Entry::Header {
            manifest_hash: [1; 32],
            seed: 7,
            manifest: "m".into(),
            sandbox_off: Vec::new(),
            device: "cpu".into(),
        };
        let tick = |t| Entry::Tick {
            tick: t,
            hash: [t as u8; 32],
            steps: 1,
            calls: 1,
            fuel: 1,
            messages: 0,
            dropped: 0,
            faults: 0,
        };
        let checkpoint = Entry::Checkpoint {
            tick: 4,
            file: "snapshots/tick-4.lss".into(),
            state_hash: [4; 32],
        };
        let decision = |t, d| Entry::Decision {
            tick: t,
            decision: d,
        };
        let write = |path: &Path, entries: &[Entry]| {
            let _ = std::fs::remove_file(path);
            let mut w = JournalWriter::create(path).unwrap();
            for e in entries {
                w.write(e).unwrap();
            }
        };
        let first = [
            header.clone(),
            decision(3, Decision::Watchdog { agent: 7 }),
            tick(3),
            tick(4),
            checkpoint.clone(),
            decision(5, Decision::Quarantine { agent: 2 }),
            tick(5),
        ];
        let path = dir.join("journal.lsj");
        write(&path, &first);
        let mut t = Timeline::new(dir);
        t.scan();
        let kinds =
            |t: &Timeline| -> Vec<String> { t.events().into_iter().map(|e| e.kind).collect() };
        assert_eq!(kinds(&t), ["watchdog", "quarantine"]);
        assert_eq!(t.journal(), (6, None));
        assert!(t.events()[0].text.contains("agent=7"), "{:?}", t.events());
        assert_eq!(t.events()[0].source, "journal");
        // Retention rewrites the journal from the checkpoint on, and the
        // run goes on: only the new entries are added.
        let tmp = dir.join("journal.lsj.tmp");
        write(
            &tmp,
            &[
                header.clone(),
                checkpoint,
                decision(5, Decision::Quarantine { agent: 2 }),
                tick(5),
                decision(
                    6,
                    Decision::GiveUp {
                        reason: "too many".into(),
                    },
                ),
            ],
        );
        std::fs::rename(&tmp, &path).unwrap();
        t.scan();
        assert_eq!(kinds(&t), ["watchdog", "quarantine", "give-up"]);
        assert_eq!(t.kinds().get("give-up"), Some(&1));
        assert_eq!(t.latest(Some("watchdog"), 10).len(), 1);
        // A half-written frame waits for the rest.
        let end = {
            let p2 = dir.join("end.lsj");
            write(
                &p2,
                &[Entry::End {
                    tick: 6,
                    hash: [9; 32],
                }],
            );
            std::fs::read(&p2).unwrap()[12..].to_vec()
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &end[..5]).unwrap();
        t.scan();
        assert_eq!(kinds(&t).len(), 3);
        std::io::Write::write_all(&mut f, &end[5..]).unwrap();
        t.scan();
        assert_eq!(kinds(&t), ["watchdog", "quarantine", "give-up", "end"]);
        // Another run's journal in its place replaces the entries.
        write(
            &tmp,
            &[header, decision(1, Decision::Watchdog { agent: 1 })],
        );
        std::fs::rename(&tmp, &path).unwrap();
        t.scan();
        assert_eq!(kinds(&t), ["watchdog"]);
        assert_eq!(t.journal().0, 1);
    }

    #[test]
    fn serde_values_describe_inputs() {
        let v = serde_json::json!({"StopAgent": {"agent": "#3"}});
        assert_eq!(
            describe(&v),
            ("stop-agent".into(), "stop-agent agent=#3".into())
        );
        let v = serde_json::json!({"publish": {"topic": "alerts", "payload": [104, 105, 32, 33]}});
        // (serde_json orders the fields by name.)
        assert_eq!(describe(&v).1, r#"publish payload="hi !" topic=alerts"#);
        let v = serde_json::json!({"send": {"agent": "a", "payload": [255, 0]}});
        assert_eq!(describe(&v).1, "send agent=a payload=<2 bytes>");
        assert_eq!(describe(&serde_json::json!("Snapshot")).0, "snapshot");
        let v = serde_json::json!({"Applied": "spawned agent 4"});
        assert_eq!(describe(&v).1, r#"applied "spawned agent 4""#);
    }

    #[test]
    fn tailing_follows_appends_partial_lines_and_rotation() {
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-ui-timeline-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("snapshots")).unwrap();
        std::fs::write(dir.join("snapshots/tick-000000000500.lss"), b"").unwrap();
        let m = dir.join("metrics.jsonl");
        std::fs::write(
            &m,
            b"{\"type\":\"failure\",\"tick\":1,\"line\":\"a\"}\n{\"type\":\"fail",
        )
        .unwrap();
        let mut t = Timeline::new(dir);
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
    }
}
