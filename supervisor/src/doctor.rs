//! `lockstep doctor`: what an operator checks before trusting a running
//! run — for each child, its uid, capabilities, namespaces, seccomp and
//! Landlock state and cgroup limits, as `/proc` shows them from outside
//! (`lockstep_sandbox::inspect`) next to what the child reported; the
//! layers the run turned off; and whether the run directory's permissions
//! were widened.
//!
//! The running supervisor lists its children over the control socket
//! ([`crate::ctl::CtlCommand::Children`], answered by [`children_json`]);
//! everything else is read here, by the doctor, from `/proc` and the
//! cgroup file system.

use crate::run::Run;
use lockstep_sandbox::inspect::{self, ProcessView};
use serde::{Deserialize, Serialize};
use shm_protocol::control::SandboxReport;
use std::path::Path;

/// One child, as the supervisor lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// `worker-0`, `inference-host`.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// What the child reported when it became ready.
    pub sandbox: Option<SandboxReport>,
}

/// The supervisor's answer to `children`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Children {
    /// The supervisor's pid.
    pub supervisor: u32,
    /// Layers the run's settings turn off (as in the journal's header).
    pub layers_off: Vec<String>,
    /// The run's cgroup tree (one directory per controller).
    pub cgroup_root: Vec<String>,
    /// The children.
    pub children: Vec<ChildInfo>,
}

/// The run's children as one JSON line.
pub fn children_json(run: &Run) -> String {
    let mut out = Children {
        supervisor: std::process::id(),
        ..Children::default()
    };
    if let Ok(j) = run.jails.lock() {
        out.layers_off = j.layers_off();
        out.cgroup_root = j
            .cgroup_root()
            .map(|g| {
                g.join_dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
    }
    out.children = run.pool.children();
    out.children.extend(run.inference.child());
    serde_json::to_string(&out).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// One child as the doctor sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildReport {
    /// What the supervisor said.
    #[serde(flatten)]
    pub info: ChildInfo,
    /// What `/proc` says (`None`: the process is gone).
    pub process: Option<ProcessView>,
    /// What is missing or wrong.
    pub problems: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run directory.
    pub run_dir: String,
    /// The supervisor's pid.
    pub supervisor: u32,
    /// Layers turned off.
    pub layers_off: Vec<String>,
    /// The run's cgroup tree.
    pub cgroup_root: Vec<String>,
    /// Each child.
    pub children: Vec<ChildReport>,
    /// Run directory entries readable by others.
    pub run_dir_problems: Vec<String>,
}

impl Report {
    /// Asks the run in `run_dir` for its children and inspects each.
    pub fn collect(run_dir: &Path) -> Result<Self, String> {
        let answer = crate::ctl::request(run_dir, &crate::ctl::CtlCommand::Children)?;
        let listed: Children = serde_json::from_str(&answer)
            .map_err(|e| format!("unexpected answer from the supervisor ({e}): {answer}"))?;
        let children = listed
            .children
            .into_iter()
            .map(|info| {
                // A child on another machine is a local bridge (the
                // supervisor's own code, unjailed) in front of a child its
                // node jailed: what counts is the node's report.
                let remote = info
                    .sandbox
                    .as_ref()
                    .is_some_and(|r| r.class.contains(" on node "));
                let process = ProcessView::read(info.pid).ok().filter(|_| !remote);
                let mut problems = match &process {
                    Some(p) => p.problems(),
                    None if remote => Vec::new(),
                    None => vec!["the process is gone".to_owned()],
                };
                if let Some(r) = &info.sandbox {
                    problems.extend(r.gaps().into_iter().map(|g| format!("reported {g}")));
                } else {
                    problems.push("no sandbox report".to_owned());
                }
                ChildReport {
                    info,
                    process,
                    problems,
                }
            })
            .collect();
        Ok(Self {
            run_dir: run_dir.display().to_string(),
            supervisor: listed.supervisor,
            layers_off: listed.layers_off,
            cgroup_root: listed.cgroup_root,
            children,
            run_dir_problems: inspect::run_dir_problems(run_dir),
        })
    }

    /// Whether nothing is missing or wrong.
    pub fn healthy(&self) -> bool {
        self.layers_off.is_empty()
            && self.run_dir_problems.is_empty()
            && self.children.iter().all(|c| c.problems.is_empty())
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "run {} (supervisor pid {})",
            self.run_dir, self.supervisor
        );
        if self.layers_off.is_empty() {
            let _ = writeln!(s, "sandbox layers off: none");
        } else {
            let _ = writeln!(s, "sandbox layers off: {}", self.layers_off.join("; "));
        }
        let _ = writeln!(
            s,
            "cgroup tree: {}",
            if self.cgroup_root.is_empty() {
                "none".to_owned()
            } else {
                self.cgroup_root.join(", ")
            }
        );
        for c in &self.children {
            let _ = writeln!(s, "\n{} (pid {})", c.info.name, c.info.pid);
            if let Some(r) = &c.info.sandbox {
                let layers: Vec<String> =
                    r.layers.iter().map(|(l, st)| format!("{l}={st}")).collect();
                let _ = writeln!(
                    s,
                    "  reported   {} {}: {}",
                    r.class,
                    r.mode,
                    layers.join(" ")
                );
            }
            if c.process.is_none() && c.problems.is_empty() {
                let _ = writeln!(
                    s,
                    "  (a bridge to another machine: the layers above are the node's report)"
                );
            }
            if let Some(p) = &c.process {
                let _ = writeln!(
                    s,
                    "  uid/gid    {:?} / {:?} groups {:?}",
                    p.uid, p.gid, p.groups
                );
                let _ = writeln!(
                    s,
                    "  caps       eff {} prm {} bnd {} amb {}  no_new_privs {}",
                    p.cap_effective, p.cap_permitted, p.cap_bounding, p.cap_ambient, p.no_new_privs
                );
                let _ = writeln!(
                    s,
                    "  seccomp    mode {} filters {}   threads {}   mounts seen {}",
                    p.seccomp,
                    p.seccomp_filters,
                    p.threads,
                    p.mounts.map_or("?".to_owned(), |m| m.to_string())
                );
                let _ = writeln!(
                    s,
                    "  namespaces own [{}] shared [{}]",
                    p.own_namespaces.join(" "),
                    p.shared_namespaces.join(" ")
                );
                for g in &p.cgroups {
                    let fmt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                    let _ = writeln!(
                        s,
                        "  cgroup     {:<6} limit {} weight {} usage {} oom_kills {}  {}",
                        g.controller,
                        fmt(g.limit),
                        fmt(g.weight),
                        fmt(g.usage),
                        fmt(g.oom_kills),
                        g.dir
                    );
                }
            }
            if c.problems.is_empty() {
                let _ = writeln!(s, "  ok");
            } else {
                for p in &c.problems {
                    let _ = writeln!(s, "  PROBLEM    {p}");
                }
            }
        }
        if self.run_dir_problems.is_empty() {
            let _ = writeln!(s, "\nrun directory: private (0700 directories, 0600 files)");
        } else {
            let _ = writeln!(s, "\nrun directory permissions widened:");
            for p in &self.run_dir_problems {
                let _ = writeln!(s, "  PROBLEM    {p}");
            }
        }
        s
    }
}
