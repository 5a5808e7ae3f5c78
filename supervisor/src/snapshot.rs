//! Snapshots: the whole state of a run at a tick boundary, canonical and
//! checksummed, with agents' memories in a content-addressed page store.
//!
//! # Layout
//!
//! `<run-dir>/snapshots/tick-<T>.lss`:
//!
//! ```text
//! 0   magic "LSSNAP\0\0"
//! 8   format version u32 LE
//! 12  reserved u32 (0)
//! 16  body length u64 LE
//! 24  BLAKE3 of the body (32 bytes)
//! 56  body: postcard(SnapshotBody)
//! ```
//!
//! Agents' memories are not in the snapshot: their images name 4 KiB chunks
//! by hash, and the chunks live in the run's page store
//! ([`crate::pages`]), each once.
//!
//! The body is canonical: it holds only ordered collections and no
//! wall-clock time (the ATSD's `timestamp` is the logical tick), so the same
//! state always encodes to the same bytes and the same hash.  The ATSD's
//! snapshot fields map as: `agents` → [`SnapshotBody::agents`],
//! `schedulerQueue` → [`SnapshotBody::scheduler`] (the task table, mailboxes,
//! subscriptions, channels, quotas and every other scheduler state),
//! `onnxModelStates` → [`SnapshotBody::onnx_model_states`], `timestamp` →
//! [`SnapshotBody::timestamp`].
//!
//! Reading checks magic, version, length, checksum, decoding and the
//! recomputed state hash before anything is used: a truncated, corrupted,
//! wrong-version or foreign snapshot is refused whole, never half-restored.

use crate::sim::SimState;
use serde::{Deserialize, Serialize};
use shm_protocol::worker::{AgentImage, CHUNK};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Magic of snapshot files.
pub const MAGIC: &[u8; 8] = b"LSSNAP\0\0";
/// Snapshot format version (4: agent images keep their chunk lists
/// sparsely, only the chunks that are not all zero).
pub const VERSION: u32 = 4;
const HEADER: usize = 56;

/// A model loaded at snapshot time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelState {
    /// Model id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Pinned BLAKE3 of the file (hex), if any.
    pub blake3: Option<String>,
    /// Whether it is the version requests without `@version` use.
    pub current: bool,
}

/// The snapshot proper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Tick after which it was taken.
    pub tick: u64,
    /// Logical timestamp (the tick; wall time is deliberately absent).
    pub timestamp: u64,
    /// Run seed.
    pub seed: u64,
    /// BLAKE3 of the manifest text.
    pub manifest_hash: [u8; 32],
    /// Scheduler, mailboxes, memberships, quotas, counters, module table
    /// (with module version hashes).
    pub scheduler: SimState,
    /// Every agent with a live instance, ascending id.
    pub agents: Vec<(u64, AgentImage)>,
    /// Models.
    pub onnx_model_states: Vec<ModelState>,
    /// The global state hash.
    pub state_hash: [u8; 32],
}

/// The global state hash: scheduler state, every agent's state hash, and
/// the models.
pub fn global_hash(
    scheduler: &SimState,
    agents: &[(u64, AgentImage)],
    models: &[ModelState],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"lockstep-state-v1");
    // Streamed into the hasher: the scheduler of 100,000 agents encodes to
    // megabytes that a checkpoint need not hold.
    let _ = shm_protocol::codec::encode_to_sink(scheduler, &mut |b: &[u8]| {
        h.update(b);
    });
    for (id, img) in agents {
        h.update(&id.to_le_bytes());
        h.update(&img.state_hash());
    }
    h.update(&shm_protocol::codec::encode(models).unwrap_or_default());
    *h.finalize().as_bytes()
}

