//! One agent: its own `Store`, instance and linear memory, the calls into
//! it, and capture/restore of its complete mutable state.

use crate::engine::{ABI_MAJOR, ABI_MINOR, AgentModule, EPOCH_PERIOD};
use crate::error::LoadError;
use crate::host::{AgentHost, HostTrap};
use shm_protocol::worker::{
    AgentLimits, AgentState, CHUNK, Fault, GlobalValue, HostCounters, MessageRef, TaskRef,
    image_hash,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wasmtime::{Engine, Func, Global, Instance, Linker, Memory, Store, TypedFunc, Val};

/// Size of the fixed part of the step context (docs/abi.md).
pub const CTX_SIZE: usize = 64;
/// Size of the fixed part of a message (docs/abi.md).
pub const MSG_SIZE: usize = 48;
/// Wasm page size.
pub const PAGE: usize = 65536;

/// What one call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// Fuel consumed.
    pub fuel: u64,
    /// The fault that ended the call, if any.
    pub fault: Option<Fault>,
}

/// Per-worker settings every agent shares.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The engine.
    pub engine: Engine,
    /// Linker with the `lockstep` imports.
    pub linker: Arc<Linker<AgentHost>>,
    /// Run seed.
    pub seed: u64,
    /// Wall-clock watchdog per call.
    pub watchdog: Duration,
    /// Epoch deadline of every call, in epoch ticks (shared with every
    /// agent; [`Runtime::NO_DEADLINE`] while the watchdog is off).
    deadline: Arc<AtomicUsize>,
}

impl Runtime {
    /// A runtime over `engine` with the ABI imports.
    pub fn new(engine: Engine, seed: u64, watchdog: Duration) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(&engine);
        crate::host::add_imports(&mut linker)?;
        let rt = Self {
            engine,
            linker: Arc::new(linker),
            seed,
            watchdog,
            deadline: Arc::new(AtomicUsize::new(0)),
        };
        rt.set_watchdog(true);
        Ok(rt)
    }

    fn watchdog_ticks(&self) -> u64 {
        (self.watchdog.as_millis() / EPOCH_PERIOD.as_millis()).max(1) as u64 + 1
    }

    /// The epoch deadline while the watchdog is off (added to the current
    /// epoch, so far from `u64::MAX`).
    pub const NO_DEADLINE: u64 = (usize::MAX / 4) as u64;

    /// Sets the watchdog period (every agent's next call uses it).
    pub fn set_watchdog_period(&mut self, watchdog: Duration) {
        self.watchdog = watchdog;
        self.set_watchdog(true);
    }

    /// Turns the wall-clock watchdog on or off for every agent's next calls
    /// (off while recorded ticks are re-executed: fuel bounds every call).
    pub fn set_watchdog(&self, on: bool) {
        let ticks = if on {
            self.watchdog_ticks()
        } else {
            Self::NO_DEADLINE
        };
        self.deadline.store(ticks as usize, Ordering::Relaxed);
    }
}

/// An agent's exports that a tick rarely calls, untyped (a typed function
/// also holds its type: with 100,000 agents the difference is 19 MB); their
/// signatures were checked at load, and each call checks its own again.
struct ColdExports {
    /// `agent_step` itself: plain steps go through the step entry when the
    /// module has one.
    f_step: Func,
    f_buffer: Func,
    f_init: Func,
    f_shutdown: Func,
    f_migrate: Option<Func>,
}

/// A live agent.
pub struct Agent {
    module: Arc<AgentModule>,
    store: Store<AgentHost>,
    memory: Memory,
    globals: Vec<Global>,
    /// The step entry instrumentation added, if it did
    /// ([`crate::instrument`]): `(ctx_ptr, tick, agent_id, mailbox_len |
    /// flags << 32)`.
    f_entry: Option<TypedFunc<(i32, i64, i64, i64), i32>>,
    f_receive: TypedFunc<i32, i32>,
    /// The exports a tick rarely calls, out of line: the worker walks its
    /// agents in order every tick, and a smaller agent is fewer cache lines
    /// to walk.
    cold: Box<ColdExports>,
    deadline: Arc<AtomicUsize>,
    /// Whether the next step is the first after `agent_init`.
    first_step: bool,
    /// Where the host buffer was at the last call (an address for cache
    /// hints only: it may be stale after the memory grows or moves).
    buffer_hint: usize,
    /// The bytes of the host buffer the host has placed something in and
    /// not yet zeroed (offset, length): the current call's context or
    /// message, or the last message or plain step's context, which stays
    /// until the next placement or [`Agent::settle`] (see [`Agent::step`]).
    placed: Option<(usize, usize)>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.store.data().id)
            .field("module", &self.module.name)
            .field("live", &self.store.data().counters.live)
            .finish_non_exhaustive()
    }
}

