//! Byte access to a ring's data area.
//!
//! Outside loom the data area is a raw pointer into a shared mapping; under
//! `cfg(loom)` it is an array of loom cells so that the model checker sees
//! every byte access and reports a frame read that is not ordered after its
//! write.  The ring code is written once against this small interface.

#[cfg(not(loom))]
mod imp {
    use std::ptr::NonNull;

    /// A window of `len` bytes of shared memory.
    ///
    /// # Safety
    ///
    /// The creator guarantees (see [`DataRegion::new`]) that `base..base+len`
    /// stays mapped for the region's lifetime.  Bytes may be written
    /// concurrently by the peer process: every *structural* value (lengths,
    /// kinds) is read exactly once into a local with a volatile load and then
    /// validated; payload bytes handed out as slices are treated as untrusted
    /// data whose contents may change, never as indices.
    #[derive(Debug)]
    pub(crate) struct DataRegion {
        base: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the region is plain shared memory; the ring protocol (one
    // producer, one consumer, publication through atomics) decides who may touch
    // which bytes, not the thread that holds the pointer.
    unsafe impl Send for DataRegion {}

    impl DataRegion {
        /// # Safety
        ///
        /// `base` must point to `len` bytes that remain mapped, readable and
        /// writable for the lifetime of the returned value, and `base` must be
        /// 8-byte aligned.
        pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
            Self { base, len }
        }

        #[inline]
        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// Pointer to `off`, asserting that `off..off+len` is in bounds.  The
        /// ring validates every peer-supplied value before calling, so the
        /// assertion can only fire on a bug in this crate.
        #[inline]
        fn at(&self, off: usize, len: usize) -> *mut u8 {
            assert!(
                off <= self.len && len <= self.len - off,
                "ring bug: access out of range"
            );
            // SAFETY: `off <= len` (checked above), so the result is within
            // (or one past) the mapped region.
            unsafe { self.base.as_ptr().add(off) }
        }

        /// Reads the little-endian u64 at `off` (8-aligned, in bounds) once.
        #[inline]
        pub(crate) fn read_u64(&self, off: usize) -> u64 {
            let p = self.at(off, 8);
            assert!(off.is_multiple_of(8), "ring bug: misaligned header read");
            // SAFETY: in bounds and aligned (checked above); volatile so the
            // value is loaded exactly once even if the peer rewrites it.
            u64::from_le(unsafe { p.cast::<u64>().read_volatile() })
        }

        /// Writes the little-endian u64 at `off` (8-aligned, in bounds).
        #[inline]
        pub(crate) fn write_u64(&mut self, off: usize, value: u64) {
            let p = self.at(off, 8);
            assert!(off.is_multiple_of(8), "ring bug: misaligned header write");
            // SAFETY: in bounds and aligned (checked above).
            unsafe { p.cast::<u64>().write_volatile(value.to_le()) }
        }

        /// The bytes `off..off+len` for reading.
        #[inline]
        pub(crate) fn bytes(&self, off: usize, len: usize) -> &[u8] {
            let p = self.at(off, len);
            // SAFETY: in bounds (checked by `at`); see the type's safety notes
            // on concurrent modification by an untrusted peer.
            unsafe { std::slice::from_raw_parts(p, len) }
        }

        /// The bytes `off..off+len` for writing.
        #[inline]
        pub(crate) fn bytes_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
            let p = self.at(off, len);
            // SAFETY: in bounds (checked by `at`); the producer owns the free
            // part of the ring until it publishes the new head.
            unsafe { std::slice::from_raw_parts_mut(p, len) }
        }
    }
}

#[cfg(loom)]
mod imp {
    use loom::cell::UnsafeCell;
    use std::sync::Arc;

    /// Loom model of the data area: one tracked cell per byte.
    #[derive(Debug, Clone)]
    pub(crate) struct DataRegion {
        cells: Arc<Vec<UnsafeCell<u8>>>,
    }

    impl DataRegion {
        pub(crate) fn new_model(len: usize) -> Self {
            Self {
                cells: Arc::new((0..len).map(|_| UnsafeCell::new(0)).collect()),
            }
        }

        pub(crate) fn len(&self) -> usize {
            self.cells.len()
        }

        pub(crate) fn read_u64(&self, off: usize) -> u64 {
            let mut b = [0u8; 8];
            for (i, slot) in b.iter_mut().enumerate() {
                *slot = self.cells[off + i].with(|p| unsafe { *p });
            }
            u64::from_le_bytes(b)
        }

        pub(crate) fn write_u64(&mut self, off: usize, value: u64) {
            for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
                self.cells[off + i].with_mut(|p| unsafe { *p = byte });
            }
        }

        pub(crate) fn copy_out(&self, off: usize, len: usize) -> Vec<u8> {
            (0..len)
                .map(|i| self.cells[off + i].with(|p| unsafe { *p }))
                .collect()
        }

        pub(crate) fn copy_in(&mut self, off: usize, data: &[u8]) {
            for (i, byte) in data.iter().enumerate() {
                self.cells[off + i].with_mut(|p| unsafe { *p = *byte });
            }
        }
    }
}

pub(crate) use imp::DataRegion;
