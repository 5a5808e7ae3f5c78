//! Reproducing runs: `replay`, `verify`, `fork` and `resume`.
//!
//! A run directory holds everything needed to re-execute it: the journal
//! (manifest text, seed, every external input with its tick, every tick
//! hash, every checkpoint) and the snapshots with their page store.  All
//! four commands restore a snapshot into fresh workers and re-execute the
//! journaled inputs; because every tick is deterministic, each re-executed
//! tick must reproduce its recorded hash, and each re-reached checkpoint its
//! recorded state.

use crate::journal::{self, Entry, JournalWriter};
use crate::manifest::Manifest;
use crate::runner::{Run, RunConfig, RunError, Script};
use crate::sim::{Input, SimState};
use crate::snapshot::{self, SnapshotBody};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// How one agent differs between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDiff {
    /// The agent.
    pub agent: u64,
    /// Its name.
    pub name: String,
    /// Byte ranges of linear memory that differ (chunk granularity).
    pub memory: Vec<(u64, u64)>,
    /// Whether the memory sizes differ.
    pub memory_size: Option<(u64, u64)>,
    /// Whether globals differ.
    pub globals: bool,
    /// Whether host counters differ.
    pub host: bool,
    /// Whether its module differs.
    pub module: bool,
    /// Present in only one snapshot.
    pub presence: Option<&'static str>,
    /// Its mailbox differs.
    pub mailbox: bool,
    /// Its status differs.
    pub status: bool,
}

/// Where and how a replay left the recorded run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Divergence {
    /// First tick whose hash differed (if found by tick hashes).
    pub first_tick: Option<u64>,
    /// Tick of the state comparison.
    pub compared_at: u64,
    /// Agents whose state differs.
    pub agents: Vec<AgentDiff>,
    /// Scheduler-level differences (task table, memberships, counters…).
    pub scheduler: Vec<String>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first_tick {
            Some(t) => writeln!(
                f,
                "diverged: first divergent tick {t}; state compared after tick {}",
                self.compared_at
            )?,
            None => writeln!(f, "diverged: state after tick {} differs", self.compared_at)?,
        }
        for a in &self.agents {
            write!(f, "  agent {} ({}):", a.agent, a.name)?;
            if let Some(p) = a.presence {
                write!(f, " {p}")?;
            }
            if let Some((x, y)) = a.memory_size {
                write!(f, " memory size {x} vs {y};")?;
            }
            if !a.memory.is_empty() {
                let ranges: Vec<String> = a
                    .memory
                    .iter()
                    .map(|(s, e)| format!("{s:#x}..{e:#x}"))
                    .collect();
                write!(f, " memory {}", ranges.join(", "))?;
            }
            if a.globals {
                write!(f, " globals;")?;
            }
            if a.host {
                write!(f, " host counters;")?;
            }
            if a.module {
                write!(f, " module;")?;
            }
            if a.mailbox {
                write!(f, " mailbox;")?;
            }
            if a.status {
                write!(f, " status;")?;
            }
            writeln!(f)?;
        }
        for s in &self.scheduler {
            writeln!(f, "  scheduler: {s}")?;
        }
        Ok(())
    }
}

