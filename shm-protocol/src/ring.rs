//! Single-producer/single-consumer ring of variable-length frames.
//!
//! # Layout
//!
//! A ring is a [`RingControl`] block followed by `capacity` bytes of data
//! (`capacity` a power of two, at least 4 KiB).  The control block is four
//! 128-byte lines so that no two writers share a cache line:
//!
//! | line | written by | fields |
//! |------|------------|--------|
//! | 0 | producer | `head` (u64 byte sequence), `closed` |
//! | 1 | consumer | `tail` (u64 byte sequence), `closed` |
//! | 2 | both (park path only) | consumer parked flag, data futex word |
//! | 3 | both (park path only) | producer parked flag, space futex word |
//!
//! `head` and `tail` are free-running byte counters; the offset of a sequence
//! number `s` in the data area is `s & (capacity - 1)`.  Every frame starts on
//! an 8-byte boundary with an 8-byte little-endian header — `len: u32` (payload
//! bytes) then `kind: u32` — followed by the payload, padded to 8 bytes.  A
//! frame never wraps: when it does not fit before the end of the data area the
//! producer writes a padding frame (`kind == 0`, `len` = bytes to the end minus
//! the header) and starts the frame at offset 0.  A frame occupies at most
//! half the capacity, which guarantees that an empty ring always has room.
//!
//! # Memory ordering
//!
//! The producer writes frame bytes with plain stores and publishes them with a
//! `Release` store of `head`; the consumer reads `head` with `Acquire` before
//! touching the bytes.  Symmetrically the consumer frees space with a
//! `Release` store of `tail`, read by the producer with `Acquire`.  Each side
//! keeps a private copy of its own counter and a cached copy of the other's,
//! so steady-state streaming touches the peer's cache line only when the cache
//! runs dry.
//!
//! Parking uses a needs-wake-up flag and a futex word per direction.  The
//! sleeper reads the futex word, sets its flag, issues a `SeqCst` fence and
//! re-checks the ring; the waker publishes, issues a `SeqCst` fence and reads
//! the flag.  The two fences guarantee that at least one side sees the
//! other's store, so a wake-up is never lost, and the waker makes a `futex`
//! system call only when the flag is set.  These handshakes are model-checked
//! with loom (`RUSTFLAGS="--cfg loom" cargo test -p shm-protocol --test loom`).
//!
//! # Peer crash
//!
//! The peer is untrusted: it may die at any instruction or scribble over the
//! whole segment.  Every value this side reads from the peer — its counter
//! and every frame header — is loaded once, then validated: a counter that
//! moves backwards, runs past the other counter or past the capacity, a
//! misaligned position, a frame longer than the bytes published or than the
//! space to the end of the data area, or a padding frame that does not end at
//! the end of the data area is reported as [`RingError::Corrupt`], after which
//! the half is permanently [`RingError::Broken`].  Each call does a bounded
//! amount of work: every loop iteration consumes at least 8 validated bytes.
//! A peer that dies leaves a consistent prefix: unpublished frames are
//! invisible, so a torn frame can never be observed.  Liveness (a dead or hung
//! peer) is detected one layer up, by [`crate::endpoint`].
//!
//! # Safety
//!
//! The only `unsafe` here is the construction of a ring over raw memory
//! ([`Producer::from_raw`], [`Consumer::from_raw`]), whose contract is that the
//! memory stays mapped; byte access goes through [`crate::region`].  Payload
//! slices handed to the consumer point into shared memory that a malicious
//! producer could still modify: treat them as untrusted input (which they are
//! anyway) and decode them without assuming they stay constant.

use crate::region::DataRegion;
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use crate::sync::futex;
use std::fmt;
use std::time::Duration;

/// Size of a frame header in bytes.
pub const FRAME_HEADER: usize = 8;
/// Frames start on multiples of this many bytes.
pub const FRAME_ALIGN: usize = 8;
/// Frame kind reserved for wrap-around padding.
pub const KIND_PADDING: u32 = 0;
/// Smallest ring data capacity accepted.
pub const MIN_CAPACITY: usize = 4096;
/// Largest ring data capacity accepted (1 GiB).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Rounds `n` up to the frame alignment.
#[inline]
const fn align_frame(n: u64) -> u64 {
    (n + (FRAME_ALIGN as u64 - 1)) & !(FRAME_ALIGN as u64 - 1)
}

/// Largest payload a ring of `capacity` bytes carries in one frame.
#[inline]
pub const fn max_payload(capacity: usize) -> usize {
    capacity / 2 - FRAME_HEADER
}

/// Whether `capacity` is a valid ring data capacity.
pub const fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && capacity >= MIN_CAPACITY && capacity <= MAX_CAPACITY
}

#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

#[repr(C)]
#[derive(Debug)]
struct SideLine {
    seq: AtomicU64,
    closed: AtomicU32,
}

#[repr(C)]
#[derive(Debug)]
struct WaitLine {
    parked: AtomicU32,
    futex: AtomicU32,
}

