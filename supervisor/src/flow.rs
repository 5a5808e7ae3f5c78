//! The message flow for viewers: who sent to whom over the last
//! [`FLOW_WINDOW_TICKS`] ticks, published on the state board as its
//! heaviest [`MAX_FLOW_EDGES`] edges.
//!
//! Observation only: [`FlowWindow`] reads the outputs of a tick's results
//! after the barrier has routed them (the destinations are still there,
//! the payloads have moved on) and keeps its own counters; nothing here is
//! read by the state machine, journaled or hashed.
//!
//! # Cost and bounds
//!
//! One hash-map update per message sent (direct, topic or channel; an edge
//! is counted once per message however many agents receive it), nothing
//! for a tick without messages.  Each tracked edge keeps one counter per
//! tick of the window (a ring of [`FLOW_WINDOW_TICKS`] `u32`s, ≈ 280 bytes),
//! and at most [`MAX_TRACKED_EDGES`] edges are tracked at once (≈ 4.6 MiB
//! at most): once that many are, messages on edges not yet tracked are
//! counted in the window's total only, until edges idle for a whole window
//! are swept (every [`FLOW_WINDOW_TICKS`] ticks).  Agents choose
//! destination ids and topic names, so both maps hash with per-process
//! random keys: names with the standard library's SipHash, edges with a
//! cheaper seeded multiply-fold (≈ 20 ns per direct message, against ≈ 50
//! with SipHash, at 10,000 messages per tick on the 2-vCPU machine of
//! docs/benchmarks.md).

use lockstep_common::live::{FLOW_WINDOW_TICKS, Flow, FlowEdge, FlowTarget, MAX_FLOW_EDGES};
use shm_protocol::worker::{AgentResult, OutputRef};
use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

/// Most edges tracked at once.
pub const MAX_TRACKED_EDGES: usize = 16_384;

const W: u64 = FLOW_WINDOW_TICKS;

/// Where a message went, as an output names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    /// A direct message to an agent.
    Agent(u64),
    /// A publication on a topic.
    Topic(&'a str),
    /// A message to a channel.
    Channel(&'a str),
}

impl<'a> Dest<'a> {
    /// The destination of a routed output, if it is a message.
    pub fn of(o: OutputRef<'a>) -> Option<Self> {
        match o {
            OutputRef::Send { to, .. } => Some(Self::Agent(to)),
            OutputRef::Publish { topic, .. } => Some(Self::Topic(topic)),
            OutputRef::ChannelSend { channel, .. } => Some(Self::Channel(channel)),
            _ => None,
        }
    }
}

/// An edge: sender, kind (0 direct, 1 topic, 2 channel) and receiver (an
/// agent id, or the index of a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    from: u64,
    kind: u8,
    to: u64,
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.from ^ (u64::from(self.kind) << 62));
        state.write_u64(self.to);
    }
}

/// The edges' hasher: two folded 64 × 64 → 128-bit multiplications per
/// key with a per-process random seed (a receiver id an agent chooses
/// cannot be aimed at one bucket without knowing the seed), far cheaper
/// than SipHash for two words.
#[derive(Debug, Clone, Copy)]
struct KeyHasher {
    seed: u64,
    h: u64,
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(self.h ^ x) * u128::from(self.seed | 1);
        self.h = (m as u64) ^ ((m >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.h
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyHashing(u64, u64);

impl Default for KeyHashing {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // Two random words from the standard library's keyed hasher.
        let r = std::collections::hash_map::RandomState::new();
        let mut a = r.build_hasher();
        a.write_u64(0x6c6f_636b_7374_6570);
        let mut b = r.build_hasher();
        b.write_u64(a.finish());
        Self(a.finish(), b.finish())
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.0,
            h: self.1,
        }
    }
}

/// Counts over the window: one slot per tick (`tick % W`), the tick of the
/// latest slot written, and their sum.
#[derive(Debug, Clone)]
struct Counter {
    last: u64,
    total: u64,
    ring: [u32; W as usize],
}

impl Counter {
    fn new(tick: u64) -> Self {
        Self {
            last: tick,
            total: 0,
            ring: [0; W as usize],
        }
    }

