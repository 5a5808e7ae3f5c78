//! The run journal: an append-only file of checksummed, versioned frames.
//!
//! # Layout
//!
//! ```text
//! 0   magic "LSJOURN\0" (8 bytes)
//! 8   format version u32 LE
//! 12  frames: len u32 LE | checksum u64 LE (first 8 bytes of BLAKE3(payload)) | payload (postcard Entry)
//! ```
//!
//! The entries ([`Entry`]): a header (manifest text and hash, seed, the
//! sandbox layers that were off, the `--device` the inference host was
//! asked for), then per tick its inputs, decisions, events, inference
//! answers and tick record, and checkpoints and the end.  Each inference
//! answer ([`Answer`]) records the agent, request id, model and BLAKE3 of
//! the answer, and who computed it ([`AnswerSource`]): the supervisor
//! itself (`builtin`: the `echo` model, an error the run's state decides),
//! the CPU (the hash alone — any CPU verifier recomputes the same bits), or
//! another device such as `cuda:0`, with the answer's bytes, so that a
//! verifier elsewhere can compare its own recomputation within the model's
//! tolerance and deliver exactly the recorded answer.
//!
//! The journal holds only deterministic facts (no wall-clock times, no
//! worker counts), so two runs of the same manifest, seed and inputs write
//! byte-identical journals.  A frame cut short at the end of the file (a
//! crash while writing) is detected and ignored; a bad frame anywhere else is
//! corruption, reported with its offset.
//!
//! # Durability
//!
//! Frames are written with one `write` each into the page cache and the file
//! is `fdatasync`ed at every input frame (an accepted `ctl` command is
//! durable before it takes effect), at every checkpoint, and at close.  A
//! supervisor crash can lose only tick records after the last sync; `resume`
//! re-executes those ticks deterministically.

use crate::sim::{Decision, Event, Input, InputOutcome};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Magic bytes at the start of a journal.
pub const MAGIC: &[u8; 8] = b"LSJOURN\0";
/// Format version.  5: the header records the inference device asked for,
/// and each inference answer who computed it, with its bytes when that was
/// neither the CPU nor the supervisor ([`AnswerSource`]).  (4: inputs are
/// [`crate::command::Command`]s.)  A journal of an earlier version is
/// refused with [`JournalError::Version`] (replay it with the build that
/// wrote it).
pub const VERSION: u32 = 5;
/// Largest frame written or accepted when reading: room for one inference
/// answer as large as the host's largest reply
/// ([`shm_protocol::inference::MAX_REPLY`]) with its fields.
pub const MAX_FRAME: u32 = (shm_protocol::inference::MAX_REPLY + (1 << 20)) as u32;
/// The most answer bytes one [`Entry::Inference`] frame carries: a tick's
/// answers that hold more are journaled as several entries of that tick
/// (one answer alone if it is larger).
pub const ANSWER_BYTES_PER_FRAME: usize = 8 << 20;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// First entry of every run.
    Header {
        /// BLAKE3 of the manifest file.
        manifest_hash: [u8; 32],
        /// Run seed.
        seed: u64,
        /// The manifest text.
        manifest: String,
        /// Sandbox layers the run's children ran without, one line each
        /// (empty: every layer).
        sandbox_off: Vec<String>,
        /// The inference device the run asked for (`--device`: `cpu`,
        /// `auto`, `cuda`, `cuda:N`); where each answer was computed is
        /// in its [`Answer::source`].
        device: String,
    },
    /// An external input applied at `tick`, with its outcome.
    Input {
        /// Tick of application.
        tick: u64,
        /// The input.
        input: Input,
        /// What it did.
        outcome: InputOutcome,
    },
    /// A decision of `tick` that the inputs alone do not determine
    /// (watchdog trip, quarantine, give-up), journaled before the tick's
    /// other entries so that replays take it again.
    Decision {
        /// Tick.
        tick: u64,
        /// The decision.
        decision: Decision,
    },
    /// A deterministic event of `tick`.
    Event {
        /// Tick.
        tick: u64,
        /// Event.
        event: Event,
    },
    /// Inference answers delivered after `tick`, in delivery order.
    Inference {
        /// Tick.
        tick: u64,
        /// The answers.
        answers: Vec<Answer>,
    },
    /// End of a tick.
    Tick {
        /// Tick.
        tick: u64,
        /// Chained tick hash.
        hash: [u8; 32],
        /// Steps run.
        steps: u64,
        /// Calls into agents.
        calls: u64,
        /// Fuel.
        fuel: u64,
        /// Messages delivered.
        messages: u64,
        /// Messages dropped.
        dropped: u64,
        /// Faults.
        faults: u64,
    },
    /// A checkpoint was written after `tick`.
    Checkpoint {
        /// Tick.
        tick: u64,
        /// Snapshot file name (relative to the run directory).
        file: String,
        /// Global state hash.
        state_hash: [u8; 32],
    },
    /// The run ended cleanly after `tick`.
    End {
        /// Last tick.
        tick: u64,
        /// Final hash.
        hash: [u8; 32],
    },
}