/// Shared control block of one ring (see the module docs for the layout).
///
/// All-zero bytes are a valid, empty, open ring, so a freshly truncated file
/// or memfd needs no initialisation.
#[repr(C)]
#[derive(Debug)]
pub struct RingControl {
    producer: Line<SideLine>,
    consumer: Line<SideLine>,
    data_wait: Line<WaitLine>,
    space_wait: Line<WaitLine>,
}

impl RingControl {
    /// Size of the control block in bytes (512).
    pub const SIZE: usize = 4 * 128;

    /// A control block for an empty, open ring.
    pub fn new() -> Self {
        let side = || SideLine {
            seq: AtomicU64::new(0),
            closed: AtomicU32::new(0),
        };
        let wait = || WaitLine {
            parked: AtomicU32::new(0),
            futex: AtomicU32::new(0),
        };
        Self {
            producer: Line(side()),
            consumer: Line(side()),
            data_wait: Line(wait()),
            space_wait: Line(wait()),
        }
    }
}

impl Default for RingControl {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingControl>() == RingControl::SIZE);

/// What exactly was wrong with a corrupt ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The producer's head is behind our read position or too far ahead.
    Head { head: u64, tail: u64, capacity: u64 },
    /// The consumer's tail moved backwards or past what was published.
    Tail { tail: u64, previous: u64, head: u64 },
    /// A counter that must be a multiple of 8 is not.
    Misaligned { value: u64 },
    /// A frame header claims more bytes than were published or fit.
    FrameLength {
        position: u64,
        len: u32,
        available: u64,
    },
    /// A padding frame does not end exactly at the end of the data area.
    Padding { position: u64, len: u32 },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Head {
                head,
                tail,
                capacity,
            } => write!(
                f,
                "producer head {head} is outside [{tail}, {tail}+{capacity}] (our tail, capacity)"
            ),
            Self::Tail {
                tail,
                previous,
                head,
            } => write!(
                f,
                "consumer tail {tail} is outside [{previous}, {head}] (last tail, published head)"
            ),
            Self::Misaligned { value } => write!(f, "sequence {value} is not 8-byte aligned"),
            Self::FrameLength {
                position,
                len,
                available,
            } => write!(
                f,
                "frame at {position} claims {len} payload bytes but only {available} bytes are usable"
            ),
            Self::Padding { position, len } => write!(
                f,
                "padding frame at {position} with length {len} does not end at the end of the ring"
            ),
        }
    }
}

/// Errors of the non-blocking ring halves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The frame is larger than the ring can ever hold.
    #[error("frame of {len} bytes exceeds the ring's maximum payload of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Kind 0 is reserved for padding frames.
    #[error("frame kind 0 is reserved for padding")]
    ReservedKind,
    /// The peer wrote something impossible into the ring.
    #[error("ring corrupted by peer: {0}")]
    Corrupt(Corruption),
    /// An earlier error broke this connection for good.
    #[error("ring connection is broken after an earlier error")]
    Broken,
}

/// Reference to a control block: raw shared memory normally, a heap value
/// under loom.
#[cfg(not(loom))]
struct CtrlRef {
    ptr: std::ptr::NonNull<RingControl>,
    _owner: std::sync::Arc<dyn Send + Sync>,
}

// SAFETY: as for `Send`: the block only holds atomics.
#[cfg(not(loom))]
unsafe impl Sync for CtrlRef {}

#[cfg(not(loom))]
impl CtrlRef {
    #[inline]
    fn get(&self) -> &RingControl {
        // SAFETY: `from_raw`'s contract keeps the block mapped while `_owner`
        // lives; all fields are atomics, valid for any bit pattern and for
        // shared access.
        unsafe { self.ptr.as_ref() }
    }
}

#[cfg(loom)]
struct CtrlRef {
    arc: std::sync::Arc<RingControl>,
}

#[cfg(loom)]
impl CtrlRef {
    fn get(&self) -> &RingControl {
        &self.arc
    }
}

// SAFETY: the control block only holds atomics; sharing across threads is
// exactly what it is for.
#[cfg(not(loom))]
unsafe impl Send for CtrlRef {}

impl fmt::Debug for CtrlRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CtrlRef")
    }
}

/// Wakes the other side if it parked on `line`.  Called after a `Release`
/// publication; the `SeqCst` fence pairs with the one in [`Parker`].
#[inline]
fn wake_if_parked(line: &WaitLine) -> bool {
    fence(Ordering::SeqCst);
    if line.parked.load(Ordering::Relaxed) != 0 {
        line.parked.store(0, Ordering::Relaxed);
        line.futex.fetch_add(1, Ordering::Release);
        futex::wake_all(&line.futex);
        true
    } else {
        false
    }
}

