//! Misbehaving agent: executes `unreachable` in every `agent_step`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{Agent, Message, StepContext, arch, export_agent};

/// The trapping agent.
#[derive(Debug)]
pub struct Trap;

impl Agent for Trap {
    fn init() -> Self {
        Trap
    }

    fn step(&mut self, _ctx: &StepContext<'_>) -> Result<(), i32> {
        arch::trap()
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(Trap);