/// One inference answer delivered after a tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The requesting agent.
    pub agent: u64,
    /// Its request id.
    pub request_id: u64,
    /// The model the request named.
    pub model: String,
    /// BLAKE3 of the answer as delivered (the postcard encoding of
    /// [`crate::sim::InferAnswer`]); folded into the tick hash.
    pub hash: [u8; 32],
    /// Who computed it.
    pub source: AnswerSource,
}

/// Who computed an inference answer (the device class), and — when a
/// verifier on another class could not reproduce its bits — the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnswerSource {
    /// The supervisor: the built-in `echo` model, an error the run's state
    /// decides (an unknown or unloaded model, a malformed input), or one
    /// given for a host that kept failing.
    Builtin,
    /// ONNX Runtime's CPU kernels: the hash alone (a CPU verifier
    /// recomputes the same bits).
    Cpu,
    /// Another device, e.g. `cuda:0`, with the answer delivered (an ABI
    /// tensor, or the error text), which the journal's frame checksum and
    /// [`Answer::hash`] cover.
    Device {
        /// The device, as the inference host names it.
        device: String,
        /// The answer.
        answer: Result<serde_bytes::ByteBuf, String>,
    },
}

/// The device name of answers the supervisor computes itself.
pub const BUILTIN_DEVICE: &str = "builtin";
/// The device name of answers of ONNX Runtime's CPU kernels.
pub const CPU_DEVICE: &str = "cpu";

impl AnswerSource {
    /// The source of `answer`, computed on `device` (`builtin`, `cpu`, or
    /// another device, whose answers are kept whole).
    pub fn of(device: &str, answer: &Result<Vec<u8>, String>) -> Self {
        match device {
            BUILTIN_DEVICE => AnswerSource::Builtin,
            CPU_DEVICE => AnswerSource::Cpu,
            other => AnswerSource::Device {
                device: other.to_owned(),
                answer: answer.clone().map(serde_bytes::ByteBuf::from),
            },
        }
    }

    /// The device's name (`builtin`, `cpu`, `cuda:0`, …).
    pub fn device(&self) -> &str {
        match self {
            AnswerSource::Builtin => BUILTIN_DEVICE,
            AnswerSource::Cpu => CPU_DEVICE,
            AnswerSource::Device { device, .. } => device,
        }
    }

    /// The recorded answer, if the journal keeps it.
    pub fn answer(&self) -> Option<Result<Vec<u8>, String>> {
        match self {
            AnswerSource::Device { answer, .. } => {
                Some(answer.clone().map(serde_bytes::ByteBuf::into_vec))
            }
            _ => None,
        }
    }
}

impl Answer {
    /// Roughly how many bytes the answer takes in a frame.
    pub fn encoded_size(&self) -> usize {
        let kept = match &self.source {
            AnswerSource::Device { device, answer } => {
                device.len() + answer.as_ref().map_or_else(String::len, |b| b.len())
            }
            _ => 0,
        };
        64 + self.model.len() + kept
    }
}