/// Sleeps on `line` unless `ready()` becomes true after announcing the park.
fn park(line: &WaitLine, timeout: Duration, ready: impl Fn() -> bool) {
    let seen = line.futex.load(Ordering::Acquire);
    line.parked.store(1, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    if !ready() {
        futex::wait(&line.futex, seen, timeout);
    }
    line.parked.store(0, Ordering::Relaxed);
}

/// The writing half of a ring.
#[derive(Debug)]
pub struct Producer {
    ctrl: CtrlRef,
    data: DataRegion,
    mask: u64,
    capacity: u64,
    /// End of the frames committed so far (published or not).
    local_head: u64,
    /// What was last stored into the shared `head`.
    published_head: u64,
    /// Last validated value of the consumer's `tail`.
    cached_tail: u64,
    broken: bool,
    stats: ProducerStats,
}

/// Counters kept by a producer (for tests and benchmarks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    /// Frames committed.
    pub frames: u64,
    /// Publications (stores of `head`).
    pub publishes: u64,
    /// `futex` wake system calls made.
    pub wake_calls: u64,
    /// Times the shared `tail` was loaded because the cache ran dry.
    pub tail_refreshes: u64,
}

/// The reading half of a ring.
#[derive(Debug)]
pub struct Consumer {
    ctrl: CtrlRef,
    data: DataRegion,
    mask: u64,
    capacity: u64,
    /// Start of the next frame to read.
    local_tail: u64,
    /// What was last stored into the shared `tail`.
    released_tail: u64,
    /// Last validated value of the producer's `head`.
    cached_head: u64,
    broken: bool,
    stats: ConsumerStats,
}

/// Counters kept by a consumer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Frames read (padding excluded).
    pub frames: u64,
    /// Releases (stores of `tail`).
    pub releases: u64,
    /// `futex` wake system calls made.
    pub wake_calls: u64,
    /// Times the shared `head` was loaded because the cache ran dry.
    pub head_refreshes: u64,
}

/// A frame read from a ring.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The frame's kind (never [`KIND_PADDING`]).
    pub kind: u32,
    #[cfg(not(loom))]
    payload: &'a [u8],
    #[cfg(loom)]
    payload: Vec<u8>,
    #[cfg(loom)]
    _life: std::marker::PhantomData<&'a ()>,
}

impl Frame<'_> {
    /// The payload bytes (untrusted: see the module's safety notes).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        #[cfg(not(loom))]
        {
            self.payload
        }
        #[cfg(loom)]
        {
            &self.payload
        }
    }
}

/// Space reserved in the ring for one frame, not yet visible to the consumer.
#[derive(Debug)]
pub struct Reservation<'a> {
    producer: &'a mut Producer,
    offset: usize,
    len: usize,
    #[cfg(loom)]
    scratch: Vec<u8>,
}

impl Reservation<'_> {
    /// The reserved payload bytes, to be filled in place (zero-copy).
    #[inline]
    pub fn buf(&mut self) -> &mut [u8] {
        #[cfg(not(loom))]
        {
            self.producer
                .data
                .bytes_mut(self.offset + FRAME_HEADER, self.len)
        }
        #[cfg(loom)]
        {
            &mut self.scratch
        }
    }

    /// Commits the first `used` bytes as a frame of `kind`.  The frame
    /// becomes visible at the next [`Producer::publish`].
    pub fn commit(self, kind: u32, used: usize) -> Result<(), RingError> {
        if kind == KIND_PADDING {
            return Err(RingError::ReservedKind);
        }
        if used > self.len {
            return Err(RingError::TooLarge {
                len: used,
                max: self.len,
            });
        }
        let p = self.producer;
        #[cfg(loom)]
        p.data
            .copy_in(self.offset + FRAME_HEADER, &self.scratch[..used]);
        p.data.write_u64(self.offset, header(used as u32, kind));
        p.local_head += align_frame((FRAME_HEADER + used) as u64);
        p.stats.frames += 1;
        Ok(())
    }
}

#[inline]
fn header(len: u32, kind: u32) -> u64 {
    u64::from(len) | (u64::from(kind) << 32)
}

impl Producer {
    /// Builds the producing half over raw memory.
    ///
    /// # Safety
    ///
    /// `ctrl` must point to a 128-byte-aligned [`RingControl`] and `data` to
    /// `capacity` bytes, both inside a mapping kept alive by `owner`, and no
    /// other `Producer` may exist for this ring (in any process).
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_raw(
        ctrl: std::ptr::NonNull<RingControl>,
        data: DataRegion,
        owner: std::sync::Arc<dyn Send + Sync>,
    ) -> Self {
        let ctrl = CtrlRef {
            ptr: ctrl,
            _owner: owner,
        };
        Self::with_ctrl(ctrl, data)
    }

    fn with_ctrl(ctrl: CtrlRef, data: DataRegion) -> Self {
        let capacity = data.len() as u64;
        // Resume from whatever the shared counters say (all zero for a new
        // ring).  The values are validated lazily like any other peer input.
        let head = ctrl.get().producer.0.seq.load(Ordering::Relaxed);
        let tail = ctrl.get().consumer.0.seq.load(Ordering::Acquire);
        let sane = head.is_multiple_of(8) && tail <= head && head - tail <= capacity;
        let (head, tail) = if sane { (head, tail) } else { (0, 0) };
        Self {
            ctrl,
            data,
            mask: capacity - 1,
            capacity,
            local_head: head,
            published_head: head,
            cached_tail: tail,
            broken: !sane,
            stats: ProducerStats::default(),
        }
    }

