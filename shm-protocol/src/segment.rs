//! Shared-memory segments: one header and one ring per direction.
//!
//! # Layout
//!
//! ```text
//! offset 0     SegmentHeader (512 bytes)
//!                0   magic            u64  "LCKSTP\x01\x00", stored last (Release)
//!                8   layout_version   u32
//!               12   header_size      u32  (512)
//!               16   total_size       u64  (must equal the file size)
//!               24   ring_offset[2]   u64  (creator→attacher, attacher→creator)
//!               40   ring_capacity[2] u64
//!               56   creator_pid      u32
//!               60   attacher_pid     u32  (0 until attached)
//!               64   start_time_ns    u64  (creator's CLOCK_REALTIME, informational)
//!              128   side[0]          creator status line: heartbeat u64, closed u32
//!              256   side[1]          attacher status line
//! offset 512   ring 0: RingControl (512 bytes) + capacity[0] data bytes
//! offset ...   ring 1: RingControl (512 bytes) + capacity[1] data bytes
//! ```
//!
//! All integers are little-endian (the only byte order we run on).
//!
//! # Memory ordering
//!
//! The creator fills the header with relaxed stores and publishes it by
//! storing `magic` with `Release`; an attacher loads `magic` with `Acquire`
//! before reading anything else, so a half-initialised header is never
//! accepted.  Heartbeats and closed flags are independent relaxed/acquire
//! counters used only for liveness.
//!
//! # Peer crash
//!
//! The header is read once at attach time and fully validated: magic, layout
//! version, header size, total size against the real file size, ring offsets
//! and capacities (power of two, aligned, inside the file, non-overlapping).
//! After that nothing structural is re-read from the header, so a peer that
//! scribbles over it later can only break the rings, which validate
//! themselves ([`crate::ring`]).
//!
//! # Safety
//!
//! The mapping is held in an `Arc` shared by the segment and every ring half
//! built over it, so no pointer outlives the mapping.  The file is never
//! truncated after creation (the creator owns it and only unlinks it).

use crate::region::DataRegion;
use crate::ring::{Consumer, Producer, RingControl, valid_capacity};
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use memmap2::MmapRaw;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

/// Magic number at offset 0 of every segment ("LCKSTP", 1, 0).
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"LCKSTP\x01\x00");
/// Version of the layout described in the module docs.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the segment header.
pub const HEADER_SIZE: usize = 512;

#[repr(C)]
#[derive(Debug)]
struct SideStatus {
    heartbeat: AtomicU64,
    closed: AtomicU32,
    _pad: [u8; 128 - 12],
}

#[repr(C)]
#[derive(Debug)]
struct SegmentHeader {
    magic: AtomicU64,
    layout_version: AtomicU32,
    header_size: AtomicU32,
    total_size: AtomicU64,
    ring_offset: [AtomicU64; 2],
    ring_capacity: [AtomicU64; 2],
    creator_pid: AtomicU32,
    attacher_pid: AtomicU32,
    start_time_ns: AtomicU64,
    _reserved: [u8; 128 - 72],
    side: [SideStatus; 2],
    _tail: [u8; HEADER_SIZE - 384],
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == HEADER_SIZE);

/// Which end of a segment this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The process that created the segment (the supervisor).
    Creator,
    /// The process that attached to it (a child).
    Attacher,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Creator => 0,
            Side::Attacher => 1,
        }
    }
    fn other(self) -> Side {
        match self {
            Side::Creator => Side::Attacher,
            Side::Attacher => Side::Creator,
        }
    }
}

/// Ring capacities of a new segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentConfig {
    /// Data bytes of the creator→attacher ring (power of two, ≥ 4 KiB).
    pub to_attacher: usize,
    /// Data bytes of the attacher→creator ring.
    pub to_creator: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            to_attacher: 1 << 20,
            to_creator: 1 << 20,
        }
    }
}

/// Where a new segment's bytes live.
#[derive(Debug, Clone)]
pub enum Backing {
    /// An anonymous `memfd` (nothing to clean up; hand the fd to the child).
    Memfd {
        /// Name shown in `/proc/<pid>/fd` (for debugging only).
        name: String,
    },
    /// A file created exclusively at this path (e.g. under `/dev/shm` or a
    /// run directory) and unlinked when the creator drops the segment.
    File(PathBuf),
}