/// A tick's answers as [`Entry::Inference`] entries of at most
/// [`ANSWER_BYTES_PER_FRAME`] answer bytes each (one entry when they fit,
/// none for no answers).
pub fn inference_entries(tick: u64, answers: Vec<Answer>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut cur: Vec<Answer> = Vec::new();
    let mut size = 0;
    for a in answers {
        let n = a.encoded_size();
        if !cur.is_empty() && size + n > ANSWER_BYTES_PER_FRAME {
            out.push(Entry::Inference {
                tick,
                answers: std::mem::take(&mut cur),
            });
            size = 0;
        }
        size += n;
        cur.push(a);
    }
    if !cur.is_empty() {
        out.push(Entry::Inference { tick, answers: cur });
    }
    out
}

impl Entry {
    /// The tick the entry belongs to (0 for the header).
    pub fn tick(&self) -> u64 {
        match self {
            Entry::Header { .. } => 0,
            Entry::Input { tick, .. }
            | Entry::Decision { tick, .. }
            | Entry::Event { tick, .. }
            | Entry::Inference { tick, .. }
            | Entry::Tick { tick, .. }
            | Entry::Checkpoint { tick, .. }
            | Entry::End { tick, .. } => *tick,
        }
    }

    /// Every kind [`Entry::kind`] names.
    pub const KINDS: [&'static str; 8] = [
        "header",
        "input",
        "decision",
        "event",
        "inference",
        "tick",
        "checkpoint",
        "end",
    ];

