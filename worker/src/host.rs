//! The host side of the agent ABI: per-agent store data and the `lockstep`
//! imports (docs/abi.md).
//!
//! Every import validates every pointer and length against the agent's
//! memory before touching it; a bad one becomes [`Fault::BadHostCall`] for
//! that agent only.  Imports cost fuel ([`IMPORT_BASE_FUEL`] plus one unit
//! per [`IMPORT_BYTES_PER_FUEL`] bytes copied) so a guest cannot do unbounded
//! host work within a bounded fuel budget.

use shm_protocol::worker::{AgentLimits, Fault, HostCounters, Output, Outputs, Payload};
use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

/// Fixed fuel cost of every import call.
pub const IMPORT_BASE_FUEL: u64 = 100;
/// Bytes copied per additional fuel unit.
pub const IMPORT_BYTES_PER_FUEL: u64 = 64;
/// Longest topic or channel name.
pub const MAX_NAME: usize = 256;
/// Most task dependencies per task.
pub const MAX_DEPS: usize = 64;
/// Longest log line kept (longer ones are truncated).
pub const MAX_LOG_LINE: usize = 1024;
/// Log lines per agent per tick before rate limiting.
pub const LOG_LINES_PER_TICK: u32 = 16;

/// Return codes of imports (docs/abi.md).
pub mod rc {
    /// Accepted.
    pub const OK: i32 = 0;
    /// Invalid argument (e.g. empty or non-UTF-8 name).
    pub const INVALID: i32 = -1;
    /// Quota exceeded (too many outputs in one call).
    pub const QUOTA: i32 = -2;
    /// Payload too large.
    pub const TOO_LARGE: i32 = -3;
}

/// A host-side failure that ends the current call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostTrap(pub Fault);

/// Store data of one agent.
#[derive(Debug)]
pub struct AgentHost {
    /// The agent's id.
    pub id: u64,
    /// Current tick.
    pub tick: u64,
    /// Run seed.
    pub seed: u64,
    /// Limits.
    pub limits: AgentLimits,
    /// The agent's memory (set after instantiation).
    pub memory: Option<Memory>,
    /// Counters captured with the agent's state.
    pub counters: HostCounters,
    /// Outputs of the current tick.
    pub outputs: Outputs,
    /// Outputs made during the current call.
    pub call_outputs: u32,
    /// Output payload bytes this tick: (tick, bytes).
    pub tick_bytes: (u64, u64),
    /// Random stream: (tick it was derived for, base, calls so far).
    rand: (u64, u64, u64),
    /// Log lines emitted this tick, and lines suppressed.
    logs: (u64, u32, u32),
    /// A fault raised by an import or the limiter during the current call.
    pub fault: Option<Fault>,
}

impl AgentHost {
    /// Fresh store data for agent `id`.
    pub fn new(id: u64, seed: u64, limits: AgentLimits) -> Self {
        Self {
            id,
            tick: 0,
            seed,
            limits,
            memory: None,
            counters: HostCounters::default(),
            outputs: Outputs::new(),
            call_outputs: 0,
            tick_bytes: (u64::MAX, 0),
            rand: (u64::MAX, 0, 0),
            logs: (u64::MAX, 0, 0),
            fault: None,
        }
    }

    /// Log lines suppressed by rate limiting in the current tick.
    pub fn logs_suppressed(&self) -> u32 {
        if self.logs.0 == self.tick {
            self.logs.2
        } else {
            0
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.counters.out_seq += 1;
        self.counters.out_seq
    }

    /// The next value of the agent's random stream (docs/abi.md).
    pub fn random(&mut self) -> u64 {
        if self.rand.0 != self.tick {
            let mut h = blake3::Hasher::new();
            h.update(&self.seed.to_le_bytes());
            h.update(&self.id.to_le_bytes());
            h.update(&self.tick.to_le_bytes());
            let d = h.finalize();
            let mut w = [0u8; 8];
            w.copy_from_slice(&d.as_bytes()[..8]);
            self.rand = (self.tick, u64::from_le_bytes(w), 0);
        }
        let v = splitmix64(self.rand.1.wrapping_add(self.rand.2));
        self.rand.2 += 1;
        v
    }
}

/// SplitMix64 finaliser.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ResourceLimiter for AgentHost {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limits.memory_bytes {
            self.fault = Some(Fault::MemoryLimit);
            return Err(HostTrap(Fault::MemoryLimit).into());
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The agent's limit allowed the growth, the OS did not: the worker
        // is out of memory (see `crate::oom`).
        crate::oom::exit_out_of_memory(&format!("a linear memory could not grow: {error}"));
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > u64::from(self.limits.table_elements) {
            self.fault = Some(Fault::TableLimit);
            return Err(HostTrap(Fault::TableLimit).into());
        }
        Ok(true)
    }
}

type C<'a> = Caller<'a, AgentHost>;

fn trap(caller: &mut C<'_>, fault: Fault) -> wasmtime::Error {
    caller.data_mut().fault = Some(fault.clone());
    HostTrap(fault).into()
}

