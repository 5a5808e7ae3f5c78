//! Routes news texts to the specialist desk whose topic they are nearest
//! to, by sentence embedding (`infer("minilm", u8[n] UTF-8 text)` →
//! `f32[384]`, unit length; the `minilm` text-embedding model of
//! `examples/embeddings.toml`).
//!
//! At its first step it asks for the embeddings of the [`DESKS`]' topic
//! descriptions, once.  Its incoming texts are the headlines of its
//! [`NEWS`] feed — one every [`EVERY`] ticks, at ticks `t` with
//! `t % EVERY == phase(agent_id)`, starting at `agent_id % NEWS.len()` —
//! and the UTF-8 payload of any direct message it receives (e.g.
//! `lockstep ctl <run> send <router> <text>`).  Each text is embedded; once
//! the desks' embeddings are in, it goes to the desk of highest cosine
//! similarity (a dot product of unit vectors, computed here in `f32` in
//! index order: WebAssembly floats are deterministic; ties go to the first
//! desk) as a publication on topic `desk/<name>` with the payload
//! (little-endian) `cosine: f32`, `expected desk length: u8` (0 when
//! unknown), the expected desk's name, then the text.  It logs
//! `routed #<n> "<text>" to <desk> (cos <c>), expected <desk>` at info
//! level;
//! counts are readable through the extra exports `router_routed`,
//! `router_as_expected` and `router_errors`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::host::LineBuf;
use lockstep_agent_sdk::tensor::{self, DType, TensorView};
use lockstep_agent_sdk::{Agent, Message, MessageKind, StepContext, export_agent, host};
use lockstep_agent_sdk::{info, warn};

/// The model asked.
pub const MODEL: &str = "minilm";
/// Size of its embeddings.
pub const DIM: usize = 384;
/// Ticks between two headlines of one router.
pub const EVERY: u64 = 8;
/// Ticks between the headlines of routers with consecutive ids.
pub const SPACING: u64 = 3;
/// Topic prefix of the desks.
pub const TOPIC_PREFIX: &str = "desk/";
/// Longest text routed (longer direct messages are cut at a character
/// boundary).
pub const MAX_TEXT: usize = 1024;

/// A specialist desk: its name and the description its topic is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Desk {
    /// Name (topic `desk/<name>`).
    pub name: &'static str,
    /// What the desk covers.
    pub description: &'static str,
}

/// The desks, in index order.
pub const DESKS: [Desk; 4] = [
    Desk {
        name: "sports",
        description: "Sport: football and basketball matches, tennis tournaments, teams, players, goals and championships.",
    },
    Desk {
        name: "cooking",
        description: "Cooking and food: recipes, baking bread, kitchen ingredients, meals, chefs and restaurants.",
    },
    Desk {
        name: "astronomy",
        description: "Astronomy and space: planets, stars, galaxies, telescopes, rockets and astronauts.",
    },
    Desk {
        name: "finance",
        description: "Finance and markets: stocks, banks, interest rates, investors, inflation and the economy.",
    },
];

/// The news feed: each headline and the index of the desk it belongs to.
pub const NEWS: [(&str, usize); 24] = [
    (
        "The striker scored twice in the second half to win the cup final.",
        0,
    ),
    (
        "Knead the dough for ten minutes, then let it rise for an hour.",
        1,
    ),
    (
        "The telescope captured a spiral galaxy millions of light years away.",
        2,
    ),
    (
        "The central bank raised interest rates to fight inflation.",
        3,
    ),
    (
        "Our point guard broke the league record for assists this season.",
        0,
    ),
    (
        "This soup recipe needs onions, garlic, carrots and fresh thyme.",
        1,
    ),
    (
        "Astronauts docked with the space station after a two-day flight.",
        2,
    ),
    (
        "Shares of the chip maker fell eight percent after weak earnings.",
        3,
    ),
    (
        "She won the tennis tournament after saving three match points.",
        0,
    ),
    ("Sear the steak in a hot pan and rest it before slicing.", 1),
    ("A new exoplanet was found orbiting a red dwarf star.", 2),
    ("Investors moved their savings into government bonds.", 3),
    (
        "The coach was sacked after the team lost six games in a row.",
        0,
    ),
    (
        "The new restaurant downtown serves the best ramen I have eaten.",
        1,
    ),
    ("The rocket's second stage failed shortly after launch.", 2),
    ("The stock market closed at a record high on Friday.", 3),
    (
        "Marathon runners battled heavy rain in the city race on Sunday.",
        0,
    ),
    (
        "Whisk the eggs with sugar until pale, then fold in the flour.",
        1,
    ),
    (
        "Jupiter's moons are visible with a small backyard telescope.",
        2,
    ),
    (
        "Mortgage lenders tightened credit as house prices slipped.",
        3,
    ),
    ("The goalkeeper saved a penalty in extra time.", 0),
    ("Roast the vegetables with olive oil, salt and rosemary.", 1),
    (
        "Scientists measured the light of a supernova in a distant galaxy.",
        2,
    ),
    (
        "The company's quarterly revenue beat analysts' forecasts.",
        3,
    ),
];

