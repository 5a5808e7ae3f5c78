//! The one place where shm-protocol gets its synchronisation primitives.
//!
//! Every atomic, fence and futex used by the protocol comes from here.  Under
//! `cfg(loom)` the module switches to [loom]'s model-checked versions and the
//! futex becomes a mutex/condvar model with the same "compare and sleep
//! atomically" contract as the kernel's, so a lost wake-up shows up as a loom
//! deadlock.  The rest of the crate never names `std::sync::atomic` directly
//! (enforced by `clippy::disallowed_types` in the workspace `clippy.toml`).
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(loom))]
#[allow(clippy::disallowed_types)]
pub(crate) mod atomic {
    //! Transparent wrappers over the std atomics: the only place the crate
    //! names them (everything else is linted against it).
    pub use std::sync::atomic::{Ordering, fence};

    macro_rules! wrap {
        ($name:ident, $int:ty) => {
            #[doc = concat!("`std::sync::atomic::", stringify!($name), "` behind the loom facade.")]
            #[repr(transparent)]
            #[derive(Debug, Default)]
            pub struct $name(std::sync::atomic::$name);

            #[allow(dead_code)]
            impl $name {
                pub const fn new(v: $int) -> Self {
                    Self(std::sync::atomic::$name::new(v))
                }
                #[inline]
                pub fn load(&self, o: Ordering) -> $int {
                    self.0.load(o)
                }
                #[inline]
                pub fn store(&self, v: $int, o: Ordering) {
                    self.0.store(v, o)
                }
                #[inline]
                pub fn fetch_add(&self, v: $int, o: Ordering) -> $int {
                    self.0.fetch_add(v, o)
                }
                #[inline]
                pub fn swap(&self, v: $int, o: Ordering) -> $int {
                    self.0.swap(v, o)
                }
                /// The std atomic (for the futex system call).
                #[inline]
                pub fn as_std(&self) -> &std::sync::atomic::$name {
                    &self.0
                }
                /// # Safety
                ///
                /// As [`std::sync::atomic::AtomicU64::from_ptr`]: `ptr` must be
                /// aligned, valid for reads and writes for `'a`, and only
                /// accessed atomically meanwhile.
                #[inline]
                pub unsafe fn from_ptr<'a>(ptr: *mut $int) -> &'a Self {
                    // SAFETY: `Self` is `repr(transparent)` over the std
                    // atomic, which has the layout of `$int`; the caller
                    // upholds `from_ptr`'s contract.
                    unsafe { &*ptr.cast::<Self>() }
                }
            }
        };
    }

    wrap!(AtomicU32, u32);
    wrap!(AtomicU64, u64);
}

#[cfg(loom)]
pub(crate) mod atomic {
    pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

/// Hint to the CPU that we are in a spin loop (a model yield under loom).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Futex operations on a 32-bit word that may live in memory shared between
/// processes (so the *shared*, not the process-private, futex flavour).
#[cfg(not(loom))]
pub(crate) mod futex {
    use super::atomic::AtomicU32;
    use std::time::Duration;

    /// Sleeps while `*word == expected`, for at most `timeout`.
    ///
    /// Returns on a wake-up, a timeout, a signal, or at once when the word no
    /// longer holds `expected`; callers re-check their condition in a loop.
    pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
        let ts = rustix::thread::futex::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        // EAGAIN (value changed), ETIMEDOUT and EINTR are all normal returns.
        let _ = rustix::thread::futex::wait(
            word.as_std(),
            rustix::thread::futex::Flags::empty(),
            expected,
            Some(&ts),
        );
    }

    /// Wakes every waiter on `word` (in any process).
    pub(crate) fn wake_all(word: &AtomicU32) {
        let _ = rustix::thread::futex::wake(
            word.as_std(),
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }
}

/// Loom model of a futex: one global mutex/condvar pair makes "compare and
/// sleep" atomic with respect to "change and wake", exactly the guarantee the
/// kernel gives.  Timeouts are not modelled (a waiter only returns when woken
/// or when the value differs), so a missing wake-up is a loom deadlock.
#[cfg(loom)]
pub(crate) mod futex {
    use super::atomic::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};
    use std::time::Duration;

    loom::lazy_static! {
        static ref LOCK: Mutex<()> = Mutex::new(());
        static ref CVAR: Condvar = Condvar::new();
    }

    pub(crate) fn wait(word: &AtomicU32, expected: u32, _timeout: Duration) {
        let guard = LOCK.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            drop(CVAR.wait(guard).unwrap());
        }
    }

    pub(crate) fn wake_all(_word: &AtomicU32) {
        let _guard = LOCK.lock().unwrap();
        CVAR.notify_all();
    }
}