    /// Moves the window's end to `tick` (≥ `last`): the slots of the ticks
    /// that fall out are emptied.
    fn advance(&mut self, tick: u64) {
        if tick >= self.last + W {
            self.ring = [0; W as usize];
            self.total = 0;
        } else {
            for t in self.last + 1..=tick {
                let slot = &mut self.ring[(t % W) as usize];
                self.total -= u64::from(*slot);
                *slot = 0;
            }
        }
        self.last = self.last.max(tick);
    }

    /// The sum over the window ending at `tick` (≥ `last`), without moving
    /// it.
    fn total_at(&self, tick: u64) -> u64 {
        if tick >= self.last + W {
            return 0;
        }
        let gone: u64 = (self.last + 1..=tick)
            .map(|t| u64::from(self.ring[(t % W) as usize]))
            .sum();
        self.total - gone
    }

    fn add(&mut self, tick: u64, n: u32) {
        self.advance(tick);
        let slot = &mut self.ring[(tick % W) as usize];
        let before = *slot;
        *slot = slot.saturating_add(n);
        self.total += u64::from(*slot - before);
    }
}

/// Topic and channel names, each stored once, with the number of tracked
/// edges that use it.
#[derive(Debug, Default)]
struct Names {
    index: HashMap<String, u64>,
    list: Vec<(String, u64)>,
    free: Vec<u64>,
}

impl Names {
    fn find(&self, name: &str) -> Option<u64> {
        self.index.get(name).copied()
    }

    /// The index of `name`, added with no user if new.
    fn intern(&mut self, name: &str) -> u64 {
        if let Some(i) = self.find(name) {
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.list[i as usize] = (name.to_owned(), 0);
                i
            }
            None => {
                self.list.push((name.to_owned(), 0));
                (self.list.len() - 1) as u64
            }
        };
        self.index.insert(name.to_owned(), i);
        i
    }

    fn name(&self, i: u64) -> &str {
        &self.list[i as usize].0
    }

    fn retain(&mut self, i: u64) {
        self.list[i as usize].1 += 1;
    }

    fn release(&mut self, i: u64) {
        let e = &mut self.list[i as usize];
        e.1 -= 1;
        if e.1 == 0 {
            self.index.remove(&e.0);
            e.0 = String::new();
            self.free.push(i);
        }
    }
}

/// The edges of the last [`FLOW_WINDOW_TICKS`] ticks (see the module docs).
#[derive(Debug)]
pub struct FlowWindow {
    edges: HashMap<Key, Counter, KeyHashing>,
    names: Names,
    /// Every message, tracked or not.
    all: Counter,
    /// The latest tick recorded.
    tick: u64,
    /// The tick of the latest sweep of idle edges.
    swept: u64,
    limit: usize,
}

impl Default for FlowWindow {
    fn default() -> Self {
        Self::with_limit(MAX_TRACKED_EDGES)
    }
}