/// The tick (modulo [`EVERY`]) at which agent `agent_id` takes a headline.
pub fn phase(agent_id: u64) -> u64 {
    agent_id.wrapping_mul(SPACING) % EVERY
}

/// The headline an agent takes the `n`-th time (from 0).
pub fn news_index(agent_id: u64, n: u64) -> usize {
    (agent_id.wrapping_add(n) % NEWS.len() as u64) as usize
}

/// The request tensor for `text`: `u8[len]`, its UTF-8 bytes.
pub fn text_tensor(text: &[u8]) -> Result<Vec<u8>, tensor::TensorError> {
    tensor::encode_raw(DType::U8, &[text.len() as u64], text)
}

/// The embedding in an answer; `None` unless it is `f32[DIM]`.
pub fn embedding(result: &[u8]) -> Option<Vec<f32>> {
    let t = TensorView::parse(result).ok()?;
    if t.dtype() != DType::F32 || t.dims() != [DIM as u64] {
        return None;
    }
    t.to_vec::<f32>().ok()
}

/// The dot product of two vectors, in index order (the cosine similarity
/// of unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0f32;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// The index and similarity of the nearest of `desks` (the first of equals).
pub fn nearest(v: &[f32], desks: &[Vec<f32>]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, d) in desks.iter().enumerate() {
        let c = dot(v, d);
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((i, c));
        }
    }
    best
}

/// The payload of a routed text (see the crate docs).
pub fn payload(cosine: f32, expected: Option<usize>, text: &[u8]) -> Vec<u8> {
    let name = expected.map_or("", |d| DESKS[d].name);
    let mut p = Vec::with_capacity(5 + name.len() + text.len());
    p.extend_from_slice(&cosine.to_le_bytes());
    p.push(name.len() as u8);
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(text);
    p
}

/// A text waiting for its embedding, or for the desks'.
#[derive(Debug, Clone)]
enum Item {
    /// Headline `i` of [`NEWS`].
    News(usize),
    /// A direct message's text.
    Direct(Vec<u8>),
}

impl Item {
    fn text(&self) -> &[u8] {
        match self {
            Item::News(i) => NEWS[*i].0.as_bytes(),
            Item::Direct(t) => t,
        }
    }

    fn expected(&self) -> Option<usize> {
        match self {
            Item::News(i) => Some(NEWS[*i].1),
            Item::Direct(_) => None,
        }
    }
}

/// What a request was for.
#[derive(Debug, Clone)]
enum Asked {
    Desk(usize),
    Text(Item),
}

static ROUTED: AtomicU64 = AtomicU64::new(0);
static AS_EXPECTED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// The router agent.
#[derive(Debug)]
pub struct Router {
    /// The desks' embeddings, as they arrive.
    desks: [Option<Vec<f32>>; DESKS.len()],
    asked_desks: bool,
    headlines: u64,
    /// Requests not answered yet.
    pending: Vec<(u64, Asked)>,
    /// Embedded texts waiting for the desks' embeddings.
    waiting: Vec<(Item, Vec<f32>)>,
    routed: u64,
    as_expected: u64,
    errors: u64,
}

impl Router {
    fn ask(&mut self, text: &[u8], what: Asked) {
        let Ok(input) = text_tensor(text) else {
            return;
        };
        match host::infer(MODEL, &input) {
            Ok(id) => self.pending.push((id, what)),
            Err(e) => {
                self.errors += 1;
                ERRORS.fetch_add(1, Ordering::Relaxed);
                let _ = warn!("router: request refused: {}", e);
            }
        }
    }

