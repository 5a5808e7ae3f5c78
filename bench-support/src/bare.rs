//! Agents outside the worker's command path, for the benches' in-process
//! floor: a `Store` per agent on the worker's runtime (same engine, linker,
//! host state and limits), `agent_init` done and the step context of tick 1
//! written into the agent's buffer (feature `bare`).

use lockstep_worker::agent::{Runtime, encode_context};
use lockstep_worker::engine::AgentModule;
use lockstep_worker::host::AgentHost;
use shm_protocol::worker::AgentLimits;
use wasmtime::{Store, TypedFunc};

/// An agent's store, its `agent_step` and the context pointer to pass it.
pub type Bare = (Store<AgentHost>, TypedFunc<i32, i32>, i32);

/// Instantiates agent `id` of `module` under `lim`.
pub fn bare_agent(rt: &Runtime, module: &AgentModule, id: u64, lim: AgentLimits) -> Bare {
    let mut store = Store::new(&rt.engine, AgentHost::new(id, rt.seed, lim));
    store.limiter(|h| h);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(1 << 40);
    store.set_fuel(lim.fuel_per_call).expect("fuel");
    let inst = rt
        .linker
        .instantiate(&mut store, &module.module)
        .expect("instantiate");
    let memory = inst.get_memory(&mut store, "memory").expect("memory");
    store.data_mut().memory = Some(memory);
    let init = inst
        .get_typed_func::<(), i32>(&mut store, "agent_init")
        .expect("agent_init");
    assert_eq!(init.call(&mut store, ()).expect("init"), 0);
    let buffer = inst
        .get_typed_func::<i32, i32>(&mut store, "agent_buffer")
        .expect("agent_buffer");
    let ptr = buffer.call(&mut store, 256).expect("agent_buffer()");
    memory
        .write(
            &mut store,
            ptr as usize,
            &encode_context(1, id, None, 0, false),
        )
        .expect("write ctx");
    let step = inst
        .get_typed_func::<i32, i32>(&mut store, "agent_step")
        .expect("agent_step");
    (store, step, ptr)
}