    /// The entry's kind, one of [`Entry::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Header { .. } => "header",
            Entry::Input { .. } => "input",
            Entry::Decision { .. } => "decision",
            Entry::Event { .. } => "event",
            Entry::Inference { .. } => "inference",
            Entry::Tick { .. } => "tick",
            Entry::Checkpoint { .. } => "checkpoint",
            Entry::End { .. } => "end",
        }
    }
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// I/O.
    #[error("journal {path}: {op} failed")]
    Io {
        /// File.
        path: String,
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a journal.
    #[error("journal {path}: not a Lockstep journal (bad magic)")]
    BadMagic {
        /// File.
        path: String,
    },
    /// Unknown version.
    #[error("journal {path}: format version {found} is not supported (this build reads {VERSION})")]
    Version {
        /// File.
        path: String,
        /// Found.
        found: u32,
    },
    /// An entry too large for a frame ([`MAX_FRAME`]): refused rather than
    /// written into a journal that could not be read back.
    #[error("journal {path}: an entry of {len} bytes exceeds the frame limit of {MAX_FRAME}")]
    TooLarge {
        /// File.
        path: String,
        /// Encoded size of the entry.
        len: usize,
    },
    /// A bad frame before the end of the file.
    #[error("journal {path}: corrupt frame at byte offset {offset}: {reason}")]
    Corrupt {
        /// File.
        path: String,
        /// Offset of the frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn checksum(payload: &[u8]) -> u64 {
    let h = blake3::hash(payload);
    let mut w = [0u8; 8];
    w.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

/// Appends entries.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    len: u64,
}

impl JournalWriter {
    /// Creates a new journal (the file must not exist).
    pub fn create(path: &Path) -> Result<Self, JournalError> {
        let p = path.display().to_string();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| JournalError::Io {
                path: p.clone(),
                op: "create",
                source,
            })?;
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&VERSION.to_le_bytes());
        file.write_all(&head).map_err(|source| JournalError::Io {
            path: p,
            op: "write",
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            buf: Vec::new(),
            len: head.len() as u64,
        })
    }

    /// Opens an existing journal for appending after its last valid frame
    /// (a torn final frame is cut off).
    pub fn append(path: &Path) -> Result<Self, JournalError> {
        let read = read_journal(path)?;
        let p = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| JournalError::Io {
                path: p.clone(),
                op: "open",
                source,
            })?;
        file.set_len(read.valid_len)
            .map_err(|source| JournalError::Io {
                path: p.clone(),
                op: "truncate",
                source,
            })?;
        let mut w = Self {
            file,
            path: path.to_owned(),
            buf: Vec::new(),
            len: read.valid_len,
        };
        use std::io::Seek;
        w.file
            .seek(std::io::SeekFrom::Start(read.valid_len))
            .map_err(|source| JournalError::Io {
                path: p,
                op: "seek",
                source,
            })?;
        Ok(w)
    }

    /// Appends one entry.
    pub fn write(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 12]);
        let _ = shm_protocol::codec::encode_into(entry, &mut self.buf);
        let len = self.buf.len() - 12;
        if len > MAX_FRAME as usize {
            return Err(JournalError::TooLarge {
                path: self.path.display().to_string(),
                len,
            });
        }
        let n = len as u32;
        let sum = checksum(&self.buf[12..]);
        self.buf[..4].copy_from_slice(&n.to_le_bytes());
        self.buf[4..12].copy_from_slice(&sum.to_le_bytes());
        self.file
            .write_all(&self.buf)
            .map_err(|source| JournalError::Io {
                path: self.path.display().to_string(),
                op: "write",
                source,
            })?;
        self.len += self.buf.len() as u64;
        Ok(())
    }

    /// Flushes to stable storage.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(|source| JournalError::Io {
            path: self.path.display().to_string(),
            op: "fdatasync",
            source,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the journal to hold its header entry followed by
    /// everything from the checkpoint of `tick` on (what retention keeps),
    /// atomically (a new file is written, synced and renamed over the old
    /// one), and goes on appending to it.
    pub fn compact_from_checkpoint(&mut self, tick: u64) -> Result<(), JournalError> {
        let p = self.path.display().to_string();
        let io = |op: &'static str| {
            let p = p.clone();
            move |source| JournalError::Io {
                path: p,
                op,
                source,
            }
        };
        self.sync()?;
        let bytes = std::fs::read(&self.path).map_err(io("read"))?;
        let read = parse_journal(&bytes, &p)?;
        let Some(header_end) = read.offsets.first().copied() else {
            return Ok(());
        };
        let at = read
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Checkpoint { tick: t, .. } if *t == tick));
        let Some(at) = at.filter(|&i| i > 0) else {
            return Ok(());
        };
        let start = read.offsets[at - 1];
        if start <= header_end {
            return Ok(());
        }
        let end = read.valid_len as usize;
        let tmp = self.path.with_extension("lsj.tmp");
        {
            let mut f = File::create(&tmp).map_err(io("create"))?;
            f.write_all(&bytes[..header_end as usize])
                .and_then(|()| f.write_all(&bytes[start as usize..end]))
                .map_err(io("write"))?;
            f.sync_all().map_err(io("fsync"))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io("rename"))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io("open"))?;
        self.len = header_end + (end as u64 - start);
        Ok(())
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.len <= 12
    }
}

/// A journal read back.
#[derive(Debug, Clone)]
pub struct JournalRead {
    /// Entries, in order.
    pub entries: Vec<Entry>,
    /// Byte offset just after each entry's frame.
    pub offsets: Vec<u64>,
    /// Bytes of valid frames (a torn tail beyond it was ignored).
    pub valid_len: u64,
    /// Whether a torn final frame was ignored.
    pub torn_tail: bool,
}

/// Reads a whole journal.
pub fn read_journal(path: &Path) -> Result<JournalRead, JournalError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| JournalError::Io {
        path: p.clone(),
        op: "read",
        source,
    })?;
    parse_journal(&bytes, &p)
}