/// Snapshot and page-store errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// I/O.
    #[error("{path}: {op} failed")]
    Io {
        /// File.
        path: String,
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a snapshot.
    #[error("{path}: not a Lockstep snapshot (bad magic)")]
    BadMagic {
        /// File.
        path: String,
    },
    /// Unknown version.
    #[error(
        "{path}: snapshot format version {found} is not supported (this build reads {VERSION})"
    )]
    Version {
        /// File.
        path: String,
        /// Found.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{path}: truncated snapshot ({size} bytes, expected {expected})")]
    Truncated {
        /// File.
        path: String,
        /// Actual size.
        size: u64,
        /// Expected size.
        expected: u64,
    },
    /// Checksum or state hash mismatch, or undecodable body.
    #[error("{path}: corrupt snapshot: {reason}")]
    Corrupt {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// From another run.
    #[error("{path}: snapshot belongs to another run ({reason})")]
    Foreign {
        /// File.
        path: String,
        /// What differs.
        reason: String,
    },
    /// A page is missing or damaged.
    #[error("page store {path}: {reason}")]
    Pages {
        /// The pack file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) fn io<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        op,
        source,
    }
}

/// File name of the snapshot after `tick`.
pub fn file_name(tick: u64) -> String {
    format!("snapshots/tick-{tick:012}.lss")
}

/// Encodes a snapshot file's bytes.
pub fn encode(body: &SnapshotBody) -> Vec<u8> {
    // The body is encoded after a placeholder header, which is then filled
    // in: one buffer the size of the file, not two.
    // Sized first (a pass that writes nothing): one allocation of the
    // file's size instead of a doubling series of them.
    let len = shm_protocol::codec::encoded_len(body).unwrap_or(0);
    let mut out = Vec::with_capacity(HEADER + len);
    out.resize(HEADER, 0);
    if shm_protocol::codec::encode_into(body, &mut out).is_err() {
        out.truncate(HEADER);
    }
    let len = (out.len() - HEADER) as u64;
    let sum = *blake3::hash(&out[HEADER..]).as_bytes();
    out[..HEADER].copy_from_slice(&header(len, &sum));
    out
}

/// The header of a snapshot file whose payload has `len` bytes and BLAKE3
/// `sum`.
fn header(len: u64, sum: &[u8; 32]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..56].copy_from_slice(sum);
    h
}

/// A snapshot file around `payload`: header, length, checksum.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&header(
        payload.len() as u64,
        blake3::hash(payload).as_bytes(),
    ));
    out.extend_from_slice(payload);
    out
}

/// Fuzz entry point: decodes `bytes` as a snapshot file, then as the
/// payload of a well-formed one (so that the body decoder and validation
/// past the checksum are reached).  Never panics.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let _ = decode(bytes, "fuzz");
    let _ = decode(&frame(bytes), "fuzz");
}

/// Decodes and fully validates a snapshot file's bytes.
pub fn decode(bytes: &[u8], path: &str) -> Result<SnapshotBody, SnapshotError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic {
            path: path.to_owned(),
        });
    }
    if bytes.len() < HEADER {
        return Err(SnapshotError::Truncated {
            path: path.to_owned(),
            size: bytes.len() as u64,
            expected: HEADER as u64,
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len8);
    let expected = (HEADER as u64).saturating_add(len);
    if bytes.len() as u64 != expected {
        return Err(SnapshotError::Truncated {
            path: path.to_owned(),
            size: bytes.len() as u64,
            expected,
        });
    }
    let payload = &bytes[HEADER..];
    if blake3::hash(payload).as_bytes() != &bytes[24..56] {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: "checksum mismatch".into(),
        });
    }
    let body: SnapshotBody =
        shm_protocol::codec::decode(payload).map_err(|e| SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if global_hash(&body.scheduler, &body.agents, &body.onnx_model_states) != body.state_hash {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: "state hash does not match the contents".into(),
        });
    }
    if body.scheduler.tick != body.tick {
        return Err(SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: "tick fields disagree".into(),
        });
    }
    for (id, img) in &body.agents {
        if img.memory_len != img.chunks.len() as u64 * CHUNK as u64 {
            return Err(SnapshotError::Corrupt {
                path: path.to_owned(),
                reason: format!("agent {id}: image length and chunks disagree"),
            });
        }
    }
    Ok(body)
}

