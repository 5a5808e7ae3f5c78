//! Reproducing runs: `replay`, `verify`, `fork` and `resume`.
//!
//! A run directory holds everything needed to re-execute it: the journal
//! (manifest text, seed, every external input with its tick, every tick
//! hash, every checkpoint) and the snapshots with their page store.  All
//! four commands restore a snapshot into fresh workers and re-execute the
//! journaled inputs; because every tick is deterministic, each re-executed
//! tick must reproduce its recorded hash, and each re-reached checkpoint its
//! recorded state.

use crate::config::RunConfig;
use crate::diff::{Divergence, diff};
use crate::inference::tolerance::{AnswerChecks, WithinTolerance};
use crate::journal::{self, Answer, Entry, JournalWriter};
use crate::manifest::Manifest;
use crate::run::{Run, RunError};
use crate::sim::{Decision, Input, SimState};
use crate::snapshot::{self, SnapshotBody};
use crate::timeline::{Script, Timeline};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Decisions by tick.
    pub decisions: BTreeMap<u64, Vec<Decision>>,
    /// Retention setting of the run.
    pub retain_checkpoints: Option<u64>,
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
    /// The inference device the run asked for (`--device`).
    pub device: String,
    /// Inference answers by the tick they were delivered after.
    pub answers: BTreeMap<u64, Vec<Answer>>,
}

impl Recorded {
    /// Reads a run directory's journal and metadata.
    pub fn open(dir: &Path) -> Result<Self, ReplayError> {
        let j = journal::read_journal(&dir.join("journal.lsj"))?;
        let meta: serde_json::Value = std::fs::read_to_string(dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        let Some(Entry::Header {
            manifest,
            seed,
            device,
            ..
        }) = j.entries.first()
        else {
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
            decisions: BTreeMap::new(),
            retain_checkpoints: meta
                .get("retain_checkpoints")
                .and_then(serde_json::Value::as_u64),
            hashes: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            last_tick: 0,
            ended: false,
            tick_end_offset: 12,
            tail_inputs: Vec::new(),
            device: device.clone(),
            answers: BTreeMap::new(),
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
                Entry::Decision { tick, decision } => {
                    r.decisions.entry(*tick).or_default().push(decision.clone());
                }
                Entry::End { .. } => r.ended = true,
                Entry::Header { .. } => r.tick_end_offset = *end,
                Entry::Inference { tick, answers } => {
                    r.answers
                        .entry(*tick)
                        .or_default()
                        .extend(answers.iter().cloned());
                }
                // A tick's entries end with its `Tick` record.
                Entry::Event { .. } => {}
            }
        }
        Ok(r)
    }

    /// The earliest valid checkpoint the journal keeps (the genesis one,
    /// unless retention dropped it).
    pub fn earliest_checkpoint(&self) -> Result<SnapshotBody, ReplayError> {
        let first = self.checkpoints.keys().next().copied().ok_or_else(|| {
            ReplayError::Usage(format!(
                "{}: no checkpoint to start from",
                self.dir.display()
            ))
        })?;
        self.checkpoint_at_or_before(first)
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

    /// The inference device a re-execution uses: `asked` (`--device`),
    /// else `$LOCKSTEP_INFERENCE_DEVICE`, else the recorded run's — for
    /// `resume`, which goes on with the run, exactly; for `replay`,
    /// `verify` and `fork`, `cpu` for a CPU run and `auto` for one that
    /// asked for a GPU, so that the same GPU re-executes it bitwise and a
    /// machine without one compares its answers within tolerance.
    pub fn device_for(&self, asked: Option<&str>, resuming: bool) -> String {
        if let Some(d) = asked {
            return d.to_owned();
        }
        if let Ok(d) = std::env::var("LOCKSTEP_INFERENCE_DEVICE")
            && lockstep_common::is_device(&d)
        {
            return d;
        }
        match self.device.as_str() {
            "" | "cpu" => "cpu".into(),
            d if resuming && lockstep_common::is_device(d) => d.to_owned(),
            _ => "auto".into(),
        }
    }

    fn config(
        &self,
        run_dir: PathBuf,
        workers: Option<usize>,
        device: String,
    ) -> Result<RunConfig, ReplayError> {
        let mut cfg = RunConfig::new(self.manifest.clone(), self.manifest_text.clone(), run_dir)
            .map_err(ReplayError::Usage)?;
        cfg.inference.device = device;
        cfg.seed = self.seed;
        cfg.workers = workers.unwrap_or(self.workers).max(1);
        cfg.checkpoint_every = self.checkpoint_every;
        cfg.retain_checkpoints = self.retain_checkpoints;
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
            decisions: self
                .decisions
                .range(from + 1..until + 1)
                .map(|(t, v)| (*t, v.clone()))
                .collect(),
            hashes: self
                .hashes
                .range(from + 1..until + 1)
                .map(|(t, h)| (*t, *h))
                .collect(),
            answers: self
                .answers
                .range(from + 1..until + 1)
                .map(|(t, a)| (*t, a.clone()))
                .collect(),
            checkpoints: self.checkpoints.keys().copied().collect(),
            until,
        }
    }

