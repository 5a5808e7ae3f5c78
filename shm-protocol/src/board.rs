//! The state board: one writer, any number of read-only readers.
//!
//! The supervisor publishes its live state (a postcard blob chosen by the
//! caller) into a file in the run directory; a UI maps that file with
//! `PROT_READ` and can never modify it — the kernel enforces that, not
//! politeness.  Readers use only loads and fences (no CAS, no stores, nothing
//! that faults on a read-only page).
//!
//! # Layout
//!
//! All fields are little-endian u64 words.
//!
//! ```text
//! word 0   magic "LCKBOARD"  (stored last, Release)
//! word 1   layout version (low 32 bits) | header words (high 32 bits)
//! word 2   slot capacity in bytes (multiple of 8)
//! word 3   total file size
//! word 4   writer pid
//! word 5   writer start time (ns since the epoch, informational)
//! word 6   latest: number of completed publications (slot = latest % 2)
//! word 8   slot 0 sequence  (odd while being written)
//! word 9   slot 0 length in bytes
//! word 16  slot 1 sequence
//! word 17  slot 1 length
//! word 32  slot 0 data, then slot 1 data
//! ```
//!
//! # Memory ordering
//!
//! Classic seqlock, double-buffered.  The writer alternates slots: it makes
//! the slot's sequence odd, issues a `Release` fence, writes length and data
//! with relaxed stores, stores the even sequence with `Release`, then bumps
//! `latest` with `Release`.  A reader loads `latest`, the slot's sequence
//! (retrying if odd), copies length and data with plain loads, issues an
//! `Acquire` fence and re-loads the sequence: if it changed, the copy may be
//! torn (the writer lapped the reader) and is retried.  Double buffering means
//! a reader only retries if the writer completes two publications during one
//! copy.  Modelled with loom (atomic relaxed loads stand in for the plain
//! loads there).
//!
//! # Peer crash
//!
//! A writer that dies mid-publication leaves an odd sequence in one slot; the
//! other slot still holds the previous complete state, and `latest` still
//! points at it.  Every length is checked against the slot capacity, so a
//! corrupt file yields an error, never an out-of-bounds read.
//!
//! # Safety
//!
//! The reader's mapping is read-only; it reads words with volatile loads
//! because the writer changes them concurrently (the sequence check discards
//! any torn result).  The writer's mapping is read-write and it alone stores.

use crate::sync::atomic::{AtomicU64, Ordering, fence};

/// Magic number of a state board file.
pub const BOARD_MAGIC: u64 = u64::from_le_bytes(*b"LCKBOARD");
/// Layout version of the board.
pub const BOARD_VERSION: u32 = 1;
const HEADER_WORDS: usize = 32;
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_CAPACITY: usize = 2;
const W_TOTAL: usize = 3;
const W_PID: usize = 4;
const W_START: usize = 5;
const W_LATEST: usize = 6;
const W_SEQ: [usize; 2] = [8, 16];
const W_LEN: [usize; 2] = [9, 17];
/// How many inconsistent reads a reader tolerates before reporting
/// [`BoardError::Busy`].
pub const READ_RETRIES: u32 = 10_000;

/// Errors of the state board.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// A system call failed.
    #[error("{op} failed for state board {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The board file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a board file, or not initialised yet.
    #[error("state board {path} has wrong magic {found:#018x}")]
    WrongMagic {
        /// The board file.
        path: String,
        /// Value found.
        found: u64,
    },
    /// Unknown layout version.
    #[error("state board {path} has layout version {found}, this build reads {BOARD_VERSION}")]
    UnsupportedVersion {
        /// The board file.
        path: String,
        /// Value found.
        found: u32,
    },
    /// The file is shorter than its header says, or a field is out of range.
    #[error("state board {path} is corrupt: {reason}")]
    Corrupt {
        /// The board file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing has been published yet.
    #[error("state board {path} has no state published yet")]
    Empty {
        /// The board file.
        path: String,
    },
    /// The writer kept lapping the reader.
    #[error("state board {path}: no consistent read after {READ_RETRIES} attempts")]
    Busy {
        /// The board file.
        path: String,
    },
    /// The state is larger than a slot.
    #[error("state of {len} bytes exceeds the board's slot capacity of {capacity} bytes")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Slot capacity.
        capacity: usize,
    },
}

