//! Checkpoints: imaging the whole state at a tick boundary, writing the
//! snapshot and its journal entry, comparing it during replays, and the
//! retention policy of long runs.
//!
//! A checkpoint images every agent that has an instance (new memory chunks
//! go to the content-addressed page store `pages.pack`), writes
//! `snapshots/tick-<T>.lss` (fsynced, renamed) and journals it; the worker
//! pool then recovers from it.  While recorded ticks are re-executed, an
//! existing snapshot of the same tick must be reproduced exactly and is
//! never overwritten.
//!
//! **Retention.**  With `retain_checkpoints = N`, once a run has more than
//! N checkpoints the oldest ones are dropped: their snapshot files are
//! deleted, the journal is rewritten to start (after its header) at the
//! oldest kept checkpoint, and the page store is compacted when more than
//! half of it is no longer referenced.  Replay, verify and fork work from
//! any kept checkpoint; a run's disk use stays bounded whatever its length.

use crate::journal::{self, Entry, JournalError, JournalWriter};
use crate::pages::PageStore;
use crate::pool::{ChunkSource, PoolError, WorkerPool};
use crate::sim::{AgentStatus, SimState};
use crate::snapshot::{self, ModelState, SnapshotBody, SnapshotError};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures of checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing or reading a snapshot or the page store.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The workers could not image their agents.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A replayed checkpoint's state differs from the recorded one.
    #[error("{0}")]
    Diverged(Box<crate::diff::Divergence>),
}

/// This run's page store, and the page store of the run a snapshot came
/// from (replay, verify, fork read another directory's checkpoints).
#[derive(Debug)]
pub struct Pages {
    own: PageStore,
    origin: Option<PageStore>,
}

impl Pages {
    /// Opens `<dir>/pages.pack` (and `<origin>/pages.pack`).
    pub fn open(dir: &Path, origin: Option<&Path>) -> Result<Self, SnapshotError> {
        let origin = match origin {
            Some(o) if o != dir => Some(PageStore::open_other(o)?),
            _ => None,
        };
        Ok(Self {
            own: PageStore::open(dir)?,
            origin,
        })
    }

    /// This run's store.
    pub fn own(&self) -> &PageStore {
        &self.own
    }
}

impl ChunkSource for Pages {
    fn chunk_into(&self, hash: &[u8; 32], buf: &mut [u8]) -> Result<(), String> {
        let own = self.own.read_if_present(hash, buf);
        if matches!(own, Ok(true)) {
            return Ok(());
        }
        // Missing here (a fork or replay restores from its origin's
        // store) or damaged here: the origin's copy.
        match (&self.origin, own) {
            (Some(o), _) => o.read_into(hash, buf).map_err(|e| e.to_string()),
            (None, Err(e)) => Err(e.to_string()),
            (None, Ok(_)) => self.own.read_into(hash, buf).map_err(|e| e.to_string()),
        }
    }
}

/// The checkpointer (see the module docs).
#[derive(Debug)]
pub struct Checkpointer {
    run_dir: PathBuf,
    /// Where recorded snapshots are compared during replays.
    origin: Option<PathBuf>,
    pages: Pages,
    /// The last checkpoint.
    last: Option<Arc<SnapshotBody>>,
    /// Ticks of the checkpoints in the journal, oldest first.
    kept: VecDeque<u64>,
    /// How many to keep (`None`: all).
    retain: Option<u64>,
}