    /// Boots a scratch replay of this run from `body`, re-executing up to
    /// tick `until`.
    fn scratch(
        &self,
        body: SnapshotBody,
        until: u64,
        workers: Option<usize>,
        device: String,
        tag: &str,
        env: &[(String, String)],
    ) -> Result<(Run, tempfile::TempDir), ReplayError> {
        // A fresh directory of an unpredictable name (created, never
        // reused: nothing another user placed in the temporary directory
        // can stand in for it), removed when dropped.  Readable as any run
        // directory is.
        let scratch = tempfile::Builder::new()
            .prefix(&format!("lockstep-{tag}-{}-", body.tick))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .tempdir()
            .map_err(|e| {
                ReplayError::Usage(format!(
                    "cannot create a scratch run directory in {}: {e}",
                    std::env::temp_dir().display()
                ))
            })?;
        let mut cfg = self.config(scratch.path().to_path_buf(), workers, device)?;
        cfg.origin = Some(self.dir.clone());
        cfg.board = false;
        cfg.control_socket = false;
        cfg.metrics = false;
        cfg.worker_env = env.to_vec();
        let sim: SimState = body.scheduler.clone();
        let timeline = Timeline::Replay(self.script(body.tick, until));
        let run = Run::boot(cfg, sim, None, Some(body), timeline)?;
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// Tick replay started after.
    pub from: u64,
    /// Last tick replayed.
    pub until: u64,
    /// Ticks whose hashes were checked.
    pub checked: u64,
    /// Final hash (hex).
    pub hash: String,
    /// Answers recorded on another device than this replay's, found equal
    /// within their model's tolerance (and delivered as recorded).
    pub within_tolerance: Vec<WithinTolerance>,
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
    replay_reporting(dir, from, until, workers, None, &mut |_, _, _| {})
}

/// [`replay`] with the inference host on `device` (`None`:
/// [`Recorded::device_for`]), calling `progress(first, tick, last)` after
/// every tick.
pub fn replay_reporting(
    dir: &Path,
    from: Option<From>,
    until: Option<u64>,
    workers: Option<usize>,
    device: Option<&str>,
    progress: &mut dyn FnMut(u64, u64, u64),
) -> Result<ReplayReport, ReplayError> {
    let rec = Recorded::open(dir)?;
    let body = match from {
        None => rec.earliest_checkpoint()?,
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
    let device = rec.device_for(device, false);
    let (mut run, scratch) = rec.scratch(body, until, workers, device, "replay", &[])?;
    let mut checked = 0;
    let result = (|| {
        while run.state().tick < until {
            run.tick()?;
            checked += 1;
            progress(from_tick, run.state().tick, until);
        }
        Ok::<_, RunError>(())
    })();
    let hash = hex(&run.state().hash);
    let checks = run.take_answer_checks();
    let _ = run.finish();
    drop(scratch);
    result?;
    Ok(ReplayReport {
        from: from_tick,
        until,
        checked,
        hash,
        within_tolerance: checks.report(),
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
        /// Answers recorded on another device than this verification's,
        /// found equal within their model's tolerance (and delivered as
        /// recorded), per device and model; empty when every answer came
        /// from the verifying device class (compared bitwise).
        within_tolerance: Vec<WithinTolerance>,
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
    verify_reporting(dir, workers, None, env, &mut |_, _, _| {})
}

/// [`verify_with_env`] with the inference host on `device` (`None`:
/// [`Recorded::device_for`]), calling `progress(first, tick, last)` after
/// every re-executed tick.
pub fn verify_reporting(
    dir: &Path,
    workers: Option<usize>,
    device: Option<&str>,
    env: &[(String, String)],
    progress: &mut dyn FnMut(u64, u64, u64),
) -> Result<Verdict, ReplayError> {
    let rec = Recorded::open(dir)?;
    let device = rec.device_for(device, false);
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
    let mut checks = AnswerChecks::default();
    for (k, &start) in marks.iter().enumerate() {
        let end = marks.get(k + 1).copied().unwrap_or(rec.last_tick);
        if end <= start {
            continue;
        }
        let body = rec.checkpoint_at_or_before(start)?;
        let (mut run, scratch) = rec.scratch(body, end, workers, device.clone(), "verify", env)?;
        let mut first = None;
        let mut answer = None;
        let outcome = loop {
            if run.state().tick >= end {
                break Ok(());
            }
            match run.tick() {
                Ok(_) => {
                    ticks += 1;
                    progress(marks[0], run.state().tick, rec.last_tick);
                }
                Err(RunError::Diverged { tick, .. }) => {
                    // Keep going to the segment's end — with its recorded
                    // inputs and decisions, without hash checks — to compare
                    // the full state there.
                    first.get_or_insert(tick);
                    run.continue_unchecked();
                }
                Err(RunError::AnswerDiverged(d)) => {
                    // The recorded answer was delivered: the run goes on
                    // as recorded, to compare the state at the end.
                    first.get_or_insert(d.tick);
                    answer.get_or_insert(*d);
                    ticks += 1;
                    progress(marks[0], run.state().tick, rec.last_tick);
                    run.continue_unchecked();
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
                        drop(scratch);
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
                drop(scratch);
                return Err(e.into());
            }
        };
        checks.merge(run.take_answer_checks());
        let _ = run.finish();
        drop(scratch);
        if let Some(mut d) = state {
            d.answer = answer;
            return Ok(Verdict::Diverged(Box::new(d)));
        }
    }
    Ok(Verdict::Identical {
        ticks,
        checkpoints: marks.len(),
        within_tolerance: checks.report(),
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
    fork_on(dir, at, new_dir, workers, None)
}

/// [`fork`] with the inference host on `device` (`None`:
/// [`Recorded::device_for`]).
pub fn fork_on(
    dir: &Path,
    at: u64,
    new_dir: &Path,
    workers: Option<usize>,
    device: Option<&str>,
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
    crate::rundir::create(new_dir).map_err(|e| ReplayError::Usage(e.to_string()))?;
    crate::rundir::write_private(&new_dir.join("manifest.toml"), rec.manifest_text.as_bytes())
        .map_err(|e| ReplayError::Usage(e.to_string()))?;
    let mut cfg = rec.config(
        new_dir.to_path_buf(),
        workers,
        rec.device_for(device, false),
    )?;
    cfg.origin = Some(rec.dir.clone());
    cfg.target_ticks = at;
    crate::rundir::write_meta(
        new_dir,
        &crate::rundir::Meta {
            workers: cfg.workers,
            seed: cfg.seed,
            manifest_dir: &rec.manifest_dir,
            target_ticks: at,
            checkpoint_every: cfg.checkpoint_every,
            retain_checkpoints: cfg.retain_checkpoints,
            forever: false,
            sandbox_off: cfg.sandbox.mode == lockstep_common::SandboxMode::Off,
            forked: Some((&rec.dir, at)),
            nodes: None,
        },
    )
    .map_err(|e| ReplayError::Usage(e.to_string()))?;
    let mut j = JournalWriter::create(&new_dir.join("journal.lsj"))?;
    j.write(&Entry::Header {
        manifest_hash: *blake3::hash(rec.manifest_text.as_bytes()).as_bytes(),
        seed: rec.seed,
        manifest: rec.manifest_text.clone(),
        sandbox_off: cfg.sandbox.layers_off(),
        device: cfg.inference.device.clone(),
    })?;
    j.sync()?;
    cfg.control_socket = false;
    let sim = body.scheduler.clone();
    let mut run = Run::boot(
        cfg,
        sim,
        Some(j),
        Some(body),
        Timeline::Replay(rec.script(from, at)),
    )?;
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
    resume_on(dir, workers, None)
}

/// [`resume`] with the inference host on `device` (`None`: the device the
/// run asked for, [`Recorded::device_for`]).
pub fn resume_on(
    dir: &Path,
    workers: Option<usize>,
    device: Option<&str>,
) -> Result<(Run, u64), ReplayError> {
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
    let mut cfg = rec.config(dir.to_path_buf(), workers, rec.device_for(device, true))?;
    cfg.target_ticks = rec.target_ticks;
    let sim = body.scheduler.clone();
    let mut run = Run::boot(
        cfg,
        sim,
        Some(j),
        Some(body),
        Timeline::Replay(rec.script(from, rec.last_tick)),
    )?;
    while run.state().tick < rec.last_tick {
        run.tick()?;
    }
    Ok((run, rec.target_ticks))
}
