//! Every 5 ticks schedules prioritised tasks for workers `agent_id()+1 ..= agent_id()+3`, then a join task depending on them.
//!
//! Task payload (12 bytes, LE): `round: u64`, `part: u32` (`0` for the join
//! task).  Worker `agent_id()+j` gets priority `10 * (4 - j)`; the join task
//! goes to the first worker with priority 0 and depends on the round's tasks.
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent, host, info, warn};

/// Ticks between rounds.
pub const EVERY: u64 = 5;
/// Number of workers (`agent_id()+1 ..= agent_id()+WORKERS`).
pub const WORKERS: u64 = 3;

/// The coordinator agent.
#[derive(Debug)]
pub struct Coordinator {
    me: u64,
    round: u64,
    scheduled: u64,
    refused: u64,
}

fn payload(round: u64, part: u32) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&round.to_le_bytes());
    p[8..].copy_from_slice(&part.to_le_bytes());
    p
}

impl Coordinator {
    fn schedule(&mut self, agent: u64, priority: i32, payload: &[u8], deps: &[u64]) -> Option<u64> {
        match host::schedule_task(agent, priority, payload, deps) {
            Ok(id) => {
                self.scheduled += 1;
                Some(id)
            }
            Err(e) => {
                self.refused += 1;
                let _ = warn!("coordinator: task for {} refused: {}", agent, e);
                None
            }
        }
    }
}

impl Agent for Coordinator {
    fn init() -> Self {
        Coordinator {
            me: host::agent_id(),
            round: 0,
            scheduled: 0,
            refused: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        // Only plain steps start rounds (a task sent to us is just accepted).
        if ctx.is_task() || ctx.tick % EVERY != 0 {
            return Ok(());
        }
        self.round += 1;
        let mut ids = [0u64; WORKERS as usize];
        let mut n = 0;
        for j in 1..=WORKERS {
            let priority = 10 * (WORKERS + 1 - j) as i32;
            if let Some(id) =
                self.schedule(self.me + j, priority, &payload(self.round, j as u32), &[])
            {
                ids[n] = id;
                n += 1;
            }
        }
        let join = self.schedule(self.me + 1, 0, &payload(self.round, 0), &ids[..n]);
        let _ = info!(
            "coordinator: round {} scheduled {} tasks, join {:?} (total {}, refused {})",
            self.round, n, join, self.scheduled, self.refused
        );
        Ok(())
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(Coordinator);