/// Compares a recorded snapshot with a replayed one.
pub fn diff(recorded: &SnapshotBody, replayed: &SnapshotBody) -> Divergence {
    let mut d = Divergence {
        compared_at: replayed.tick,
        ..Divergence::default()
    };
    let a: BTreeMap<u64, &shm_protocol::worker::AgentImage> =
        recorded.agents.iter().map(|(i, m)| (*i, m)).collect();
    let b: BTreeMap<u64, &shm_protocol::worker::AgentImage> =
        replayed.agents.iter().map(|(i, m)| (*i, m)).collect();
    let (rs, ps) = (&recorded.scheduler, &replayed.scheduler);
    let mut ids: Vec<u64> = a.keys().chain(b.keys()).copied().collect();
    ids.extend(rs.agents.keys());
    ids.extend(ps.agents.keys());
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let name = rs
            .agents
            .get(&id)
            .or_else(|| ps.agents.get(&id))
            .map_or_else(String::new, |r| r.name.clone());
        let mut ad = AgentDiff {
            agent: id,
            name,
            memory: Vec::new(),
            memory_size: None,
            globals: false,
            host: false,
            module: false,
            presence: None,
            mailbox: rs.mailboxes.get(&id) != ps.mailboxes.get(&id),
            status: rs.agents.get(&id).map(|r| &r.status) != ps.agents.get(&id).map(|r| &r.status),
        };
        match (a.get(&id), b.get(&id)) {
            (Some(x), Some(y)) => {
                if x.memory_len != y.memory_len {
                    ad.memory_size = Some((x.memory_len, y.memory_len));
                }
                let chunk = shm_protocol::worker::CHUNK as u64;
                let mut run: Option<(u64, u64)> = None;
                for (i, (p, q)) in x.chunks.iter().zip(&y.chunks).enumerate() {
                    let i = i as u64;
                    if p != q {
                        run = match run {
                            Some((s, e)) if e == i * chunk => Some((s, (i + 1) * chunk)),
                            Some(r) => {
                                ad.memory.push(r);
                                Some((i * chunk, (i + 1) * chunk))
                            }
                            None => Some((i * chunk, (i + 1) * chunk)),
                        };
                    }
                }
                if let Some(r) = run {
                    ad.memory.push(r);
                }
                ad.globals = x.globals != y.globals;
                ad.host = x.host != y.host;
                ad.module = x.module_hash != y.module_hash;
            }
            (Some(_), None) => ad.presence = Some("only in the recorded run"),
            (None, Some(_)) => ad.presence = Some("only in the replay"),
            (None, None) => {}
        }
        let differs = !ad.memory.is_empty()
            || ad.memory_size.is_some()
            || ad.globals
            || ad.host
            || ad.module
            || ad.presence.is_some()
            || ad.mailbox
            || ad.status;
        if differs {
            d.agents.push(ad);
        }
    }
    let checks: [(&str, bool); 7] = [
        ("task table", rs.tasks != ps.tasks),
        ("topic subscriptions", rs.topics != ps.topics),
        ("channel memberships", rs.channels != ps.channels),
        ("tenant usage and quotas", rs.usage != ps.usage),
        ("counters", rs.counters != ps.counters),
        ("tick hash chain", rs.hash != ps.hash),
        (
            "pending inference requests",
            rs.infer_queue != ps.infer_queue,
        ),
    ];
    for (what, differs) in checks {
        if differs {
            d.scheduler.push(format!("{what} differ"));
        }
    }
    if d.agents.is_empty() && d.scheduler.is_empty() && recorded.state_hash != replayed.state_hash {
        d.scheduler
            .push("other state differs (models or modules)".into());
    }
    d
}

/// Errors of the reproduction commands.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The run directory is unusable.
    #[error("{0}")]
    Usage(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// A snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The manifest failed.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The run failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What a run directory recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The directory.
    pub dir: PathBuf,
    /// Manifest text.
    pub manifest_text: String,
    /// Parsed manifest.
    pub manifest: Manifest,
    /// Directory the manifest's relative paths resolve against.
    pub manifest_dir: PathBuf,
    /// Seed.
    pub seed: u64,
    /// Ticks the run was asked for.
    pub target_ticks: u64,
    /// Checkpoint period.
    pub checkpoint_every: u64,
    /// Worker count of the run.
    pub workers: usize,
    /// Inputs by tick, in journal order.
    pub inputs: BTreeMap<u64, Vec<Input>>,
    /// Tick hashes.
    pub hashes: BTreeMap<u64, [u8; 32]>,
    /// Checkpoints: tick → (file, state hash).
    pub checkpoints: BTreeMap<u64, (String, [u8; 32])>,
    /// Last completed tick.
    pub last_tick: u64,
    /// Whether the run ended cleanly.
    pub ended: bool,
    /// Offset after the last complete tick's entries (resume cuts there).
    pub tick_end_offset: u64,
    /// Inputs recorded for the tick after the last complete one.
    pub tail_inputs: Vec<Entry>,
}

