//! Attacks on a live segment, made as a rogue peer would make them: every
//! way a compromised or buggy child can corrupt what the other side reads.
//! The failure-model tests attach to a running child's segment (through
//! `/proc/<pid>/fd/3`) and apply each attack between two ticks, to show that
//! whatever a child writes ends as a recovered failure of that child, never
//! as a failure of the run.  Not for production use.

use crate::ring::{FRAME_HEADER, KIND_PADDING, RingControl};
use crate::segment::{Mapping, Segment, SegmentInfo};
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// A segment to attack: keeps its mapping alive (a process can attack its
/// own segment while its endpoint is in use).
#[derive(Debug, Clone)]
pub struct Target {
    mapping: Arc<Mapping>,
    info: SegmentInfo,
}

impl Target {
    /// The segment behind `seg`.
    pub fn of(seg: &Segment) -> Self {
        Self {
            mapping: seg.mapping(),
            info: seg.info().clone(),
        }
    }
}

/// Which ring of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Supervisor → child (the child reads it).
    Down,
    /// Child → supervisor (the supervisor reads it).
    Up,
}

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A frame header claiming 4 GiB − 1 bytes, published.
    HugeFrameLength,
    /// The producer's head moved far beyond the data area.
    AbsurdHead,
    /// The producer's head moved by a few bytes (not a multiple of 8).
    MisalignedHead,
    /// Random bytes over the whole data area, then a frame's worth
    /// published.
    RandomData(u64),
    /// A well-framed message frame whose payload is not a message.
    GarbageMessage,
    /// A well-framed frame of a kind nobody speaks.
    UnknownKind,
    /// A padding frame in the middle of the data area.
    MidPadding,
    /// The consumer's tail moved backwards past its start (the producer
    /// reads it).
    TailBackwards,
    /// The header's magic, sizes and ring geometry overwritten (read only
    /// at attach time, so nothing may change).
    HeaderFields,
    /// The ring's "producer closed" flag set (a clean close nobody asked
    /// for).
    ClosedFlag,
}

impl Attack {
    /// Every attack, with a fixed seed for the random one.
    pub const ALL: [Attack; 10] = [
        Attack::HugeFrameLength,
        Attack::AbsurdHead,
        Attack::MisalignedHead,
        Attack::RandomData(0x5eed),
        Attack::GarbageMessage,
        Attack::UnknownKind,
        Attack::MidPadding,
        Attack::TailBackwards,
        Attack::HeaderFields,
        Attack::ClosedFlag,
    ];

    /// The attack's name in fault-injection directives.
    pub fn name(self) -> &'static str {
        match self {
            Attack::HugeFrameLength => "huge-frame",
            Attack::AbsurdHead => "absurd-head",
            Attack::MisalignedHead => "misaligned-head",
            Attack::RandomData(_) => "random-data",
            Attack::GarbageMessage => "garbage-message",
            Attack::UnknownKind => "unknown-kind",
            Attack::MidPadding => "mid-padding",
            Attack::TailBackwards => "tail-backwards",
            Attack::HeaderFields => "header-fields",
            Attack::ClosedFlag => "closed-flag",
        }
    }

    /// The attack named `name` (see [`Attack::name`]).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the reader of the attacked ring must notice (the others —
    /// header fields read only at attach, a tail the producer may not
    /// re-read soon — must merely do no harm).
    pub fn must_be_noticed(self) -> bool {
        !matches!(self, Attack::HeaderFields | Attack::TailBackwards)
    }
}

fn atomic_u64(seg: &Target, off: usize) -> &AtomicU64 {
    let (base, _) = seg.mapping.raw();
    // SAFETY: `off` is a valid, 8-aligned offset inside `seg`'s mapping.
    let p = unsafe { base.add(off) }.cast::<AtomicU64>();
    // SAFETY: the mapping lives as long as the borrow of `seg`; shared
    // memory is accessed through atomics only, as the peers do.
    unsafe { &*p }
}

