//! CPU affinity (`sched_setaffinity` through `nix`): the CPUs a process may
//! use, and pinning a thread to one of them.  The supervisor gives each
//! worker a CPU of its own when its processes take every CPU of the
//! machine (`lockstep run --no-pin-workers` turns it off); the benchmarks
//! pin the two sides of a measurement.  Where a thread runs changes how
//! fast it runs, never what it computes.

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

/// Pins the calling thread to `cpu` (threads it starts afterwards inherit
/// the mask; a process that has one thread is pinned as a whole).
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
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
            // Threads started afterwards inherit the mask.
            let inherited = std::thread::spawn(allowed_cpus).join().expect("child");
            assert_eq!(inherited, vec![last]);
        })
        .join()
        .expect("pinned thread");
        assert!(pin_current_thread(CpuSet::count()).is_err());
    }
}
