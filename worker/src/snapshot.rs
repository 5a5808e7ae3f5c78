//! Checkpoint imaging and staged restore of agents.
//!
//! An agent's image is its memory as a list of [`CHUNK`]-byte chunk hashes
//! plus its globals and host counters.  The [`Imager`] remembers which chunk
//! hashes it already sent for each agent, so a checkpoint ships only chunks
//! that changed since the previous one (the supervisor keeps every chunk in
//! its content-addressed page store).  Restores arrive as an image followed
//! by the chunks it needs; every chunk is verified against its hash.

use crate::agent::chunk_hashes;
use crate::service::Worker;
use shm_protocol::worker::{
    AgentImage, AgentLimits, AgentState, CHUNK, ChunkData, WorkerReply, zero_chunk_hash,
};
use std::collections::{BTreeMap, BTreeSet};

/// An image being restored.
#[derive(Debug)]
struct Staging {
    module_id: u32,
    tenant: u32,
    limits: AgentLimits,
    image: AgentImage,
    memory: Vec<u8>,
    missing: BTreeSet<usize>,
}

/// Per-worker checkpoint bookkeeping.
#[derive(Debug, Default)]
pub struct Imager {
    sent: BTreeMap<u64, Vec<[u8; 32]>>,
    staging: BTreeMap<u64, Staging>,
}

impl Imager {
    /// Images `agents`; splits the answer into parts of about `limit`
    /// bytes.
    pub fn checkpoint(
        &mut self,
        worker: &mut Worker,
        agents: &[u64],
        full: bool,
        limit: usize,
    ) -> Vec<WorkerReply> {
        let zero = zero_chunk_hash();
        let mut parts = Vec::new();
        let mut images = Vec::new();
        let mut chunks: Vec<ChunkData> = Vec::new();
        let mut size = 0usize;
        let mut shipped: BTreeSet<[u8; 32]> = BTreeSet::new();
        for &id in agents {
            let Some(agent) = worker.agent_mut(id) else {
                return vec![WorkerReply::Error(format!(
                    "checkpoint: no agent {id} in this worker"
                ))];
            };
            let module_hash = agent.module().hash;
            let (memory, globals, host) = agent.parts();
            let hashes = chunk_hashes(memory);
            let previous = if full { None } else { self.sent.get(&id) };
            for (i, h) in hashes.iter().enumerate() {
                let known = previous.is_some_and(|p| p.get(i) == Some(h));
                if *h == zero || known || shipped.contains(h) {
                    continue;
                }
                shipped.insert(*h);
                let bytes = memory[i * CHUNK..(i * CHUNK + CHUNK).min(memory.len())].to_vec();
                size += bytes.len() + 48;
                chunks.push(ChunkData { hash: *h, bytes });
                if size >= limit {
                    parts.push(WorkerReply::Checkpointed {
                        images: std::mem::take(&mut images),
                        chunks: std::mem::take(&mut chunks),
                        more: true,
                    });
                    size = 0;
                }
            }
            let image = AgentImage {
                module_hash,
                memory_len: memory.len() as u64,
                chunks: hashes.clone(),
                globals,
                host,
            };
            size += 64 + 32 * hashes.len();
            images.push((id, image));
            self.sent.insert(id, hashes);
        }
        parts.push(WorkerReply::Checkpointed {
            images,
            chunks,
            more: false,
        });
        parts
    }

    /// Starts a staged restore.
    pub fn begin(
        &mut self,
        agent_id: u64,
        module_id: u32,
        tenant: u32,
        limits: AgentLimits,
        image: AgentImage,
    ) -> Option<String> {
        let len = image.memory_len;
        if !len.is_multiple_of(CHUNK as u64)
            || len > limits.memory_bytes
            || image.chunks.len() as u64 != len / CHUNK as u64
        {
            return Some(format!(
                "image of agent {agent_id}: memory of {len} bytes with {} chunks is inconsistent or above the limit",
                image.chunks.len()
            ));
        }
        let zero = zero_chunk_hash();
        let missing = image
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, h)| **h != zero)
            .map(|(i, _)| i)
            .collect();
        let memory = vec![0u8; len as usize];
        self.staging.insert(
            agent_id,
            Staging {
                module_id,
                tenant,
                limits,
                image,
                memory,
                missing,
            },
        );
        None
    }

    /// Adds chunks to a staged restore.
    pub fn chunks(&mut self, agent_id: u64, chunks: Vec<ChunkData>) -> Option<String> {
        let Some(st) = self.staging.get_mut(&agent_id) else {
            return Some(format!(
                "restore chunks for agent {agent_id} without RestoreBegin"
            ));
        };
        for c in chunks {
            if c.bytes.len() != CHUNK || *blake3::hash(&c.bytes).as_bytes() != c.hash {
                return Some(format!(
                    "restore of agent {agent_id}: a chunk does not match its hash"
                ));
            }
            let positions: Vec<usize> = st
                .missing
                .iter()
                .copied()
                .filter(|&i| st.image.chunks[i] == c.hash)
                .collect();
            for i in positions {
                st.memory[i * CHUNK..(i + 1) * CHUNK].copy_from_slice(&c.bytes);
                st.missing.remove(&i);
            }
        }
        None
    }

    /// Finishes a staged restore: instantiates the agent from the image.
    pub fn end(&mut self, worker: &mut Worker, agent_id: u64) -> WorkerReply {
        let Some(st) = self.staging.remove(&agent_id) else {
            return WorkerReply::Restored {
                agent_id,
                error: Some(format!("no staged restore for agent {agent_id}")),
            };
        };
        if let Some(first) = st.missing.first() {
            return WorkerReply::Restored {
                agent_id,
                error: Some(format!(
                    "restore of agent {agent_id}: {} chunks missing (first at {first})",
                    st.missing.len()
                )),
            };
        }
        let hashes = st.image.chunks.clone();
        let state = AgentState {
            module_hash: st.image.module_hash,
            memory: st.memory,
            globals: st.image.globals,
            host: st.image.host,
        };
        let error = worker
            .restore(agent_id, st.module_id, st.tenant, st.limits, &state)
            .err();
        if error.is_none() {
            self.sent.insert(agent_id, hashes);
        }
        WorkerReply::Restored { agent_id, error }
    }

    /// Forgets what was sent (the supervisor lost its page store, or this is
    /// a fresh worker).
    pub fn reset(&mut self) {
        self.sent.clear();
    }
}
