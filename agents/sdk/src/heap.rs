//! A small deterministic allocator for agents.
//!
//! Blocks are powers of two from 16 bytes up, each aligned to its own size
//! or to 64 KiB (a wasm page), whichever is smaller; alignments above 64 KiB
//! are refused.  Freed blocks go on a per-size free list (LIFO) and are reused
//! exactly; when a list is empty, the smallest larger free block is split.
//! Otherwise new blocks are carved from a bump region that starts at
//! `__heap_base` and grows with `memory.grow`; the padding skipped to align a
//! block is split into naturally aligned blocks and put on the free lists, so
//! nothing is lost.  There is no coalescing, and a request is rounded up to a
//! power of two (a 600 KiB buffer takes a 1 MiB block).  Every decision depends only on the
//! sequence of requests, so the same agent code lays out memory identically
//! on every run — which keeps fuel use and snapshots deterministic.
//!
//! The bookkeeping ([`Heap`]) is target-independent and unit-tested on the
//! host; [`LockstepAllocator`] wires it to the wasm memory and is the
//! `#[global_allocator]` on `wasm32` (feature `allocator`, on by default).

use core::alloc::Layout;

use crate::arch::PAGE_SIZE;

const MIN_SHIFT: u32 = 4;
const MIN_BLOCK: usize = 1 << MIN_SHIFT;
const CLASSES: usize = (usize::BITS - MIN_SHIFT) as usize;

/// Where a [`Heap`] gets its memory from.
pub trait Backing {
    /// First usable address (16-byte aligned by the heap if it is not).
    fn base(&self) -> usize;
    /// Current end of memory in bytes.
    fn size(&self) -> usize;
    /// Grows memory by `pages` wasm pages; `false` if refused.
    fn grow(&mut self, pages: usize) -> bool;
}

/// Size-class free lists plus a bump region.  All-zero bytes are an empty
/// heap (so a heap in zeroed memory needs no initialisation).
#[derive(Debug)]
#[repr(C)]
pub struct Heap {
    free: [usize; CLASSES],
    bump: usize,
    end: usize,
    started: bool,
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

fn class_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(layout.align()).max(MIN_BLOCK);
    let block = size.checked_next_power_of_two()?;
    Some(((block.trailing_zeros() - MIN_SHIFT) as usize, block))
}

impl Heap {
    /// An empty heap; it takes its region from the backing on first use.
    pub const fn new() -> Self {
        Self {
            free: [0; CLASSES],
            bump: 0,
            end: 0,
            started: false,
        }
    }

    /// Puts `[start, end)` (16-byte aligned bounds) on the free lists as
    /// naturally aligned power-of-two blocks.
    ///
    /// # Safety
    /// The range must be unused memory owned by this heap.
    unsafe fn release(&mut self, mut start: usize, end: usize) {
        while start < end {
            let align = if start == 0 {
                usize::MAX
            } else {
                start & start.wrapping_neg()
            };
            let room = end - start;
            let fit = 1usize << (usize::BITS - 1 - room.leading_zeros());
            let block = fit.min(align);
            // SAFETY: `[start, start + block)` is unused heap memory (caller's
            // contract), 16-byte aligned and at least 16 bytes long.
            unsafe { self.push((block.trailing_zeros() - MIN_SHIFT) as usize, start) };
            start += block;
        }
    }

    /// # Safety
    /// `addr` must be an unused block of class `class` owned by this heap.
    unsafe fn push(&mut self, class: usize, addr: usize) {
        // SAFETY: the block is unused, aligned and at least 16 bytes long, so
        // its first word can hold the free-list link.
        unsafe { (addr as *mut usize).write(self.free[class]) };
        self.free[class] = addr;
    }

