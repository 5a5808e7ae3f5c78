//! Glue behind [`export_agent!`](crate::export_agent): the root block (the
//! agent, the host buffer, the allocator), and the bodies of the exported
//! functions.  Not a stable API.

use alloc::boxed::Box;
use alloc::vec::Vec;
#[cfg(not(target_arch = "wasm32"))]
use core::cell::UnsafeCell;
use core::marker::PhantomData;

use crate::layout::{MESSAGE_SIZE, Message, STEP_CONTEXT_SIZE, StepContext, declared_len};
use crate::{Agent, Migrate, codes};

/// Linear-memory address of the SDK's root block (wasm): where the agent
/// lives, the allocator's bookkeeping and the host buffer.  It lies at the
/// bottom of the shadow stack's region, at the same address in every
/// module built with this SDK, so that a module hot-swapped in (whose
/// static data, and so every `static`, may sit elsewhere) finds its
/// predecessor's agent and heap (docs/abi.md, "Upgrades").
pub const ROOT_ADDR: usize = 0x400;
/// Lowest address of the heap (wasm): a module's static data should end
/// below it, so that no version of the module overlaps another's heap.
pub const HEAP_FLOOR: usize = 0x2_0000;

/// The SDK's own state.  All-zero bytes are the state of a fresh instance
/// (no agent, empty heap, no buffer), so nothing needs initialising.
#[derive(Debug)]
#[repr(C)]
pub struct Root {
    /// The agent (a leaked `Box`), 0 before `agent_init`.
    agent: usize,
    /// The host buffer: pointer, length and capacity of a `Vec<u64>`.
    buffer: (usize, usize, usize),
    /// A panic is being reported.
    panicking: u32,
    /// The allocator's bookkeeping (used on wasm).
    pub(crate) heap: crate::heap::Heap,
}

/// The root block.
///
/// # Safety
/// Single-threaded and not re-entrant: the caller holds the only live
/// reference (agents are single-threaded; host imports never call back).
#[cfg(target_arch = "wasm32")]
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn root() -> &'static mut Root {
    // SAFETY: `ROOT_ADDR` lies in this module's linear memory (the bottom of
    // its shadow stack region, which the stack never reaches short of an
    // overflow), is suitably aligned, and zero bytes are a valid `Root`;
    // exclusivity is the caller's contract.
    unsafe { &mut *(ROOT_ADDR as *mut Root) }
}

#[cfg(not(target_arch = "wasm32"))]
struct HostRoot(UnsafeCell<Root>);

// SAFETY: only reached through `root`, under its single-caller contract.
#[cfg(not(target_arch = "wasm32"))]
unsafe impl Sync for HostRoot {}

#[cfg(not(target_arch = "wasm32"))]
static HOST_ROOT: HostRoot = HostRoot(UnsafeCell::new(Root {
    agent: 0,
    buffer: (0, 0, 0),
    panicking: 0,
    heap: crate::heap::Heap::new(),
}));

/// The root block (on the host: a process-wide static, for unit tests).
///
/// # Safety
/// As on wasm: the caller holds the only live reference.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn root() -> &'static mut Root {
    // SAFETY: exclusivity is the caller's contract.
    unsafe { &mut *HOST_ROOT.0.get() }
}

/// The agent instance between calls (kept in the root block).
#[derive(Debug)]
pub struct AgentCell<A> {
    _agent: PhantomData<fn() -> A>,
}

impl<A> AgentCell<A> {
    /// The agent slot (empty before `agent_init`).
    pub const fn new() -> Self {
        Self {
            _agent: PhantomData,
        }
    }

    /// The agent, if created.
    ///
    /// # Safety
    /// No other reference to the agent may be live for the returned
    /// lifetime, and the root's agent (if any) must be an `A`: created by
    /// this module, or by a predecessor whose agent type has the same
    /// layout (docs/abi.md, "Upgrades").
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot(&self) -> Option<&mut A> {
        // SAFETY: the caller's contract.
        let p = unsafe { root() }.agent;
        // SAFETY: a non-zero pointer is a leaked `Box<A>` (see above).
        (p != 0).then(|| unsafe { &mut *(p as *mut A) })
    }