    /// Bytes of payload the largest frame may carry.
    pub fn max_payload(&self) -> usize {
        max_payload(self.capacity as usize)
    }

    /// The data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Counters since creation.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// Whether an earlier error broke this half.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fail(&mut self, c: Corruption) -> RingError {
        self.broken = true;
        RingError::Corrupt(c)
    }

    /// Loads and validates the consumer's tail.
    fn refresh_tail(&mut self) -> Result<(), RingError> {
        self.stats.tail_refreshes += 1;
        let t = self.ctrl.get().consumer.0.seq.load(Ordering::Acquire);
        if t < self.cached_tail || t > self.published_head {
            return Err(self.fail(Corruption::Tail {
                tail: t,
                previous: self.cached_tail,
                head: self.published_head,
            }));
        }
        if !t.is_multiple_of(FRAME_ALIGN as u64) {
            return Err(self.fail(Corruption::Misaligned { value: t }));
        }
        self.cached_tail = t;
        Ok(())
    }

    /// Reserves room for a frame of up to `len` payload bytes.
    ///
    /// Returns `Ok(None)` when the ring is too full right now.
    pub fn try_reserve(&mut self, len: usize) -> Result<Option<Reservation<'_>>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let max = self.max_payload();
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        let size = align_frame((FRAME_HEADER + len) as u64);
        let off = self.local_head & self.mask;
        let contiguous = self.capacity - off;
        let pad = if size > contiguous { contiguous } else { 0 };
        let need = pad + size;
        if self.capacity - (self.local_head - self.cached_tail) < need {
            self.refresh_tail()?;
            if self.capacity - (self.local_head - self.cached_tail) < need {
                return Ok(None);
            }
        }
        let mut offset = off as usize;
        if pad > 0 {
            self.data.write_u64(
                offset,
                header((pad as usize - FRAME_HEADER) as u32, KIND_PADDING),
            );
            self.local_head += pad;
            offset = 0;
        }
        Ok(Some(Reservation {
            producer: self,
            offset,
            len,
            #[cfg(loom)]
            scratch: vec![0; len],
        }))
    }

    /// Whether a frame of `len` payload bytes fits now (reloading the
    /// consumer's tail if the cached value says no).
    pub fn ensure_space(&mut self, len: usize) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let max = self.max_payload();
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        let need = self.need(len);
        if self.capacity - (self.local_head - self.cached_tail) >= need {
            return Ok(true);
        }
        self.refresh_tail()?;
        Ok(self.capacity - (self.local_head - self.cached_tail) >= need)
    }

    /// Ring bytes a frame of `len` payload bytes needs at the current
    /// position, including any wrap-around padding.
    fn need(&self, len: usize) -> u64 {
        let size = align_frame((FRAME_HEADER + len) as u64);
        let contiguous = self.capacity - (self.local_head & self.mask);
        if size > contiguous {
            contiguous + size
        } else {
            size
        }
    }

    /// Free bytes as last seen (a lower bound).
    pub fn free_estimate(&self) -> usize {
        (self.capacity - (self.local_head - self.cached_tail)) as usize
    }

    /// Copies `payload` into a new frame of `kind` (committed, not published).
    /// Returns `Ok(false)` when the ring is full.
    pub fn try_push(&mut self, kind: u32, payload: &[u8]) -> Result<bool, RingError> {
        match self.try_reserve(payload.len())? {
            None => Ok(false),
            Some(mut r) => {
                #[cfg(not(loom))]
                r.buf().copy_from_slice(payload);
                #[cfg(loom)]
                r.scratch.copy_from_slice(payload);
                r.commit(kind, payload.len())?;
                Ok(true)
            }
        }
    }

    /// Copies `payload` into a frame and publishes it at once (`try_push` +
    /// `publish`).  Returns `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, kind: u32, payload: &[u8]) -> Result<bool, RingError> {
        let pushed = self.try_push(kind, payload)?;
        if pushed {
            self.publish();
        }
        Ok(pushed)
    }

    /// Makes every committed frame visible to the consumer (one `Release`
    /// store for the whole batch) and wakes it if it is parked.  Returns
    /// whether a wake-up system call was made.
    pub fn publish(&mut self) -> bool {
        if self.local_head == self.published_head {
            return false;
        }
        let ctrl = self.ctrl.get();
        ctrl.producer
            .0
            .seq
            .store(self.local_head, Ordering::Release);
        self.published_head = self.local_head;
        self.stats.publishes += 1;
        let woke = wake_if_parked(&ctrl.data_wait.0);
        if woke {
            self.stats.wake_calls += 1;
        }
        woke
    }

    /// Frames committed but not yet published?
    pub fn has_unpublished(&self) -> bool {
        self.local_head != self.published_head
    }

    /// Parks until the consumer frees space (or `timeout`).  Returns at once
    /// if `need` bytes of frame space are already free.
    pub fn wait_for_space(&mut self, len: usize, timeout: Duration) {
        let need = self.need(len.min(self.max_payload()));
        let ctrl = self.ctrl.get();
        let head = self.local_head;
        let cap = self.capacity;
        park(&ctrl.space_wait.0, timeout, || {
            let t = ctrl.consumer.0.seq.load(Ordering::Acquire);
            // An invalid tail counts as "ready" so the caller re-validates it.
            t > head || cap - (head - t) >= need
        });
    }

    /// Marks the ring closed by the producer and wakes the consumer.
    pub fn close(&mut self) {
        self.publish();
        let ctrl = self.ctrl.get();
        ctrl.producer.0.closed.store(1, Ordering::Release);
        wake_if_parked(&ctrl.data_wait.0);
    }

    /// Whether the consumer announced that it closed the ring.
    pub fn consumer_closed(&self) -> bool {
        self.ctrl.get().consumer.0.closed.load(Ordering::Acquire) != 0
    }
}