    fn take_pending(&mut self, request: u64) -> Option<Asked> {
        let i = self.pending.iter().position(|(id, _)| *id == request)?;
        Some(self.pending.remove(i).1)
    }

    /// The desks' embeddings, once all have arrived.
    fn desks_ready(&self) -> Option<Vec<Vec<f32>>> {
        self.desks.iter().cloned().collect()
    }

    fn route(&mut self, item: &Item, v: &[f32], desks: &[Vec<f32>]) {
        let Some((desk, cosine)) = nearest(v, desks) else {
            return;
        };
        let name = DESKS[desk].name;
        let mut topic = LineBuf::<32>::new();
        let _ = write!(topic, "{TOPIC_PREFIX}{name}");
        if let Err(e) = host::publish(
            topic.as_str(),
            &payload(cosine, item.expected(), item.text()),
        ) {
            let _ = warn!("router: publish on {} refused: {}", topic.as_str(), e);
            return;
        }
        self.routed += 1;
        ROUTED.fetch_add(1, Ordering::Relaxed);
        if item.expected() == Some(desk) {
            self.as_expected += 1;
            AS_EXPECTED.fetch_add(1, Ordering::Relaxed);
        }
        let text = core::str::from_utf8(item.text()).unwrap_or("<not UTF-8>");
        let shown = &text[..floor_char_boundary(text, 120)];
        let _ = info!(
            "routed #{} \"{}\" to {} (cos {:.3}), expected {}",
            self.routed,
            shown,
            name,
            cosine,
            item.expected().map_or("?", |d| DESKS[d].name)
        );
    }

    fn answered(&mut self, asked: Asked, v: Vec<f32>) {
        match asked {
            Asked::Desk(d) => {
                self.desks[d] = Some(v);
                if let Some(desks) = self.desks_ready() {
                    for (item, v) in core::mem::take(&mut self.waiting) {
                        self.route(&item, &v, &desks);
                    }
                }
            }
            Asked::Text(item) => match self.desks_ready() {
                Some(desks) => self.route(&item, &v, &desks),
                None => self.waiting.push((item, v)),
            },
        }
    }
}

