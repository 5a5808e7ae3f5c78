//! Misbehaving agent: passes out-of-bounds pointers and lengths to host imports, one case per step.
//!
//! The case is `tick % 8`, or the first payload byte of a task step:
//!
//! | case | call |
//! |---|---|
//! | 0 | `send(self, ptr = 0xFFFF_FFF0, len = 1000)` (range wraps past 4 GiB) |
//! | 1 | `publish("sensors", valid ptr, len = -1)` (negative length) |
//! | 2 | `log(info, ptr = end of memory, len = 1)` |
//! | 3 | `subscribe(ptr = 0xFFFF_FFFF, len = 2)` |
//! | 4 | `schedule_task(self, 0, valid, deps_len = 0x2000_0001)` (`deps_len * 8` overflows `u32`) |
//! | 5 | `infer(valid ptr, model_len = 0x7FFF_FFFF, …)` |
//! | 6 | `channel_send(name straddling the end of memory, …)` |
//! | 7 | `send(self, ptr = 0, len = -16)` |
//!
//! Every one of these must fault the agent with `bad_host_call`.  If the host
//! returns instead, the step returns agent error `1000 + case`, so a test can
//! tell a missed validation from the intended fault.
#![cfg_attr(target_arch = "wasm32", no_std)]

use lockstep_agent_sdk::{Agent, Message, StepContext, export_agent};

/// Number of distinct cases.
pub const CASES: u64 = 8;

/// The bad-pointer agent.
#[derive(Debug)]
pub struct BadPtr;

#[cfg(target_arch = "wasm32")]
fn bad_call(case: u64) {
    use lockstep_agent_sdk::{arch, host::raw};

    let me = raw::agent_id();
    let valid = b"sensors";
    let vp = valid.as_ptr() as usize as i32;
    let end = (arch::memory_pages() * arch::PAGE_SIZE) as u32 as i32;
    let deps = [1u64, 2];
    let dp = deps.as_ptr() as usize as i32;
    // None of these calls can corrupt agent memory: imports only read it,
    // and the host validates every pointer and length (the point of this
    // agent is to check that it does, by faulting).
    let _ = match case {
        // SAFETY: see above.
        0 => i64::from(unsafe { raw::send(me, 0xFFFF_FFF0_u32 as i32, 1000) }),
        // SAFETY: see above.
        1 => i64::from(unsafe { raw::publish(vp, 7, vp, -1) }),
        // SAFETY: see above.
        2 => i64::from(unsafe { raw::log(2, end, 1) }),
        // SAFETY: see above.
        3 => i64::from(unsafe { raw::subscribe(-1, 2) }),
        // SAFETY: see above.
        4 => unsafe { raw::schedule_task(me, 0, vp, 7, dp, 0x2000_0001) },
        // SAFETY: see above.
        5 => unsafe { raw::infer(vp, 0x7FFF_FFFF, vp, 7) },
        // SAFETY: see above.
        6 => i64::from(unsafe { raw::channel_send(end.wrapping_sub(2), 4, vp, 7) }),
        // SAFETY: see above.
        _ => i64::from(unsafe { raw::send(me, 0, -16) }),
    };
}

#[cfg(not(target_arch = "wasm32"))]
fn bad_call(_case: u64) {}

impl Agent for BadPtr {
    fn init() -> Self {
        BadPtr
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        let case = match ctx.payload.first() {
            Some(&b) if ctx.is_task() => u64::from(b) % CASES,
            _ => ctx.tick % CASES,
        };
        bad_call(case);
        Err(1000 + case as i32)
    }

    fn receive(&mut self, _msg: &Message<'_>) -> Result<(), i32> {
        Ok(())
    }
}

export_agent!(BadPtr);