impl Consumer {
    /// Builds the consuming half over raw memory.
    ///
    /// # Safety
    ///
    /// As for [`Producer::from_raw`], with "no other `Consumer`".
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_raw(
        ctrl: std::ptr::NonNull<RingControl>,
        data: DataRegion,
        owner: std::sync::Arc<dyn Send + Sync>,
    ) -> Self {
        let ctrl = CtrlRef {
            ptr: ctrl,
            _owner: owner,
        };
        Self::with_ctrl(ctrl, data)
    }

    fn with_ctrl(ctrl: CtrlRef, data: DataRegion) -> Self {
        let capacity = data.len() as u64;
        let tail = ctrl.get().consumer.0.seq.load(Ordering::Relaxed);
        let sane = tail.is_multiple_of(8);
        let tail = if sane { tail } else { 0 };
        Self {
            ctrl,
            data,
            mask: capacity - 1,
            capacity,
            local_tail: tail,
            released_tail: tail,
            cached_head: tail,
            broken: !sane,
            stats: ConsumerStats::default(),
        }
    }

    /// The data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Counters since creation.
    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// Whether an earlier error broke this half.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn fail(&mut self, c: Corruption) -> RingError {
        self.broken = true;
        RingError::Corrupt(c)
    }

    /// Loads and validates the producer's head; returns whether data is there.
    fn refresh_head(&mut self) -> Result<bool, RingError> {
        self.stats.head_refreshes += 1;
        let h = self.ctrl.get().producer.0.seq.load(Ordering::Acquire);
        if h < self.local_tail || h - self.released_tail > self.capacity {
            return Err(self.fail(Corruption::Head {
                head: h,
                tail: self.released_tail,
                capacity: self.capacity,
            }));
        }
        if !h.is_multiple_of(FRAME_ALIGN as u64) {
            return Err(self.fail(Corruption::Misaligned { value: h }));
        }
        self.cached_head = h;
        Ok(h != self.local_tail)
    }

    /// Whether a frame (or padding) is published and unread, reloading the
    /// shared head if the cache says empty.
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if self.local_tail != self.cached_head {
            return Ok(true);
        }
        self.refresh_head()
    }

    /// Reads the next frame, if one is published.  The frame's space is
    /// returned to the producer at the next [`Consumer::release`].
    pub fn try_read(&mut self) -> Result<Option<Frame<'_>>, RingError> {
        Ok(self
            .poll_frame()?
            .map(|(kind, off, len)| self.frame_at(kind, off, len)))
    }

    /// Validates and consumes the next frame; returns `(kind, offset, len)`
    /// of its payload in the data area.  Split from [`Consumer::try_read`] so
    /// blocking callers can loop without holding a borrow.
    pub(crate) fn poll_frame(&mut self) -> Result<Option<(u32, usize, usize)>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        loop {
            if self.local_tail == self.cached_head && !self.refresh_head()? {
                return Ok(None);
            }
            let pos = self.local_tail;
            let off = (pos & self.mask) as usize;
            let contiguous = self.capacity - off as u64;
            let available = self.cached_head - pos;
            let hdr = self.data.read_u64(off);
            let len = hdr as u32;
            let kind = (hdr >> 32) as u32;
            if kind == KIND_PADDING {
                if u64::from(len) + FRAME_HEADER as u64 != contiguous || contiguous > available {
                    return Err(self.fail(Corruption::Padding { position: pos, len }));
                }
                self.local_tail += contiguous;
                continue;
            }
            let size = align_frame(u64::from(len) + FRAME_HEADER as u64);
            let usable = contiguous.min(available);
            if size > usable || len as usize > max_payload(self.capacity as usize) {
                return Err(self.fail(Corruption::FrameLength {
                    position: pos,
                    len,
                    available: usable,
                }));
            }
            self.local_tail += size;
            self.stats.frames += 1;
            return Ok(Some((kind, off + FRAME_HEADER, len as usize)));
        }
    }

    /// The frame whose payload `poll_frame` located.
    pub(crate) fn frame_at(&self, kind: u32, off: usize, len: usize) -> Frame<'_> {
        Frame {
            kind,
            #[cfg(not(loom))]
            payload: self.data.bytes(off, len),
            #[cfg(loom)]
            payload: self.data.copy_out(off, len),
            #[cfg(loom)]
            _life: std::marker::PhantomData,
        }
    }

    /// Bytes read but not yet released to the producer.
    pub fn unreleased(&self) -> usize {
        (self.local_tail - self.released_tail) as usize
    }

    /// Returns the space of every frame read so far to the producer (one
    /// `Release` store) and wakes it if it waits for space.
    pub fn release(&mut self) -> bool {
        if self.local_tail == self.released_tail {
            return false;
        }
        let ctrl = self.ctrl.get();
        ctrl.consumer
            .0
            .seq
            .store(self.local_tail, Ordering::Release);
        self.released_tail = self.local_tail;
        self.stats.releases += 1;
        let woke = wake_if_parked(&ctrl.space_wait.0);
        if woke {
            self.stats.wake_calls += 1;
        }
        woke
    }

    /// Parks until the producer publishes (or `timeout`).  Returns at once if
    /// data is already there or the producer closed the ring.
    pub fn wait_for_data(&mut self, timeout: Duration) {
        if self.local_tail != self.cached_head {
            return;
        }
        let ctrl = self.ctrl.get();
        let tail = self.local_tail;
        park(&ctrl.data_wait.0, timeout, || {
            ctrl.producer.0.seq.load(Ordering::Acquire) != tail
                || ctrl.producer.0.closed.load(Ordering::Acquire) != 0
        });
    }

    /// Whether the producer closed the ring (frames may still be unread).
    pub fn producer_closed(&self) -> bool {
        self.ctrl.get().producer.0.closed.load(Ordering::Acquire) != 0
    }

    /// Marks the ring closed by the consumer and wakes a waiting producer.
    pub fn close(&mut self) {
        self.release();
        let ctrl = self.ctrl.get();
        ctrl.consumer.0.closed.store(1, Ordering::Release);
        wake_if_parked(&ctrl.space_wait.0);
    }
}