/// The largest character boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Agent for Router {
    fn init() -> Self {
        ROUTED.store(0, Ordering::Relaxed);
        AS_EXPECTED.store(0, Ordering::Relaxed);
        ERRORS.store(0, Ordering::Relaxed);
        Router {
            desks: [None, None, None, None],
            asked_desks: false,
            headlines: 0,
            pending: Vec::new(),
            waiting: Vec::new(),
            routed: 0,
            as_expected: 0,
            errors: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if !self.asked_desks {
            self.asked_desks = true;
            for (d, desk) in DESKS.iter().enumerate() {
                self.ask(desk.description.as_bytes(), Asked::Desk(d));
            }
        }
        if ctx.tick % EVERY == phase(ctx.agent_id) {
            let i = news_index(ctx.agent_id, self.headlines);
            self.headlines += 1;
            self.ask(NEWS[i].0.as_bytes(), Asked::Text(Item::News(i)));
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        match msg.kind {
            MessageKind::Direct => {
                let Some(text) = msg.payload_str() else {
                    let _ = warn!("router: a direct message that is not UTF-8 text");
                    return Ok(());
                };
                let text = &text[..floor_char_boundary(text, MAX_TEXT)];
                let item = Item::Direct(text.as_bytes().to_vec());
                self.ask(text.as_bytes(), Asked::Text(item));
            }
            MessageKind::InferenceResult => {
                let Some(asked) = self.take_pending(msg.seq) else {
                    let _ = warn!("router: answer for unknown request {}", msg.seq);
                    return Ok(());
                };
                match embedding(msg.payload) {
                    Some(v) => self.answered(asked, v),
                    None => {
                        self.errors += 1;
                        ERRORS.fetch_add(1, Ordering::Relaxed);
                        let _ = warn!("router: request {} answered with no embedding", msg.seq);
                        if let Asked::Desk(d) = asked {
                            let desk = DESKS[d];
                            self.ask(desk.description.as_bytes(), Asked::Desk(d));
                        }
                    }
                }
            }
            MessageKind::InferenceError => {
                self.errors += 1;
                ERRORS.fetch_add(1, Ordering::Relaxed);
                let asked = self.take_pending(msg.seq);
                let _ = warn!(
                    "router: request {} failed: {}",
                    msg.seq,
                    msg.payload_str().unwrap_or("<non-UTF-8 error>")
                );
                // A desk's embedding is needed: ask again.
                if let Some(Asked::Desk(d)) = asked {
                    let desk = DESKS[d];
                    self.ask(desk.description.as_bytes(), Asked::Desk(d));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

export_agent!(Router);

/// Extra export (ignored by the runtime): texts routed since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn router_routed() -> i64 {
    ROUTED.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): headlines routed to their own desk.
#[unsafe(no_mangle)]
pub extern "C" fn router_as_expected() -> i64 {
    AS_EXPECTED.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): refused or failed requests.
#[unsafe(no_mangle)]
pub extern "C" fn router_errors() -> i64 {
    ERRORS.load(Ordering::Relaxed) as i64
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::vec;
    use lockstep_agent_sdk::host::mock::{self, HostCall};

    fn ctx(tick: u64) -> StepContext<'static> {
        StepContext {
            size: 64,
            abi_version: lockstep_agent_sdk::ABI_VERSION,
            tick,
            agent_id: 2,
            task_id: 0,
            task_priority: 0,
            mailbox_len: 0,
            flags: 0,
            payload: b"",
        }
    }

    fn answer(v: &[f32]) -> Vec<u8> {
        tensor::encode(&[DIM as u64], v).unwrap()
    }

    /// A unit vector along axis `k`.
    fn axis(k: usize) -> Vec<f32> {
        let mut v = vec![0f32; DIM];
        v[k] = 1.0;
        v
    }

    #[test]
    fn nearest_desk_wins_and_ties_go_first() {
        let desks = vec![axis(0), axis(1), axis(2)];
        let mut v = vec![0f32; DIM];
        v[1] = 0.8;
        v[2] = 0.6;
        assert_eq!(nearest(&v, &desks), Some((1, 0.8)));
        v[2] = 0.8;
        assert_eq!(nearest(&v, &desks).map(|b| b.0), Some(1));
        assert_eq!(nearest(&v, &[]), None);
    }

    #[test]
    fn embeds_the_desks_then_routes_headlines() {
        mock::reset();
        let mut r = Router::init();
        // Tick 6 is agent 2's phase: four desk requests and a headline.
        assert_eq!(phase(2), 6);
        r.step(&ctx(6)).unwrap();
        let calls = mock::take_calls();
        assert_eq!(calls.len(), 5, "{calls:?}");
        for (c, want) in calls
            .iter()
            .zip(DESKS.iter().map(|d| d.description).chain([NEWS[2].0]))
        {
            let HostCall::Infer { model, input } = c else {
                panic!("{c:?}");
            };
            assert_eq!(model, b"minilm");
            let t = TensorView::parse(input).unwrap();
            assert_eq!((t.dtype(), t.data()), (DType::U8, want.as_bytes()));
        }
        // The headline's answer comes first: it waits for the desks.
        let msg = |seq, payload: &'static [u8]| Message {
            size: 48,
            kind: MessageKind::InferenceResult,
            sender: u64::MAX,
            sent_tick: 6,
            seq,
            topic: b"",
            payload,
        };
        let leak = |b: Vec<u8>| -> &'static [u8] { std::boxed::Box::leak(b.into_boxed_slice()) };
        r.receive(&msg(5, leak(answer(&axis(2))))).unwrap();
        assert!(mock::take_calls().is_empty());
        for d in 0..4 {
            r.receive(&msg(d as u64 + 1, leak(answer(&axis(d)))))
                .unwrap();
        }
        let calls = mock::take_calls();
        let HostCall::Publish { topic, payload: p } = &calls[0] else {
            panic!("{calls:?}");
        };
        assert_eq!(topic, b"desk/astronomy");
        assert_eq!(p, &payload(1.0, Some(2), NEWS[2].0.as_bytes()));
        assert!(matches!(&calls[1], HostCall::Log { level: 2, .. }));
        assert_eq!((r.routed, r.as_expected), (1, 1));
        assert!(r.pending.is_empty() && r.waiting.is_empty());
    }
}
