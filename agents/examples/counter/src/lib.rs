//! Counts its steps in a global and in heap memory (checking they agree); logs every 100 ticks.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent, info};

/// Steps counted in a global (linear-memory static).
static STEPS: AtomicU64 = AtomicU64::new(0);

/// The counter agent: the same count is also kept on the heap.  `repr(C)`:
/// its version 2 (`upgrade_v2`) takes this value over in a hot-swap.
#[derive(Debug)]
#[repr(C)]
pub struct Counter {
    heap_steps: Box<u64>,
    tasks: u64,
    received: u64,
}

impl Agent for Counter {
    fn init() -> Self {
        STEPS.store(0, Ordering::Relaxed);
        Counter {
            heap_steps: Box::new(0),
            tasks: 0,
            received: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        let global = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
        *self.heap_steps += 1;
        if ctx.is_task() {
            self.tasks += 1;
        }
        if global != *self.heap_steps {
            // Global and heap disagree: memory was corrupted.
            return Err(1);
        }
        if ctx.tick % 100 == 0 {
            let _ = info!(
                "counter: tick {} steps {} tasks {} received {}",
                ctx.tick, global, self.tasks, self.received
            );
        }
        Ok(())
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        self.received += 1;
        Ok(())
    }
}

export_agent!(Counter);

/// Extra export (ignored by the runtime): steps counted since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn counter_steps() -> i64 {
    STEPS.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): this module's version (1).
#[unsafe(no_mangle)]
pub extern "C" fn counter_version() -> i32 {
    1
}