/// Parses journal bytes (`path` is for messages).
pub fn parse_journal(bytes: &[u8], path: &str) -> Result<JournalRead, JournalError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(JournalError::BadMagic {
            path: path.to_owned(),
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(JournalError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    parse_frames(&bytes[12..], 12, path)
}

/// Parses the frames in `bytes`, which start at a frame boundary found at
/// byte `base` of the journal (the offsets returned, and those of errors,
/// are the journal's).  A frame cut short at the end of `bytes`, or the
/// last one with a bad checksum, is a torn tail: everything before it is
/// returned.
pub fn parse_frames(bytes: &[u8], base: u64, path: &str) -> Result<JournalRead, JournalError> {
    let mut entries = Vec::new();
    let mut offsets = Vec::new();
    let mut off = 0usize;
    let at = |off: usize| base + off as u64;
    let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset: at(offset),
        reason,
    };
    let torn = |entries, offsets, off| JournalRead {
        entries,
        offsets,
        valid_len: at(off),
        torn_tail: true,
    };
    while off < bytes.len() {
        let rest = &bytes[off..];
        if rest.len() < 12 {
            return Ok(torn(entries, offsets, off));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let sum = u64::from_le_bytes([
            rest[4], rest[5], rest[6], rest[7], rest[8], rest[9], rest[10], rest[11],
        ]);
        if len > MAX_FRAME {
            return Err(corrupt(
                off,
                format!("frame length {len} exceeds {MAX_FRAME}"),
            ));
        }
        let end = 12 + len as usize;
        if rest.len() < end {
            // Cut short by a crash: the final frame is torn.
            return Ok(torn(entries, offsets, off));
        }
        let payload = &rest[12..end];
        if checksum(payload) != sum {
            if off + end == bytes.len() {
                // A torn write of the very last frame.
                return Ok(torn(entries, offsets, off));
            }
            return Err(corrupt(off, "checksum mismatch".into()));
        }
        let entry: Entry =
            shm_protocol::codec::decode(payload).map_err(|e| corrupt(off, e.to_string()))?;
        entries.push(entry);
        off += end;
        offsets.push(at(off));
    }
    Ok(JournalRead {
        entries,
        offsets,
        valid_len: at(off),
        torn_tail: false,
    })
}

/// What one [`JournalFollower::poll`] read.
#[derive(Debug, Default)]
pub struct Followed {
    /// The whole frames read, in order.
    pub entries: Vec<Entry>,
    /// The journal was replaced (retention rewrote it, or a new run
    /// started): `entries` start again from its beginning.
    pub restarted: bool,
    /// Frames longer than the poll's byte budget, skipped unread.
    pub skipped: u64,
    /// Whether the journal holds more than was read.
    pub more: bool,
}

/// Follows a journal that a run may still be appending to, in bounded
/// steps, for viewers: each [`poll`](Self::poll) opens the file read-only,
/// reads at most a given number of bytes after the last whole frame it
/// returned, and closes it again.  A frame not yet whole — being written,
/// or torn by a crash — is left for the next poll.  A journal replaced
/// under the same name (retention rewrites it by renaming a new file over
/// it) is read again from its start.
#[derive(Debug)]
pub struct JournalFollower {
    path: PathBuf,
    /// Journal offset of `pending[0]` (a frame boundary).
    offset: u64,
    /// Bytes read after `offset` that make no whole frame yet.
    pending: Vec<u8>,
    /// (device, inode) of the file being followed.
    file: Option<(u64, u64)>,
}

impl JournalFollower {
    /// Follows `path` from its start (nothing read yet).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            pending: Vec::new(),
            file: None,
        }
    }

    /// Journal offset up to which whole frames were returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads what was appended since the last poll, at most `budget` bytes
    /// of it (frames longer than that are skipped).  A journal that does
    /// not exist yet, or holds less than its header, reads as nothing.
    pub fn poll(&mut self, budget: usize) -> Result<Followed, JournalError> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let p = self.path.display().to_string();
        let io = |op: &'static str| {
            let p = p.clone();
            move |source| JournalError::Io {
                path: p,
                op,
                source,
            }
        };
        let mut out = Followed::default();
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("open")(e)),
        };
        let md = file.metadata().map_err(io("fstat"))?;
        let id = (md.dev(), md.ino());
        if self.file.is_some_and(|f| f != id) || md.len() < self.offset {
            out.restarted = self.offset > 0;
            self.offset = 0;
            self.pending.clear();
        } else if md.len() < self.offset + self.pending.len() as u64 {
            // A torn tail cut off (`lockstep resume`): read it again.
            self.pending.clear();
        }
        self.file = Some(id);
        let len = md.len();
        if self.offset == 0 {
            let mut head = [0u8; 12];
            if len < 12 {
                return Ok(out);
            }
            file.read_exact(&mut head).map_err(io("read"))?;
            parse_journal(&head, &p)?;
            self.offset = 12;
        }
        let mut left = budget as u64;
        loop {
            // A frame longer than the budget is skipped, once it is whole.
            if let Some(h) = self.pending.get(..4) {
                let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let end = self.offset + 12 + u64::from(n);
                if n as usize > budget && n <= MAX_FRAME {
                    if len < end {
                        break;
                    }
                    self.offset = end;
                    self.pending.clear();
                    out.skipped += 1;
                    continue;
                }
            }
            let read_to = self.offset + self.pending.len() as u64;
            let want = len.saturating_sub(read_to).min(left);
            if want == 0 {
                break;
            }
            file.seek(SeekFrom::Start(read_to)).map_err(io("seek"))?;
            let before = self.pending.len();
            (&mut file)
                .take(want)
                .read_to_end(&mut self.pending)
                .map_err(io("read"))?;
            let got = (self.pending.len() - before) as u64;
            if got == 0 {
                break;
            }
            left -= got;
            let read = parse_frames(&self.pending, self.offset, &p)?;
            self.pending
                .drain(..(read.valid_len - self.offset) as usize);
            self.offset = read.valid_len;
            out.entries.extend(read.entries);
        }
        out.more = self.offset + (self.pending.len() as u64) < len;
        Ok(out)
    }
}