#[cfg(not(loom))]
mod words {
    use super::AtomicU64;
    use std::ptr::NonNull;
    use std::sync::Arc;

    /// Word view of a board mapping.
    #[derive(Clone)]
    pub(super) struct Words {
        base: NonNull<u64>,
        len: usize,
        _map: Arc<dyn Send + Sync>,
    }

    impl std::fmt::Debug for Words {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Words")
                .field("len", &self.len)
                .finish_non_exhaustive()
        }
    }

    // SAFETY: plain shared memory; accessed only through volatile loads
    // (readers) or atomics (the single writer).
    unsafe impl Send for Words {}
    // SAFETY: as above.
    unsafe impl Sync for Words {}

    impl Words {
        /// # Safety
        ///
        /// `base` must be 8-aligned and point to `len` words kept mapped by
        /// `map`.
        pub(super) unsafe fn new(
            base: NonNull<u64>,
            len: usize,
            map: Arc<dyn Send + Sync>,
        ) -> Self {
            Self {
                base,
                len,
                _map: map,
            }
        }

        pub(super) fn len(&self) -> usize {
            self.len
        }

        /// A plain (volatile) load: valid on a read-only mapping.  Out of
        /// range reads return 0 (callers validate indices first).
        #[inline]
        pub(super) fn load(&self, i: usize) -> u64 {
            if i >= self.len {
                return 0;
            }
            // SAFETY: `i < len`, so the pointer stays inside the mapping.
            let p = unsafe { self.base.as_ptr().add(i) };
            // SAFETY: aligned, in bounds and mapped (readable) while `_map`
            // lives; volatile because the writer changes it concurrently.
            u64::from_le(unsafe { p.read_volatile() })
        }

        /// Atomic view of a word, for the writer (whose mapping is writable).
        ///
        /// # Safety
        ///
        /// The mapping must be writable and `i < len`.
        #[inline]
        pub(super) unsafe fn atomic(&self, i: usize) -> &AtomicU64 {
            debug_assert!(i < self.len);
            // SAFETY: the caller guarantees `i < len`.
            let p = unsafe { self.base.as_ptr().add(i) };
            // SAFETY: the caller guarantees a writable mapping; the pointer is
            // 8-aligned and only accessed atomically by the single writer.
            unsafe { AtomicU64::from_ptr(p) }
        }
    }
}

#[cfg(loom)]
mod words {
    use super::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Debug, Clone)]
    pub(super) struct Words {
        words: Arc<Vec<AtomicU64>>,
    }

    impl Words {
        pub(super) fn model(len: usize) -> Self {
            Self {
                words: Arc::new((0..len).map(|_| AtomicU64::new(0)).collect()),
            }
        }
        pub(super) fn len(&self) -> usize {
            self.words.len()
        }
        pub(super) fn load(&self, i: usize) -> u64 {
            self.words.get(i).map_or(0, |w| w.load(Ordering::Relaxed))
        }
        pub(super) unsafe fn atomic(&self, i: usize) -> &AtomicU64 {
            &self.words[i]
        }
    }
}

use words::Words;

fn total_words(capacity: usize) -> usize {
    HEADER_WORDS + 2 * capacity.div_ceil(8)
}

/// The single writer of a board.
#[derive(Debug)]
pub struct BoardWriter {
    words: Words,
    cap_words: usize,
    published: u64,
    #[cfg(not(loom))]
    path: std::path::PathBuf,
}

impl BoardWriter {
    #[inline]
    fn w(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the writer's mapping is read-write and every index used
        // below is `< total_words(capacity) == words.len()`.
        unsafe { self.words.atomic(i) }
    }