    /// Allocates a block for `layout`; null if memory cannot grow.
    ///
    /// # Safety
    /// `mem` must describe the memory this heap manages, the same on every call.
    pub unsafe fn alloc(&mut self, layout: Layout, mem: &mut impl Backing) -> *mut u8 {
        let Some((class, block)) = class_of(layout) else {
            return core::ptr::null_mut();
        };
        if class >= CLASSES || layout.align() > PAGE_SIZE {
            return core::ptr::null_mut();
        }
        let head = self.free[class];
        if head != 0 {
            // SAFETY: `head` is a free block we pushed; its first word is the link.
            self.free[class] = unsafe { (head as *const usize).read() };
            return head as *mut u8;
        }
        // Split the smallest larger free block, if any.
        if let Some(big) = (class + 1..CLASSES).find(|&c| self.free[c] != 0) {
            let addr = self.free[big];
            // SAFETY: `addr` is a free block we pushed; its first word is the link.
            self.free[big] = unsafe { (addr as *const usize).read() };
            // SAFETY: the tail of the block beyond the part we return is unused.
            unsafe { self.release(addr + block, addr + (MIN_BLOCK << big)) };
            return addr as *mut u8;
        }
        if !self.started {
            self.started = true;
            self.bump = mem.base().next_multiple_of(MIN_BLOCK);
            self.end = mem.size().max(self.bump);
        }
        loop {
            let Some(start) = self.bump.checked_next_multiple_of(block.min(PAGE_SIZE)) else {
                return core::ptr::null_mut();
            };
            let Some(stop) = start.checked_add(block) else {
                return core::ptr::null_mut();
            };
            if stop <= self.end {
                // SAFETY: `[bump, start)` is unused memory of ours.
                unsafe { self.release(self.bump, start) };
                self.bump = stop;
                return start as *mut u8;
            }
            let now = mem.size();
            if now < self.end {
                return core::ptr::null_mut();
            }
            if now > self.end {
                // Someone else grew memory (e.g. raw `memory.grow`): keep what
                // we had on the free lists and continue after their pages.
                // SAFETY: `[bump, end)` is unused memory of ours.
                unsafe { self.release(self.bump, self.end) };
                self.bump = now;
                self.end = now;
                continue;
            }
            let pages = (stop - self.end).div_ceil(PAGE_SIZE);
            if !mem.grow(pages) {
                return core::ptr::null_mut();
            }
            self.end = mem.size();
        }
    }