/// Fuzz entry point: parses `bytes` as a journal, then as the payload of
/// one well-formed frame after a valid header (so that the entry decoder
/// past the checksum is reached).  Never panics.
#[doc(hidden)]
pub fn fuzz_parse(bytes: &[u8]) {
    let _ = parse_journal(bytes, "fuzz");
    let mut j = Vec::with_capacity(24 + bytes.len());
    j.extend_from_slice(MAGIC);
    j.extend_from_slice(&VERSION.to_le_bytes());
    j.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    j.extend_from_slice(&checksum(bytes).to_le_bytes());
    j.extend_from_slice(bytes);
    let _ = parse_journal(&j, "fuzz");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Header {
                manifest_hash: [1; 32],
                seed: 7,
                manifest: "x".into(),
                sandbox_off: vec!["seccomp (manifest [sandbox] disable)".into()],
                device: "cuda:1".into(),
            },
            Entry::Inference {
                tick: 1,
                answers: vec![Answer {
                    agent: 4,
                    request_id: 1,
                    model: "mlp".into(),
                    hash: [5; 32],
                    source: AnswerSource::of("cuda:0", &Ok(vec![1, 0, 0, 0, 0, 0, 0, 0])),
                }],
            },
            Entry::Tick {
                tick: 1,
                hash: [2; 32],
                steps: 3,
                calls: 3,
                fuel: 10,
                messages: 0,
                dropped: 0,
                faults: 0,
            },
            Entry::End {
                tick: 1,
                hash: [2; 32],
            },
        ]
    }

    fn write(dir: &Path) -> PathBuf {
        let p = dir.join("j");
        let _ = std::fs::remove_file(&p);
        let mut w = JournalWriter::create(&p).unwrap();
        for e in sample() {
            w.write(&e).unwrap();
        }
        w.sync().unwrap();
        p
    }

    /// A fresh scratch directory, removed when the value is dropped.
    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lockstep-journal-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn round_trip() {
        let d = tmp("rt");
        let r = read_journal(&write(d.path())).unwrap();
        assert_eq!(r.entries, sample());
        assert!(!r.torn_tail);
    }

    #[test]
    fn answer_sources_round_trip_and_cpu_answers_keep_only_their_hash() {
        let answer = |source| Answer {
            agent: 3,
            request_id: 1,
            model: "mlp".into(),
            hash: [4; 32],
            source,
        };
        let tensor = Ok(vec![1, 0, 0, 0, 0, 0, 0, 0]);
        let cpu = answer(AnswerSource::of("cpu", &tensor));
        let builtin = answer(AnswerSource::of("builtin", &Err("unknown model".into())));
        let cuda = answer(AnswerSource::of("cuda:0", &tensor));
        let cuda_err = answer(AnswerSource::of("cuda:1", &Err("out of memory".into())));
        assert_eq!(cpu.source, AnswerSource::Cpu);
        assert_eq!(builtin.source, AnswerSource::Builtin);
        assert_eq!(cpu.source.answer(), None);
        assert_eq!(builtin.source.device(), "builtin");
        assert_eq!(cuda.source.device(), "cuda:0");
        assert_eq!(cuda.source.answer(), Some(tensor.clone()));
        assert_eq!(cuda_err.source.answer(), Some(Err("out of memory".into())));
        for a in [&cpu, &builtin, &cuda, &cuda_err] {
            let b = shm_protocol::codec::encode(a).unwrap();
            assert_eq!(&shm_protocol::codec::decode::<Answer>(&b).unwrap(), a);
        }
        // A CPU answer costs one byte more than (agent, request, model, hash).
        let old = (3u64, 1u64, "mlp".to_owned(), [4u8; 32]);
        assert_eq!(
            shm_protocol::codec::encode(&cpu).unwrap().len(),
            shm_protocol::codec::encode(&old).unwrap().len() + 1
        );
    }

    #[test]
    fn a_ticks_large_answers_are_split_over_frames() {
        let big = |agent, len| Answer {
            agent,
            request_id: 1,
            model: "m".into(),
            hash: [0; 32],
            source: AnswerSource::of("cuda:0", &Ok(vec![0; len])),
        };
        let small = |agent| Answer {
            agent,
            request_id: 1,
            model: "m".into(),
            hash: [0; 32],
            source: AnswerSource::Cpu,
        };
        assert!(inference_entries(3, Vec::new()).is_empty());
        let one = inference_entries(3, vec![small(1), small(2)]);
        assert_eq!(one.len(), 1);
        let mb = 1 << 20;
        let answers = vec![big(1, 5 * mb), big(2, 5 * mb), small(3), big(4, 20 * mb)];
        let entries = inference_entries(3, answers.clone());
        let split: Vec<Vec<u64>> = entries
            .iter()
            .map(|e| match e {
                Entry::Inference { tick: 3, answers } => answers.iter().map(|a| a.agent).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(split, vec![vec![1], vec![2, 3], vec![4]]);
        // Every frame is written and read back, in order.
        let d = tmp("split");
        let p = d.path().join("j");
        let mut w = JournalWriter::create(&p).unwrap();
        for e in &entries {
            w.write(e).unwrap();
        }
        assert_eq!(read_journal(&p).unwrap().entries, entries);
        // An entry beyond the frame limit is refused, not written.
        let huge = Entry::Inference {
            tick: 4,
            answers: vec![big(5, MAX_FRAME as usize)],
        };
        let before = w.len();
        assert!(matches!(w.write(&huge), Err(JournalError::TooLarge { .. })));
        assert_eq!(w.len(), before);
        assert_eq!(read_journal(&p).unwrap().entries, entries);
    }

    #[test]
    fn journals_of_earlier_formats_are_refused_naming_both_versions() {
        let d = tmp("old");
        let p = write(d.path());
        let mut b = std::fs::read(&p).unwrap();
        b[8..12].copy_from_slice(&4u32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = read_journal(&p).unwrap_err();
        assert!(matches!(e, JournalError::Version { found: 4, .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("format version 4 is not supported (this build reads 5)"),
            "{e}"
        );
    }

    #[test]
    fn torn_tail_is_ignored_and_cut_on_append() {
        let d = tmp("torn");
        let p = write(d.path());
        let full = std::fs::read(&p).unwrap();
        for cut in 1..20 {
            std::fs::write(&p, &full[..full.len() - cut]).unwrap();
            let r = read_journal(&p).unwrap();
            assert_eq!(r.entries, sample()[..3].to_vec(), "cut {cut}");
            assert!(r.torn_tail);
        }
        let mut w = JournalWriter::append(&p).unwrap();
        w.write(&sample()[3]).unwrap();
        assert_eq!(read_journal(&p).unwrap().entries, sample());
    }

    #[test]
    fn corruption_in_the_middle_is_reported_with_offset() {
        let d = tmp("corrupt");
        let p = write(d.path());
        let mut b = std::fs::read(&p).unwrap();
        b[12 + 12 + 3] ^= 0xFF; // inside the first frame's payload
        std::fs::write(&p, &b).unwrap();
        let e = read_journal(&p).unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { offset: 12, .. }), "{e}");
        std::fs::write(&p, b"NOTAJOURNAL!").unwrap();
        assert!(matches!(
            read_journal(&p),
            Err(JournalError::BadMagic { .. })
        ));
    }

    #[test]
    fn follower_reads_whole_frames_as_they_come() {
        let dir = tmp("follow");
        let d = dir.path();
        let p = d.join("j");
        let mut f = JournalFollower::new(&p);
        // No journal yet, then only part of its header.
        assert!(f.poll(1 << 20).unwrap().entries.is_empty());
        let full = std::fs::read(write(d)).unwrap();
        std::fs::write(&p, &full[..7]).unwrap();
        assert!(f.poll(1 << 20).unwrap().entries.is_empty());
        // Byte by byte: each frame once it is whole, never a torn one.
        let mut seen = Vec::new();
        for end in 8..=full.len() {
            std::fs::write(&p, &full[..end]).unwrap();
            let got = f.poll(1 << 20).unwrap();
            assert!(!got.restarted);
            seen.extend(got.entries);
        }
        assert_eq!(seen, sample());
        assert_eq!(f.offset(), full.len() as u64);
        // A budget smaller than the file: several polls.
        let mut g = JournalFollower::new(&p);
        let mut seen = Vec::new();
        for _ in 0..full.len() {
            let got = g.poll(100).unwrap();
            seen.extend(got.entries);
            if !got.more {
                break;
            }
        }
        assert_eq!(seen, sample());
        // A frame longer than the budget is skipped.
        let mut h = JournalFollower::new(&p);
        let got = h.poll(8).unwrap();
        assert!(got.skipped >= 1, "{got:?}");
        // A new file renamed over it is read from its start.
        let q = d.join("j2");
        std::fs::write(&q, &full).unwrap();
        std::fs::rename(&q, &p).unwrap();
        let got = f.poll(1 << 20).unwrap();
        assert!(got.restarted);
        assert_eq!(got.entries, sample());
        // Corruption before the end is an error.
        let mut bad = full.clone();
        bad[12 + 12 + 3] ^= 0xFF;
        std::fs::write(&q, &bad).unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert!(matches!(
            f.poll(1 << 20),
            Err(JournalError::Corrupt { offset: 12, .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// A damaged journal file (a byte flipped, maybe cut there) is an
        /// error or a shorter journal, never a panic.
        #[test]
        fn random_bytes_never_panic(pos in 0usize..1 << 20, flip in 1u8.., cut: bool) {
            let good = GOOD.get_or_init(|| {
                let d = tmp("fuzz");
                std::fs::read(write(d.path())).unwrap()
            });
            let mut b = good.clone();
            let pos = 12 + pos % (b.len() - 12);
            b[pos] ^= flip;
            if cut {
                b.truncate(pos);
            }
            let _ = parse_journal(&b, "fuzz");
        }
    }

    static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]

        /// The fuzz target's function on 100,000 damaged entry encodings
        /// (past the checksum, so the entry decoder sees them).
        #[test]
        fn damaged_entries_never_panic(
            which in 0usize..64,
            pos in 0usize..1 << 16,
            flip in 1u8..,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            how in 0u8..3,
        ) {
            let entries = sample();
            let mut b = shm_protocol::codec::encode(&entries[which % entries.len()]).unwrap();
            let pos = pos % b.len();
            b[pos] ^= flip;
            match how {
                0 => b.truncate(pos),
                1 => b.extend_from_slice(&tail),
                _ => {}
            }
            fuzz_parse(&b);
        }
    }
}