/// Writes `body` to `<dir>/<file_name(tick)>` atomically (temp file, fsync,
/// rename, fsync of the directory).  Returns the relative file name.
pub fn write(dir: &Path, body: &SnapshotBody) -> Result<String, SnapshotError> {
    let rel = file_name(body.tick);
    let path = dir.join(&rel);
    let sdir = dir.join("snapshots");
    std::fs::create_dir_all(&sdir).map_err(io(&sdir, "create"))?;
    let tmp = path.with_extension("tmp");
    let bytes = encode(body);
    {
        let mut f = File::create(&tmp).map_err(io(&tmp, "create"))?;
        f.write_all(&bytes).map_err(io(&tmp, "write"))?;
        f.sync_all().map_err(io(&tmp, "fsync"))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path, "rename"))?;
    if let Ok(d) = File::open(&sdir) {
        let _ = d.sync_all();
    }
    Ok(rel)
}

/// Reads and validates a snapshot file.
pub fn read(path: &Path) -> Result<SnapshotBody, SnapshotError> {
    let bytes = std::fs::read(path).map_err(io(path, "read"))?;
    decode(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use shm_protocol::worker::{ChunkList, HostCounters, zero_chunk_hash};

    fn body() -> SnapshotBody {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-snap-m-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let m = Manifest::parse(
            "[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\ncount = 2\n",
            "m.toml",
            dir.path(),
        )
        .unwrap();
        let sim = SimState::new(&m, 3).unwrap();
        let img = AgentImage {
            module_hash: [7; 32],
            memory_len: CHUNK as u64 * 2,
            chunks: ChunkList::from_hashes(&[zero_chunk_hash(), [1; 32]]),
            globals: vec![],
            host: HostCounters::default(),
        };
        let agents = vec![(1, img.clone()), (2, img)];
        let models = vec![];
        let state_hash = global_hash(&sim, &agents, &models);
        SnapshotBody {
            tick: 0,
            timestamp: 0,
            seed: 3,
            manifest_hash: [9; 32],
            scheduler: sim,
            agents,
            onnx_model_states: models,
            state_hash,
        }
    }

    #[test]
    fn encoding_is_canonical_and_round_trips() {
        let b = body();
        assert_eq!(encode(&b), encode(&b.clone()));
        // The file is the framed encoding of the body, header filled in place.
        assert_eq!(encode(&b), frame(&shm_protocol::codec::encode(&b).unwrap()));
        assert_eq!(decode(&encode(&b), "x").unwrap(), b);
    }

    #[test]
    fn damaged_snapshots_are_refused_whole() {
        let bytes = encode(&body());
        for cut in [1, 10, bytes.len() - 57] {
            assert!(
                matches!(
                    decode(&bytes[..bytes.len() - cut], "x"),
                    Err(SnapshotError::Truncated { .. })
                ),
                "cut {cut}"
            );
        }
        let mut b = bytes.clone();
        let n = b.len() - 5;
        b[n] ^= 1;
        assert!(matches!(
            decode(&b, "x"),
            Err(SnapshotError::Corrupt { .. })
        ));
        let mut b = bytes.clone();
        b[8] = 9;
        assert!(matches!(
            decode(&b, "x"),
            Err(SnapshotError::Version { found: 9, .. })
        ));
        assert!(matches!(
            decode(b"hello world", "x"),
            Err(SnapshotError::BadMagic { .. })
        ));
        // A body whose declared state hash lies is refused too.
        let mut lie = body();
        lie.state_hash = [0; 32];
        assert!(matches!(
            decode(&encode(&lie), "x"),
            Err(SnapshotError::Corrupt { .. })
        ));
    }

    static GOOD: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();

    fn good() -> &'static (Vec<u8>, Vec<u8>) {
        GOOD.get_or_init(|| {
            (
                encode(&body()),
                shm_protocol::codec::encode(&body()).unwrap(),
            )
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// A damaged snapshot file is refused, never a panic.
        #[test]
        fn random_damage_never_panics(pos in 0usize..1 << 20, flip in 1u8..) {
            let mut b = good().0.clone();
            let pos = pos % b.len();
            b[pos] ^= flip;
            let _ = decode(&b, "fuzz");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]

        /// The fuzz target's function on 100,000 damaged snapshot bodies
        /// (with a valid checksum, so the body decoder and validation see
        /// them).
        #[test]
        fn damaged_bodies_never_panic(pos in 0usize..1 << 20, flip in 1u8.., cut: bool) {
            let mut b = good().1.clone();
            let pos = pos % b.len();
            b[pos] ^= flip;
            if cut {
                b.truncate(pos);
            }
            fuzz_decode(&b);
        }
    }
}
