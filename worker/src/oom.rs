//! Out-of-memory handling in the worker: every path where the process
//! cannot get memory ends in [`exit_out_of_memory`] (exit code 71), never
//! in anything reported as an agent's doing.
//!
//! Running out of memory is a property of the process (how many agents it
//! hosts, what else it allocated), not of any one agent's inputs: reporting
//! it as an agent's fault would make the run depend on how agents were
//! spread over workers.  The paths:
//!
//! * a failed allocation of the Rust heap (`shm_protocol::oom::OomExit`,
//!   the worker's global allocator);
//! * a linear memory the OS could not grow although the agent's limit
//!   allows it ([`crate::host`]'s `memory_grow_failed`);
//! * an instance the OS could not map ([`is_exhaustion`] on wasmtime's
//!   errors).
//!
//! (A cgroup memory limit ends the process with the kernel's OOM killer
//! instead; the supervisor reads that from the cgroup's events.)

/// Writes `what` to stderr and exits with the out-of-memory code.
pub fn exit_out_of_memory(what: &str) -> ! {
    shm_protocol::oom::exit_out_of_memory("lockstep-worker", what)
}

/// Whether an error from wasmtime means the process could not get memory
/// from the OS (as opposed to anything the module did).
pub fn is_exhaustion(err: &wasmtime::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOMEM))
            || {
                let s = e.to_string();
                s.contains("Cannot allocate memory") || s.contains("out of memory")
            }
    })
}