/// Failures to create or attach a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A system call failed.
    #[error("{op} failed for segment {what}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The segment (path or memfd description).
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is smaller than its header says (or than a header).
    #[error("segment {what} is truncated: {size} bytes, expected {expected}")]
    Truncated {
        /// The segment.
        what: String,
        /// Actual file size.
        size: u64,
        /// Required size.
        expected: u64,
    },
    /// The magic number is wrong (not a segment, or not yet initialised).
    #[error("segment {what} has wrong magic {found:#018x} (expected {SEGMENT_MAGIC:#018x})")]
    WrongMagic {
        /// The segment.
        what: String,
        /// The value found.
        found: u64,
    },
    /// The layout version is not one this build understands.
    #[error("segment {what} has layout version {found}, this build supports {LAYOUT_VERSION}")]
    UnsupportedVersion {
        /// The segment.
        what: String,
        /// The version found.
        found: u32,
    },
    /// A header field is inconsistent.
    #[error("segment {what} has an invalid header: {reason}")]
    BadLayout {
        /// The segment.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Invalid configuration for a new segment.
    #[error("invalid segment configuration: {0}")]
    Config(String),
}

/// The mapping plus the header view; shared by every ring half built on it.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: MmapRaw,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics
// (header) or the ring protocol; it may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn base(&self) -> NonNull<u8> {
        // memmap2 never returns a null pointer for a successful mapping.
        NonNull::new(self.map.as_mut_ptr()).unwrap_or(NonNull::dangling())
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: every mapping is at least HEADER_SIZE bytes (checked before
        // a `Mapping` is built), page-aligned, and the header consists of
        // atomics and padding, valid for any bit pattern.
        unsafe { self.base().cast::<SegmentHeader>().as_ref() }
    }
}

/// Liveness view of a segment's header, cheap to clone.
#[derive(Debug, Clone)]
pub struct SegmentStatus {
    mapping: Arc<Mapping>,
    side: Side,
}

impl SegmentStatus {
    /// Bumps this side's heartbeat counter.
    pub fn beat(&self) {
        self.mapping.header().side[self.side.index()]
            .heartbeat
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The peer's heartbeat counter.
    pub fn peer_heartbeat(&self) -> u64 {
        self.mapping.header().side[self.side.other().index()]
            .heartbeat
            .load(Ordering::Relaxed)
    }

    /// Announces that this side is closing cleanly.
    pub fn mark_closed(&self) {
        self.mapping.header().side[self.side.index()]
            .closed
            .store(1, Ordering::Release);
    }

    /// Whether the peer announced a clean close.
    pub fn peer_closed(&self) -> bool {
        self.mapping.header().side[self.side.other().index()]
            .closed
            .load(Ordering::Acquire)
            != 0
    }

    /// This side.
    pub fn side(&self) -> Side {
        self.side
    }
}

/// Facts read from a validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Layout version.
    pub layout_version: u32,
    /// File size.
    pub total_size: u64,
    /// Ring capacities `[creator→attacher, attacher→creator]`.
    pub capacities: [usize; 2],
    /// Ring offsets.
    pub offsets: [usize; 2],
    /// Pid of the creator.
    pub creator_pid: u32,
    /// Pid of the attacher (0 until one attached).
    pub attacher_pid: u32,
    /// Creator's wall clock at creation (ns since the epoch; informational).
    pub start_time_ns: u64,
}

/// A mapped segment, from either side.
#[derive(Debug)]
pub struct Segment {
    mapping: Arc<Mapping>,
    file: File,
    side: Side,
    what: String,
    unlink: Option<PathBuf>,
    info: SegmentInfo,
}

fn io_err<'a>(op: &'static str, what: &'a str) -> impl FnOnce(std::io::Error) -> SegmentError + 'a {
    move |source| SegmentError::Io {
        op,
        what: what.to_owned(),
        source,
    }
}

const fn align_up(n: usize, a: usize) -> usize {
    (n + a - 1) & !(a - 1)
}

