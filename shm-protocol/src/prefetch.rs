//! A cache hint: start loading the line at an address that will be needed
//! soon (e.g. the next agents' state while the current one runs), so that
//! the misses of many independent agents overlap instead of queueing.

/// Hints the CPU to bring the cache line at `addr` into its caches for a
/// write soon.  Any address is fine: a prefetch never faults and never
/// changes memory; on targets without a prefetch instruction it does
/// nothing.
#[inline(always)]
pub fn prefetch(addr: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `prefetcht0` is a hint: it does not access memory
    // architecturally, cannot fault (an invalid or unmapped address is
    // ignored) and has no effect on program state.  SSE is part of the
    // x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = addr;
}