fn inst_fault(e: impl std::fmt::Display) -> Fault {
    Fault::Instantiate(e.to_string())
}

/// Maps an error from a call into the agent's fault class.
fn classify(err: &wasmtime::Error, host_fault: Option<Fault>) -> Fault {
    if let Some(f) = host_fault {
        return f;
    }
    if let Some(HostTrap(f)) = err.downcast_ref::<HostTrap>() {
        return f.clone();
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Fault::OutOfFuel,
        Some(wasmtime::Trap::Interrupt) => Fault::Watchdog,
        Some(t) => Fault::Trap(format!("{t:?}")),
        None => Fault::Trap(format!("{err:#}")),
    }
}

impl Agent {
    /// Instantiates `module` for agent `id` (no `agent_init` yet).
    pub fn instantiate(
        rt: &Runtime,
        module: Arc<AgentModule>,
        id: u64,
        limits: AgentLimits,
    ) -> Result<Self, Fault> {
        let mut store = Store::new(&rt.engine, AgentHost::new(id, rt.seed, limits));
        store.limiter(|h| h);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(rt.watchdog_ticks());
        // A start function, if any, runs under the per-call fuel limit.
        store.set_fuel(limits.fuel_per_call).map_err(inst_fault)?;
        let instance = rt
            .linker
            .instantiate(&mut store, &module.module)
            .map_err(|e| {
                if crate::oom::is_exhaustion(&e) {
                    crate::oom::exit_out_of_memory(&format!("instantiating agent {id}: {e}"));
                }
                let host = store.data_mut().fault.take();
                match classify(&e, host) {
                    Fault::Trap(m) => Fault::Instantiate(m),
                    other => other,
                }
            })?;
        Self::from_instance(rt, module, store, instance)
    }

