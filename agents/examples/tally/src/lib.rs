//! Counts every message it receives per sender and checks `seq` continuity of direct messages (chaos tests).
//!
//! For each sender the first direct message sets the baseline; after that
//! every direct message must carry `seq = previous + 1`.  A repeated or older
//! `seq` is a duplicate (agent error [`ERR_DUPLICATE`]), a jump is a gap
//! ([`ERR_GAP`]); either is logged at error level first.  This assumes the
//! senders under test address all their output to this agent, so their
//! per-agent output sequence is contiguous here.
//!
//! The counts are exposed in linear memory: `tally_entries()` returns the
//! address of `tally_senders()` [`Entry`] records (40 bytes each, sorted by
//! sender), valid until the next call into the agent.  `tally_total()`,
//! `tally_errors()` and `tally_count_from(sender)` are convenience exports.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lockstep_agent_sdk::{Agent, Message, MessageKind, StepContext, error, export_agent, info};

/// Agent error: a direct message repeated (or went back in) `seq`.
pub const ERR_DUPLICATE: i32 = 1;
/// Agent error: a direct message skipped `seq` values.
pub const ERR_GAP: i32 = 2;

/// Per-sender record, as laid out in memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sender agent id (`u64::MAX` for the runtime).
    pub sender: u64,
    /// Messages of any kind received from this sender.
    pub count: u64,
    /// Direct messages received from this sender.
    pub direct: u64,
    /// `seq` of the first direct message.
    pub first_seq: u64,
    /// `seq` of the last in-order direct message.
    pub last_seq: u64,
}

static ENTRIES_PTR: AtomicUsize = AtomicUsize::new(0);
static ENTRIES_LEN: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// The tally agent.
#[derive(Debug)]
pub struct Tally {
    entries: Vec<Entry>,
}

impl Tally {
    fn publish(&self) {
        ENTRIES_PTR.store(self.entries.as_ptr() as usize, Ordering::Relaxed);
        ENTRIES_LEN.store(self.entries.len(), Ordering::Relaxed);
    }

    /// Records `msg`; `Err` with the agent error code on a continuity breach.
    pub fn record(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        TOTAL.fetch_add(1, Ordering::Relaxed);
        let i = match self.entries.binary_search_by_key(&msg.sender, |e| e.sender) {
            Ok(i) => i,
            Err(i) => {
                let e = Entry {
                    sender: msg.sender,
                    count: 0,
                    direct: 0,
                    first_seq: 0,
                    last_seq: 0,
                };
                self.entries.insert(i, e);
                i
            }
        };
        let e = &mut self.entries[i];
        e.count += 1;
        let mut result = Ok(());
        if msg.kind == MessageKind::Direct {
            e.direct += 1;
            if e.direct == 1 {
                e.first_seq = msg.seq;
                e.last_seq = msg.seq;
            } else if msg.seq == e.last_seq.wrapping_add(1) {
                e.last_seq = msg.seq;
            } else if msg.seq <= e.last_seq {
                let _ = error!(
                    "tally: duplicate seq {} from {} (last {}, tick {})",
                    msg.seq, msg.sender, e.last_seq, msg.sent_tick
                );
                result = Err(ERR_DUPLICATE);
            } else {
                let _ = error!(
                    "tally: gap from {}: seq {} after {} ({} missing, tick {})",
                    msg.sender,
                    msg.seq,
                    e.last_seq,
                    msg.seq - e.last_seq - 1,
                    msg.sent_tick
                );
                e.last_seq = msg.seq;
                result = Err(ERR_GAP);
            }
        }
        if result.is_err() {
            ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        self.publish();
        result
    }
}

impl Agent for Tally {
    fn init() -> Self {
        TOTAL.store(0, Ordering::Relaxed);
        ERRORS.store(0, Ordering::Relaxed);
        let t = Tally {
            entries: Vec::new(),
        };
        t.publish();
        t
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if ctx.tick % 100 == 0 {
            let _ = info!(
                "tally: tick {} messages {} senders {} errors {}",
                ctx.tick,
                TOTAL.load(Ordering::Relaxed),
                self.entries.len(),
                ERRORS.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        self.record(msg)
    }
}

export_agent!(Tally);

fn entries() -> &'static [Entry] {
    let ptr = ENTRIES_PTR.load(Ordering::Relaxed) as *const Entry;
    if ptr.is_null() {
        return &[];
    }
    // SAFETY: `ptr`/`len` were published from the live `Vec<Entry>` after its
    // last change; exports run one at a time, so it cannot change or be freed
    // while the returned slice is used (only within the calling export).
    unsafe { core::slice::from_raw_parts(ptr, ENTRIES_LEN.load(Ordering::Relaxed)) }
}

/// Extra export (ignored by the runtime): address of the [`Entry`] array.
#[unsafe(no_mangle)]
pub extern "C" fn tally_entries() -> i32 {
    entries().as_ptr() as usize as i32
}

/// Extra export (ignored by the runtime): number of senders seen.
#[unsafe(no_mangle)]
pub extern "C" fn tally_senders() -> i32 {
    entries().len() as i32
}

/// Extra export (ignored by the runtime): messages received since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn tally_total() -> i64 {
    TOTAL.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): continuity errors detected.
#[unsafe(no_mangle)]
pub extern "C" fn tally_errors() -> i64 {
    ERRORS.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): messages received from `sender`.
#[unsafe(no_mangle)]
pub extern "C" fn tally_count_from(sender: i64) -> i64 {
    let s = entries();
    match s.binary_search_by_key(&(sender as u64), |e| e.sender) {
        Ok(i) => s[i].count as i64,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(sender: u64, seq: u64) -> Message<'static> {
        Message {
            size: 48,
            kind: MessageKind::Direct,
            sender,
            sent_tick: seq,
            seq,
            topic: b"",
            payload: b"",
        }
    }

    #[test]
    fn continuity() {
        let mut t = Tally::init();
        assert_eq!(t.record(&direct(3, 5)), Ok(()));
        assert_eq!(t.record(&direct(3, 6)), Ok(()));
        assert_eq!(t.record(&direct(2, 1)), Ok(()));
        assert_eq!(t.record(&direct(3, 6)), Err(ERR_DUPLICATE));
        assert_eq!(t.record(&direct(3, 9)), Err(ERR_GAP));
        assert_eq!(t.record(&direct(3, 10)), Ok(()));
        let topic = Message {
            kind: MessageKind::Topic,
            topic: b"t",
            ..direct(3, 100)
        };
        assert_eq!(t.record(&topic), Ok(()), "only direct messages are checked");
        assert_eq!(
            t.entries,
            [
                Entry {
                    sender: 2,
                    count: 1,
                    direct: 1,
                    first_seq: 1,
                    last_seq: 1
                },
                Entry {
                    sender: 3,
                    count: 6,
                    direct: 5,
                    first_seq: 5,
                    last_seq: 10
                },
            ]
        );
        assert_eq!(tally_count_from(3), 6);
        assert_eq!(tally_senders(), 2);
        assert_eq!(tally_total(), 7);
        assert_eq!(tally_errors(), 2);
    }
}
