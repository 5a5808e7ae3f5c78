//! Every 5 ticks calls `infer("mlp", f32[1,16])`, records the kind-3 answers and logs their argmax,
//! and — in the step of the tick an answer arrived in (deliveries come before the step) — the tick
//! it was asked in and that tick: `inferrer: request R asked at tick A answered at tick B`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::tensor::{self, TensorView};
use lockstep_agent_sdk::{Agent, Message, MessageKind, StepContext, error, export_agent, host};
use lockstep_agent_sdk::{info, warn};

/// Ticks between requests.
pub const EVERY: u64 = 5;
/// Model asked.
pub const MODEL: &str = "mlp";
/// Agent error returned for a malformed result tensor.
pub const ERR_BAD_RESULT: i32 = 3;

/// Answers received (exposed through `inferrer_answers`).
static ANSWERS: AtomicU64 = AtomicU64::new(0);
/// Argmax of the last answer, `u64::MAX` if none.
static LAST_ARGMAX: AtomicU64 = AtomicU64::new(u64::MAX);

/// The inferrer agent.
#[derive(Debug)]
pub struct Inferrer {
    /// Request ids not answered yet, with the tick each was asked in.
    pending: Vec<(u64, u64)>,
    /// Answered request ids (with their ask tick) not logged yet.
    arrived: Vec<(u64, u64)>,
    /// `(request id, argmax)` of the answers, in arrival order.
    answers: Vec<(u64, u32)>,
    errors: u64,
}

impl Agent for Inferrer {
    fn init() -> Self {
        ANSWERS.store(0, Ordering::Relaxed);
        LAST_ARGMAX.store(u64::MAX, Ordering::Relaxed);
        Inferrer {
            pending: Vec::new(),
            arrived: Vec::new(),
            answers: Vec::new(),
            errors: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        for (id, asked) in self.arrived.drain(..) {
            let _ = info!(
                "inferrer: request {} asked at tick {} answered at tick {}",
                id,
                asked,
                ctx.tick
            );
        }
        if ctx.tick % EVERY != 0 {
            return Ok(());
        }
        let mut input = [0f32; 16];
        for x in &mut input {
            *x = host::random_f32();
        }
        let Ok(bytes) = tensor::encode(&[1, 16], &input) else {
            return Err(2);
        };
        match host::infer(MODEL, &bytes) {
            Ok(id) => self.pending.push((id, ctx.tick)),
            Err(e) => {
                let _ = warn!("inferrer: request refused: {}", e);
            }
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        let known = match self.pending.iter().position(|&(id, _)| id == msg.seq) {
            Some(i)
                if matches!(
                    msg.kind,
                    MessageKind::InferenceResult | MessageKind::InferenceError
                ) =>
            {
                let asked = self.pending.remove(i);
                self.arrived.push(asked);
                true
            }
            _ => false,
        };
        match msg.kind {
            MessageKind::InferenceResult => {
                if !known {
                    let _ = warn!("inferrer: answer for unknown request {}", msg.seq);
                }
                let argmax = TensorView::parse(msg.payload).ok().and_then(|t| t.argmax());
                let Some(argmax) = argmax else {
                    let _ = error!("inferrer: malformed result for request {}", msg.seq);
                    return Err(ERR_BAD_RESULT);
                };
                self.answers.push((msg.seq, argmax as u32));
                ANSWERS.fetch_add(1, Ordering::Relaxed);
                LAST_ARGMAX.store(argmax as u64, Ordering::Relaxed);
                let _ = info!("inferrer: request {} argmax {}", msg.seq, argmax);
            }
            MessageKind::InferenceError => {
                self.errors += 1;
                let _ = warn!(
                    "inferrer: request {} failed: {}",
                    msg.seq,
                    msg.payload_str().unwrap_or("<non-UTF-8 error>")
                );
            }
            _ => {}
        }
        Ok(())
    }
}

export_agent!(Inferrer);

/// Extra export (ignored by the runtime): results received since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn inferrer_answers() -> i64 {
    ANSWERS.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): argmax of the last result, `-1` if none.
#[unsafe(no_mangle)]
pub extern "C" fn inferrer_last_argmax() -> i64 {
    LAST_ARGMAX.load(Ordering::Relaxed) as i64
}