fn bad(caller: &mut C<'_>, what: String) -> wasmtime::Error {
    trap(caller, Fault::BadHostCall(what))
}

/// Charges an import's fuel: base cost plus the bytes it copies.
fn charge(caller: &mut C<'_>, bytes: usize) -> wasmtime::Result<()> {
    let cost = IMPORT_BASE_FUEL + bytes as u64 / IMPORT_BYTES_PER_FUEL;
    let fuel = caller.get_fuel()?;
    if fuel < cost {
        caller.set_fuel(0)?;
        return Err(trap(caller, Fault::OutOfFuel));
    }
    caller.set_fuel(fuel - cost)
}

/// The bytes `[ptr, ptr+len)` of a memory of `size` bytes, if they are
/// all in it.
fn span(size: usize, ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let len = usize::try_from(len).ok()?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

/// The [`Fault::BadHostCall`] of a `[ptr, ptr+len)` that [`span`] refused,
/// naming `what`.
fn out_of_range(caller: &mut C<'_>, what: &str, ptr: i32, len: i32) -> wasmtime::Error {
    if len < 0 {
        return bad(caller, format!("{what}: negative length {len}"));
    }
    let Some(mem) = caller.data().memory else {
        return bad(caller, format!("{what}: agent has no memory"));
    };
    let size = mem.data_size(&*caller);
    let start = ptr as u32 as usize;
    bad(
        caller,
        format!("{what}: range {start}+{len} is outside the memory of {size} bytes"),
    )
}

/// Checks `[ptr, ptr+len)` against the agent's memory: the memory and
/// the range, or a [`Fault::BadHostCall`] naming `what`.
fn range(
    caller: &mut C<'_>,
    what: &str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<(Memory, std::ops::Range<usize>)> {
    if let Some(mem) = caller.data().memory
        && let Some(r) = span(mem.data_size(&*caller), ptr, len)
    {
        return Ok((mem, r));
    }
    Err(out_of_range(caller, what, ptr, len))
}

/// Copies `len` bytes at `ptr` out of the agent's memory (into a
/// [`Payload`] for messages: short ones need no allocation), validating
/// both.
fn read<T: for<'a> From<&'a [u8]>>(
    caller: &mut C<'_>,
    what: &str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<T> {
    if let Some(mem) = caller.data().memory {
        let data = mem.data(&*caller);
        if let Some(r) = span(data.len(), ptr, len) {
            return Ok(T::from(&data[r]));
        }
    }
    Err(out_of_range(caller, what, ptr, len))
}

/// Reads a topic or channel name; `Ok(None)` when it is not a valid name
/// (the import then returns [`rc::INVALID`]).
fn read_name(
    caller: &mut C<'_>,
    what: &str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Option<String>> {
    let bytes: Vec<u8> = read(caller, what, ptr, len)?;
    if bytes.is_empty() || bytes.len() > MAX_NAME {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

/// Admission checks for a new output: returns `Some(code)` to refuse it,
/// otherwise counts its bytes against the per-tick budget.
fn admit(caller: &mut C<'_>, payload: usize) -> Option<i32> {
    let h = caller.data_mut();
    if payload > h.limits.max_payload as usize {
        return Some(rc::TOO_LARGE);
    }
    if h.call_outputs >= h.limits.max_outputs_per_call || !h.outputs.has_room() {
        return Some(rc::QUOTA);
    }
    if h.tick_bytes.0 != h.tick {
        h.tick_bytes = (h.tick, 0);
    }
    if h.tick_bytes.1 + payload as u64 > u64::from(h.limits.max_output_bytes_per_tick) {
        return Some(rc::QUOTA);
    }
    h.tick_bytes.1 += payload as u64;
    None
}

fn push(caller: &mut C<'_>, out: Output) {
    let h = caller.data_mut();
    h.call_outputs += 1;
    h.outputs.push(&out);
}

/// Registers every `lockstep` import.
pub fn add_imports(linker: &mut Linker<AgentHost>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "lockstep",
        "send",
        |mut c: C<'_>, to: i64, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            // The payload goes from the agent's memory straight into the
            // outputs block.
            let (mem, payload) = range(&mut c, "send payload", ptr, len)?;
            charge(&mut c, payload.len())?;
            if to <= 0 {
                return Ok(rc::INVALID);
            }
            if let Some(code) = admit(&mut c, payload.len()) {
                return Ok(code);
            }
            let (data, h) = mem.data_and_store_mut(&mut c);
            let seq = h.next_seq();
            h.call_outputs += 1;
            h.outputs.push_send(to as u64, seq, &data[payload]);
            Ok(rc::OK)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "publish",
        |mut c: C<'_>, tp: i32, tl: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let topic = read_name(&mut c, "publish topic", tp, tl)?;
            let payload: Payload = read(&mut c, "publish payload", ptr, len)?;
            charge(&mut c, payload.len() + tl.max(0) as usize)?;
            let Some(topic) = topic else {
                return Ok(rc::INVALID);
            };
            if let Some(code) = admit(&mut c, payload.len()) {
                return Ok(code);
            }
            let seq = c.data_mut().next_seq();
            push(
                &mut c,
                Output::Publish {
                    topic,
                    seq,
                    payload,
                },
            );
            Ok(rc::OK)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "channel_send",
        |mut c: C<'_>, np: i32, nl: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let channel = read_name(&mut c, "channel_send name", np, nl)?;
            let payload: Payload = read(&mut c, "channel_send payload", ptr, len)?;
            charge(&mut c, payload.len() + nl.max(0) as usize)?;
            let Some(channel) = channel else {
                return Ok(rc::INVALID);
            };
            if let Some(code) = admit(&mut c, payload.len()) {
                return Ok(code);
            }
            let seq = c.data_mut().next_seq();
            push(
                &mut c,
                Output::ChannelSend {
                    channel,
                    seq,
                    payload,
                },
            );
            Ok(rc::OK)
        },
    )?;
    type NameOut = fn(String) -> Output;
    let name_imports: [(&str, NameOut); 4] = [
        ("subscribe", Output::Subscribe),
        ("unsubscribe", Output::Unsubscribe),
        ("join_channel", Output::Join),
        ("leave_channel", Output::Leave),
    ];
    for (name, make) in name_imports {
        linker.func_wrap(
            "lockstep",
            name,
            move |mut c: C<'_>, p: i32, l: i32| -> wasmtime::Result<i32> {
                let n = read_name(&mut c, name, p, l)?;
                charge(&mut c, l.max(0) as usize)?;
                let Some(n) = n else { return Ok(rc::INVALID) };
                if let Some(code) = admit(&mut c, 0) {
                    return Ok(code);
                }
                push(&mut c, make(n));
                Ok(rc::OK)
            },
        )?;
    }
    linker.func_wrap(
        "lockstep",
        "schedule_task",
        |mut c: C<'_>,
         agent: i64,
         prio: i32,
         ptr: i32,
         len: i32,
         dp: i32,
         dl: i32|
         -> wasmtime::Result<i64> {
            let payload: Vec<u8> = read(&mut c, "schedule_task payload", ptr, len)?;
            if dl < 0 || dl as usize > MAX_DEPS {
                charge(&mut c, payload.len())?;
                return Ok(i64::from(rc::INVALID));
            }
            let deps_bytes: Vec<u8> = read(&mut c, "schedule_task deps", dp, dl.saturating_mul(8))?;
            charge(&mut c, payload.len() + deps_bytes.len())?;
            if agent <= 0 {
                return Ok(i64::from(rc::INVALID));
            }
            if let Some(code) = admit(&mut c, payload.len()) {
                return Ok(i64::from(code));
            }
            let deps = deps_bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect();
            let h = c.data_mut();
            h.counters.tasks += 1;
            let task_id = (h.id << 32) | (h.counters.tasks & 0xFFFF_FFFF);
            push(
                &mut c,
                Output::ScheduleTask {
                    task_id,
                    target: agent as u64,
                    priority: prio,
                    payload,
                    deps,
                },
            );
            Ok(task_id as i64)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "infer",
        |mut c: C<'_>, mp: i32, ml: i32, ip: i32, il: i32| -> wasmtime::Result<i64> {
            let model = read_name(&mut c, "infer model", mp, ml)?;
            let input: Vec<u8> = read(&mut c, "infer input", ip, il)?;
            charge(&mut c, input.len() + ml.max(0) as usize)?;
            let Some(model) = model else {
                return Ok(i64::from(rc::INVALID));
            };
            if let Some(code) = admit(&mut c, input.len()) {
                return Ok(i64::from(code));
            }
            let h = c.data_mut();
            h.counters.requests += 1;
            let request_id = h.counters.requests;
            push(
                &mut c,
                Output::Infer {
                    request_id,
                    model,
                    input,
                },
            );
            Ok(request_id as i64)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let bytes: Vec<u8> = read(&mut c, "log line", ptr, len)?;
            charge(&mut c, bytes.len())?;
            let h = c.data_mut();
            if h.logs.0 != h.tick {
                h.logs = (h.tick, 0, 0);
            }
            if h.logs.1 >= LOG_LINES_PER_TICK {
                h.logs.2 += 1;
                return Ok(rc::QUOTA);
            }
            if !h.outputs.has_room() {
                return Ok(rc::QUOTA);
            }
            h.logs.1 += 1;
            let mut line =
                String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LOG_LINE)]).into_owned();
            line.retain(|ch| ch != '\n' && ch != '\r');
            let level = level.clamp(0, 4) as u8;
            h.outputs.push(&Output::Log { level, line });
            Ok(rc::OK)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "random",
        |mut c: C<'_>| -> wasmtime::Result<i64> {
            charge(&mut c, 0)?;
            Ok(c.data_mut().random() as i64)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "tick",
        |mut c: C<'_>| -> wasmtime::Result<i64> {
            charge(&mut c, 0)?;
            Ok(c.data().tick as i64)
        },
    )?;
    linker.func_wrap(
        "lockstep",
        "agent_id",
        |mut c: C<'_>| -> wasmtime::Result<i64> {
            charge(&mut c, 0)?;
            Ok(c.data().id as i64)
        },
    )?;
    Ok(())
}
