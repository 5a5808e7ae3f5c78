//! Step 2, both sides: the cgroups the supervisor makes for its children,
//! and the child joining its own.
//!
//! The supervisor creates one tree, `lockstep-<pid>`, **under the cgroup it
//! runs in** (per controller: `/proc/self/cgroup`), never anywhere else and
//! never writing a file of an ancestor.  In it, one group per child
//! incarnation (`worker-0.7`), optionally below a group per tenant
//! (`tenant-a/worker-3.9`) that carries the tenant's limits:
//!
//! ```text
//! <own cgroup>/lockstep-4242/
//!     inference-host.1/           memory, pids, cpu of the inference host
//!     worker-0.2/                 … of a worker
//!     tenant-batch/               the tenant's own limits (hierarchical)
//!         worker-2.4/
//! ```
//!
//! The controllers used are `memory` (a hard limit: the kernel's OOM killer
//! acts inside the group only, and the kill is counted in the group's own
//! events, which is how the supervisor classifies it), `pids` (threads and
//! processes) and `cpu` (a quota in thousandths of a core, and a weight).
//! Each may live in a cgroup v1 hierarchy (`memory.limit_in_bytes`,
//! `memory.oom_control`, `cpu.cfs_quota_us`, `cpu.shares`) or in the v2
//! unified hierarchy (`memory.max`, `memory.events`, `cpu.max`,
//! `cpu.weight`), whichever this machine mounts it in; on v2 the
//! controllers must be delegated to the supervisor's cgroup (listed in its
//! `cgroup.subtree_control`).
//!
//! The child joins its groups itself (it writes its pid into each
//! `cgroup.procs` the supervisor names with `--cgroup`), first thing after
//! closing descriptors, before anything it allocates is charged elsewhere
//! and while it still has the privilege to.  The supervisor checks the
//! placement in `/proc/<pid>/cgroup` once the child is up
//! ([`Group::contains`]).
//!
//! Written by hand rather than with a cgroup crate: the three controllers'
//! few files are all that is needed, and the crates available either pull
//! in a D-Bus stack or panic on machines without a cgroup mount — the
//! supervisor must report those, not die of them.

use crate::State;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// A controller Lockstep limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    /// Memory (hard limit, OOM kills).
    Memory,
    /// Number of tasks.
    Pids,
    /// CPU quota and weight.
    Cpu,
}

impl Controller {
    /// All three.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The kernel's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// Which cgroup interface a controller is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A v1 hierarchy of its own.
    V1,
    /// The unified hierarchy.
    V2,
}

/// Limits of one group (`None`: inherited from above).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Hard memory limit, bytes (swap is not allowed on top).
    pub memory: Option<u64>,
    /// Most tasks (threads and processes).
    pub pids: Option<u64>,
    /// CPU quota, thousandths of a core (1000 = one core).
    pub cpu_millis: Option<u64>,
    /// CPU weight, 1–10000 (100 is the default share).
    pub cpu_weight: Option<u64>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a CPU quota or weight is set.
    pub fn has_cpu(&self) -> bool {
        self.cpu_millis.is_some() || self.cpu_weight.is_some()
    }
}

/// Why the cgroup layer cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The machine offers no usable controller.
    #[error("{0}")]
    Unavailable(String),
    /// A group could not be created.
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A limit could not be written.
    #[error("cannot write `{value}` to {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// What.
        value: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Where one controller's groups live: its version and this process's own
/// cgroup directory in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The controller.
    pub controller: Controller,
    /// Its interface.
    pub version: Version,
    /// This process's cgroup directory in its hierarchy.
    pub own: PathBuf,
}

