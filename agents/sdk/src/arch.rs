//! Thin portable wrappers over the few wasm instructions agents may need.
//! On non-`wasm32` targets they have host stand-ins so code still compiles.

/// Size of a wasm page in bytes.
pub const PAGE_SIZE: usize = 65536;

/// Traps the agent (`unreachable`); on the host, panics.
#[inline]
pub fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::unreachable()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        panic!("lockstep agent trap")
    }
}

/// Current size of linear memory in pages (`memory.size`); `0` on the host.
#[inline]
pub fn memory_pages() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// Grows linear memory by `pages` (`memory.grow`), returning the previous size
/// in pages, or `None` if the runtime refused (e.g. the memory limit).  Always
/// `None` on the host.
#[inline]
pub fn memory_grow(pages: usize) -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    {
        match core::arch::wasm32::memory_grow(0, pages) {
            usize::MAX => None,
            old => Some(old),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = pages;
        None
    }
}