/// A ring in private memory: both halves in this process.  Used by tests,
/// benchmarks and the loom model.
#[cfg(not(loom))]
pub fn heap_ring(capacity: usize) -> std::io::Result<(Producer, Consumer)> {
    if !valid_capacity(capacity) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "ring capacity {capacity} is not a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]"
            ),
        ));
    }
    let map = memmap2::MmapMut::map_anon(RingControl::SIZE + capacity)?;
    let base = std::ptr::NonNull::new(map.as_ptr().cast_mut())
        .ok_or_else(|| std::io::Error::other("anonymous mapping returned a null pointer"))?;
    let owner: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(map);
    // SAFETY: the mapping is `RingControl::SIZE + capacity` bytes long.
    let data = unsafe { base.add(RingControl::SIZE) };
    // SAFETY: the anonymous mapping is page-aligned, zeroed (a valid empty
    // control block), `RingControl::SIZE + capacity` bytes long and kept
    // alive by `owner`, which both halves hold; exactly one producer and one
    // consumer are created (this and the next three blocks).
    let p_data = unsafe { DataRegion::new(data, capacity) };
    // SAFETY: as above.
    let c_data = unsafe { DataRegion::new(data, capacity) };
    // SAFETY: as above.
    let p = unsafe { Producer::from_raw(base.cast(), p_data, owner.clone()) };
    // SAFETY: as above.
    let c = unsafe { Consumer::from_raw(base.cast(), c_data, owner) };
    Ok((p, c))
}

/// A loom-modelled ring: both halves over a heap control block.
#[cfg(loom)]
pub fn loom_ring(capacity: usize) -> (Producer, Consumer) {
    let ctrl = std::sync::Arc::new(RingControl::new());
    let data = DataRegion::new_model(capacity);
    let p = Producer::with_ctrl(CtrlRef { arc: ctrl.clone() }, data.clone());
    let c = Consumer::with_ctrl(CtrlRef { arc: ctrl }, data);
    (p, c)
}