    fn from_instance(
        rt: &Runtime,
        module: Arc<AgentModule>,
        mut store: Store<AgentHost>,
        instance: Instance,
    ) -> Result<Self, Fault> {
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| inst_fault("no exported memory"))?;
        store.data_mut().memory = Some(memory);
        let mut globals = Vec::with_capacity(module.globals.len());
        for g in &module.globals {
            let global = instance
                .get_global(&mut store, &g.export)
                .ok_or_else(|| inst_fault(format!("global export {} missing", g.export)))?;
            globals.push(global);
        }
        let export = |store: &mut Store<AgentHost>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| inst_fault(format!("export {name} missing")))
        };
        let f_buffer = export(&mut store, "agent_buffer")?;
        let f_init = export(&mut store, "agent_init")?;
        let f_step = export(&mut store, "agent_step")?;
        let f_entry = if module.step_entry {
            Some(
                instance
                    .get_typed_func(&mut store, crate::instrument::STEP_ENTRY_EXPORT)
                    .map_err(inst_fault)?,
            )
        } else {
            None
        };
        let f_receive = instance
            .get_typed_func(&mut store, "agent_receive")
            .map_err(inst_fault)?;
        let f_shutdown = export(&mut store, "agent_shutdown")?;
        let f_migrate = if module.has_migrate {
            Some(export(&mut store, "agent_migrate")?)
        } else {
            None
        };
        Ok(Self {
            module,
            store,
            memory,
            globals,
            f_entry,
            f_receive,
            cold: Box::new(ColdExports {
                f_step,
                f_buffer,
                f_init,
                f_shutdown,
                f_migrate,
            }),
            deadline: rt.deadline.clone(),
            first_step: true,
            buffer_hint: 0,
            placed: None,
        })
    }

    /// Instantiates the module once and checks its `agent_abi_version`
    /// (part of validation at load time).
    pub fn check_abi(
        rt: &Runtime,
        module: &AgentModule,
        memory_limit: u64,
    ) -> Result<u32, LoadError> {
        let limits = AgentLimits {
            memory_bytes: memory_limit,
            ..AgentLimits::default()
        };
        let mut store = Store::new(&rt.engine, AgentHost::new(0, rt.seed, limits));
        store.limiter(|h| h);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(rt.watchdog_ticks());
        let fail = |reason: String| LoadError::Invalid {
            module: module.name.clone(),
            reason,
        };
        store
            .set_fuel(limits.fuel_per_call)
            .map_err(|e| fail(e.to_string()))?;
        let instance = rt
            .linker
            .instantiate(&mut store, &module.module)
            .map_err(|e| fail(format!("instantiation failed: {e:#}")))?;
        let v = instance
            .get_typed_func::<(), i32>(&mut store, "agent_abi_version")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(|e| fail(format!("agent_abi_version() failed: {e:#}")))?
            as u32;
        let (major, minor) = (v >> 16, v & 0xFFFF);
        if major != ABI_MAJOR || minor > ABI_MINOR {
            return Err(LoadError::AbiVersion {
                module: module.name.clone(),
                major,
                minor,
            });
        }
        Ok(v)
    }

    /// The agent's id.
    pub fn id(&self) -> u64 {
        self.store.data().id
    }

    /// The module.
    pub fn module(&self) -> &Arc<AgentModule> {
        &self.module
    }

    /// Whether the agent is initialised and has not faulted.
    pub fn is_live(&self) -> bool {
        self.store.data().counters.live
    }

    /// The host data (outputs, counters).
    pub fn host(&mut self) -> &mut AgentHost {
        self.store.data_mut()
    }

    /// Current linear memory size in bytes.
    pub fn memory_size(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Runs `f` as one call with the per-call fuel limit and watchdog.
    /// `entry_fuel` is what a host entry point the call goes through
    /// consumes before the agent's own code starts (and nothing after): it
    /// is added to the limit and not counted as the agent's.
    fn call(
        &mut self,
        tick: u64,
        entry_fuel: u64,
        f: impl FnOnce(&mut Self) -> wasmtime::Result<i32>,
    ) -> CallOutcome {
        let limit = self.store.data().limits.fuel_per_call;
        let given = limit.saturating_add(entry_fuel);
        {
            let h = self.store.data_mut();
            h.tick = tick;
            h.fault = None;
            h.call_outputs = 0;
        }
        if self.store.set_fuel(given).is_err() {
            return CallOutcome {
                fuel: 0,
                fault: Some(Fault::OutOfFuel),
            };
        }
        self.store
            .set_epoch_deadline(self.deadline.load(Ordering::Relaxed) as u64);
        let r = f(self);
        let left = self.store.get_fuel().unwrap_or(0);
        let fuel = given.saturating_sub(left).saturating_sub(entry_fuel);
        let fault = match r {
            Ok(0) => None,
            Ok(code) => Some(Fault::AgentError(code)),
            Err(e) => {
                let host = self.store.data_mut().fault.take();
                Some(classify(&e, host))
            }
        };
        if fault.is_some() {
            self.store.data_mut().counters.live = false;
        }
        CallOutcome { fuel, fault }
    }

    /// Places `head` followed by `tail` in the agent's host buffer (asking
    /// the agent for a larger one if needed) and returns its address.  The
    /// parts are copied straight into linear memory (no intermediate
    /// buffer; one memory look-up for the bounds check and the copies),
    /// and what an earlier placement left beyond them is zeroed in the same
    /// pass.
    fn place<const N: usize>(&mut self, head: &[u8; N], tail: &[&[u8]]) -> wasmtime::Result<i32> {
        let need: usize = N + tail.iter().map(|p| p.len()).sum::<usize>();
        let (mut ptr, mut cap) = self.store.data().counters.buffer;
        if (cap as usize) < need {
            // The agent runs (`agent_buffer`) with its buffer all zero.
            self.settle();
            let want = need.next_power_of_two().max(256);
            let want = i32::try_from(want)
                .map_err(|_| HostTrap(Fault::BadHostCall("message too large".into())))?;
            let p = (self.cold.f_buffer)
                .typed::<i32, i32>(&self.store)?
                .call(&mut self.store, want)?;
            ptr = p as u32;
            cap = want as u32;
            if p == 0 || ptr % 8 != 0 {
                let f = Fault::BadHostCall(format!("agent_buffer({want}) returned {p:#x}"));
                self.store.data_mut().fault = Some(f.clone());
                return Err(HostTrap(f).into());
            }
            self.store.data_mut().counters.buffer = (ptr, cap);
        }
        let start = ptr as usize;
        let stale_end = match self.placed {
            Some((s, len)) if s == start => start + len,
            Some(_) => {
                self.settle();
                0
            }
            None => 0,
        };
        let dst = start
            .checked_add(need)
            .map(|end| end.max(stale_end))
            .and_then(|end| self.memory.data_mut(&mut self.store).get_mut(start..end));
        let Some(dst) = dst else {
            let f = Fault::BadHostCall(format!("agent buffer {ptr:#x}+{need} is outside memory"));
            self.store.data_mut().fault = Some(f.clone());
            return Err(HostTrap(f).into());
        };
        self.buffer_hint = dst.as_ptr() as usize;
        self.placed = Some((start, need));
        let (dst_head, mut rest) = dst.split_at_mut(N);
        dst_head.copy_from_slice(head);
        for p in tail.iter().filter(|p| !p.is_empty()) {
            let (d, r) = rest.split_at_mut(p.len());
            d.copy_from_slice(p);
            rest = r;
        }
        rest.fill(0);
        Ok(ptr as i32)
    }

    /// Zeroes what the host left in the agent's buffer (the last context or
    /// message): before any call that is not given something new in its
    /// place, and before anything reads the agent's memory, the buffer is
    /// all zero as the ABI says.  Without it a context written into every
    /// agent's memory every tick would change a page of every agent between
    /// any two checkpoints: cleared, the memory of an agent that writes
    /// nothing stays the same, and checkpoints ship and hash only what
    /// agents themselves wrote.
    fn settle(&mut self) {
        let Some((start, len)) = self.placed.take() else {
            return;
        };
        let data = self.memory.data_mut(&mut self.store);
        if let Some(d) = start
            .checked_add(len)
            .and_then(|end| data.get_mut(start..end))
        {
            d.fill(0);
        }
    }

    /// `agent_init`.
    pub fn init(&mut self, tick: u64) -> CallOutcome {
        self.settle();
        let out = self.call(tick, 0, |a| {
            (a.cold.f_init)
                .typed::<(), i32>(&a.store)?
                .call(&mut a.store, ())
        });
        if out.fault.is_none() {
            self.store.data_mut().counters.live = true;
            self.first_step = true;
        }
        out
    }

    /// `agent_receive` for one message.
    pub fn receive(&mut self, tick: u64, msg: MessageRef<'_>) -> CallOutcome {
        let head = message_header(msg);
        let out = self.call(tick, 0, |a| {
            let p = a.place(&head, &[msg.topic.as_bytes(), msg.payload])?;
            a.f_receive.call(&mut a.store, p)
        });
        // Left in place (see `step`): the next placement overwrites it and
        // zeroes what it leaves of it.
        out
    }

    /// Starts loading what the agent's next call touches first (its host
    /// data and its host buffer) into the CPU's caches: with thousands of
    /// agents per worker each call otherwise begins with cache and TLB
    /// misses; issued a few agents ahead, those misses overlap.
    pub fn prefetch(&self) {
        // Every line of the host data: a call reads and writes fields all
        // over it (its tick, fault, limits, counters, outputs, logs).
        let host = std::ptr::from_ref(self.store.data()) as usize;
        for line in (0..std::mem::size_of::<AgentHost>()).step_by(64) {
            shm_protocol::prefetch::prefetch(host + line);
        }
        shm_protocol::prefetch::prefetch(self.buffer_hint);
    }

    /// `agent_step`.
    ///
    /// A plain step (no task) of an agent whose buffer holds a context
    /// goes through the step entry, which writes the context inside wasm
    /// ([`crate::instrument`]).  Every context or message stays in the
    /// buffer after its call, faulted or not, until the next placement
    /// overwrites it or the host zeroes it (`settle`) — nothing reads the
    /// memory in between (no agent code runs, and every other call and
    /// every host read of the memory settles first), so what agents and
    /// checkpoints see is what they would if it were zeroed on return.
    pub fn step(&mut self, tick: u64, task: Option<&TaskRef>, mailbox_len: u32) -> CallOutcome {
        let first = std::mem::replace(&mut self.first_step, false);
        let (ptr, cap) = self.store.data().counters.buffer;
        if task.is_none() && cap as usize >= CTX_SIZE && self.f_entry.is_some() {
            let start = ptr as usize;
            if self.placed != Some((start, CTX_SIZE)) {
                self.settle();
            }
            let id = self.id();
            let mailbox_and_flags = u64::from(mailbox_len) | (u64::from(first) << 32);
            let out = self.call(tick, crate::instrument::STEP_ENTRY_FUEL, |a| {
                let args = (ptr as i32, tick as i64, id as i64, mailbox_and_flags as i64);
                match &a.f_entry {
                    Some(entry) => entry.call(&mut a.store, args),
                    None => Err(HostTrap(Fault::Unknown("no step entry".into())).into()),
                }
            });
            self.placed = Some((start, CTX_SIZE));
            return out;
        }
        let head = context_header(tick, self.id(), task, mailbox_len, first);
        let payload: &[u8] = task.map_or(&[], |t| &t.payload);
        self.call(tick, 0, |a| {
            let p = a.place(&head, &[payload])?;
            (a.cold.f_step)
                .typed::<i32, i32>(&a.store)?
                .call(&mut a.store, p)
        })
    }

    /// `agent_shutdown`.
    pub fn shutdown(&mut self, tick: u64) -> CallOutcome {
        self.settle();
        let out = self.call(tick, 0, |a| {
            (a.cold.f_shutdown)
                .typed::<(), i32>(&a.store)?
                .call(&mut a.store, ())
        });
        self.store.data_mut().counters.live = false;
        out
    }

    /// `agent_migrate(from)` after a hot-swap, if the module exports it.
    pub fn migrate(&mut self, tick: u64, from_version: i32) -> Option<CallOutcome> {
        let f = self.cold.f_migrate?;
        self.settle();
        Some(self.call(tick, 0, |a| {
            f.typed::<i32, i32>(&a.store)?
                .call(&mut a.store, from_version)
        }))
    }

    /// The agent's linear memory, mutable globals and host counters, as
    /// they are between calls (for imaging without copying memory).
    pub fn parts(&mut self) -> (&[u8], Vec<GlobalValue>, HostCounters) {
        self.settle();
        let globals = self
            .globals
            .iter()
            .map(|g| global_value(g.get(&mut self.store)))
            .collect();
        let counters = self.store.data().counters;
        (self.memory.data(&self.store), globals, counters)
    }

    /// Moves this agent to another module version between calls: a fresh
    /// instance of `module` receives this agent's linear memory (grown to
    /// its size), its mutable globals (when the new module declares the same
    /// ones; otherwise the new module keeps its own and must rebuild what it
    /// needs in `agent_migrate`) and its host counters; then
    /// `agent_migrate(old ABI version)` runs if the new module exports it.
    pub fn upgrade(
        mut self,
        rt: &Runtime,
        module: Arc<AgentModule>,
        tick: u64,
        skip_migrate: bool,
    ) -> Result<(Self, Option<CallOutcome>), Fault> {
        let old_abi = self.module.abi_version;
        let same_globals = self
            .module
            .globals
            .iter()
            .map(|g| &g.ty)
            .eq(module.globals.iter().map(|g| &g.ty));
        if !same_globals && !module.has_migrate {
            return Err(Fault::Instantiate(format!(
                "module {} declares other mutable globals than {} and exports no agent_migrate",
                module.name, self.module.name
            )));
        }
        let old = self.capture();
        let limits = self.store.data().limits;
        let old_module = self.module.clone();
        let mut new = Self::instantiate(rt, module, self.id(), limits)?;
        let globals = same_globals.then_some(&old.globals[..]);
        let memory = merge_static_data(&old_module, &new.module, old.memory);
        new.load_image(&memory, globals, old.host)?;
        let migrated = if skip_migrate {
            None
        } else {
            new.migrate(tick, old_abi as i32)
        };
        Ok((new, migrated))
    }

    /// Overwrites this (fresh, between calls) instance with a memory image
    /// (grown to its size; the image may be shorter than a larger initial
    /// memory), the given mutable global values (or keeps the module's own)
    /// and host counters.
    fn load_image(
        &mut self,
        memory: &[u8],
        globals: Option<&[GlobalValue]>,
        counters: HostCounters,
    ) -> Result<(), Fault> {
        let current = self.memory.data_size(&self.store);
        if memory.len() > current {
            self.memory
                .grow(&mut self.store, ((memory.len() - current) / PAGE) as u64)
                .map_err(|e| Fault::Instantiate(format!("growing memory: {e}")))?;
        }
        self.memory.data_mut(&mut self.store)[..memory.len()].copy_from_slice(memory);
        self.set_globals_and_counters(globals, counters)
    }

    /// Sets the given mutable global values (or keeps the module's own)
    /// and the host counters.
    fn set_globals_and_counters(
        &mut self,
        globals: Option<&[GlobalValue]>,
        counters: HostCounters,
    ) -> Result<(), Fault> {
        // A captured buffer is one `agent_buffer` returned: aligned, and
        // room for a context inside the memory (restored images are
        // untrusted bytes).
        let (ptr, cap) = counters.buffer;
        let fits = (ptr as usize)
            .checked_add((cap as usize).min(CTX_SIZE))
            .is_some_and(|end| end <= self.memory.data_size(&self.store));
        if cap != 0 && (ptr == 0 || ptr % 8 != 0 || !fits) {
            return Err(Fault::Instantiate(format!(
                "captured host buffer {ptr:#x}+{cap} is not one the agent could have given"
            )));
        }
        for (g, v) in self.globals.iter().zip(globals.unwrap_or(&[])) {
            let val = match *v {
                GlobalValue::I32(x) => Val::I32(x),
                GlobalValue::I64(x) => Val::I64(x),
                GlobalValue::F32(x) => Val::F32(x),
                GlobalValue::F64(x) => Val::F64(x),
                GlobalValue::V128(x) => Val::V128(x.into()),
            };
            g.set(&mut self.store, val)
                .map_err(|e| Fault::Instantiate(format!("setting a global: {e}")))?;
        }
        self.store.data_mut().counters = counters;
        self.first_step = false;
        Ok(())
    }

    /// Flips one byte of linear memory (test-only fault injection).
    pub fn flip_byte(&mut self, offset: usize) {
        self.settle();
        let data = self.memory.data_mut(&mut self.store);
        if let Some(b) = data.get_mut(offset) {
            *b ^= 0xFF;
        }
    }

    /// Captures the agent's complete mutable state (between calls).
    pub fn capture(&mut self) -> AgentState {
        self.settle();
        let memory = self.memory.data(&self.store).to_vec();
        let globals = self
            .globals
            .iter()
            .map(|g| global_value(g.get(&mut self.store)))
            .collect();
        AgentState {
            module_hash: self.module.hash,
            memory,
            globals,
            host: self.store.data().counters,
        }
    }

    /// BLAKE3 of the agent's state, computed in place (same value as
    /// [`state_hash`] of [`Agent::capture`]).
    pub fn state_hash(&mut self) -> [u8; 32] {
        self.settle();
        let globals: Vec<GlobalValue> = self
            .globals
            .iter()
            .map(|g| global_value(g.get(&mut self.store)))
            .collect();
        let counters = self.store.data().counters;
        hash_parts(
            &self.module.hash,
            self.memory.data(&self.store),
            &globals,
            &counters,
        )
    }

    /// Re-creates an agent from a captured state: a fresh instance whose
    /// memory, globals and host counters are overwritten with the state.
    pub fn restore(
        rt: &Runtime,
        module: Arc<AgentModule>,
        id: u64,
        limits: AgentLimits,
        state: &AgentState,
    ) -> Result<Self, Fault> {
        Self::restore_with(rt, module, id, limits, ImageParts::of(state), |m| {
            m.copy_from_slice(&state.memory);
            Ok(())
        })
    }

    /// Re-creates an agent from the parts of an image: a fresh instance
    /// whose memory is grown to `parts.memory_len` and handed to `fill`
    /// (holding the module's initial contents) to be made the image's, in
    /// place — no intermediate copy of the memory — and whose globals and
    /// host counters are then set.
    pub fn restore_with(
        rt: &Runtime,
        module: Arc<AgentModule>,
        id: u64,
        limits: AgentLimits,
        parts: ImageParts<'_>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<Self, Fault> {
        if *parts.module_hash != module.hash {
            return Err(Fault::Instantiate(format!(
                "state was captured from module {}, not {} ({})",
                hex(parts.module_hash),
                module.name,
                hex(&module.hash)
            )));
        }
        if parts.globals.len() != module.globals.len() {
            return Err(Fault::Instantiate(format!(
                "state has {} globals, module {} has {}",
                parts.globals.len(),
                module.name,
                module.globals.len()
            )));
        }
        let len = parts.memory_len;
        if !len.is_multiple_of(PAGE as u64) || len > limits.memory_bytes {
            return Err(Fault::Instantiate(format!(
                "captured memory of {len} bytes is not a whole number of pages within the limit"
            )));
        }
        let len = len as usize;
        let mut agent = Self::instantiate(rt, module, id, limits)?;
        let current = agent.memory.data_size(&agent.store);
        if len < current {
            return Err(Fault::Instantiate(format!(
                "captured memory ({len} bytes) is smaller than the module's initial memory ({current})"
            )));
        }
        if len > current {
            agent
                .memory
                .grow(&mut agent.store, ((len - current) / PAGE) as u64)
                .map_err(|e| Fault::Instantiate(format!("growing memory: {e}")))?;
        }
        fill(&mut agent.memory.data_mut(&mut agent.store)[..len]).map_err(Fault::Instantiate)?;
        agent.set_globals_and_counters(Some(parts.globals), parts.host)?;
        Ok(agent)
    }
}