    /// Replaces the agent.
    ///
    /// # Safety
    /// As [`AgentCell::slot`].
    unsafe fn set(&self, agent: A) {
        // SAFETY: the caller's contract.
        let r = unsafe { root() };
        if r.agent != 0 {
            // SAFETY: a leaked `Box<A>` we own (see `slot`).
            drop(unsafe { Box::from_raw(r.agent as *mut A) });
        }
        r.agent = Box::into_raw(Box::new(agent)) as usize;
    }
}

impl<A> Default for AgentCell<A> {
    fn default() -> Self {
        Self::new()
    }
}

fn code(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(0) => codes::ERR_ZERO_CODE,
        Err(c) => c,
    }
}

/// `agent_buffer`: an 8-byte aligned buffer of at least `len` bytes, reused
/// (and grown) across calls; null if `len` is negative or memory is exhausted.
///
/// The buffer only moves when a call asks for more than its current size, so
/// a host that caches the address and re-asks only to grow it (as
/// `lockstep-worker` does) stays correct.  Nothing else in the SDK touches it.
///
/// # Safety
/// Single caller at a time; no reference into the buffer may be live.
pub unsafe fn buffer(len: i32) -> *mut u8 {
    let Ok(len) = usize::try_from(len) else {
        return core::ptr::null_mut();
    };
    let words = len.div_ceil(8).max(16);
    // SAFETY: exclusivity is the caller's contract.
    let r = unsafe { root() };
    let (ptr, have, cap) = r.buffer;
    if ptr != 0 && have >= words {
        return ptr as *mut u8;
    }
    let mut buf = if ptr == 0 {
        Vec::new()
    } else {
        // SAFETY: the parts of a `Vec<u64>` this function leaked below.
        unsafe { Vec::from_raw_parts(ptr as *mut u64, have, cap) }
    };
    if buf.try_reserve_exact(words - buf.len()).is_err() {
        r.buffer = (buf.as_mut_ptr() as usize, buf.len(), buf.capacity());
        core::mem::forget(buf);
        return core::ptr::null_mut();
    }
    buf.resize(words, 0);
    let mut buf = core::mem::ManuallyDrop::new(buf);
    r.buffer = (buf.as_mut_ptr() as usize, buf.len(), buf.capacity());
    buf.as_mut_ptr().cast()
}

/// Borrows the layout the host wrote at `ptr`: fixed part of at least `fixed`
/// bytes whose `size` field and the `u32` length fields at `lens` give the
/// total length.  On wasm the whole range is checked against memory.size.
///
/// # Safety
/// `ptr` must be where the host wrote a layout in this module's memory, not
/// mutated while the returned slice lives.
unsafe fn host_layout<'a>(ptr: *const u8, fixed: usize, lens: &[usize]) -> Option<&'a [u8]> {
    let addr = ptr as usize;
    if addr == 0 {
        return None;
    }
    let in_memory = |len: usize| {
        #[cfg(target_arch = "wasm32")]
        {
            let mem = crate::arch::memory_pages() * crate::arch::PAGE_SIZE;
            addr.checked_add(len).is_some_and(|end| end <= mem)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = len;
            true
        }
    };
    if !in_memory(fixed) {
        return None;
    }
    // SAFETY: `[addr, addr + fixed)` is in memory (checked above on wasm; the
    // caller's contract on the host) and holds the host-written header.
    let header = unsafe { core::slice::from_raw_parts(addr as *const u8, fixed) };
    let total = declared_len(header, fixed, lens).ok()?;
    if !in_memory(total) {
        return None;
    }
    // SAFETY: as above, for the full declared length.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, total) })
}

/// `agent_init`: (re)creates the agent.
///
/// # Safety
/// Single caller at a time, not re-entrant (see [`AgentCell`]).
pub unsafe fn init<A: Agent>(cell: &AgentCell<A>) -> i32 {
    let agent = A::init();
    // SAFETY: the caller's contract.
    unsafe { cell.set(agent) };
    0
}

