//! Version 2 of `counter` for hot-swap tests: same counting, exports `agent_migrate`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use lockstep_agent_sdk::{Agent, Message, Migrate, StepContext, error, export_agent, info};

/// Steps counted in a global (linear-memory static).
static STEPS: AtomicU64 = AtomicU64::new(0);
/// `from_version` of the last successful `agent_migrate` (0 if none).
static MIGRATED_FROM: AtomicU32 = AtomicU32::new(0);

/// The counter agent, version 2: the same layout as version 1 (`repr(C)`),
/// so a hot-swap hands it version 1's value.
#[derive(Debug)]
#[repr(C)]
pub struct CounterV2 {
    heap_steps: Box<u64>,
    tasks: u64,
    received: u64,
}

impl Agent for CounterV2 {
    fn init() -> Self {
        STEPS.store(0, Ordering::Relaxed);
        CounterV2 {
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
            return Err(1);
        }
        if ctx.tick % 100 == 0 {
            let _ = info!(
                "counter v2: tick {} steps {} tasks {} received {}",
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

impl Migrate for CounterV2 {
    fn migrate(&mut self, from_version: u32) -> Result<(), i32> {
        if from_version >> 16 != 1 {
            let _ = error!("counter v2: cannot migrate from ABI {:#010x}", from_version);
            return Err(2);
        }
        MIGRATED_FROM.store(from_version, Ordering::Relaxed);
        // Statics live where this module's static data puts them, not where
        // version 1's did: rebuild the global count from the agent's value.
        STEPS.store(*self.heap_steps, Ordering::Relaxed);
        let _ = info!(
            "counter v2: migrated from ABI {:#010x} at step {}",
            from_version, *self.heap_steps
        );
        Ok(())
    }
}

export_agent!(CounterV2, migrate);

/// Extra export (ignored by the runtime): steps counted since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn counter_steps() -> i64 {
    STEPS.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): this module's version (2).
#[unsafe(no_mangle)]
pub extern "C" fn counter_version() -> i32 {
    2
}

/// Extra export (ignored by the runtime): `from_version` of the last
/// successful migration, `0` if none.
#[unsafe(no_mangle)]
pub extern "C" fn counter_migrated_from() -> i32 {
    MIGRATED_FROM.load(Ordering::Relaxed) as i32
}
