//! Misbehaving agent: grows linear memory by 1 MiB (16 pages) every step, without bound.
//!
//! When `memory.grow` is refused (the memory limit) the step returns agent
//! error [`ERR_GROW_REFUSED`], in case the runtime let the refusal through
//! instead of faulting the agent with `memory_limit`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{Agent, Message, StepContext, arch, export_agent};

/// Pages requested per step.
pub const PAGES_PER_STEP: usize = 16;
/// Agent error when `memory.grow` returned -1.
pub const ERR_GROW_REFUSED: i32 = 12;

/// The memory bomb.
#[derive(Debug)]
pub struct MemBomb;

impl Agent for MemBomb {
    fn init() -> Self {
        MemBomb
    }

    fn step(&mut self, _ctx: &StepContext<'_>) -> Result<(), i32> {
        match arch::memory_grow(PAGES_PER_STEP) {
            Some(_) => Ok(()),
            None => Err(ERR_GROW_REFUSED),
        }
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(MemBomb);

/// Extra export (ignored by the runtime): current memory size in pages.
#[unsafe(no_mangle)]
pub extern "C" fn membomb_pages() -> i32 {
    arch::memory_pages() as i32
}