/// `agent_step`.
///
/// # Safety
/// As [`init`]; `ctx_ptr` is the pointer the host passed to `agent_step`.
pub unsafe fn step<A: Agent>(cell: &AgentCell<A>, ctx_ptr: *const u8) -> i32 {
    // SAFETY: the host wrote the context at `ctx_ptr` for this call.
    let Some(bytes) = (unsafe { host_layout(ctx_ptr, STEP_CONTEXT_SIZE, &[36]) }) else {
        return codes::ERR_BAD_LAYOUT;
    };
    let Ok(ctx) = StepContext::parse(bytes) else {
        return codes::ERR_BAD_LAYOUT;
    };
    // SAFETY: the caller's contract.
    match unsafe { cell.slot() } {
        Some(agent) => code(agent.step(&ctx)),
        None => codes::ERR_NOT_INITIALIZED,
    }
}

/// `agent_receive`.
///
/// # Safety
/// As [`init`]; `msg_ptr` is the pointer the host passed to `agent_receive`.
pub unsafe fn receive<A: Agent>(cell: &AgentCell<A>, msg_ptr: *const u8) -> i32 {
    // SAFETY: the host wrote the message at `msg_ptr` for this call.
    let Some(bytes) = (unsafe { host_layout(msg_ptr, MESSAGE_SIZE, &[32, 36]) }) else {
        return codes::ERR_BAD_LAYOUT;
    };
    let Ok(msg) = Message::parse(bytes) else {
        return codes::ERR_BAD_LAYOUT;
    };
    // SAFETY: the caller's contract.
    match unsafe { cell.slot() } {
        Some(agent) => code(agent.receive(&msg)),
        None => codes::ERR_NOT_INITIALIZED,
    }
}

/// `agent_shutdown` (a no-op before `agent_init`).  The state is kept so a
/// host can still inspect the agent's memory afterwards.
///
/// # Safety
/// As [`init`].
pub unsafe fn shutdown<A: Agent>(cell: &AgentCell<A>) -> i32 {
    // SAFETY: the caller's contract.
    match unsafe { cell.slot() } {
        Some(agent) => code(agent.shutdown()),
        None => 0,
    }
}

/// `agent_migrate`: creates the agent with [`Agent::init`] first if the host
/// did not call `agent_init` on the new module, then calls [`Migrate::migrate`].
///
/// # Safety
/// As [`init`].
pub unsafe fn migrate<A: Migrate>(cell: &AgentCell<A>, from_version: i32) -> i32 {
    // SAFETY: the caller's contract.
    if unsafe { cell.slot() }.is_none() {
        let agent = A::init();
        // SAFETY: the caller's contract.
        unsafe { cell.set(agent) };
    }
    // SAFETY: the caller's contract.
    match unsafe { cell.slot() } {
        Some(agent) => code(agent.migrate(from_version as u32)),
        None => codes::ERR_NOT_INITIALIZED,
    }
}