/// What an image holds besides its memory, for [`Agent::restore_with`].
#[derive(Debug, Clone, Copy)]
pub struct ImageParts<'a> {
    /// The module the image was captured from.
    pub module_hash: &'a [u8; 32],
    /// Bytes of linear memory.
    pub memory_len: u64,
    /// Mutable globals, in module order.
    pub globals: &'a [GlobalValue],
    /// Host counters.
    pub host: HostCounters,
}

impl<'a> ImageParts<'a> {
    /// The parts of a captured state.
    pub fn of(state: &'a AgentState) -> Self {
        Self {
            module_hash: &state.module_hash,
            memory_len: state.memory.len() as u64,
            globals: &state.globals,
            host: state.host,
        }
    }
}

/// The memory a hot-swapped agent continues with: its old memory, with the
/// new module's static data where the new module's data segments put it —
/// except where the old module had the very same initial byte at the same
/// place (static data both versions share, whose current value, changed or
/// not, is the agent's state).  Everything else the agent wrote (its heap,
/// its stack, its zero-initialised statics) is kept.
fn merge_static_data(old: &AgentModule, new: &AgentModule, mut memory: Vec<u8>) -> Vec<u8> {
    // The old module's initial contents over the range the new segments
    // cover, and which of those bytes its segments define.
    let end = new
        .data
        .iter()
        .map(|(off, b)| *off as usize + b.len())
        .max()
        .unwrap_or(0)
        .min(memory.len());
    let mut initial = vec![0u8; end];
    let mut defined = vec![false; end];
    for (off, bytes) in old.data.iter() {
        let off = *off as usize;
        if off < end {
            let n = bytes.len().min(end - off);
            initial[off..off + n].copy_from_slice(&bytes[..n]);
            defined[off..off + n].iter_mut().for_each(|d| *d = true);
        }
    }
    for (off, bytes) in new.data.iter() {
        let off = *off as usize;
        for (i, b) in bytes.iter().enumerate() {
            let addr = off + i;
            if addr >= end {
                break;
            }
            let shared = defined[addr] && initial[addr] == *b;
            if !shared {
                memory[addr] = *b;
            }
        }
    }
    memory
}

