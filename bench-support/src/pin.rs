//! Pinning a thread to a CPU (`sched_setaffinity` through `nix`), so that
//! two sides of a measurement do not migrate between CPUs mid-run.  The
//! runtime's own pinning of workers is `lockstep_common::cpu`; this crate
//! keeps its two functions itself because the loom build of the transport
//! (`--cfg loom`), which compiles this crate as a dev-dependency, cannot
//! compile `lockstep-common`.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs this thread may run on, in ascending order (empty when the
/// mask cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect()
}

/// Two distinct CPUs this thread may run on (e.g. parent and child of a
/// cross-process measurement), if there are two.
pub fn two_cpus() -> Option<(usize, usize)> {
    match allowed_cpus().as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

/// Pins the calling thread to `cpu` (threads it starts afterwards inherit
/// the mask; a process that has one thread is pinned as a whole).
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}

/// [`pin_current_thread`], printing a warning on stderr where it fails
/// (a bench then runs unpinned rather than not at all).
pub fn pin_or_warn(cpu: usize) {
    if let Err(e) = pin_current_thread(cpu) {
        eprintln!("warning: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_a_thread_to_an_allowed_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let last = *cpus.last().expect("a CPU");
        // A thread of its own, so the test runner's threads keep their mask.
        std::thread::spawn(move || {
            pin_current_thread(last).expect("pin");
            assert_eq!(allowed_cpus(), vec![last]);
        })
        .join()
        .expect("pinned thread");
        assert!(pin_current_thread(CpuSet::count()).is_err());
    }
}