    fn init(&self, capacity: usize) {
        self.w(W_VERSION).store(
            u64::from(BOARD_VERSION) | ((HEADER_WORDS as u64) << 32),
            Ordering::Relaxed,
        );
        self.w(W_CAPACITY)
            .store((self.cap_words * 8) as u64, Ordering::Relaxed);
        self.w(W_TOTAL)
            .store((self.words.len() * 8) as u64, Ordering::Relaxed);
        self.w(W_PID)
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        let _ = capacity;
        #[cfg(not(loom))]
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            self.w(W_START).store(now, Ordering::Relaxed);
        }
        self.w(W_MAGIC).store(BOARD_MAGIC, Ordering::Release);
    }

    /// Creates (replacing any old file) a board at `path` whose slots hold up
    /// to `capacity` bytes.
    #[cfg(not(loom))]
    pub fn create(path: &std::path::Path, capacity: usize) -> Result<Self, BoardError> {
        let p = path.display().to_string();
        let io = |op| {
            let p = p.clone();
            move |source| BoardError::Io {
                op,
                path: p,
                source,
            }
        };
        // Unlink first: readers of an old board keep their (old) inode.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove old board")(e)),
        }
        let cap_words = capacity.div_ceil(8).max(1);
        let total = total_words(cap_words * 8);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("create"))?;
        file.set_len((total * 8) as u64).map_err(io("ftruncate"))?;
        let map = memmap2::MmapRaw::map_raw(&file).map_err(io("mmap"))?;
        let base = std::ptr::NonNull::new(map.as_mut_ptr().cast::<u64>())
            .ok_or_else(|| io("mmap")(std::io::Error::other("null mapping")))?;
        // SAFETY: page-aligned read-write mapping of `total` words, kept
        // alive by the Arc.
        let words = unsafe { Words::new(base, total, std::sync::Arc::new(map)) };
        let w = Self {
            words,
            cap_words,
            published: 0,
            path: path.to_owned(),
        };
        w.init(capacity);
        Ok(w)
    }

    /// The board file.
    #[cfg(not(loom))]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Slot capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap_words * 8
    }

    /// Publishes `state` (replacing the previous one).
    pub fn publish(&mut self, state: &[u8]) -> Result<(), BoardError> {
        if state.len() > self.capacity() {
            return Err(BoardError::TooLarge {
                len: state.len(),
                capacity: self.capacity(),
            });
        }
        let n = self.published + 1;
        let slot = (n % 2) as usize;
        let seq = self.w(W_SEQ[slot]).load(Ordering::Relaxed);
        self.w(W_SEQ[slot])
            .store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.w(W_LEN[slot])
            .store(state.len() as u64, Ordering::Relaxed);
        let base = HEADER_WORDS + slot * self.cap_words;
        for (i, chunk) in state.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.w(base + i)
                .store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        self.w(W_SEQ[slot])
            .store((seq | 1).wrapping_add(1), Ordering::Release);
        self.w(W_LATEST).store(n, Ordering::Release);
        self.published = n;
        Ok(())
    }

    /// Number of publications so far.
    pub fn published(&self) -> u64 {
        self.published
    }
}

/// A read-only view of a board.
#[derive(Debug, Clone)]
pub struct BoardReader {
    words: Words,
    cap_words: usize,
    path: String,
}

/// One consistent read of the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardSnapshot {
    /// Publication number (1 for the first state).
    pub generation: u64,
    /// The state bytes.
    pub data: Vec<u8>,
    /// Inconsistent attempts discarded before this one.
    pub retries: u32,
}