    /// Returns a block to its free list.
    ///
    /// # Safety
    /// `ptr` must come from [`Heap::alloc`] on this heap with the same `layout`,
    /// and not be freed twice.
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        if let Some((class, _)) = class_of(layout) {
            // SAFETY: the caller hands back a block of this class it no longer uses.
            unsafe { self.push(class, ptr as usize) };
        }
    }

    /// Whether a block allocated for `old` can also hold `new_size` bytes
    /// with the same alignment (same size class).
    pub fn fits_in_place(old: Layout, new_size: usize) -> bool {
        match (
            class_of(old),
            Layout::from_size_align(new_size, old.align()),
        ) {
            (Some((c, _)), Ok(new)) => class_of(new).is_some_and(|(n, _)| n == c),
            _ => false,
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use wasm::LockstepAllocator;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    use super::{Backing, Heap};
    use crate::arch;

    unsafe extern "C" {
        /// End of static data and the shadow stack, defined by `wasm-ld`.
        static __heap_base: u8;
    }

    struct WasmMemory;

    impl Backing for WasmMemory {
        fn base(&self) -> usize {
            // The heap starts at a fixed address above any module's static
            // data (unless a module has more than 64 KiB of it), so that a
            // hot-swapped version of the module, whose static data may be
            // larger, never overlaps its predecessor's heap.
            ((&raw const __heap_base) as usize).max(crate::rt::HEAP_FLOOR)
        }
        fn size(&self) -> usize {
            arch::memory_pages() * arch::PAGE_SIZE
        }
        fn grow(&mut self, pages: usize) -> bool {
            arch::memory_grow(pages).is_some()
        }
    }

    /// The SDK's global allocator for wasm agents (see the [module docs](super)).
    /// Its bookkeeping lives in the SDK's root block at a fixed address
    /// ([`crate::rt`]), not in the module's static data, so that it survives
    /// a hot-swap to a module whose static data is laid out differently.
    #[derive(Debug)]
    pub struct LockstepAllocator {
        _marker: UnsafeCell<()>,
    }

    impl LockstepAllocator {
        /// The allocator.
        pub const fn new() -> Self {
            Self {
                _marker: UnsafeCell::new(()),
            }
        }

        /// The heap in the root block.
        ///
        /// # Safety
        /// Single-threaded, not re-entrant: the only live reference.
        #[allow(clippy::mut_from_ref)]
        unsafe fn heap(&self) -> &mut Heap {
            // SAFETY: the caller's contract; the root block is ours.
            unsafe { &mut crate::rt::root().heap }
        }
    }

    impl Default for LockstepAllocator {
        fn default() -> Self {
            Self::new()
        }
    }

    // SAFETY: agents are single-threaded (the ABI forbids shared memories and
    // the threads proposal), so the heap is never accessed concurrently.
    unsafe impl Sync for LockstepAllocator {}

    // SAFETY: `Heap` returns blocks at least `layout.size()` long, aligned to
    // at least `layout.align()`, never handing out a block twice until freed.
    unsafe impl GlobalAlloc for LockstepAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: single-threaded and not re-entrant (the heap calls no
            // allocator), so this is the only live reference to the heap.
            let heap = unsafe { self.heap() };
            // SAFETY: `WasmMemory` is the memory this heap always manages.
            unsafe { heap.alloc(layout, &mut WasmMemory) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as in `alloc`.
            let heap = unsafe { self.heap() };
            // SAFETY: `GlobalAlloc::dealloc`'s contract is the heap's.
            unsafe { heap.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if Heap::fits_in_place(layout, new_size) {
                return ptr;
            }
            // SAFETY: `new_size` is valid with `layout.align()` per `realloc`'s contract.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            // SAFETY: a non-zero-size layout, as `realloc` requires.
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both blocks are live, distinct, and at least
                // `min(old, new)` bytes long.
                unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
                // SAFETY: `ptr` was allocated with `layout` and is no longer used.
                unsafe { self.dealloc(ptr, layout) };
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::vec::Vec;

    /// A 64 KiB-aligned arena standing in for wasm linear memory.
    struct Arena {
        origin: usize,
        pages: usize,
        max_pages: usize,
        layout: Layout,
        heap_base: usize,
    }

    impl Arena {
        fn new(max_pages: usize, initial: usize, heap_off: usize) -> Self {
            let layout = Layout::from_size_align(max_pages * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: non-zero size.
            let origin = unsafe { std::alloc::alloc_zeroed(layout) } as usize;
            assert_ne!(origin, 0);
            Self {
                origin,
                pages: initial,
                max_pages,
                layout,
                heap_base: origin + heap_off,
            }
        }
        fn off(&self, p: *mut u8) -> usize {
            p as usize - self.origin
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.origin as *mut u8, self.layout) }
        }
    }

    impl Backing for Arena {
        fn base(&self) -> usize {
            self.heap_base
        }
        fn size(&self) -> usize {
            self.origin + self.pages * PAGE_SIZE
        }
        fn grow(&mut self, pages: usize) -> bool {
            if self.pages + pages > self.max_pages {
                return false;
            }
            self.pages += pages;
            true
        }
    }

    fn l(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_reused() {
        let mut a = Arena::new(64, 1, 1000);
        let mut h = Heap::new();
        let mut live: Vec<(usize, usize)> = Vec::new();
        for (i, &(size, align)) in [
            (1, 1),
            (24, 8),
            (100, 4),
            (4096, 4096),
            (7, 1),
            (65536, 8),
            (3, 64),
            (200_000, 16),
        ]
        .iter()
        .enumerate()
        {
            // SAFETY: `a` is the heap's only backing.
            let p = unsafe { h.alloc(l(size, align), &mut a) };
            assert!(!p.is_null(), "alloc {i}");
            assert_eq!(p as usize % align, 0);
            assert!(p as usize >= a.heap_base);
            assert!(p as usize + size <= a.size());
            for &(q, qs) in &live {
                assert!(p as usize + size <= q || q + qs <= p as usize, "overlap");
            }
            // SAFETY: the block is at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0xAB, size) };
            live.push((p as usize, size));
        }
        let (p, _) = live[1];
        // SAFETY: allocated above with this layout.
        unsafe { h.dealloc(p as *mut u8, l(24, 8)) };
        // SAFETY: as above.
        let q = unsafe { h.alloc(l(30, 2), &mut a) };
        assert_eq!(q as usize, p, "same class reuses the freed block");
    }

    #[test]
    fn layout_is_deterministic() {
        let run = || {
            let mut a = Arena::new(32, 2, 5000);
            let mut h = Heap::new();
            let mut offs = Vec::new();
            let mut held = Vec::new();
            for i in 0..200usize {
                let layout = l(1 + (i * 37) % 3000, 1 << (i % 5));
                // SAFETY: `a` is the heap's only backing.
                let p = unsafe { h.alloc(layout, &mut a) };
                offs.push(a.off(p));
                held.push((p, layout));
                if i % 3 == 0 {
                    let (p, layout) = held.remove(held.len() / 2);
                    // SAFETY: allocated above with `layout`, freed once.
                    unsafe { h.dealloc(p, layout) };
                }
            }
            (offs, a.pages)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn growth_and_exhaustion() {
        let mut a = Arena::new(4, 1, 64);
        let mut h = Heap::new();
        // SAFETY: `a` is the heap's only backing.
        let p = unsafe { h.alloc(l(100_000, 8), &mut a) };
        assert!(!p.is_null());
        assert!(a.pages >= 3, "grew to fit a 128 KiB block");
        // SAFETY: as above.
        let q = unsafe { h.alloc(l(1 << 20, 8), &mut a) };
        assert!(q.is_null(), "refused growth gives null");
        // Small allocations still succeed by splitting the padding blocks.
        // SAFETY: as above.
        let r = unsafe { h.alloc(l(16, 16), &mut a) };
        assert!(!r.is_null());
        let z = Layout::from_size_align(usize::MAX / 2, 1).unwrap();
        // SAFETY: as above.
        assert!(unsafe { h.alloc(z, &mut a) }.is_null());
    }

    #[test]
    fn foreign_growth_is_skipped() {
        let mut a = Arena::new(8, 1, 64);
        let mut h = Heap::new();
        // SAFETY: `a` is the heap's only backing.
        let p = unsafe { h.alloc(l(32_000, 8), &mut a) };
        assert!(a.off(p) < PAGE_SIZE);
        a.pages += 2; // somebody ran `memory.grow` directly: pages 1..3 are theirs
        // SAFETY: as above.
        let q = unsafe { h.alloc(l(60_000, 8), &mut a) };
        assert!(a.off(q) >= 3 * PAGE_SIZE, "never hands out foreign pages");
    }

    #[test]
    fn large_blocks_are_page_aligned_not_size_aligned() {
        let mut a = Arena::new(18, 1, 5000);
        let mut h = Heap::new();
        // SAFETY: `a` is the heap's only backing.
        let p = unsafe { h.alloc(l(1 << 20, 8), &mut a) };
        assert!(!p.is_null());
        assert_eq!(
            a.off(p),
            PAGE_SIZE,
            "next page, not the next 1 MiB boundary"
        );
        assert_eq!(a.pages, 17);
        // SAFETY: as above.
        assert!(unsafe { h.alloc(l(64, 2 * PAGE_SIZE), &mut a) }.is_null());
        // SAFETY: as above.
        let q = unsafe { h.alloc(l(64, PAGE_SIZE), &mut a) };
        assert!(!q.is_null());
        assert_eq!(a.off(q) % PAGE_SIZE, 0);
    }

    #[test]
    fn in_place_realloc_classes() {
        assert!(Heap::fits_in_place(l(20, 8), 32));
        assert!(!Heap::fits_in_place(l(20, 8), 33));
        assert!(Heap::fits_in_place(l(1, 1), 16));
        assert!(!Heap::fits_in_place(l(64, 8), 16));
    }
}