impl Recorded {
    /// Reads a run directory's journal and metadata.
    pub fn open(dir: &Path) -> Result<Self, ReplayError> {
        let j = journal::read_journal(&dir.join("journal.lsj"))?;
        let meta: serde_json::Value = std::fs::read_to_string(dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        let Some(Entry::Header { manifest, seed, .. }) = j.entries.first() else {
            return Err(ReplayError::Usage(format!(
                "{}: the journal has no header",
                dir.display()
            )));
        };
        let manifest_dir = meta
            .get("manifest_dir")
            .and_then(|v| v.as_str())
            .map_or_else(|| dir.to_path_buf(), PathBuf::from);
        let parsed = Manifest::parse(
            manifest,
            &dir.join("manifest.toml").display().to_string(),
            &manifest_dir,
        )?;
        let mut r = Self {
            dir: dir.to_path_buf(),
            manifest_text: manifest.clone(),
            manifest: parsed,
            manifest_dir,
            seed: *seed,
            target_ticks: meta
                .get("target_ticks")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            checkpoint_every: meta
                .get("checkpoint_every")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            workers: meta
                .get("workers")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(2) as usize,
            inputs: BTreeMap::new(),
            hashes: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            last_tick: 0,
            ended: false,
            tick_end_offset: 12,
            tail_inputs: Vec::new(),
        };
        for (e, end) in j.entries.iter().zip(&j.offsets) {
            match e {
                Entry::Input { tick, input, .. } => {
                    r.inputs.entry(*tick).or_default().push(input.clone());
                    if *tick > r.last_tick {
                        r.tail_inputs.push(e.clone());
                    }
                }
                Entry::Tick { tick, hash, .. } => {
                    r.hashes.insert(*tick, *hash);
                    r.last_tick = *tick;
                    r.tick_end_offset = *end;
                    r.tail_inputs.clear();
                }
                Entry::Checkpoint {
                    tick,
                    file,
                    state_hash,
                } => {
                    r.checkpoints.insert(*tick, (file.clone(), *state_hash));
                    if *tick >= r.last_tick {
                        // A fork's history starts at its first checkpoint.
                        r.last_tick = *tick;
                        r.tick_end_offset = *end;
                        r.tail_inputs.clear();
                    }
                }
                Entry::End { .. } => r.ended = true,
                Entry::Header { .. } => r.tick_end_offset = *end,
                Entry::Inference { tick, .. } if *tick <= r.last_tick => {
                    r.tick_end_offset = r.tick_end_offset.max(*end);
                }
                Entry::Event { .. } | Entry::Inference { .. } => {}
            }
        }
        Ok(r)
    }

    /// The latest valid checkpoint at or before `tick`.
    pub fn checkpoint_at_or_before(&self, tick: u64) -> Result<SnapshotBody, ReplayError> {
        let manifest_hash = *blake3::hash(self.manifest_text.as_bytes()).as_bytes();
        let mut last_err = None;
        for (t, (file, state_hash)) in self.checkpoints.range(..=tick).rev() {
            match snapshot::read(&self.dir.join(file)) {
                Ok(body) if body.manifest_hash != manifest_hash || body.seed != self.seed => {
                    last_err = Some(ReplayError::Snapshot(snapshot::SnapshotError::Foreign {
                        path: file.clone(),
                        reason: "manifest or seed differs from the journal's".into(),
                    }));
                }
                Ok(body) if body.state_hash != *state_hash || body.tick != *t => {
                    last_err = Some(ReplayError::Snapshot(snapshot::SnapshotError::Foreign {
                        path: file.clone(),
                        reason: "state hash differs from the one journaled".into(),
                    }));
                }
                Ok(body) => return Ok(body),
                Err(e) => {
                    tracing::warn!(file, error = %e, "skipping an unusable checkpoint");
                    last_err = Some(e.into());
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            ReplayError::Usage(format!(
                "{}: no checkpoint at or before tick {tick}",
                self.dir.display()
            ))
        }))
    }

    fn config(&self, run_dir: PathBuf, workers: Option<usize>) -> Result<RunConfig, ReplayError> {
        let mut cfg = RunConfig::new(self.manifest.clone(), self.manifest_text.clone(), run_dir)
            .map_err(ReplayError::Usage)?;
        cfg.seed = self.seed;
        cfg.workers = workers.unwrap_or(self.workers).max(1);
        cfg.checkpoint_every = self.checkpoint_every;
        cfg.manifest_dir = self.manifest_dir.clone();
        cfg.target_ticks = self.target_ticks;
        Ok(cfg)
    }

    fn script(&self, from: u64, until: u64) -> Script {
        let until = until.max(from);
        Script {
            inputs: self
                .inputs
                .range(from + 1..)
                .map(|(t, v)| (*t, v.clone()))
                .collect(),
            hashes: self
                .hashes
                .range(from + 1..until + 1)
                .map(|(t, h)| (*t, *h))
                .collect(),
            until,
        }
    }

    /// Boots a scratch replay of this run from `body`.
    fn scratch(
        &self,
        body: SnapshotBody,
        workers: Option<usize>,
        tag: &str,
        env: &[(String, String)],
    ) -> Result<(Run, PathBuf), ReplayError> {
        let scratch = std::env::temp_dir().join(format!(
            "lockstep-{tag}-{}-{}",
            std::process::id(),
            body.tick
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        let mut cfg = self.config(scratch.clone(), workers)?;
        cfg.origin = Some(self.dir.clone());
        cfg.board = false;
        cfg.control_socket = false;
        cfg.metrics = false;
        cfg.worker_env = env.to_vec();
        let sim: SimState = body.scheduler.clone();
        let run = Run::boot(cfg, sim, None, Some(body))?;
        Ok((run, scratch))
    }
}

/// Where a replay starts.
#[derive(Debug, Clone)]
pub enum From {
    /// The latest checkpoint at or before this tick.
    Tick(u64),
    /// A snapshot file.
    Snapshot(PathBuf),
}

/// Result of a replay.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Tick replay started after.
    pub from: u64,
    /// Last tick replayed.
    pub until: u64,
    /// Ticks whose hashes were checked.
    pub checked: u64,
    /// Final hash (hex).
    pub hash: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `lockstep replay`: restores a snapshot and re-executes with the journaled
/// inputs; every tick's hash must equal the recorded one.
pub fn replay(
    dir: &Path,
    from: Option<From>,
    until: Option<u64>,
    workers: Option<usize>,
) -> Result<ReplayReport, ReplayError> {
    let rec = Recorded::open(dir)?;
    let body = match from {
        None => rec.checkpoint_at_or_before(0)?,
        Some(From::Tick(t)) => rec.checkpoint_at_or_before(t)?,
        Some(From::Snapshot(p)) => {
            let b = snapshot::read(&p)?;
            if b.manifest_hash != *blake3::hash(rec.manifest_text.as_bytes()).as_bytes() {
                return Err(snapshot::SnapshotError::Foreign {
                    path: p.display().to_string(),
                    reason: "manifest differs".into(),
                }
                .into());
            }
            b
        }
    };
    let until = until.unwrap_or(rec.last_tick).min(rec.last_tick);
    let from_tick = body.tick;
    let (mut run, scratch) = rec.scratch(body, workers, "replay", &[])?;
    run.set_script(rec.script(from_tick, until));
    let mut checked = 0;
    let result = (|| {
        while run.state().tick < until {
            run.tick()?;
            checked += 1;
        }
        Ok::<_, RunError>(())
    })();
    let hash = hex(&run.state().hash);
    let _ = run.finish();
    let _ = std::fs::remove_dir_all(scratch);
    result?;
    Ok(ReplayReport {
        from: from_tick,
        until,
        checked,
        hash,
    })
}

/// Result of `verify`.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every tick hash and every checkpoint reproduced.
    Identical {
        /// Ticks re-executed.
        ticks: u64,
        /// Checkpoints compared.
        checkpoints: usize,
    },
    /// The first divergence.
    Diverged(Box<Divergence>),
}

/// `lockstep verify`: re-executes the whole run segment by segment (each
/// from its recorded checkpoint, so segments are independent and a
/// divergence is located within one checkpoint period), comparing every
/// tick hash and every checkpoint's full state.
pub fn verify(dir: &Path, workers: Option<usize>) -> Result<Verdict, ReplayError> {
    verify_with_env(dir, workers, &[])
}

/// [`verify`] with extra environment for the re-executing workers (fault
/// injection in tests).
pub fn verify_with_env(
    dir: &Path,
    workers: Option<usize>,
    env: &[(String, String)],
) -> Result<Verdict, ReplayError> {
    let rec = Recorded::open(dir)?;
    let marks: Vec<u64> = rec
        .checkpoints
        .keys()
        .copied()
        .filter(|t| *t <= rec.last_tick)
        .collect();
    if marks.is_empty() {
        return Err(ReplayError::Usage(format!(
            "{}: no checkpoint to start from",
            dir.display()
        )));
    }
    let mut ticks = 0;
    for (k, &start) in marks.iter().enumerate() {
        let end = marks.get(k + 1).copied().unwrap_or(rec.last_tick);
        if end <= start {
            continue;
        }
        let body = rec.checkpoint_at_or_before(start)?;
        let (mut run, scratch) = rec.scratch(body, workers, "verify", env)?;
        run.set_script(rec.script(start, end));
        let mut first = None;
        let outcome = loop {
            if run.state().tick >= end {
                break Ok(());
            }
            match run.tick() {
                Ok(_) => ticks += 1,
                Err(RunError::Diverged { tick, .. }) => {
                    // Keep going to the segment's end without hash checks, to
                    // compare the full state there.
                    first.get_or_insert(tick);
                    run.set_script(Script {
                        until: end,
                        ..Script::default()
                    });
                }
                Err(e) => break Err(e),
            }
        };
        let state = match outcome {
            Ok(()) => {
                // Compare the state at the segment's end.
                let recorded = rec
                    .checkpoints
                    .get(&end)
                    .map(|(f, _)| snapshot::read(&rec.dir.join(f)))
                    .transpose()?;
                match (recorded, run.capture_state()) {
                    (Some(r), Ok(mine)) if r.state_hash != mine.state_hash || first.is_some() => {
                        let mut d = diff(&r, &mine);
                        d.first_tick = first;
                        Some(d)
                    }
                    (None, Ok(_)) if first.is_some() => Some(Divergence {
                        first_tick: first,
                        compared_at: end,
                        ..Divergence::default()
                    }),
                    (_, Err(RunError::StateDiverged(d))) => {
                        let mut d = *d;
                        d.first_tick = first.or(d.first_tick);
                        Some(d)
                    }
                    (_, Err(e)) => {
                        let _ = run.finish();
                        let _ = std::fs::remove_dir_all(&scratch);
                        return Err(e.into());
                    }
                    _ => None,
                }
            }
            Err(RunError::StateDiverged(d)) => {
                let mut d = *d;
                d.first_tick = first.or(d.first_tick);
                Some(d)
            }
            Err(e) => {
                let _ = run.finish();
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e.into());
            }
        };
        let _ = run.finish();
        let _ = std::fs::remove_dir_all(&scratch);
        if let Some(d) = state {
            return Ok(Verdict::Diverged(Box::new(d)));
        }
    }
    Ok(Verdict::Identical {
        ticks,
        checkpoints: marks.len(),
    })
}

/// `lockstep fork`: a new run directory whose state is the recorded run's
/// state after tick `at` (reached by restoring the checkpoint before it and
/// replaying the journaled inputs).  Continue it with `lockstep resume`.
pub fn fork(
    dir: &Path,
    at: u64,
    new_dir: &Path,
    workers: Option<usize>,
) -> Result<u64, ReplayError> {
    let rec = Recorded::open(dir)?;
    if at > rec.last_tick {
        return Err(ReplayError::Usage(format!(
            "cannot fork at tick {at}: the run only reached tick {}",
            rec.last_tick
        )));
    }
    let body = rec.checkpoint_at_or_before(at)?;
    let from = body.tick;
    if new_dir.exists()
        && std::fs::read_dir(new_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ReplayError::Usage(format!(
            "{} already exists and is not empty",
            new_dir.display()
        )));
    }
    std::fs::create_dir_all(new_dir)
        .map_err(|e| ReplayError::Usage(format!("{}: {e}", new_dir.display())))?;
    std::fs::write(new_dir.join("manifest.toml"), &rec.manifest_text)
        .map_err(|e| ReplayError::Usage(e.to_string()))?;
    let mut cfg = rec.config(new_dir.to_path_buf(), workers)?;
    cfg.origin = Some(rec.dir.clone());
    cfg.target_ticks = at;
    let meta = serde_json::json!({
        "lockstep": env!("CARGO_PKG_VERSION"), "workers": cfg.workers, "seed": cfg.seed,
        "manifest_dir": rec.manifest_dir.display().to_string(), "target_ticks": at,
        "checkpoint_every": cfg.checkpoint_every, "forked_from": rec.dir.display().to_string(), "forked_at": at,
    });
    std::fs::write(new_dir.join("meta.json"), format!("{meta:#}\n"))
        .map_err(|e| ReplayError::Usage(e.to_string()))?;
    let mut j = JournalWriter::create(&new_dir.join("journal.lsj"))?;
    j.write(&Entry::Header {
        manifest_hash: *blake3::hash(rec.manifest_text.as_bytes()).as_bytes(),
        seed: rec.seed,
        manifest: rec.manifest_text.clone(),
    })?;
    j.sync()?;
    cfg.control_socket = false;
    let sim = body.scheduler.clone();
    let mut run = Run::boot(cfg, sim, Some(j), Some(body))?;
    run.set_script(rec.script(from, at));
    while run.state().tick < at {
        run.tick()?;
    }
    // The fork's own first checkpoint: its history starts here.
    run.checkpoint()?;
    let tick = run.state().tick;
    run.finish_without_end()?;
    Ok(tick)
}

