//! Checkpoint imaging and staged restore of agents.
//!
//! An agent's image is its memory as a list of [`CHUNK`]-byte chunk hashes
//! plus its globals and host counters.  The [`Imager`] remembers, for each
//! agent, the BLAKE3 of every non-zero chunk it last imaged together with a
//! 128-bit XXH3 fingerprint of the chunk's bytes.  A checkpoint reads every
//! chunk once at memory bandwidth for its fingerprint and computes BLAKE3
//! (the expensive hash, ≈ 10× slower) only for chunks whose fingerprint
//! changed: the cost of hashing follows the chunks written since the last
//! checkpoint.  Only chunks the supervisor does not have yet are shipped
//! (the supervisor keeps every chunk in its content-addressed page store),
//! and images are sent as they are made, so a checkpoint never holds more
//! than one agent's chunks in memory.  A restore arrives as one message per
//! agent — its image and the chunks it needs, each verified against its
//! hash by the supervisor as it read them — and the worker answers once for
//! a whole batch.

use crate::agent::ImageParts;
use crate::service::Worker;
use shm_protocol::worker::{AgentImage, CHUNK, ChunkData, ChunkList, RestoreOrder, WorkerReply};
use std::collections::{BTreeMap, HashMap, HashSet};
use xxhash_rust::xxh3::xxh3_128;

/// Whether `bytes` are all zero: 256-byte blocks OR-folded (vectorized),
/// stopping at the first block that is not.
fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(256)
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Makes `memory` (a fresh instance's, grown to the image's length) the
/// image `list` whose distinct non-zero chunks are `chunks`, sent in the
/// order they first appear in the list: each chunk is copied straight into
/// place, and a chunk the image has zero is cleared only where the fresh
/// instance is not already zero (its data segments).
fn fill_memory(
    id: u64,
    memory: &mut [u8],
    list: &ChunkList,
    chunks: &[ChunkData],
) -> Result<(), String> {
    let mut sent = chunks.iter().peekable();
    // Chunks repeated within the image: looked up once one repeats.
    let mut seen: Option<HashMap<[u8; 32], usize>> = None;
    let mut next_nonzero = 0usize;
    for &(i, h) in list.nonzero() {
        let i = i as usize;
        for z in next_nonzero..i {
            clear_if_dirty(&mut memory[z * CHUNK..(z + 1) * CHUNK]);
        }
        next_nonzero = i + 1;
        let bytes = match sent.next_if(|c| c.hash == h) {
            Some(c) => &c.bytes,
            None => {
                let index = seen.get_or_insert_with(|| {
                    chunks
                        .iter()
                        .enumerate()
                        .map(|(n, c)| (c.hash, n))
                        .collect()
                });
                let n = *index.get(&h).ok_or_else(|| {
                    format!("restore of agent {id}: chunk {i} of its image was not sent")
                })?;
                &chunks[n].bytes
            }
        };
        memory[i * CHUNK..(i + 1) * CHUNK].copy_from_slice(bytes);
    }
    for z in next_nonzero..memory.len() / CHUNK {
        clear_if_dirty(&mut memory[z * CHUNK..(z + 1) * CHUNK]);
    }
    Ok(())
}

/// Zeroes `chunk` unless it already is (reading a fresh instance's
/// untouched memory costs no page of its own).
fn clear_if_dirty(chunk: &mut [u8]) {
    if !is_zero(chunk) {
        chunk.fill(0);
    }
}

/// What the imager remembers of one non-zero chunk.
#[derive(Debug, Clone, Copy)]
struct ChunkMemo {
    /// Index of the chunk in the agent's memory.
    index: u32,
    /// XXH3-128 of its bytes when it was last hashed (`None`: unknown, e.g.
    /// after a restore: the next checkpoint hashes it again).
    fingerprint: Option<u128>,
    /// Its BLAKE3.
    hash: [u8; 32],
}

/// What the imager remembers of one agent: its memory's length in chunks
/// and its non-zero chunks in index order (most chunks of a large, sparse
/// memory are zero and take no room here).
#[derive(Debug, Clone, Default)]
struct AgentMemo {
    chunks: u32,
    nonzero: Vec<ChunkMemo>,
}

impl AgentMemo {
    /// The image's chunk list.
    fn list(&self) -> ChunkList {
        ChunkList::from_nonzero(
            self.chunks,
            self.nonzero.iter().map(|m| (m.index, m.hash)).collect(),
        )
        .expect("chunks imaged in index order, none zero, within a wasm32 memory")
    }

    /// A memo of a chunk list whose fingerprints are unknown.
    fn of_list(list: &ChunkList) -> Self {
        Self {
            chunks: list.len() as u32,
            nonzero: list
                .nonzero()
                .iter()
                .map(|&(index, hash)| ChunkMemo {
                    index,
                    fingerprint: None,
                    hash,
                })
                .collect(),
        }
    }
}

