//! Misbehaving agent: unbounded recursion in `agent_step` (wasm call-stack overflow).
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent};

/// Depth at which the recursion would stop; never reached in practice.
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Recurses `LIMIT - n` levels deep.  The result is combined after the call
/// (with a rotate, which LLVM cannot turn into a loop), and nothing is kept
/// on the shadow stack, so the wasm call stack is what overflows.
fn dive(n: u64) -> u64 {
    if n == LIMIT.load(Ordering::Relaxed) {
        return n;
    }
    dive(n + 1).rotate_left(7) ^ n
}

/// The recursing agent.
#[derive(Debug)]
pub struct Recurse;

impl Agent for Recurse {
    fn init() -> Self {
        Recurse
    }

    fn step(&mut self, _ctx: &StepContext<'_>) -> Result<(), i32> {
        // Unreachable in practice: the call stack overflows first.
        if dive(0) == 0 { Err(1) } else { Err(2) }
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(Recurse);