impl FlowWindow {
    /// A window tracking at most `limit` edges at once.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            edges: HashMap::default(),
            names: Names::default(),
            all: Counter::new(0),
            tick: 0,
            swept: 0,
            limit,
        }
    }

    /// Records the messages the agents sent in `tick`: every output of
    /// `results` that is a message.
    pub fn record_results(&mut self, tick: u64, results: &[AgentResult]) {
        self.record(
            tick,
            results.iter().flat_map(|r| {
                r.outputs
                    .iter()
                    .filter_map(move |o| Dest::of(o).map(|d| (r.agent_id, d)))
            }),
        );
    }

    /// Records the messages of `tick` (ticks are recorded in increasing
    /// order; an earlier one starts the window afresh).
    pub fn record<'a>(&mut self, tick: u64, messages: impl IntoIterator<Item = (u64, Dest<'a>)>) {
        if tick < self.tick {
            *self = Self::with_limit(self.limit);
        }
        self.tick = tick;
        self.all.advance(tick);
        if tick >= self.swept + W {
            self.sweep(tick);
        }
        for (from, dest) in messages {
            self.all.add(tick, 1);
            let key = match dest {
                Dest::Agent(id) => Key {
                    from,
                    kind: 0,
                    to: id,
                },
                Dest::Topic(name) | Dest::Channel(name) => {
                    let kind = if matches!(dest, Dest::Topic(_)) { 1 } else { 2 };
                    let to = match self.names.find(name) {
                        Some(i) => i,
                        None if self.edges.len() >= self.limit => continue,
                        None => self.names.intern(name),
                    };
                    Key { from, kind, to }
                }
            };
            if let Some(c) = self.edges.get_mut(&key) {
                c.add(tick, 1);
                continue;
            }
            if self.edges.len() >= self.limit {
                continue;
            }
            if key.kind != 0 {
                self.names.retain(key.to);
            }
            let mut c = Counter::new(tick);
            c.add(tick, 1);
            self.edges.insert(key, c);
        }
    }

    /// Forgets the edges with no message in the window ending at `tick`.
    fn sweep(&mut self, tick: u64) {
        self.swept = tick;
        let names = &mut self.names;
        self.edges.retain(|k, c| {
            c.advance(tick);
            let keep = c.total > 0;
            if !keep && k.kind != 0 {
                names.release(k.to);
            }
            keep
        });
    }

    fn target(&self, k: &Key) -> FlowTarget {
        match k.kind {
            0 => FlowTarget::Agent(k.to),
            1 => FlowTarget::Topic(self.names.name(k.to).to_owned()),
            _ => FlowTarget::Channel(self.names.name(k.to).to_owned()),
        }
    }

    /// Orders edges as the board lists them: by sender, then kind, then
    /// receiver (id or name).
    fn cmp_keys(&self, a: &Key, b: &Key) -> Ordering {
        (a.from, a.kind).cmp(&(b.from, b.kind)).then_with(|| {
            if a.kind == 0 {
                a.to.cmp(&b.to)
            } else {
                self.names.name(a.to).cmp(self.names.name(b.to))
            }
        })
    }

    /// The window ending at `tick` (the latest tick recorded, or a later
    /// one) as the board shows it: its `max` heaviest edges, by count
    /// (descending), then by sender, kind and receiver.
    pub fn flow(&self, tick: u64, max: usize) -> Flow {
        let tick = tick.max(self.tick);
        let mut live: Vec<(u64, &Key)> = self
            .edges
            .iter()
            .map(|(k, c)| (c.total_at(tick), k))
            .filter(|(n, _)| *n > 0)
            .collect();
        let distinct = live.len() as u64;
        let order = |a: &(u64, &Key), b: &(u64, &Key)| {
            Reverse(a.0)
                .cmp(&Reverse(b.0))
                .then_with(|| self.cmp_keys(a.1, b.1))
        };
        if live.len() > max && max > 0 {
            live.select_nth_unstable_by(max - 1, order);
        }
        live.truncate(max);
        live.sort_unstable_by(order);
        Flow {
            window_ticks: W,
            distinct,
            messages: self.all.total_at(tick),
            edges: live
                .into_iter()
                .map(|(count, k)| FlowEdge {
                    from: k.from,
                    to: self.target(k),
                    count,
                })
                .collect(),
        }
    }

    /// [`FlowWindow::flow`] with the board's [`MAX_FLOW_EDGES`].
    pub fn board(&self, tick: u64) -> Flow {
        self.flow(tick, MAX_FLOW_EDGES)
    }

    /// Edges tracked now (idle ones included until the next sweep).
    pub fn tracked(&self) -> usize {
        self.edges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A tick's messages: (sender, (kind, receiver)).
    type TickLog = (u64, Vec<(u64, (u8, u64))>);

    fn dest(kind: u8, to: u64) -> (u8, u64) {
        (kind, to)
    }

    fn names() -> [&'static str; 4] {
        ["alerts", "temps", "ch-a", "ch-b"]
    }

    fn as_dest(kind: u8, to: u64) -> Dest<'static> {
        match kind {
            0 => Dest::Agent(to),
            1 => Dest::Topic(names()[(to % 2) as usize]),
            _ => Dest::Channel(names()[2 + (to % 2) as usize]),
        }
    }

    fn as_target(kind: u8, to: u64) -> FlowTarget {
        match as_dest(kind, to) {
            Dest::Agent(id) => FlowTarget::Agent(id),
            Dest::Topic(t) => FlowTarget::Topic(t.into()),
            Dest::Channel(c) => FlowTarget::Channel(c.into()),
        }
    }

    /// The model: every message of the ticks in the window, counted.
    fn model(log: &[TickLog], tick: u64) -> (BTreeMap<(u64, FlowTarget), u64>, u64) {
        let mut counts = BTreeMap::new();
        let mut all = 0;
        for (t, msgs) in log {
            if *t + W > tick && *t <= tick {
                for (from, (kind, to)) in msgs {
                    *counts.entry((*from, as_target(*kind, *to))).or_default() += 1;
                    all += 1;
                }
            }
        }
        (counts, all)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// After every tick, each edge's count is the number of its
        /// messages in the last W ticks, and the board's edges are the
        /// heaviest ones in order.
        #[test]
        fn counts_match_the_last_w_ticks(
            steps in proptest::collection::vec(
                (1u64..40, proptest::collection::vec((1u64..6, 0u8..3, 0u64..5), 0..12)),
                1..120,
            ),
            k in 1usize..8,
        ) {
            let mut w = FlowWindow::default();
            let mut log: Vec<TickLog> = Vec::new();
            let mut tick = 0;
            for (gap, msgs) in steps {
                tick += gap;
                let msgs: Vec<(u64, (u8, u64))> =
                    msgs.into_iter().map(|(f, kd, to)| (f, dest(kd, to))).collect();
                w.record(tick, msgs.iter().map(|(f, (kd, to))| (*f, as_dest(*kd, *to))));
                log.push((tick, msgs));
                for at in [tick, tick + 1, tick + W - 1, tick + W] {
                    let (want, all) = model(&log, at);
                    let got = w.flow(at, usize::MAX);
                    let got_map: BTreeMap<(u64, FlowTarget), u64> =
                        got.edges.iter().map(|e| ((e.from, e.to.clone()), e.count)).collect();
                    prop_assert_eq!(&got_map, &want, "at tick {}", at);
                    prop_assert_eq!(got.messages, all);
                    prop_assert_eq!(got.distinct, want.len() as u64);
                    // The top k: heaviest first, ties by edge.
                    let mut top: Vec<((u64, FlowTarget), u64)> = want.into_iter().collect();
                    // (FlowTarget orders agents, topics, channels, as the
                    // window does.)
                    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    top.truncate(k);
                    let board: Vec<((u64, FlowTarget), u64)> = w
                        .flow(at, k)
                        .edges
                        .into_iter()
                        .map(|e| ((e.from, e.to), e.count))
                        .collect();
                    prop_assert_eq!(board, top);
                }
            }
            // Idle edges are swept and their names released.
            w.record(tick + 2 * W, std::iter::empty());
            prop_assert_eq!(w.tracked(), 0);
            prop_assert!(w.names.index.is_empty());
        }
    }

    #[test]
    fn tracked_edges_are_bounded_and_the_total_stays_exact() {
        let mut w = FlowWindow::with_limit(3);
        w.record(1, (0..10).map(|i| (i, Dest::Agent(100))));
        assert_eq!(w.tracked(), 3);
        w.record(2, (0..10).map(|i| (i, Dest::Topic("t"))));
        let f = w.flow(2, 64);
        assert_eq!((f.messages, f.distinct), (20, 3));
        assert!(f.edges.iter().all(|e| e.count == 1));
        // Once the window has moved past them, new edges are tracked.
        w.record(1 + W + 1, [(7, Dest::Channel("c"))]);
        let f = w.flow(2 + W, 64);
        assert_eq!(f.edges.len(), 1);
        assert_eq!(f.edges[0].to, FlowTarget::Channel("c".into()));
        assert_eq!(w.tracked(), 1);
    }

    #[test]
    fn an_earlier_tick_starts_afresh() {
        let mut w = FlowWindow::default();
        w.record(500, [(1, Dest::Agent(2))]);
        w.record(3, [(4, Dest::Agent(5))]);
        let f = w.flow(3, 64);
        assert_eq!(f.edges.len(), 1);
        assert_eq!(f.edges[0].from, 4);
    }
}
