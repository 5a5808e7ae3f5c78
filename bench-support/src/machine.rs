//! What machine a benchmark ran on ([`Machine`]), read from `/proc`: CPU
//! model, CPUs, memory, kernel, load average, and the compiler that built
//! the bench.

use std::fmt;

/// The machine a benchmark runs on.  Its [`Display`](fmt::Display) is the
/// one line every bench prints first (and the scale bench writes into
/// docs/benchmarks.md):
///
/// ```text
/// AMD EPYC 9R14 · 2 CPUs · 23.5 GiB · Linux 6.18.44 · load 1.20 0.90 0.50 · rustc 1.95.0 (59807616e 2026-04-14)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `model name` of the first CPU in /proc/cpuinfo (empty when absent,
    /// as on some arm64 kernels).
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// CPUs online on the machine (more than `cpus` under a CPU mask).
    pub online_cpus: usize,
    /// `MemTotal`, bytes (`None` when /proc/meminfo is unreadable).
    pub memory_bytes: Option<u64>,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Load average over 1, 5 and 15 minutes.
    pub load: Option<[f64; 3]>,
    /// `rustc --version` of the compiler that built the bench.
    pub rustc: &'static str,
}

impl Machine {
    /// Reads the description of this machine (never fails: what cannot be
    /// read is left out).
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cpu_model: cpu_model(&cpuinfo),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            online_cpus: online_cpus(),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total(&m)),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            load: load_average(),
            rustc: env!("LOCKSTEP_BENCH_RUSTC"),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.cpu_model.is_empty() {
            parts.push(self.cpu_model.clone());
        }
        parts.push(if self.online_cpus > self.cpus {
            format!("{} of {} CPUs", self.cpus, self.online_cpus)
        } else {
            format!("{} CPUs", self.cpus)
        });
        if let Some(m) = self.memory_bytes {
            parts.push(format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30)));
        }
        if !self.kernel.is_empty() {
            parts.push(format!("Linux {}", self.kernel));
        }
        if let Some([a, b, c]) = self.load {
            parts.push(format!("load {a:.2} {b:.2} {c:.2}"));
        }
        if !self.rustc.is_empty() {
            parts.push(self.rustc.to_owned());
        }
        f.write_str(&parts.join(" · "))
    }
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Load average over 1, 5 and 15 minutes, from /proc/loadavg.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The load average as text (`1.20 0.90 0.50`; `?` when unreadable), for
/// benches that log it round by round.
pub fn loadavg() -> String {
    load_average().map_or_else(|| "?".into(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
}

/// CPUs the machine has online (not just those this process may use).
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC  9R14 96-Core Processor\n";
        assert_eq!(cpu_model(cpuinfo), "AMD EPYC 9R14 96-Core Processor");
        assert_eq!(cpu_model("processor : 0\n"), "");
        assert_eq!(
            mem_total("MemTotal:       24683772 kB\nMemFree: 1 kB\n"),
            Some(24_683_772 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn one_line() {
        let m = Machine {
            cpu_model: "AMD EPYC".into(),
            cpus: 2,
            online_cpus: 4,
            memory_bytes: Some(24 << 30),
            kernel: "6.18.44".into(),
            load: Some([1.2, 0.9, 0.5]),
            rustc: "rustc 1.95.0",
        };
        assert_eq!(
            m.to_string(),
            "AMD EPYC · 2 of 4 CPUs · 24.0 GiB · Linux 6.18.44 · load 1.20 0.90 0.50 · rustc 1.95.0"
        );
        let here = Machine::describe();
        assert!(here.cpus >= 1 && here.online_cpus >= 1);
        assert!(!here.to_string().contains('\n'));
    }
}
