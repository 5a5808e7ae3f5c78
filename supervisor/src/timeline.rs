//! Where a tick's inputs come from and what becomes of its record: the one
//! place that tells a live tick from a recorded one.
//!
//! A live tick takes the inputs accepted since the previous tick (the
//! control socket, the library API) and writes its record to the journal.
//! A recorded tick — `replay`, `verify`, `fork`, and the catching up of
//! `resume` — takes the journaled inputs and decisions instead, writes
//! nothing, and must reproduce the journaled tick hash.  After the last
//! recorded tick a timeline is live (that is how `resume` goes on).

use crate::journal::Answer;
use crate::sim::{Decision, Input};
use std::collections::{BTreeMap, BTreeSet};

/// Recorded inputs, decisions and tick hashes to re-execute.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Inputs by the tick they apply at, in journal order.
    pub inputs: BTreeMap<u64, Vec<Input>>,
    /// Decisions by tick.
    pub decisions: BTreeMap<u64, Vec<Decision>>,
    /// Recorded tick hashes to check.
    pub hashes: BTreeMap<u64, [u8; 32]>,
    /// Recorded inference answers by the tick they were delivered after:
    /// those computed on another device than the re-execution's are
    /// compared within their model's tolerance and delivered as recorded.
    pub answers: BTreeMap<u64, Vec<Answer>>,
    /// Ticks whose checkpoint the journal records.
    pub checkpoints: BTreeSet<u64>,
    /// Re-execute ticks up to and including this one.
    pub until: u64,
}

/// A recorded tick hash that was not reproduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The tick.
    pub tick: u64,
    /// Recorded hash.
    pub expected: [u8; 32],
    /// Re-executed hash.
    pub actual: [u8; 32],
}

/// Live, or re-executing a script (see the module docs).
#[derive(Debug, Clone, Default)]
pub enum Timeline {
    /// Every tick is live.
    #[default]
    Live,
    /// Ticks up to the script's `until` are recorded ones.
    Replay(Script),
}

impl Timeline {
    /// Whether `tick` is a recorded one.
    pub fn recorded(&self, tick: u64) -> bool {
        matches!(self, Timeline::Replay(s) if tick <= s.until)
    }

    /// The recorded inputs and decisions of `tick`.  Inputs recorded for
    /// the tick after the last recorded one (accepted before a crash, and
    /// kept by `resume`) are taken too; decisions only for recorded ticks
    /// (a live tick takes its own).
    pub fn take(&mut self, tick: u64) -> (Vec<Input>, Vec<Decision>) {
        match self {
            Timeline::Replay(s) => {
                let inputs = s.inputs.remove(&tick).unwrap_or_default();
                let decisions = if tick <= s.until {
                    s.decisions.remove(&tick).unwrap_or_default()
                } else {
                    Vec::new()
                };
                (inputs, decisions)
            }
            Timeline::Live => (Vec::new(), Vec::new()),
        }
    }

    /// The inference answers recorded after `tick` (empty for a live tick
    /// or one that recorded none).
    pub fn take_answers(&mut self, tick: u64) -> Vec<Answer> {
        match self {
            Timeline::Replay(s) if tick <= s.until => s.answers.remove(&tick).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether the journal records a checkpoint after `tick` (one that a
    /// re-execution must reproduce rather than take anew: a crash can cut
    /// a run after a tick and before its checkpoint).
    pub fn checkpoint_recorded(&self, tick: u64) -> bool {
        matches!(self, Timeline::Replay(s) if s.checkpoints.contains(&tick))
    }

    /// Checks a re-executed tick's hash against the record.
    pub fn check(&self, tick: u64, hash: &[u8; 32]) -> Result<(), Mismatch> {
        match self {
            Timeline::Replay(s) => match s.hashes.get(&tick) {
                Some(want) if want != hash => Err(Mismatch {
                    tick,
                    expected: *want,
                    actual: *hash,
                }),
                _ => Ok(()),
            },
            Timeline::Live => Ok(()),
        }
    }

    /// Goes on re-executing the recorded inputs and decisions without
    /// checking hashes (`verify`, after a divergence, runs to the end of
    /// the segment to compare the states there).
    pub fn unchecked(&mut self) {
        if let Timeline::Replay(s) = self {
            s.hashes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ticks_replay_their_inputs_then_the_timeline_is_live() {
        let mut s = Script {
            until: 3,
            ..Script::default()
        };
        s.inputs
            .insert(2, vec![Input::StopAgent { agent: "a".into() }]);
        s.hashes.insert(2, [7; 32]);
        let mut t = Timeline::Replay(s);
        assert!(t.recorded(3) && !t.recorded(4));
        assert_eq!(t.take(2).0.len(), 1);
        assert!(t.check(2, &[7; 32]).is_ok());
        assert_eq!(t.check(2, &[8; 32]).unwrap_err().tick, 2);
        t.unchecked();
        assert!(
            t.check(2, &[8; 32]).is_ok(),
            "hashes are dropped, not inputs"
        );
        assert!(Timeline::Live.take(1).0.is_empty());
    }
}
