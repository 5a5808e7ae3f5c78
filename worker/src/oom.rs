//! Out-of-memory handling: a worker that runs out of memory exits with
//! [`ExitCode::OutOfMemory`] at once, so that the supervisor classifies
//! the failure correctly (an aggregate resource limit, not an agent's
//! fault), and never reports it as anything an agent did.
//!
//! Running out of memory is a property of the process (how many agents it
//! hosts, what else it allocated), not of any one agent's inputs: reporting
//! it as an agent's fault would make the run depend on how agents were
//! spread over workers.  So every path where the process cannot get memory
//! ends here:
//!
//! * a failed allocation of the Rust heap ([`OomExit`], the worker's global
//!   allocator: the system allocator that exits instead of returning null);
//! * a linear memory the OS could not grow although the agent's limit
//!   allows it ([`crate::host`]'s `memory_grow_failed`);
//! * an instance the OS could not map ([`is_exhaustion`] on wasmtime's
//!   errors).
//!
//! The exit writes one line to stderr with a single `write(2)` and ends
//! with `_exit(2)`: nothing that could allocate, unwind or print a
//! backtrace (whose system calls the sandbox would refuse).

use shm_protocol::control::ExitCode;
use std::alloc::{GlobalAlloc, Layout, System};

/// Writes `what` to stderr and exits with [`ExitCode::OutOfMemory`].
pub fn exit_out_of_memory(what: &str) -> ! {
    let mut line = [0u8; 256];
    let prefix = b"lockstep-worker: out of memory: ";
    let mut n = 0;
    for &b in prefix.iter().chain(what.as_bytes()).take(line.len() - 1) {
        line[n] = b;
        n += 1;
    }
    line[n] = b'\n';
    // SAFETY: write(2) of a stack buffer we own: it neither allocates nor
    // touches any other memory of the process.
    unsafe { libc::write(2, line.as_ptr().cast(), n + 1) };
    // SAFETY: _exit(2) ends the process at once, running nothing.
    unsafe { libc::_exit(ExitCode::OutOfMemory as i32) }
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

/// The system allocator, exiting with [`ExitCode::OutOfMemory`] where it
/// would return null.
#[derive(Debug)]
pub struct OomExit;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and returns its result; a null result (allocation failure)
// never returns to the caller, the process exits instead.
unsafe impl GlobalAlloc for OomExit {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            exit_out_of_memory("the heap allocator failed");
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            exit_out_of_memory("the heap allocator failed");
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (`ptr` came from this allocator).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            exit_out_of_memory("the heap allocator failed");
        }
        p
    }
}