impl Checkpointer {
    /// A checkpointer for `run_dir` (reading snapshots of `origin` too).
    pub fn open(
        run_dir: &Path,
        origin: Option<&Path>,
        retain: Option<u64>,
        kept: impl IntoIterator<Item = u64>,
    ) -> Result<Self, SnapshotError> {
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            origin: origin.filter(|o| *o != run_dir).map(Path::to_path_buf),
            pages: Pages::open(run_dir, origin)?,
            last: None,
            kept: kept.into_iter().collect(),
            retain,
        })
    }

    /// The page stores (for restores).
    pub fn pages(&self) -> &Pages {
        &self.pages
    }

    /// The last checkpoint taken or restored.
    pub fn last(&self) -> Option<&Arc<SnapshotBody>> {
        self.last.as_ref()
    }

    /// Records a restored snapshot as the last checkpoint.
    pub fn restored(&mut self, body: Arc<SnapshotBody>) {
        self.last = Some(body);
    }

    /// Agents with an instance in a worker (and so an image).
    fn imaged_agents(sim: &SimState) -> Vec<u64> {
        sim.agents
            .iter()
            .filter(|(_, a)| matches!(a.status, AgentStatus::Live | AgentStatus::Faulted { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Images the whole state at the current tick boundary (new chunks go
    /// to the page store) without writing a snapshot.
    pub fn capture(
        &mut self,
        sim: &SimState,
        pool: &mut WorkerPool,
        manifest_hash: [u8; 32],
        models: Vec<ModelState>,
    ) -> Result<SnapshotBody, CheckpointError> {
        let agents = Self::imaged_agents(sim);
        let pages = &self.pages;
        let mut put = |c: &shm_protocol::worker::ChunkData| {
            pages
                .own
                .put(&c.hash, &c.bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let images = pool.capture(&agents, pages, &mut put)?;
        // Chunks restored from another run's snapshot live in its page
        // store: copy them into ours.
        for (id, img) in &images {
            for (_, h) in img.chunks.nonzero() {
                if self.pages.own.contains(h) {
                    continue;
                }
                let bytes = match &self.pages.origin {
                    Some(o) => o.get(h)?,
                    None => {
                        return Err(SnapshotError::Pages {
                            path: self.run_dir.join("pages.pack").display().to_string(),
                            reason: format!(
                                "agent {id}'s image refers to a chunk that was never stored"
                            ),
                        }
                        .into());
                    }
                };
                self.pages.own.put(h, &bytes)?;
            }
        }
        self.pages.own.sync()?;
        let state_hash = snapshot::global_hash(sim, &images, &models);
        Ok(SnapshotBody {
            tick: sim.tick,
            timestamp: sim.tick,
            seed: sim.seed,
            manifest_hash,
            scheduler: sim.clone(),
            agents: images,
            onnx_model_states: models,
            state_hash,
        })
    }

    /// Takes a checkpoint: writes the snapshot and journals it (durably),
    /// or — when `replaying` and the tick's snapshot exists — checks that
    /// it is reproduced.  Returns the snapshot file (relative to the run
    /// directory).
    pub fn commit(
        &mut self,
        body: SnapshotBody,
        journal: Option<&mut JournalWriter>,
        replaying: bool,
        inject: &crate::inject::Inject,
    ) -> Result<(String, Arc<SnapshotBody>), CheckpointError> {
        let rel = snapshot::file_name(body.tick);
        if replaying {
            let base = self.origin.clone().unwrap_or_else(|| self.run_dir.clone());
            let existing = base.join(&rel);
            if existing.exists() {
                match snapshot::read(&existing) {
                    Ok(recorded) => {
                        if recorded.state_hash != body.state_hash {
                            return Err(CheckpointError::Diverged(Box::new(crate::diff::diff(
                                &recorded, &body,
                            ))));
                        }
                        let body = Arc::new(body);
                        self.last = Some(body.clone());
                        return Ok((rel, body));
                    }
                    // Our own damaged snapshot: the re-execution that reached
                    // this tick was checked hash by hash, so repair it.
                    Err(e) if self.origin.is_none() => {
                        tracing::warn!(file = %existing.display(), error = %e, "replacing a damaged snapshot");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let file = snapshot::write(&self.run_dir, &body)?;
        inject.at(body.tick, crate::inject::Phase::Checkpoint);
        let body = Arc::new(body);
        if let Some(j) = journal
            && !replaying
        {
            j.write(&Entry::Checkpoint {
                tick: body.tick,
                file: file.clone(),
                state_hash: body.state_hash,
            })?;
            j.sync()?;
            self.kept.push_back(body.tick);
            self.last = Some(body.clone());
            self.retain(j)?;
        } else {
            self.last = Some(body.clone());
        }
        Ok((file, body))
    }

    /// Applies the retention policy after a checkpoint.
    fn retain(&mut self, journal: &mut JournalWriter) -> Result<(), CheckpointError> {
        let Some(n) = self.retain else {
            return Ok(());
        };
        let n = n.max(1) as usize;
        if self.kept.len() <= n {
            return Ok(());
        }
        let mut dropped = Vec::new();
        while self.kept.len() > n {
            if let Some(t) = self.kept.pop_front() {
                dropped.push(t);
            }
        }
        let Some(&oldest) = self.kept.front() else {
            return Ok(());
        };
        journal.compact_from_checkpoint(oldest)?;
        for t in &dropped {
            let _ = std::fs::remove_file(self.run_dir.join(snapshot::file_name(*t)));
        }
        // Compact the page store once most of it is garbage.
        let mut live: HashSet<[u8; 32]> = HashSet::new();
        for t in &self.kept {
            let body = snapshot::read(&self.run_dir.join(snapshot::file_name(*t)))?;
            for (_, img) in &body.agents {
                live.extend(img.chunks.nonzero().iter().map(|(_, h)| *h));
            }
        }
        if self.pages.own.chunks() > 2 * live.len() + 1024 {
            self.pages.own.compact(&live)?;
        }
        tracing::debug!(
            dropped = ?dropped,
            oldest,
            "retention: dropped old checkpoints"
        );
        Ok(())
    }
}

/// Ticks of the checkpoints a journal holds, oldest first.
pub fn journaled_checkpoints(path: &Path) -> Result<Vec<u64>, JournalError> {
    Ok(journal::read_journal(path)?
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Checkpoint { tick, .. } => Some(*tick),
            _ => None,
        })
        .collect())
}
