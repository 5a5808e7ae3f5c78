//! Misbehaving agent: loops forever in `agent_step` (for fuel and watchdog tests).
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent};

/// The spinning agent.
#[derive(Debug)]
pub struct Spin;

impl Agent for Spin {
    fn init() -> Self {
        Spin
    }

    fn step(&mut self, _ctx: &StepContext<'_>) -> Result<(), i32> {
        let mut n = 0u64;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(Spin);
