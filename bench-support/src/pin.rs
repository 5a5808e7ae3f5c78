//! Pinning a thread to a CPU (`lockstep_common::cpu`), so that two sides
//! of a measurement do not migrate between CPUs mid-run.

pub use lockstep_common::cpu::{allowed_cpus, pin_current_thread};

/// Two distinct CPUs this thread may run on (e.g. parent and child of a
/// cross-process measurement), if there are two.
pub fn two_cpus() -> Option<(usize, usize)> {
    match allowed_cpus().as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

/// [`pin_current_thread`], printing a warning on stderr where it fails
/// (a bench then runs unpinned rather than not at all).
pub fn pin_or_warn(cpu: usize) {
    if let Err(e) = pin_current_thread(cpu) {
        eprintln!("warning: {e}");
    }
}