/// Finds, for each controller, the directory of the cgroup `pid` runs in
/// (`None`: this process), from `/proc/<pid>/cgroup` and this process's
/// mount table.
pub fn placements(pid: Option<u32>) -> Result<Vec<Placement>, String> {
    let proc = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    let cgroups = std::fs::read_to_string(format!("/proc/{proc}/cgroup"))
        .map_err(|e| format!("cannot read /proc/{proc}/cgroup: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(resolve(&cgroups, &mountinfo))
}

/// [`placements`] on the files' text.
fn resolve(cgroups: &str, mountinfo: &str) -> Vec<Placement> {
    // (fstype, super options, mount root, mount point)
    let mounts: Vec<(String, Vec<String>, String, PathBuf)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let fstype = (*post.first()?).to_owned();
            let opts = post.get(2)?.split(',').map(str::to_owned).collect();
            Some((
                fstype,
                opts,
                unescape(pre.get(3)?),
                PathBuf::from(unescape(pre.get(4)?)),
            ))
        })
        .collect();
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(list), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && list.is_empty() {
            // The unified hierarchy: controllers enabled for our children
            // are those our cgroup delegates.
            let Some((_, _, root, point)) = mounts.iter().find(|m| m.0 == "cgroup2") else {
                continue;
            };
            let Some(own) = under(point, root, path) else {
                continue;
            };
            let delegated =
                std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
            for c in Controller::ALL {
                if delegated.split_whitespace().any(|d| d == c.as_str())
                    && !out.iter().any(|p: &Placement| p.controller == c)
                {
                    out.push(Placement {
                        controller: c,
                        version: Version::V2,
                        own: own.clone(),
                    });
                }
            }
            continue;
        }
        for c in Controller::ALL {
            if !list.split(',').any(|n| n == c.as_str()) {
                continue;
            }
            let Some((_, _, root, point)) = mounts
                .iter()
                .find(|m| m.0 == "cgroup" && m.1.iter().any(|o| o == c.as_str()))
            else {
                continue;
            };
            if let Some(own) = under(point, root, path) {
                out.retain(|p| p.controller != c);
                out.push(Placement {
                    controller: c,
                    version: Version::V1,
                    own,
                });
            }
        }
    }
    out.sort_by_key(|p| p.controller);
    out
}

/// The directory of cgroup `path` in a hierarchy mounted at `point` whose
/// mount shows the hierarchy from `root`.
fn under(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)?
    };
    Some(point.join(rel.trim_start_matches('/')))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One group: its directory in each controller's hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// (controller, version, directory).
    dirs: Vec<(Controller, Version, PathBuf)>,
}

impl Group {
    /// The group at `dir` for one controller (for reading it).
    pub fn single(controller: Controller, version: Version, dir: PathBuf) -> Self {
        Self {
            dirs: vec![(controller, version, dir)],
        }
    }

    /// The distinct directories the child must join (`--cgroup`).
    pub fn join_dirs(&self) -> Vec<PathBuf> {
        let mut d: Vec<PathBuf> = self.dirs.iter().map(|(_, _, p)| p.clone()).collect();
        d.sort();
        d.dedup();
        d
    }

