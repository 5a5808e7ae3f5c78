//! What `/proc` says about a running child: its identity, capabilities,
//! namespaces, seccomp state, mounts and cgroups — read from the outside,
//! so it shows what is in force, not what was asked for.  `lockstep doctor`
//! prints it.

use crate::cgroup::{self, Controller, Group, Limits};
use std::path::Path;

/// One process, as `/proc` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessView {
    /// Its pid.
    pub pid: u32,
    /// Real, effective, saved and file-system uid.
    pub uid: Vec<u32>,
    /// Same for the gid.
    pub gid: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets, as hexadecimal masks.
    pub cap_effective: String,
    /// Permitted set.
    pub cap_permitted: String,
    /// Bounding set.
    pub cap_bounding: String,
    /// Ambient set.
    pub cap_ambient: String,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Number of seccomp filters.
    pub seccomp_filters: u32,
    /// Namespaces it does not share with the inspecting process.
    pub own_namespaces: Vec<String>,
    /// Namespaces it shares with the inspecting process.
    pub shared_namespaces: Vec<String>,
    /// Mounts it sees (1: the empty root only).
    pub mounts: Option<usize>,
    /// Threads.
    pub threads: u32,
    /// Its cgroup directory per controller, with the limits in force.
    pub cgroups: Vec<CgroupView>,
}

/// A child's cgroup in one controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupView {
    /// `memory`, `pids`, `cpu`.
    pub controller: String,
    /// The directory.
    pub dir: String,
    /// Limit: memory bytes, pids, or CPU thousandths of a core.
    pub limit: Option<u64>,
    /// CPU weight (cpu only).
    pub weight: Option<u64>,
    /// Memory in use (memory only).
    pub usage: Option<u64>,
    /// OOM kills in this group (memory only).
    pub oom_kills: Option<u64>,
}

impl ProcessView {
    /// Reads `/proc/<pid>`.
    pub fn read(pid: u32) -> Result<Self, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        let field = |name: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let nums = |name: &str| -> Vec<u32> {
            field(name)
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        };
        let mut own = Vec::new();
        let mut shared = Vec::new();
        for ns in ["user", "net", "ipc", "mnt", "uts", "pid", "cgroup"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
            match (theirs, ours) {
                (Some(t), Some(o)) if t == o => shared.push(ns.to_owned()),
                (Some(_), _) => own.push(ns.to_owned()),
                (None, _) => {}
            }
        }
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .ok()
            .map(|m| m.lines().count());
        let cgroups = match cgroup::placements(Some(pid)) {
            Ok(places) => places
                .into_iter()
                .map(|p| {
                    let g = Group::single(p.controller, p.version, p.own.clone());
                    let l: Limits = g.limits();
                    let memory = p.controller == Controller::Memory;
                    CgroupView {
                        controller: p.controller.as_str().to_owned(),
                        dir: p.own.display().to_string(),
                        limit: match p.controller {
                            Controller::Memory => l.memory,
                            Controller::Pids => l.pids,
                            Controller::Cpu => l.cpu_millis,
                        },
                        weight: (p.controller == Controller::Cpu)
                            .then_some(l.cpu_weight)
                            .flatten(),
                        usage: if memory { g.memory_usage() } else { None },
                        oom_kills: memory.then(|| g.oom_kills()),
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(Self {
            pid,
            uid: nums("Uid"),
            gid: nums("Gid"),
            groups: nums("Groups"),
            cap_effective: field("CapEff"),
            cap_permitted: field("CapPrm"),
            cap_bounding: field("CapBnd"),
            cap_ambient: field("CapAmb"),
            no_new_privs: field("NoNewPrivs") == "1",
            seccomp: field("Seccomp").parse().unwrap_or(0),
            seccomp_filters: field("Seccomp_filters").parse().unwrap_or(0),
            own_namespaces: own,
            shared_namespaces: shared,
            mounts,
            threads: field("Threads").parse().unwrap_or(0),
            cgroups,
        })
    }

    /// Whether it runs with no capability at all and not as root.
    pub fn unprivileged(&self) -> bool {
        let zero = |m: &str| !m.is_empty() && m.chars().all(|c| c == '0');
        self.uid.iter().all(|&u| u != 0)
            && zero(&self.cap_effective)
            && zero(&self.cap_permitted)
            && zero(&self.cap_ambient)
    }

    /// The problems an operator should know about (empty: all layers seen).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.uid.contains(&0) {
            p.push("runs as uid 0".to_owned());
        }
        let zero = |m: &str| !m.is_empty() && m.chars().all(|c| c == '0');
        if !zero(&self.cap_effective) || !zero(&self.cap_permitted) {
            p.push(format!(
                "holds capabilities (effective {}, permitted {})",
                self.cap_effective, self.cap_permitted
            ));
        }
        if !zero(&self.cap_bounding) {
            p.push(format!("bounding set not empty ({})", self.cap_bounding));
        }
        if !self.no_new_privs {
            p.push("no_new_privs is not set".to_owned());
        }
        if self.seccomp != 2 {
            p.push("no seccomp filter".to_owned());
        }
        for ns in ["net", "ipc", "mnt"] {
            if self.shared_namespaces.iter().any(|s| s == ns) {
                p.push(format!("shares the supervisor's {ns} namespace"));
            }
        }
        if self.cgroups.is_empty() || self.cgroups.iter().all(|c| c.limit.is_none()) {
            p.push("no cgroup limits".to_owned());
        }
        p
    }
}

/// Permission problems of a run directory: group- or world-accessible
/// directories or files (they hold the journal, snapshots and every agent's
/// memory pages).
pub fn run_dir_problems(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut check = |p: &Path| {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 && !m.file_type().is_symlink() {
                out.push(format!(
                    "{} is mode {mode:03o} (expected {})",
                    p.display(),
                    if m.is_dir() { "0700" } else { "0600" }
                ));
            }
        }
    };
    check(dir);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            check(&p);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

/// Whether this kernel enforces Landlock (a ruleset can be created), or
/// why not.
pub fn landlock_available() -> Result<(), String> {
    use landlock::{Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(landlock::ABI::V1))
        .and_then(|r| r.create())
        .map(drop)
        .map_err(|e| format!("Landlock is not available: {e}"))
}