/// Total bytes of a segment with these capacities.
pub fn segment_size(config: &SegmentConfig) -> usize {
    let r0 = HEADER_SIZE;
    let r1 = align_up(r0 + RingControl::SIZE + config.to_attacher, 4096);
    align_up(r1 + RingControl::SIZE + config.to_creator, 4096)
}

impl Segment {
    /// Creates a segment (the creator side) and publishes its header.
    pub fn create(config: SegmentConfig, backing: Backing) -> Result<Self, SegmentError> {
        for (name, cap) in [
            ("to_attacher", config.to_attacher),
            ("to_creator", config.to_creator),
        ] {
            if !valid_capacity(cap) {
                return Err(SegmentError::Config(format!(
                    "ring capacity {name} = {cap} is not a power of two between {} and {}",
                    crate::ring::MIN_CAPACITY,
                    crate::ring::MAX_CAPACITY
                )));
            }
        }
        let (file, what, unlink) = match &backing {
            Backing::Memfd { name } => {
                let what = format!("memfd:{name}");
                let fd: OwnedFd = nix::sys::memfd::memfd_create(
                    name.as_str(),
                    nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                )
                .map_err(|e| io_err("memfd_create", &what)(e.into()))?;
                (File::from(fd), what, None)
            }
            Backing::File(path) => {
                let what = path.display().to_string();
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io_err("create", &what))?;
                (file, what, Some(path.clone()))
            }
        };
        let total = segment_size(&config);
        file.set_len(total as u64)
            .map_err(io_err("ftruncate", &what))?;
        let map = MmapRaw::map_raw(&file).map_err(io_err("mmap", &what))?;
        let mapping = Arc::new(Mapping { map });
        let offsets = [
            HEADER_SIZE,
            align_up(HEADER_SIZE + RingControl::SIZE + config.to_attacher, 4096),
        ];
        let capacities = [config.to_attacher, config.to_creator];
        let pid = std::process::id();
        let start_time_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let h = mapping.header();
        h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.header_size.store(HEADER_SIZE as u32, Ordering::Relaxed);
        h.total_size.store(total as u64, Ordering::Relaxed);
        for i in 0..2 {
            h.ring_offset[i].store(offsets[i] as u64, Ordering::Relaxed);
            h.ring_capacity[i].store(capacities[i] as u64, Ordering::Relaxed);
        }
        h.creator_pid.store(pid, Ordering::Relaxed);
        h.start_time_ns.store(start_time_ns, Ordering::Relaxed);
        // Published last: an attacher that sees the magic sees everything above.
        h.magic.store(SEGMENT_MAGIC, Ordering::Release);
        let info = SegmentInfo {
            layout_version: LAYOUT_VERSION,
            total_size: total as u64,
            capacities,
            offsets,
            creator_pid: pid,
            attacher_pid: 0,
            start_time_ns,
        };
        Ok(Self {
            mapping,
            file,
            side: Side::Creator,
            what,
            unlink,
            info,
        })
    }

    /// Attaches to a segment file (the attacher side), validating its header.
    pub fn attach(file: File, what: impl Into<String>) -> Result<Self, SegmentError> {
        let what = what.into();
        let size = file.metadata().map_err(io_err("fstat", &what))?.len();
        if size < HEADER_SIZE as u64 {
            return Err(SegmentError::Truncated {
                what,
                size,
                expected: HEADER_SIZE as u64,
            });
        }
        let map = MmapRaw::map_raw(&file).map_err(io_err("mmap", &what))?;
        let mapping = Arc::new(Mapping { map });
        let info = validate_header(mapping.header(), size, &what)?;
        mapping
            .header()
            .attacher_pid
            .store(std::process::id(), Ordering::Release);
        Ok(Self {
            mapping,
            file,
            side: Side::Attacher,
            what,
            unlink: None,
            info,
        })
    }

    /// Attaches to a segment at `path`.
    pub fn attach_path(path: &Path) -> Result<Self, SegmentError> {
        let what = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open", &what))?;
        Self::attach(file, what)
    }

    /// The validated header facts.
    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// The side this process holds.
    pub fn side(&self) -> Side {
        self.side
    }

    /// A description of the segment for messages (path or memfd name).
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// The backing file descriptor (to pass to a child).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Pid of the process attached to the other side, if any.
    pub fn attacher_pid(&self) -> u32 {
        self.mapping.header().attacher_pid.load(Ordering::Acquire)
    }

    /// Liveness view (heartbeats, close flags).
    pub fn status(&self) -> SegmentStatus {
        SegmentStatus {
            mapping: self.mapping.clone(),
            side: self.side,
        }
    }

    /// Builds this side's producer and consumer.
    ///
    /// Call at most once per segment per process: the rings are single
    /// producer / single consumer.
    pub fn rings(&self) -> (Producer, Consumer) {
        let (tx, rx) = match self.side {
            Side::Creator => (0, 1),
            Side::Attacher => (1, 0),
        };
        (self.producer(tx), self.consumer(rx))
    }

    fn ring_ptrs(&self, i: usize) -> (NonNull<RingControl>, DataRegion) {
        let base = self.mapping.base();
        let off = self.info.offsets[i];
        let cap = self.info.capacities[i];
        // SAFETY: `off + RingControl::SIZE + cap <= total_size` was validated
        // (or constructed) and the mapping is `total_size` bytes long.
        let ctrl = unsafe { base.add(off) }.cast::<RingControl>();
        // SAFETY: as above.
        let data = unsafe { base.add(off + RingControl::SIZE) };
        // SAFETY: in bounds as above, 8-aligned (offsets are 4 KiB-aligned),
        // and kept alive by the mapping `Arc` the ring halves hold.
        let region = unsafe { DataRegion::new(data, cap) };
        (ctrl, region)
    }

    fn producer(&self, i: usize) -> Producer {
        let (ctrl, data) = self.ring_ptrs(i);
        // SAFETY: pointers from `ring_ptrs`; the `Arc` keeps the mapping
        // alive; each side builds only its own producer for ring `i`.
        unsafe { Producer::from_raw(ctrl, data, self.mapping.clone()) }
    }

    fn consumer(&self, i: usize) -> Consumer {
        let (ctrl, data) = self.ring_ptrs(i);
        // SAFETY: as for `producer`.
        unsafe { Consumer::from_raw(ctrl, data, self.mapping.clone()) }
    }

    /// Base address and length of the mapping, for tests that deliberately
    /// corrupt a segment (a rogue peer).  Writing through it is the caller's
    /// responsibility.
    pub fn raw_bytes(&self) -> (*mut u8, usize) {
        (self.mapping.map.as_mut_ptr(), self.mapping.map.len())
    }

    /// A handle on the mapping that keeps it alive (for [`crate::rogue`]).
    pub(crate) fn mapping(&self) -> Arc<Mapping> {
        self.mapping.clone()
    }
}