/// How much work a checkpoint did (what the tests check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Chunks read (fingerprinted).
    pub chunks: u64,
    /// Chunks whose BLAKE3 was computed (changed, or `full`).
    pub hashed: u64,
    /// Chunks shipped to the supervisor.
    pub shipped: u64,
}

/// Per-worker checkpoint bookkeeping.
#[derive(Debug, Default)]
pub struct Imager {
    /// What was last imaged of each agent.
    memo: BTreeMap<u64, AgentMemo>,
    /// Restores that failed since the last `RestoreDone`.
    errors: Vec<(u64, String)>,
}

impl Imager {
    /// Images `agents`: one [`WorkerReply::Imaged`] per agent this worker
    /// hosts, in order, each handed to `emit` as soon as it is made, then
    /// [`WorkerReply::Checkpointed`] naming the agents it has no instance
    /// of.  Chunks already sent (in this checkpoint or, unless `full`, for
    /// the same position in the previous one) are not sent again; with
    /// `full` every chunk's BLAKE3 is also recomputed.  Stops at the first
    /// error of `emit` and returns it.
    pub fn checkpoint<E>(
        &mut self,
        worker: &mut Worker,
        agents: &[u64],
        full: bool,
        mut emit: impl FnMut(WorkerReply) -> Result<(), E>,
    ) -> Result<ImageStats, E> {
        let mut stats = ImageStats::default();
        let mut shipped: HashSet<[u8; 32]> = HashSet::new();
        let mut missing = Vec::new();
        for &id in agents {
            let Some(agent) = worker.agent_mut(id) else {
                missing.push(id);
                continue;
            };
            let module_hash = agent.module().hash;
            let (memory, globals, host) = agent.parts();
            let previous = self.memo.remove(&id).unwrap_or_default();
            let mut old = previous.nonzero.iter().peekable();
            let mut memo = AgentMemo {
                chunks: memory.len().div_ceil(CHUNK) as u32,
                nonzero: Vec::with_capacity(previous.nonzero.len()),
            };
            let mut chunks = Vec::new();
            for (i, bytes) in memory.chunks(CHUNK).enumerate() {
                stats.chunks += 1;
                let index = i as u32;
                while old.next_if(|m| m.index < index).is_some() {}
                let before = old.next_if(|m| m.index == index);
                if is_zero(bytes) {
                    // A zero chunk (most chunks of a sparse memory): never
                    // stored, sent or fingerprinted.
                    continue;
                }
                let fingerprint = xxh3_128(bytes);
                let unchanged = !full && before.is_some_and(|m| m.fingerprint == Some(fingerprint));
                let hash = match before {
                    Some(m) if unchanged => m.hash,
                    _ => {
                        stats.hashed += 1;
                        *blake3::hash(bytes).as_bytes()
                    }
                };
                memo.nonzero.push(ChunkMemo {
                    index,
                    fingerprint: Some(fingerprint),
                    hash,
                });
                // The supervisor has the chunk if it was at this position in
                // the previous image (same hash) or went out earlier in this
                // checkpoint.
                let known = !full && before.is_some_and(|m| m.hash == hash);
                if known || !shipped.insert(hash) {
                    continue;
                }
                stats.shipped += 1;
                chunks.push(ChunkData {
                    hash,
                    bytes: bytes.to_vec(),
                });
            }
            let image = AgentImage {
                module_hash,
                memory_len: memory.len() as u64,
                chunks: memo.list(),
                globals,
                host,
            };
            self.memo.insert(id, memo);
            emit(WorkerReply::Imaged {
                agent_id: id,
                image,
                chunks,
            })?;
        }
        emit(WorkerReply::Checkpointed { missing })?;
        Ok(stats)
    }

    /// Re-creates one agent from an image and its chunks; a failure is kept
    /// for [`Imager::done`].
    pub fn restore(&mut self, worker: &mut Worker, order: RestoreOrder) {
        let id = order.agent_id;
        if let Err(e) = Self::try_restore(worker, &mut self.memo, order) {
            self.errors.push((id, e));
        }
    }

    fn try_restore(
        worker: &mut Worker,
        memo: &mut BTreeMap<u64, AgentMemo>,
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
        // The supervisor checked every chunk against its hash when it read
        // it from its page store, and nothing else writes this worker's
        // command ring: the chunks are not hashed again here (that doubled
        // a restore's hashing).  Their sizes are checked.
        if let Some(c) = o.chunks.iter().find(|c| c.bytes.len() != CHUNK) {
            return Err(format!(
                "restore of agent {id}: a chunk of {} bytes (chunks have {CHUNK})",
                c.bytes.len()
            ));
        }
        let parts = ImageParts {
            module_hash: &o.image.module_hash,
            memory_len: len,
            globals: &o.image.globals,
            host: o.image.host,
        };
        let (list, chunks) = (&o.image.chunks, &o.chunks);
        worker.restore_with(id, o.module_id, o.tenant, o.limits, parts, |memory| {
            fill_memory(id, memory, list, chunks)
        })?;
        memo.insert(id, AgentMemo::of_list(&o.image.chunks));
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
        self.memo.clear();
    }
}