/// The panic handler body: logs the panic at error level (once) and traps.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: a panicking agent runs nothing else: the only reference.
    let first = unsafe {
        let r = root();
        let first = r.panicking == 0;
        r.panicking = 1;
        first
    };
    if first {
        let _ = crate::error!("panic: {}", info);
    }
    crate::arch::trap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock;
    use crate::layout::{ABI_VERSION, MessageKind};

    struct Probe {
        steps: u64,
        last_payload: Vec<u8>,
        received: Vec<(u64, u64)>,
    }

    impl Agent for Probe {
        fn init() -> Self {
            Probe {
                steps: 0,
                last_payload: Vec::new(),
                received: Vec::new(),
            }
        }
        fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
            self.steps += 1;
            self.last_payload = ctx.payload.to_vec();
            if ctx.task_priority == 99 {
                Err(0)
            } else {
                Ok(())
            }
        }
        fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
            self.received.push((msg.sender, msg.seq));
            if msg.kind == MessageKind::Notice {
                Err(7)
            } else {
                Ok(())
            }
        }
    }

    impl Migrate for Probe {
        fn migrate(&mut self, from: u32) -> Result<(), i32> {
            if from >> 16 == 1 { Ok(()) } else { Err(1) }
        }
    }

    /// Drives the entry points like the host does.  Only one test uses it:
    /// the host buffer is process-wide.
    struct Host {
        cell: AgentCell<Probe>,
    }

    impl Host {
        /// Copies `bytes` into the host buffer, as the host would.
        fn place(&self, bytes: &[u8]) -> *const u8 {
            // SAFETY: single-threaded test, no live references into the buffer.
            let ptr = unsafe { buffer(bytes.len() as i32) };
            assert!(!ptr.is_null());
            // SAFETY: the buffer holds at least `bytes.len()` bytes.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
            ptr
        }
        fn init(&self) -> i32 {
            // SAFETY: single-threaded test, calls are not re-entrant.
            unsafe { init(&self.cell) }
        }
        fn step(&self, bytes: &[u8]) -> i32 {
            let ptr = self.place(bytes);
            // SAFETY: as in `init`; `ptr` holds a host-written layout.
            unsafe { step(&self.cell, ptr) }
        }
        fn step_null(&self) -> i32 {
            // SAFETY: as in `init`; a null pointer is rejected before any read.
            unsafe { step(&self.cell, core::ptr::null()) }
        }
        fn receive(&self, bytes: &[u8]) -> i32 {
            let ptr = self.place(bytes);
            // SAFETY: as in `step`.
            unsafe { receive(&self.cell, ptr) }
        }
        fn shutdown(&self) -> i32 {
            // SAFETY: as in `init`.
            unsafe { shutdown(&self.cell) }
        }
        fn migrate(&self, from: i32) -> i32 {
            // SAFETY: as in `init`.
            unsafe { migrate(&self.cell, from) }
        }
        fn buffer(&self, len: i32) -> *mut u8 {
            // SAFETY: as in `init`.
            unsafe { buffer(len) }
        }
        fn with<R>(&self, f: impl FnOnce(&Probe) -> R) -> R {
            // SAFETY: as in `init`; the reference does not outlive this call.
            f(unsafe { self.cell.slot() }.unwrap())
        }
    }

    #[test]
    fn export_entry_points() {
        mock::reset();
        let host = Host {
            cell: AgentCell::new(),
        };
        let ctx = StepContext {
            size: 64,
            abi_version: ABI_VERSION,
            tick: 3,
            agent_id: 1,
            task_id: 0,
            task_priority: 0,
            mailbox_len: 0,
            flags: 0,
            payload: b"abc",
        };
        assert_eq!(host.step(&ctx.encode()), codes::ERR_NOT_INITIALIZED);
        assert_eq!(host.shutdown(), 0);
        assert_eq!(host.init(), 0);
        assert_eq!(host.step(&ctx.encode()), 0);
        assert_eq!(host.with(|p| p.last_payload.clone()), b"abc");
        let bad = StepContext {
            task_priority: 99,
            ..ctx
        };
        assert_eq!(host.step(&bad.encode()), codes::ERR_ZERO_CODE);
        let mut short = ctx.encode();
        short[0..4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(host.step(&short), codes::ERR_BAD_LAYOUT);
        assert_eq!(host.step_null(), codes::ERR_BAD_LAYOUT);

        let msg = Message {
            size: 48,
            kind: MessageKind::Direct,
            sender: 4,
            sent_tick: 2,
            seq: 11,
            topic: b"",
            payload: b"p",
        };
        assert_eq!(host.receive(&msg.encode()), 0);
        let notice = Message {
            kind: MessageKind::Notice,
            ..msg
        };
        assert_eq!(host.receive(&notice.encode()), 7);
        assert_eq!(host.with(|p| p.received.clone()), [(4, 11), (4, 11)]);
        assert_eq!(host.with(|p| p.steps), 2);

        assert_eq!(host.migrate(0x0001_0000), 0);
        assert_eq!(host.migrate(0x0002_0000), 1);
        assert_eq!(host.init(), 0);
        assert_eq!(host.with(|p| p.steps), 0, "init resets state");

        assert!(host.buffer(-1).is_null());
        let p = host.buffer(100_000);
        assert!(!p.is_null());
        assert_eq!(p as usize % 8, 0);
    }
}