fn global_value(v: Val) -> GlobalValue {
    match v {
        Val::I32(x) => GlobalValue::I32(x),
        Val::I64(x) => GlobalValue::I64(x),
        Val::F32(x) => GlobalValue::F32(x),
        Val::F64(x) => GlobalValue::F64(x),
        Val::V128(x) => GlobalValue::V128(x.as_u128()),
        // Reference-typed mutable globals are refused at load.
        _ => GlobalValue::I32(0),
    }
}

/// BLAKE3 of every [`CHUNK`]-byte chunk of `memory`.
pub fn chunk_hashes(memory: &[u8]) -> Vec<[u8; 32]> {
    memory
        .chunks(CHUNK)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect()
}

fn hash_parts(
    module: &[u8; 32],
    memory: &[u8],
    globals: &[GlobalValue],
    c: &HostCounters,
) -> [u8; 32] {
    image_hash(
        module,
        memory.len() as u64,
        chunk_hashes(memory),
        globals,
        c,
    )
}

/// The stable content hash of a captured state.
pub fn state_hash(s: &AgentState) -> [u8; 32] {
    hash_parts(&s.module_hash, &s.memory, &s.globals, &s.host)
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The fixed part of the step context (docs/abi.md "Step context"); the
/// task payload, if any, follows it.
pub fn context_header(
    tick: u64,
    id: u64,
    task: Option<&TaskRef>,
    mailbox_len: u32,
    first: bool,
) -> [u8; CTX_SIZE] {
    let payload_len = task.map_or(0, |t| t.payload.len()) as u32;
    let mut b = [0u8; CTX_SIZE];
    b[0..4].copy_from_slice(&(CTX_SIZE as u32).to_le_bytes());
    b[4..8].copy_from_slice(&((ABI_MAJOR << 16) | ABI_MINOR).to_le_bytes());
    b[8..16].copy_from_slice(&tick.to_le_bytes());
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b[24..32].copy_from_slice(&task.map_or(0, |t| t.task_id).to_le_bytes());
    b[32..36].copy_from_slice(&task.map_or(0, |t| t.priority).to_le_bytes());
    b[36..40].copy_from_slice(&payload_len.to_le_bytes());
    b[40..44].copy_from_slice(&mailbox_len.to_le_bytes());
    b[44..48].copy_from_slice(&u32::from(first).to_le_bytes());
    // 48..64: reserved (zero).
    b
}

/// Encodes the step context (docs/abi.md "Step context"): the fixed part
/// followed by the task payload.
pub fn encode_context(
    tick: u64,
    id: u64,
    task: Option<&TaskRef>,
    mailbox_len: u32,
    first: bool,
) -> Vec<u8> {
    let payload: &[u8] = task.map_or(&[], |t| &t.payload);
    let mut b = Vec::with_capacity(CTX_SIZE + payload.len());
    b.extend_from_slice(&context_header(tick, id, task, mailbox_len, first));
    b.extend_from_slice(payload);
    b
}

/// The fixed part of a message (docs/abi.md "Message"); the topic and the
/// payload follow it.
pub fn message_header(m: MessageRef<'_>) -> [u8; MSG_SIZE] {
    let mut b = [0u8; MSG_SIZE];
    b[0..4].copy_from_slice(&(MSG_SIZE as u32).to_le_bytes());
    b[4..8].copy_from_slice(&m.kind.to_le_bytes());
    b[8..16].copy_from_slice(&m.sender.to_le_bytes());
    b[16..24].copy_from_slice(&m.sent_tick.to_le_bytes());
    b[24..32].copy_from_slice(&m.seq.to_le_bytes());
    b[32..36].copy_from_slice(&(m.topic.len() as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(m.payload.len() as u32).to_le_bytes());
    // 40..48: reserved (zero).
    b
}

/// Encodes a message (docs/abi.md "Message").
pub fn encode_message(m: MessageRef<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(MSG_SIZE + m.topic.len() + m.payload.len());
    b.extend_from_slice(&message_header(m));
    b.extend_from_slice(m.topic.as_bytes());
    b.extend_from_slice(m.payload);
    b
}
