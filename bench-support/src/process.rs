//! What a process uses, from `/proc`: resident memory of a process tree
//! ([`tree_rss_kib`]), a process's memory figures ([`vm_status`],
//! [`statm_self`]) and its CPU time ([`cpu_seconds`]).

/// Resident set size (KiB) of `pid` and every descendant, now.
pub fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += status_kib(&s, "VmRSS:").unwrap_or(0);
        }
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                stack.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    total
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `VmPeak`, `VmSize`, `VmHWM`, `VmRSS` of a process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmStatus {
    /// Peak address space.
    pub peak: u64,
    /// Address space.
    pub size: u64,
    /// Peak resident memory.
    pub hwm: u64,
    /// Resident memory.
    pub rss: u64,
}

/// The memory figures of `pid` (zero where /proc cannot be read).
pub fn vm_status(pid: u32) -> VmStatus {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let b = |k| status_kib(&s, k).unwrap_or(0) * 1024;
    VmStatus {
        peak: b("VmPeak:"),
        size: b("VmSize:"),
        hwm: b("VmHWM:"),
        rss: b("VmRSS:"),
    }
}

/// The size of a memory page, bytes.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// (address space, resident memory) of this process in bytes, from
/// /proc/self/statm (cheaper than [`vm_status`]).
pub fn statm_self() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    let page = page_size() as u64;
    let size = f.next().unwrap_or(0) * page;
    let rss = f.next().unwrap_or(0) * page;
    (size, rss)
}

/// User + system CPU time of `pid` so far, seconds (`None` where its
/// `/proc/<pid>/stat` cannot be read).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The fields after the command name (which is in parentheses): utime
    // and stime are fields 14 and 15 of the line, 12 and 13 here.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let v = vm_status(me);
        assert!(v.rss > 0 && v.size >= v.rss && v.peak >= v.size && v.hwm >= v.rss);
        assert!(tree_rss_kib(me) > 0);
        let (size, rss) = statm_self();
        assert!(size >= rss && rss > 0);
        assert!(page_size().is_power_of_two());
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
        assert_eq!(vm_status(u32::MAX), VmStatus::default());
    }

    #[test]
    fn parses_stat() {
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 17 5 0 0";
        assert_eq!(stat_cpu_ticks(line), Some(22));
        assert_eq!(stat_cpu_ticks("42 (x"), None);
    }
}