impl BoardReader {
    /// Opens `path` read-only and validates its header.
    #[cfg(not(loom))]
    pub fn open(path: &std::path::Path) -> Result<Self, BoardError> {
        let p = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| BoardError::Io {
            op: "open",
            path: p.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| BoardError::Io {
                op: "fstat",
                path: p.clone(),
                source,
            })?
            .len() as usize;
        if len < HEADER_WORDS * 8 {
            return Err(BoardError::Corrupt {
                path: p,
                reason: format!(
                    "{len} bytes is shorter than the {}-byte header",
                    HEADER_WORDS * 8
                ),
            });
        }
        // SAFETY: `Mmap::map` maps the file PROT_READ/MAP_SHARED; the writer
        // changing it concurrently is exactly what the seqlock handles, and we
        // only ever read through volatile loads.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| BoardError::Io {
            op: "mmap",
            path: p.clone(),
            source,
        })?;
        let base =
            std::ptr::NonNull::new(map.as_ptr().cast_mut().cast::<u64>()).ok_or_else(|| {
                BoardError::Io {
                    op: "mmap",
                    path: p.clone(),
                    source: std::io::Error::other("null"),
                }
            })?;
        // SAFETY: page-aligned mapping of `len / 8` whole words kept alive by
        // the Arc; the reader never uses `Words::atomic`.
        let words = unsafe { Words::new(base, len / 8, std::sync::Arc::new(map)) };
        Self::validate(words, p)
    }

    fn validate(words: Words, path: String) -> Result<Self, BoardError> {
        let magic = words.load(W_MAGIC);
        fence(Ordering::Acquire);
        if magic != BOARD_MAGIC {
            return Err(BoardError::WrongMagic { path, found: magic });
        }
        let v = words.load(W_VERSION);
        if v as u32 != BOARD_VERSION || (v >> 32) as usize != HEADER_WORDS {
            return Err(BoardError::UnsupportedVersion {
                path,
                found: v as u32,
            });
        }
        let cap = words.load(W_CAPACITY);
        let total = words.load(W_TOTAL);
        let corrupt = |reason: String| BoardError::Corrupt {
            path: path.clone(),
            reason,
        };
        if cap == 0 || !cap.is_multiple_of(8) || cap > (1 << 34) {
            return Err(corrupt(format!("slot capacity {cap} is invalid")));
        }
        let cap_words = (cap / 8) as usize;
        let need = total_words(cap as usize);
        if total != (need * 8) as u64 || words.len() < need {
            return Err(corrupt(format!(
                "header says {total} bytes, slots need {}, file has {}",
                need * 8,
                words.len() * 8
            )));
        }
        Ok(Self {
            words,
            cap_words,
            path,
        })
    }

    /// Pid of the writer.
    pub fn writer_pid(&self) -> u32 {
        self.words.load(W_PID) as u32
    }

    /// Writer's start time (ns since the epoch).
    pub fn writer_start_ns(&self) -> u64 {
        self.words.load(W_START)
    }

    /// Reads the latest complete state, retrying torn or lapped reads.
    pub fn read(&self) -> Result<BoardSnapshot, BoardError> {
        let mut buf = Vec::new();
        for retries in 0..READ_RETRIES {
            let latest = self.words.load(W_LATEST);
            fence(Ordering::Acquire);
            if latest == 0 {
                return Err(BoardError::Empty {
                    path: self.path.clone(),
                });
            }
            let slot = (latest % 2) as usize;
            let s1 = self.words.load(W_SEQ[slot]);
            fence(Ordering::Acquire);
            if s1 % 2 == 1 {
                crate::sync::spin_hint();
                continue;
            }
            let len = self.words.load(W_LEN[slot]);
            let base = HEADER_WORDS + slot * self.cap_words;
            let ok_len = len <= (self.cap_words * 8) as u64;
            if ok_len {
                let n = (len as usize).div_ceil(8);
                buf.clear();
                buf.reserve(n * 8);
                for i in 0..n {
                    buf.extend_from_slice(&self.words.load(base + i).to_le_bytes());
                }
                buf.truncate(len as usize);
            }
            fence(Ordering::Acquire);
            let s2 = self.words.load(W_SEQ[slot]);
            if s1 != s2 {
                crate::sync::spin_hint();
                continue;
            }
            if !ok_len {
                return Err(BoardError::Corrupt {
                    path: self.path.clone(),
                    reason: format!(
                        "slot {slot} length {len} exceeds capacity {}",
                        self.cap_words * 8
                    ),
                });
            }
            return Ok(BoardSnapshot {
                generation: latest,
                data: std::mem::take(&mut buf),
                retries,
            });
        }
        Err(BoardError::Busy {
            path: self.path.clone(),
        })
    }
}