fn atomic_u32(seg: &Target, off: usize) -> &AtomicU32 {
    let (base, _) = seg.mapping.raw();
    // SAFETY: as for `atomic_u64`, 4-aligned.
    let p = unsafe { base.add(off) }.cast::<AtomicU32>();
    // SAFETY: as for `atomic_u64`.
    unsafe { &*p }
}

fn write_bytes(base: *mut u8, off: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: the caller checked that `off + bytes.len()` lies inside the
        // mapping.
        let p = unsafe { base.add(off + i) };
        // SAFETY: as above; this is deliberately the rogue peer's racy store.
        unsafe { p.write_volatile(*b) };
    }
}

/// Whether the reader of `ring` has consumed everything published on it.
pub fn drained(seg: &Target, ring: Ring) -> bool {
    let idx = match ring {
        Ring::Down => 0,
        Ring::Up => 1,
    };
    let off = seg.info.offsets[idx];
    atomic_u64(seg, off + 128).load(Ordering::Acquire)
        == atomic_u64(seg, off).load(Ordering::Acquire)
}

/// Applies `attack` to `ring` of `seg`: a process's own segment (a rogue
/// child), or one attached as a third party to a running child's memfd.
pub fn attack(seg: &Target, ring: Ring, attack: Attack) {
    let (base, len) = seg.mapping.raw();
    let idx = match ring {
        Ring::Down => 0,
        Ring::Up => 1,
    };
    let info = &seg.info;
    let ring_off = info.offsets[idx];
    let cap = info.capacities[idx];
    if ring_off + RingControl::SIZE + cap > len {
        return;
    }
    // RingControl: producer line (seq u64) at 0, consumer line at 128.
    let head = atomic_u64(seg, ring_off);
    let tail = atomic_u64(seg, ring_off + 128);
    let data = ring_off + RingControl::SIZE;
    let h = head.load(Ordering::Acquire);
    let pos = (h % cap as u64) as usize;
    let room = cap - pos;
    let frame = |kind: u32, payload: &[u8]| {
        let n = FRAME_HEADER + payload.len();
        if n > room {
            return;
        }
        let mut f = Vec::with_capacity(n);
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(payload);
        write_bytes(base, data + pos, &f);
        head.store(h + n.next_multiple_of(8) as u64, Ordering::Release);
    };
    match attack {
        Attack::HugeFrameLength => {
            if room >= FRAME_HEADER {
                let mut f = Vec::new();
                f.extend_from_slice(&u32::MAX.to_le_bytes());
                f.extend_from_slice(&1u32.to_le_bytes());
                write_bytes(base, data + pos, &f);
                head.store(h + 64, Ordering::Release);
            }
        }
        Attack::AbsurdHead => head.store(h + 16 * cap as u64, Ordering::Release),
        Attack::MisalignedHead => head.store(h + 3, Ordering::Release),
        Attack::RandomData(seed) => {
            let mut x = seed;
            let mut noise = vec![0u8; cap];
            for b in &mut noise {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            write_bytes(base, data, &noise);
            head.store(h + 256, Ordering::Release);
        }
        Attack::GarbageMessage => frame(crate::codec::KIND_MESSAGE, &[0xFF; 40]),
        Attack::UnknownKind => frame(77, &[1, 2, 3, 4, 5, 6, 7, 8]),
        Attack::MidPadding => frame(KIND_PADDING, &[0; 16]),
        Attack::TailBackwards => {
            let t = tail.load(Ordering::Acquire);
            tail.store(t.wrapping_sub(8 * cap as u64), Ordering::Release);
        }
        Attack::HeaderFields => {
            // magic, layout version, header size, total size, ring geometry.
            for off in [0usize, 16, 24, 32, 40, 48] {
                atomic_u64(seg, off).store(u64::MAX, Ordering::Release);
            }
            atomic_u32(seg, 8).store(u32::MAX, Ordering::Release);
        }
        Attack::ClosedFlag => {
            // RingControl: the producer line's `closed` is at +8.
            atomic_u32(seg, ring_off + 8).store(1, Ordering::Release);
        }
    }
}
