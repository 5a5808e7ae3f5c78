//! Checkpoint imaging and staged restore of agents.
//!
//! An agent's image is its memory as a list of [`CHUNK`]-byte chunk hashes
//! plus its globals and host counters.  The [`Imager`] remembers which chunk
//! hashes it already sent for each agent, so a checkpoint ships only chunks
//! that changed since the previous one (the supervisor keeps every chunk in
//! its content-addressed page store).  A restore arrives as one message per
//! agent — its image and the chunks it needs, each verified against its
//! hash — and the worker answers once for a whole batch.

use crate::agent::chunk_hashes;
use crate::service::Worker;
use shm_protocol::worker::{
    AgentImage, AgentState, CHUNK, ChunkData, RestoreOrder, WorkerReply, zero_chunk_hash,
};
use std::collections::{BTreeMap, BTreeSet};

/// Per-worker checkpoint bookkeeping.
#[derive(Debug, Default)]
pub struct Imager {
    /// The chunk hashes last sent for each agent.
    sent: BTreeMap<u64, Vec<[u8; 32]>>,
    /// Restores that failed since the last `RestoreDone`.
    errors: Vec<(u64, String)>,
}

impl Imager {
    /// Images `agents`: one [`WorkerReply::Imaged`] per agent this worker
    /// hosts, in order, then [`WorkerReply::Checkpointed`] naming the agents
    /// it has no instance of.  Chunks already sent (in this checkpoint or,
    /// unless `full`, for the same position in the previous one) are not
    /// sent again.
    pub fn checkpoint(
        &mut self,
        worker: &mut Worker,
        agents: &[u64],
        full: bool,
    ) -> Vec<WorkerReply> {
        let zero = zero_chunk_hash();
        let mut replies = Vec::with_capacity(agents.len() + 1);
        let mut shipped: BTreeSet<[u8; 32]> = BTreeSet::new();
        let mut missing = Vec::new();
        for &id in agents {
            let Some(agent) = worker.agent_mut(id) else {
                missing.push(id);
                continue;
            };
            let module_hash = agent.module().hash;
            let (memory, globals, host) = agent.parts();
            let hashes = chunk_hashes(memory);
            let previous = if full { None } else { self.sent.get(&id) };
            let mut chunks = Vec::new();
            for (i, h) in hashes.iter().enumerate() {
                let known = previous.is_some_and(|p| p.get(i) == Some(h));
                if *h == zero || known || !shipped.insert(*h) {
                    continue;
                }
                let bytes = memory[i * CHUNK..(i * CHUNK + CHUNK).min(memory.len())].to_vec();
                chunks.push(ChunkData { hash: *h, bytes });
            }
            let image = AgentImage {
                module_hash,
                memory_len: memory.len() as u64,
                chunks: hashes.clone(),
                globals,
                host,
            };
            self.sent.insert(id, hashes);
            replies.push(WorkerReply::Imaged {
                agent_id: id,
                image,
                chunks,
            });
        }
        replies.push(WorkerReply::Checkpointed { missing });
        replies
    }

    /// Re-creates one agent from an image and its chunks (each verified
    /// against its hash); a failure is kept for [`Imager::done`].
    pub fn restore(&mut self, worker: &mut Worker, order: RestoreOrder) {
        if let Err(e) = Self::try_restore(worker, &mut self.sent, order.clone()) {
            self.errors.push((order.agent_id, e));
        }
    }

    fn try_restore(
        worker: &mut Worker,
        sent: &mut BTreeMap<u64, Vec<[u8; 32]>>,
        o: RestoreOrder,
    ) -> Result<(), String> {
        let id = o.agent_id;
        let len = o.image.memory_len;
        if !len.is_multiple_of(CHUNK as u64)
            || len > o.limits.memory_bytes
            || o.image.chunks.len() as u64 != len / CHUNK as u64
        {
            return Err(format!(
                "image of agent {id}: memory of {len} bytes with {} chunks is inconsistent or above the limit",
                o.image.chunks.len()
            ));
        }
        let mut by_hash: BTreeMap<[u8; 32], Vec<u8>> = BTreeMap::new();
        for c in o.chunks {
            if c.bytes.len() != CHUNK || *blake3::hash(&c.bytes).as_bytes() != c.hash {
                return Err(format!(
                    "restore of agent {id}: a chunk does not match its hash"
                ));
            }
            by_hash.insert(c.hash, c.bytes);
        }
        let zero = zero_chunk_hash();
        let mut memory = vec![0u8; len as usize];
        for (i, h) in o.image.chunks.iter().enumerate() {
            if *h == zero {
                continue;
            }
            let bytes = by_hash.get(h).ok_or_else(|| {
                format!("restore of agent {id}: chunk {i} of its image was not sent")
            })?;
            memory[i * CHUNK..(i + 1) * CHUNK].copy_from_slice(bytes);
        }
        let state = AgentState {
            module_hash: o.image.module_hash,
            memory,
            globals: o.image.globals,
            host: o.image.host,
        };
        worker.restore(id, o.module_id, o.tenant, o.limits, &state)?;
        sent.insert(id, o.image.chunks);
        Ok(())
    }

    /// The answer to `RestoreDone`: the restores that failed since the last.
    pub fn done(&mut self) -> WorkerReply {
        WorkerReply::Restored {
            errors: std::mem::take(&mut self.errors),
        }
    }

    /// Forgets what was sent (the supervisor lost its page store, or this is
    /// a fresh worker).
    pub fn reset(&mut self) {
        self.sent.clear();
    }
}