/// `lockstep resume`: continues a run directory after a crash (or a fork):
/// restores the last valid checkpoint, re-executes the ticks journaled after
/// it (checking their hashes), re-applies inputs accepted for the next tick,
/// and returns the run, live, to continue.
pub fn resume(dir: &Path, workers: Option<usize>) -> Result<(Run, u64), ReplayError> {
    let rec = Recorded::open(dir)?;
    if rec.ended {
        return Err(ReplayError::Usage(format!(
            "{}: the run ended cleanly; fork it to continue",
            dir.display()
        )));
    }
    let body = rec.checkpoint_at_or_before(rec.last_tick)?;
    let from = body.tick;
    // Cut the journal after the last complete tick; keep the inputs already
    // accepted for the next tick (they are durable promises).
    let jpath = dir.join("journal.lsj");
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&jpath)
            .map_err(|e| ReplayError::Usage(format!("{}: {e}", jpath.display())))?;
        f.set_len(rec.tick_end_offset)
            .map_err(|e| ReplayError::Usage(e.to_string()))?;
    }
    let mut j = JournalWriter::append(&jpath)?;
    for e in &rec.tail_inputs {
        j.write(e)?;
    }
    j.sync()?;
    let mut cfg = rec.config(dir.to_path_buf(), workers)?;
    cfg.target_ticks = rec.target_ticks;
    let sim = body.scheduler.clone();
    let mut run = Run::boot(cfg, sim, Some(j), Some(body))?;
    run.set_script(rec.script(from, rec.last_tick));
    while run.state().tick < rec.last_tick {
        run.tick()?;
    }
    Ok((run, rec.target_ticks))
}