    /// The group's directory for `c`.
    pub fn dir(&self, c: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(x, _, _)| *x == c)
            .map(|(_, _, p)| p.as_path())
    }

    fn version(&self, c: Controller) -> Option<Version> {
        self.dirs
            .iter()
            .find(|(x, _, _)| *x == c)
            .map(|(_, v, _)| *v)
    }

    /// How many processes the kernel's OOM killer killed in this group
    /// (its memory controller's own event counter).
    pub fn oom_kills(&self) -> u64 {
        let (Some(dir), Some(v)) = (
            self.dir(Controller::Memory),
            self.version(Controller::Memory),
        ) else {
            return 0;
        };
        let file = match v {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// The limits in force, read back from the kernel.
    pub fn limits(&self) -> Limits {
        let read = |c: Controller, f: &str| -> Option<String> {
            std::fs::read_to_string(self.dir(c)?.join(f))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let num = |s: Option<String>| s.and_then(|s| s.parse::<u64>().ok());
        let mut l = Limits::default();
        match self.version(Controller::Memory) {
            Some(Version::V1) => {
                // "No limit" reads as a huge page-aligned number.
                l.memory = num(read(Controller::Memory, "memory.limit_in_bytes"))
                    .filter(|&m| m < (1 << 62));
            }
            Some(Version::V2) => l.memory = num(read(Controller::Memory, "memory.max")),
            None => {}
        }
        l.pids = num(read(Controller::Pids, "pids.max"));
        match self.version(Controller::Cpu) {
            Some(Version::V1) => {
                let quota =
                    read(Controller::Cpu, "cpu.cfs_quota_us").and_then(|s| s.parse::<i64>().ok());
                let period = num(read(Controller::Cpu, "cpu.cfs_period_us"));
                if let (Some(q), Some(p)) = (quota, period)
                    && q > 0
                    && p > 0
                {
                    l.cpu_millis = Some(q as u64 * 1000 / p);
                }
                l.cpu_weight = num(read(Controller::Cpu, "cpu.shares")).map(|s| s * 100 / 1024);
            }
            Some(Version::V2) => {
                if let Some(max) = read(Controller::Cpu, "cpu.max") {
                    let mut it = max.split_whitespace();
                    if let (Some(q), Some(p)) = (it.next(), it.next())
                        && let (Ok(q), Ok(p)) = (q.parse::<u64>(), p.parse::<u64>())
                        && p > 0
                    {
                        l.cpu_millis = Some(q * 1000 / p);
                    }
                }
                l.cpu_weight = num(read(Controller::Cpu, "cpu.weight"));
            }
            None => {}
        }
        l
    }

    /// Memory in use, bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let f = match self.version(Controller::Memory)? {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        std::fs::read_to_string(self.dir(Controller::Memory)?.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether `/proc/<pid>/cgroup` places `pid` in this group for every
    /// controller.
    pub fn contains(&self, pid: u32) -> bool {
        let Ok(now) = placements(Some(pid)) else {
            return false;
        };
        self.dirs.iter().all(|(c, _, dir)| {
            now.iter()
                .any(|p| p.controller == *c && p.own.as_path() == dir.as_path())
        })
    }

    /// Removes the group's directories (it must be empty: its processes
    /// exited).  Errors are ignored: what is left is swept with the tree.
    pub fn remove(&self) {
        for d in self.join_dirs() {
            let _ = std::fs::remove_dir(d);
        }
    }

    fn write(&self, c: Controller, file: &str, value: &str) -> Result<(), CgroupError> {
        let Some(dir) = self.dir(c) else {
            return Ok(());
        };
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|source| CgroupError::Write {
            path: path.display().to_string(),
            value: value.to_owned(),
            source,
        })
    }

    /// Writes `limits` (unset ones are left as inherited).
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(m) = limits.memory {
            match self.version(Controller::Memory) {
                Some(Version::V1) => {
                    self.write(Controller::Memory, "memory.limit_in_bytes", &m.to_string())?;
                    // With swap accounting, memory + swap may not exceed it
                    // either (so the limit cannot be dodged into swap).
                    if let Some(dir) = self.dir(Controller::Memory)
                        && dir.join("memory.memsw.limit_in_bytes").exists()
                    {
                        self.write(
                            Controller::Memory,
                            "memory.memsw.limit_in_bytes",
                            &m.to_string(),
                        )?;
                    }
                }
                Some(Version::V2) => {
                    self.write(Controller::Memory, "memory.max", &m.to_string())?;
                    if let Some(dir) = self.dir(Controller::Memory)
                        && dir.join("memory.swap.max").exists()
                    {
                        self.write(Controller::Memory, "memory.swap.max", "0")?;
                    }
                }
                None => {}
            }
        }
        if let Some(p) = limits.pids {
            self.write(Controller::Pids, "pids.max", &p.to_string())?;
        }
        const PERIOD: u64 = 100_000;
        match self.version(Controller::Cpu) {
            Some(Version::V1) => {
                if let Some(c) = limits.cpu_millis {
                    self.write(Controller::Cpu, "cpu.cfs_period_us", &PERIOD.to_string())?;
                    let quota = (c * PERIOD / 1000).max(1000);
                    self.write(Controller::Cpu, "cpu.cfs_quota_us", &quota.to_string())?;
                }
                if let Some(w) = limits.cpu_weight {
                    let shares = (w * 1024 / 100).max(2);
                    self.write(Controller::Cpu, "cpu.shares", &shares.to_string())?;
                }
            }
            Some(Version::V2) => {
                if let Some(c) = limits.cpu_millis {
                    let quota = (c * PERIOD / 1000).max(1000);
                    self.write(Controller::Cpu, "cpu.max", &format!("{quota} {PERIOD}"))?;
                }
                if let Some(w) = limits.cpu_weight {
                    self.write(
                        Controller::Cpu,
                        "cpu.weight",
                        &w.clamp(1, 10_000).to_string(),
                    )?;
                }
            }
            None => {}
        }
        Ok(())
    }
}

