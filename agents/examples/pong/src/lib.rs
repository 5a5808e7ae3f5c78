//! Pong half of a ping-pong pair: echoes every direct message's payload back to its sender.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::{
    Agent, Message, MessageKind, StepContext, export_agent, host, info, warn,
};

/// Echoes sent (exposed through `pong_replies`).
static REPLIES: AtomicU64 = AtomicU64::new(0);

/// The pong agent.
#[derive(Debug)]
pub struct Pong {
    refused: u64,
}

impl Agent for Pong {
    fn init() -> Self {
        REPLIES.store(0, Ordering::Relaxed);
        Pong { refused: 0 }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if ctx.tick % 100 == 0 {
            let replies = REPLIES.load(Ordering::Relaxed);
            let _ = info!(
                "pong: tick {} replies {} refused {}",
                ctx.tick, replies, self.refused
            );
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        if msg.kind != MessageKind::Direct || msg.from_runtime() {
            return Ok(());
        }
        match host::send(msg.sender, msg.payload) {
            Ok(()) => {
                REPLIES.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.refused += 1;
                let _ = warn!("pong: reply to {} refused: {}", msg.sender, e);
            }
        }
        Ok(())
    }
}

export_agent!(Pong);

/// Extra export (ignored by the runtime): echoes sent since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn pong_replies() -> i64 {
    REPLIES.load(Ordering::Relaxed) as i64
}