/// A writer and a reader over one loom-modelled board.
#[cfg(loom)]
pub fn loom_board(capacity: usize) -> (BoardWriter, BoardReader) {
    let cap_words = capacity.div_ceil(8).max(1);
    let words = Words::model(total_words(cap_words * 8));
    let w = BoardWriter {
        words: words.clone(),
        cap_words,
        published: 0,
    };
    w.init(capacity);
    let r = BoardReader::validate(words, "loom".into()).expect("valid model board");
    (w, r)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A fresh scratch directory, removed when the value is dropped.
    fn dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lockstep-board-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn reader_sees_latest_state() {
        let tmp = dir("latest");
        let d = tmp.path();
        let path = d.join("board");
        let mut w = BoardWriter::create(&path, 1000).unwrap();
        let r = BoardReader::open(&path).unwrap();
        assert!(matches!(r.read(), Err(BoardError::Empty { .. })));
        w.publish(b"first").unwrap();
        w.publish(b"second state").unwrap();
        let s = r.read().unwrap();
        assert_eq!((s.generation, s.data.as_slice()), (2, &b"second state"[..]));
        assert_eq!(r.writer_pid(), std::process::id());
    }

    #[test]
    fn oversized_state_is_refused() {
        let tmp = dir("big");
        let d = tmp.path();
        let mut w = BoardWriter::create(&d.join("b"), 16).unwrap();
        assert!(matches!(
            w.publish(&[0; 17]),
            Err(BoardError::TooLarge { .. })
        ));
    }

    #[test]
    fn reader_mapping_is_read_only() {
        let tmp = dir("ro");
        let d = tmp.path();
        let path = d.join("b");
        let _w = BoardWriter::create(&path, 64).unwrap();
        let r = BoardReader::open(&path).unwrap();
        // The reader's file was opened O_RDONLY: a writable mapping of it is
        // impossible, so nothing a reader does can change the board.
        let f = std::fs::File::open(&path).unwrap();
        assert!(memmap2::MmapRaw::map_raw(&f).is_err());
        drop(r);
    }

    #[test]
    fn corrupt_or_foreign_files_are_refused() {
        let tmp = dir("bad");
        let d = tmp.path();
        let p = d.join("junk");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        assert!(matches!(
            BoardReader::open(&p),
            Err(BoardError::WrongMagic { .. })
        ));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            BoardReader::open(&p),
            Err(BoardError::Corrupt { .. })
        ));
        let good = d.join("good");
        let _w = BoardWriter::create(&good, 64).unwrap();
        let mut bytes = std::fs::read(&good).unwrap();
        bytes.truncate(bytes.len() - 8);
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            BoardReader::open(&p),
            Err(BoardError::Corrupt { .. })
        ));
    }

    fn good_board() -> &'static Vec<u8> {
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        GOOD.get_or_init(|| {
            let d = dir("fuzz");
            let good = d.path().join("good");
            let mut w = BoardWriter::create(&good, 64).unwrap();
            w.publish(b"state").unwrap();
            std::fs::read(&good).unwrap()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]

        /// Damaged board files (a byte flipped, maybe cut short): never a
        /// panic in a reader.
        #[test]
        fn random_board_files_never_panic(pos in 0usize..1 << 20, flip in 1u8.., cut: Option<usize>) {
            let base = good_board();
            let mut bytes = base.clone();
            let pos = pos % bytes.len();
            bytes[pos] ^= flip;
            if let Some(c) = cut {
                bytes.truncate(c % base.len());
            }
            fuzz_board_reader(&bytes);
        }
    }

    #[test]
    fn concurrent_reads_are_never_torn() {
        let tmp = dir("torn");
        let d = tmp.path();
        let path = d.join("b");
        let mut w = BoardWriter::create(&path, 4096).unwrap();
        w.publish(&[0u8; 4096]).unwrap();
        let r = BoardReader::open(&path).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut reads = 0u64;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let snap = r.read().unwrap();
                // Every state is one byte value repeated: a torn read would mix.
                let first = snap.data[0];
                assert!(snap.data.iter().all(|b| *b == first), "torn read");
                assert_eq!(snap.data.len(), 4096 - usize::from(first % 8));
                reads += 1;
            }
            reads
        });
        for i in 1..=20_000u32 {
            let v = (i % 251) as u8;
            w.publish(&vec![v; 4096 - usize::from(v % 8)]).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}

/// Opens and reads a board file holding `bytes` (fuzz entry point): must
/// return an error or a state, never panic or read out of bounds.
#[cfg(not(loom))]
#[doc(hidden)]
pub fn fuzz_board_reader(bytes: &[u8]) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("lockstep-fuzz-board-{}-{n}", std::process::id()));
    if std::fs::write(&path, bytes).is_ok()
        && let Ok(r) = BoardReader::open(&path)
    {
        let _ = r.read();
    }
    let _ = std::fs::remove_file(&path);
}