/// `key N` in a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The supervisor's cgroup tree (see the module docs).  Dropping it
/// removes every group it made (their processes must be gone).
#[derive(Debug)]
pub struct Tree {
    root: Group,
    /// Groups made, in creation order (removed in reverse).
    made: Vec<Group>,
    /// Tenant groups by name.
    tenants: BTreeMap<String, Group>,
    seq: u64,
}

impl Tree {
    /// Creates `lockstep-<pid>` (`lockstep-<pid>-<n>` for a process's later
    /// trees) under this process's own cgroups, after
    /// sweeping empty trees that supervisors which no longer run left
    /// behind.  Fails when no controller is usable (the caller decides
    /// whether that is fatal).
    pub fn create() -> Result<Self, CgroupError> {
        let places = placements(None).map_err(CgroupError::Unavailable)?;
        let mut usable = Vec::new();
        let mut why = Vec::new();
        for p in places {
            if nix::unistd::access(&p.own, nix::unistd::AccessFlags::W_OK).is_ok() {
                usable.push(p);
            } else {
                why.push(format!(
                    "{} ({}) is not writable",
                    p.own.display(),
                    p.controller.as_str()
                ));
            }
        }
        for c in Controller::ALL {
            if !usable.iter().any(|p| p.controller == c)
                && !why.iter().any(|w| w.contains(c.as_str()))
            {
                why.push(format!(
                    "no `{}` controller is mounted or delegated here",
                    c.as_str()
                ));
            }
        }
        if usable.len() < Controller::ALL.len() {
            return Err(CgroupError::Unavailable(format!(
                "cgroups: {} (run as root, or delegate a cgroup with the memory, pids and cpu controllers to this user)",
                why.join("; ")
            )));
        }
        for p in &usable {
            sweep_stale(&p.own);
        }
        // One tree per supervisor; a process that makes several (tests)
        // numbers the later ones.
        static TREES: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
        let n = {
            let mut t = TREES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *t += 1;
            *t - 1
        };
        let name = match n {
            0 => format!("lockstep-{}", std::process::id()),
            n => format!("lockstep-{}-{n}", std::process::id()),
        };
        let root = Group {
            dirs: usable
                .iter()
                .map(|p| (p.controller, p.version, p.own.join(&name)))
                .collect(),
        };
        make(&root)?;
        Ok(Self {
            made: vec![root.clone()],
            root,
            tenants: BTreeMap::new(),
            seq: 0,
        })
    }

    /// The tree's own group.
    pub fn root(&self) -> &Group {
        &self.root
    }

    /// The group of tenant `name` (made with `limits` the first time).
    pub fn tenant(&mut self, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
        if let Some(g) = self.tenants.get(name) {
            return Ok(g.clone());
        }
        let g = self.sub(
            &self.root.clone(),
            &format!("tenant-{}", sanitize(name)),
            limits.has_cpu(),
        )?;
        g.apply(limits)?;
        self.tenants.insert(name.to_owned(), g.clone());
        Ok(g)
    }

