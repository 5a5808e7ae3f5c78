//! The children's out-of-memory exit: a child that runs out of memory
//! exits with [`ExitCode::OutOfMemory`] at once, so that the supervisor
//! classifies the failure correctly (an aggregate resource limit, not an
//! agent's fault or a crash).
//!
//! [`OomExit`] is the children's global allocator: the system allocator,
//! exiting where it would return null.  The exit writes one line to stderr
//! with a single `write(2)` and ends with `_exit(2)`: nothing that could
//! allocate, unwind or print a backtrace (whose system calls the sandbox
//! would refuse).  It lives here, with the rest of the runtime's `unsafe`.

use crate::control::ExitCode;
use std::alloc::{GlobalAlloc, Layout, System};

/// Writes `program: out of memory: what` to stderr and exits with
/// [`ExitCode::OutOfMemory`].
pub fn exit_out_of_memory(program: &str, what: &str) -> ! {
    let mut line = [0u8; 256];
    let mut n = 0;
    let text = program
        .as_bytes()
        .iter()
        .chain(b": out of memory: ")
        .chain(what.as_bytes());
    for &b in text.take(line.len() - 1) {
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
            exit_out_of_memory("lockstep child", "the heap allocator failed");
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            exit_out_of_memory("lockstep child", "the heap allocator failed");
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
            exit_out_of_memory("lockstep child", "the heap allocator failed");
        }
        p
    }
}