impl Mapping {
    /// Base pointer and length of the mapping.
    pub(crate) fn raw(&self) -> (*mut u8, usize) {
        (self.map.as_mut_ptr(), self.map.len())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(path) = self.unlink.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn validate_header(h: &SegmentHeader, size: u64, what: &str) -> Result<SegmentInfo, SegmentError> {
    let bad = |reason: String| SegmentError::BadLayout {
        what: what.to_owned(),
        reason,
    };
    let magic = h.magic.load(Ordering::Acquire);
    if magic != SEGMENT_MAGIC {
        return Err(SegmentError::WrongMagic {
            what: what.to_owned(),
            found: magic,
        });
    }
    let version = h.layout_version.load(Ordering::Relaxed);
    if version != LAYOUT_VERSION {
        return Err(SegmentError::UnsupportedVersion {
            what: what.to_owned(),
            found: version,
        });
    }
    let header_size = h.header_size.load(Ordering::Relaxed);
    if header_size as usize != HEADER_SIZE {
        return Err(bad(format!(
            "header_size {header_size}, expected {HEADER_SIZE}"
        )));
    }
    let total = h.total_size.load(Ordering::Relaxed);
    if total > size {
        return Err(SegmentError::Truncated {
            what: what.to_owned(),
            size,
            expected: total,
        });
    }
    if total != size {
        return Err(bad(format!(
            "total_size {total} differs from the file size {size}"
        )));
    }
    let mut offsets = [0usize; 2];
    let mut capacities = [0usize; 2];
    for i in 0..2 {
        let off = h.ring_offset[i].load(Ordering::Relaxed);
        let cap = h.ring_capacity[i].load(Ordering::Relaxed);
        let Ok(cap_us) = usize::try_from(cap) else {
            return Err(bad(format!(
                "ring {i} capacity {cap} does not fit in memory"
            )));
        };
        if !valid_capacity(cap_us) {
            return Err(bad(format!(
                "ring {i} capacity {cap} is not a valid power of two"
            )));
        }
        if off < HEADER_SIZE as u64 || !off.is_multiple_of(4096) && off != HEADER_SIZE as u64 {
            return Err(bad(format!("ring {i} offset {off} is misplaced")));
        }
        let end = off
            .checked_add(RingControl::SIZE as u64)
            .and_then(|e| e.checked_add(cap));
        match end {
            Some(end) if end <= total => {}
            _ => {
                return Err(bad(format!(
                    "ring {i} at {off} with capacity {cap} exceeds the segment ({total} bytes)"
                )));
            }
        }
        offsets[i] = off as usize;
        capacities[i] = cap_us;
    }
    let (first, second) = if offsets[0] <= offsets[1] {
        (0, 1)
    } else {
        (1, 0)
    };
    if offsets[first] + RingControl::SIZE + capacities[first] > offsets[second] {
        return Err(bad("the two rings overlap".to_owned()));
    }
    Ok(SegmentInfo {
        layout_version: version,
        total_size: total,
        capacities,
        offsets,
        creator_pid: h.creator_pid.load(Ordering::Relaxed),
        attacher_pid: h.attacher_pid.load(Ordering::Relaxed),
        start_time_ns: h.start_time_ns.load(Ordering::Relaxed),
    })
}

/// Validates a header given as raw bytes (for fuzzing and tests): the same
/// checks `attach` performs, over a private copy.
pub fn validate_header_bytes(bytes: &[u8]) -> Result<SegmentInfo, SegmentError> {
    let size = bytes.len() as u64;
    if bytes.len() < HEADER_SIZE {
        return Err(SegmentError::Truncated {
            what: "<bytes>".into(),
            size,
            expected: HEADER_SIZE as u64,
        });
    }
    let mut copy = memmap2::MmapMut::map_anon(HEADER_SIZE).map_err(io_err("mmap", "<bytes>"))?;
    copy.copy_from_slice(&bytes[..HEADER_SIZE]);
    // SAFETY: `copy` is a page-aligned private mapping of HEADER_SIZE bytes;
    // the header is atomics and padding, valid for any bit pattern.
    let h = unsafe { &*copy.as_ptr().cast::<SegmentHeader>() };
    validate_header(h, size, "<bytes>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd() -> Segment {
        Segment::create(
            SegmentConfig::default(),
            Backing::Memfd { name: "t".into() },
        )
        .unwrap()
    }

    fn reopen(seg: &Segment) -> File {
        File::from(seg.fd().try_clone_to_owned().unwrap())
    }

    /// Writes `value` at byte `off` of the segment (a rogue peer).
    fn poke(seg: &Segment, off: usize, value: &[u8]) {
        let (base, len) = seg.raw_bytes();
        assert!(off + value.len() <= len);
        // SAFETY: in bounds of a live mapping that this test owns.
        let dst = unsafe { base.add(off) };
        // SAFETY: `dst..dst+len` is inside the mapping (asserted above) and
        // does not overlap `value`.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), dst, value.len()) };
    }

    #[test]
    fn attach_sees_the_creators_layout() {
        let seg = memfd();
        let other = Segment::attach(reopen(&seg), "t").unwrap();
        assert_eq!(other.info().capacities, seg.info().capacities);
        assert_eq!(other.info().creator_pid, std::process::id());
        assert_eq!(seg.attacher_pid(), std::process::id());
        assert_eq!(other.side(), Side::Attacher);
    }

    #[test]
    fn rings_connect_the_two_sides() {
        let seg = memfd();
        let other = Segment::attach(reopen(&seg), "t").unwrap();
        let (mut tx, mut rx) = seg.rings();
        let (mut tx2, mut rx2) = other.rings();
        assert!(tx.try_send(1, b"down").unwrap());
        assert_eq!(rx2.try_read().unwrap().unwrap().payload(), b"down");
        assert!(tx2.try_send(1, b"up").unwrap());
        assert_eq!(rx.try_read().unwrap().unwrap().payload(), b"up");
    }

    #[test]
    fn wrong_magic_is_refused() {
        let seg = memfd();
        poke(&seg, 0, b"NOTMAGIC");
        let err = Segment::attach(reopen(&seg), "t").unwrap_err();
        assert!(matches!(err, SegmentError::WrongMagic { .. }), "{err}");
    }

    #[test]
    fn wrong_version_is_refused() {
        let seg = memfd();
        poke(&seg, 8, &99u32.to_le_bytes());
        let err = Segment::attach(reopen(&seg), "t").unwrap_err();
        assert!(
            matches!(err, SegmentError::UnsupportedVersion { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_refused() {
        let seg = memfd();
        let f = reopen(&seg);
        f.set_len(seg.info().total_size - 4096).unwrap();
        let err = Segment::attach(reopen(&seg), "t").unwrap_err();
        assert!(matches!(err, SegmentError::Truncated { .. }), "{err}");
        f.set_len(100).unwrap();
        let err = Segment::attach(reopen(&seg), "t").unwrap_err();
        assert!(
            matches!(err, SegmentError::Truncated { size: 100, .. }),
            "{err}"
        );
    }

    #[test]
    fn overlapping_or_oversized_rings_are_refused() {
        let seg = memfd();
        poke(&seg, 48, &(1u64 << 29).to_le_bytes());
        let err = Segment::attach(reopen(&seg), "t").unwrap_err();
        assert!(matches!(err, SegmentError::BadLayout { .. }), "{err}");
        let seg = memfd();
        poke(&seg, 32, &(HEADER_SIZE as u64).to_le_bytes());
        let err = Segment::attach(reopen(&seg), "t").unwrap_err();
        assert!(matches!(err, SegmentError::BadLayout { .. }), "{err}");
    }

    #[test]
    fn file_backing_is_unlinked_on_drop() {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-seg-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("seg");
        let seg = Segment::create(SegmentConfig::default(), Backing::File(path.clone())).unwrap();
        let other = Segment::attach_path(&path).unwrap();
        assert_eq!(other.info().total_size, seg.info().total_size);
        drop(seg);
        assert!(!path.exists());
    }

    #[test]
    fn invalid_capacity_is_a_config_error() {
        let err = Segment::create(
            SegmentConfig {
                to_attacher: 1000,
                to_creator: 4096,
            },
            Backing::Memfd { name: "x".into() },
        )
        .unwrap_err();
        assert!(err.to_string().contains("to_attacher"), "{err}");
    }

    fn good_header() -> &'static (Vec<u8>, usize) {
        static GOOD: std::sync::OnceLock<(Vec<u8>, usize)> = std::sync::OnceLock::new();
        GOOD.get_or_init(|| {
            let seg = memfd();
            let (base, _) = seg.raw_bytes();
            // SAFETY: the header is HEADER_SIZE bytes of a live mapping.
            let good = unsafe { std::slice::from_raw_parts(base, HEADER_SIZE) }.to_vec();
            (good, seg.info().total_size as usize)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]

        /// 100,000 damaged headers (a byte of a valid header flipped, or pure
        /// noise), as short as the header or as long as a segment: errors,
        /// never panics; a flip is accepted only where it hits padding or an
        /// informational field.
        #[test]
        fn random_header_bytes_never_panic(
            noise in proptest::collection::vec(proptest::num::u8::ANY, HEADER_SIZE),
            pos in 0usize..80,
            flip in 1u8..,
            pure_noise: bool,
            short: bool,
        ) {
            let (good, size) = good_header();
            let mut input = if pure_noise { noise } else { good.clone() };
            if !pure_noise {
                input[pos] ^= flip;
            }
            input.resize(if short { HEADER_SIZE } else { (*size).min(1 << 16) }, 0);
            let accepted = validate_header_bytes(&input).is_ok();
            let structural = [0usize..32, 32..56].iter().any(|r| r.contains(&pos));
            if !pure_noise && structural && (pos < 8 || (24..56).contains(&pos)) {
                proptest::prop_assert!(!accepted, "a flip at {} was accepted", pos);
            }
        }
    }
}