    /// A fresh group for one child incarnation named `name`, below
    /// `parent` (a tenant's group) or the root, with `limits`.
    pub fn child(
        &mut self,
        parent: Option<&Group>,
        name: &str,
        limits: &Limits,
    ) -> Result<Group, CgroupError> {
        self.seq += 1;
        let (parent, cpu) = match parent {
            Some(p) => (
                p.clone(),
                limits.has_cpu() || p.dir(Controller::Cpu).is_some(),
            ),
            None => (self.root.clone(), limits.has_cpu()),
        };
        let g = self.sub(&parent, &format!("{}.{}", sanitize(name), self.seq), cpu)?;
        g.apply(limits)?;
        Ok(g)
    }

    /// A group below `parent`, in the `cpu` controller too only when `cpu`
    /// (a process in a CPU group of its own is scheduled as a group: on a
    /// machine with fewer cores than processes that costs the ring
    /// hand-offs their wake-up preemption, so it is paid only where CPU
    /// limits are asked for).
    fn sub(&mut self, parent: &Group, name: &str, cpu: bool) -> Result<Group, CgroupError> {
        // On v2, a group's children get the controllers it delegates.
        for (_, v, dir) in &parent.dirs {
            if *v == Version::V2 {
                let want: Vec<String> = parent
                    .dirs
                    .iter()
                    .filter(|(_, v, _)| *v == Version::V2)
                    .map(|(c, _, _)| format!("+{}", c.as_str()))
                    .collect();
                let f = dir.join("cgroup.subtree_control");
                std::fs::write(&f, want.join(" ")).map_err(|source| CgroupError::Write {
                    path: f.display().to_string(),
                    value: want.join(" "),
                    source,
                })?;
                break;
            }
        }
        let g = Group {
            dirs: parent
                .dirs
                .iter()
                .filter(|(c, _, _)| cpu || *c != Controller::Cpu)
                .map(|(c, v, d)| (*c, *v, d.join(name)))
                .collect(),
        };
        make(&g)?;
        self.made.push(g.clone());
        Ok(g)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for g in self.made.iter().rev() {
            g.remove();
        }
    }
}

fn make(g: &Group) -> Result<(), CgroupError> {
    for d in g.join_dirs() {
        match std::fs::create_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: d.display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes `lockstep-<pid>` trees under `own` whose supervisor is gone
/// (empty groups only: `rmdir` refuses a populated one).
fn sweep_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("lockstep-")
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_tree(&e.path());
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The child's side: joins each directory in `dirs` (writes its pid into
/// its `cgroup.procs`).
pub(crate) fn join(dirs: &[PathBuf]) -> Result<State, String> {
    if dirs.is_empty() {
        return Ok(State::Off(
            "the supervisor made no cgroup for this child".into(),
        ));
    }
    let pid = std::process::id().to_string();
    for d in dirs {
        let f = d.join("cgroup.procs");
        std::fs::write(&f, &pid).map_err(|e| format!("cannot join cgroup {}: {e}", d.display()))?;
    }
    Ok(State::On)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_controllers_are_found_under_their_mounts() {
        let cgroups =
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/\n";
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let p = resolve(cgroups, mountinfo);
        assert_eq!(
            p,
            vec![
                Placement {
                    controller: Controller::Memory,
                    version: Version::V1,
                    own: "/sys/fs/cgroup/memory/process_api/abc".into()
                },
                Placement {
                    controller: Controller::Pids,
                    version: Version::V1,
                    own: "/sys/fs/cgroup/pids".into()
                },
                Placement {
                    controller: Controller::Cpu,
                    version: Version::V1,
                    own: "/sys/fs/cgroup/cpu,cpuacct/x".into()
                },
            ]
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_resolved_relative_to_its_root() {
        let cgroups = "4:memory:/outer/inner\n";
        let mountinfo = "31 25 0:27 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            resolve(cgroups, mountinfo)[0].own,
            PathBuf::from("/sys/fs/cgroup/memory/inner")
        );
        // A cgroup outside the mounted subtree is not reachable.
        assert!(resolve("4:memory:/elsewhere\n", mountinfo).is_empty());
    }

    #[test]
    fn flat_keyed_files_are_read() {
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(keyed("low 0\noom 1\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(keyed("oom 1\n", "oom_kill"), None);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
