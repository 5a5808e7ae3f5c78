//! The supervisor's heap allocator: mimalloc, with its arenas committed on
//! demand.
//!
//! A tick routes, journals and logs thousands of small messages, each
//! allocated and freed; with glibc's allocator a tick of 1,000 agents
//! sending 10 messages each took 37 % longer (5.4 against 3.4 ms p50).
//! mimalloc commits its first arena eagerly by default, which added
//! ≈ 10 MB to a small run's resident memory; [`Lean`] turns that off
//! before the first allocation (its cost then grows with what is used).
//! It lives here, with the rest of the runtime's `unsafe`.

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Once;

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_t` (the Rust
/// binding names no constant for it; the crates are pinned, and a test
/// checks the number against the option's documented default).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

static CONFIGURE: Once = Once::new();

fn configure() {
    CONFIGURE.call_once(|| {
        // SAFETY: sets one of mimalloc's process-wide options to a valid
        // value; it neither allocates nor touches other memory.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) }
    });
}

/// mimalloc with arenas committed on demand.
#[derive(Debug)]
pub struct Lean;

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments
// unchanged and returns its result; `configure` only sets an option before
// the first allocation.
unsafe impl GlobalAlloc for Lean {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        configure();
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        unsafe { MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        configure();
        // SAFETY: forwarded as is.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (`ptr` came from this allocator).
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number names the arena eager-commit option: its
    /// documented default (2: eager on systems that overcommit) is what
    /// this process, which never set it, reads.
    #[test]
    fn the_option_number_is_arena_eager_commit() {
        // SAFETY: reads an option (no allocation, no other memory).
        let v = unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) };
        assert_eq!(v, 2);
        // SAFETY: as above; `purge_delay` (15 in the same enum) defaults to
        // 1,000 ms: the neighbouring numbers are where the header has them.
        let purge = unsafe { libmimalloc_sys::mi_option_get(15) };
        assert_eq!(purge, 1000);
    }
}