/// Runs a consumer over a ring whose control words and data come from
/// `input` (an untrusted peer's view).  Used by the fuzz targets and by the
/// randomized test in the normal suite; returns the number of frames read.
/// It must never panic, loop forever or touch memory outside the ring.
#[cfg(not(loom))]
#[doc(hidden)]
pub fn fuzz_frame_reader(input: &[u8]) -> usize {
    const CAP: usize = MIN_CAPACITY;
    let Ok(map) = memmap2::MmapMut::map_anon(RingControl::SIZE + CAP) else {
        return 0;
    };
    let Some(base) = std::ptr::NonNull::new(map.as_ptr().cast_mut()) else {
        return 0;
    };
    let owner: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(map);
    let word = |i: usize| -> u64 {
        let mut b = [0u8; 8];
        for (j, slot) in b.iter_mut().enumerate() {
            *slot = input.get(i * 8 + j).copied().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    // SAFETY: the mapping is SIZE + CAP bytes long.
    let data_ptr = unsafe { base.add(RingControl::SIZE) };
    // SAFETY: mapping alive via `owner`, 8-aligned, CAP bytes.
    let mut data = unsafe { DataRegion::new(data_ptr, CAP) };
    let body = input.get(32..).unwrap_or(&[]);
    for (i, chunk) in body.chunks(8).take(CAP / 8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        data.write_u64(i * 8, u64::from_le_bytes(b));
    }
    // SAFETY: as for `heap_ring`: zeroed control block kept alive by `owner`.
    let ctrl = unsafe { base.cast::<RingControl>().as_ref() };
    ctrl.consumer.0.seq.store(word(0), Ordering::Relaxed);
    ctrl.producer.0.seq.store(word(1), Ordering::Relaxed);
    // SAFETY: as above; the only consumer of this private ring.
    let mut c = unsafe { Consumer::from_raw(base.cast(), data, owner) };
    let mut frames = 0;
    for step in 0..4096 {
        if let Ok(Some(f)) = c.try_read() {
            frames += 1;
            std::hint::black_box(f.payload().iter().fold(0u8, |a, b| a ^ b));
        }
        if step % 3 == 0 {
            c.release();
        }
        // The rogue producer moves its head by a value taken from the input.
        ctrl.producer.0.seq.store(
            word(1).wrapping_add(word(2 + step % 2).wrapping_mul(step as u64)),
            Ordering::Relaxed,
        );
        if c.is_broken() && step > 8 {
            break;
        }
    }
    frames
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn payload(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7)) as u8)
            .collect()
    }

    #[test]
    fn send_and_read_one_frame() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        assert!(c.try_read().unwrap().is_none());
        assert!(p.try_send(5, b"hello").unwrap());
        let f = c.try_read().unwrap().unwrap();
        assert_eq!((f.kind, f.payload()), (5, &b"hello"[..]));
        assert!(c.try_read().unwrap().is_none());
    }

    #[test]
    fn frames_are_invisible_until_published() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        assert!(p.try_push(1, b"a").unwrap());
        assert!(p.try_push(2, b"bb").unwrap());
        assert!(c.try_read().unwrap().is_none());
        p.publish();
        assert_eq!(c.try_read().unwrap().unwrap().kind, 1);
        assert_eq!(c.try_read().unwrap().unwrap().payload(), b"bb");
        assert_eq!(p.stats().publishes, 1);
    }

    #[test]
    fn zero_copy_reserve_commit_uses_only_what_was_written() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        let mut r = p.try_reserve(100).unwrap().unwrap();
        r.buf()[..3].copy_from_slice(b"xyz");
        r.commit(9, 3).unwrap();
        p.publish();
        let f = c.try_read().unwrap().unwrap();
        assert_eq!((f.kind, f.payload()), (9, &b"xyz"[..]));
    }

    #[test]
    fn kind_zero_and_oversized_frames_are_refused() {
        let (mut p, _c) = heap_ring(4096).unwrap();
        assert_eq!(p.try_push(0, b"x"), Err(RingError::ReservedKind));
        assert!(matches!(
            p.try_push(1, &vec![0; 4096]),
            Err(RingError::TooLarge { .. })
        ));
        assert!(p.try_push(1, &vec![0; max_payload(4096)]).unwrap());
    }

    #[test]
    fn full_ring_reports_full_then_recovers_after_release() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        let mut n = 0;
        while p.try_push(1, &[7; 100]).unwrap() {
            n += 1;
        }
        assert_eq!(n, 4096 / 112);
        p.publish();
        for _ in 0..n {
            assert!(c.try_read().unwrap().is_some());
        }
        assert!(!p.try_push(1, &[7; 100]).unwrap(), "space not released yet");
        c.release();
        assert!(p.try_push(1, &[7; 100]).unwrap());
    }

    #[test]
    fn wrap_around_inserts_padding() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        // Advance to near the end, then send a frame that cannot fit there.
        for _ in 0..3 {
            assert!(p.try_send(1, &[1; 1200]).unwrap());
            c.try_read().unwrap().unwrap();
            c.release();
        }
        assert!(p.try_send(2, &[2; 1500]).unwrap());
        let f = c.try_read().unwrap().unwrap();
        assert_eq!((f.kind, f.payload().len()), (2, 1500));
    }

    #[test]
    fn awake_reader_streaming_makes_no_wake_calls() {
        let (mut p, mut c) = heap_ring(1 << 16).unwrap();
        for i in 0..100_000u64 {
            while !p.try_send(1, &i.to_le_bytes()).unwrap() {
                while c.try_read().unwrap().is_some() {}
                c.release();
            }
        }
        assert_eq!(p.stats().wake_calls, 0);
        assert_eq!(c.stats().wake_calls, 0);
    }

    #[test]
    fn corrupt_head_is_detected_and_breaks_the_ring() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        p.try_send(1, b"ok").unwrap();
        // A rogue producer claims more bytes than the ring holds.
        p.ctrl
            .get()
            .producer
            .0
            .seq
            .store(1 << 40, Ordering::Release);
        assert!(matches!(
            c.try_read(),
            Err(RingError::Corrupt(Corruption::Head { .. }))
        ));
        assert_eq!(c.try_read().unwrap_err(), RingError::Broken);
    }

    #[test]
    fn corrupt_frame_length_is_detected() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        p.try_send(1, b"hello").unwrap();
        p.data.write_u64(0, header(4000, 1));
        assert!(matches!(
            c.try_read(),
            Err(RingError::Corrupt(Corruption::FrameLength { .. }))
        ));
    }

    #[test]
    fn bogus_padding_is_detected() {
        let (mut p, mut c) = heap_ring(4096).unwrap();
        p.try_send(1, b"hello").unwrap();
        p.data.write_u64(0, header(8, KIND_PADDING));
        assert!(matches!(
            c.try_read(),
            Err(RingError::Corrupt(Corruption::Padding { .. }))
        ));
    }

    #[test]
    fn corrupt_tail_is_detected_by_the_producer() {
        let (mut p, c) = heap_ring(4096).unwrap();
        // The tail claims more was consumed than was ever published; the
        // producer notices as soon as it needs to look at the tail.
        c.ctrl
            .get()
            .consumer
            .0
            .seq
            .store(1 << 40, Ordering::Release);
        let err = loop {
            match p.try_push(1, &[0; 500]) {
                Err(e) => break e,
                Ok(true) => p.publish(),
                Ok(false) => panic!("full ring without a tail check"),
            };
        };
        assert!(
            matches!(err, RingError::Corrupt(Corruption::Tail { .. })),
            "{err:?}"
        );
        assert_eq!(p.try_push(1, b"x"), Err(RingError::Broken));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        /// 100,000 random inputs through the same entry point as the
        /// fuzzer; half of them biased towards plausible counters so that
        /// deep paths run.
        #[test]
        fn random_peer_bytes_never_panic(
            mut input in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            plausible: bool,
            tail in 0u64..8192,
            ahead in 0u64..4200,
        ) {
            if plausible && input.len() >= 16 {
                let tail = tail & !7;
                input[..8].copy_from_slice(&tail.to_le_bytes());
                input[8..16].copy_from_slice(&(tail + ahead).to_le_bytes());
            }
            fuzz_frame_reader(&input);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { len: usize, kind: u32 },
        Reserve { len: usize, used: usize },
        Publish,
        Read(usize),
        Release,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..600, 1u32..5).prop_map(|(len, kind)| Op::Push { len, kind }),
            1 => (0usize..2040, 0usize..2040).prop_map(|(len, used)| Op::Reserve { len, used: used.min(len) }),
            2 => Just(Op::Publish),
            3 => (1usize..8).prop_map(Op::Read),
            2 => Just(Op::Release),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The ring behaves like a FIFO queue with explicit publication.
        #[test]
        fn ring_matches_vecdeque_model(ops in proptest::collection::vec(op(), 1..400)) {
            let (mut p, mut c) = heap_ring(4096).unwrap();
            let mut pending: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
            let mut visible: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
            let mut unreleased = 0usize;
            let mut seed = 0u64;
            for op in ops {
                match op {
                    Op::Push { len, kind } => {
                        seed += 1;
                        let data = payload(seed, len);
                        let pushed = p.try_push(kind, &data).unwrap();
                        if pushed {
                            pending.push_back((kind, data));
                        } else {
                            // Full is only possible while bytes are in flight.
                            prop_assert!(!pending.is_empty() || !visible.is_empty() || unreleased > 0);
                        }
                    }
                    Op::Reserve { len, used } => {
                        seed += 1;
                        let data = payload(seed, used);
                        if let Some(mut r) = p.try_reserve(len).unwrap() {
                            r.buf()[..used].copy_from_slice(&data);
                            r.commit(3, used).unwrap();
                            pending.push_back((3, data));
                        }
                    }
                    Op::Publish => {
                        p.publish();
                        visible.extend(pending.drain(..));
                    }
                    Op::Read(n) => {
                        for _ in 0..n {
                            match c.try_read().unwrap() {
                                Some(f) => {
                                    let want = visible.pop_front();
                                    prop_assert_eq!(Some((f.kind, f.payload().to_vec())), want);
                                    unreleased += 1;
                                }
                                None => prop_assert!(visible.is_empty()),
                            }
                        }
                    }
                    Op::Release => {
                        c.release();
                        unreleased = 0;
                    }
                }
            }
            // Drain everything: the model and the ring agree to the end.
            p.publish();
            visible.extend(pending.drain(..));
            while let Some(f) = c.try_read().unwrap() {
                prop_assert_eq!(Some((f.kind, f.payload().to_vec())), visible.pop_front());
            }
            prop_assert!(visible.is_empty());
            // An empty, released ring always has room for a maximal frame.
            c.release();
            prop_assert!(p.try_push(1, &vec![0; p.max_payload()]).unwrap());
        }
    }
}
